#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_between_tasks.sh (issue 3, point 4): between tasks a child leaves its
# connection clean (a transaction a task left open is rolled back and
# logged), recycles connections by task count and by age, and whole children
# are retired by --max-tasks-per-child and --max-memory-per-child.
. "$(dirname "$0")/lib.sh"

start_redis
start_pg
build_rel_lib || tap_done
psql_db -c "CREATE TABLE rel_marks (mark text)" >/dev/null
W=(-A "$REL_LIB" -c 1 -b "$REDIS_URL" --result-backend "$REDIS_URL" --db "$PG_URL")

# results IDS...: "pid:backend" of each task's result, in order.
results() {
    rel wait "$@" --timeout 30 | "$PY" -c '
import json, sys
out = []
for line in sys.stdin:
    m = json.loads(line)
    if not m or m.get("status") != "SUCCESS":
        out.append("fail:%s" % (m and m.get("status")))
    else:
        out.append("%s:%s" % (m["result"]["pid"], m["result"].get("backend")))
print(" ".join(out))'
}
# runs FIELD <<<"a:b a:b ...": run lengths of field 1 (pid) or 2 (backend), e.g. "5 5 5 5"
runs() {
    "$PY" -c '
import sys
f = int(sys.argv[1]) - 1
vals = [w.split(":")[f] for w in sys.stdin.read().split()]
out, prev, n = [], None, 0
for v in vals:
    if v == prev:
        n += 1
    else:
        if prev is not None:
            out.append(n)
        prev, n = v, 1
if prev is not None:
    out.append(n)
print(" ".join(map(str, out)))' "$1"
}
state_of() { psql_admin -c "SELECT state FROM pg_stat_activity WHERE pid = $1"; }

# ---- a transaction left open is rolled back --------------------------------------------
start_worker "${W[@]}" -n txn@localhost
wait_children 1 20 || not_ok "worker started" "$(worker_log_tail)"
id=$(send rel.leave_open '["m1"]')
m=$(meta_of "$id" 15)
b=$(jget result.backend <<<"$m")
expect_eq "setup: rel.leave_open ran (BEGIN; INSERT; no COMMIT)" SUCCESS "$(jget status <<<"$m")" "$m"
_idle() { [[ $(state_of "$b") == idle ]]; }
if wait_for 5 _idle; then
    ok "within 5 s after the task its backend is 'idle', not 'idle in transaction' (rolled back between tasks)"
else
    not_ok "within 5 s after the task its backend is 'idle', not 'idle in transaction' (rolled back between tasks)" \
        "state 5 s after the task: $(state_of "$b")" \
        "$(worker_log_tail 10)"
fi
locks=$(psql_admin -c "SELECT count(*) FROM pg_locks WHERE pid = $b AND relation IS NOT NULL")
expect_eq "... and holds no lock on rel_marks" 0 "$locks"
id=$(send rel.txn)
m=$(meta_of "$id" 15)
expect_eq "the next task starts outside any transaction, on the same backend" "0 $b" \
    "$(jget result.txn <<<"$m") $(jget result.backend <<<"$m")" "$m"
if log_has "left a transaction open.*rolled back"; then
    ok "the rollback is logged ($(grep -oE 'a task left a transaction open.*' "$WORKER_LOG" | head -1))"
else
    not_ok "the rollback is logged" "$(worker_log_tail 10)"
fi
psql_db -c "INSERT INTO rel_marks VALUES ('committed')" >/dev/null
expect_eq "the open transaction's row never became visible" "committed" \
    "$(psql_db -c "SELECT string_agg(mark, ',') FROM rel_marks")"
stop_worker TERM 20

# ---- --max-tasks-per-child -------------------------------------------------------------
start_worker "${W[@]}" --max-tasks-per-child 3 -n maxtasks@localhost
wait_children 1 20
ids=$(send rel.pg '[]' --count 8 | tr '\n' ' ')
# shellcheck disable=SC2086
r=$(results $ids)
expect_eq "--max-tasks-per-child 3: 8 tasks run by children serving 3, 3, 2" "3 3 2" \
    "$(runs 1 <<<"$r")" "results: $r" "$(worker_log_tail 10)"
expect_eq "... and each child had its own connection" "3 3 2" "$(runs 2 <<<"$r")"
expect_eq "the child logs 'retiring after 3 tasks', the master 'retired; replacing it' (twice each)" \
    "2 2" "$(log_count 'retiring after 3 tasks') $(log_count 'child 0 \(pid [0-9]+\) retired; replacing it')" \
    "$(worker_log_tail 10)"
if ! log_has "keeps dying"; then
    ok "retiring children are not treated as crashes (no respawn backoff)"
else
    not_ok "retiring children are not treated as crashes" "$(grep 'keeps dying' "$WORKER_LOG")"
fi
stop_worker TERM 20

# ---- --max-memory-per-child ------------------------------------------------------------
start_worker "${W[@]}" --max-memory-per-child 60000 -n maxmem@localhost
wait_children 1 20
kid=$(only_child)
id=$(send rel.pid)
m=$(meta_of "$id" 15)
expect_eq "a small task does not retire a child under --max-memory-per-child 60000" "$kid" "$(only_child)"
id=$(send rel.grow '[100]')
m=$(meta_of "$id" 15)
expect_eq "rel.grow(100 MiB) succeeds" SUCCESS "$(jget status <<<"$m")" "$m"
if wait_replaced "$kid" 1 10; then
    ok "--max-memory-per-child: the grown child is retired and replaced ($kid -> $(only_child))"
else
    not_ok "--max-memory-per-child: the grown child is retired and replaced" "$(worker_log_tail 10)"
fi
if log_has "retiring at [0-9]+ KiB resident \(--max-memory-per-child 60000\)"; then
    ok "the retirement is logged ($(grep -oE 'retiring at [0-9]+ KiB resident' "$WORKER_LOG" | head -1))"
else
    not_ok "the retirement is logged" "$(worker_log_tail 10)"
fi
id=$(send rel.pid)
expect_eq "the replacement runs the next task" SUCCESS "$(meta_of "$id" 15 | jget status)"
stop_worker TERM 20

# ---- --db-max-uses ----------------------------------------------------------------------
start_worker "${W[@]}" --db-max-uses 5 -n maxuses@localhost
wait_children 1 20
kid=$(only_child)
ids=$(send rel.pg '[]' --count 20 | tr '\n' ' ')
# shellcheck disable=SC2086
r=$(results $ids)
pids=$(runs 1 <<<"$r")
backends=$(runs 2 <<<"$r")
expect_eq "--db-max-uses 5: all 20 tasks ran in the same child" "20" "$pids" "results: $r"
ok_runs=yes
set -- $backends
n=$#
i=0
for len in $backends; do
    i=$((i + 1))
    if ((len > 5 || (i < n && len < 4))); then ok_runs=no; fi
done
if [[ $ok_runs == yes ]] && ((n >= 4 && n <= 5)); then
    ok "--db-max-uses 5: the connection was replaced every 4-5 tasks (80-100% jitter): runs $backends"
else
    not_ok "--db-max-uses 5: the connection is replaced every 4-5 tasks" "runs per backend: $backends" \
        "results: $r" "$(worker_log_tail 10)"
fi
if log_has "closed after [0-9.]+ s: recycled \(task count\)"; then
    ok "the recycling is logged as 'recycled (task count)'"
else
    not_ok "the recycling is logged as 'recycled (task count)'" "$(worker_log_tail 10)"
fi
if ! log_has "unusable|connection lost|reconnect #"; then
    ok "recycling is not reported as a lost connection"
else
    not_ok "recycling is not reported as a lost connection" "$(grep -E 'unusable|connection lost|reconnect #' "$WORKER_LOG" | head)"
fi
_one() { [[ $(psql_admin -c "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'celeriac%'") == 1 ]]; }
if wait_for 5 _one; then
    ok "old connections are closed: one celeriac backend"
else
    not_ok "old connections are closed: one celeriac backend" "$(celeriac_backends)"
fi
stop_worker TERM 20

# ---- --db-max-age -------------------------------------------------------------------------
start_worker "${W[@]}" --db-max-age 2 -n maxage@localhost
wait_children 1 20
ids=""
t0=$SECONDS
for i in $(seq 1 8); do
    ids+="$(send rel.pg) "
    sleep 0.5
done
# shellcheck disable=SC2086
r=$(results $ids)
span=$((SECONDS - t0))
nb=$(wc -w <<<"$(runs 2 <<<"$r")")
expect_eq "--db-max-age 2: all tasks in the same child" "8" "$(runs 1 <<<"$r")" "results: $r"
if ((nb >= 3 && nb <= span / 1 + 1)); then
    ok "--db-max-age 2: $nb connections over ${span} s of tasks (runs $(runs 2 <<<"$r"))"
else
    not_ok "--db-max-age 2: a new connection every 1.6-2 s over ${span} s of tasks" "runs: $(runs 2 <<<"$r")" \
        "$(worker_log_tail 10)"
fi
if log_has "closed after [0-9.]+ s: recycled \(age\)"; then
    ok "the recycling is logged as 'recycled (age)' ($(grep -oE 'closed after [0-9.]+ s: recycled \(age\)' "$WORKER_LOG" | head -1))"
else
    not_ok "the recycling is logged as 'recycled (age)'" "$(worker_log_tail 10)"
fi
stop_worker TERM 20
expect_eq "worker exits 0" 0 "$WORKER_RC" "$(worker_log_tail)"

check_worker_logs_clean
tap_done
