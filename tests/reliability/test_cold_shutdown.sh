#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_cold_shutdown.sh (issue 9, point 10a/b): a cold shutdown (a second
# TERM, a second INT, or QUIT) kills the children mid-task. What they were
# running is settled on the way out, not left behind:
#  - late ack: the messages go back to their queues, marked redelivered, as
#    kombu restores a closing channel's unacked messages (before, they sat in
#    `unacked` until the visibility timeout), and so do held ETA messages;
#  - early ack: the tasks are stored as FAILURE WorkerLostError, as a
#    replacement child stores them (before, they stayed PENDING forever),
#    in both early-ack modes (unacked-recording and plain pop).
. "$(dirname "$0")/lib.sh"

start_redis
build_rel_lib || tap_done
build_rel_lib early || tap_done
LIB=$TEST_TMP/librel.so
W=(-b "$REDIS_URL" --result-backend "$REDIS_URL" -c 2)

# cold_stop HOW: sends the cold shutdown and waits for the master; ok when it
# exits within a few seconds.
cold_stop() {
    local how=$1 t0=$SECONDS
    case $how in
    "TERM TERM" | "INT INT")
        kill -"${how%% *}" "$WORKER_PID"
        sleep 0.3
        stop_worker "${how%% *}" 15
        ;;
    QUIT) stop_worker QUIT 15 ;;
    esac
    if [[ $WORKER_RC != timeout ]] && ((SECONDS - t0 <= 5)); then
        ok "cold shutdown ($how): the master exits promptly ($((SECONDS - t0)) s, status $WORKER_RC)"
    else
        not_ok "cold shutdown ($how): the master exits promptly" "status $WORKER_RC after $((SECONDS - t0)) s" \
            "$(worker_log_tail 10)"
    fi
}

# queued_redelivered: how many queued messages are marked redelivered.
queued_redelivered() { redis_cli lrange celery 0 -1 | grep -cE '"redelivered": ?true'; }

# ---- late ack: running tasks (and a held ETA message) go back to the queue -------------
for how in "TERM TERM" "INT INT" "QUIT"; do
    redis_cli del celery unacked unacked_index >/dev/null
    start_worker -A "$LIB" "${W[@]}" --acks-late -n cold-late@localhost
    wait_children 2 20 || not_ok "late-ack worker started 2 children" "$(worker_log_tail)"
    # the ETA message first: a busy child does not fetch
    send rel.pid '[0]' --countdown 120 >/dev/null
    wait_running 1 || diag "ETA message not held: queue $(queue_len), unacked $(unacked_count)"
    a=$(send rel.pid '[5]')
    b=$(send rel.pid '[5]')
    wait_running 3 || diag "tasks not running: queue $(queue_len), unacked $(unacked_count)"
    cold_stop "$how"
    expect_eq "late ack, cold ($how): the 2 running tasks and the held ETA message are back in the queue, unacked empty" \
        "3 0 0" "$(queue_len) $(unacked_count)" "$(worker_log_tail 10)"
    expect_eq "late ack, cold ($how): each restored message is marked redelivered" 3 "$(queued_redelivered)"
    expect_eq "late ack, cold ($how): no result was stored for the killed tasks" "none none" \
        "$(meta_of "$a" 0 | summary) $(meta_of "$b" 0 | summary)"
done
start_worker -A "$LIB" "${W[@]}" --acks-late -n after-cold@localhost
expect_eq "late ack: a new worker runs the restored tasks to SUCCESS" "SUCCESS SUCCESS" \
    "$(meta_of "$a" 20 | jget status) $(meta_of "$b" 20 | jget status)" "$(worker_log_tail 10)"
stop_worker TERM 20
redis_cli del celery unacked unacked_index >/dev/null

# ---- early ack: the killed tasks are WorkerLostError, not PENDING forever ---------------
for mode in recorded plain; do
    lib=$LIB
    [[ $mode == plain ]] && lib=$TEST_TMP/librel-early.so
    start_worker -A "$lib" "${W[@]}" -n "cold-early-$mode@localhost"
    wait_children 2 20 || not_ok "early-ack worker started 2 children" "$(worker_log_tail)"
    a=$(send rel.pid '[5]')
    b=$(send rel.pid '[5]')
    wait_running 0 || diag "tasks not running: queue $(queue_len), unacked $(unacked_count)"
    cold_stop "TERM TERM"
    got="$(meta_of "$a" 2 | summary) / $(meta_of "$b" 2 | summary)"
    expect_eq "early ack ($mode), cold shutdown: both running tasks are FAILURE WorkerLostError" \
        "FAILURE WorkerLostError(billiard.exceptions) / FAILURE WorkerLostError(billiard.exceptions)" \
        "$got" "$(worker_log_tail 10)"
    msg=$(meta_of "$a" 1 | jget result.exc_message)
    if [[ $msg == *"signal 9"* ]]; then
        ok "early ack ($mode): the WorkerLostError names the signal ($msg)"
    else
        not_ok "early ack ($mode): the WorkerLostError names the signal 9" "exc_message: $msg"
    fi
    expect_eq "early ack ($mode): nothing queued or unacked afterwards" "0 0 0" "$(queue_len) $(unacked_count)"
done

check_worker_logs_clean
tap_done
