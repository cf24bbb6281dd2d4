#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_sql_outbox.sh (issue 12, point 5): the transactional outbox. An
# application writes its own row and enqueues a task in one transaction: from
# C through its own connection (celeriac_send_pg / celeriac_send_sqlite, built
# against celeriac_client.h and libceleriac.a), and from Python through SQL
# (SELECT celeriac_enqueue(...), psycopg2). A commit makes row and task exist
# together and the worker runs the task; a rollback leaves neither.
. "$(dirname "$0")/lib.sh"

start_redis
start_pg
SQL_BROKER="sqla+postgresql://postgres@127.0.0.1:$PG_PORT/celeriac"
OUTBOX=$TEST_TMP/outbox_client
SAN=()
if nm "$BUILD_DIR/libceleriac.a" 2>/dev/null | grep -q ' U __asan_'; then
    SAN=("-fsanitize=address,undefined")
fi
# shellcheck disable=SC2046
if ! cc -std=c11 -Wall -Wextra -Werror -O1 -g "${SAN[@]}" -I"$CELERIAC_ROOT/include" $(pkg-config --cflags libpq) \
    -o "$OUTBOX" "$SQL_DIR/outbox_client.c" "$BUILD_DIR/libceleriac.a" \
    $(pkg-config --libs hiredis jansson libpq sqlite3 librabbitmq msgpack openssl) -ldl -lm \
    2>"$TEST_TMP/cc.log"; then
    not_ok "build an application against celeriac_client.h and libceleriac.a" "$(cat "$TEST_TMP/cc.log")"
    tap_done
fi
psql_db -c "CREATE TABLE orders (name text)" >/dev/null

# ---- PostgreSQL: C and SQL ---------------------------------------------------------------------
start_worker -c 1 -b "$SQL_BROKER" --result-backend "$REDIS_URL" --db "$PG_URL" -n outbox1@localhost
wait_children 1 20 || not_ok "worker started" "$(worker_log_tail)"
wait_for 10 psql_db -c "SELECT 'kombu_message'::regclass"
committed=$("$OUTBOX" pg "$PG_URL" commit 41 2>&1)
out=$(sqlc wait "$committed" --timeout 20)
expect_eq "C, committed: the task runs (41 + 1)" 42 "$(results <<<"$out")" "$out"
rolled=$("$OUTBOX" pg "$PG_URL" rollback 7 2>&1) || not_ok "C, rolled back: the client ran" "$rolled"
sleep 1
expect_eq "C, rolled back: neither the order nor the message exists" "0|0" \
    "$(psql_db -c "SELECT (SELECT count(*) FROM orders WHERE name = '7'),
                          (SELECT count(*) FROM kombu_message)")"
expect_eq "... and nothing was stored for it" PENDING \
    "$(jget state <<<"$(sqlc wait "$rolled" --timeout 1)" | sed 's/TIMEOUT.*/PENDING/')"

py_outbox() { # commit|rollback ARGS_JSON: Python's outbox, one SQL call
    "$PY" - "$PG_URL" "$1" "$2" <<'PYEOF'
import sys, psycopg2
conn = psycopg2.connect(sys.argv[1])
with conn.cursor() as cur:
    cur.execute("INSERT INTO orders (name) VALUES ('py')")
    cur.execute("SELECT celeriac_enqueue(%s, %s, %s, %s)", ("celery", "tasks.add", sys.argv[3], "{}"))
    print(cur.fetchone()[0])
conn.commit() if sys.argv[2] == "commit" else conn.rollback()
PYEOF
}
id=$(py_outbox commit '[20, 22]')
out=$(sqlc wait "$id" --timeout 20)
expect_eq "SQL from Python (celeriac_enqueue), committed: Celery's worker protocol, the task runs" \
    42 "$(results <<<"$out")" "$out"
py_outbox rollback '[1, 1]' >/dev/null
sleep 1
expect_eq "SQL from Python, rolled back: one order row only (the committed one), no message" "1|0" \
    "$(psql_db -c "SELECT (SELECT count(*) FROM orders WHERE name = 'py'),
                          (SELECT count(*) FROM kombu_message)")"
out=$("$CELERIAC_BIN" call tasks.add 40 2 -b "$SQL_BROKER" --result-backend "$REDIS_URL" --wait \
    --timeout 20 2>&1)
expect_eq "celeriac call -b sqla+postgresql:// --wait: published and answered" 42 "$out"
out=$("$CELERIAC_BIN" call tasks.add 1 1 -b "sqla+postgresql://postgres@127.0.0.1:1/none" 2>&1)
rc=$?
if ((rc != 0)) && [[ $out == *"127.0.0.1:1/none"* ]]; then
    ok "celeriac call to an unreachable SQL broker: fails, naming it (rc $rc)"
else
    not_ok "celeriac call to an unreachable SQL broker: fails, naming it" "rc $rc" "$out"
fi
stop_worker

# A Python Celery worker runs what celeriac_enqueue wrote: the message is
# Celery's protocol 2, not only celeriac's.
pylog=$TEST_TMP/pyworker.log
(
    cd "$CELERIAC_ROOT/tests/interop/pyworker" &&
        exec env BROKER_URL="$SQL_BROKER" RESULT_URL="$REDIS_URL" PG_URL="$PG_URL" C_FORCE_ROOT=1 \
            PYTHONPATH=. "$PY" -m celery -A pyworker worker -P solo --without-gossip \
            --without-mingle --without-heartbeat -l info -n py@localhost
) </dev/null >"$pylog" 2>&1 &
pypid=$!
_svc_record_pid "$pypid" celery
wait_for 60 grep -q 'ready\.' "$pylog" || not_ok "the Python worker starts" "$(tail -20 "$pylog")"
id=$(py_outbox commit '[2, 3]')
out=$(sqlc wait "$id" --timeout 20)
expect_eq "SQL from Python (celeriac_enqueue): Python's Celery worker runs it too" 5 \
    "$(results <<<"$out")" "$out" "$(tail -5 "$pylog")"
kill -TERM "$pypid"
wait_pid_gone 30 "$pypid" || kill -KILL "$pypid"

# ---- SQLite ---------------------------------------------------------------------------------------
BROKER_DB=$TEST_TMP/outbox.db
SQL_BROKER="sqla+sqlite:///$BROKER_DB"
start_worker -c 1 -b "$SQL_BROKER" --result-backend "$REDIS_URL" -n outbox2@localhost
wait_children 1 20
wait_for 10 sqlite3 "$BROKER_DB" "SELECT 1 FROM kombu_message LIMIT 1"
sqlite3 "$BROKER_DB" "CREATE TABLE orders (name text)"
committed=$("$OUTBOX" sqlite "$BROKER_DB" commit 9 2>&1)
out=$(sqlc wait "$committed" --timeout 20)
expect_eq "SQLite, committed: the task runs" 10 "$(results <<<"$out")" "$out"
"$OUTBOX" sqlite "$BROKER_DB" rollback 5 >/dev/null 2>&1
sleep 0.5
expect_eq "SQLite, rolled back: neither the order nor the message exists" "0|0" \
    "$(sqlite3 "$BROKER_DB" "SELECT (SELECT count(*) FROM orders WHERE name = '5'),
                                    (SELECT count(*) FROM kombu_message)")"
stop_worker
check_worker_logs_clean
tap_done
