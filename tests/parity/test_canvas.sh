#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_canvas.sh: retries (celeriac_retry and autoretry: RETRY states, max
# retries), countdown and ETA held without blocking other tasks, chains,
# link/link_error callbacks, groups, chords on the Redis backend, and Redis
# priorities, all sent with Python Celery's canvas. cases_canvas.py.
. "$(dirname "$0")/lib.sh"

start_redis
parity_env
parity_cases 150 cases_canvas.py
tap_done
