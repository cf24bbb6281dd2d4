#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_redis_outage.sh (issue 3, point 6): Redis (appendonly yes, appendfsync
# always) restarted in the middle of a run of late-ack get_book_info tasks:
# the children reconnect with backoff and go on, every task ends SUCCESS,
# nothing acked is lost, and nothing stays unacked.
# A second case restarts a Redis that takes seconds to load its dataset:
# results and acks that meet "LOADING" must be retried, not dropped.
. "$(dirname "$0")/lib.sh"

N=${REDIS_OUTAGE_TASKS:-5000}
start_redis_aof
start_pg
seed_books_pg || { not_ok "seed the books table"; tap_done; }
RESULT_URL="redis://127.0.0.1:$REDIS_PORT/1"
export RESULT_URL
done_count() { redis_cli -n 1 dbsize 2>/dev/null || echo 0; }

# ---- connections reset under a running task -------------------------------------------
# CLIENT KILL drops every client connection (a proxy or a failover does the
# same); the task then finishes and its result must still be stored.
build_rel_lib || tap_done
for mode in early late; do
    flags=()
    [[ $mode == late ]] && flags=(--acks-late)
    start_worker -A "$REL_LIB" -c 1 "${flags[@]}" -b "$REDIS_URL" --result-backend "$RESULT_URL" \
        -n "reset-$mode@localhost"
    wait_children 1 20
    id=$(send rel.pid '[2]')
    if [[ $mode == late ]]; then wait_running 1; else wait_running 0; fi
    redis_cli client kill type normal >/dev/null
    m=$(meta_of "$id" 8)
    expect_eq "$mode ack: connections reset while the task runs: its result is stored within 6 s" SUCCESS \
        "$(jget status <<<"$m")" "$(worker_log_tail 8)"
    _clean() { [[ "$(queue_len) $(unacked_count)" == "0 0 0" ]]; }
    wait_for 5 _clean
    expect_eq "$mode ack: ... and nothing is left queued or unacked" "0 0 0" "$(queue_len) $(unacked_count)"
    stop_worker TERM 20
    m=$(meta_of "$id" 1)
    [[ $(jget status <<<"$m") == SUCCESS ]] || diag "$mode ack: still no result after the worker stopped"
done

ids=$TEST_TMP/ids
t0=$SECONDS
rel bulk books.get_book_info "$N" --out "$ids" || not_ok "publish $N tasks"
diag "published $N get_book_info in $((SECONDS - t0)) s"
start_worker -c 4 --acks-late -b "$REDIS_URL" --result-backend "$RESULT_URL" --db "$PG_URL" \
    --visibility-timeout 10 --sweep-interval 2 -n redisout@localhost
wait_children 4 20 || not_ok "worker started 4 children" "$(worker_log_tail)"
_third() { (($(done_count) >= N / 3)); }
wait_for 60 _third || diag "only $(done_count) done after 60 s"
at=$(done_count)
kids=$(worker_children)
restart_redis_aof 2
diag "Redis restarted (2 s down) after $at of $N results; $(done_count) results and $(queue_len) queued after the restart"
t1=$SECONDS
tally=$(rel tally "$ids" --timeout 120)
diag "after the restart: all settled in $((SECONDS - t1)) s: $tally"
expect_eq "Redis restart in the middle of $N late-ack get_book_info: all $N SUCCESS" \
    "$N" "$(jget counts.SUCCESS <<<"$tally")" "$tally" "$(worker_log_tail 20)"
expect_eq "... none FAILURE, none missing" "<missing> <missing>" \
    "$(jget counts.FAILURE <<<"$tally") $(jget counts.MISSING <<<"$tally")" "$tally"
_drained() { [[ "$(queue_len) $(unacked_count)" == "0 0 0" ]]; }
if wait_for 30 _drained; then
    ok "afterwards nothing is queued and unacked is empty"
else
    not_ok "afterwards nothing is queued and unacked is empty" "queue $(queue_len), unacked $(unacked_count)" \
        "$(worker_log_tail 15)"
fi
restored=$(grep -oE 'restored [0-9]+ unacknowledged' "$WORKER_LOG" | grep -oE '[0-9]+' | paste -sd+ | bc 2>/dev/null)
diag "messages restored by the visibility sweep: ${restored:-0}"
if log_has "(broker|result backend).*retrying in [0-9]+ ms"; then
    ok "the children reconnected with backoff ($(grep -cE '(broker|result backend).*retrying in [0-9]+ ms' "$WORKER_LOG") retry lines)"
else
    not_ok "the children reconnected with backoff (retry lines in the log)" "$(worker_log_tail 15)"
fi
expect_eq "no child died: the same four children" "$kids" "$(worker_children)" "$(worker_log_tail 10)"
id=$(RESULT_URL=$RESULT_URL send books.get_book_info '[5]')
expect_eq "a task sent after the outage succeeds" 'SUCCESS "Book 5"' "$(RESULT_URL=$RESULT_URL meta_of "$id" 15 | summary)"
stop_worker TERM 30
expect_eq "worker exits 0" 0 "$WORKER_RC" "$(worker_log_tail)"

# ---- Redis still loading its dataset when the children come back ---------------------
# 4M junk keys in db 5 make loading take seconds; two tasks (early ack and
# late ack) finish inside that window, so their result store and late ack
# meet "-LOADING" replies.
build_rel_lib || tap_done
redis_cli -n 5 debug populate 4000000 junk 20 >/dev/null
redis_cli bgrewriteaof >/dev/null
_rewritten() {
    local info
    info=$(redis_cli info persistence | tr -d '\r')
    grep -q '^aof_rewrite_in_progress:0' <<<"$info" && grep -q '^aof_rewrite_scheduled:0' <<<"$info"
}
sleep 0.5
wait_for 60 _rewritten || diag "AOF rewrite still running"
start_worker -A "$REL_LIB" -c 2 -b "$REDIS_URL" --result-backend "$RESULT_URL" -n loading@localhost
wait_children 2 20
id1=$(RESULT_URL=$RESULT_URL send rel.pid '[2.5]')
id2=$(RESULT_URL=$RESULT_URL send rel.sleep_late '[2.5]')
wait_running 1 10 || diag "tasks not running: queue $(queue_len), unacked $(unacked_count)"
t0=$(date +%s.%N)
stop_redis
redis-server "$TEST_TMP/redis/redis.conf" </dev/null >/dev/null 2>&1 &
REDIS_PID=$!
_svc_record_pid "$REDIS_PID" redis
wait_for 60 _redis_loaded
loaded_after=$("$PY" -c "print(round($(date +%s.%N) - $t0, 1))")
diag "Redis restarted with 4M keys: loading took until ${loaded_after} s after the restart began (tasks end ~2.2 s after it)"
if log_has "LOADING"; then
    diag "the worker met LOADING replies: $(grep -c LOADING "$WORKER_LOG") lines"
else
    diag "the worker met no LOADING reply (window missed; this case proves little this time)"
fi
m1=$(RESULT_URL=$RESULT_URL meta_of "$id1" 15)
m2=$(RESULT_URL=$RESULT_URL meta_of "$id2" 15)
expect_eq "results finished while Redis was loading are stored after it loaded (early ack, late ack)" \
    "SUCCESS SUCCESS" "$(jget status <<<"$m1") $(jget status <<<"$m2")" \
    "$(grep -E 'LOADING|storing|ack of' "$WORKER_LOG" | head -8)"
_acked() { [[ "$(queue_len) $(unacked_count)" == "0 0 0" ]]; }
if wait_for 10 _acked; then
    ok "the late ack that met LOADING is retried: unacked empty"
else
    not_ok "the late ack that met LOADING is retried: unacked empty" \
        "queue $(queue_len), unacked $(unacked_count) (left for the visibility sweep: an hour by default)" \
        "$(grep -E 'LOADING|storing|ack of' "$WORKER_LOG" | head -8)"
fi
stop_worker TERM 30
expect_eq "worker exits 0" 0 "$WORKER_RC" "$(worker_log_tail)"

check_worker_logs_clean
tap_done
