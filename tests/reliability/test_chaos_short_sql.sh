#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_chaos_short_sql.sh: the chaos run on kombu's SQL transport (`make
# chaos CHAOS_BROKER=sql`) in the shorter form `make test` runs: 2,500 tasks
# instead of 10,000, same faults (random SIGKILLs of children, one restart
# of the PostgreSQL that is the broker and the task database), results in
# Redis.
export CHAOS_BROKER=sql
export CHAOS_TASKS=${CHAOS_TASKS:-2500}
export CHAOS_TIMEOUT=${CHAOS_TIMEOUT:-120}
exec bash "$(dirname "$0")/chaos.sh"
