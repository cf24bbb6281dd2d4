# SPDX-License-Identifier: MIT
# lib.sh: sourced by tests/sql/*.sh. Everything in tests/reliability/lib.sh
# (throwaway Redis and PostgreSQL, the worker, TAP lines, cleanup by pid,
# cpu_ticks), plus Debian's Python Celery client on kombu's SQL transport
# (sql_client.py) and readers of kombu's tables.
. "$(dirname "${BASH_SOURCE[0]}")/../reliability/lib.sh"
SQL_DIR=$CELERIAC_ROOT/tests/sql

# sqlc ARGS...: sql_client.py with BROKER_URL=$SQL_BROKER, RESULT_URL=$REDIS_URL.
sqlc() {
    BROKER_URL=$SQL_BROKER RESULT_URL=$REDIS_URL "$PY" "$SQL_DIR/sql_client.py" "$@"
}

# states <<<LINES: the state of every task sql_client.py wait printed, counted
# ("SUCCESS=20 FAILURE=1").
states() {
    "$PY" -c '
import collections, json, sys
c = collections.Counter(json.loads(l)["state"] for l in sys.stdin if l.startswith("{"))
print(" ".join("%s=%d" % kv for kv in sorted(c.items())))'
}

# results <<<LINES: the results, space-separated, as JSON.
results() {
    "$PY" -c '
import json, sys
print(" ".join(json.dumps(json.loads(l).get("result"), separators=(",", ":"))
               for l in sys.stdin if l.startswith("{")))'
}

# wait_rows SQL EXPECTED [SECONDS]: polls psql_db until SQL prints EXPECTED.
wait_rows() {
    local sql=$1 want=$2 deadline=$((SECONDS + ${3:-20}))
    while ((SECONDS < deadline)); do
        [[ $(psql_db -c "$sql" 2>/dev/null) == "$want" ]] && return 0
        sleep 0.1
    done
    return 1
}
