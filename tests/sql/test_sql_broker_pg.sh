#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_sql_broker_pg.sh (issue 12): celeriac consuming kombu's SQL transport
# on a throwaway PostgreSQL, tasks sent by Debian's Python Celery client with
# broker_url='sqla+postgresql://...', results in a throwaway Redis: the tables
# as kombu creates them, tables kombu created adopted, results, a retry, a
# countdown held while others run, a late-ack child SIGKILLed mid-task, the
# visibility timeout (celeriac's lost claims given back, a Python worker's
# finished rows left alone), held messages given back on warm shutdown, a
# wake-up by NOTIFY instead of a poll, and bad input.
. "$(dirname "$0")/lib.sh"

start_redis
start_pg
seed_books_pg || { not_ok "seed the books table"; tap_done; }
SQL_BROKER="sqla+postgresql://postgres@127.0.0.1:$PG_PORT/celeriac"
CELERY_Q="(SELECT id FROM kombu_queue WHERE name = 'celery')"

# ---- kombu's tables, created by Python first, adopted by celeriac -----------------------
# Sent before any worker runs: kombu creates the tables and the rows wait.
ids=$(sqlc send books.get_book_info --each '[[1],[2],[3],[4],[5],[6],[7],[8]]')
expect_eq "kombu created its tables and stored 8 ready rows" 8 \
    "$(psql_db -c "SELECT count(*) FROM kombu_message WHERE visible")"
start_worker -c 2 -b "$SQL_BROKER" --result-backend "$REDIS_URL" --db "$PG_URL" -n pg1@localhost
wait_children 2 20 || not_ok "worker on sqla+postgresql started" "$(worker_log_tail)"
# shellcheck disable=SC2086
out=$(sqlc wait $ids --timeout 20)
expect_eq "8 tasks sent before the worker started: SUCCESS with their values" \
    '"Book 1" "Book 2" "Book 3" "Book 4" "Book 5" "Book 6" "Book 7" "Book 8"' "$(results <<<"$out")" \
    "$out"
expect_eq "every acked row is deleted (kombu's would stay)" 0 \
    "$(psql_db -c "SELECT count(*) FROM kombu_message")"
if grep -q "celeriac_kombu_notify" <<<"$(psql_db -c "SELECT tgname FROM pg_trigger")"; then
    ok "celeriac added its NOTIFY trigger to kombu's table"
else
    not_ok "celeriac added its NOTIFY trigger to kombu's table"
fi

# ---- the same tables as kombu's when celeriac creates them -----------------------------------
schema_of() { # DB
    psql -X -A -t -q "postgresql://postgres@127.0.0.1:$PG_PORT/$1" -c "
        SELECT table_name, column_name, data_type, is_nullable, coalesce(column_default, ''),
               coalesce(character_maximum_length::text, '')
          FROM information_schema.columns WHERE table_name LIKE 'kombu%' ORDER BY 1, 2;
        SELECT indexname, indexdef FROM pg_indexes
         WHERE tablename LIKE 'kombu%' AND indexname NOT LIKE 'celeriac%' ORDER BY 1;
        SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint
         WHERE conrelid::regclass::text LIKE 'kombu%' ORDER BY 1;
        SELECT sequence_name, data_type FROM information_schema.sequences ORDER BY 1;"
}
psql_admin -c "CREATE DATABASE by_kombu" >/dev/null
BROKER_URL="sqla+postgresql://postgres@127.0.0.1:$PG_PORT/by_kombu" RESULT_URL=$REDIS_URL \
    "$PY" "$SQL_DIR/sql_client.py" kombu-tables
expect_eq "tables celeriac created = the tables kombu creates (columns, indexes, constraints, sequences)" \
    "$(schema_of by_kombu)" "$(schema_of celeriac)"

# ---- a retry and a countdown held while others run ---------------------------------------------
flaky=$(sqlc send tasks.flaky --args '[2]')
held=$(sqlc send tasks.add --args '[40, 2]' --countdown 3)
wait_rows "SELECT count(*) FROM kombu_message WHERE NOT visible AND version < 0" 1 10 ||
    not_ok "the countdown message is claimed and held" \
        "$(psql_db -c "SELECT id, visible, version FROM kombu_message")"
quick=$(sqlc send tasks.add --each '[[1,1],[2,2],[3,3]]')
# shellcheck disable=SC2086
out=$(sqlc wait $quick $flaky --timeout 20)
expect_eq "three tasks run while the countdown is held; a task retried twice succeeds" \
    "2 4 6 2" "$(results <<<"$out")" "$out"
out=$(sqlc wait "$held" --timeout 20)
expect_eq "the held countdown task runs at its time" 42 "$(results <<<"$out")" "$out"

# ---- woken by NOTIFY, not by a poll ---------------------------------------------------------------
sleep 1.5
lat=$(sqlc latency tasks.add --args '[1, 2]' --count 10)
median=$(jget median <<<"$lat")
if "$PY" -c "import sys; sys.exit(0 if float('$median') < 0.2 else 1)"; then
    ok "an idle worker is woken by NOTIFY: send-to-result median $median s ($lat)"
else
    not_ok "an idle worker is woken by NOTIFY: send-to-result median under 0.2 s" "$lat"
fi
stop_worker

# ---- rpc:// results: a row of the client's reply queue --------------------------------------------
start_worker -c 1 -b "$SQL_BROKER" --result-backend rpc:// --db "$PG_URL" -n pgrpc@localhost
wait_children 1 20
out=$(BROKER_URL=$SQL_BROKER RESULT_URL=rpc:// "$PY" "$SQL_DIR/sql_client.py" latency tasks.add \
    --args '[2, 3]' --count 3 2>&1)
if [[ $(jget max <<<"$out") != "<missing>" ]]; then
    ok "rpc:// over the SQL transport: Python's AsyncResult.get() reads 3 replies ($out)"
else
    not_ok "rpc:// over the SQL transport: Python's AsyncResult.get() reads the replies" "$out" \
        "$(worker_log_tail 6)"
fi
stop_worker
# kombu's consumer of the reply queue left the rows it received (it never
# deletes): out of the way of the counts below
psql_db -c "DELETE FROM kombu_message WHERE queue_id <> $CELERY_Q" >/dev/null

# ---- a late-ack child SIGKILLed mid-task: given back by its replacement at once ------------------
start_worker -c 1 --acks-late -b "$SQL_BROKER" --result-backend "$REDIS_URL" --db "$PG_URL" \
    -n pg2@localhost
wait_children 1 20
victim=$(worker_children)
id=$(sqlc send tasks.sleep --args '[2]')
wait_rows "SELECT count(*) FROM kombu_message WHERE NOT visible" 1 10
sleep 0.5
kill -KILL "$victim"
out=$(sqlc wait "$id" --timeout 30)
expect_eq "the task of a SIGKILLed late-ack child is requeued and succeeds" SUCCESS \
    "$(jget state <<<"$out")" "$out" "$(worker_log_tail 8)"
if grep -q "requeued (acks_late, reject_on_worker_lost; death 1" "$WORKER_LOG"; then
    ok "the replacement's log counts the death and says it requeued the message"
else
    not_ok "the replacement's log counts the death and says it requeued the message" \
        "$(worker_log_tail 8)"
fi
expect_eq "nothing left in kombu_message" 0 "$(psql_db -c "SELECT count(*) FROM kombu_message")"

# ---- warm shutdown gives held messages back ---------------------------------------------------------
held=$(sqlc send tasks.add --args '[5, 5]' --countdown 120)
wait_rows "SELECT count(*) FROM kombu_message WHERE NOT visible AND version < 0" 1 10
stop_worker
expect_eq "warm shutdown: the held countdown message is ready again, marked delivered (version 3)" \
    "t|3" "$(psql_db -c "SELECT visible, version FROM kombu_message")"
psql_db -c "DELETE FROM kombu_message" >/dev/null

# ---- the visibility timeout: lost celeriac claims come back, kombu's finished rows stay ---------------
# Two rows as a vanished process would leave them, both claimed an hour ago:
# one by celeriac (negative version), one by a Python worker that finished it
# (kombu never deletes a row it acked).
lost=$(sqlc send tasks.add --args '[20, 1]')
sqlc send tasks.add --args '[99, 99]' >/dev/null
psql_db -c "UPDATE kombu_message SET visible = false, version = -2,
              timestamp = localtimestamp - interval '1 hour' WHERE payload LIKE '%$lost%'" >/dev/null
psql_db -c "UPDATE kombu_message SET visible = false, version = 2,
              timestamp = localtimestamp - interval '1 hour' WHERE payload NOT LIKE '%$lost%'" \
    >/dev/null
start_worker -c 1 -b "$SQL_BROKER" --result-backend "$REDIS_URL" --db "$PG_URL" \
    --visibility-timeout 30 --sweep-interval 1 -n pg3@localhost
out=$(sqlc wait "$lost" --timeout 20)
expect_eq "a celeriac claim older than the visibility timeout is given back and runs" 21 \
    "$(results <<<"$out")" "$out" "$(worker_log_tail 6)"
sleep 1
expect_eq "a row a Python worker claimed (positive version) is left alone" "f|2" \
    "$(psql_db -c "SELECT visible, version FROM kombu_message")"
stop_worker
psql_db -c "DELETE FROM kombu_message" >/dev/null

# ---- bad input ------------------------------------------------------------------------------------
bad_usage() { # NAME EXPECTED_TEXT ARGS...
    local name=$1 want=$2 out rc
    shift 2
    out=$("$CELERIAC_BIN" worker -A "$BOOKS_LIB" "$@" 2>&1)
    rc=$?
    if ((rc == 2)) && grep -q -- "$want" <<<"$out" && (($(wc -l <<<"$out") == 1)); then
        ok "$name: one line, exit status 2"
    else
        not_ok "$name: one line, exit status 2" "rc $rc" "$out"
    fi
}
bad_usage "sqla+mysql://" "unsupported SQL broker dialect 'mysql'" -b "sqla+mysql://u@h/db"
bad_usage "a queue name longer than kombu's 200 characters" "queue name longer than 200 bytes" \
    -b "$SQL_BROKER" -Q "$(printf 'q%.0s' {1..201})"
bad_usage "an in-memory SQLite broker" "in-memory" -b "sqla+sqlite:///:memory:"

# A payload that is not a kombu envelope: dropped with a log line, the row
# deleted, the next message served.
start_worker -c 1 -b "$SQL_BROKER" --result-backend "$REDIS_URL" --db "$PG_URL" -n pg4@localhost
wait_children 1 20
psql_db -c "INSERT INTO kombu_message (id, visible, timestamp, payload, version, queue_id)
              VALUES (nextval('message_id_sequence'), true, NULL, 'not a kombu envelope', 1,
                      $CELERY_Q)" >/dev/null
id=$(sqlc send tasks.add --args '[3, 4]')
out=$(sqlc wait "$id" --timeout 20)
expect_eq "after a payload that is not an envelope, the next task runs" 7 "$(results <<<"$out")"
if grep -q "dropped a message from queue 'celery'" "$WORKER_LOG"; then
    ok "the payload that is not an envelope is logged as dropped"
else
    not_ok "the payload that is not an envelope is logged as dropped" "$(worker_log_tail 6)"
fi
expect_eq "... and its row deleted" 0 "$(psql_db -c "SELECT count(*) FROM kombu_message")"
stop_worker

# A kombu_message that is not kombu's: one clear line per episode, no spin.
psql_admin -c "CREATE DATABASE other_columns" >/dev/null
psql -X -q "postgresql://postgres@127.0.0.1:$PG_PORT/other_columns" -c "
    CREATE TABLE kombu_queue (id INTEGER PRIMARY KEY, name VARCHAR(200) UNIQUE);
    CREATE TABLE kombu_message (id INTEGER PRIMARY KEY, body TEXT, queue_id INTEGER);" \
    >/dev/null
start_worker -c 1 -b "sqla+postgresql://postgres@127.0.0.1:$PG_PORT/other_columns" \
    --result-backend "$REDIS_URL" --db "$PG_URL" -n pg5@localhost
sleep 2
t0=$(cpu_ticks $(worker_children) "$WORKER_PID")
sleep 4
t1=$(cpu_ticks $(worker_children) "$WORKER_PID")
lines=$(grep -c "has the columns (body,id,queue_id), not kombu's" "$WORKER_LOG")
if ((lines >= 1 && lines <= 2)); then
    ok "a kombu_message with other columns: named in $lines log line(s) in 6 s"
else
    not_ok "a kombu_message with other columns: named in one log line per episode" \
        "$lines lines" "$(worker_log_tail 8)"
fi
if ((t1 - t0 <= 20)); then
    ok "a kombu_message with other columns: the worker backs off ($(((t1 - t0) * 10)) ms CPU in 4 s)"
else
    not_ok "a kombu_message with other columns: the worker backs off" "$(((t1 - t0) * 10)) ms CPU in 4 s"
fi
stop_worker
check_worker_logs_clean
tap_done
