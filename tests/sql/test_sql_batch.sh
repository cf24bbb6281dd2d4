#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_sql_batch.sh (issue 12): transactional tasks in batches (--sql-batch):
# one transaction takes up to N rows in one lock, runs their tasks one after
# the other (each behind its savepoint), holds their results and commits
# once, right after storing the results. What must hold:
#   - it batches: far fewer commits than tasks (and one per task with
#     --sql-batch 1);
#   - a result is never readable long before its task's write: a fast task
#     whose batch waits for a slow neighbour shows its SUCCESS with its write,
#     not a second before it;
#   - no task joins a batch open longer than --sql-batch-ms;
#   - a task that kills its process in a batch uses up only its own requeues
#     (--max-worker-lost-requeues), and its neighbours' writes land once;
#   - an ordinary (early-ack) task in a batch's rows is acked (the batch
#     committed) before it runs: killed, it never runs twice;
#   - an expired message and a soft time limit inside a batch settle that
#     task alone.
# The crash tests of test_sql_transactional*.sh run batched too (the default).
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/txn_lib.sh"

commits() { psql_admin -c "SELECT xact_commit FROM pg_stat_database WHERE datname = 'celeriac'"; }

# ---- it batches ------------------------------------------------------------------------------
# batched_run K: 400 transactional tasks queued before a -c 2 worker with
# --sql-batch K starts; prints "STATES COMMITS" once they are done and the
# worker has stopped (a backend reports its counters as it exits).
batched_run() {
    local ids before out
    psql_db -c "DELETE FROM ledger" >/dev/null
    ids=$(sqlc send txn.record --args '[0]' --count 400)
    before=$(commits)
    start_txn_worker "batch$1" -c 2 --sql-batch "$1"
    # shellcheck disable=SC2086
    out=$(sqlc wait $ids --timeout 60)
    stop_worker
    sleep 0.5
    echo "$(states <<<"$out") $(($(commits) - before))"
}
read -r st16 c16 <<<"$(batched_run 16)"
expect_eq "--sql-batch 16: 400 transactional tasks all SUCCESS" SUCCESS=400 "$st16"
expect_eq "... each write once" "400|400" "$(ledger true)"
if ((c16 < 100)); then ok "... in $c16 commits (a batch commits once)"; else
    not_ok "... in fewer than 100 commits" "$c16 commits"; fi
read -r st1 c1 <<<"$(batched_run 1)"
expect_eq "--sql-batch 1: 400 transactional tasks all SUCCESS" SUCCESS=400 "$st1"
if ((c1 >= 400)); then ok "... in $c1 commits (one per task)"; else
    not_ok "... one commit per task" "$c1 commits"; fi

# first_seen RESULT_ID ROW_ID...: watches Redis and the ledger from now on,
# every 5 ms for up to 30 s, and prints when RESULT_ID's result and then each
# ROW_ID's ledger row were first seen (seconds, -1 = never).
first_seen() {
    PG_URL=$PG_URL REDIS_URL=$REDIS_URL "$PY" - "$@" <<'PY'
import os, sys, time
import psycopg2, redis
result_id, rows = sys.argv[1], sys.argv[2:]
r = redis.Redis.from_url(os.environ["REDIS_URL"])
db = psycopg2.connect(os.environ["PG_URL"])
db.autocommit = True
cur = db.cursor()
t0 = time.monotonic()
seen = {}
while time.monotonic() - t0 < 30 and len(seen) < 1 + len(rows):
    now = time.monotonic() - t0
    if "result" not in seen and r.get("celery-task-meta-" + result_id):
        seen["result"] = now
    cur.execute("SELECT task_id FROM ledger WHERE task_id = ANY(%s)", (rows,))
    for (t,) in cur.fetchall():
        seen.setdefault(t, now)
    time.sleep(0.005)
print(" ".join("%.3f" % seen.get(k, -1) for k in ["result"] + rows))
PY
}

# ---- a result is not readable long before its write ---------------------------------------------
# X's ack locks the next rows: A (fast) and B (1.5 s) share one transaction.
# A's SUCCESS must appear with A's write, at B's commit, not when A ended.
psql_db -c "DELETE FROM ledger" >/dev/null
x=$(sqlc send txn.record --args '[0]')
a=$(sqlc send txn.record --args '[0]')
b=$(sqlc send txn.record --args '[1.5]')
start_txn_worker batch-hold -c 1
watch=$(first_seen "$a" "$a" "$b")
read -r t_result t_arow t_brow <<<"$watch"
out=$(sqlc wait "$x" "$a" "$b" --timeout 20)
expect_eq "a fast and a slow task in one batch: all SUCCESS" SUCCESS=3 "$(states <<<"$out")"
if "$PY" -c "import sys; r, a, b = map(float, sys.argv[1:]); sys.exit(not (r >= 0 and a >= 0 and abs(a - b) < 0.2))" \
    "$t_result" "$t_arow" "$t_brow"; then
    ok "... they share one commit (the fast one's write at ${t_arow} s, the slow one's at ${t_brow} s)"
else
    not_ok "... they share one commit" "result, A's row, B's row first seen at (s): $watch"
fi
if "$PY" -c "import sys; r, a = map(float, sys.argv[1:]); sys.exit(not (a >= 0 and r >= 0 and r > a - 0.3))" \
    "$t_result" "$t_arow"; then
    ok "... the fast one's SUCCESS is not readable before its batch commits (at ${t_result} s)"
else
    not_ok "... the fast one's SUCCESS is not readable before its batch commits" \
        "result, A's row, B's row first seen at (s): $watch"
fi
stop_worker

# ---- no task joins a batch older than --sql-batch-ms --------------------------------------------
# age_run NAME [WORKER ARGS...]: X, then F (fast) and S1, S2, S3 (0.4 s each),
# for a -c 1 worker; X's ack locks the other four into one hand. Sets
# AGE_STATES (their states) and AGE_WATCH (first_seen of F's result, F, S1,
# S2 and S3).
age_run() {
    local name=$1 x f s1 s2 s3
    shift
    psql_db -c "DELETE FROM ledger" >/dev/null
    x=$(sqlc send txn.record --args '[0]')
    f=$(sqlc send txn.record --args '[0]')
    s1=$(sqlc send txn.record --args '[0.4]')
    s2=$(sqlc send txn.record --args '[0.4]')
    s3=$(sqlc send txn.record --args '[0.4]')
    start_txn_worker "$name" -c 1 "$@"
    AGE_WATCH=$(first_seen "$f" "$f" "$s1" "$s2" "$s3")
    AGE_STATES=$(sqlc wait "$x" "$f" "$s1" "$s2" "$s3" --timeout 20 | states)
    stop_worker
}
# Unbounded, the four would commit together when S3 ends (1.2 s after F).
# With the bound (50 ms by default) S1's ack finds its batch too old and
# commits F and S1; S2 and S3 then commit one by one.
age_run batch-age
read -r t_result t_f t_s1 t_s2 t_s3 <<<"$AGE_WATCH"
expect_eq "a fast task before three slow ones: all SUCCESS" SUCCESS=5 "$AGE_STATES"
if "$PY" -c "import sys; r, f, s1, s2, s3 = map(float, sys.argv[1:]); sys.exit(not (min(r, f, s1, s2, s3) >= 0 and abs(f - s1) < 0.2 and s2 - s1 > 0.25 and s3 - s2 > 0.25 and r > f - 0.3))" \
    "$t_result" "$t_f" "$t_s1" "$t_s2" "$t_s3"; then
    ok "... the batch ends at the first ack past --sql-batch-ms (F with S1 at ${t_s1} s, S2 at ${t_s2} s, S3 at ${t_s3} s)"
else
    not_ok "... the batch ends at the first ack past --sql-batch-ms" \
        "F's result, F, S1, S2, S3 first seen at (s): $AGE_WATCH"
fi
# ... and with a bound longer than the batch, the four commit together.
age_run batch-age-long --sql-batch-ms 5000
read -r t_result t_f t_s1 t_s2 t_s3 <<<"$AGE_WATCH"
expect_eq "--sql-batch-ms 5000: all SUCCESS" SUCCESS=5 "$AGE_STATES"
if "$PY" -c "import sys; v = list(map(float, sys.argv[1:])); sys.exit(not (min(v) >= 0 and max(v[1:]) - min(v[1:]) < 0.2))" \
    "$t_result" "$t_f" "$t_s1" "$t_s2" "$t_s3"; then
    ok "... the four commit together (at ${t_f} s)"
else
    not_ok "... the four commit together" "F's result, F, S1, S2, S3 first seen at (s): $AGE_WATCH"
fi

# ---- a task that kills its process, in a batch -------------------------------------------------
psql_db -c "DELETE FROM ledger" >/dev/null
x=$(sqlc send txn.record --args '[0]')
n1=$(sqlc send txn.record --args '[0]')
k=$(sqlc send txn.crash --args '[0]')
n2=$(sqlc send txn.record --args '[0]')
n3=$(sqlc send txn.record --args '[0]')
start_txn_worker batch-crash -c 1 --max-worker-lost-requeues 1
out=$(sqlc wait "$x" "$n1" "$n2" "$n3" --timeout 40)
expect_eq "a batch with a task that kills its process: the others all SUCCESS" SUCCESS=4 \
    "$(states <<<"$out")" "$(worker_log_tail 8)"
expect_eq "... each of their writes once" "4|4" \
    "$(ledger "task_id IN ('$x', '$n1', '$n2', '$n3')")"
out=$(sqlc wait "$k" --timeout 40)
expect_eq "... the killer alone fails with WorkerLostError (its own requeues used up)" \
    "FAILURE WorkerLostError" "$(jget state <<<"$out") $(jget result <<<"$out" | cut -d: -f1)" \
    "$(worker_log_tail 8)"
expect_eq "... after 1 + 1 runs, none of its writes applied" "1|0|0" \
    "$(grep -c "txn.crash\[$k\]: its process died (signal 9); requeued" "$WORKER_LOG")|$(ledger "task_id = '$k'")"
expect_eq "... no message left" 0 "$(psql_db -c "SELECT count(*) FROM kombu_message")"
stop_worker

# ---- an ordinary task among a batch's rows ------------------------------------------------------
psql_db -c "DELETE FROM ledger" >/dev/null
x=$(sqlc send txn.record --args '[0]')
t1=$(sqlc send txn.record --args '[0]')
p=$(sqlc send plain.crash --args '[0]')
t2=$(sqlc send txn.record --args '[0]')
start_txn_worker batch-plain -c 1
out=$(sqlc wait "$x" "$t1" "$t2" --timeout 40)
expect_eq "an early-ack task that kills its process among a batch's rows: the others SUCCESS" \
    SUCCESS=3 "$(states <<<"$out")" "$(worker_log_tail 8)"
wait_rows "SELECT count(*) FROM kombu_message" 0 10
sleep 1 # time for a rerun that must not come
expect_eq "... the early-ack task ran once (acked, the batch before it committed, before it ran)" \
    "1|1" "$(ledger "task_id = '$p'")"
expect_eq "... the transactional ones' writes once each" "3|3" \
    "$(ledger "task_id IN ('$x', '$t1', '$t2')")"
stop_worker

# ---- an expired message and a soft time limit inside a batch ------------------------------------
psql_db -c "DELETE FROM ledger" >/dev/null
x=$(sqlc send txn.record --args '[0]')
a=$(sqlc send txn.record --args '[0]')
ex=$(sqlc send txn.record --args '[0]' --expires 0.3)
slow=$(sqlc send txn.record --args '[5]')
b=$(sqlc send txn.record --args '[0]')
sleep 0.5
start_txn_worker batch-limits -c 1 --soft-time-limit 1
out=$(sqlc wait "$x" "$a" "$ex" "$slow" "$b" --timeout 40)
expect_eq "expired and over its soft limit inside a batch: the states" \
    "SUCCESS SUCCESS REVOKED FAILURE SUCCESS" \
    "$(while read -r l; do jget state <<<"$l"; done <<<"$out" | tr '\n' ' ' | sed 's/ $//')" "$out"
expect_eq "... the expired and the cancelled tasks wrote nothing, the others once" "3|3|0" \
    "$(ledger "task_id IN ('$x', '$a', '$b')" | tr -d '\n')|$(ledger "task_id IN ('$ex', '$slow')" | cut -d'|' -f1)"
expect_eq "... no message left" 0 "$(psql_db -c "SELECT count(*) FROM kombu_message")"
stop_worker

check_worker_logs_clean
tap_done
