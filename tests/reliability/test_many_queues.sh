#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_many_queues.sh (issue 9, points 1 and 3): a worker consuming many
# queues serves every one of them in both ack modes (late ack with seven or
# more queues used to pop nothing and spin, logging 50 MB/s), and an idle
# worker is idle: few Redis commands, no CPU, even without heartbeats (whose
# absence used to put the control process at 100 % CPU), while a task sent
# to its last queue still starts at once.
. "$(dirname "$0")/lib.sh"

start_redis
build_rel_lib || tap_done
REL_LATE=$REL_LIB
build_rel_lib early || tap_done
QUEUES=q1,q2,q3,q4,q5,q6,q7,q8,q9,q10

# ---- point 1: every queue served, late and early ack -------------------------------------
for mode in late early; do
    if [[ $mode == late ]]; then lib=$REL_LATE extra=(--acks-late); else lib=$REL_LIB extra=(); fi
    start_worker -A "$lib" -c 1 -b "$REDIS_URL" --result-backend "$REDIS_URL" -Q "$QUEUES" \
        -n "$mode@localhost" "${extra[@]}"
    wait_children 1 20 || not_ok "$mode ack: worker started" "$(worker_log_tail)"
    before_log=$(log_bytes)
    ids=$(for q in q1 q7 q10; do send rel.pid '[0]' --queue "$q"; done | tr '\n' ' ')
    # shellcheck disable=SC2086
    st=$(rel wait $ids --timeout 15 | while read -r line; do summary <<<"$line"; done |
        cut -d' ' -f1 | sort | uniq -c | tr -s ' ')
    expect_eq "$mode ack, 10 queues: tasks sent to q1, q7 and q10 all succeed" " 3 SUCCESS" "$st" \
        "$(worker_log_tail 20)"
    grown=$(($(log_bytes) - before_log))
    if ((grown < 4000)); then
        ok "$mode ack, 10 queues: the log grew $grown bytes for three tasks"
    else
        not_ok "$mode ack, 10 queues: the log stays quiet" "grew $grown bytes" "$(worker_log_tail 5)"
    fi
    if grep -q "not usable\|fetch.*failed" "$WORKER_LOG"; then
        not_ok "$mode ack, 10 queues: no fetch failure logged" "$(grep -m3 'not usable\|fetch' "$WORKER_LOG")"
    else
        ok "$mode ack, 10 queues: no fetch failure logged"
    fi
    stop_worker
done

# ---- point 3: idle means idle ----------------------------------------------------------
start_worker -A "$REL_LIB" -c 2 -b "$REDIS_URL" --result-backend "$REDIS_URL" -Q "$QUEUES" \
    -n idle@localhost --without-heartbeat
wait_children 2 20 || not_ok "idle worker started" "$(worker_log_tail)"
sleep 2 # past start-up (hand salvage, first sweep)
procs=("$WORKER_PID" $(worker_all_children))
t0=$(cpu_ticks "${procs[@]}")
ctl=$(control_pid)
c0=$(cpu_ticks "$ctl")
calls=$(redis_commands_sent 10)
ticks=$(($(cpu_ticks "${procs[@]}") - t0))
ctl_ticks=$(($(cpu_ticks "$ctl") - c0))
# Two children polling ten queues (40 lists): one script and one 0.2 s
# blocking wait per poll each is 20 commands a second; it was 270.
if ((calls <= 300)); then
    ok "idle 10 s with 10 queues and 2 children: $calls Redis commands (at most 300)"
else
    not_ok "idle 10 s with 10 queues and 2 children: at most 300 Redis commands" "$calls"
fi
if ((ctl_ticks <= 20)); then
    ok "idle 10 s without heartbeats: the control process used $((ctl_ticks * 10)) ms of CPU"
else
    not_ok "idle 10 s without heartbeats: the control process uses at most 200 ms of CPU" \
        "$((ctl_ticks * 10)) ms"
fi
if ((ticks <= 60)); then
    ok "idle 10 s: the whole worker used $((ticks * 10)) ms of CPU"
else
    not_ok "idle 10 s: the whole worker uses at most 600 ms of CPU" "$((ticks * 10)) ms"
fi
worst=$(rel roundtrip rel.pid --queue q10 --count 5)
if [[ $worst != timeout ]] && awk -v w="$worst" 'BEGIN {exit !(w < 0.5)}'; then
    ok "an idle worker runs a task sent to its tenth queue at once (worst of 5: $worst s)"
else
    not_ok "an idle worker runs a task sent to its tenth queue within 0.5 s" "worst $worst s"
fi
stop_worker
check_worker_logs_clean
tap_done
