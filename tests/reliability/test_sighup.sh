#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_sighup.sh (issue 9, point 10c; issue 13, point 5): SIGHUP used to
# kill the master (the default action) with no log line. It now reloads the
# task library (tests/ops/test_reload.sh tests that in depth): the master
# keeps running, a hangup sent to the whole process group (as a closed
# terminal does) kills no child, the running task finishes, and the children
# are replaced once it has.
. "$(dirname "$0")/lib.sh"

start_redis
build_rel_lib || tap_done
W=(-A "$REL_LIB" -c 2 -b "$REDIS_URL" --result-backend "$REDIS_URL")

start_worker "${W[@]}" -n hup@localhost
wait_children 2 20 || not_ok "worker started 2 children" "$(worker_log_tail)"
_ctl_up() { [[ -n $(control_pid) ]]; }
wait_for 20 _ctl_up || diag "no control process: $(worker_log_tail 5)"
before=$(worker_all_children)
id=$(send rel.pid '[2]')
wait_running 0 || diag "the task did not start: queue $(queue_len), unacked $(unacked_count)"

# HUP to the master, then to every process it forked, as a terminal hangup would.
kill -HUP "$WORKER_PID"
for p in $before; do kill -HUP "$p" 2>/dev/null; done
sleep 1
if worker_alive; then
    ok "SIGHUP: the master is still running"
else
    wait "$WORKER_PID" 2>/dev/null
    not_ok "SIGHUP: the master is still running" "exit status $?" "$(worker_log_tail 10)"
    WORKER_PID=
fi
expect_eq "SIGHUP: one log line says the library is loaded again" 1 \
    "$(log_count 'reload: task library .* loaded again')" "$(worker_log_tail 10)"
m=$(meta_of "$id" 15)
expect_eq "SIGHUP: the task running at the time finishes with SUCCESS" SUCCESS \
    "$(jget status <<<"$m")" "$m" "$(worker_log_tail 10)"
_reloaded() { log_has 'reload: done in'; }
wait_for 20 _reloaded || diag "the reload did not end: $(worker_log_tail 10)"
_ctl_back() { [[ -n $(control_pid) ]]; }
wait_for 10 _ctl_back
after=$(worker_all_children)
common=$(comm -12 <(tr ' ' '\n' <<<"$before" | sort) <(tr ' ' '\n' <<<"$after" | sort) | wc -l)
expect_eq "SIGHUP: the children and the control process were replaced after the task" "3 0" \
    "$(wc -w <<<"$after") $common" "before: $before" "after: $after"
id=$(send rel.pid '[0]')
expect_eq "SIGHUP: the worker still runs new tasks" SUCCESS "$(meta_of "$id" 15 | jget status)"
stop_worker TERM 20
expect_eq "SIGHUP: the worker then stops on SIGTERM with exit 0" 0 "$WORKER_RC" "$(worker_log_tail)"

check_worker_logs_clean
tap_done
