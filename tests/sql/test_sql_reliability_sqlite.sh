#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_sql_reliability_sqlite.sh (issue 12, "Bad input"): kombu's SQL
# transport in an SQLite file when the file cannot be written.
#   - locked beyond the busy timeout (5 s, the --db one; there is no flag):
#     another process holds BEGIN IMMEDIATE for 18 s while a late-ack task
#     runs (its ack waits: a first attempt is retried without a word, so the
#     lock must outlast two busy timeouts to be logged) and others wait to be
#     claimed;
#   - a full disk: the broker file on a 2 MB tmpfs this test mounts (root
#     only, else skipped), filled while a late-ack task runs.
# Each: logged once per episode, no spin, nothing lost, everything runs after.
. "$(dirname "$0")/lib.sh"

start_redis
build_rel_lib || tap_done

# late_states IDS...: the states of the tasks, space-separated.
late_states() {
    rel wait "$@" --timeout 40 | while read -r line; do summary <<<"$line" | cut -d' ' -f1; done |
        tr '\n' ' ' | sed 's/ $//'
}
repeat() { local i out=; for ((i = 0; i < $2; i++)); do out+="$1 "; done; echo "${out% }"; }

# ---- locked beyond the busy timeout ---------------------------------------------------------
BROKER_DB=$TEST_TMP/broker.db
SQL_BROKER="sqla+sqlite:///$BROKER_DB"
sq() { sqlite3 -batch "$BROKER_DB" "$@"; }
W=(-A "$REL_LIB" -c 1 --result-backend "$REDIS_URL")
start_worker "${W[@]}" -b "$SQL_BROKER" -n locked@localhost
wait_children 1 20 || not_ok "worker on sqla+sqlite started" "$(worker_log_tail)"
first=$(BROKER_URL=$SQL_BROKER send rel.sleep_late '[0]')
expect_eq "a task runs on the SQLite broker" SUCCESS "$(meta_of "$first" 15 | summary | cut -d' ' -f1)"

running=$(BROKER_URL=$SQL_BROKER send rel.sleep_late '[2]')
waiting=$(BROKER_URL=$SQL_BROKER send rel.sleep_late '[0]' --count 5)
"$PY" -c '
import sqlite3, sys, time
c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)
c.execute("BEGIN IMMEDIATE")
print("locked", time.time(), flush=True)
time.sleep(18)
c.execute("COMMIT")
print("released", time.time(), flush=True)' "$BROKER_DB" >"$TEST_TMP/lock.out" 2>&1 &
LOCK_PID=$!
_locked() { grep -q locked "$TEST_TMP/lock.out"; }
wait_for 10 _locked || not_ok "another process takes the write lock" "$(cat "$TEST_TMP/lock.out")"
sleep 2
t0=$(cpu_ticks $(worker_children) "$WORKER_PID")
sleep 4
t1=$(cpu_ticks $(worker_children) "$WORKER_PID")
if ((t1 - t0 <= 20)); then
    ok "while the broker file is locked, the worker does not spin ($(((t1 - t0) * 10)) ms CPU in 4 s)"
else
    not_ok "while the broker file is locked, the worker does not spin" "$(((t1 - t0) * 10)) ms CPU in 4 s"
fi
wait "$LOCK_PID"
# shellcheck disable=SC2086
diag "lock: $(tr '\n' ' ' <"$TEST_TMP/lock.out")" "$(rel wait $running $waiting --timeout 40 | "$PY" -c '
import json, sys
for l in sys.stdin:
    m = json.loads(l); print(m and m.get("date_done"))')"
# shellcheck disable=SC2086
got=$(late_states $running $waiting)
expect_eq "after the lock is released: the running task and the 5 waiting ones all SUCCESS" \
    "$(repeat SUCCESS 6)" "$got" "$(worker_log_tail 12)"
_drained() { [[ $(sq "SELECT count(*) FROM kombu_message") == 0 ]]; }
wait_for 10 _drained
expect_eq "... nothing left in kombu_message" 0 "$(sq "SELECT count(*) FROM kombu_message")" \
    "$(sq "SELECT id, visible, version FROM kombu_message")"
lines=$(log_count "database is locked")
if ((lines >= 1 && lines <= 2)); then
    ok "the locked file is logged once per episode (ack, claim): $lines line(s)"
else
    not_ok "the locked file is logged once per episode (ack, claim)" "$lines lines" \
        "$(grep "database is locked" "$WORKER_LOG" | head -8)"
fi
stop_worker

# ---- a full disk ------------------------------------------------------------------------------
FULL=$TEST_TMP/full
full_cleanup() {
    local rc=$?
    mountpoint -q "$FULL" 2>/dev/null && umount -l "$FULL"
    (exit "$rc")
    services_cleanup
}
mkdir -p "$FULL"
if [[ $(id -u) != 0 ]]; then
    echo "ok - full disk # SKIP not root: cannot mount a small tmpfs"
elif ! mount -t tmpfs -o size=2M tmpfs "$FULL" 2>"$TEST_TMP/mount.err"; then
    echo "ok - full disk # SKIP mount -t tmpfs failed: $(head -1 "$TEST_TMP/mount.err")"
else
    trap full_cleanup EXIT
    BROKER_DB=$FULL/broker.db
    SQL_BROKER="sqla+sqlite:///$BROKER_DB"
    start_worker "${W[@]}" -b "$SQL_BROKER" -n full@localhost
    wait_children 1 20 || not_ok "worker on the small tmpfs started" "$(worker_log_tail)"
    first=$(BROKER_URL=$SQL_BROKER send rel.sleep_late '[0]')
    expect_eq "a task runs on the tmpfs broker" SUCCESS "$(meta_of "$first" 15 | summary | cut -d' ' -f1)"
    # the running task ends (and acks) inside the 5.5 s the disk stays full
    running=$(BROKER_URL=$SQL_BROKER send rel.sleep_late '[2]')
    waiting=$(BROKER_URL=$SQL_BROKER send rel.sleep_late '[0]' --count 5)
    dd if=/dev/zero of="$FULL/filler" bs=4k 2>/dev/null
    diag "tmpfs: $(df -k --output=avail "$FULL" | tail -1 | tr -d ' ') KB free after the filler"
    sleep 2.5
    t0=$(cpu_ticks $(worker_children) "$WORKER_PID")
    sleep 3
    t1=$(cpu_ticks $(worker_children) "$WORKER_PID")
    done_while_full=$(sq "SELECT count(*) FROM kombu_message")
    rm -f "$FULL/filler"
    if ((t1 - t0 <= 20)); then
        ok "while the disk is full, the worker does not spin ($(((t1 - t0) * 10)) ms CPU in 3 s)"
    else
        not_ok "while the disk is full, the worker does not spin" "$(((t1 - t0) * 10)) ms CPU in 3 s"
    fi
    # shellcheck disable=SC2086
    got=$(late_states $running $waiting)
    expect_eq "after space is freed: the running task and the 5 waiting ones all SUCCESS" \
        "$(repeat SUCCESS 6)" "$got" "$(worker_log_tail 12)"
    wait_for 10 _drained
    expect_eq "... nothing left in kombu_message ($done_while_full rows while full)" 0 \
        "$(sq "SELECT count(*) FROM kombu_message")" "$(sq "SELECT id, visible, version FROM kombu_message")"
    lines=$(log_count "database or disk is full")
    if ((lines >= 1 && lines <= 2)); then
        ok "SQLITE_FULL is logged once per episode (ack, claim): $lines line(s)"
    else
        not_ok "SQLITE_FULL is logged once per episode (ack, claim)" "$lines lines" \
            "$(grep -i "full" "$WORKER_LOG" | head -8)"
    fi
    stop_worker
fi
check_worker_logs_clean
tap_done
