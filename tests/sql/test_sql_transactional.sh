#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_sql_transactional.sh (issue 12, point 5): transactional tasks. The
# broker is kombu's SQL transport in the task's own PostgreSQL database, so a
# CELERIAC_TRANSACTIONAL task's writes and its ack (the row's DELETE) commit
# together. Tasks (txn_tasks.c) write one ledger row per run. Cases: a
# success commits its write and its ack; a failure rolls its write back and
# is stored as FAILURE; a task that commits on its own is named in the log;
# on a Redis broker the flag falls back to late ack, with a warning. Then the
# crash test: children SIGKILLed at random instants while transactional tasks
# run, every task's write applied exactly once; and the same storm over
# late-ack tasks, which shows duplicate writes (the check can fail). The
# storm with tasks back to back is test_sql_transactional_storm.sh.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/txn_lib.sh"

# ---- one commit for the writes and the ack ----------------------------------------------------
start_txn_worker txn1 -c 1
wait_children 1 20 || not_ok "worker started" "$(worker_log_tail)"
if grep -q "ordinary late-ack task" "$WORKER_LOG"; then
    not_ok "broker in the task database: no fallback warning" "$(grep "late-ack" "$WORKER_LOG")"
else
    ok "broker in the task database: transactional tasks are transactional (no fallback warning)"
fi
ok_id=$(sqlc send txn.record --args '[0]')
fail_id=$(sqlc send txn.fail --args '[0]')
self_id=$(sqlc send txn.commits --args '[0]')
out=$(sqlc wait "$ok_id" "$fail_id" "$self_id" --timeout 20)
expect_eq "success, failure, self-commit: their states" "SUCCESS FAILURE SUCCESS" \
    "$(while read -r l; do jget state <<<"$l"; done <<<"$out" | tr '\n' ' ' | sed 's/ $//')" "$out"
expect_eq "the success's write committed with its ack" "1|1" "$(ledger "task_id = '$ok_id'")"
expect_eq "the failure's write was rolled back" "0|0" "$(ledger "task_id = '$fail_id'")"
if grep -q "txn.commits\[$self_id\] is transactional but ended the transaction itself" "$WORKER_LOG"; then
    ok "a transactional task that commits on its own is named in the log"
else
    not_ok "a transactional task that commits on its own is named in the log" "$(worker_log_tail 6)"
fi
expect_eq "every message acked" 0 "$(psql_db -c "SELECT count(*) FROM kombu_message")"
# On PostgreSQL the broker runs on the task's connection: the transaction
# that locks a message is the one its task runs in.
expect_eq "one connection per child: the broker runs on the task's connection" "1|0" \
    "$(psql_db -c "SELECT count(*) FILTER (WHERE application_name LIKE 'celeriac child%'),
                          count(*) FILTER (WHERE application_name LIKE 'celeriac broker%')
                   FROM pg_stat_activity")"
# A poison task: each death rolls its write and its lock back, leaving the
# row as it was; the slot's next process claims it to count the death.
crash_id=$(sqlc send txn.crash --args '[0]')
out=$(sqlc wait "$crash_id" --timeout 40)
expect_eq "a transactional task that kills its process each run: WorkerLostError" \
    "FAILURE WorkerLostError" "$(jget state <<<"$out") $(jget result <<<"$out" | cut -d: -f1)" \
    "$(worker_log_tail 8)"
expect_eq "... after 1 + 3 runs (--max-worker-lost-requeues 3), none of their writes applied" \
    "3|0|0" "$(grep -c "txn.crash\[$crash_id\]: its process died (signal 9); requeued" \
                 "$WORKER_LOG")|$(ledger "task_id = '$crash_id'")" "$(worker_log_tail 8)"
expect_eq "... and its message acked" 0 "$(psql_db -c "SELECT count(*) FROM kombu_message")"
stop_worker

# ---- elsewhere the flag means late ack, and the log says so --------------------------------------
start_worker -A "$TXN_LIB" -b "$REDIS_URL" --result-backend "$REDIS_URL" --db "$PG_URL" \
    -n txn2@localhost -c 1
wait_children 1 20
if grep -q "task txn.record (and any other transactional task) runs as an ordinary late-ack" \
    "$WORKER_LOG"; then
    ok "a Redis broker: one warning that transactional tasks run as late-ack tasks"
else
    not_ok "a Redis broker: one warning that transactional tasks run as late-ack tasks" \
        "$(worker_log_tail 6)"
fi
stop_worker

# ---- the crash test (the back-to-back storm: test_sql_transactional_storm.sh) -----------------
psql_db -c "DELETE FROM ledger" >/dev/null
storm txn.record 0.003 0.07
expect_eq "crash test: $N transactional tasks under $KILLS SIGKILLs all SUCCESS" "SUCCESS=$N" \
    "$(states <<<"$OUT")"
expect_eq "crash test: every transactional task's write applied exactly once" "$N|$N" \
    "$(ledger true)" \
    "$(psql_db -c "SELECT task_id, count(*) FROM ledger GROUP BY 1 HAVING count(*) > 1 LIMIT 5")"
if ((KILLS >= 5)); then ok "crash test: $KILLS children killed"; else not_ok "crash test: at least 5 children killed" "$KILLS"; fi
expect_eq "crash test: no message left in kombu_message" 0 \
    "$(psql_db -c "SELECT count(*) FROM kombu_message")"
psql_db -c "DELETE FROM ledger" >/dev/null

storm late.record 0.003 0.07
dups=$(psql_db -c "SELECT count(*) - count(DISTINCT task_id) FROM ledger")
expect_eq "contrast: $N late-ack tasks under $KILLS SIGKILLs all SUCCESS" "SUCCESS=$N" \
    "$(states <<<"$OUT")"
if ((dups > 0)); then
    ok "contrast: without the shared commit the same storm wrote $dups duplicate row(s)"
else
    not_ok "contrast: without the shared commit the same storm writes duplicates" \
        "0 duplicates under $KILLS kills"
fi
check_worker_logs_clean
tap_done
