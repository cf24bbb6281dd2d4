#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_client.sh: Debian's Python Celery client sends to celeriac (PostgreSQL,
# Redis result backend) and reads SUCCESS and FAILURE back (client_cases.py).
. "$(dirname "$0")/../integration/services.sh"

start_redis
start_pg
seed_books_pg || { not_ok "seed the books table"; tap_done; }

start_worker -c 2 -b "$REDIS_URL" --result-backend "$REDIS_URL" --db "$PG_URL" -n interop@localhost
wait_children 2 20 || not_ok "worker started 2 children" "children: $(worker_children)" "$(worker_log_tail)"
pids_before="$WORKER_PID $(worker_children)"

REDIS_URL=$REDIS_URL PG_URL=$PG_URL run_cases timeout 240 "$PY" "$(dirname "$0")/client_cases.py" ||
    worker_log_tail 40

expect_eq "worker kept the same master and children throughout" "$pids_before" \
    "$WORKER_PID $(worker_children)" "$(worker_log_tail)"
stop_worker TERM 30
expect_eq "worker exits 0 on SIGTERM" 0 "$WORKER_RC" "$(worker_log_tail)"
check_worker_logs_clean
tap_done
