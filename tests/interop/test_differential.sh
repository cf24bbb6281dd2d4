#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_differential.sh: the same client script against a Python Celery worker
# running the reference tasks (pyworker/) and against celeriac; both must give
# the same results, states and stored JSON (differential.py compare).
. "$(dirname "$0")/../integration/services.sh"
HERE=$(cd "$(dirname "$0")" && pwd)

start_redis
start_pg
seed_books_pg || { not_ok "seed the books table"; tap_done; }

PY_REDIS="redis://127.0.0.1:$REDIS_PORT/1"
C_REDIS="redis://127.0.0.1:$REDIS_PORT/2"

# ---- the Python reference worker ----
PYLOG=$TEST_TMP/pyworker.log
(
    cd "$HERE/pyworker" &&
        exec env BROKER_URL="$PY_REDIS" RESULT_URL="$PY_REDIS" PG_URL="$PG_URL" C_FORCE_ROOT=1 \
            PYTHONPATH="$HERE/pyworker" "$PY" -m celery -A pyworker worker -P prefork -c 2 \
            --without-gossip --without-mingle --without-heartbeat -l info -n py@localhost
) </dev/null >"$PYLOG" 2>&1 &
PYW_PID=$!
_svc_record_pid "$PYW_PID" celery
_py_ready() { grep -q 'ready\.' "$PYLOG"; }
if ! wait_for 60 _py_ready; then
    not_ok "Python reference worker starts" "$(tail -30 "$PYLOG")"
    tap_done
fi

REDIS_URL=$PY_REDIS PG_URL=$PG_URL timeout 120 "$PY" "$HERE/differential.py" run "$TEST_TMP/py.json" ||
    not_ok "client run against the Python worker" "$(tail -30 "$PYLOG")"

kill -TERM "$PYW_PID"
for ((i = 0; i < 300; i++)); do kill -0 "$PYW_PID" 2>/dev/null || break; sleep 0.1; done
kill -0 "$PYW_PID" 2>/dev/null && kill -KILL "$PYW_PID"
wait "$PYW_PID" 2>/dev/null

# ---- celeriac ----
start_worker -c 2 -b "$C_REDIS" --result-backend "$C_REDIS" --db "$PG_URL" -n diff@localhost
REDIS_URL=$C_REDIS PG_URL=$PG_URL timeout 120 "$PY" "$HERE/differential.py" run "$TEST_TMP/c.json" ||
    not_ok "client run against celeriac" "$(worker_log_tail 30)"
alive=yes
worker_alive || alive=no
stop_worker TERM 30

if [[ -f $TEST_TMP/py.json && -f $TEST_TMP/c.json ]]; then
    run_cases "$PY" "$HERE/differential.py" compare "$TEST_TMP/py.json" "$TEST_TMP/c.json"
    [[ -n ${KEEP_DIFF:-} ]] && cp "$TEST_TMP/py.json" "$TEST_TMP/c.json" "$KEEP_DIFF/"
fi
expect_eq "celeriac was alive after the run" yes "$alive" "$(worker_log_tail)"
expect_eq "celeriac exits 0 on SIGTERM" 0 "$WORKER_RC" "$(worker_log_tail)"
check_worker_logs_clean
tap_done
