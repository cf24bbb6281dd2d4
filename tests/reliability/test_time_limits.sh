#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_time_limits.sh (issue 3, point 3): soft and hard time limits, from the
# flags and from the message's `timelimit` header (Python send_task(...,
# time_limit=, soft_time_limit=)). Soft: the task sees it (SoftTimeLimitExceeded),
# its statement is cancelled and its connection stays usable. Hard: the running
# statement is cancelled on the server (no pg_sleep left in pg_stat_activity),
# FAILURE TimeLimitExceeded is stored, and the replacement child opens its own
# new connection. A child that cannot be interrupted is killed by the master.
. "$(dirname "$0")/lib.sh"

start_redis
start_pg
seed_books_pg || { not_ok "seed the books table"; tap_done; }
build_rel_lib || tap_done

elapsed() { "$PY" -c "import sys; print(round($(date +%s.%N) - $1, 1))"; }
in_range() { "$PY" -c "import sys; sys.exit(0 if $2 <= $1 <= $3 else 1)"; } # x lo hi

# pg_sleep statements still running for celeriac backends (killed or not).
lingering_sleeps() {
    psql_admin -c "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'celeriac%'
                   AND state = 'active' AND query LIKE '%pg_sleep%'"
}
count_backends() {
    psql_admin -c "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'celeriac%'"
}

# hold_books_lock SECONDS: books is locked ACCESS EXCLUSIVE for SECONDS, so
# get_book_info blocks inside its statement meanwhile.
hold_books_lock() {
    psql_db -c "BEGIN; LOCK TABLE books IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep($1); COMMIT;" \
        >/dev/null 2>&1 &
    LOCK_PID=$!
    _lock_held() {
        [[ $(psql_db -c "SELECT count(*) FROM pg_locks WHERE relation = 'books'::regclass
                         AND mode = 'AccessExclusiveLock' AND granted") == 1 ]]
    }
    wait_for 10 _lock_held
}

# ---- the timelimit header (books: tasks.sleep, get_book_info) ----------------------
start_worker -c 1 -b "$REDIS_URL" --result-backend "$REDIS_URL" --db "$PG_URL" -n hdr@localhost
wait_children 1 20 || not_ok "worker started" "$(worker_log_tail)"
kid=$(only_child)
t0=$(date +%s.%N)
id=$(send tasks.sleep '[5]' --soft-time-limit 1 --time-limit 10)
m=$(meta_of "$id" 15)
took=$(elapsed "$t0")
expect_eq "header soft_time_limit=1: tasks.sleep(5) fails with SoftTimeLimitExceeded" \
    "FAILURE SoftTimeLimitExceeded(billiard.exceptions)" "$(summary <<<"$m")" "$m" "$(worker_log_tail 10)"
if in_range "$took" 0.8 3.5; then
    ok "... after about 1 s (${took} s), not 5"
else
    not_ok "... after about 1 s" "took ${took} s"
fi
expect_eq "a soft limit does not replace the child" "$kid" "$(only_child)"

backend=$(backend_of "$kid")
hold_books_lock 6 || diag "could not take the table lock"
t0=$(date +%s.%N)
id=$(send books.get_book_info '[7]' --soft-time-limit 1)
m=$(meta_of "$id" 15)
took=$(elapsed "$t0")
expect_eq "header soft limit on get_book_info blocked in its statement: SoftTimeLimitExceeded" \
    "FAILURE SoftTimeLimitExceeded(billiard.exceptions)" "$(summary <<<"$m")" "$m" "$(worker_log_tail 10)"
if in_range "$took" 0.8 4; then
    ok "... the statement was cancelled at the soft limit (${took} s, lock held 6 s)"
else
    not_ok "... the statement was cancelled at the soft limit" "took ${took} s"
fi
wait "$LOCK_PID" 2>/dev/null
id=$(send books.get_book_info '[8]')
m=$(meta_of "$id" 15)
expect_eq "the same child's next get_book_info succeeds (connection clean after the cancel)" \
    'SUCCESS "Book 8"' "$(summary <<<"$m")" "$(worker_log_tail 10)"
expect_eq "... on the same child and the same backend" "$kid $backend" "$(only_child) $(backend_of "$kid")" \
    "$(celeriac_backends)"

t0=$(date +%s.%N)
id=$(send tasks.sleep '[10]' --time-limit 2)
m=$(meta_of "$id" 15)
took=$(elapsed "$t0")
expect_eq "header time_limit=2: tasks.sleep(10) -> FAILURE TimeLimitExceeded" \
    "FAILURE TimeLimitExceeded(billiard.exceptions)" "$(summary <<<"$m")" "$m" "$(worker_log_tail 10)"
expect_eq "TimeLimitExceeded carries the limit" "2" \
    "$("$PY" -c 'import json,sys; print("%g" % json.loads(sys.argv[1])[0])' "$(jget result.exc_message <<<"$m")" 2>&1)"
if in_range "$took" 1.8 5; then ok "... after about 2 s (${took} s)"; else not_ok "... after about 2 s" "took ${took} s"; fi
if wait_replaced "$kid" 1 10; then
    new=$(only_child)
    ok "the child that hit the hard limit was replaced ($kid -> $new)"
    _new_backend() { [[ -n $(backend_of "$new") ]]; }
    wait_for 10 _new_backend
    nb=$(backend_of "$new")
    if [[ -n $nb && $nb != "$backend" ]]; then
        ok "the replacement opened its own connection (backend $backend -> $nb in pg_stat_activity)"
    else
        not_ok "the replacement opened its own connection" "old $backend, new '$nb'" "$(celeriac_backends)"
    fi
    _one_backend() { [[ $(count_backends) == 1 ]]; }
    if wait_for 10 _one_backend; then
        ok "the killed child's backend is gone (one celeriac backend)"
    else
        not_ok "the killed child's backend is gone" "$(celeriac_backends)"
    fi
else
    not_ok "the child that hit the hard limit was replaced" "children: $(worker_children)" "$(worker_log_tail 10)"
fi
if log_has "hard time limit \(2s\) exceeded"; then
    ok "the hard limit is logged"
else
    not_ok "the hard limit is logged" "$(worker_log_tail 10)"
fi
id=$(send books.get_book_info '[9]')
expect_eq "tasks run after a hard limit" 'SUCCESS "Book 9"' "$(meta_of "$id" 15 | summary)"
stop_worker TERM 20
expect_eq "worker exits 0" 0 "$WORKER_RC" "$(worker_log_tail)"

# ---- flags: --time-limit cancels the statement on the server -------------------------
start_worker -A "$REL_LIB" -c 1 -b "$REDIS_URL" --result-backend "$REDIS_URL" --db "$PG_URL" \
    --time-limit 2 -n hard@localhost
wait_children 1 20
_backend_up() { [[ -n $(backend_of "$(only_child)") ]]; }
wait_for 10 _backend_up
kid=$(only_child)
backend=$(backend_of "$kid")
t0=$(date +%s.%N)
id=$(send rel.pg_sleep '[30]')
_sleeping() { [[ $(lingering_sleeps) == 1 ]]; }
if wait_for 5 _sleeping; then
    ok "setup: SELECT pg_sleep(30) is running on the server"
else
    not_ok "setup: SELECT pg_sleep(30) is running on the server" "$(celeriac_backends)"
fi
m=$(meta_of "$id" 15)
expect_eq "--time-limit 2 on SELECT pg_sleep(30): FAILURE TimeLimitExceeded" \
    "FAILURE TimeLimitExceeded(billiard.exceptions)" "$(summary <<<"$m")" "$m" "$(worker_log_tail 10)"
sleep 0.5
left=$(lingering_sleeps)
took=$(elapsed "$t0")
expect_eq "the hard limit cancelled pg_sleep on the server: none running ${took} s after the send" \
    0 "$left" "$(celeriac_backends)"
_old_gone() { [[ -z $(psql_admin -c "SELECT 1 FROM pg_stat_activity WHERE pid = $backend") ]]; }
if wait_for 5 _old_gone; then
    ok "the killed child's backend $backend is gone"
else
    not_ok "the killed child's backend $backend is gone" "$(celeriac_backends)"
fi
wait_replaced "$kid" 1 10
id=$(send rel.pg)
m=$(meta_of "$id" 15)
nb=$(jget result.backend <<<"$m")
np=$(jget result.pid <<<"$m")
if [[ $np != "$kid" && $nb != "$backend" && $nb =~ ^[0-9]+$ ]]; then
    ok "the replacement (pid $np) runs tasks on its own new backend ($nb)"
else
    not_ok "the replacement runs tasks on its own new backend" "pid $np backend $nb; old $kid $backend" "$m"
fi

# A task that blocks the child's timer: the master kills it 2 s after the limit.
kid=$(only_child)
t0=$(date +%s.%N)
id=$(send rel.wedge '[30]')
m=$(meta_of "$id" 15)
took=$(elapsed "$t0")
expect_eq "a child that cannot be interrupted is killed by the master: TimeLimitExceeded" \
    "FAILURE TimeLimitExceeded(billiard.exceptions)" "$(summary <<<"$m")" "$m" "$(worker_log_tail 10)"
if in_range "$took" 3.5 7; then ok "... at the limit plus the master's grace (${took} s)"; else not_ok "... at the limit plus the master's grace" "took ${took} s"; fi
if log_has "ignored its hard time limit; killing it"; then
    ok "the master logs killing it"
else
    not_ok "the master logs killing it" "$(worker_log_tail 10)"
fi
stop_worker TERM 20

# ---- flags: --soft-time-limit below --time-limit ---------------------------------------
start_worker -A "$REL_LIB" -c 1 -b "$REDIS_URL" --result-backend "$REDIS_URL" --db "$PG_URL" \
    --soft-time-limit 1 --time-limit 4 -n soft@localhost
wait_children 1 20
wait_for 10 _backend_up
kid=$(only_child)
backend=$(backend_of "$kid")
t0=$(date +%s.%N)
id=$(send rel.pg_sleep '[30]')
m=$(meta_of "$id" 15)
took=$(elapsed "$t0")
expect_eq "--soft-time-limit 1 on SELECT pg_sleep(30): SoftTimeLimitExceeded" \
    "FAILURE SoftTimeLimitExceeded(billiard.exceptions)" "$(summary <<<"$m")" "$m" "$(worker_log_tail 10)"
if in_range "$took" 0.8 3.5; then ok "... at the soft limit (${took} s)"; else not_ok "... at the soft limit" "took ${took} s"; fi
expect_eq "after the soft limit no pg_sleep runs on the server" 0 "$(lingering_sleeps)" "$(celeriac_backends)"
id=$(send rel.txn)
m=$(meta_of "$id" 15)
expect_eq "the next task on that child finds its connection idle (no transaction), same backend" \
    "$kid $backend 0" "$(jget result.pid <<<"$m") $(jget result.backend <<<"$m") $(jget result.txn <<<"$m")" \
    "$m" "$(worker_log_tail 10)"
t0=$(date +%s.%N)
id=$(send rel.pid '[10]')
m=$(meta_of "$id" 15)
took=$(elapsed "$t0")
expect_eq "--soft-time-limit: a task that is not in a statement sees the limit too" \
    "FAILURE SoftTimeLimitExceeded(billiard.exceptions)" "$(summary <<<"$m")" "$m"
expect_eq "no soft limit replaced the child" "$kid" "$(only_child)"
stop_worker TERM 20
expect_eq "worker exits 0" 0 "$WORKER_RC" "$(worker_log_tail)"

check_worker_logs_clean
tap_done
