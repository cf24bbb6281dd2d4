#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_sql_fleet.sh (issue 12): a mixed fleet on kombu's SQL transport. One
# Python Celery worker (tests/interop/pyworker, prefork -c 2) and one celeriac
# worker (-c 2, a 2 s visibility timeout swept every second) consume the same
# queue "celery" on one broker: PostgreSQL, then an SQLite file. Debian's
# Python client sends books.get_book_info (a trigger on books records every
# run and who ran it), on PostgreSQL also books.get_book_info_txn (which
# celeriac runs in the transaction that deletes its message: one task per
# transaction here, as a worker with two queues does not batch), tasks.add,
# tasks.flaky (retried twice: the retry may
# land on either worker) and two-step chains whose second step only the
# other worker consumes (queues py_only and c_only): so each worker runs what
# the other published. Every task must succeed exactly once (the runs
# recorded by the trigger and the "succeeded" lines of both logs), both
# workers must have done some of the work, celeriac's sweep must give back a
# celeriac claim a vanished process left, and never a row the Python worker
# claimed: kombu never deletes a row it acked, it leaves it hidden with a
# positive version, so every row Python received must still be there, hidden.
# The Python worker is stopped last: its warm shutdown restores messages it
# had run and not yet acked (Celery's, see test_differential_sql.sh), which
# celeriac would otherwise run again.
. "$(dirname "$0")/lib.sh"

PYWORKER_DIR=$CELERIAC_ROOT/tests/interop/pyworker

start_redis
start_pg
seed_books_pg || { not_ok "seed the books table"; tap_done; }
# Every run of books.get_book_info updates fetched_at: record it, and who.
psql_db -c "
    CREATE TABLE runs (book_id INTEGER, who TEXT);
    CREATE FUNCTION record_run() RETURNS trigger LANGUAGE plpgsql AS
      \$\$BEGIN INSERT INTO runs VALUES (NEW.id, current_setting('application_name'));
      RETURN NULL; END\$\$;
    CREATE TRIGGER record_run AFTER UPDATE OF fetched_at ON books
      FOR EACH ROW EXECUTE FUNCTION record_run();" >/dev/null

# start_pyworker LABEL BROKER QUEUES: the Python reference worker, polling
# every 0.1 s (kombu's default is 1 s); sets PYW_PID, PYW_LOG.
start_pyworker() {
    PYW_LOG=$TEST_TMP/pyworker-$1.log
    (
        cd "$PYWORKER_DIR" &&
            exec env BROKER_URL="$2" RESULT_URL="$REDIS_URL" PG_URL="$PG_URL" C_FORCE_ROOT=1 \
                SQL_POLLING_INTERVAL=0.1 PYTHONPATH="$PYWORKER_DIR" "$PY" -m celery -A pyworker \
                worker -P prefork -c 2 -Q "$3" --without-gossip --without-mingle \
                --without-heartbeat -l info -n "py-$1@localhost"
    ) </dev/null >"$PYW_LOG" 2>&1 &
    PYW_PID=$!
    _svc_record_pid "$PYW_PID" celery
}

stop_pyworker() {
    kill -TERM "$PYW_PID" 2>/dev/null
    wait_pid_gone 30 "$PYW_PID" || kill -KILL "$PYW_PID" 2>/dev/null
    wait "$PYW_PID" 2>/dev/null
}

# succeeded_counts PYLOG CLOG: "ids python celeriac twice": the task ids that
# succeeded, how many the Python worker ran, how many celeriac ran, and how
# many ran more than once (either worker, or both).
succeeded_counts() {
    "$PY" - "$1" "$2" <<'EOF'
import collections, re, sys
ok = re.compile(r"Task [^\[ ]+\[([0-9a-f-]+)\] succeeded in")
runs, by = collections.Counter(), []
for path in sys.argv[1:]:
    ids = ok.findall(open(path, errors="replace").read())
    runs.update(ids)
    by.append(len(ids))
print(len(runs), by[0], by[1], sum(1 for n in runs.values() if n > 1))
EOF
}

# fleet LABEL BROKER KQ N_BOOKS N_ADD [N_TXN]: one mixed-fleet run; KQ runs
# SQL on the broker database (pgq or sq). Books 1..N_BOOKS are fetched by
# books.get_book_info, the next N_TXN by books.get_book_info_txn.
fleet() {
    local label=$1 broker=$2 kq=$3 nb=$4 na=$5 nt=${6:-0} SQL_BROKER=$2
    local books txn_books adds flaky c2py py2c lost out py_books c_books
    psql_db -c "TRUNCATE runs" >/dev/null
    books=$(sqlc send books.get_book_info --each "$("$PY" -c "print([[i] for i in range(1, $nb + 1)])")")
    txn_books=
    ((nt == 0)) || txn_books=$(sqlc send books.get_book_info_txn \
        --each "$("$PY" -c "print([[i] for i in range($nb + 1, $nb + $nt + 1)])")")
    adds=$(sqlc send tasks.add --each "$("$PY" -c "print([[i, i] for i in range($na)])")")
    flaky=$(sqlc send tasks.flaky --args '[2]' --count 10)
    c2py=$(sqlc chain --each '[[1,2,10],[2,3,20],[3,4,30],[4,5,40],[5,6,50]]' --queues c_only,py_only)
    py2c=$(sqlc chain --each '[[1,1,100],[2,2,200],[3,3,300],[4,4,400],[5,5,500]]' \
        --queues py_only,c_only)
    # A claim a vanished celeriac process left an hour ago: the sweep's to give back.
    lost=$(sqlc send tasks.add --args '[1000, 1]')
    $kq "UPDATE kombu_message SET visible = false, version = -2,
           timestamp = '2000-01-01 00:00:00' WHERE payload LIKE '%$lost%'" >/dev/null

    # Python first, so that it holds a share whatever celeriac's speed.
    start_pyworker "$label" "$broker" celery,py_only
    _py_ran_some() { (($(psql_db -c "SELECT count(*) FROM runs WHERE who LIKE 'pyworker%'") >= 10)); }
    wait_for 60 _py_ran_some ||
        not_ok "$label: the Python worker runs tasks" "$(tail -20 "$PYW_LOG" | sed 's/^/py: /')"
    start_worker -c 2 -Q celery,c_only -b "$broker" --result-backend "$REDIS_URL" --db "$PG_URL" \
        --visibility-timeout 2 --sweep-interval 1 -l debug -n "c-$label@localhost"

    # shellcheck disable=SC2086
    out=$(sqlc wait $books $txn_books $adds $flaky $c2py $py2c $lost --timeout 60)
    expect_eq "$label: every task SUCCESS" "SUCCESS=$((nb + nt + na + 21))" "$(states <<<"$out")" \
        "$(grep -v SUCCESS <<<"$out" | head -5)" "$(worker_log_tail 5)"
    expect_eq "$label: tasks.add, the flaky retries, the chains each way, the swept claim: their values" \
        "$(seq 0 2 $((2 * na - 2)) | tr '\n' ' ')2 2 2 2 2 2 2 2 2 2 13 25 37 49 61 102 204 306 408 510 1001" \
        "$(tail -n +$((nb + nt + 1)) <<<"$out" | results)"
    if ((nt > 0)); then
        if log_has "runs as an ordinary late-ack task"; then
            not_ok "$label: celeriac kept books.get_book_info_txn transactional" \
                "$(grep "ordinary late-ack" "$WORKER_LOG" | head -2)"
        else
            ok "$label: celeriac kept books.get_book_info_txn transactional"
        fi
    fi
    # Past two more visibility timeouts and sweeps: nothing may run again.
    sleep 5
    expect_eq "$label: each of the $((nb + nt)) books fetched exactly once (trigger on books)" \
        "$((nb + nt)) $((nb + nt)) 0" "$(psql_db -c "SELECT count(*), count(DISTINCT book_id),
            (SELECT count(*) FROM (SELECT book_id FROM runs GROUP BY 1 HAVING count(*) > 1) d)
            FROM runs" | tr '|' ' ')"
    read -r py_books c_books <<<"$(psql_db -c "SELECT count(*) FILTER (WHERE who LIKE 'pyworker%'),
        count(*) FILTER (WHERE who LIKE 'celeriac child%') FROM runs" | tr '|' ' ')"
    read -r ids py_ok c_ok twice <<<"$(succeeded_counts "$PYW_LOG" "$WORKER_LOG")"
    expect_eq "$label: every task succeeded once in the two logs, none twice" \
        "$((nb + nt + na + 31)) 0" "$ids $twice" "python $py_ok, celeriac $c_ok successes"
    if ((py_books > 0 && c_books > 0 && py_books + c_books == nb + nt)); then
        ok "$label: both workers fetched books (Python $py_books, celeriac $c_books of $((nb + nt)))"
    else
        not_ok "$label: both workers fetched books" "Python $py_books, celeriac $c_books of $((nb + nt))"
    fi
    if log_has "gave back 1 message\(s\) claimed more than 2 s ago"; then
        ok "$label: celeriac's sweep gave back the stale celeriac claim"
    else
        not_ok "$label: celeriac's sweep gave back the stale celeriac claim" "$(worker_log_tail 8)"
    fi
    expect_eq "$label: every message the Python worker received is still its row, hidden (positive version)" \
        "$(grep -c 'Task .* received' "$PYW_LOG") 0 0" \
        "$($kq "SELECT count(*) FILTER (WHERE NOT visible AND version > 0),
                       count(*) FILTER (WHERE visible),
                       count(*) FILTER (WHERE version < 0) FROM kombu_message" | tr '|' ' ')"
    stop_worker
    expect_eq "$label: celeriac exits 0 on SIGTERM" 0 "$WORKER_RC" "$(worker_log_tail)"
    stop_pyworker
    diag "$label: the Python worker's warm shutdown restored $($kq "SELECT count(*) FROM kombu_message WHERE visible") row(s) it had run"
}

pgq() { psql_db -c "$1"; }
fleet pg "sqla+postgresql://postgres@127.0.0.1:$PG_PORT/celeriac" pgq 300 100 300

# ---- batches beside kombu's consumer ---------------------------------------------------------
# With one queue, celeriac batches books.get_book_info_txn: a batch keeps up
# to 16 rows locked until it commits, and kombu's consumer, which locks
# without SKIP LOCKED, waits for the first of them. Neither may lose a task
# or run one twice. (test_sql_batch.sh checks that batches form.)
batched_fleet() {
    local broker=$1 SQL_BROKER=$1 ids out py_books c_books
    psql_db -c "TRUNCATE runs" >/dev/null
    ids=$(sqlc send books.get_book_info_txn --each "$("$PY" -c "print([[i] for i in range(1, 401)])")")
    start_pyworker pg-batch "$broker" celery
    wait_for 60 _py_ran_some ||
        not_ok "pg-batch: the Python worker runs tasks" "$(tail -20 "$PYW_LOG" | sed 's/^/py: /')"
    start_worker -c 2 -Q celery -b "$broker" --result-backend "$REDIS_URL" --db "$PG_URL" \
        -n c-pg-batch@localhost
    # shellcheck disable=SC2086
    out=$(sqlc wait $ids --timeout 60)
    expect_eq "pg-batch: 400 transactional tasks SUCCESS" SUCCESS=400 "$(states <<<"$out")" \
        "$(grep -v SUCCESS <<<"$out" | head -5)" "$(worker_log_tail 5)"
    stop_worker
    expect_eq "pg-batch: celeriac exits 0 on SIGTERM" 0 "$WORKER_RC" "$(worker_log_tail)"
    stop_pyworker
    expect_eq "pg-batch: each of the 400 books fetched exactly once" "400 400" \
        "$(psql_db -c "SELECT count(*), count(DISTINCT book_id) FROM runs" | tr '|' ' ')"
    read -r py_books c_books <<<"$(psql_db -c "SELECT count(*) FILTER (WHERE who LIKE 'pyworker%'),
        count(*) FILTER (WHERE who LIKE 'celeriac child%') FROM runs" | tr '|' ' ')"
    if ((py_books > 0 && c_books > 0)); then
        ok "pg-batch: both workers fetched books (Python $py_books, celeriac $c_books)"
    else
        not_ok "pg-batch: both workers fetched books" "Python $py_books, celeriac $c_books"
    fi
}
batched_fleet "sqla+postgresql://postgres@127.0.0.1:$PG_PORT/celeriac"

BROKER_DB=$TEST_TMP/broker.db
sq() { sqlite3 -batch -cmd ".timeout 5000" "$BROKER_DB" "$@"; }
# kombu creates the tables on the client's first publish
fleet sqlite "sqla+sqlite:///$BROKER_DB" sq 100 40

check_worker_logs_clean
tap_done
