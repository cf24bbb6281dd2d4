#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_demo.sh: `make demo` (scripts/demo.sh sqlite: no server at all) and
# `make demo-redis` (scripts/demo.sh redis), each with a few tasks: exit 0, the
# summary and success lines, no process and no temp dir left behind. And the
# demo's guard against kombu's silent publish failure: a send whose commit
# meets "database is locked" past the 5 s busy timeout is dropped by kombu,
# and the demo's enqueue says so and fails instead of going on without it.
. "$(dirname "$0")/services.sh"

DEMO=$CELERIAC_ROOT/scripts/demo.sh
CLIENT=$CELERIAC_ROOT/scripts/demo_client.py
TASKS=200

# Processes whose command line names DIR (the demo's worker, redis-server and
# Python clients all do): none may outlive the demo.
procs_under() { # DIR
    local p cmd
    for p in /proc/[0-9]*; do
        cmd=$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null) || continue
        [[ $cmd == *"$1"* ]] && echo "${p#/proc/} $cmd"
    done
}

# run_demo MODE: runs demo.sh with its temp dir under $TEST_TMP/MODE.
run_demo() {
    local mode=$1 dir=$TEST_TMP/$1 rc=0
    mkdir -p "$dir"
    TMPDIR=$dir BUILD=$BUILD_DIR DEMO_TASKS=$TASKS DEMO_BOOKS=150 \
        timeout -k 5 120 bash "$DEMO" "$mode" </dev/null >"$dir.out" 2>&1 || rc=$?
    local out
    out=$(cat "$dir.out")
    expect_eq "demo $mode: exits 0" 0 "$rc" "$(tail -n 25 "$dir.out")"
    if grep -q "^demo: $TASKS tasks done .* tasks/s" <<<"$out" &&
        grep -q "^all $TASKS results are SUCCESS with the right title" <<<"$out" &&
        grep -q "^demo: OK$" <<<"$out"; then
        ok "demo $mode: prints the throughput, the results' check and 'demo: OK'"
    else
        not_ok "demo $mode: prints the throughput, the results' check and 'demo: OK'" "$out"
    fi
    # and none of the pids it printed (redis-server retitles itself, so its
    # command line does not name the dir)
    local pid pids left
    left=$(procs_under "$dir")
    pids=$(sed -nE 's/^(demo: private redis-server|master|child |control) +pid ([0-9]+).*/\2/p' \
        "$dir.out")
    for pid in $pids; do
        [[ -e /proc/$pid ]] && left+=" $pid: $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)"
    done
    (($(wc -w <<<"$pids") >= 3)) || left+=" (the demo printed too few pids: $pids)"
    expect_eq "demo $mode: no process left behind (master, children, servers)" "" "$left"
    expect_eq "demo $mode: its temp dir is removed" "" "$(ls -A "$dir")"
}

run_demo sqlite
out=$(cat "$TEST_TMP/sqlite.out")
if grep -q "^demo: no server: kombu's SQL transport in" <<<"$out" &&
    grep -q -- "-b sqla+sqlite:////.*--result-backend db+sqlite:////" <<<"$out" &&
    grep -q "^2 children, one database connection each (and one each on the broker" <<<"$out"; then
    ok "demo sqlite: broker and results in SQLite files, one handle per child on each"
else
    not_ok "demo sqlite: broker and results in SQLite files, one handle per child on each" "$out"
fi
run_demo redis

# ---- a send kombu drops is an error -------------------------------------------------
LOCKED_DB=$TEST_TMP/locked.db
BROKER="sqla+sqlite:///$LOCKED_DB"
"$PY" "$CLIENT" enqueue "$BROKER" 1 10 "$TEST_TMP/ids1" >/dev/null # kombu's tables and queue
# Holds the write lock for 6.5 s: the first send waits out kombu's 5 s busy
# timeout, fails, and kombu rolls it back without a word; the rest get through.
"$PY" -c '
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(6.5)
db.execute("COMMIT")' "$LOCKED_DB" >"$TEST_TMP/locker.out" &
locker=$!
_svc_record_pid "$locker" python3
wait_for 10 grep -q locked "$TEST_TMP/locker.out"
rc=0
out=$(timeout -k 5 60 "$PY" "$CLIENT" enqueue "$BROKER" 20 10 "$TEST_TMP/ids20" 2>&1) || rc=$?
wait "$locker"
if ((rc == 1)) && grep -q "sent 20 tasks but 19 rows were stored" <<<"$out"; then
    ok "enqueue: a send kombu dropped on 'database is locked' fails the demo (20 sent, 19 stored)"
else
    not_ok "enqueue: a send kombu dropped on 'database is locked' fails the demo" "rc=$rc" "$out"
fi
tap_done
