#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_sql_transactional.sh (issue 12, point 5): transactional tasks. The
# broker is kombu's SQL transport in the task's own PostgreSQL database, so a
# CELERIAC_TRANSACTIONAL task's writes and its ack (the row's DELETE) commit
# together. Tasks (txn_tasks.c) write one ledger row per run. Cases: a
# success commits its write and its ack; a failure rolls its write back and
# is stored as FAILURE; a task that commits on its own is named in the log;
# on a Redis broker the flag falls back to late ack, with a warning. Then the
# crash test: children SIGKILLed at random instants while transactional tasks
# run, every task's write applied exactly once; and the same storm over
# late-ack tasks, which shows duplicate writes (the check can fail).
. "$(dirname "$0")/lib.sh"

N=${TXN_TASKS:-1200}
start_redis
start_pg
SQL_BROKER="sqla+postgresql://postgres@127.0.0.1:$PG_PORT/celeriac"
TXN_LIB=$TEST_TMP/libtxn.so
# shellcheck disable=SC2046
cc -std=c11 -Wall -Wextra -Werror -O1 -g -fPIC -shared -I"$CELERIAC_ROOT/include" \
    $(pkg-config --cflags libpq) -o "$TXN_LIB" "$SQL_DIR/txn_tasks.c" $(pkg-config --libs libpq) \
    2>"$TEST_TMP/txn-cc.log" || { not_ok "build txn_tasks.c" "$(cat "$TEST_TMP/txn-cc.log")"; tap_done; }
psql_db -c "CREATE TABLE ledger (task_id text NOT NULL)" >/dev/null
ledger() { psql_db -c "SELECT count(*), count(DISTINCT task_id) FROM ledger WHERE $1"; }

start_txn_worker() { # NAME FLAGS...
    local name=$1
    shift
    start_worker -A "$TXN_LIB" -b "$SQL_BROKER" --result-backend "$REDIS_URL" --db "$PG_URL" \
        -n "$name@localhost" "$@"
}

# ---- one commit for the writes and the ack ----------------------------------------------------
start_txn_worker txn1 -c 1
wait_children 1 20 || not_ok "worker started" "$(worker_log_tail)"
if grep -q "ordinary late-ack task" "$WORKER_LOG"; then
    not_ok "broker in the task database: no fallback warning" "$(grep "late-ack" "$WORKER_LOG")"
else
    ok "broker in the task database: transactional tasks are transactional (no fallback warning)"
fi
ok_id=$(sqlc send txn.record --args '[0]')
fail_id=$(sqlc send txn.fail --args '[0]')
self_id=$(sqlc send txn.commits --args '[0]')
out=$(sqlc wait "$ok_id" "$fail_id" "$self_id" --timeout 20)
expect_eq "success, failure, self-commit: their states" "SUCCESS FAILURE SUCCESS" \
    "$(while read -r l; do jget state <<<"$l"; done <<<"$out" | tr '\n' ' ' | sed 's/ $//')" "$out"
expect_eq "the success's write committed with its ack" "1|1" "$(ledger "task_id = '$ok_id'")"
expect_eq "the failure's write was rolled back" "0|0" "$(ledger "task_id = '$fail_id'")"
if grep -q "txn.commits\[$self_id\] is transactional but ended the transaction itself" "$WORKER_LOG"; then
    ok "a transactional task that commits on its own is named in the log"
else
    not_ok "a transactional task that commits on its own is named in the log" "$(worker_log_tail 6)"
fi
expect_eq "every message acked" 0 "$(psql_db -c "SELECT count(*) FROM kombu_message")"
# On PostgreSQL the broker runs on the task's connection: the transaction
# that locks a message is the one its task runs in.
expect_eq "one connection per child: the broker runs on the task's connection" "1|0" \
    "$(psql_db -c "SELECT count(*) FILTER (WHERE application_name LIKE 'celeriac child%'),
                          count(*) FILTER (WHERE application_name LIKE 'celeriac broker%')
                   FROM pg_stat_activity")"
# A poison task: each death rolls its write and its lock back, leaving the
# row as it was; the slot's next process claims it to count the death.
crash_id=$(sqlc send txn.crash --args '[0]')
out=$(sqlc wait "$crash_id" --timeout 40)
expect_eq "a transactional task that kills its process each run: WorkerLostError" \
    "FAILURE WorkerLostError" "$(jget state <<<"$out") $(jget result <<<"$out" | cut -d: -f1)" \
    "$(worker_log_tail 8)"
expect_eq "... after 1 + 3 runs (--max-worker-lost-requeues 3), none of their writes applied" \
    "3|0|0" "$(grep -c "txn.crash\[$crash_id\]: its process died (signal 9); requeued" \
                 "$WORKER_LOG")|$(ledger "task_id = '$crash_id'")" "$(worker_log_tail 8)"
expect_eq "... and its message acked" 0 "$(psql_db -c "SELECT count(*) FROM kombu_message")"
stop_worker

# ---- elsewhere the flag means late ack, and the log says so --------------------------------------
start_worker -A "$TXN_LIB" -b "$REDIS_URL" --result-backend "$REDIS_URL" --db "$PG_URL" \
    -n txn2@localhost -c 1
wait_children 1 20
if grep -q "task txn.record (and any other transactional task) runs as an ordinary late-ack" \
    "$WORKER_LOG"; then
    ok "a Redis broker: one warning that transactional tasks run as late-ack tasks"
else
    not_ok "a Redis broker: one warning that transactional tasks run as late-ack tasks" \
        "$(worker_log_tail 6)"
fi
stop_worker

# ---- the crash test -------------------------------------------------------------------------------
# storm TASK [SECONDS [EVERY [RESTART]]]: sends N tasks (each sleeping
# SECONDS, 0.003), runs a -c 4 worker while a killer SIGKILLs a random child
# every EVERY seconds (0.2) until every task has a result (and restarts
# PostgreSQL, the broker too, RESTART seconds in); sets KILLS and OUT.
storm() {
    local task=$1 seconds=${2:-0.003} every=${3:-0.2} restart=${4:-} ids
    rm -f "$TEST_TMP/kills-$task"
    ids=$(sqlc send "$task" --args "[$seconds]" --count "$N")
    start_txn_worker "storm-${task%%.*}" -c 4 --max-worker-lost-requeues 1000
    wait_children 4 20
    KILLS=0
    (
        while kill -0 "$WORKER_PID" 2>/dev/null; do
            sleep "$every"
            mapfile -t kids < <(worker_children | tr ' ' '\n' | grep .)
            ((${#kids[@]})) && kill -KILL "${kids[RANDOM % ${#kids[@]}]}" 2>/dev/null &&
                echo kill >>"$TEST_TMP/kills-$task"
        done
    ) &
    local killer=$!
    [[ -n $restart ]] && { sleep "$restart"; restart_pg; }
    # shellcheck disable=SC2086
    OUT=$(sqlc wait $ids --timeout 120)
    kill "$killer" 2>/dev/null
    wait "$killer" 2>/dev/null
    KILLS=$(wc -l <"$TEST_TMP/kills-$task" 2>/dev/null || echo 0)
    stop_worker
}

psql_db -c "DELETE FROM ledger" >/dev/null
storm txn.record
expect_eq "crash test: $N transactional tasks under $KILLS SIGKILLs all SUCCESS" "SUCCESS=$N" \
    "$(states <<<"$OUT")"
expect_eq "crash test: every transactional task's write applied exactly once" "$N|$N" \
    "$(ledger true)" \
    "$(psql_db -c "SELECT task_id, count(*) FROM ledger GROUP BY 1 HAVING count(*) > 1 LIMIT 5")"
if ((KILLS >= 5)); then ok "crash test: $KILLS children killed"; else not_ok "crash test: at least 5 children killed" "$KILLS"; fi
expect_eq "crash test: no message left in kombu_message" 0 \
    "$(psql_db -c "SELECT count(*) FROM kombu_message")"
psql_db -c "DELETE FROM ledger" >/dev/null

# Back to back (no sleep in the task): most of a child's time is now the
# gap between two tasks, where each ack has already locked the next row in
# its round trip; a death there, or the server's restart, must hand that row
# back untouched.
storm txn.record 0 0.03 0.3
expect_eq "crash test, back to back, PostgreSQL restarted: $N transactional tasks under $KILLS SIGKILLs all SUCCESS" \
    "SUCCESS=$N" "$(states <<<"$OUT")"
expect_eq "crash test, back to back: every write applied exactly once" "$N|$N" \
    "$(ledger true)" \
    "$(psql_db -c "SELECT task_id, count(*) FROM ledger GROUP BY 1 HAVING count(*) > 1 LIMIT 5")"
expect_eq "crash test, back to back: no message left in kombu_message" 0 \
    "$(psql_db -c "SELECT count(*) FROM kombu_message")"
if grep -q "terminating connection due to administrator command" "$WORKER_LOG"; then
    ok "crash test, back to back: the restart came while tasks ran (their connections were cut)"
else
    not_ok "crash test, back to back: the restart came while tasks ran (their connections were cut)" \
        "$(worker_log_tail 8)"
fi
psql_db -c "DELETE FROM ledger" >/dev/null

storm late.record
dups=$(psql_db -c "SELECT count(*) - count(DISTINCT task_id) FROM ledger")
expect_eq "contrast: $N late-ack tasks under $KILLS SIGKILLs all SUCCESS" "SUCCESS=$N" \
    "$(states <<<"$OUT")"
if ((dups > 0)); then
    ok "contrast: without the shared commit the same storm wrote $dups duplicate row(s)"
else
    not_ok "contrast: without the shared commit the same storm writes duplicates" \
        "0 duplicates under $KILLS kills"
fi
check_worker_logs_clean
tap_done
