#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_c_client.sh: a tiny C program built against include/celeriac_client.h
# and build/libceleriac.a sends tasks.add(2, 3) and waits: 5, read as the
# stored meta; a failure comes back as FAILURE; the message it sends is an
# ordinary Celery message, so a Python Celery worker runs it too; the
# `celeriac call` / `celeriac result` commands do the same from the shell.
. "$(dirname "$0")/lib.sh"

start_redis
parity_env
CLIENT=$TEST_TMP/c_client
SAN=()
# a sanitizer build's library needs the sanitizer runtimes at link time
if nm "$BUILD_DIR/libceleriac.a" 2>/dev/null | grep -q ' U __asan_'; then
    SAN=("-fsanitize=address,undefined")
fi
# shellcheck disable=SC2046
if ! cc -std=c11 -Wall -Wextra -Werror -O1 -g "${SAN[@]}" -I"$CELERIAC_ROOT/include" -o "$CLIENT" \
    "$PARITY_DIR/c_client.c" "$BUILD_DIR/libceleriac.a" \
    $(pkg-config --libs hiredis jansson libpq sqlite3 librabbitmq msgpack openssl) -ldl -lm 2>"$TEST_TMP/cc.log"; then
    not_ok "build a program against celeriac_client.h and libceleriac.a" "$(cat "$TEST_TMP/cc.log")"
    tap_done
fi
ok "build a program against celeriac_client.h and libceleriac.a"

start_worker -c 2 -b "$BROKER_URL" --result-backend "$RESULT_URL" -n cclient@localhost
wait_children 2 20 || not_ok "worker started 2 pool children" "$(worker_log_tail)"

meta=$("$CLIENT" "$BROKER_URL" "$RESULT_URL" tasks.add '[2, 3]' 2>"$TEST_TMP/c1.err")
rc=$?
expect_eq "C client: tasks.add(2, 3) -> exit 0, SUCCESS 5" "0 SUCCESS 5" \
    "$rc $(jget status <<<"$meta") $(jget result <<<"$meta")" "$meta" "$(cat "$TEST_TMP/c1.err")"
id=$(sed -n 's/^id //p' "$TEST_TMP/c1.err")
expect_eq "C client: the meta names the task id it printed" "$id" "$(jget task_id <<<"$meta")"
expect_eq "Python's AsyncResult reads the same result" "SUCCESS 5" \
    "$("$PY" -c 'import sys; from parity import make_app
r = make_app().AsyncResult(sys.argv[1]); print(r.state, r.get(timeout=5))' "$id" 2>&1)"

meta=$("$CLIENT" "$BROKER_URL" "$RESULT_URL" tasks.fail '["from C"]' 2>/dev/null)
rc=$?
expect_eq "C client: tasks.fail -> exit 1, FAILURE ValueError('from C')" "1 FAILURE ValueError from C" \
    "$rc $(jget status <<<"$meta") $(jget result.exc_type <<<"$meta") $(jget result.exc_message.0 <<<"$meta")" \
    "$meta"

t0=$SECONDS
meta=$("$CLIENT" "$BROKER_URL" "$RESULT_URL" tasks.add '[1, 1]' celery 2 2>/dev/null)
expect_eq "C client: countdown 2 s -> SUCCESS 2 after >= 2 s" "SUCCESS 2 yes" \
    "$(jget status <<<"$meta") $(jget result <<<"$meta") $( ((SECONDS - t0 >= 2)) && echo yes || echo "no ($((SECONDS - t0)) s)")"

# celeriac call / celeriac result
id=$("$CELERIAC_BIN" call tasks.add 20 22 -b "$BROKER_URL" --result-backend "$RESULT_URL" 2>&1)
expect_eq "celeriac call tasks.add 20 22: prints a task id" 36 "${#id}" "$id"
expect_eq "celeriac result ID --wait: 42" "42" \
    "$("$CELERIAC_BIN" result "$id" --wait -b "$BROKER_URL" --result-backend "$RESULT_URL" 2>&1)"
expect_eq "celeriac call tasks.add --kwargs JSON --wait: 3" "3" \
    "$("$CELERIAC_BIN" call tasks.add --kwargs '{"x": 1, "y": 2}' --wait -b "$BROKER_URL" \
        --result-backend "$RESULT_URL" 2>&1)"
out=$("$CELERIAC_BIN" call tasks.fail boom --wait -b "$BROKER_URL" --result-backend "$RESULT_URL" 2>&1)
rc=$?
if [[ $rc == 1 && $out == *ValueError* && $out == *boom* ]]; then
    ok "celeriac call tasks.fail boom --wait: exit 1 and the ValueError"
else
    not_ok "celeriac call tasks.fail boom --wait: exit 1 and the ValueError" "exit $rc" "$out"
fi
stop_worker TERM 30
expect_eq "the worker exits 0 on SIGTERM" 0 "$WORKER_RC" "$(worker_log_tail)"

# the C client's message, run by a Python Celery worker
PYLOG=$TEST_TMP/pyworker.log
(cd "$PARITY_DIR" && exec env C_FORCE_ROOT=1 "$PY" -m celery -A pyfleet worker -n pyc@localhost -c 1 \
    -Q pyonly --without-gossip --without-mingle --without-heartbeat -l info) </dev/null >"$PYLOG" 2>&1 &
PYW_PID=$!
_svc_record_pid "$PYW_PID" celery
_py_ready() { grep -q ' ready\.' "$PYLOG"; }
if wait_for 60 _py_ready; then
    meta=$("$CLIENT" "$BROKER_URL" "$RESULT_URL" tasks.add '[40, 2]' pyonly 2>/dev/null)
    expect_eq "C client -> Python Celery worker: tasks.add(40, 2) is SUCCESS 42" "SUCCESS 42" \
        "$(jget status <<<"$meta") $(jget result <<<"$meta")" "$meta" "$(tail -5 "$PYLOG")"
else
    not_ok "the Python worker starts" "$(tail -20 "$PYLOG")"
fi
kill -TERM "$PYW_PID" 2>/dev/null
for ((i = 0; i < 200; i++)); do kill -0 "$PYW_PID" 2>/dev/null || break; sleep 0.1; done
wait "$PYW_PID" 2>/dev/null
expect_eq "the Python worker exits 0" 0 "$?"
check_worker_logs_clean
tap_done
