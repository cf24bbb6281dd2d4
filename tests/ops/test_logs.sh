#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_logs.sh: --logfile with logrotate's move-then-signal while tasks run
# (every task's line in exactly one of the two files), --log-format json
# (each line an object, task lines carry task_id and task_name), no password
# in either, process titles in `ps -o args` (busy with a task, idle after),
# and a log directory the worker cannot write: one line, exit 2.
. "$(dirname "$0")/../integration/services.sh"

RPW=RedisLogPw-3c9e
PPW=PgLogPw-77a1
start_redis "$RPW"
start_pg
seed_books_pg || { not_ok "seed the books table"; tap_done; }
BROKER="redis://:$RPW@127.0.0.1:$REDIS_PORT/0"
DBURL="postgresql://postgres:$PPW@127.0.0.1:$PG_PORT/celeriac"
export REDIS_URL=$BROKER
LOGDIR=$TEST_TMP/logs
mkdir -p "$LOGDIR"
LOG=$LOGDIR/celeriac.log

# ---- logrotate's move-then-signal while tasks run ----
start_worker -c 3 -b "$BROKER" --result-backend "$BROKER" --db "$DBURL" -l debug \
    -n logs@localhost --logfile "$LOG"
wait_for 20 grep -q "logs@localhost ready" "$LOG" || not_ok "worker ready" "$(tail -5 "$LOG")"
each=$("$PY" -c 'import json; print(json.dumps([[0.005]] * 600))')
client send tasks.sleep --each "$each" --timeout 40 >"$TEST_TMP/rot.out" &
SENDER=$!
wait_for 10 grep -q "Task tasks.sleep.*succeeded" "$LOG"
mv "$LOG" "$LOG.1"
kill -USR2 "$WORKER_PID"
wait "$SENDER"
ids=$(grep -o '"id": "[^"]*"' "$TEST_TMP/rot.out" | cut -d'"' -f4)
n_ids=$(wc -w <<<"$ids")
expect_eq "600 tasks ran across the rotation" 600 "$n_ids"
old=$(grep -c "Task tasks.sleep\[.*succeeded" "$LOG.1")
new=$(grep -c "Task tasks.sleep\[.*succeeded" "$LOG" 2>/dev/null || echo 0)
bad=$("$PY" - "$LOG.1" "$LOG" "$TEST_TMP/rot.out" <<'PY'
import json, re, sys
seen = {}
for path in sys.argv[1:3]:
    for line in open(path, errors="replace"):
        m = re.search(r"Task tasks\.sleep\[([0-9a-f-]+)\] succeeded", line)
        if m:
            seen.setdefault(m.group(1), []).append(path)
ids = [json.loads(l)["id"] for l in open(sys.argv[3]) if l.startswith("{")]
bad = [i for i in ids if len(seen.get(i, [])) != 1]
print(len(bad), " ".join(bad[:5]))
PY
)
if [[ $bad == "0 " && $old -gt 0 && $new -gt 0 ]]; then
    ok "move-then-signal: each of 600 task lines in exactly one file ($old before, $new after)"
else
    not_ok "move-then-signal: each task line in exactly one file" "lost or doubled: $bad" \
        "old file: $old, new file: $new"
fi
if grep -q "log file '$LOG' reopened" "$LOG" && ! grep -q "reopened" "$LOG.1"; then
    ok "the master notes the reopen in the new file"
else
    not_ok "the master notes the reopen in the new file" "$(tail -3 "$LOG")"
fi
# systemctl kill -s USR2 signals every process of the unit: children ignore it
for p in $(worker_children) $(control_pid); do kill -USR2 "$p"; done
sleep 0.3
alive=$(($(worker_children | wc -w) + $(control_pid | wc -w)))
expect_eq "SIGUSR2 to the master and to each child kills none (3 children, the control process)" \
    4 "$alive"

# ---- process titles ----
title_of() { tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | sed 's/ *$//'; }
expect_eq "master's title" "celeriac: master logs@localhost" "$(title_of "$WORKER_PID")"
expect_eq "control process's title" "celeriac: control" "$(title_of "$(control_pid)")"
sleep_ids=$(client send tasks.sleep --args '[4]' --count 3 --no-wait | cut -d'"' -f4)
busy_titles() {
    local n=0 p
    for p in $(ps -o pid= --ppid "$WORKER_PID"); do
        [[ $(ps -o args= -p "$p") =~ ^celeriac:\ worker\ child\ [0-9]+\ busy\ tasks\.sleep\[[0-9a-f-]{36}\]$ ]] && n=$((n + 1))
    done
    ((n == 3))
}
if wait_for 10 busy_titles; then
    ids_in_ps=0
    for id in $sleep_ids; do ps -o args= --ppid "$WORKER_PID" | grep -qF "tasks.sleep[$id]" && ids_in_ps=$((ids_in_ps + 1)); done
    expect_eq "ps -o args shows each child busy with its task name and id" 3 "$ids_in_ps" \
        "$(ps -o pid=,args= --ppid "$WORKER_PID")"
else
    not_ok "ps -o args shows each child busy with its task" "$(ps -o pid=,args= --ppid "$WORKER_PID")"
fi
idle_titles() { [[ $(ps -o args= --ppid "$WORKER_PID" | grep -cE '^celeriac: worker child [0-2] idle$') -eq 3 ]]; }
if wait_for 10 idle_titles; then
    ok "... and idle once the task is done"
else
    not_ok "... and idle once the task is done" "$(ps -o pid=,args= --ppid "$WORKER_PID")"
fi
if ps -o args= -p "$WORKER_PID" --ppid "$WORKER_PID" | grep -qF -e "$RPW" -e "$PPW"; then
    not_ok "ps shows no password (the command line is overwritten)" "$(ps -o args= --ppid "$WORKER_PID")"
else
    ok "ps shows no password (the command line is overwritten)"
fi
stop_worker TERM 30
expect_eq "warm stop after the rotation" 0 "$WORKER_RC"

# ---- --log-format json ----
JLOG=$LOGDIR/json.log
start_worker -c 2 -b "$BROKER" --result-backend "$BROKER" --db "$DBURL" -l debug \
    -n json@localhost --logfile "$JLOG" --log-format json
wait_for 20 grep -q "json@localhost ready" "$JLOG" || not_ok "json worker ready" "$(tail -5 "$JLOG")"
out=$(client send books.get_book_info --each '[[1], [999999]]' --timeout 15)
ids=$(grep -o '"id": "[^"]*"' <<<"$out" | cut -d'"' -f4 | tr '\n' ' ')
stop_worker TERM 30
res=$("$PY" - "$JLOG" $ids <<'PY'
import json, sys
path, ids = sys.argv[1], sys.argv[2:]
bad, tasks = [], {}
for n, line in enumerate(open(path, "rb"), 1):
    try:
        d = json.loads(line)
    except ValueError as e:
        bad.append("line %d: %s: %r" % (n, e, line[:80])); continue
    if not all(isinstance(d.get(k), str) for k in ("time", "level", "process", "message")):
        bad.append("line %d lacks a field: %r" % (n, line[:80]))
    if "task_id" in d:
        tasks.setdefault(d["task_id"], set()).add((d.get("task_name"), d["level"], d["message"][:40]))
ok_ids = [i for i in ids if any(name == "books.get_book_info" for name, _, _ in tasks.get(i, ()))]
print("%d %d %d" % (n, len(bad), len(ok_ids)))
for b in bad[:3]:
    print(b)
PY
)
read -r lines nbad nids <<<"$(head -1 <<<"$res")"
if [[ $nbad == 0 && $lines -gt 5 ]]; then
    ok "json: all $lines lines parse, each with time, level, process, message"
else
    not_ok "json: every line parses with time, level, process, message" "$res"
fi
expect_eq "json: both tasks' lines carry task_id and task_name (success and failure)" 2 "$nids" "$res"
if grep -q '"level":"ERROR".*"task_id"' "$JLOG" && grep -q '"process":"ForkPoolWorker-' "$JLOG"; then
    ok "json: the failed task's ERROR line names it; children name themselves"
else
    not_ok "json: the failed task's ERROR line names it" "$(grep ERROR "$JLOG" | head -3)"
fi

# ---- no password in any log ----
hits=$(grep -lF -e "$RPW" -e "$PPW" "$LOG" "$LOG.1" "$JLOG" "${WORKER_LOGS[@]}" 2>/dev/null)
if [[ -z $hits ]]; then
    ok "no password in any log file (text, rotated, json, stdout)"
else
    not_ok "no password in any log file" "$hits"
fi

# ---- a log directory the worker cannot write ----
bad_dir_case() { # name path [runner...]
    local name=$1 path=$2 rc
    shift 2
    "$@" "$CELERIAC_BIN" worker -A "$BOOKS_LIB" -b "$BROKER" --logfile "$path" \
        >"$TEST_TMP/bad.out" 2>"$TEST_TMP/bad.err"
    rc=$?
    local lines
    lines=$(wc -l <"$TEST_TMP/bad.err")
    if [[ $rc == 2 && $lines == 1 && ! -s $TEST_TMP/bad.out ]] && grep -qF "$path" "$TEST_TMP/bad.err"; then
        ok "$name: exit 2, one line: $(cat "$TEST_TMP/bad.err")"
    else
        not_ok "$name: exit 2 with one line" "exit $rc" "$(cat "$TEST_TMP/bad.err" "$TEST_TMP/bad.out" | head -5)"
    fi
}
bad_dir_case "a missing log directory" "$TEST_TMP/nowhere/celeriac.log"
RO=$TEST_TMP/readonly
mkdir -p "$RO" && chmod 555 "$RO"
if [[ $(id -u) == 0 ]]; then
    if command -v setpriv >/dev/null && setpriv --reuid=nobody --regid=nogroup --clear-groups true 2>/dev/null; then
        bad_dir_case "a log directory that is not writable (as nobody)" "$RO/celeriac.log" \
            setpriv --reuid=nobody --regid=nogroup --clear-groups
    else
        ok "# SKIP not-writable directory: running as root without setpriv"
    fi
else
    bad_dir_case "a log directory that is not writable" "$RO/celeriac.log"
fi
check_worker_logs_clean
tap_done
