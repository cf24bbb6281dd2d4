#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_chaos_early.sh: the chaos run (chaos.sh) on an early-ack worker, which
# keeps no unacked record: 2,000 tasks under random SIGKILLs of children and
# one PostgreSQL and one Redis restart; every id must get a result and only
# tasks running at a kill may fail (WorkerLostError).
export CHAOS_ACKS=early
export CHAOS_TASKS=${CHAOS_TASKS:-2000}
export CHAOS_TIMEOUT=${CHAOS_TIMEOUT:-200}
exec bash "$(dirname "$0")/chaos.sh"
