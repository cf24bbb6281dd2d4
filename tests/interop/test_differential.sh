#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_differential.sh: the same client script against a Python Celery worker
# running the reference tasks (pyworker/) and against celeriac; both must give
# the same results, states and stored JSON (differential.py compare). Redis is
# the broker and the result backend, one database for each side.
# test_differential_amqp.sh is the same over RabbitMQ.
. "$(dirname "$0")/../integration/services.sh"
. "$(dirname "$0")/differential_lib.sh"

start_redis
start_pg
seed_books_pg || { not_ok "seed the books table"; tap_done; }

PY_REDIS="redis://127.0.0.1:$REDIS_PORT/1"
C_REDIS="redis://127.0.0.1:$REDIS_PORT/2"
diff_run_python "" "$PY_REDIS" "$PY_REDIS" "$TEST_TMP/py.json"
diff_run_celeriac "" "$C_REDIS" "$C_REDIS" "$TEST_TMP/c.json"
if [[ -f $TEST_TMP/py.json && -f $TEST_TMP/c.json ]]; then
    run_cases "$PY" "$DIFF_HERE/differential.py" compare "$TEST_TMP/py.json" "$TEST_TMP/c.json"
    [[ -n ${KEEP_DIFF:-} ]] && cp "$TEST_TMP/py.json" "$TEST_TMP/c.json" "$KEEP_DIFF/"
fi
check_worker_logs_clean
tap_done
