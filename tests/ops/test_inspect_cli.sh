#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_inspect_cli.sh (issue 13, point 6): `celeriac inspect` / `celeriac
# control`, Celery's remote control from C, against a celeriac worker and a
# Python Celery worker (tests/parity/pyfleet.py) on the same Redis: both
# reply to ping, registered, active, stats; the output is celery's
# (compared with `celery inspect ping`); rate_limit then shows in registered;
# control shutdown stops the worker; an unreachable broker is one line and
# a non-zero exit; no reply is "No nodes replied" and exit 69, as celery.
# One lean AMQP case when RabbitMQ is available.
. "$(dirname "$0")/../integration/services.sh"

C=cstat$$@localhost
P=pystat$$@localhost
start_redis
start_worker -b "$REDIS_URL" --result-backend "$REDIS_URL" -c 2 -n "$C"
CPID=$WORKER_PID
wait_children 2 20 || not_ok "celeriac worker started" "$(worker_log_tail)"

PYLOG=$TEST_TMP/pyworker.log
(cd "$TESTS_DIR/parity" && BROKER_URL=$REDIS_URL RESULT_URL=$REDIS_URL C_FORCE_ROOT=1 \
    PYTHONPATH=$TESTS_DIR/parity exec "$PY" -m celery -A pyfleet worker -n "$P" -l info \
    --without-gossip --without-mingle -c 1 </dev/null >"$PYLOG" 2>&1) &
PYPID=$!
_svc_record_pid "$PYPID" celery
_py_ready() { grep -q ' ready\.' "$PYLOG"; }
wait_for 40 _py_ready || not_ok "python worker ready" "$(tail -20 "$PYLOG")"

ci() { "$CELERIAC_BIN" inspect -b "$REDIS_URL" "$@"; }
cc_() { "$CELERIAC_BIN" control -b "$REDIS_URL" "$@"; }

# ---- ping: both nodes, the text celery prints ---------------------------------------
_both_ping() { out=$(ci ping -t 1 2>&1); [[ $out == *"$C: OK"* && $out == *"$P: OK"* ]]; }
wait_for 15 _both_ping
out=$(ci ping -t 1 2>&1)
rc=$?
diag "$out"
expect_eq "inspect ping: exit 0" 0 "$rc"
expect_eq "inspect ping: the celeriac and the Python worker both reply" "yes yes" \
    "$(grep -q "^->  $C: OK$" <<<"$out" && echo yes) $(grep -q "^->  $P: OK$" <<<"$out" && echo yes)" "$out"
expect_eq "inspect ping: pong under each, '2 nodes online.' last" "2 2 nodes online." \
    "$(grep -c '^        pong$' <<<"$out") $(tail -1 <<<"$out")" "$out"
ours=$(ci ping -d "$C" 2>&1 | sort)
theirs=$(cd "$TESTS_DIR/parity" && "$PY" -m celery -b "$REDIS_URL" inspect ping -d "$C" 2>&1 | sort)
expect_eq "inspect ping -d NODE prints what celery inspect ping -d NODE prints" "$theirs" "$ours"

# ---- registered, stats, active -------------------------------------------------------
ours=$(ci registered -d "$C,$P" 2>&1 | sort)
theirs=$(cd "$TESTS_DIR/parity" && "$PY" -m celery -b "$REDIS_URL" inspect registered -d "$C,$P" 2>&1 | sort)
expect_eq "inspect registered -d C,P prints what celery inspect registered prints" "$theirs" "$ours"
out=$(ci registered -t 1 2>&1)
expect_eq "inspect registered: both list tasks.add" 2 "$(grep -c '^    \* tasks.add$' <<<"$out")" "$out"
json=$(ci stats --json -t 1)
expect_eq "inspect stats --json: both nodes, each with pid and pool" "True True" "$("$PY" -c '
import json, sys
d = json.load(sys.stdin)
print(all(n in d for n in sys.argv[1:]), all("pid" in d[n] and "pool" in d[n] for n in sys.argv[1:]))
' "$C" "$P" <<<"$json" 2>&1)" "$json"

id=$("$CELERIAC_BIN" call tasks.sleep 4 -b "$REDIS_URL" --queue celery)
id2=$("$CELERIAC_BIN" call tasks.sleep 4 -b "$REDIS_URL" --queue celery)
_active2() { [[ $(ci active --json -t 1 2>/dev/null | grep -o '"tasks.sleep"' | wc -l) -ge 2 ]]; }
wait_for 10 _active2
json=$(ci active --json -t 1)
expect_eq "inspect active --json: both nodes reply, both sleeps running with their ids" "True True" \
    "$("$PY" -c '
import json, sys
d = json.load(sys.stdin)
ids = {t["id"] for tasks in d.values() for t in tasks}
print(set(sys.argv[3:]) <= ids, all(n in d for n in sys.argv[1:3]))' "$C" "$P" "$id" "$id2" \
    <<<"$json" 2>&1)" "$json"

# ---- control rate_limit, then registered shows it ----------------------------------
out=$(cc_ rate_limit tasks.add 10/m -d "$C,$P" 2>&1)
expect_eq "control rate_limit: both OK, 'new rate limit set successfully'" 2 \
    "$(grep -c '^        new rate limit set successfully$' <<<"$out")" "$out"
out=$(ci registered -d "$C" 2>&1)
expect_eq "inspect registered after rate_limit: tasks.add [rate_limit=10/m]" 1 \
    "$(grep -c '^    \* tasks.add \[rate_limit=10/m\]$' <<<"$out")" "$out"
out=$(cc_ rate_limit no.such.task 1/s -d "$C" 2>&1)
expect_eq "control rate_limit of an unknown task: ERROR, 'unknown task'" "yes" \
    "$(grep -q "^->  $C: ERROR$" <<<"$out" && grep -q '^        unknown task$' <<<"$out" && echo yes)" "$out"
out=$(cc_ revoke 11111111-2222-3333-4444-555555555555 -d "$C" 2>&1)
rev=$(ci revoked -d "$C" 2>&1)
expect_eq "control revoke ID, then inspect revoked lists it" 1 \
    "$(grep -c '^    \* 11111111-2222-3333-4444-555555555555$' <<<"$rev")" "$out" "$rev"

# ---- errors ---------------------------------------------------------------------------
err=$("$CELERIAC_BIN" inspect ping -b redis://127.0.0.1:1/0 2>&1 >/dev/null)
rc=$?
expect_eq "unreachable broker: non-zero exit, one line" "1 1" "$rc $(wc -l <<<"$err")" "$err"
err=$(ci ping -d nobody@nowhere -t 0.5 2>&1 >/dev/null)
rc=$?
expect_eq "no reply: exit 69 as celery, its message" \
    "69 Error: No nodes replied within time constraint" "$rc $err"
"$CELERIAC_BIN" inspect no_such_command -b "$REDIS_URL" >/dev/null 2>&1
expect_eq "unknown command: usage error (2)" 2 "$?"

# ---- control shutdown stops the celeriac worker (celery gets no reply either) --------
err=$(cc_ shutdown -d "$C" -t 1 2>&1)
rc=$?
expect_eq "control shutdown: no reply, exit 69 (as celery: shutdown never replies)" 69 "$rc" "$err"
if wait_pid_gone 20 "$CPID"; then
    ok "control shutdown stopped the celeriac worker"
else
    not_ok "control shutdown stopped the celeriac worker" "$(worker_log_tail)"
fi
cc_ shutdown -d "$P" -t 0.5 >/dev/null 2>&1
wait_pid_gone 20 "$PYPID" || { diag "$(tail -5 "$PYLOG")"; kill -TERM "$PYPID" 2>/dev/null; }
check "the Python worker stopped too" test ! -d "/proc/$PYPID"
WORKER_PID=
check_worker_logs_clean

# ---- AMQP: one lean case --------------------------------------------------------------
. "$TESTS_DIR/lib/rabbitmq.sh"
rabbitmq_test_start
{
    start_worker -b "$RABBITMQ_URL" -c 1 -n "a$C"
    wait_children 1 20 || not_ok "celeriac worker on RabbitMQ started" "$(worker_log_tail)"
    _amqp_ping() { "$CELERIAC_BIN" inspect ping -b "$RABBITMQ_URL" -t 1 2>/dev/null | grep -q "^->  a$C: OK$"; }
    if wait_for 20 _amqp_ping; then
        ok "AMQP: inspect ping over celery.pidbox gets the worker's pong"
    else
        not_ok "AMQP: inspect ping over celery.pidbox gets the worker's pong" \
            "$("$CELERIAC_BIN" inspect ping -b "$RABBITMQ_URL" -t 1 2>&1)" "$(worker_log_tail)"
    fi
    stop_worker TERM 20
}
tap_done
