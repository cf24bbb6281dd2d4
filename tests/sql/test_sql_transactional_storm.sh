#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_sql_transactional_storm.sh (issue 12, point 5): the crash test of
# test_sql_transactional.sh with transactional tasks back to back, a child
# SIGKILLed every 0.03 s and PostgreSQL restarted under it. Its own file, so
# it has its own time budget under the sanitizers, where children start slowly.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/txn_lib.sh"

# Back to back (no sleep in the task): most of a child's time is now the
# gap between two tasks, where each ack has already locked the next row in
# its round trip; a death there, or the server's restart, must hand that row
# back untouched.
# The restart comes once a tenth of the writes are in: tasks run then, on a
# quick host and under the sanitizers alike.
N=${TXN_STORM_TASKS:-3000}
storm txn.record 0 0.03 $((N / 10))
expect_eq "crash test, back to back, PostgreSQL restarted: $N transactional tasks under $KILLS SIGKILLs all SUCCESS" \
    "SUCCESS=$N" "$(states <<<"$OUT")"
expect_eq "crash test, back to back: every write applied exactly once" "$N|$N" \
    "$(ledger true)" \
    "$(psql_db -c "SELECT task_id, count(*) FROM ledger GROUP BY 1 HAVING count(*) > 1 LIMIT 5")"
expect_eq "crash test, back to back: no message left in kombu_message" 0 \
    "$(psql_db -c "SELECT count(*) FROM kombu_message")"
if ((LEFT_AT_RESTART > 0)) && grep -q "terminating connection due to administrator command" "$WORKER_LOG"; then
    ok "crash test, back to back: the restart came while tasks ran ($LEFT_AT_RESTART left; their connections were cut)"
else
    not_ok "crash test, back to back: the restart came while tasks ran (their connections were cut)" \
        "messages left at the restart: $LEFT_AT_RESTART" "$(worker_log_tail 8)"
fi
check_worker_logs_clean
tap_done
