#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_poison.sh (issue 9, point 5): a task that kills its child must not
# starve the worker. With late ack and reject_on_worker_lost, a lost task is
# requeued by the replacement child; one that segfaults every time used to
# circulate for ever. The requeue now counts the losses in the message
# itself (properties.celeriac_worker_lost), and after
# --max-worker-lost-requeues requeues (default 3) it stores WorkerLostError
# and acks instead. Ordinary tasks sent alongside run promptly meanwhile.
. "$(dirname "$0")/lib.sh"

start_redis
build_rel_lib || tap_done
W=(-A "$REL_LIB" -c 1 -b "$REDIS_URL" --result-backend "$REDIS_URL" -l debug --acks-late)

deaths() { log_count "child 0 \(pid [0-9]+\) killed by signal 11"; }

if "$CELERIAC_BIN" worker --help | grep -q -- "--max-worker-lost-requeues N"; then
    ok "--help documents --max-worker-lost-requeues"
else
    not_ok "--help documents --max-worker-lost-requeues" "$("$CELERIAC_BIN" worker --help | tail -20)"
fi

# ---- the default: requeued 3 times, then WorkerLostError; an ordinary task runs meanwhile ----
start_worker "${W[@]}" -n poison@localhost
wait_children 1 20 || not_ok "worker started" "$(worker_log_tail)"
t0=$(date +%s)
bad=$(send rel.segv)
good=$(send rel.pid '[0]')
m=$(meta_of "$good" 20)
t1=$(date +%s)
expect_eq "an ordinary task sent right after the poison one succeeds" SUCCESS \
    "$(jget status <<<"$m")" "$m" "$(worker_log_tail 10)"
if ((t1 - t0 <= 20)); then
    ok "... promptly: in $((t1 - t0)) s (the poison is requeued to the back of the queue)"
else
    not_ok "... promptly (20 s)" "$((t1 - t0)) s, $(deaths) crashes" "$(worker_log_tail 10)"
fi
m=$(meta_of "$bad" 60)
t2=$(date +%s)
got="$(summary <<<"$m") $(jget result.exc_message <<<"$m")"
if [[ $got == "FAILURE WorkerLostError(billiard.exceptions) "*"signal 11"* ]]; then
    ok "the poison task ends FAILURE WorkerLostError (signal 11) after $((t2 - t0)) s"
else
    not_ok "the poison task ends FAILURE WorkerLostError (signal 11)" "got: $got" "$(worker_log_tail 15)"
fi
expect_eq "... after exactly 4 runs (3 requeues, the default)" 4 "$(deaths)" "$(worker_log_tail 15)"
if log_has "rel\.segv\[$bad\]: its process died \(signal 11\) in each of its 4 runs; not requeued again \(--max-worker-lost-requeues 3\)"; then
    ok "the log says why it was not requeued again"
else
    not_ok "the log says why it was not requeued again" "$(grep -F "$bad" "$WORKER_LOG" | tail -5)"
fi
expect_eq "requeues logged with their count: deaths 1, 2 and 3 of at most 4" 3 \
    "$(log_count "rel\.segv\[$bad\]: its process died \(signal 11\); requeued .*death [123] of at most 4")"
sleep 3
expect_eq "3 s later: no further crash, nothing queued or unacked" "4 0 0 0" \
    "$(deaths) $(queue_len) $(unacked_count)" "$(worker_log_tail 10)"
id=$(send rel.pid '[0]')
expect_eq "the worker goes on serving" SUCCESS "$(meta_of "$id" 20 | jget status)"
stop_worker TERM 20
expect_eq "worker exits 0" 0 "$WORKER_RC" "$(worker_log_tail)"

# ---- --max-worker-lost-requeues 0: the first crash is final ---------------------------------
start_worker "${W[@]}" -n zero@localhost --max-worker-lost-requeues 0
wait_children 1 20 || not_ok "worker started" "$(worker_log_tail)"
bad=$(send rel.segv)
m=$(meta_of "$bad" 30)
expect_eq "--max-worker-lost-requeues 0: FAILURE WorkerLostError after one run" \
    "FAILURE WorkerLostError(billiard.exceptions) 1" "$(summary <<<"$m") $(deaths)" \
    "$(worker_log_tail 10)"
sleep 2
expect_eq "... not run again, nothing queued or unacked" "1 0 0 0" \
    "$(deaths) $(queue_len) $(unacked_count)"

# ---- a task killed once (SIGKILL) is still requeued and runs to success ---------------------
id=$(send rel.pid '[3]')
wait_running 1 || diag "the task did not start: queue $(queue_len), unacked $(unacked_count)"
kid=$(only_child)
kill -KILL "$kid"
m=$(meta_of "$id" 20)
expect_eq "with a limit of 0 requeues, a killed task fails at once too" \
    "FAILURE WorkerLostError(billiard.exceptions)" "$(summary <<<"$m")" "$(worker_log_tail 10)"
stop_worker TERM 20

start_worker "${W[@]}" -n once@localhost --max-worker-lost-requeues 1
wait_children 1 20 || not_ok "worker started" "$(worker_log_tail)"
id=$(send rel.pid '[3]')
wait_running 1 || diag "the task did not start: queue $(queue_len), unacked $(unacked_count)"
kid=$(only_child)
kill -KILL "$kid"
m=$(meta_of "$id" 20)
expect_eq "--max-worker-lost-requeues 1: a task killed once is requeued and succeeds" SUCCESS \
    "$(jget status <<<"$m")" "$(worker_log_tail 10)"
stop_worker TERM 20

check_worker_logs_clean
tap_done
