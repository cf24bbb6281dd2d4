#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_fleet.sh: a mixed fleet, one Python Celery worker (pyfleet.py) and one
# celeriac worker on the same Redis: `celery inspect`/`control` see and steer
# both, Python-sent tasks are shared, `celeriac call` messages are run by the
# Python worker, a chain crosses both. cases_fleet.py.
. "$(dirname "$0")/lib.sh"

start_redis
parity_env
parity_cases 150 cases_fleet.py
tap_done
