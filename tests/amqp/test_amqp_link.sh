#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_amqp_link.sh: util/amqp_link, amqp_declare and amqp_msg against a
# private RabbitMQ (tests/lib/rabbitmq.sh, one node for every case here), with
# Debian's Python Celery and kombu on the other side: errors, Celery's
# topology declared after Python's, confirms and settlement, a real Celery
# task message decoded by our decoder, ours read by kombu, heartbeats and a
# consumer cancelled by the server. Cases: tests/amqp/amqp_cases.c.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/../integration/services.sh"
. "$HERE/../lib/rabbitmq.sh"
trap 'rabbitmq_stop; rm -rf "$TEST_TMP"' EXIT

CASES=$TEST_TMP/amqp_cases
SAN=()
# grep reads all of nm's output: with -q, nm's SIGPIPE fails the pipeline
if nm "$BUILD_DIR/libceleriac.a" 2>/dev/null | grep ' U __asan_' >/dev/null; then
    SAN=("-fsanitize=address,undefined")
fi
# shellcheck disable=SC2046
if ! cc -std=c11 -Wall -Wextra -Werror -O1 -g "${SAN[@]}" -I"$CELERIAC_ROOT/src" \
    -I"$CELERIAC_ROOT/include" $(pkg-config --cflags hiredis librabbitmq jansson) -o "$CASES" \
    "$HERE/amqp_cases.c" "$BUILD_DIR/libceleriac.a" \
    $(pkg-config --libs hiredis jansson libpq sqlite3 librabbitmq msgpack openssl) -ldl -lm 2>"$TEST_TMP/cc.log"; then
    not_ok "build amqp_cases against libceleriac.a" "$(cat "$TEST_TMP/cc.log")"
    tap_done
fi

if ! rabbitmq_start; then
    not_ok "start a private RabbitMQ"
    tap_done
fi
diag "rabbitmq started in ${RABBITMQ_START_MS} ms on port $RABBITMQ_PORT"
URL=$RABBITMQ_URL
HOSTPORT=127.0.0.1:$RABBITMQ_PORT

# run NAME CASE ARGS...: one C case; its output is shown when it fails.
run() {
    local name=$1 out
    shift
    if out=$("$CASES" "$@" 2>&1); then
        ok "$name"
    else
        not_ok "$name" "$out"
    fi
}

run "connect, login, channel" connect "$URL"
run "wrong password: E_CONFIG naming host and vhost" expect-error \
    "amqp://guest:wrongpass@$HOSTPORT//" E_CONFIG "$HOSTPORT" "vhost '/'" ACCESS_REFUSED
run "wrong vhost: E_CONFIG naming it" expect-error \
    "amqp://guest:guest@$HOSTPORT/nope" E_CONFIG "$HOSTPORT" "vhost 'nope'" NOT_ALLOWED
dead_port=$(free_port)
run "unreachable port: E_CONN_LOST within the timeout" expect-error \
    "amqp://127.0.0.1:$dead_port//?connect_timeout=2" E_CONN_LOST "127.0.0.1:$dead_port"

if out=$("$PY" "$HERE/amqp_py.py" declare "$URL" 2>&1); then
    ok "python celery declares its topology (classic x-max-priority, quorum, pidbox, celeryev)"
else
    not_ok "python celery declares its topology" "$out"
fi
run "our declares match python's (no PRECONDITION_FAILED), quorum adopted" declare-celery "$URL"
run "other arguments: E_PROTOCOL naming the argument, channel recovered" declare-mismatch "$URL"
run "publish with confirms, prefetch 1, ack, reject-requeue, reject-drop, NO_ROUTE" pubsub "$URL"

if "$PY" "$HERE/amqp_py.py" send "$URL" pq >"$TEST_TMP/sent.json" 2>"$TEST_TMP/send.err" &&
    "$CASES" recv-envelope "$URL" pq >"$TEST_TMP/got.out" 2>&1; then
    grep -v '^#' "$TEST_TMP/got.out" >"$TEST_TMP/got.json"
    if out=$("$PY" "$HERE/amqp_py.py" check-recv "$TEST_TMP/sent.json" "$TEST_TMP/got.json" 2>&1); then
        ok "celery send_task over amqp decodes to the same task, id, args, kwargs, priority, reply_to"
    else
        not_ok "celery send_task decodes the same" "$out" "$(cat "$TEST_TMP/got.out")"
    fi
else
    not_ok "celery send_task received" "$(cat "$TEST_TMP/send.err" "$TEST_TMP/got.out" 2>/dev/null)"
fi

if id_json=$("$CASES" send-task "$URL" pq 2>&1); then
    id=$("$PY" -c 'import json,sys; print(json.loads(sys.argv[1].splitlines()[-1])["id"])' "$id_json")
    if out=$("$PY" "$HERE/amqp_py.py" recv "$URL" pq "$id" 2>&1); then
        ok "our envelope published over amqp reads the same in kombu"
    else
        not_ok "our envelope read by kombu" "$out"
    fi
else
    not_ok "publish our envelope" "$id_json"
fi

t0=$SECONDS
run "heartbeat=2: idle 7 s, then a delivery" heartbeat "${URL}?heartbeat=2"
diag "heartbeat case took $((SECONDS - t0)) s"
run "queue deleted under a consumer: -ECANCELED, other consumers go on" cancel "$URL"
run "a forked child cannot use the parent's link" fork "$URL"

rabbitmq_stop
tap_done
