#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_statedb.sh (issue 10, remote control): --statedb keeps revoked task
# ids across a restart, as Celery's --statedb does: a task revoked before the
# restart is refused after it; an id revoked more than three hours ago is
# dropped from the file and runs; an unusable file stops the worker at once.
. "$(dirname "$0")/lib.sh"

start_redis
build_rel_lib || tap_done
STATE=$TEST_TMP/worker.state
NODE=state@localhost
W=(-A "$REL_LIB" -c 1 -b "$REDIS_URL" --result-backend "$REDIS_URL" -n "$NODE" --statedb "$STATE")

revoked_id=$(cat /proc/sys/kernel/random/uuid)
old_id=$(cat /proc/sys/kernel/random/uuid)
printf '%s %s\n' "$(($(date +%s) - 11000))" "$old_id" >"$STATE"

start_worker "${W[@]}"
wait_children 1 20 || not_ok "worker started" "$(worker_log_tail)"
"$PY" -m celery -b "$REDIS_URL" control revoke "$revoked_id" -d "$NODE" >/dev/null 2>&1
if grep -q "$revoked_id" "$STATE" 2>/dev/null; then
    ok "the revoke is recorded in the state file"
else
    not_ok "the revoke is recorded in the state file" "$(cat "$STATE" 2>&1)"
fi
if grep -q "$old_id" "$STATE"; then
    not_ok "an id revoked over three hours ago is dropped from the file at start" "$(cat "$STATE")"
else
    ok "an id revoked over three hours ago is dropped from the file at start"
fi
stop_worker

start_worker "${W[@]}"
wait_children 1 20 || not_ok "worker restarted" "$(worker_log_tail)"
if log_has "1 revoked task id loaded from --statedb"; then
    ok "the restarted worker loads the revoked id"
else
    not_ok "the restarted worker loads the revoked id" "$(worker_log_tail 5)"
fi
id=$(send rel.pid '[0]' --task-id "$revoked_id")
expect_eq "a task revoked before the restart is REVOKED after it" "REVOKED" \
    "$(meta_of "$revoked_id" 10 | summary | cut -d' ' -f1)" "$(worker_log_tail 5)"
send rel.pid '[0]' --task-id "$old_id" >/dev/null
expect_eq "the expired id runs" "SUCCESS" "$(meta_of "$old_id" 10 | summary | cut -d' ' -f1)"
stop_worker

mkdir -p "$TEST_TMP/a-dir"
"$CELERIAC_BIN" worker -A "$REL_LIB" -b "$REDIS_URL" --statedb "$TEST_TMP/a-dir" -n bad@localhost \
    </dev/null >"$TEST_TMP/bad.log" 2>&1
rc=$?
if [[ $rc == 2 ]] && grep -q "statedb" "$TEST_TMP/bad.log"; then
    ok "an unusable --statedb stops the worker with status 2 and says why"
else
    not_ok "an unusable --statedb stops the worker with status 2" "rc $rc" "$(tail -3 "$TEST_TMP/bad.log")"
fi
tap_done
