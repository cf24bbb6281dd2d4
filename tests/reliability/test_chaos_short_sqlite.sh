#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_chaos_short_sqlite.sh: the chaos run on kombu's SQL transport in an
# SQLite file (`make chaos CHAOS_BROKER=sqlite`) in the shorter form `make
# test` runs: 2,000 tasks instead of 10,000, same faults (random SIGKILLs of
# children, one restart of the books' PostgreSQL, the file's write lock held
# by another process for 12 s), results in Redis.
export CHAOS_BROKER=sqlite
export CHAOS_TASKS=${CHAOS_TASKS:-2000}
export CHAOS_TIMEOUT=${CHAOS_TIMEOUT:-120}
exec bash "$(dirname "$0")/chaos.sh"
