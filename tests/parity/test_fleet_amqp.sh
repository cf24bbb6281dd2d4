#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_fleet_amqp.sh (issue 11): the mixed fleet of test_fleet.sh on a private
# RabbitMQ (results in Redis): one Python Celery worker and one celeriac
# worker; `celery inspect`/`control` reach both through the celery.pidbox
# exchange, `celery events` sees both on celeryev, tasks are shared, a chain
# crosses both, revoke and shutdown work. cases_fleet.py.
. "$(dirname "$0")/lib.sh"
. "$CELERIAC_ROOT/tests/lib/rabbitmq.sh"

start_redis
rabbitmq_test_start
parity_env
export BROKER_URL=$RABBITMQ_URL
parity_cases 150 cases_fleet.py
tap_done
