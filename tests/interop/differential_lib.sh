# SPDX-License-Identifier: MIT
# differential_lib.sh: sourced (after integration/services.sh) by the
# differential tests. One client script runs against the Python reference
# worker (pyworker/) and then against celeriac, each consuming a broker of
# its own (or the same broker one after the other) and storing results in a
# Redis database of its own; the script's `compare` then judges the two runs.
#
#   DIFF_CLIENT=("$DIFF_HERE/differential.py" run)   the client and its arguments
#                                                    before the output file
#   DIFF_CLIENT_TIMEOUT=120                          seconds for one client run
#   DIFF_AFTER_STOP=fn                               called as `fn OUT` once a worker
#                                                    has stopped (optional)
#   diff_run_python LABEL BROKER RESULT OUT [VAR=VALUE...]
#   diff_run_celeriac LABEL BROKER RESULT OUT [worker flags...]
#
# The client gets BROKER_URL, REDIS_URL (the result backend) and PG_URL.
# LABEL names the run in case names ("" for none) and in the worker's name.
DIFF_HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DIFF_CLIENT=("$DIFF_HERE/differential.py" run)
DIFF_CLIENT_TIMEOUT=${DIFF_CLIENT_TIMEOUT:-120}
DIFF_AFTER_STOP=

_diff_suffix() { [[ -n $1 ]] && echo " ($1)"; }

# _diff_client BROKER RESULT OUT: 0 when the client run completed.
_diff_client() {
    BROKER_URL=$1 REDIS_URL=$2 PG_URL=$PG_URL timeout "$DIFF_CLIENT_TIMEOUT" \
        "$PY" "${DIFF_CLIENT[@]}" "$3"
}

# diff_run_python LABEL BROKER RESULT OUT [VAR=VALUE...]: starts the reference
# worker (prefork, two children) with the extra environment given, runs the
# client against it, stops it with SIGTERM (KILL after 30 s).
diff_run_python() {
    local label=$1 broker=$2 result=$3 out=$4 log pid i
    shift 4
    log=$TEST_TMP/pyworker${label:+-$label}.log
    (
        cd "$DIFF_HERE/pyworker" &&
            exec env BROKER_URL="$broker" RESULT_URL="$result" PG_URL="$PG_URL" C_FORCE_ROOT=1 \
                "$@" PYTHONPATH="$DIFF_HERE/pyworker" "$PY" -m celery -A pyworker worker \
                -P prefork -c 2 --without-gossip --without-mingle --without-heartbeat -l info \
                -n "py${label:+-$label}@localhost"
    ) </dev/null >"$log" 2>&1 &
    pid=$!
    _svc_record_pid "$pid" celery
    if ! wait_for 60 grep -q 'ready\.' "$log"; then
        not_ok "Python reference worker starts$(_diff_suffix "$label")" "$(tail -30 "$log")"
        return 1
    fi
    _diff_client "$broker" "$result" "$out" ||
        not_ok "client run against the Python worker$(_diff_suffix "$label")" "$(tail -30 "$log")"
    kill -TERM "$pid"
    for ((i = 0; i < 300; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    wait "$pid" 2>/dev/null
    [[ -z $DIFF_AFTER_STOP || ! -f $out ]] || "$DIFF_AFTER_STOP" "$out"
    return 0
}

# diff_run_celeriac LABEL BROKER RESULT OUT [worker flags...]: the same
# against `celeriac worker -c 2` with the example's tasks and PG_URL; checks
# it was alive after the run and exits 0 on SIGTERM.
diff_run_celeriac() {
    local label=$1 broker=$2 result=$3 out=$4 alive=yes
    shift 4
    start_worker -c 2 -b "$broker" --result-backend "$result" --db "$PG_URL" \
        -n "diff${label:+-$label}@localhost" "$@"
    _diff_client "$broker" "$result" "$out" ||
        not_ok "client run against celeriac$(_diff_suffix "$label")" "$(worker_log_tail 30)"
    worker_alive || alive=no
    stop_worker TERM 30
    [[ -z $DIFF_AFTER_STOP || ! -f $out ]] || "$DIFF_AFTER_STOP" "$out"
    expect_eq "celeriac was alive after the run$(_diff_suffix "$label")" yes "$alive" \
        "$(worker_log_tail)"
    expect_eq "celeriac exits 0 on SIGTERM$(_diff_suffix "$label")" 0 "$WORKER_RC" \
        "$(worker_log_tail)"
}
