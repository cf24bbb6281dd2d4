#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_differential_msgpack.sh: Celery's msgpack serializer, the same client
# script against the Python reference worker and against celeriac, both
# configured alike (differential_msgpack.py): first with msgpack results
# (celeriac --result-serializer msgpack), then msgpack tasks with Celery's
# default JSON results (celeriac's default).
. "$(dirname "$0")/../integration/services.sh"
. "$(dirname "$0")/differential_lib.sh"

start_redis
start_pg
seed_books_pg || { not_ok "seed the books table"; tap_done; }

DIFF_CLIENT_TIMEOUT=180
db=1
for mode in msgpack json; do
    py_url="redis://127.0.0.1:$REDIS_PORT/$db"
    c_url="redis://127.0.0.1:$REDIS_PORT/$((db + 1))"
    db=$((db + 2))
    DIFF_CLIENT=("$DIFF_HERE/differential_msgpack.py" run "$mode")
    diff_run_python "$mode" "$py_url" "$py_url" "$TEST_TMP/py-$mode.json" \
        TASK_SERIALIZER=msgpack RESULT_SERIALIZER="$mode" ACCEPT_CONTENT=json,msgpack
    flags=()
    # MSGPACK_WORKER_FLAGS replaces the flag, to run this against a worker
    # that predates it (as the old one: every msgpack case must then fail)
    [[ $mode == msgpack ]] && read -ra flags <<<"${MSGPACK_WORKER_FLAGS---result-serializer msgpack}"
    diff_run_celeriac "$mode" "$c_url" "$c_url" "$TEST_TMP/c-$mode.json" "${flags[@]}"
    if [[ -f $TEST_TMP/py-$mode.json && -f $TEST_TMP/c-$mode.json ]]; then
        run_cases "$PY" "$DIFF_HERE/differential_msgpack.py" compare "$mode" "$TEST_TMP/py-$mode.json" \
            "$TEST_TMP/c-$mode.json"
        [[ -n ${KEEP_DIFF:-} ]] && cp "$TEST_TMP/py-$mode.json" "$TEST_TMP/c-$mode.json" "$KEEP_DIFF/"
    fi
done
check_worker_logs_clean
tap_done
