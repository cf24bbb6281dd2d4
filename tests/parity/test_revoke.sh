#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_revoke.sh: `celery control revoke` (a held countdown task, an id
# revoked before it is sent, several ids), expiry, and revoke with terminate
# (`control.revoke(terminate=True)`, `celery control terminate`) of a running
# task: REVOKED TaskRevokedError('terminated') and a new child. cases_revoke.py.
. "$(dirname "$0")/lib.sh"

start_redis
parity_env
parity_cases 120 cases_revoke.py
tap_done
