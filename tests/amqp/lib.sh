# SPDX-License-Identifier: MIT
# shellcheck shell=bash
# lib.sh: sourced by tests/amqp/test_amqp_worker.sh and test_amqp_tls.sh:
# reliability/lib.sh (services, workers, TAP), the private RabbitMQ, and the
# task library of amqp_tasks.c built into $LIB (or "not ok" and the end).
. "$(dirname "${BASH_SOURCE[0]}")/../reliability/lib.sh"
. "$(dirname "${BASH_SOURCE[0]}")/../lib/rabbitmq.sh"
HERE=$CELERIAC_ROOT/tests/amqp

LIB=$TEST_TMP/libamqpt.so
if ! cc -std=c11 -Wall -Wextra -Werror -O1 -g -fPIC -shared -I"$CELERIAC_ROOT/include" \
    -o "$LIB" "$HERE/amqp_tasks.c" 2>"$TEST_TMP/cc.log"; then
    not_ok "build the amqp task library" "$(cat "$TEST_TMP/cc.log")"
    tap_done
fi
