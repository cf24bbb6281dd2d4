#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_amqp_hostile.sh (issue 11, "Bad input"): a celeriac worker against
# hostile_amqp_server.py, a fake AMQP 0-9-1 server that misbehaves in one
# scenario per run: a valid task first (the fake is faithful enough), a frame
# over frame_max, a body of 2^62 and of 512 MiB + 1 bytes, garbage of eight
# kinds, connection.close and channel.close with the server's reasons, a
# missing vhost, and a port nobody listens on. Each must give a clear line
# naming host and vhost, back off without spinning, keep memory small and
# never crash (CI runs this file under ASan too). A queue declared with other
# arguments is tests/reliability's.
. "$(dirname "$0")/lib.sh"
SERVER=$HERE/hostile_amqp_server.py
PW=hostile-pw-$RANDOM$RANDOM # must never reach the log
export AMQPT_RUNS=$TEST_TMP/runs
: >"$AMQPT_RUNS"

# serve SCENARIO [PORT]: starts the fake server; sets SRV_PID, SRV_PORT, REC
# (its record: "conn N", "recv N method ...", "do N what", "eof N").
serve() {
    local pf=$TEST_TMP/port-$1
    REC=$TEST_TMP/rec-$1
    SRV_ERR=$TEST_TMP/server-$1.err
    : >"$REC"
    rm -f "$pf"
    HOSTILE_PORT=${2:-0} "$PY" "$SERVER" "$1" "$pf" "$REC" 2>"$SRV_ERR" &
    SRV_PID=$!
    _svc_record_pid "$SRV_PID" hostile_amqp_server
    if ! wait_for 5 test -s "$pf"; then
        not_ok "the fake server starts ($1)" "$(cat "$SRV_ERR")"
        return 1
    fi
    SRV_PORT=$(cat "$pf")
}
unserve() {
    kill "$SRV_PID" 2>/dev/null
    wait "$SRV_PID" 2>/dev/null
    [[ -s $SRV_ERR ]] && diag "server stderr:" "$(cat "$SRV_ERR")"
    grep -q '^server-error' "$REC" && not_ok "the fake server has no bug ($SCEN)" "$(grep '^server-error' "$REC")"
    return 0
}
# hworker [VHOST]: one child, nothing but the pool connecting (no control
# process, no events), so every connection the server sees is the child's.
hworker() {
    start_worker -A "$LIB" -c 1 --without-remote-control --without-heartbeat -l info \
        -b "amqp://guest:$PW@127.0.0.1:$SRV_PORT/${1:-/}"
    wait_children 1 10
    CHILD=$(worker_children)
}
rec_has() { grep -qE "$1" "$REC"; }
conns() { grep -c '^conn ' "$REC"; }
# where_lines: log lines naming this server as the link does ("host:port vhost '/'")
where_lines() { grep -c "127.0.0.1:$SRV_PORT vhost '/'" "$WORKER_LOG"; }
kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status" 2>/dev/null; } # PID VmRSS|VmHWM
ran() { grep -q "^$1 " "$AMQPT_RUNS"; }
same_child() { # NAME: the child neither crashed nor was replaced
    if [[ $(worker_children) == "$CHILD" ]] && worker_alive &&
        ! log_has 'exited with code|killed by signal|Sanitizer'; then
        ok "$1: no crash, the same child ($CHILD) all along"
    else
        not_ok "$1: no crash, the same child ($CHILD) all along" "now: $(worker_children)" \
            "$(worker_log_tail 12)"
    fi
}
# cpu_window SECONDS: user+system ticks of master and child over SECONDS (CPU_USED)
cpu_window() {
    local t0
    t0=$(cpu_ticks "$WORKER_PID" "$CHILD")
    sleep "$1"
    CPU_USED=$(($(cpu_ticks "$WORKER_PID" "$CHILD") - t0))
}
finish() { # stops worker and server; the log must not carry the password
    stop_worker TERM 10
    unserve
    if grep -q -- "$PW" "$WORKER_LOG"; then
        not_ok "$SCEN: the password is never logged" "$(grep -- "$PW" "$WORKER_LOG" | head -3)"
    fi
}

# ---- 7 first: a valid Celery task from the fake server is run and acked ---------------
SCEN=ok
serve ok || tap_done
hworker
if wait_for 10 rec_has '^recv 1 basic.ack 1 '; then
    ok "ok: a protocol-2 task from the fake server is basic.ack'ed"
else
    not_ok "ok: a protocol-2 task from the fake server is basic.ack'ed" "$(cat "$REC")" \
        "$(worker_log_tail 10)"
fi
if ran ok; then ok "ok: the task ran"; else not_ok "ok: the task ran" "$(worker_log_tail 10)"; fi
BASE_HWM=$(kib "$CHILD" VmHWM)
diag "child peak RSS after one task: ${BASE_HWM} kB"
finish

# ---- 1: a frame larger than the negotiated frame_max (131072) --------------------------
SCEN=bigframe
serve bigframe || tap_done
hworker
wait_for 10 bash -c "(( \$(grep -c '^conn ' '$REC') >= 2 ))"
c0=$(conns)
cpu_window 3
c1=$(conns)
diag "bigframe: $c1 connections, $((c1 - c0)) in 3 s, $CPU_USED CPU ticks"
if ((c1 >= 3 && c1 - c0 <= 10)); then
    ok "bigframe: dropped and reconnected, with backoff ($((c1 - c0)) connections in 3 s)"
else
    not_ok "bigframe: dropped and reconnected, with backoff" "connections: $c0, then $c1"
fi
if ((CPU_USED < 60)); then ok "bigframe: no spin ($CPU_USED ticks in 3 s)"; else
    not_ok "bigframe: no spin" "$CPU_USED ticks in 3 s"; fi
n=$(where_lines)
if ((n >= 1 && n <= 3 && n < c1)) && grep "127.0.0.1:$SRV_PORT vhost '/'" "$WORKER_LOG" | grep -q 'frame_max 131072'; then
    ok "bigframe: a clear line naming host, vhost and frame_max, not one per attempt ($n lines, $c1 connections)"
else
    not_ok "bigframe: a clear line naming host, vhost and frame_max, not one per attempt" \
        "$n lines for $c1 connections" "$(worker_log_tail 12)"
fi
same_child bigframe
finish

# ---- 2: a body of 2^62 bytes (trickled), then one of 512 MiB + 1 (sent) ------------------
SCEN=hugebody
serve hugebody || tap_done
hworker
wait_for 10 rec_has '^do 1 deliver 1 body_size=2\^62'
peak=0
for ((i = 0; i < 50; i++)); do # sampled while the body trickles in (2 s)
    rec_has '^eof 1' && break
    r=$(kib "$CHILD" VmRSS)
    ((${r:-0} > peak)) && peak=$r
    sleep 0.2
done
if wait_for 30 rec_has '^recv 2 basic.reject 1 requeue=0'; then
    ok "hugebody: 512 MiB + 1 bytes read, discarded and basic.reject'ed (requeue=0)"
else
    not_ok "hugebody: 512 MiB + 1 bytes read, discarded and basic.reject'ed (requeue=0)" \
        "$(grep -v '^recv 1' "$REC")" "$(worker_log_tail 8)"
fi
if wait_for 10 rec_has '^recv 2 basic.ack 2 ' && ran after-huge; then
    ok "hugebody: the next task on that connection runs and is acked"
else
    not_ok "hugebody: the next task on that connection runs and is acked" "$(worker_log_tail 8)"
fi
hwm=$(kib "$CHILD" VmHWM)
diag "hugebody: child RSS peak ${peak} kB during the 2^62 trickle, VmHWM ${hwm} kB (after one task: ${BASE_HWM} kB)"
if ((${hwm:-999999} - BASE_HWM < 32768)); then
    ok "hugebody: no huge allocation (child peak RSS +$((hwm - BASE_HWM)) kB)"
else
    not_ok "hugebody: no huge allocation" "VmHWM ${hwm} kB, after one task ${BASE_HWM} kB"
fi
n=$(grep -c "rejected a message of 536870913 bytes from 127.0.0.1:$SRV_PORT vhost '/'" "$WORKER_LOG")
expect_eq "hugebody: one line for the discarded message, naming host and vhost" 1 "$n" \
    "$(worker_log_tail 8)"
same_child hugebody
finish

# ---- 3: garbage, one kind per connection, then a valid task ----------------------------
SCEN=garbage
serve garbage || tap_done
hworker
wait_for 40 rec_has '^recv 9 basic.ack' # (the server's step list has 8 kinds)
expect_eq "garbage: eight kinds, one per connection, then a ninth connection" 9 "$(conns)" \
    "$(grep -E '^(conn|do)' "$REC")"
if rec_has '^recv 3 basic.ack 1 ' && ran after-unknown-type; then
    ok "garbage: an unknown frame type is ignored (the task after it is acked)"
else
    not_ok "garbage: an unknown frame type is ignored (the task after it is acked)"
fi
if rec_has '^recv 5 basic.ack 2 ' && ran after-channel-7 && ! ran on-channel-7; then
    ok "garbage: a delivery on a channel never opened is skipped, not run, and the link lives"
else
    not_ok "garbage: a delivery on a channel never opened is skipped, not run, and the link lives" \
        "$(grep ' 5 ' "$REC")" "$(cat "$AMQPT_RUNS")"
fi
# 2^62 announced on channel 9 (never opened) and in a basic.return: read
# and discarded as they trickle, until the server hangs up.
if ! log_has 'allocate|memory' && rec_has '^do 6 trickled' && rec_has '^do 7 trickled'; then
    ok "garbage: 2^62 bytes on a channel never opened and in a basic.return: no allocation"
else
    not_ok "garbage: 2^62 bytes on a channel never opened and in a basic.return: no allocation" \
        "$(grep -E '^(do|eof) [67]' "$REC")" "$(grep -E 'allocate|memory|Sanitizer' "$WORKER_LOG" | head -5)"
fi
if ran after-garbage && rec_has '^recv 9 basic.ack 1 '; then
    ok "garbage: random bytes, a bad frame end, an unknown method, a truncated frame: reconnected, the last task acked"
else
    not_ok "garbage: random bytes, a bad frame end, an unknown method, a truncated frame: reconnected, the last task acked" \
        "$(worker_log_tail 12)"
fi
# Lines: a failure opening an episode or changing its cause (retry.h), each
# naming host, vhost and reason; a "lost" warning only for the two
# connections that had carried a task (3 and 5), not for each reconnect.
fails=$(grep -E 'fetching from the broker (failed|still failing)' "$WORKER_LOG")
if [[ -n $fails ]] && ! grep -vq "127.0.0.1:$SRV_PORT vhost '/' failed: " <<<"$fails" &&
    grep -q 'invalid AMQP data (a malformed frame' <<<"$fails" &&
    [[ $(grep -c 'broker connection to .* lost after' "$WORKER_LOG") == 2 ]]; then
    ok "garbage: each line names host, vhost and reason; no line per reconnect ($(wc -l <<<"$fails") lines for 8 failures)"
else
    not_ok "garbage: each line names host, vhost and reason; no line per reconnect" \
        "$(worker_log_tail 20)"
fi
hwm=$(kib "$CHILD" VmHWM)
if ((${hwm:-999999} - BASE_HWM < 32768)); then
    ok "garbage: child peak RSS stays small (+$((hwm - BASE_HWM)) kB)"
else
    not_ok "garbage: child peak RSS stays small" "VmHWM ${hwm} kB, after one task ${BASE_HWM} kB"
fi
same_child garbage
finish

# ---- 4: connection.close 320 and channel.close 406 / 404 from the server ---------------
SCEN=close
serve close || tap_done
hworker
wait_for 15 rec_has '^recv 2 basic.ack 2 '
reasons=("320 CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"
    "406 PRECONDITION_FAILED - unknown delivery tag 42"
    "404 NOT_FOUND - no queue 'celery' in vhost '/'")
for r in "${reasons[@]}"; do
    n=$(grep "127.0.0.1:$SRV_PORT vhost '/'" "$WORKER_LOG" | grep -cF "$r")
    expect_eq "close: one line naming host, vhost and the server's '${r%% -*}' reason" 1 "$n" \
        "$(worker_log_tail 10)"
done
if rec_has '^recv 1 connection.close-ok' && [[ $(grep -c '^recv 2 channel.close-ok' "$REC") == 2 ]]; then
    ok "close: close-ok answered to the connection.close and both channel.close"
else
    not_ok "close: close-ok answered to the connection.close and both channel.close" "$(cat "$REC")"
fi
if ran after-406 && ran after-404 && rec_has '^recv 2 basic.ack 1 ' && rec_has '^recv 2 basic.ack 2 '; then
    ok "close: reconnected, and a new channel after each channel.close consumes and acks"
else
    not_ok "close: reconnected, and a new channel after each channel.close consumes and acks" \
        "$(grep -E '^(conn|do|recv 2 (basic|channel))' "$REC")"
fi
same_child close
finish

# ---- 5: a vhost the server does not have (530 NOT_ALLOWED at connection.open) -----------
SCEN=vhost
serve vhost || tap_done
hworker nosuchvhost
cpu_window 3
c1=$(conns)
n=$(grep "127.0.0.1:$SRV_PORT vhost 'nosuchvhost'" "$WORKER_LOG" | grep -c "530 NOT_ALLOWED - vhost nosuchvhost not found")
expect_eq "vhost: one line naming host, vhost and the server's reason ($c1 attempts)" 1 "$n" \
    "$(worker_log_tail 6)"
if ((c1 >= 2 && c1 <= 10 && CPU_USED < 60)); then
    ok "vhost: retried with backoff, no spin ($c1 attempts, $CPU_USED ticks)"
else
    not_ok "vhost: retried with backoff, no spin" "$c1 attempts, $CPU_USED ticks"
fi
finish

# ---- 6: nothing listening: one line per episode, with the count when it clears -----------
SCEN=unreachable
SRV_PORT=$(free_port)
REC=/dev/null SRV_ERR=/dev/null
hworker
cpu_window 3
n=$(where_lines)
expect_eq "unreachable: one line in 3 s of refused connects" 1 "$n" "$(worker_log_tail 6)"
if ((CPU_USED < 60)); then ok "unreachable: no spin ($CPU_USED ticks in 3 s)"; else
    not_ok "unreachable: no spin" "$CPU_USED ticks in 3 s"; fi
serve ok "$SRV_PORT" || tap_done
SCEN=unreachable
if wait_for 15 rec_has '^recv 1 basic.ack 1 ' &&
    grep -qE 'connecting to the broker works again after [0-9]+ failed attempts' "$WORKER_LOG"; then
    ok "unreachable: once it listens, one line with the count of failed attempts, and the task runs"
else
    not_ok "unreachable: once it listens, one line with the count of failed attempts, and the task runs" \
        "$(worker_log_tail 8)"
fi
finish

check_worker_logs_clean
tap_done
