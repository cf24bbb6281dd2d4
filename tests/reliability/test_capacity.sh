#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_capacity.sh (issue 9, point 9): children that cannot connect at start
# (PostgreSQL refuses them: a role's CONNECTION LIMIT, as "too many clients")
# used to exit "cannot serve" and never be replaced, leaving the worker at 2
# of 4 children for good. Once some child serves, those slots are retried
# with backoff, quietly (one log line for the shortage, not one per try), and
# the worker is back to 4 serving children once the database has room.
. "$(dirname "$0")/lib.sh"

start_redis
start_pg
build_rel_lib || tap_done
psql_admin -c "CREATE ROLE capped LOGIN CONNECTION LIMIT 2" >/dev/null
CAPPED_URL="postgresql://capped@127.0.0.1:$PG_PORT/celeriac"
capped_backends() {
    psql_admin -c "SELECT count(*) FROM pg_stat_activity WHERE usename = 'capped'"
}
refusals() { grep -c 'too many connections for role "capped"' "$PG_LOG"; }
# every worker log line about the shortage or a failed connect
noise() { log_count 'cannot serve|unreachable after|too many connections|retrying'; }

start_worker -A "$REL_LIB" -c 4 -b "$REDIS_URL" --result-backend "$REDIS_URL" --db "$CAPPED_URL" \
    --db-connect-attempts 2 --db-backoff-base 100 --db-backoff-cap 200 -n capacity@localhost
_ready() { log_has "capacity@localhost ready"; }
_two_gave_up() { [[ $(log_count 'child [0-9]+ \(pid [0-9]+\) cannot serve') == 2 ]]; }
wait_for 30 _ready || not_ok "worker became ready" "$(worker_log_tail)"
if wait_for 30 _two_gave_up && worker_alive; then
    ok "setup: 2 of 4 children could not connect (role connection limit 2); the worker serves with 2"
else
    not_ok "setup: 2 of 4 children could not connect; the worker serves with 2" \
        "backends $(capped_backends)" "$(worker_log_tail 15)"
fi
expect_eq "setup: 2 connections of the capped role" 2 "$(capped_backends)"

# Several retries fail in the next seconds: they must be quiet.
_episode_logged() { log_has '[12] of 4 children cannot serve; retrying each with backoff \(next attempt in [0-9.]+ s\)'; }
wait_for 10 _episode_logged
before_noise=$(noise) before_refusals=$(refusals)
sleep 6
after_noise=$(noise) after_refusals=$(refusals)
if ((after_refusals > before_refusals)); then
    ok "the slots that could not serve are retried ($((after_refusals - before_refusals)) refused tries in 6 s)"
else
    not_ok "the slots that could not serve are retried" "PostgreSQL refusals: $before_refusals -> $after_refusals" \
        "$(worker_log_tail 10)"
fi
expect_eq "the shortage is logged once, with the count and the next attempt" 1 \
    "$(log_count 'of 4 children cannot serve; retrying each with backoff \(next attempt in [0-9.]+ s\)')" \
    "$(grep -E 'cannot serve' "$WORKER_LOG")"
expect_eq "failed retries add no log line" "$before_noise" "$after_noise" \
    "$(grep -E 'cannot serve|unreachable after|too many connections|retrying' "$WORKER_LOG" | tail -5)"
if worker_alive; then ok "the worker keeps serving meanwhile"; else not_ok "the worker keeps serving meanwhile" "$(worker_log_tail)"; fi

# The database has room again: within the retry backoff (cap 30 s), 4 children serve.
psql_admin -c "ALTER ROLE capped CONNECTION LIMIT -1" >/dev/null
_full() { [[ $(capped_backends) == 4 && $(worker_children | wc -w) == 4 ]]; }
t0=$SECONDS
if wait_for 60 _full; then
    ok "once the role has room, the worker is back to 4 children with 4 connections ($((SECONDS - t0)) s)"
else
    not_ok "once the role has room, the worker is back to 4 children with 4 connections" \
        "children $(worker_children), backends $(capped_backends)" "$(worker_log_tail 10)"
fi
_recovered() { log_has 'all 4 children serve again'; }
if wait_for 10 _recovered; then
    ok "the end of the shortage is logged ($(grep -oE 'all 4 children serve again.*' "$WORKER_LOG" | head -1))"
else
    not_ok "the end of the shortage is logged" "$(worker_log_tail 10)"
fi
ids=()
# each sleeps 4 s: a child that has just reconnected may take a moment to
# consume on a loaded machine, and must still find a task nobody took
for _ in 1 2 3 4; do ids+=("$(send rel.pid '[4]')"); done
pids=$(for id in "${ids[@]}"; do meta_of "$id" 30 | jget result.pid; done | sort -u | wc -l)
expect_eq "4 tasks sent together run in 4 different children" 4 "$pids"
stop_worker TERM 20
expect_eq "the worker stops on SIGTERM with exit 0" 0 "$WORKER_RC" "$(worker_log_tail)"

check_worker_logs_clean
tap_done
