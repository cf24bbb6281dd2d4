#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_systemd.sh: the Type=notify protocol without systemd: a Python
# datagram socket as $NOTIFY_SOCKET. READY=1 only once every child has its
# database connection (the database is down at start), STATUS= lines,
# WATCHDOG=1 at half of $WATCHDOG_USEC, STOPPING=1 at shutdown; and
# `systemd-analyze verify` of packaging/celeriac.service.
. "$(dirname "$0")/../integration/services.sh"

start_redis
start_pg
seed_books_pg || { not_ok "seed the books table"; tap_done; }
export REDIS_URL
SOCK=$TEST_TMP/notify.sock
NOTES=$TEST_TMP/notify.jsonl
"$PY" "$TESTS_DIR/ops/notify_listen.py" "$SOCK" "$NOTES" &
_svc_record_pid $! notify_listen
wait_for 5 grep -q LISTENING "$NOTES" || not_ok "notify listener up"

notes() { # PATTERN: datagrams matching it, one per line (newlines as |)
    "$PY" -c '
import json, re, sys
for l in open(sys.argv[1]):
    m = json.loads(l)["msg"]
    if re.search(sys.argv[2], m):
        print(m.replace("\n", "|"))' "$NOTES" "$1"
}
has_note() { [[ -n $(notes "$1") ]]; }

# ---- the database is down when the worker starts ----
stop_pg
NOTIFY_SOCKET=$SOCK WATCHDOG_USEC=1000000 start_worker -c 2 --db "$PG_URL" -b "$REDIS_URL" \
    --result-backend "$REDIS_URL" --db-connect-attempts 1000 --db-backoff-base 200 \
    --db-backoff-cap 500 -n sd@localhost
wait_for 10 has_note '^STATUS=' || not_ok "a STATUS= arrives while the database is down"
sleep 2
if has_note 'READY=1'; then
    not_ok "no READY=1 while the database is down" "$(notes .)"
else
    ok "no READY=1 while the database is down: $(notes '^STATUS=' | tail -1)"
fi
if notes '^STATUS=' | grep -q 'database connecting (0/2 connected)'; then
    ok "STATUS= says the children wait for the database"
else
    not_ok "STATUS= says the children wait for the database" "$(notes '^STATUS=')"
fi
start_pg_again
if wait_for 20 has_note 'READY=1'; then
    ready=$(notes 'READY=1' | head -1)
    if [[ $ready == *"2/2 children up, database up (2/2 connected)"* ]]; then
        ok "READY=1 once both children connected: $ready"
    else
        not_ok "READY=1 only once both children connected" "$ready"
    fi
else
    not_ok "READY=1 after the database came up" "$(notes . | tail -5)" "$(worker_log_tail 10)"
fi
expect_eq "READY=1 sent once" 1 "$(notes 'READY=1' | wc -l)"

# ---- STATUS= follows the tasks done ----
out=$(client send tasks.add --args '[1, 2]' --count 5 --timeout 15)
expect_eq "five tasks ran" "3 3 3 3 3" "$(client_values <<<"$out")"
if wait_for 6 has_note '^STATUS=.* 5 tasks done'; then
    ok "STATUS= counts the tasks done: $(notes '5 tasks done' | tail -1)"
else
    not_ok "STATUS= counts the tasks done" "$(notes '^STATUS=' | tail -3)"
fi

# ---- the watchdog: WATCHDOG_USEC=1 s, a ping every 0.5 s ----
sleep 2
wd=$("$PY" -c '
import json, sys
t = [json.loads(l)["t"] for l in open(sys.argv[1]) if json.loads(l)["msg"] == "WATCHDOG=1"]
gaps = sorted(b - a for a, b in zip(t, t[1:]))
print(len(t), "%.3f" % gaps[len(gaps) // 2] if gaps else 0, "%.3f" % gaps[-1] if gaps else 9)' "$NOTES")
read -r wd_n wd_median wd_max <<<"$wd"
if ((wd_n >= 10)) && "$PY" -c "import sys; sys.exit(not (0.4 <= $wd_median <= 0.6 and $wd_max < 1.0))"; then
    ok "WATCHDOG=1 every $wd_median s (at most $wd_max s apart, $wd_n pings) for WATCHDOG_USEC=1000000"
else
    not_ok "WATCHDOG=1 every 0.5 s for WATCHDOG_USEC=1000000" "pings $wd_n, median gap $wd_median, max gap $wd_max"
fi

# ---- shutdown ----
stop_worker TERM 30
expect_eq "warm stop exits 0" 0 "$WORKER_RC"
if has_note '^STOPPING=1'; then
    ok "STOPPING=1 at shutdown: $(notes '^STOPPING=1' | head -1)"
else
    not_ok "STOPPING=1 at shutdown" "$(notes . | tail -3)"
fi

# ---- the unit file ----
UNIT=$CELERIAC_ROOT/packaging/celeriac.service
if command -v systemd-analyze >/dev/null; then
    # verify needs ExecStart's binary: point it at ours (and the man page
    # Documentation= names is installed by make install, not here)
    mkdir -p "$TEST_TMP/unit"
    sed -e "s|/usr/bin/celeriac|$CELERIAC_BIN|" "$UNIT" >"$TEST_TMP/unit/celeriac.service"
    if out=$(SYSTEMD_LOG_LEVEL=warning systemd-analyze verify "$TEST_TMP/unit/celeriac.service" 2>&1 |
        grep -v -e "Command 'man celeriac(1)' failed"); [[ -z $out ]]; then
        ok "systemd-analyze verify packaging/celeriac.service"
    else
        not_ok "systemd-analyze verify packaging/celeriac.service" "$out"
    fi
else
    ok "# SKIP systemd-analyze verify: systemd-analyze is not installed"
fi
grep -q '^Type=notify$' "$UNIT" && grep -q '^KillMode=mixed$' "$UNIT" && grep -q '^WatchdogSec=' "$UNIT" &&
    grep -q '^ExecReload=/bin/kill -HUP \$MAINPID$' "$UNIT" && grep -q '^TimeoutStopSec=[0-9]' "$UNIT" &&
    ok "the unit: Type=notify, KillMode=mixed, WatchdogSec, ExecReload HUP, bounded TimeoutStopSec" ||
    not_ok "the unit has Type=notify, KillMode=mixed, WatchdogSec, ExecReload, TimeoutStopSec"
check_worker_logs_clean
tap_done
