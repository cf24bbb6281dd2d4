#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# chaos.sh (issue 3, point 9; `make chaos`): CHAOS_TASKS (default 10,000)
# books.get_book_info tasks on PostgreSQL with `--acks-late -c 4`, while a
# killer SIGKILLs a random pool child every ~0.5 s, PostgreSQL is restarted
# once (at 25 % done) and the broker once (at 60 % done). Afterwards every
# task id must have a stored SUCCESS (all result keys are read), nothing may
# be left on the broker, and the worker log must account for what the broker
# redelivered.
#
# CHAOS_BROKER picks the broker; the broker-specific parts are in
# chaos_<broker>.sh:
#   redis (default)  Redis (appendonly yes, appendfsync always) holds the
#                    queue and the results; `unacked` must be empty, and a
#                    Redis MONITOR counts the pushes of redelivered messages,
#                    which must equal the requeues the log reports.
#   amqp             a private RabbitMQ (issue 11), restarted on its data
#                    directory; results in Redis. Nothing may be left ready
#                    or unacked in any queue, and the duplicate runs (a task
#                    run again after its child was killed, or after its ack
#                    was lost with the restart) must be at most the kills plus
#                    what the children held unacked (-c 4 x prefetch 1).
#   sql              kombu's SQL transport (sqla+postgresql://, issue 12) on
#                    the PostgreSQL that holds the books, so its one restart
#                    is the broker's too; results in Redis. kombu_message
#                    must be empty afterwards, and the duplicate runs at most
#                    the kills plus one claim per child at the restart.
#   sqlite           kombu's SQL transport in an SQLite file (sqla+sqlite:///,
#                    the embedded default's broker); results in Redis. Its
#                    fault is another process holding the file's write lock
#                    for 12 s, not a restart. kombu_message must be empty
#                    afterwards, and every duplicate run due to a kill.
#
# Prints the figures (tasks, kills, restarts, requeues or duplicates,
# duration, lost) and TAP lines; exits non-zero if a check failed.
#
# CHAOS_ACKS=early runs the same storm on an early-ack worker (Redis: it pops
# with a plain BRPOP and keeps no unacked record): a child killed between pop
# and start has its message put back (from its slot's parcel on Redis, by the
# server on RabbitMQ); a child killed while running a task loses that task as
# early ack means to (FAILURE WorkerLostError stored). Every id must then
# have a result, every FAILURE must be a WorkerLostError, and there can be no
# more of them than kills.
#
# Environment: CHAOS_BROKER (redis), CHAOS_ACKS (late), CHAOS_TASKS (10000),
# CHAOS_KILL_INTERVAL (0.5 s, +-20 %), CHAOS_VISIBILITY_TIMEOUT (Redis, 15 s:
# how soon a message stranded by a kill between its pop and its start is
# restored), CHAOS_TIMEOUT (900 s), BUILD, KEEP_TMP=1 keeps the logs.
#
# A chaos_<broker>.sh defines: BROKER_LABEL, BROKER_IS_PG (yes when the
# broker is the PostgreSQL: started by broker_start, restarted once as
# PostgreSQL and not again), BROKER_WORKER_FLAGS (array),
# BROKER_SETTLE_WAIT (s), BROKER_FAULT (what its fault at 60 % is: "restarted"
# unless it says otherwise); broker_start (sets BROKER_URL; results go to
# $REDIS_URL's db 1), broker_before_worker (tasks published), broker_restart
# DONE, broker_progress (a phrase), broker_settled (true once the broker
# holds nothing), broker_after_worker (the worker has exited), broker_figures
# (prints its figure lines), broker_final_line, broker_checks, broker_keep_note.
. "$(dirname "$0")/lib.sh"

N=${CHAOS_TASKS:-10000}
KILL_INTERVAL=${CHAOS_KILL_INTERVAL:-0.5}
VT=${CHAOS_VISIBILITY_TIMEOUT:-15}
LIMIT=${CHAOS_TIMEOUT:-900}
CONC=4
ACKS=${CHAOS_ACKS:-late}
case $ACKS in
late) ACK_FLAGS=(--acks-late) ;;
early) ACK_FLAGS=() ;;
*) echo "chaos: CHAOS_ACKS must be early or late, not '$ACKS'" >&2; exit 2 ;;
esac
BROKER=${CHAOS_BROKER:-redis}
case $BROKER in
redis | amqp | sql | sqlite) ;;
*) echo "chaos: CHAOS_BROKER must be redis, amqp, sql or sqlite, not '$BROKER'" >&2; exit 2 ;;
esac

IDS=$TEST_TMP/ids
KILLS=$TEST_TMP/kills
PAUSE=$TEST_TMP/killer.pause
STOP=$TEST_TMP/chaos.stop
: >"$KILLS"
BROKER_IS_PG=no
BROKER_FAULT=restarted
# shellcheck source=chaos_redis.sh # or chaos_amqp.sh, chaos_sql.sh, chaos_sqlite.sh
. "$REL_DIR/chaos_$BROKER.sh"

broker_start
[[ $BROKER_IS_PG == yes ]] || start_pg
seed_books_pg || { not_ok "chaos: seed the books table"; tap_done; }
RESULT_URL="redis://127.0.0.1:$REDIS_PORT/1"
export RESULT_URL BROKER_URL # rel.py publishes to BROKER_URL
done_count() { redis_cli -n 1 dbsize 2>/dev/null | grep -E '^[0-9]+$' || echo -1; }

t_pub=$SECONDS
rel bulk books.get_book_info "$N" --out "$IDS" || { not_ok "chaos: publish $N tasks"; tap_done; }
_all_queued() { [[ $(rel qlen 2>/dev/null) == "$N" ]]; }
if ! wait_for 30 _all_queued; then
    not_ok "chaos: the $N tasks published are all in the queue" "queue: $(rel qlen 2>&1)"
    tap_done
fi
diag "published $N books.get_book_info to $BROKER_LABEL in $((SECONDS - t_pub)) s"
broker_before_worker

# ---- the worker ---------------------------------------------------------------------------
t0=$(date +%s.%N)
start_worker -c "$CONC" "${ACK_FLAGS[@]}" -b "$BROKER_URL" --result-backend "$RESULT_URL" --db "$PG_URL" \
    -l debug "${BROKER_WORKER_FLAGS[@]}" \
    --db-backoff-base 200 --db-backoff-cap 2000 -n chaos@localhost
wait_children "$CONC" 20 || diag "worker did not start $CONC children: $(worker_log_tail 5)"

# ---- the killer: a random pool child every ~KILL_INTERVAL s -----------------------------
killer() {
    local kids k
    while [[ ! -f $STOP ]]; do
        if [[ ! -f $PAUSE ]]; then
            read -r -a kids <<<"$(worker_children)"
            if ((${#kids[@]})); then
                k=${kids[RANDOM % ${#kids[@]}]}
                kill -KILL "$k" 2>/dev/null && echo "$(date +%s.%N) $k" >>"$KILLS"
            fi
        fi
        sleep "$(awk -v i="$KILL_INTERVAL" -v r="$RANDOM" 'BEGIN { printf "%.3f", i * (0.8 + 0.4 * r / 32767) }')"
    done
}
killer &
KILLER=$!
_svc_record_pid "$KILLER" bash

# ---- drive: restarts at 25 % and 60 %, stop killing at 98 % ----------------------------------
# PostgreSQL restarts in the background, so that the loop keeps watching the
# count: the worker can run the tasks from 25 % to 60 % in less time than a
# restart takes.
pg_restart() {
    stop_pg fast
    sleep 2
    start_pg_again
}
pg_restart_reap() { # once pg_restart has ended: its outcome, and the new postmaster's pid
    if wait "$pg_restarter"; then
        diag "PostgreSQL restarted (2 s down) at $pg_at done"
    else
        not_ok "chaos: PostgreSQL starts again" "$(cat "$TEST_TMP/pg-restart.log")"
    fi
    PG_PID=$(head -1 "$PGDATA_DIR/postmaster.pid" 2>/dev/null) # set in the subshell only
    pg_restarted=yes
}
pg_restarted=no broker_restarted=no killing=yes
pg_at="" broker_at="" last_report=$SECONDS pg_restarter=""
deadline=$((SECONDS + LIMIT))
worker_died=no
while ((SECONDS < deadline)); do
    d=$(done_count)
    ((d >= N)) && break
    if ! worker_alive; then
        worker_died=yes
        diag "the worker exited during the run: $(grep -E 'CRITICAL|cannot serve|stopping' "$WORKER_LOG" | tail -3)"
        break
    fi
    if [[ $pg_restarted == no ]] && ((d >= N / 4)); then
        pg_at=$d
        pg_restart >"$TEST_TMP/pg-restart.log" 2>&1 &
        pg_restarter=$!
        _svc_record_pid "$pg_restarter" bash
        pg_restarted=running
    fi
    if [[ $pg_restarted == running ]] && ! kill -0 "$pg_restarter" 2>/dev/null; then
        pg_restart_reap
    fi
    if [[ $broker_restarted == no && $BROKER_IS_PG == no ]] && ((d >= N * 3 / 5)); then
        broker_at=$d
        broker_restart "$broker_at"
        broker_restarted=yes
    fi
    if [[ $killing == yes ]] && ((d >= N * 98 / 100)); then
        touch "$PAUSE"
        killing=no
        diag "killer stopped at $d done"
    fi
    if ((SECONDS - last_report >= 10)); then
        diag "progress: $d/$N done, $(wc -l <"$KILLS") kills, $(broker_progress)"
        last_report=$SECONDS
    fi
    sleep 0.1
done
touch "$PAUSE"
[[ $pg_restarted == running ]] && pg_restart_reap
_settled() { (($(done_count) >= N)) && broker_settled; }
[[ $worker_died == no ]] && wait_for "$BROKER_SETTLE_WAIT" _settled
t1=$(date +%s.%N)
duration=$("$PY" -c "print(round($t1 - $t0, 1))")

touch "$STOP"
wait "$KILLER" 2>/dev/null
stop_worker TERM 30
worker_rc=$WORKER_RC
broker_after_worker

# ---- figures ----------------------------------------------------------------------------------
tally=$(rel tally "$IDS")
success=$(jget counts.SUCCESS <<<"$tally")
[[ $success == "<missing>" ]] && success=0
worker_lost_stored=$(jget exc_types.WorkerLostError <<<"$tally")
[[ $worker_lost_stored == "<missing>" ]] && worker_lost_stored=0
failures=$(jget counts.FAILURE <<<"$tally")
[[ $failures == "<missing>" ]] && failures=0
if [[ $ACKS == early ]]; then
    lost=$((N - success - worker_lost_stored)) # a killed running task is settled, not lost
else
    lost=$((N - success))
fi
kills=$(wc -l <"$KILLS")
log=$WORKER_LOG
deaths=$(log_count 'killed by signal 9' "$log")
db_reruns=$(log_count 're-running after reconnect' "$log")
duplicates=$(log_count 'already (has|holds) a SUCCESS result' "$log")
runs_ok=$(log_count 'books\.get_book_info\[[^]]+\] succeeded' "$log")
worker_lost=$(log_count 'raised WorkerLostError' "$log")
respawn_waits=$(log_count 'keeps dying' "$log")

echo "# ---- chaos figures ----"
echo "# tasks:            $N (books.get_book_info, $ACKS ack, -c $CONC, PostgreSQL)"
echo "# duration:         ${duration} s (worker start to all settled)"
echo "# kills:            $kills SIGKILLs of pool children ($deaths deaths logged by the master; $respawn_waits respawn back-offs)"
if [[ $BROKER_IS_PG == yes ]]; then
    echo "# restarts:         PostgreSQL 1 (at $pg_at done), the broker with it"
else
    echo "# faults:           PostgreSQL restarted once (at $pg_at done), $BROKER_LABEL $BROKER_FAULT (at $broker_at done)"
fi
broker_figures
echo "# results:          $tally"
echo "# lost:             $lost"
echo "# $(broker_final_line)"

if [[ $ACKS == late ]]; then
    expect_eq "chaos: every one of the $N task ids has a stored SUCCESS" "$N" "$success" "$tally"
    expect_eq "chaos: no FAILURE stored" 0 "$failures" "$tally"
else
    expect_eq "chaos: every one of the $N task ids has a stored result" "$N" \
        "$((success + failures))" "$tally"
    expect_eq "chaos: every FAILURE is a WorkerLostError (a task running when its child was killed)" \
        "$failures" "$worker_lost_stored" "$tally"
    if ((worker_lost_stored <= kills)); then
        ok "chaos: no more WorkerLostErrors ($worker_lost_stored) than kills ($kills)"
    else
        not_ok "chaos: no more WorkerLostErrors than kills" "$worker_lost_stored > $kills"
    fi
fi
expect_eq "chaos: lost = 0" 0 "$lost"
broker_checks
expect_eq "chaos: every SIGKILL of a child is logged by the master" "$kills" "$deaths"
if [[ $ACKS == late ]]; then
    expect_eq "chaos: no WorkerLostError (late ack + reject_on_worker_lost requeues instead)" 0 "$worker_lost"
fi
if ((kills >= 5)); then
    ok "chaos: the killer actually killed ($kills children)"
else
    not_ok "chaos: the killer actually killed" "kills: $kills"
fi
expect_eq "chaos: the worker survived the run" no "$worker_died" \
    "$(grep -E 'CRITICAL|cannot serve|not replacing' "$log" | tail -5)"
if [[ $BROKER_IS_PG == yes ]]; then
    expect_eq "chaos: PostgreSQL (the broker too) was restarted once" yes "$pg_restarted"
else
    expect_eq "chaos: PostgreSQL restarted once, $BROKER_LABEL $BROKER_FAULT" "yes yes" \
        "$pg_restarted $broker_restarted"
fi
expect_eq "chaos: the worker still exits 0 on TERM" 0 "$worker_rc" "$(worker_log_tail 10)"
check_worker_logs_clean
if [[ -n ${KEEP_TMP:-} ]]; then
    diag "worker log: $log; kills: $KILLS; $(broker_keep_note)"
fi
tap_done
