#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_sql_broker_sqlite.sh (issue 12): celeriac consuming kombu's SQL
# transport in an SQLite file (sqla+sqlite:////abs/path.db), tasks sent by
# Debian's Python Celery client, results in a throwaway Redis: tables kombu
# created adopted (and the same tables when celeriac creates them), results
# from two children, a countdown held while others run, a late-ack child
# SIGKILLed mid-task, held messages given back on warm shutdown, and the
# adaptive poll's latency.
. "$(dirname "$0")/lib.sh"

start_redis
BOOKS_SQLITE=$TEST_TMP/books.db
seed_books_sqlite "$BOOKS_SQLITE" || { not_ok "seed the books database"; tap_done; }
BROKER_DB=$TEST_TMP/broker.db
SQL_BROKER="sqla+sqlite:///$BROKER_DB"
sq() { sqlite3 -batch "$BROKER_DB" "$@"; }

# ---- kombu's tables, created by Python first, adopted by celeriac -----------------------
ids=$(sqlc send books.get_book_info --each '[[1],[2],[3],[4],[5],[6]]')
expect_eq "kombu created its tables and stored 6 ready rows" 6 \
    "$(sq "SELECT count(*) FROM kombu_message WHERE visible")"
start_worker -c 2 -b "$SQL_BROKER" --result-backend "$REDIS_URL" --db "sqlite://$BOOKS_SQLITE" \
    -n lite1@localhost
wait_children 2 20 || not_ok "worker on sqla+sqlite started" "$(worker_log_tail)"
# shellcheck disable=SC2086
out=$(sqlc wait $ids --timeout 20)
expect_eq "6 tasks sent before the worker started: SUCCESS with their values" \
    '"Book 1" "Book 2" "Book 3" "Book 4" "Book 5" "Book 6"' "$(results <<<"$out")" "$out"
expect_eq "every acked row is deleted" 0 "$(sq "SELECT count(*) FROM kombu_message")"

# ---- the same tables as kombu's when celeriac creates them -----------------------------------
schema_of() { # FILE
    sqlite3 -batch "$1" "
        SELECT m.name, p.cid, p.name, p.type, p.\"notnull\", coalesce(p.dflt_value, ''), p.pk
          FROM sqlite_master m, pragma_table_info(m.name) p
         WHERE m.type = 'table' AND m.name LIKE 'kombu%' ORDER BY 1, 2;
        SELECT m.name, i.name, i.\"unique\", i.origin
          FROM sqlite_master m, pragma_index_list(m.name) i
         WHERE m.type = 'table' AND m.name LIKE 'kombu%' AND i.name NOT LIKE 'celeriac%'
         ORDER BY 1, 2;
        SELECT m.name, f.\"table\", f.\"from\", f.\"to\"
          FROM sqlite_master m, pragma_foreign_key_list(m.name) f
         WHERE m.type = 'table' AND m.name LIKE 'kombu%' ORDER BY 1, 2;"
}
BROKER_URL="sqla+sqlite:///$TEST_TMP/by_kombu.db" RESULT_URL=$REDIS_URL \
    "$PY" "$SQL_DIR/sql_client.py" kombu-tables
stop_worker
rm -f "$BROKER_DB" "$BROKER_DB"-*
start_worker -c 2 -b "$SQL_BROKER" --result-backend "$REDIS_URL" --db "sqlite://$BOOKS_SQLITE" \
    -n lite2@localhost
wait_children 2 20
wait_for 10 test -s "$BROKER_DB"
sleep 0.5
expect_eq "tables celeriac created = the tables kombu creates (columns, indexes, keys)" \
    "$(schema_of "$TEST_TMP/by_kombu.db")" "$(schema_of "$BROKER_DB")"

# ---- a countdown held while others run; the adaptive poll -----------------------------------------
held=$(sqlc send tasks.add --args '[40, 2]' --countdown 3)
quick=$(sqlc send tasks.add --each '[[1,1],[2,2],[3,3]]')
# shellcheck disable=SC2086
out=$(sqlc wait $quick --timeout 20)
expect_eq "three tasks run while the countdown is held" "2 4 6" "$(results <<<"$out")" "$out"
out=$(sqlc wait "$held" --timeout 20)
expect_eq "the held countdown task runs at its time" 42 "$(results <<<"$out")" "$out"
sleep 1.5
lat=$(sqlc latency tasks.add --args '[1, 2]' --count 10)
median=$(jget median <<<"$lat")
if "$PY" -c "import sys; sys.exit(0 if float('$median') < 0.2 else 1)"; then
    ok "an idle worker notices a new row quickly: send-to-result median $median s ($lat)"
else
    not_ok "an idle worker notices a new row: send-to-result median under 0.2 s" "$lat"
fi
t0=$(cpu_ticks $(worker_children) "$WORKER_PID")
sleep 3
t1=$(cpu_ticks $(worker_children) "$WORKER_PID")
if ((t1 - t0 <= 15)); then
    ok "two idle children polling SQLite: $(((t1 - t0) * 10)) ms CPU in 3 s"
else
    not_ok "two idle children polling SQLite: at most 150 ms CPU in 3 s" "$(((t1 - t0) * 10)) ms"
fi
stop_worker

# ---- a late-ack child SIGKILLed mid-task; warm shutdown gives held messages back ---------------
start_worker -c 1 --acks-late -b "$SQL_BROKER" --result-backend "$REDIS_URL" \
    --db "sqlite://$BOOKS_SQLITE" -n lite3@localhost
wait_children 1 20
victim=$(worker_children)
id=$(sqlc send tasks.sleep --args '[2]')
wait_for 10 test "$(sq "SELECT count(*) FROM kombu_message WHERE visible = 0")" = 1
sleep 0.5
kill -KILL "$victim"
out=$(sqlc wait "$id" --timeout 30)
expect_eq "the task of a SIGKILLed late-ack child is requeued and succeeds" SUCCESS \
    "$(jget state <<<"$out")" "$out" "$(worker_log_tail 8)"
held=$(sqlc send tasks.add --args '[5, 5]' --countdown 120)
wait_for 10 test "$(sq "SELECT count(*) FROM kombu_message WHERE visible = 0 AND version < 0")" = 1
stop_worker
expect_eq "warm shutdown: the held countdown message is ready again (version 3)" "1|3" \
    "$(sq "SELECT visible, version FROM kombu_message")"
check_worker_logs_clean
tap_done
