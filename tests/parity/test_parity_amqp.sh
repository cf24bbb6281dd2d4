#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_parity_amqp.sh (issue 11): the canvas, revoke and events parity cases
# (cases_canvas.py, cases_revoke.py, cases_events.py, as test_canvas.sh,
# test_revoke.sh and test_events.sh run them on Redis) against celeriac
# workers consuming from a private RabbitMQ, results in Redis: the same
# Python client code and the same expectations on both brokers.
. "$(dirname "$0")/lib.sh"
. "$CELERIAC_ROOT/tests/lib/rabbitmq.sh"

start_redis
rabbitmq_test_start
parity_env
# One vhost per case file: what one leaves (queues, a worker that did not
# stop) cannot take another's messages, as each has its own Redis there.
for cases in cases_canvas.py cases_revoke.py cases_events.py; do
    vhost=${cases%.py}
    rabbitmq_ctl add_vhost "$vhost" >/dev/null
    rabbitmq_ctl set_permissions -p "$vhost" guest ".*" ".*" ".*" >/dev/null
    export BROKER_URL="amqp://guest:guest@127.0.0.1:$RABBITMQ_PORT/$vhost"
    diag "---- $cases on RabbitMQ (vhost $vhost)"
    parity_cases 150 "$cases"
done
tap_done
