#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_stranded.sh (issue 9, point 6): the visibility rule for hands. A
# worker SIGKILLed whole with an unstarted message in a hand and never
# started again under its name (a new pod, a new host) used to leave the
# message there for ever. Every worker now advertises itself with
# celeriac.alive.<node>.<master pid> (expiring, refreshed by the control
# process, or by the children with --without-remote-control), and the sweep
# of any worker returns a hand whose owner's key is missing once it has been
# idle longer than the visibility timeout. A live worker's hand is never
# touched, however long it holds a message.
. "$(dirname "$0")/lib.sh"

start_redis
build_rel_lib early || tap_done
W=(-A "$REL_LIB" -c 1 -b "$REDIS_URL" --result-backend "$REDIS_URL" -l debug)

# hold_unstarted NODE RATE [QUEUE]: one task run, then a second (id in
# $second) popped and waiting for its rate-limit turn: in the hand, unstarted.
hold_unstarted() {
    local first q=${3:-celery}
    _popped() { [[ $(queue_len "$1") == 0 ]]; }
    rate_limit "$1" "$2" >/dev/null
    first=$(send rel.pid '[0]' --queue "$q")
    meta_of "$first" 15 >/dev/null
    second=$(send rel.pid '[0]' --queue "$q")
    wait_for 5 _popped "$q" || diag "the second task was not popped: queue $q $(queue_len "$q")"
}
# alive_ttl NODE PID: seconds left on the worker's alive key (-2: none).
alive_ttl() { redis_cli ttl "celeriac.alive.$1.$2"; }
in_range() { (($1 >= $2 && $1 <= $3)); }

# ---- a worker advertises itself alive, with and without the control process ---------
start_worker "${W[@]}" -n quiet@localhost --without-remote-control --sweep-interval 1
wait_children 1 20 || not_ok "worker started" "$(worker_log_tail)"
_advertised() { [[ $(alive_ttl quiet@localhost "$WORKER_PID") -gt 0 ]]; }
wait_for 10 _advertised
ttl=$(alive_ttl quiet@localhost "$WORKER_PID")
if in_range "$ttl" 1 20; then
    ok "--without-remote-control: the children keep celeriac.alive.quiet@localhost.<pid> (ttl $ttl s)"
else
    not_ok "--without-remote-control: the children keep the alive key" "ttl $ttl" "$(worker_log_tail 10)"
fi
stop_worker TERM 20

# ---- worker A SIGKILLed whole with a message unstarted in its hand ----------------------
start_worker "${W[@]}" -n a@localhost --sweep-interval 1
wait_children 1 20 || not_ok "worker A started" "$(worker_log_tail)"
A_PID=$WORKER_PID
hold_unstarted a@localhost 20/m
hand=celeriac.hand.a@localhost.$A_PID.0
if redis_cli lindex "$hand" 0 | grep -q "$second"; then
    ok "setup: A holds a message unstarted in $hand"
else
    not_ok "setup: A holds a message unstarted in its hand" "$(redis_cli keys 'celeriac.*')"
fi
ttl=$(alive_ttl a@localhost "$A_PID")
if in_range "$ttl" 1 20; then
    ok "A (with its control process) is advertised alive (ttl $ttl s)"
else
    not_ok "A is advertised alive" "ttl $ttl" "$(worker_log_tail 10)"
fi
kids=$(worker_all_children)
kill -KILL "$A_PID"
# shellcheck disable=SC2086
kill -KILL $kids 2>/dev/null
wait "$A_PID" 2>/dev/null
WORKER_PID=
t0=$(date +%s)
expect_eq "setup: A's master and children SIGKILLed, the message left in the hand, queue empty" \
    "1 0" "$(redis_cli llen "$hand") $(queue_len)"

# ---- worker B, another name: returns it once A's alive key has expired ---------------
start_worker "${W[@]}" -n b@localhost --visibility-timeout 3 --sweep-interval 1
B_PID=$WORKER_PID
wait_children 1 20 || not_ok "worker B started" "$(worker_log_tail)"
m=$(meta_of "$second" 60)
t1=$(date +%s)
expect_eq "B (another name) returns the stranded message and runs it" SUCCESS \
    "$(jget status <<<"$m")" "hand $(redis_cli lrange "$hand" 0 -1 | head -c 200)" \
    "alive ttl $(alive_ttl a@localhost "$A_PID")" "$(worker_log_tail 10)"
if in_range $((t1 - t0)) 0 50; then
    ok "... within the bound: $((t1 - t0)) s after the kill (alive key 20 s + visibility 3 s)"
else
    not_ok "... within 50 s of the kill" "took $((t1 - t0)) s"
fi
ran_in=$(jget result.pid <<<"$m")
if [[ " $(worker_children) " == *" $ran_in "* ]]; then
    ok "... in B's child ($ran_in)"
else
    not_ok "... in B's child" "ran in $ran_in, B's children: $(worker_children)"
fi
if log_has "returned the message left [0-9]+ s in the hand $hand of a worker that is gone"; then
    ok "B logs the return of A's hand"
else
    not_ok "B logs the return of A's hand" "$(worker_log_tail 10)"
fi
expect_eq "A's hand is gone, nothing queued" "0 0" "$(redis_cli exists "$hand") $(queue_len)"
expect_eq "returned exactly once: one successful run" 1 "$(log_count "rel\.pid\[$second\] succeeded")"

# ---- a live worker's hand is never emptied, however long it holds a message -------------
# A2 holds a message unstarted for about 15 s (rate limit 4/m) on a queue B
# does not consume, far longer than B's visibility timeout (3 s), while B
# sweeps every second. A dead worker's hand planted at the same moment
# (ghost: no alive key) proves B is sweeping meanwhile: it goes back to its
# queue after about 4 s; A2's stays, and A2 runs its message itself.
B_LOG=$WORKER_LOG
start_worker "${W[@]}" -n a2@localhost -Q live --sweep-interval 1
A2_PID=$WORKER_PID
wait_children 1 20 || not_ok "worker A2 started" "$(worker_log_tail)"
ghost_id=$(send rel.pid '[0]' --queue parked)
hold_unstarted a2@localhost 4/m live
redis_cli lmove parked celeriac.hand.ghost@elsewhere.4242.0 right left >/dev/null
live_hand=celeriac.hand.a2@localhost.$A2_PID.0
_ghost_back() { [[ $(queue_len parked) == 1 ]]; }
if wait_for 12 _ghost_back; then
    ok "B returns a dead worker's hand planted meanwhile (the sweep runs)"
else
    not_ok "B returns a dead worker's hand planted meanwhile" \
        "parked $(queue_len parked), ghost $(redis_cli llen celeriac.hand.ghost@elsewhere.4242.0)" \
        "$(worker_log_tail 10 "$B_LOG")"
fi
if redis_cli lindex parked 0 | grep -q "\"redelivered\": *true"; then
    ok "... marked redelivered, on its own queue ($ghost_id)"
else
    not_ok "... marked redelivered" "$(redis_cli lindex parked 0 | head -c 400)"
fi
idle=$(redis_cli object idletime "$live_hand")
if redis_cli lindex "$live_hand" 0 | grep -q "$second" && ((idle > 3)); then
    ok "A2's hand, idle $idle s > visibility timeout 3 s, still holds its message (A2 is alive)"
else
    not_ok "A2's hand still holds its message" "idle '$idle'" \
        "$(redis_cli lrange "$live_hand" 0 -1 | head -c 200)" "$(worker_log_tail 10 "$B_LOG")"
fi
m=$(meta_of "$second" 30)
ran_in=$(jget result.pid <<<"$m")
if [[ $(jget status <<<"$m") == SUCCESS && " $(worker_children) " == *" $ran_in "* ]]; then
    ok "... and A2 runs it itself when its turn comes ($ran_in)"
else
    not_ok "... and A2 runs it itself" "$m" "A2's children $(worker_children)" "$(worker_log_tail 10)"
fi
if ! log_has "in the hand celeriac.hand.a2@" "$B_LOG"; then
    ok "B never returned A2's hand"
else
    not_ok "B never returned A2's hand" "$(grep 'celeriac.hand.a2@' "$B_LOG" | head -3)"
fi
expect_eq "A2's message ran once" 1 "$(log_count "rel\.pid\[$second\] succeeded")"
stop_worker TERM 20
WORKER_PID=$B_PID
WORKER_LOG=$B_LOG
stop_worker TERM 20
expect_eq "B exits 0" 0 "$WORKER_RC" "$(worker_log_tail)"

check_worker_logs_clean
tap_done
