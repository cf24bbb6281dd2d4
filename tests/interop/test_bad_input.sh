#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_bad_input.sh: hostile messages pushed raw onto the queue (bad_input.py)
# against a one-child worker, so each message is finished before the next.
. "$(dirname "$0")/../integration/services.sh"

start_redis
# The RSS leak check needs freed memory to be reused: ASan's quarantine holds
# it back on purpose (hundreds of MB), so turn the quarantine off here.
if grep -qa __asan_init "$CELERIAC_BIN"; then
    export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}quarantine_size_mb=0"
fi
start_worker -c 1 -b "$REDIS_URL" --result-backend "$REDIS_URL" -n bad@localhost
wait_children 1 20 || not_ok "worker started its child" "$(worker_log_tail)"
pids="$WORKER_PID $(worker_children)"

WORKER_PIDS=$pids WORKER_LOG=$WORKER_LOG run_cases timeout 280 "$PY" "$(dirname "$0")/bad_input.py" ||
    worker_log_tail 30

expect_eq "same master and child after all bad input" "$pids" "$WORKER_PID $(worker_children)" \
    "$(worker_log_tail 20)"
stop_worker TERM 30
expect_eq "worker exits 0 on SIGTERM after the bad input" 0 "$WORKER_RC" "$(worker_log_tail)"
check_worker_logs_clean
tap_done
