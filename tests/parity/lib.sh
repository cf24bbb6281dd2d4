# SPDX-License-Identifier: MIT
# shellcheck shell=bash
# lib.sh: sourced by tests/parity/test_*.sh. Everything in
# tests/integration/services.sh (throwaway Redis, TAP lines, cleanup by pid),
# plus parity_env, which exports what parity.py reads, and parity_cases,
# which runs one cases_*.py under a timeout and then checks every worker log
# it left for sanitizer reports.
. "$(dirname "${BASH_SOURCE[0]}")/../integration/services.sh"
PARITY_DIR=$CELERIAC_ROOT/tests/parity

# parity_env: after start_redis. Broker on db 0, results on db 1.
parity_env() {
    export BROKER_URL=$REDIS_URL
    export RESULT_URL=redis://127.0.0.1:$REDIS_PORT/1
    export CELERIAC_BIN BOOKS_LIB TEST_TMP REDIS_PORT
    export CELERIAC_PIDS_FILE=$SVC_PIDS_FILE
    export PYTHONPATH="$PARITY_DIR${PYTHONPATH:+:$PYTHONPATH}"
}

# parity_cases SECONDS FILE.py [ARGS...]: runs the cases, then one more case
# for sanitizer reports in the celeriac logs parity.py wrote.
parity_cases() {
    local secs=$1 file=$2 log
    shift 2
    run_cases timeout -k 5 "$secs" "$PY" "$PARITY_DIR/$file" "$@"
    for log in "$TEST_TMP"/celeriac-*.log; do
        [[ -f $log ]] && WORKER_LOGS+=("$log")
    done
    check_worker_logs_clean
}
