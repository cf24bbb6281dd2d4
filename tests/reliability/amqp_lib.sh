# SPDX-License-Identifier: MIT
# amqp_lib.sh: sourced by the reliability tests on RabbitMQ. Everything in
# lib.sh and tests/lib/rabbitmq.sh, plus rel_amqp_start: Redis (results in
# db 1), PostgreSQL with the rel_runs table rel.record writes, the task
# library, and a private RabbitMQ node; exports BROKER_URL and RESULT_URL
# (rel.py publishes to BROKER_URL) and sets W, the worker flags they share.
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
. "$(dirname "${BASH_SOURCE[0]}")/../lib/rabbitmq.sh"

rel_amqp_start() {
    start_redis
    start_pg
    build_rel_lib || tap_done
    rabbitmq_test_start
    diag "RabbitMQ started in ${RABBITMQ_START_MS} ms on port $RABBITMQ_PORT"
    BROKER_URL=$RABBITMQ_URL
    RESULT_URL="redis://127.0.0.1:$REDIS_PORT/1"
    export BROKER_URL RESULT_URL
    psql_db -c "CREATE TABLE rel_runs (task_id text NOT NULL, pid int NOT NULL)" >/dev/null
    W=(-A "$REL_LIB" -b "$BROKER_URL" --result-backend "$RESULT_URL" --db "$PG_URL")
}
