#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_events.sh: a celeriac worker's events (worker-online, worker-heartbeat
# every 2 s, worker-offline; with -E task-received/started/succeeded/failed/
# retried/revoked; enable_events/disable_events/heartbeat) as Celery's
# EventReceiver + celery.events.state.State and `celery events --dump` see
# them. cases_events.py.
. "$(dirname "$0")/lib.sh"

start_redis
parity_env
parity_cases 120 cases_events.py
tap_done
