#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_error_paths.sh (issue 9, points 2 and 8): every class of failure on
# the worker's error paths backs off and is logged once per episode, not once
# per attempt, and is not called a lost connection when it is not one:
#   - Redis refusing writes (maxmemory), late and early ack: the worker stops
#     pulling, keeps what it ran, and settles it once Redis accepts writes
#     (it used to pop everything, fail every store and ack, and leave it all
#     in unacked for the visibility timeout);
#   - an error reply on every pop (a queue key of the wrong type);
#   - an unreachable result backend;
#   - the broker going away.
# Each is held for a few seconds while the worker's CPU and log growth are
# measured.
. "$(dirname "$0")/lib.sh"

start_redis_aof
build_rel_lib || tap_done
REL_LATE=$REL_LIB
build_rel_lib early || tap_done

# bounded NAME SECONDS: CPU and log growth of the worker over SECONDS.
bounded() {
    local name=$1 secs=$2 procs t0 b0 ticks grown
    procs=("$WORKER_PID" $(worker_all_children))
    t0=$(cpu_ticks "${procs[@]}")
    b0=$(log_bytes)
    sleep "$secs"
    ticks=$(($(cpu_ticks "${procs[@]}") - t0))
    grown=$(($(log_bytes) - b0))
    if ((ticks <= secs * 5 && grown <= 400)); then
        ok "$name: $((ticks * 10)) ms CPU and $grown log bytes in $secs s"
    else
        not_ok "$name: at most 5 % CPU and 400 log bytes (a failure is logged once per episode) in $secs s" \
            "$((ticks * 10)) ms CPU, $grown bytes" "$(worker_log_tail 6)"
    fi
}

# ---- Redis refuses writes (maxmemory) ------------------------------------------------
for mode in late early; do
    if [[ $mode == late ]]; then lib=$REL_LATE extra=(--acks-late); else lib=$REL_LIB extra=(); fi
    ids=$(send rel.pid '[0]' --count 5 | tr '\n' ' ')
    redis_cli config set maxmemory 1 >/dev/null
    start_worker -A "$lib" -c 1 -b "$REDIS_URL" --result-backend "$REDIS_URL" \
        -n "oom-$mode@localhost" "${extra[@]}"
    wait_children 1 20 || not_ok "$mode ack: worker started" "$(worker_log_tail)"
    sleep 2
    bounded "$mode ack, Redis over maxmemory" 5
    if log_has "Redis refuses writes \(maxmemory\)" && ! log_has "6\.2 or later|not usable"; then
        ok "$mode ack: the log says Redis refuses writes (maxmemory)"
    else
        not_ok "$mode ack: the log says Redis refuses writes (maxmemory)" "$(worker_log_tail 6)"
    fi
    left=$(queue_len)
    if ((left >= 4)); then
        ok "$mode ack: the worker stopped pulling ($left of 5 still queued)"
    else
        not_ok "$mode ack: the worker stops pulling while results cannot be stored" \
            "$left of 5 queued, unacked $(unacked_count)"
    fi
    redis_cli config set maxmemory 0 >/dev/null
    # shellcheck disable=SC2086
    st=$(rel wait $ids --timeout 20 | while read -r line; do summary <<<"$line"; done |
        cut -d' ' -f1 | sort | uniq -c | tr -s ' ')
    expect_eq "$mode ack: all five settle once Redis accepts writes" " 5 SUCCESS" "$st" \
        "$(worker_log_tail 8)"
    expect_eq "$mode ack: nothing left unacked" "0 0" "$(unacked_count)"
    if log_has "works again after"; then
        ok "$mode ack: the end of the episode is logged once"
    else
        not_ok "$mode ack: the end of the episode is logged" "$(worker_log_tail 6)"
    fi
    stop_worker
done

# ---- an error reply on every pop -------------------------------------------------------
redis_cli set wrongq not-a-list >/dev/null
start_worker -A "$REL_LATE" -c 1 -b "$REDIS_URL" --result-backend "$REDIS_URL" \
    -Q wrongq,celery -n wrongtype@localhost --acks-late
wait_children 1 20 || not_ok "wrong-type worker started" "$(worker_log_tail)"
sleep 1
bounded "a queue key of the wrong type" 5
if log_has "WRONGTYPE" && ! log_has "not usable|connection lost"; then
    ok "a wrong-type key is reported as what it is, not as a lost connection"
else
    not_ok "a wrong-type key is reported as what it is" "$(worker_log_tail 4)"
fi
redis_cli del wrongq >/dev/null
id=$(send rel.pid '[0]')
expect_eq "the worker serves once the key is fixed" "SUCCESS" \
    "$(meta_of "$id" 20 | summary | cut -d' ' -f1)" "$(worker_log_tail 6)"
stop_worker

# ---- an unreachable result backend ------------------------------------------------------
start_worker -A "$REL_LATE" -c 1 -b "$REDIS_URL" --result-backend "redis://127.0.0.1:$(free_port)/0" \
    -n nobackend@localhost
sleep 3
bounded "an unreachable result backend" 5
stop_worker

# ---- the broker goes away ---------------------------------------------------------------
start_worker -A "$REL_LATE" -c 2 -b "$REDIS_URL" --result-backend "$REDIS_URL" -n gone@localhost
wait_children 2 20 || not_ok "worker started" "$(worker_log_tail)"
stop_redis
sleep 1
bounded "the broker is down" 6
_redis_aof_launch
id=$(send rel.pid '[0]')
expect_eq "the worker serves again once the broker is back" "SUCCESS" \
    "$(meta_of "$id" 30 | summary | cut -d' ' -f1)" "$(worker_log_tail 6)"
stop_worker
tap_done
