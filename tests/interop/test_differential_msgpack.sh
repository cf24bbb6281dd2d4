#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_differential_msgpack.sh: Celery's msgpack serializer, the same client
# script against the Python reference worker and against celeriac, both
# configured alike (differential_msgpack.py): first with msgpack results
# (celeriac --result-serializer msgpack), then msgpack tasks with Celery's
# default JSON results (celeriac's default).
. "$(dirname "$0")/../integration/services.sh"
HERE=$(cd "$(dirname "$0")" && pwd)

start_redis
start_pg
seed_books_pg || { not_ok "seed the books table"; tap_done; }

# run_python MODE URL OUT: the reference worker with result_serializer=MODE.
run_python() {
    local mode=$1 url=$2 out=$3 log=$TEST_TMP/pyworker-$1.log pid i
    (
        cd "$HERE/pyworker" &&
            exec env BROKER_URL="$url" RESULT_URL="$url" PG_URL="$PG_URL" C_FORCE_ROOT=1 \
                TASK_SERIALIZER=msgpack RESULT_SERIALIZER="$mode" ACCEPT_CONTENT=json,msgpack \
                PYTHONPATH="$HERE/pyworker" "$PY" -m celery -A pyworker worker -P prefork -c 2 \
                --without-gossip --without-mingle --without-heartbeat -l info -n "py-$mode@localhost"
    ) </dev/null >"$log" 2>&1 &
    pid=$!
    _svc_record_pid "$pid" celery
    if ! wait_for 60 grep -q 'ready\.' "$log"; then
        not_ok "Python reference worker starts ($mode)" "$(tail -30 "$log")"
        return
    fi
    REDIS_URL=$url PG_URL=$PG_URL timeout 180 "$PY" "$HERE/differential_msgpack.py" run "$mode" \
        "$out" || not_ok "client run against the Python worker ($mode)" "$(tail -30 "$log")"
    kill -TERM "$pid"
    for ((i = 0; i < 300; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    wait "$pid" 2>/dev/null
}

# run_celeriac MODE URL OUT [worker flags...]
run_celeriac() {
    local mode=$1 url=$2 out=$3 alive=yes
    shift 3
    start_worker -c 2 -b "$url" --result-backend "$url" --db "$PG_URL" -n "diff-$mode@localhost" "$@"
    REDIS_URL=$url PG_URL=$PG_URL timeout 180 "$PY" "$HERE/differential_msgpack.py" run "$mode" \
        "$out" || not_ok "client run against celeriac ($mode)" "$(worker_log_tail 30)"
    worker_alive || alive=no
    stop_worker TERM 30
    expect_eq "celeriac was alive after the $mode run" yes "$alive" "$(worker_log_tail)"
    expect_eq "celeriac exits 0 on SIGTERM ($mode)" 0 "$WORKER_RC" "$(worker_log_tail)"
}

db=1
for mode in msgpack json; do
    py_url="redis://127.0.0.1:$REDIS_PORT/$db"
    c_url="redis://127.0.0.1:$REDIS_PORT/$((db + 1))"
    db=$((db + 2))
    run_python "$mode" "$py_url" "$TEST_TMP/py-$mode.json"
    flags=()
    # MSGPACK_WORKER_FLAGS replaces the flag, to run this against a worker
    # that predates it (as the old one: every msgpack case must then fail)
    [[ $mode == msgpack ]] && read -ra flags <<<"${MSGPACK_WORKER_FLAGS---result-serializer msgpack}"
    run_celeriac "$mode" "$c_url" "$TEST_TMP/c-$mode.json" "${flags[@]}"
    if [[ -f $TEST_TMP/py-$mode.json && -f $TEST_TMP/c-$mode.json ]]; then
        run_cases "$PY" "$HERE/differential_msgpack.py" compare "$mode" "$TEST_TMP/py-$mode.json" \
            "$TEST_TMP/c-$mode.json"
        [[ -n ${KEEP_DIFF:-} ]] && cp "$TEST_TMP/py-$mode.json" "$TEST_TMP/c-$mode.json" "$KEEP_DIFF/"
    fi
done
check_worker_logs_clean
tap_done
