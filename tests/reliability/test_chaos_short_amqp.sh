#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_chaos_short_amqp.sh: the chaos run on RabbitMQ (`make chaos
# CHAOS_BROKER=amqp`) in the shorter form `make test` runs: 2,000 tasks
# instead of 10,000, same faults (random SIGKILLs of children, one PostgreSQL
# and one RabbitMQ restart on its data directory), results in Redis.
export CHAOS_BROKER=amqp
export CHAOS_TASKS=${CHAOS_TASKS:-2000}
export CHAOS_TIMEOUT=${CHAOS_TIMEOUT:-200}
exec bash "$(dirname "$0")/chaos.sh"
