#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_differential_amqp.sh (issue 11): test_differential.sh over RabbitMQ.
# The same client script (differential.py) against the Python reference
# worker and then against celeriac, both consuming from one private RabbitMQ
# node (tests/lib/rabbitmq.sh) one after the other, results in Redis (a
# database for each side). Between the runs `differential.py left` counts
# what the stopped worker left in each queue and deletes the queues and
# exchanges, so celeriac declares everything itself. On top of the Redis
# cases: the messages each worker publishes (a link callback, a chain step,
# a retry through a named exchange), read off queues no worker consumes.
# Cases that cannot apply on AMQP are listed as "# SKIP" lines with the reason.
. "$(dirname "$0")/../integration/services.sh"
. "$(dirname "$0")/../lib/rabbitmq.sh"
. "$(dirname "$0")/differential_lib.sh"

start_redis
start_pg
seed_books_pg || { not_ok "seed the books table"; tap_done; }
rabbitmq_test_start
diag "rabbitmq started in ${RABBITMQ_START_MS} ms on port $RABBITMQ_PORT"

diff_left() { BROKER_URL=$RABBITMQ_URL "$PY" "$DIFF_HERE/differential.py" left "$1"; }
DIFF_AFTER_STOP=diff_left

diff_run_python "" "$RABBITMQ_URL" "redis://127.0.0.1:$REDIS_PORT/1" "$TEST_TMP/py.json"
diff_run_celeriac "" "$RABBITMQ_URL" "redis://127.0.0.1:$REDIS_PORT/2" "$TEST_TMP/c.json"
if [[ -f $TEST_TMP/py.json && -f $TEST_TMP/c.json ]]; then
    run_cases "$PY" "$DIFF_HERE/differential.py" compare "$TEST_TMP/py.json" "$TEST_TMP/c.json"
    [[ -n ${KEEP_DIFF:-} ]] && cp "$TEST_TMP/py.json" "$TEST_TMP/c.json" "$KEEP_DIFF/"
fi
check_worker_logs_clean
tap_done
