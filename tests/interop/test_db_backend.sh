#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_db_backend.sh: Celery's database result backend (db+postgresql://,
# db+sqlite:///) written by celeriac and read by Debian's Python Celery
# client (db_backend_client.py): values, failure, retry; the schema equal to
# what Python creates, and tables made by either side used by the other; the
# same result pickles as a Python worker's; a database outage retried with
# backoff; a db+ URL with another dialect refused.
. "$(dirname "$0")/../integration/services.sh"

HERE=$(cd "$(dirname "$0")" && pwd)
client() { run_cases timeout 60 "$PY" "$HERE/db_backend_client.py" "$@"; }

start_redis
start_pg
psql_admin -c "CREATE DATABASE pyschema" >/dev/null
PG_RESULTS="db+$PG_URL"
PY_RESULTS="db+postgresql://postgres@127.0.0.1:$PG_PORT/pyschema"

# ---- PostgreSQL: tables made by celeriac ------------------------------------------
start_worker -c 2 -b "$REDIS_URL" --result-backend "$PG_RESULTS" -n dbb@localhost
client cases "$REDIS_URL" "$PG_RESULTS" || worker_log_tail 30

client create "$PY_RESULTS"
schema() { # the schema of database $1, without pg_dump's per-run lines
    pg_dump -s -x -O "postgresql://postgres@127.0.0.1:$PG_PORT/$1" | grep -vE '^(\\|--|SET|SELECT)'
}
expect_eq "PostgreSQL: the schema celeriac creates is the one Python creates" \
    "$(schema pyschema)" "$(schema celeriac)"

client send "$REDIS_URL" "$PG_RESULTS" c

# ---- the result database goes away and comes back --------------------------------
stop_pg fast
client submit "$REDIS_URL" "$PG_RESULTS" outage-1
if wait_for 20 grep -q "connecting to the result backend failed.*retrying in" "$WORKER_LOG"; then
    ok "database down: the store is retried with backoff"
else
    not_ok "database down: the store is retried with backoff" "$(worker_log_tail 20)"
fi
start_pg_again
client wait "$REDIS_URL" "$PG_RESULTS" outage-1 || worker_log_tail 30
stop_worker TERM 30
expect_eq "worker exits 0 on SIGTERM" 0 "$WORKER_RC" "$(worker_log_tail)"

# ---- the same tasks on a Python worker: the same bytes ------------------------------
(
    cd "$HERE/pyworker" &&
        exec env BROKER_URL="$REDIS_URL" RESULT_URL="$PG_RESULTS" PG_URL="$PG_URL" C_FORCE_ROOT=1 \
            PYTHONPATH="$HERE/pyworker" "$PY" -m celery -A pyworker worker -P prefork -c 2 \
            --without-gossip --without-mingle --without-heartbeat -l info -n py@localhost
) </dev/null >"$TEST_TMP/pyworker.log" 2>&1 &
PYW=$!
_svc_record_pid "$PYW" celery
if wait_for 60 grep -q 'ready\.' "$TEST_TMP/pyworker.log"; then
    client send "$REDIS_URL" "$PG_RESULTS" p
    client compare "$PG_RESULTS" c p
else
    not_ok "Python reference worker starts" "$(tail -20 "$TEST_TMP/pyworker.log")"
fi
kill -TERM "$PYW" 2>/dev/null
wait_pid_gone 30 "$PYW" || kill -KILL "$PYW" 2>/dev/null
wait "$PYW" 2>/dev/null

# ---- PostgreSQL: tables made by Python ------------------------------------------------
start_worker -c 1 -b "$REDIS_URL" --result-backend "$PY_RESULTS" -n dbb-py@localhost
client one "$REDIS_URL" "$PY_RESULTS" || worker_log_tail 30
stop_worker TERM 30

# ---- SQLite ------------------------------------------------------------------------------
C_DB=$TEST_TMP/celeriac-results.db
PY_DB=$TEST_TMP/python-results.db
start_worker -c 2 -b "$REDIS_URL" --result-backend "db+sqlite:///$C_DB" -n dbb-sqlite@localhost
client cases "$REDIS_URL" "db+sqlite:///$C_DB" || worker_log_tail 30
stop_worker TERM 30
expect_eq "SQLite: worker exits 0 on SIGTERM" 0 "$WORKER_RC" "$(worker_log_tail)"

client create "db+sqlite:///$PY_DB"
expect_eq "SQLite: the schema celeriac creates is the one Python creates" \
    "$(sqlite3 "$PY_DB" .schema)" "$(sqlite3 "$C_DB" .schema)"
start_worker -c 1 -b "$REDIS_URL" --result-backend "db+sqlite:///$PY_DB" -n dbb-sqlite-py@localhost
client one "$REDIS_URL" "db+sqlite:///$PY_DB" || worker_log_tail 30
stop_worker TERM 30

# ---- bad input ---------------------------------------------------------------------------
out=$("$CELERIAC_BIN" worker -A "$BOOKS_LIB" -b "$REDIS_URL" \
    --result-backend 'db+mysql://user:s3cret@127.0.0.1/results' 2>&1)
rc=$?
expect_eq "db+mysql://: exit 2" 2 "$rc" "$out"
expect_eq "db+mysql://: one line on stderr, naming the dialect, no password" "1 yes no" \
    "$(wc -l <<<"$out") $(grep -q "'mysql'" <<<"$out" && echo yes || echo no) \
$(grep -q s3cret <<<"$out" && echo yes || echo no)" "$out"

check_worker_logs_clean
tap_done
