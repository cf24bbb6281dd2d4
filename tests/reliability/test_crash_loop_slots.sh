#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_crash_loop_slots.sh (issue 9, point 5, master side): the respawn
# backoff is per slot. While every child of slot 0 segfaults at start (its
# replacements come ever more slowly), slot 1's child killed at that moment
# is replaced at once, its tasks run, and the master answers USR1 promptly:
# one slot's crash loop stalls neither the others nor the master's loop.
. "$(dirname "$0")/lib.sh"

start_redis
build_rel_lib || tap_done
export REL_INIT_SEGV_INDEX=0
start_worker -A "$REL_LIB" -c 2 -b "$REDIS_URL" --result-backend "$REDIS_URL" -n loop2@localhost
unset REL_INIT_SEGV_INDEX
# comm of slot 1's child
slot1_child() { ps -o pid=,comm= --ppid "$WORKER_PID" 2>/dev/null | awk '$2 == "celeriac:child1" {print $1}'; }
_slot1() { [[ -n $(slot1_child) ]]; }
wait_for 20 _slot1 || not_ok "slot 1 has a child" "$(worker_log_tail)"

# Until slot 0 waits 8 s or more between replacements (base 500 ms, doubling).
_long_delay() { log_has 'child 0 keeps dying after [0-9.]+ s; replacing it in ([89][0-9]{3}|[0-9]{5}) ms'; }
if wait_for 60 _long_delay; then
    ok "slot 0 crash-loops with a growing delay ($(grep -oE 'replacing it in [0-9]+ ms' "$WORKER_LOG" | tail -1))"
else
    not_ok "slot 0 crash-loops with a growing delay" "$(worker_log_tail 10)"
fi
deaths0=$(log_count 'child 0 \(pid [0-9]+\) killed by signal 11')
kid=$(slot1_child)
t0=$(date +%s%N)
kill -KILL "$kid"
_slot1_new() { local k; k=$(slot1_child); [[ -n $k && $k != "$kid" ]]; }
if wait_for 10 _slot1_new; then
    ms=$((($(date +%s%N) - t0) / 1000000))
    if ((ms < 4000)); then
        ok "slot 1's killed child is replaced in $ms ms while slot 0 waits 8 s or more"
    else
        not_ok "slot 1's killed child is replaced within 4 s while slot 0 waits" "took $ms ms"
    fi
else
    not_ok "slot 1's killed child is replaced while slot 0 crash-loops" "$(worker_log_tail 10)"
fi
id=$(send rel.pid '[0]')
m=$(meta_of "$id" 10)
expect_eq "a task runs in slot 1 meanwhile" "SUCCESS $(slot1_child)" \
    "$(jget status <<<"$m") $(jget result.pid <<<"$m")" "$(worker_log_tail 10)"
before=$(log_count 'child 1 pid [0-9]+: ')
kill -USR1 "$WORKER_PID"
_status() { (($(log_count 'child 1 pid [0-9]+: ') > before)); }
if wait_for 3 _status; then
    ok "the master answers USR1 at once during the crash loop"
else
    not_ok "the master answers USR1 at once during the crash loop" "$(worker_log_tail 5)"
fi
expect_eq "slot 0 was not respawned faster meanwhile (at most one more death)" yes \
    "$( (($(log_count 'child 0 \(pid [0-9]+\) killed by signal 11') - deaths0 <= 1)) && echo yes || echo no)"
stop_worker TERM 20
expect_eq "the worker stops on SIGTERM with exit 0" 0 "$WORKER_RC" "$(worker_log_tail)"

check_worker_logs_clean
tap_done
