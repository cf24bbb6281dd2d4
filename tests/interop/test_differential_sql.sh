#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_differential_sql.sh (issue 12): test_differential.sh over kombu's SQL
# transport on PostgreSQL (sqla+postgresql://). The same client script
# (differential.py) against the Python reference worker and then against
# celeriac, each consuming a broker database of its own on one throwaway
# PostgreSQL (kombu's tables created by the client, as an application
# creates them), results in Redis (a database for each side). Once each
# worker has stopped, `differential.py left` counts the rows it left in
# kombu_message: none ready and none claimed by celeriac on either side;
# kombu's consumer hides the rows it acks and never deletes them, celeriac
# deletes them. Cases that cannot apply are listed as "# SKIP" lines with
# the reason. kombu's consumer polls the table (once a second by default):
# the reference worker polls every 0.1 s here, or the canvas cases would
# wait a second a step.
. "$(dirname "$0")/../integration/services.sh"
. "$(dirname "$0")/differential_lib.sh"

start_redis
start_pg
seed_books_pg || { not_ok "seed the books table"; tap_done; }
psql_admin -c "CREATE DATABASE broker_py" -c "CREATE DATABASE broker_c" >/dev/null
PY_BROKER="sqla+postgresql://postgres@127.0.0.1:$PG_PORT/broker_py"
C_BROKER="sqla+postgresql://postgres@127.0.0.1:$PG_PORT/broker_c"

# kombu's _get_or_create races between processes: two Python children
# publishing to a queue that has no row yet both INSERT it, and the loser's
# session fails the task (UniqueViolation, then PendingRollbackError). The
# tables and the queue rows exist before either worker starts, as in any
# deployment past its first minute.
for db in broker_py broker_c; do
    BROKER_URL="sqla+postgresql://postgres@127.0.0.1:$PG_PORT/$db" \
        "$PY" "$CELERIAC_ROOT/tests/sql/sql_client.py" kombu-tables
    psql -X -q "postgresql://postgres@127.0.0.1:$PG_PORT/$db" -c "
        INSERT INTO kombu_queue (id, name)
        SELECT nextval('queue_id_sequence'), q FROM unnest(ARRAY['celery', 'diff.held',
               'diff.rk', 'diff.tap']) AS q ON CONFLICT (name) DO NOTHING" >/dev/null
done

diff_left() { BROKER_URL=$DIFF_LEFT_BROKER "$PY" "$DIFF_HERE/differential.py" left "$1"; }
DIFF_AFTER_STOP=diff_left

DIFF_LEFT_BROKER=$PY_BROKER
diff_run_python "" "$PY_BROKER" "redis://127.0.0.1:$REDIS_PORT/1" "$TEST_TMP/py.json" \
    SQL_POLLING_INTERVAL=0.1
DIFF_LEFT_BROKER=$C_BROKER
diff_run_celeriac "" "$C_BROKER" "redis://127.0.0.1:$REDIS_PORT/2" "$TEST_TMP/c.json"
if [[ -f $TEST_TMP/py.json && -f $TEST_TMP/c.json ]]; then
    run_cases "$PY" "$DIFF_HERE/differential.py" compare "$TEST_TMP/py.json" "$TEST_TMP/c.json"
    [[ -n ${KEEP_DIFF:-} ]] && cp "$TEST_TMP/py.json" "$TEST_TMP/c.json" "$KEEP_DIFF/"
fi
check_worker_logs_clean
tap_done
