#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_inspect.sh: `celery inspect` (ping, stats with each child's database
# state, registered, active, active(safe=True), query_task, reserved,
# scheduled, revoked, active_queues, conf, report, clock) and `celery control`
# (revoke, rate_limit, time_limit, pool_grow, pool_shrink, shutdown) against a
# celeriac worker, destination and pattern matching, a worker started
# --without-remote-control, and bad control messages (unknown method, bad
# arguments, garbage PUBLISHed on the pidbox channel). cases_inspect.py.
. "$(dirname "$0")/lib.sh"

start_redis
parity_env
parity_cases 150 cases_inspect.py
tap_done
