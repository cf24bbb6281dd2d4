#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_metrics.sh: --metrics ADDR:PORT (issue 13, point 3). A worker with two
# children on Redis and PostgreSQL serves /metrics from its metrics process;
# scraped during and after a run of successes, failures, a retry and an
# expired (revoked) task, the counts equal what was sent, the exposition
# parses as promtool would, every child's database connection is up. Killing
# the metrics process: it is replaced, the worker unharmed. Bad input: the
# port taken by another listener: one clear line naming the address, the
# worker serves tasks, the metrics process retries with backoff (no spin, no
# line per attempt) and serves once the port is free.
. "$(dirname "$0")/../integration/services.sh"

start_redis
start_pg
seed_books_pg

MPORT=$(free_port)
M() { "$PY" "$TESTS_DIR/ops/prom.py" "http://127.0.0.1:$MPORT/metrics" "$@"; }
metrics_pid() { ps -o pid=,comm= --ppid "$WORKER_PID" | awk '$2 ~ /^celeriac:metri/ {print $1}'; }
# value METRIC LABEL=VALUE...: one number from the current scrape
value() { M get "$@" 2>/dev/null || echo "scrape failed"; }

start_worker -c 2 -b "$REDIS_URL" --result-backend "$REDIS_URL" --db "$PG_URL" \
    -n met@localhost --metrics "127.0.0.1:$MPORT"
wait_children 2 || not_ok "worker started 2 children" "$(worker_log_tail)"
children_up() { [[ $(value celeriac_db_connection_up) == 2 ]]; }
if wait_for 20 children_up; then
    ok "every child reports db_connection_up 1"
else
    not_ok "every child reports db_connection_up 1" "$(M get celeriac_db_connection_up 2>&1)" \
        "$(worker_log_tail)"
fi
check "the exposition parses (HELP and TYPE once per family, samples well formed)" M check
expect_eq "celery_worker_up is 1" 1 "$(value celery_worker_up hostname=met@localhost)"
expect_eq "404 for another path" 404 \
    "$("$PY" "$TESTS_DIR/ops/prom.py" "http://127.0.0.1:$MPORT/other" status)"

# ---- during a run: two long tasks keep both children busy -------------------
client send tasks.sleep --args '[1.5]' --count 2 --timeout 20 >"$TEST_TMP/sleep.out" &
sleepers=$!
busy() { [[ $(value celery_worker_tasks_active) == 2 ]]; }
if wait_for 10 busy; then ok "scraped during the run: 2 tasks active"; else
    not_ok "scraped during the run: 2 tasks active" "$(M get celery_worker_tasks_active 2>&1)"; fi
expect_eq "during the run: started, not yet succeeded" "2 0" \
    "$(value celery_task_started_total name=tasks.sleep) $(value celery_task_succeeded_total name=tasks.sleep)"
check "the exposition parses during the run" M check

# ---- the rest of the run ------------------------------------------------------
N_ADD=20 N_FAIL=2 N_BOOKS=5
client send tasks.add --args '[2, 3]' --count $N_ADD --timeout 20 >"$TEST_TMP/add.out"
client send tasks.fail --args '["boom"]' --count $N_FAIL --timeout 20 >"$TEST_TMP/fail.out"
client send tasks.flaky --args '[1]' --timeout 20 >"$TEST_TMP/flaky.out"
client send books.get_book_info --each '[[1],[2],[3],[4],[5]]' --timeout 20 >"$TEST_TMP/books.out"
# An expired task is discarded as revoked (REVOKED stored, task-revoked sent).
"$PY" - <<'PY' >"$TEST_TMP/expired.out" 2>&1
import client
app = client.make_app()
r = app.send_task("tasks.echo", args=["late"], expires=-60)
try:
    r.get(timeout=20)
    print("ran")
except Exception as exc:
    print(type(exc).__name__)
PY
# A task killed by its hard time limit: failed, counted by the child that
# replaces its process (which stores TimeLimitExceeded).
"$PY" - <<'PY' >"$TEST_TMP/limited.out" 2>&1
import client
app = client.make_app()
r = app.send_task("tasks.sleep", args=[5], time_limit=1)
try:
    r.get(timeout=20)
    print("ran")
except Exception as exc:
    print(type(exc).__name__)
PY
wait "$sleepers"
expect_eq "the client saw every outcome" "20 2 1 5 2 TaskRevokedError TimeLimitExceeded" \
    "$(grep -c '"value": 5' "$TEST_TMP/add.out") $(grep -c '"raised": "ValueError"' "$TEST_TMP/fail.out") \
$(grep -c '"value": 1' "$TEST_TMP/flaky.out") $(grep -c '"ok": true' "$TEST_TMP/books.out") \
$(grep -c '"ok": true' "$TEST_TMP/sleep.out") $(cat "$TEST_TMP/expired.out") $(cat "$TEST_TMP/limited.out")"

# messages: 20 add + 2 fail + 2 flaky (the retry is a new message) + 5 books + 3 sleep
# (one killed by its time limit) + 1 expired
expect_eq "received = every message sent (retry included)" 33 "$(value celery_task_received_total)"
expect_eq "received per task" "20 2 2 5 3 1" \
    "$(for t in tasks.add tasks.fail tasks.flaky books.get_book_info tasks.sleep tasks.echo; do
        printf '%s ' "$(value celery_task_received_total name=$t)"; done | sed 's/ $//')"
expect_eq "succeeded per task (add flaky books sleep)" "20 1 5 2" \
    "$(for t in tasks.add tasks.flaky books.get_book_info tasks.sleep; do
        printf '%s ' "$(value celery_task_succeeded_total name=$t)"; done | sed 's/ $//')"
expect_eq "succeeded in all" 28 "$(value celery_task_succeeded_total)"
expect_eq "failed = tasks.fail sent and the task killed by its time limit" "2 1 3" \
    "$(value celery_task_failed_total name=tasks.fail) $(value celery_task_failed_total name=tasks.sleep) $(value celery_task_failed_total)"
expect_eq "retried = the one retry" "1 1" \
    "$(value celery_task_retried_total name=tasks.flaky) $(value celery_task_retried_total)"
expect_eq "revoked = the expired task" "1 1" \
    "$(value celery_task_revoked_total name=tasks.echo) $(value celery_task_revoked_total)"
expect_eq "started = succeeded + failed + retried" 32 "$(value celery_task_started_total)"
expect_eq "runtime histogram _count = succeeded + failed" 30 \
    "$(value celery_task_runtime_seconds_count)"
expect_eq "tasks.sleep's runtimes fall in the 2.5 s bucket, not the 1.0 s one" "2 0" \
    "$(value celery_task_runtime_seconds_bucket name=tasks.sleep le=2.5) $(value celery_task_runtime_seconds_bucket name=tasks.sleep le=1.0)"
expect_eq "no task active after the run" 0 "$(value celery_worker_tasks_active)"
check "the exposition parses after the run" M check
# (the child killed by the time limit had its statement cancelled first; its
# replacement connected anew)
expect_eq "connect attempts: one per child and the replacement's, no reconnect, one cancel" "3 0 1" \
    "$(value celeriac_db_connect_attempts_total) $(value celeriac_db_reconnects_total) $(value celeriac_db_statements_cancelled_total)"
rss=$(value celeriac_child_rss_bytes child=0)
if [[ $rss =~ ^[0-9]+$ ]] && ((rss > 1000000)); then ok "child 0 reports its RSS ($rss bytes)"; else
    not_ok "child 0 reports its RSS" "got: $rss"; fi
diag "sample scrape:" "$(curl -s "http://127.0.0.1:$MPORT/metrics" | grep -E '^(celery_task_(received|succeeded)_total\{name="tasks.add"|celery_task_runtime_seconds_(bucket\{name="tasks.sleep".*le="(1.0|2.5)"|count\{name="tasks.sleep")|celery_worker|celeriac_db_connection_up|celeriac_db_connection_age|celeriac_child_restarts)')"

# ---- the metrics process killed: replaced, the worker unharmed ----------------
restarts=$(value celeriac_child_restarts_total)
old=$(metrics_pid)
kill -KILL "$old"
replaced() { local p; p=$(metrics_pid); [[ -n $p && $p != "$old" ]] && M check; }
if wait_for 15 replaced; then ok "a killed metrics process is replaced and serves again"; else
    not_ok "a killed metrics process is replaced and serves again" "$(worker_log_tail)"; fi
expect_eq "the counts survive the replacement" 33 "$(value celery_task_received_total)"
expect_eq "the worker still runs tasks" 1 \
    "$(client send tasks.add --args '[4, 5]' --timeout 20 | grep -c '"value": 9')"
expect_eq "no child was restarted (1 before: the time limit's)" "1 $restarts" \
    "$(value celeriac_child_restarts_total) $restarts"
grep -q "metrics process (pid $old) killed by signal 9; replacing it" "$WORKER_LOG" &&
    ok "the master logged the metrics process's death" ||
    not_ok "the master logged the metrics process's death" "$(worker_log_tail)"
mp=$(metrics_pid)
stop_worker TERM 20
gone=yes
kill -0 "$mp" 2>/dev/null && gone=no
expect_eq "warm shutdown with --metrics: exit 0, the metrics process gone" "0 yes" "$WORKER_RC $gone"

# ---- bad input: the port is taken ---------------------------------------------
TAKEN=$(free_port)
"$PY" -c 'import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(1); print("listening", flush=True); time.sleep(120)' \
    "$TAKEN" >"$TEST_TMP/squatter.out" 2>&1 &
SQUATTER=$!
_svc_record_pid "$SQUATTER" python3
wait_for 5 grep -q listening "$TEST_TMP/squatter.out"
MPORT=$TAKEN
start_worker -c 1 -b "$REDIS_URL" --result-backend "$REDIS_URL" --db "$PG_URL" \
    -n met2@localhost --metrics "127.0.0.1:$TAKEN"
wait_children 1 || not_ok "the second worker started its child" "$(worker_log_tail)"
expect_eq "with the metrics port taken, the worker runs tasks" 1 \
    "$(client send tasks.add --args '[1, 1]' --timeout 20 | grep -c '"value": 2')"
sleep 3.5 # attempts at about 0, 1, 3 s
lines=$(grep -c "serving metrics on '127.0.0.1:$TAKEN' failed: bind: Address already in use" "$WORKER_LOG")
expect_eq "one clear line naming the address, not one per attempt" 1 "$lines" "$(worker_log_tail)"
mp=$(metrics_pid)
ticks=$(awk '{print $14 + $15}' "/proc/$mp/stat" 2>/dev/null || echo gone)
if [[ $ticks =~ ^[0-9]+$ ]] && ((ticks < 20)); then
    ok "the metrics process retries without spinning ($ticks CPU ticks)"
else
    not_ok "the metrics process retries without spinning" "ticks: $ticks"
fi
kill "$SQUATTER"
wait "$SQUATTER" 2>/dev/null
if wait_for 20 M check; then ok "once the port is free, metrics are served"; else
    not_ok "once the port is free, metrics are served" "$(grep MetricsProcess "$WORKER_LOG")" \
        "sockets on the port: $(ss -tanH "( sport = :$TAKEN or dport = :$TAKEN )" 2>&1)"
fi
grep -q "serving metrics on '127.0.0.1:$TAKEN' works again after" "$WORKER_LOG" &&
    ok "its recovery is logged once" || not_ok "its recovery is logged once" "$(worker_log_tail)"
expect_eq "the metrics process was never replaced" "$mp" "$(metrics_pid)"
stop_worker TERM 20
expect_eq "warm shutdown: exit 0" 0 "$WORKER_RC"
check_worker_logs_clean
tap_done
