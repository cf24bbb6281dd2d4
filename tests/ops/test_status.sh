#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_status.sh (issue 13, point 6): `celeriac status` reads a running
# worker's scoreboard file, read-only, with no broker or database: during a
# long task it shows the busy child (task name, id, for how long) and the
# idle ones, --json parses, -n and --pid pick the worker, an unknown one is
# one line and exit 1, and the file is gone once the worker has stopped.
. "$(dirname "$0")/../integration/services.sh"

# services.sh points CELERIAC_RUNTIME_DIR at the test's own directory
start_redis
start_pg
seed_books_pg || not_ok "seed the books table"
NODE=stat$$@localhost
start_worker -b "$REDIS_URL" --result-backend "$REDIS_URL" --db "$PG_URL" -c 3 -n "$NODE"
wait_children 3 20 || not_ok "worker started 3 children" "$(worker_log_tail)"
BOARD=$CELERIAC_RUNTIME_DIR/celeriac-$NODE.board
check "the master made its scoreboard file $BOARD" test -f "$BOARD"

_all_idle() { [[ $("$CELERIAC_BIN" status -n "$NODE" 2>/dev/null | grep -c ' idle ') == 3 ]]; }
wait_for 20 _all_idle || diag "$("$CELERIAC_BIN" status -n "$NODE" 2>&1)"

id=$("$CELERIAC_BIN" call tasks.sleep 6 -b "$REDIS_URL")
_busy() { "$CELERIAC_BIN" status -n "$NODE" 2>/dev/null | grep -q " busy .*tasks.sleep\[$id\] for "; }
if wait_for 10 _busy; then
    sleep 1.2
    out=$("$CELERIAC_BIN" status -n "$NODE")
    diag "$out"
    ok "status shows the busy child running tasks.sleep[$id]"
else
    out=$("$CELERIAC_BIN" status -n "$NODE" 2>&1)
    not_ok "status shows the busy child running tasks.sleep[$id]" "$out" "$(worker_log_tail)"
fi
expect_eq "status: one child busy, two idle" "1 2" \
    "$(grep -c ' busy ' <<<"$out") $(grep -c ' idle ' <<<"$out")"
expect_eq "status: the master pid and node in the first line" yes \
    "$(head -1 <<<"$out" | grep -q "^$NODE: master pid $WORKER_PID, up " && echo yes)"
expect_eq "status: every child's database is up" 3 "$(grep -cE ' (idle|busy) +up ' <<<"$out")"

json=$("$CELERIAC_BIN" status --pid "$WORKER_PID" --json)
summary=$("$PY" -c '
import json, sys
w = json.load(sys.stdin)
assert len(w) == 1, w
w = w[0]
busy = [c for c in w["children"] if c["state"] == "busy"]
idle = [c for c in w["children"] if c["state"] == "idle"]
t = busy[0]["task"]
print(w["node"], w["master_pid"], len(busy), len(idle), t["name"], t["id"], t["running_s"] >= 1,
      all(c["db"] == "up" and c["db_connection_age_s"] > 0 for c in w["children"]),
      w["uptime_s"] > 0)' <<<"$json" 2>&1)
expect_eq "status --pid MASTER --json parses: node, pid, 1 busy, 2 idle, the task, db up" \
    "$NODE $WORKER_PID 1 2 tasks.sleep $id True True True" "$summary" "$json"

kid=$(worker_children | cut -d' ' -f1)
expect_eq "status --pid CHILD finds the worker of a child" "$NODE" \
    "$("$CELERIAC_BIN" status --pid "$kid" --json | jget 0.node)"
expect_eq "status -n BARE (no @host) matches NODE@host" 1 \
    "$("$CELERIAC_BIN" status -n "${NODE%@*}" | grep -c "^$NODE: ")"

err=$("$CELERIAC_BIN" status -n nosuch@nowhere 2>&1 >/dev/null)
rc=$?
expect_eq "status -n UNKNOWN: exit 1" 1 "$rc"
expect_eq "status -n UNKNOWN: one line on stderr" 1 "$(wc -l <<<"$err")" "$err"
"$CELERIAC_BIN" status --pid 1 >/dev/null 2>&1
expect_eq "status --pid NOT-A-WORKER: exit 1" 1 "$?"

stop_worker TERM 30
expect_eq "worker stopped cleanly" 0 "$WORKER_RC" "$(worker_log_tail)"
check "the scoreboard file is removed at exit" test ! -e "$BOARD"
"$CELERIAC_BIN" status -n "$NODE" >/dev/null 2>&1
expect_eq "status after the worker stopped: exit 1" 1 "$?"

# A master killed with SIGKILL leaves its file: status does not show it.
start_worker -b "$REDIS_URL" --db "$PG_URL" -c 1 -n "$NODE"
wait_children 1 20 || not_ok "second worker started" "$(worker_log_tail)"
stop_worker KILL 5
"$CELERIAC_BIN" status -n "$NODE" >/dev/null 2>&1
expect_eq "a killed worker's stale file is not reported as running: exit 1" 1 "$?"
check_worker_logs_clean
tap_done
