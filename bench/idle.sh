#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# idle.sh (`make bench-idle`): what an idle worker costs, celeriac beside
# Python Celery (Debian's 5.2.6), on a private Redis: the commands each
# sends per second (counted with MONITOR; the commands a Lua script runs
# inside count as the one command sent) and the CPU of every process of the
# worker, over BENCH_IDLE_SECONDS (10), with 1 and with 10 queues, two pool
# processes each, heartbeats on. Writes bench/IDLE.md. Stops what it started.
set -uo pipefail
cd "$(dirname "$0")/.."
export BUILD=${BUILD:-build}
SECONDS_IDLE=${BENCH_IDLE_SECONDS:-10}
OUT=${BENCH_OUT:-bench}/IDLE.md
# The test library starts and stops Redis and workers by pid and measures
# CPU (cpu_ticks); its TAP output is not used here.
. tests/reliability/lib.sh >/dev/null
TAP_DONE=1 # not a test file: no "ended before its last case" at exit

say() { printf 'bench-idle: %s\n' "$*" >&2; }

family() { echo "$1 $(pgrep -P "$1" | tr '\n' ' ')"; }
commands_sent() { # seconds
    timeout "$1" redis-cli -p "$REDIS_PORT" monitor 2>/dev/null |
        grep -v -e ' lua\]' -e '"monitor"' -c
}

# measure LABEL PID: one row of the table, after a settling pause.
ROWS=()
measure() {
    local label=$1 pid=$2 procs t0 n t1
    sleep 4
    read -ra procs <<<"$(family "$pid")"
    t0=$(cpu_ticks "${procs[@]}")
    n=$(commands_sent "$SECONDS_IDLE")
    t1=$(cpu_ticks "${procs[@]}")
    ROWS+=("| $label | $(awk -v n="$n" -v s="$SECONDS_IDLE" 'BEGIN {printf "%.1f", n / s}') | $(awk -v t=$((t1 - t0)) -v s="$SECONDS_IDLE" 'BEGIN {printf "%.1f", t * 10 / s}') |")
    say "$label: $n commands, $((t1 - t0)) ticks in $SECONDS_IDLE s"
}

start_redis
APP_DIR=$TEST_TMP/idleapp
mkdir -p "$APP_DIR"
cat >"$APP_DIR/idleapp.py" <<'PY'
import os
from celery import Celery
app = Celery("idleapp", broker=os.environ["BROKER_URL"])
@app.task(name="tasks.add")
def add(x, y):
    return x + y
PY

for queues in celery q1,q2,q3,q4,q5,q6,q7,q8,q9,q10; do
    nq=$(tr ',' '\n' <<<"$queues" | wc -l)
    (cd "$APP_DIR" && exec env BROKER_URL="$REDIS_URL" C_FORCE_ROOT=1 "$PY" -m celery -A idleapp \
        worker -P prefork -c 2 -Q "$queues" --without-gossip --without-mingle -l warning \
        -n py@localhost) </dev/null >"$TEST_TMP/py-$nq.log" 2>&1 &
    pypid=$!
    _svc_record_pid "$pypid" celery
    measure "Python Celery, $nq queue(s)" "$pypid"
    kill -TERM "$pypid"
    wait "$pypid" 2>/dev/null
    for mode in early late; do
        extra=()
        [[ $mode == late ]] && extra=(--acks-late)
        start_worker -c 2 -b "$REDIS_URL" -Q "$queues" -n "idle-$mode@localhost" "${extra[@]}"
        measure "celeriac ($mode ack), $nq queue(s)" "$WORKER_PID"
        stop_worker
    done
done

{
    echo "# What an idle worker costs"
    echo
    echo "Written by \`make bench-idle\` (\`bench/idle.sh\`) on $(date -u +%Y-%m-%d); do not edit by hand."
    echo "Each worker has two pool processes, heartbeats on, and nothing to do for"
    echo "$SECONDS_IDLE s on a private Redis. Commands are what the worker sends (MONITOR;"
    echo "what a Lua script runs inside counts as the one command sent); CPU is every"
    echo "process of the worker together. Python Celery runs with --without-gossip"
    echo "--without-mingle (as the differential tests run it)."
    echo
    echo "| worker | Redis commands / s | CPU ms / s |"
    echo "|---|---:|---:|"
    printf '%s\n' "${ROWS[@]}"
    echo
    echo "Python's one consumer blocks in BRPOP on every list at once. celeriac's"
    echo "children consume each for itself, and an early-ack child moves a message"
    echo "atomically into its hand, which Redis can do for one list at a time: with"
    echo "several queues a child polls them all with one script and then blocks on"
    echo "the first for up to 0.2 s, so a task on another queue waits at most that."
} >"$OUT"
say "wrote $OUT"
