#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_sql_reliability.sh (issue 12, point 2: "behave as on Redis"): on
# kombu's SQL transport (PostgreSQL), what a task's end does to its row.
# Tasks are sent by Debian's Python Celery client (rel.py with
# BROKER_URL=sqla+postgresql://...), results read from Redis. Each case: the
# stored state, the row gone from kombu_message, the task not run again.
#   - a soft time limit: SoftTimeLimitExceeded, the child kept;
#   - a hard time limit: TimeLimitExceeded, the child replaced, run once;
#   - `expires` in the past: REVOKED, never run;
#   - an unknown task name: NotRegistered, one log line;
#   - a revoke that reaches the worker through --statedb (the SQL transport
#     has no broadcast, so no remote control: the state file is the way);
#   - an early-ack task whose child is SIGKILLed: WorkerLostError, run once;
#   - reject_on_worker_lost exhausted (--max-worker-lost-requeues 1, a late
#     task that crashes its child every time): WorkerLostError after two
#     deaths, nothing left.
# And on PostgreSQL as the broker: a cold shutdown (SIGQUIT) with late-ack
# tasks running (the salvage process gives their claims back at once) or an
# early-ack task running (WorkerLostError stored), connections refused
# ("too many connections"), a restart mid-run.
# SQLite's faults (a locked file, a full disk): test_sql_reliability_sqlite.sh.
. "$(dirname "$0")/lib.sh"

start_redis
start_pg
build_rel_lib || tap_done
SQL_BROKER="sqla+postgresql://postgres@127.0.0.1:$PG_PORT/celeriac"
psql_db -c "CREATE TABLE rel_runs (task_id text, pid int)" >/dev/null

rows() { psql_db -c "SELECT count(*) FROM kombu_message"; }
runs_of() { psql_db -c "SELECT count(*) FROM rel_runs WHERE task_id = '$1'"; }
sqlsend() { BROKER_URL=$SQL_BROKER send "$@"; }

STATE=$TEST_TMP/worker.state
revoked_id=$(cat /proc/sys/kernel/random/uuid)
printf '%s %s\n' "$(date +%s)" "$revoked_id" >"$STATE"

W=(-A "$REL_LIB" -c 1 -b "$SQL_BROKER" --result-backend "$REDIS_URL" --db "$PG_URL")
start_worker "${W[@]}" --statedb "$STATE" -n lim@localhost
wait_children 1 20 || not_ok "worker on sqla+postgresql started" "$(worker_log_tail)"
kid=$(only_child)

# ---- soft time limit -----------------------------------------------------------------------
id=$(sqlsend rel.pid '[5]' --soft-time-limit 1 --time-limit 20)
m=$(meta_of "$id" 15)
expect_eq "soft time limit: FAILURE SoftTimeLimitExceeded stored" \
    "FAILURE SoftTimeLimitExceeded(billiard.exceptions)" "$(summary <<<"$m")" "$m" \
    "$(worker_log_tail 8)"
expect_eq "... its row deleted, the child kept" "0 $kid" "$(rows) $(only_child)"

# ---- hard time limit -----------------------------------------------------------------------
id=$(sqlsend rel.record '[5000]' --time-limit 1)
m=$(meta_of "$id" 15)
expect_eq "hard time limit (late-ack task): FAILURE TimeLimitExceeded stored" \
    "FAILURE TimeLimitExceeded(billiard.exceptions)" "$(summary <<<"$m")" "$m" \
    "$(worker_log_tail 8)"
wait_replaced "$kid" 1 20 || not_ok "the child is replaced after a hard time limit" "$(worker_children)"
kid=$(only_child)
expect_eq "... one log line says the limit killed its process" 1 \
    "$(log_count "rel.record\[$id\]: hard time limit \(1s\) exceeded; its process was killed")"
sleep 1
expect_eq "... the child replaced, the row deleted, the task run once" "0 1" \
    "$(rows) $(runs_of "$id")" "$(psql_db -c "SELECT id, visible, version FROM kombu_message")"

# ---- expires in the past -------------------------------------------------------------------
id=$(sqlsend rel.record '[0]' --expires -60)
m=$(meta_of "$id" 15)
expect_eq "expires in the past: REVOKED stored" "REVOKED" "$(summary <<<"$m" | cut -d' ' -f1)" "$m"
expect_eq "... the row deleted, never run" "0 0" "$(rows) $(runs_of "$id")"

# ---- an unknown task name ------------------------------------------------------------------
id=$(sqlsend no.such_task '[1]')
m=$(meta_of "$id" 15)
expect_eq "an unknown task name: FAILURE NotRegistered stored" \
    "FAILURE NotRegistered(celery.exceptions)" "$(summary <<<"$m")" "$m"
expect_eq "... the row deleted, one log line naming it" "0 1" \
    "$(rows) $(log_count "unregistered task of type 'no.such_task'")" "$(worker_log_tail 5)"

# ---- a revoke through --statedb ------------------------------------------------------------
if log_has "remote control"; then
    ok "the worker says the SQL transport has no remote control ($(grep -o 'the SQL transport has no broadcast[^(]*' "$WORKER_LOG" | head -1))"
else
    not_ok "the worker says the SQL transport has no remote control" "$(worker_log_tail 20)"
fi
sqlsend rel.record '[0]' --task-id "$revoked_id" >/dev/null
m=$(meta_of "$revoked_id" 15)
expect_eq "a task id revoked in the --statedb file: REVOKED stored" "REVOKED" \
    "$(summary <<<"$m" | cut -d' ' -f1)" "$m" "$(worker_log_tail 5)"
expect_eq "... the row deleted, never run" "0 0" "$(rows) $(runs_of "$revoked_id")"
expect_eq "the same child served every case since the hard limit" "$kid" "$(only_child)"

# ---- early ack, child SIGKILLed mid-task ---------------------------------------------------
id=$(sqlsend rel.pid '[30]')
_acked() { [[ $(rows) == 0 ]]; } # early ack: the row is deleted as the task starts
wait_for 15 _acked || not_ok "the early-ack task's row is deleted when it starts" "$(rows) rows"
sleep 0.5
kill -KILL "$kid"
m=$(meta_of "$id" 15)
got=$(summary <<<"$m")
expect_eq "early ack + SIGKILL: FAILURE WorkerLostError stored" \
    "FAILURE WorkerLostError(billiard.exceptions)" "$got" "$m" "$(worker_log_tail 8)"
wait_replaced "$kid" 1 20 || not_ok "the SIGKILLed child is replaced" "$(worker_children)"
sleep 1.5
expect_eq "... nothing left in kombu_message, not run again (still WorkerLostError)" \
    "0 $got" "$(rows) $(meta_of "$id" 5 | summary)"
stop_worker

# ---- reject_on_worker_lost exhausted -------------------------------------------------------
start_worker "${W[@]}" --max-worker-lost-requeues 1 -n lost@localhost
wait_children 1 20 || not_ok "worker with --max-worker-lost-requeues 1 started" "$(worker_log_tail)"
id=$(sqlsend rel.segv_late)
m=$(meta_of "$id" 30)
got=$(summary <<<"$m")
if [[ $got == "FAILURE WorkerLostError(billiard.exceptions)" ]]; then
    ok "a late task that kills its child every time, 1 requeue allowed: WorkerLostError"
else
    not_ok "a late task that kills its child every time, 1 requeue allowed: WorkerLostError" \
        "$got" "$m" "$(worker_log_tail 12)"
fi
requeued=$(log_count "died \(signal 11\); requeued \(acks_late, reject_on_worker_lost; death 1 of at most 2\)")
failed=$(log_count "died \(signal 11\) in each of its 2 runs; not requeued again")
wait_children 1 20
sleep 1
if ((requeued == 1 && failed == 1)) && [[ $(rows) == 0 ]]; then
    ok "... after 2 deaths (requeued once, then failed), nothing left in kombu_message"
else
    not_ok "... after 2 deaths (requeued once, then failed), nothing left in kombu_message" \
        "requeue lines $requeued, given-up lines $failed, rows $(rows)" "$(worker_log_tail 12)"
fi
stop_worker

# ---- cold shutdown (SIGQUIT) with late-ack tasks running ---------------------------------
# No replacement comes for the killed children: the salvage process gives
# their claims back at once (not after the visibility timeout), and a second
# worker runs them, without a visibility sweep (its timeout is an hour).
start_worker "${W[@]}" -c 2 -n cold@localhost
wait_children 2 20 || not_ok "worker for the cold shutdown started" "$(worker_log_tail)"
cold_ids=$(sqlsend rel.sleep_late '[2]' --count 2)
wait_rows "SELECT count(*) FROM kombu_message WHERE NOT visible AND version < 0" 2 15 ||
    not_ok "both late-ack tasks are claimed" "$(psql_db -c "SELECT id, visible, version FROM kombu_message")"
sleep 0.5
stop_worker QUIT 15
expect_eq "cold shutdown: the salvage process gave both claims back (2 rows, both visible)" \
    "2 2" "$(rows) $(psql_db -c "SELECT count(*) FROM kombu_message WHERE visible")" \
    "worker exit: $WORKER_RC" "$(worker_log_tail 8)"
expect_eq "... one line per task restored" 2 \
    "$(log_count "its process was stopped before it finished; restored to its queue")" \
    "$(worker_log_tail 8)"
start_worker "${W[@]}" --visibility-timeout 3600 -n sweeper@localhost
# shellcheck disable=SC2086
out=$(rel wait $cold_ids --timeout 20)
got=$(while read -r line; do summary <<<"$line" | cut -d' ' -f1; done <<<"$out" | tr '\n' ' ')
expect_eq "... a second worker runs them and they succeed; nothing left in kombu_message" \
    "SUCCESS SUCCESS 0" "$got$(rows)" "$out" "$(worker_log_tail 8)"
stop_worker

# ---- cold shutdown with early-ack tasks running ------------------------------------------
# Their messages were deleted when they started: the salvage process stores
# WorkerLostError, as a replacement child would, so nothing stays PENDING.
start_worker "${W[@]}" -c 1 -n coldearly@localhost
wait_children 1 20 || not_ok "worker for the early-ack cold shutdown started" "$(worker_log_tail)"
early_id=$(sqlsend rel.pid '[3]')
wait_rows "SELECT count(*) FROM kombu_message" 0 15
sleep 0.5
stop_worker QUIT 15
out=$(rel wait "$early_id" --timeout 10)
expect_eq "cold shutdown: the early-ack task killed running is FAILURE WorkerLostError" \
    "FAILURE WorkerLostError(billiard.exceptions)" "$(summary <<<"$out")" "$out" "$(worker_log_tail 8)"

# ---- PostgreSQL refusing the broker's connections ("too many connections") ---------------
# The broker connects as a role of its own whose CONNECTION LIMIT drops to 0
# (SQLSTATE 53300, as with max_connections reached; a superuser would be let
# in). Its backend is terminated: the reconnect is refused for 4 s.
psql_admin -c "CREATE ROLE app LOGIN" >/dev/null
psql_admin -c "CREATE DATABASE appdb OWNER app" >/dev/null
APP_BROKER="sqla+postgresql://app@127.0.0.1:$PG_PORT/appdb"
start_worker -A "$REL_LIB" -c 1 -b "$APP_BROKER" --result-backend "$REDIS_URL" -n refused@localhost
wait_children 1 20 || not_ok "worker as role app started" "$(worker_log_tail)"
first=$(BROKER_URL=$APP_BROKER send rel.pid '[0]')
expect_eq "a task runs on the app role's broker" SUCCESS "$(meta_of "$first" 15 | summary | cut -d' ' -f1)"
psql_admin -c "ALTER ROLE app CONNECTION LIMIT 0" >/dev/null
psql_admin -c "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'app'" >/dev/null
sleep 1
t0=$(cpu_ticks $(worker_children) "$WORKER_PID")
sleep 3
t1=$(cpu_ticks $(worker_children) "$WORKER_PID")
refused=$(BROKER_URL="sqla+postgresql://postgres@127.0.0.1:$PG_PORT/appdb" send rel.pid '[0]' --count 3)
psql_admin -c "ALTER ROLE app CONNECTION LIMIT -1" >/dev/null
# shellcheck disable=SC2086
out=$(rel wait $refused --timeout 20)
got=$(while read -r line; do summary <<<"$line" | cut -d' ' -f1; done <<<"$out" | tr '\n' ' ')
expect_eq "3 tasks sent while the broker connection was refused run once it is let in" \
    "SUCCESS SUCCESS SUCCESS " "$got" "$(worker_log_tail 10)"
lines=$(log_count "too many connections for role")
if ((lines == 1)); then
    ok "the refused broker connection is logged once for the episode"
else
    not_ok "the refused broker connection is logged once for the episode" "$lines lines" \
        "$(worker_log_tail 10)"
fi
if log_has "connecting to the broker works again"; then
    ok "... and its end once"
else
    not_ok "... and its end once" "$(worker_log_tail 10)"
fi
if ((t1 - t0 <= 15)); then
    ok "while refused, the worker backs off ($(((t1 - t0) * 10)) ms CPU in 3 s)"
else
    not_ok "while refused, the worker backs off" "$(((t1 - t0) * 10)) ms CPU in 3 s"
fi
expect_eq "nothing left in appdb's kombu_message" 0 \
    "$(psql -X -A -t -q "postgresql://postgres@127.0.0.1:$PG_PORT/appdb" -c "SELECT count(*) FROM kombu_message")"
stop_worker

# ---- the broker's PostgreSQL restarted mid-run (small: chaos_sql has the storm) ----------
psql_db -c "TRUNCATE rel_runs" >/dev/null
start_worker "${W[@]}" -c 2 -n restart@localhost
wait_children 2 20 || not_ok "worker for the restart started" "$(worker_log_tail)"
BROKER_URL=$SQL_BROKER rel bulk rel.record 40 --out "$TEST_TMP/restart.ids" --mod 200 >/dev/null
wait_rows "SELECT count(*) >= 6 FROM rel_runs" t 15 || diag "the run did not get going"
restart_pg_down 1
tally=$(rel tally "$TEST_TMP/restart.ids" --timeout 40)
expect_eq "PostgreSQL restarted mid-run: 40 of 40 SUCCESS" 40 "$(jget counts.SUCCESS <<<"$tally")" \
    "$tally" "$(worker_log_tail 10)"
wait_rows "SELECT count(*) FROM kombu_message" 0 10
dups=$(psql_db -c "SELECT count(*) - count(DISTINCT task_id) FROM rel_runs")
expect_eq "... nothing left in kombu_message, every task recorded" "0 40" \
    "$(rows) $(psql_db -c "SELECT count(DISTINCT task_id) FROM rel_runs")"
if ((dups <= 2)); then
    ok "... duplicates bounded by the concurrency ($dups runs twice, at most 2)"
else
    not_ok "... duplicates bounded by the concurrency" "$dups duplicate runs"
fi
stop_worker
check_worker_logs_clean
tap_done
