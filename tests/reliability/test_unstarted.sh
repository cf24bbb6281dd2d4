#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_unstarted.sh (issues 3, 5 and 15): a worker without --acks-late keeps
# no unacked record for tasks that ack early, even when others in its library
# ack late (their messages are recorded before they start); a message is
# moved by its pop into the child's hand, a
# Redis list emptied by the child's next pop. A child
# SIGKILLed in that window has its message put back by its replacement; on a
# cold shutdown (no replacement comes) by the salvage process; after a whole
# worker was SIGKILLed, by the next worker of the same name. A message whose
# task started is known as settled (by its hash, in shared memory): its loss
# is a WorkerLostError, as early ack means, and it is not run again. The window is held open with a rate limit: the second task waits
# in the child, popped but not started.
. "$(dirname "$0")/lib.sh"

start_redis
build_rel_lib early || tap_done
W=(-A "$REL_LIB" -c 1 -b "$REDIS_URL" --result-backend "$REDIS_URL" -l debug)

_popped() { [[ $(queue_len) == 0 ]]; }

# hold_unstarted NODE: a rate limit of one start every 3 s, one task run, and
# a second (id in $second) popped and waiting for its turn: in the hand, unstarted.
hold_unstarted() {
    local first
    rate_limit "$1" 20/m >/dev/null
    first=$(send rel.pid '[0]')
    meta_of "$first" 10 >/dev/null
    second=$(send rel.pid '[0]')
    wait_for 5 _popped || diag "the second task was not popped: queue $(queue_len)"
}

# ---- early ack: no unacked bookkeeping at all ------------------------------------------
start_worker "${W[@]}" -n plain@localhost
wait_children 1 20 || not_ok "worker started" "$(worker_log_tail)"
redis_cli config resetstat >/dev/null
ids=$(send rel.pid '[0]' --count 3 | tr '\n' ' ')
# shellcheck disable=SC2086
st=$(rel wait $ids --timeout 20 | while read -r line; do summary <<<"$line"; done |
    cut -d' ' -f1 | sort | uniq -c | tr -s ' ')
expect_eq "three early-ack tasks succeed" " 3 SUCCESS" "$st" "$(worker_log_tail 10)"
stats=$(redis_cli info commandstats | tr -d '\r')
if ! grep -qE '^cmdstat_(zadd|zrem|hdel):' <<<"$stats"; then
    ok "the worker wrote nothing to kombu's unacked bookkeeping (no ZADD, ZREM or HDEL)"
else
    not_ok "the worker wrote nothing to kombu's unacked bookkeeping" \
        "$(grep -E '^cmdstat_' <<<"$stats" | cut -d, -f1)"
fi
expect_eq "unacked and unacked_index stay empty" "0 0" "$(unacked_count)"
# One message at a time, each waited for: every fetch after the first found
# the lists empty and waited, so the next starts with the script over every
# list, not with an LMOVE of the first list that finds nothing. MONITOR shows
# what the worker sent apart from what its scripts ran ("lua").
sleep 0.2 # the child's fetch after the last task, which found nothing, before the watch
(exec redis-cli -h 127.0.0.1 -p "$REDIS_PORT" monitor >"$TEST_TMP/monitor.txt") &
monitor=$!
sleep 0.2
for _ in 1 2 3 4; do meta_of "$(send rel.pid '[0]')" 10 >/dev/null; done
kill "$monitor"
wait "$monitor" 2>/dev/null
sent=$(grep -v ' lua\]' "$TEST_TMP/monitor.txt")
lmoves=$(grep -ci '\] "lmove"' <<<"$sent") blmoves=$(grep -ci '\] "blmove"' <<<"$sent")
if ((lmoves == 0 && blmoves >= 4)); then
    ok "tasks sent one at a time: each fetch after a wait starts with the script, no LMOVE ($blmoves BLMOVE)"
else
    not_ok "tasks sent one at a time: no LMOVE that finds nothing after a wait" \
        "LMOVE $lmoves, BLMOVE $blmoves" "$(grep -i 'move' <<<"$sent" | cut -c1-120 | head -12)"
fi

# ---- a started task is settled: killed, it is lost as early ack says, not run again -------
running=$(send rel.pid '[3]')
_started() { [[ $(queue_len) == 0 ]]; }
wait_for 10 _started || diag "rel.pid(3) was not popped"
sleep 0.5
if redis_cli lindex celeriac.hand.plain@localhost.$WORKER_PID.0 0 | grep -q "$running"; then
    ok "while its task runs, the message is still in the hand (the next pop empties it)"
else
    not_ok "while its task runs, the message is still in the hand" \
        "$(redis_cli lrange celeriac.hand.plain@localhost.$WORKER_PID.0 0 -1 | head -c 300)"
fi
kid=$(only_child)
kill -KILL "$kid"
m=$(meta_of "$running" 20)
expect_eq "a started early-ack task whose child is killed: FAILURE WorkerLostError, not run again" \
    "FAILURE WorkerLostError(billiard.exceptions)" "$(summary <<<"$m")" "$(worker_log_tail 10)"
sleep 1.5
expect_eq "... and 1.5 s later still that, with nothing queued (it was not put back)" \
    "FAILURE WorkerLostError(billiard.exceptions) 0" \
    "$(meta_of "$running" 5 | summary) $(queue_len)" "$(worker_log_tail 10)"

# ---- SIGKILL between pop and start: the replacement puts the message back ------------
reply=$(rate_limit plain@localhost 20/m)
if grep -q "new rate limit set successfully" <<<"$reply"; then
    ok "setup: rate_limit rel.pid 20/m (one start every 3 s)"
else
    not_ok "setup: rate_limit rel.pid 20/m" "$reply"
fi
first=$(send rel.pid '[0]')
meta_of "$first" 10 >/dev/null
second=$(send rel.pid '[0]')
if wait_for 5 _popped; then
    ok "setup: the second task is popped and waits for its rate-limit turn"
else
    not_ok "setup: the second task is popped" "queue $(queue_len)" "$(worker_log_tail 5)"
fi
expect_eq "... with no unacked record while it waits" "0 0" "$(unacked_count)"
if redis_cli lindex celeriac.hand.plain@localhost.$WORKER_PID.0 0 | grep -q "$second"; then
    ok "... and in child 0's hand (celeriac.hand.plain@localhost.$WORKER_PID.0)"
else
    not_ok "... and in child 0's hand" "$(redis_cli keys 'celeriac.hand.*')" \
        "$(redis_cli lrange celeriac.hand.plain@localhost.$WORKER_PID.0 0 -1 | head -c 300)"
fi
kid=$(only_child)
kill -KILL "$kid"
m=$(meta_of "$second" 20)
expect_eq "the message a child was killed holding unstarted is put back and succeeds" SUCCESS \
    "$(jget status <<<"$m")" "$m" "$(worker_log_tail 10)"
expect_ran_in_replacement "... in the replacement child" "$kid" "$m"
if log_has "popped from 'celery' by a process that died before starting it was put back"; then
    ok "the put-back is logged"
else
    not_ok "the put-back is logged" "$(worker_log_tail 10)"
fi
expect_eq "nothing is left behind (queue, unacked)" "0 0 0" "$(queue_len) $(unacked_count)"

stop_worker TERM 20
expect_eq "after a warm shutdown no hand is left" "" "$(redis_cli keys 'celeriac.hand.*')"

# ---- cold shutdown with a message unstarted: the salvage process puts it back ---------
start_worker "${W[@]}" -n cold@localhost
wait_children 1 20 || not_ok "worker started" "$(worker_log_tail)"
hold_unstarted cold@localhost
kill -QUIT "$WORKER_PID"
if wait_worker_exit 20; then
    ok "cold shutdown: the worker exits"
else
    not_ok "cold shutdown: the worker exits" "$(worker_log_tail 10)"
fi
expect_eq "the message its killed child held unstarted is back on the queue" 1 "$(queue_len)" \
    "$(worker_log_tail 10)"
if redis_cli lindex celery 0 | grep -q '"redelivered": *true'; then
    ok "... marked redelivered"
else
    not_ok "... marked redelivered" "$(redis_cli lindex celery 0 | head -c 600)"
fi
if log_has "Salvage.*put back"; then
    ok "the salvage process logged the put-back"
else
    not_ok "the salvage process logged the put-back" "$(worker_log_tail 10)"
fi
start_worker "${W[@]}" -n after@localhost
m=$(meta_of "$second" 20)
expect_eq "the next worker runs it" SUCCESS "$(jget status <<<"$m")" "$m"
stop_worker TERM 20

# ---- the whole worker SIGKILLed: the next worker of that name puts the message back -------
start_worker "${W[@]}" -n whole@localhost
wait_children 1 20 || not_ok "worker started" "$(worker_log_tail)"
hold_unstarted whole@localhost
kids=$(worker_all_children)
kill -KILL "$WORKER_PID"
# shellcheck disable=SC2086
kill -KILL $kids 2>/dev/null
wait "$WORKER_PID" 2>/dev/null
WORKER_PID=
expect_eq "setup: master and children SIGKILLed with the message unstarted (queue empty)" 0 "$(queue_len)"
start_worker "${W[@]}" -n whole@localhost
m=$(meta_of "$second" 20)
expect_eq "the next worker named whole@localhost puts it back and runs it" SUCCESS \
    "$(jget status <<<"$m")" "$m" "$(worker_log_tail 10)"
stop_worker TERM 20

# ---- an ETA message held by a child that is killed goes back at once, not after an hour ----
start_worker "${W[@]}" -n eta@localhost
wait_children 1 20 || not_ok "worker started" "$(worker_log_tail)"
later=$(send rel.pid '[0]' --countdown 4)
_held_eta() { [[ $(queue_len) == 0 && $(redis_cli hlen unacked) == 1 ]]; }
if wait_for 5 _held_eta; then
    ok "setup: a countdown-4 s task is held by the child, recorded in unacked"
else
    not_ok "setup: a countdown task is held by the child" "queue $(queue_len), unacked $(unacked_count)"
fi
kid=$(only_child)
kill -KILL "$kid"
m=$(meta_of "$later" 15)
expect_eq "after its holder was SIGKILLed it still runs at its time (visibility timeout: an hour)" \
    SUCCESS "$(jget status <<<"$m")" "unacked $(unacked_count), queue $(queue_len)" \
    "$(worker_log_tail 10)"
if log_has "restored 1 ETA message\(s\) the previous child of this slot held"; then
    ok "the replacement logs that it restored the held message"
else
    not_ok "the replacement logs that it restored the held message" "$(worker_log_tail 10)"
fi
stop_worker TERM 20

# ---- two live workers of one name (Celery's default name on one host) keep their own hands ----
start_worker "${W[@]}" -n twin@localhost
wait_children 1 20 || not_ok "worker started" "$(worker_log_tail)"
first_pid=$WORKER_PID
hold_unstarted twin@localhost
hand=celeriac.hand.twin@localhost.$first_pid.0
start_worker "${W[@]}" -n twin@localhost
twin_pid=$WORKER_PID
wait_children 1 20 || not_ok "the second worker of that name started" "$(worker_log_tail)"
sleep 1
if redis_cli lindex "$hand" 0 | grep -q "$second"; then
    ok "a second live worker of the same name leaves the first one's hand alone"
else
    not_ok "a second live worker of the same name leaves the first one's hand alone" \
        "hand $hand: $(redis_cli lrange "$hand" 0 -1 | head -c 200)" "$(worker_log_tail 10)"
fi
m=$(meta_of "$second" 20)
expect_eq "... and the first worker runs it" SUCCESS "$(jget status <<<"$m")" "$m"
stop_worker TERM 20
WORKER_PID=$first_pid
stop_worker TERM 20
expect_eq "both stopped warm: no hand is left" "" "$(redis_cli keys 'celeriac.hand.*')" \
    "twin $twin_pid"

# ---- a library with late-ack tasks: early ones still go to the hand, a late one is recorded ----
build_rel_lib || tap_done
start_worker -A "$REL_LIB" -c 1 -b "$REDIS_URL" --result-backend "$REDIS_URL" -n mixed@localhost
wait_children 1 20 || not_ok "worker started" "$(worker_log_tail)"
early=$(send rel.pid '[1]')
wait_for 5 _popped || diag "the early-ack task was not popped: queue $(queue_len)"
sleep 0.3
expect_eq "a library with late-ack tasks: its early-ack task runs with no unacked record" "0 0" \
    "$(unacked_count)"
late=$(send rel.sleep_late '[2]')
wait_running 1 || diag "the late-ack task did not start: queue $(queue_len), unacked $(unacked_count)"
expect_eq "... its late-ack task is recorded in unacked before it starts" "1 1" "$(unacked_count)"
kid=$(only_child)
kill -KILL "$kid"
m=$(meta_of "$late" 20)
expect_eq "... a child killed running it: the message goes back to its queue and succeeds" \
    SUCCESS "$(jget status <<<"$m")" "$m" "$(worker_log_tail 10)"
expect_eq "... the early-ack task succeeded before" SUCCESS "$(meta_of "$early" 5 | jget status)"
wait_for 5 _popped
expect_eq "... and nothing is left unacked" "0 0" "$(unacked_count)"
stop_worker TERM 20

check_worker_logs_clean
tap_done
