# SPDX-License-Identifier: MIT
# shellcheck shell=bash disable=SC2034,SC2154 # variables shared with chaos.sh
# chaos_redis.sh: sourced by chaos.sh for CHAOS_BROKER=redis (the default):
# the broker is a Redis with AOF (appendfsync always) that also holds the
# results (db 1), restarted once; a MONITOR counts the pushes of redelivered
# messages, which must equal the requeues the worker log reports. The hooks
# chaos.sh calls are described there.

BROKER_LABEL="Redis (AOF)"
BROKER_WORKER_FLAGS=(--visibility-timeout "$VT" --sweep-interval 2)
BROKER_SETTLE_WAIT=$((VT + 30))
MONLOG=$TEST_TMP/monitor.pushes

broker_start() {
    start_redis_aof
    BROKER_URL=$REDIS_URL
}

# ---- the MONITOR: every LPUSH/RPUSH the server executes, across restarts ----------------
monitor_loop() {
    while [[ ! -f $STOP ]]; do
        redis_cli monitor 2>/dev/null | grep -a --line-buffered -E '"[LR]PUSH"' >>"$MONLOG"
        sleep 0.02
    done
}
monitor_up() { redis_cli client list 2>/dev/null | grep -q 'cmd=monitor'; }
monitor_stop() {
    local id
    for id in $(redis_cli client list 2>/dev/null | awk '/cmd=monitor/ { sub("id=", "", $1); print $1 }'); do
        redis_cli client kill id "$id" >/dev/null 2>&1
    done
}

# after the tasks are published, before the worker starts
broker_before_worker() {
    : >"$MONLOG"
    monitor_loop &
    MON_LOOP=$!
    _svc_record_pid "$MON_LOOP" bash
    wait_for 10 monitor_up || diag "MONITOR did not connect"
}

broker_restart() {
    touch "$PAUSE" # no kill while the MONITOR is reconnecting
    sleep 1
    restart_redis_aof 2
    wait_for 10 monitor_up || diag "MONITOR did not reconnect"
    sleep 1
    rm -f "$PAUSE"
    diag "Redis restarted (2 s down, AOF) at $1 done"
}

broker_progress() { echo "queue $(queue_len), unacked $(redis_cli hlen unacked)"; }

broker_settled() { [[ "$(queue_len) $(unacked_count)" == "0 0 0" ]]; }

# the worker has stopped: what is left on the broker
broker_after_worker() {
    final_unacked=$(unacked_count)
    final_queue=$(queue_len)
    monitor_stop
    wait "$MON_LOOP" 2>/dev/null
}

# Requeues seen on the server (MONITOR: pushes of messages marked redelivered)
# against what the log reports: LPUSH = a dead child's late-ack task put back
# (the log names its task id), RPUSH = restored by the visibility sweep (the
# log gives counts) or at shutdown.
broker_figures() {
    read -r lost_requeues failed_requeues nothing_to_requeue sweep_restored shutdown_restored \
        seen_lpush seen_rpush unexplained_lpush <<<"$("$PY" - "$WORKER_LOG" "$MONLOG" <<'PYEOF'
import re, sys
log = open(sys.argv[1], errors="replace").read()
mon = open(sys.argv[2], errors="replace").read().splitlines()
requeued = re.findall(r"Task [^\[]+\[([0-9a-f-]+)\]: its process died \(signal \d+\); requeued", log)
failed = re.findall(r"requeue of ([0-9a-f-]+) failed", log)
sweep = sum(int(n) for n in re.findall(r"restored (\d+) unacknowledged", log))
shutdown = len(re.findall(r"restored to its queue", log)) + len(re.findall(r"by a process that died before starting it was put back", log))
lpush, rpush = [], []
for line in mon:
    if "redelivered" not in line:
        continue
    m = re.search(r'\\"id\\": ?\\"([0-9a-f-]+)', line)
    tid = m.group(1) if m else "?"
    (lpush if '"LPUSH"' in line else rpush).append(tid)
unexplained = set(lpush) - set(requeued)
nothing = len(set(requeued) - set(failed) - set(lpush))
print(len(requeued), len(failed), nothing, sweep, shutdown, len(lpush), len(rpush), len(unexplained))
PYEOF
)"
    seen_requeues=$((seen_lpush + seen_rpush))
    echo "# requeues:         $seen_requeues (MONITOR: $seen_lpush LPUSH of a dead child's task, $seen_rpush RPUSH by the sweep/shutdown)"
    echo "#   in the log:     $lost_requeues 'requeued' after a child died ($failed_requeues of them failed, $nothing_to_requeue had nothing left to requeue: already acked), $sweep_restored restored by the visibility sweep (${VT} s), $shutdown_restored put back unstarted or at shutdown"
    echo "# re-runs:          $db_reruns idempotent re-runs after a lost database connection"
    echo "# executions:       $runs_ok successful runs for $N tasks ($duplicates found a SUCCESS already stored and kept it)"
}

broker_final_line() { echo "unacked after:    $final_unacked (hash, index); queue $final_queue"; }

broker_checks() {
    expect_eq "chaos: unacked is empty and nothing is queued afterwards" "0 0 0" "$final_unacked $final_queue"
    expect_eq "chaos: every LPUSH requeue seen on the server is logged with its task id" 0 "$unexplained_lpush"
    expect_eq "chaos: every sweep/shutdown RPUSH seen on the server is counted in the log" \
        "$seen_rpush" "$((sweep_restored + shutdown_restored))" "sweep $sweep_restored, shutdown $shutdown_restored"
    expect_eq "chaos: no requeue failed (a failed one waits for the visibility timeout: an hour by default)" \
        0 "$failed_requeues" "$(grep -E 'requeue of .* failed' "$WORKER_LOG" | head -5)"
}

broker_keep_note() { echo "monitor: $MONLOG"; }
