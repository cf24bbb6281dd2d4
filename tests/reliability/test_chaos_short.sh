#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_chaos_short.sh: the chaos run (chaos.sh, `make chaos`) in the shorter
# form `make test` runs: 2,000 tasks instead of 10,000, same faults (random
# SIGKILLs of children, one PostgreSQL and one Redis restart).
export CHAOS_TASKS=${CHAOS_TASKS:-2000}
export CHAOS_TIMEOUT=${CHAOS_TIMEOUT:-200}
exec bash "$(dirname "$0")/chaos.sh"
