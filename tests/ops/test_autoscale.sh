#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_autoscale.sh (issue 13, point 8): --autoscale 4,1 starts one child,
# grows to four under a burst of slow tasks (every child busy, look after
# look), each new child opening its own database connection, and shrinks
# back to one after AUTOSCALE_KEEPALIVE seconds idle (Celery's variable,
# 30 s by default; 3 here). No task is lost.
. "$(dirname "$0")/lib.sh"

start_redis
start_pg
psql_db -c "CREATE TABLE ops_runs (task_id text, version text, pid int, backend int)" >/dev/null
LIB=$(build_ops_lib libops-v1 -DOPS_VERSION='"v1"') || tap_done

bad=$("$CELERIAC_BIN" worker -A "$LIB" --autoscale 2,5 2>&1)
expect_eq "--autoscale 2,5 (MIN > MAX): exit 2" 2 "$?" "$bad"
check "--autoscale 2,5: one line says why" grep -q "MIN is larger than MAX" <<<"$bad"

export AUTOSCALE_KEEPALIVE=3
start_worker -A "$LIB" --autoscale 4,1 -b "$REDIS_URL" --result-backend "$REDIS_URL" \
    --db "$PG_URL" -n autoscale@localhost
wait_children 1 20 || not_ok "worker started" "$(worker_log_tail)"
sleep 1
expect_eq "--autoscale 4,1: one child at start" 1 "$(worker_children | wc -w)"

N=32
ops flow ops.version "$N" 1000 --out "$TEST_TMP/burst.ids" --args '[1200]'
most=0 seen=""
for ((i = 0; i < 200; i++)); do # until the pool reaches 4, at most 20 s
    k=$(worker_children)
    seen+="$k "
    n=$(wc -w <<<"$k")
    ((n > most)) && most=$n
    ((most == 4)) && break
    sleep 0.1
done
expect_eq "a burst of slow tasks grows the pool to 4 children" 4 "$most" "$(grep autoscale "$WORKER_LOG")"
expect_eq "it grew one child at a time (3 log lines)" 3 "$(log_count 'autoscale: every child busy; growing')"
t=$(ops tally "$TEST_TMP/burst.ids" --timeout 40)
expect_eq "no task lost: all $N ended SUCCESS" "$N" "$(jget status.SUCCESS <<<"$t")" "$t"
expect_eq "each ran once" "$N" "$(psql_db -c 'SELECT count(*) FROM ops_runs')"
pids=$(psql_db -c "SELECT DISTINCT pid FROM ops_runs")
for p in $(tr ' ' '\n' <<<"$seen" | sort -u); do
    check "child $p opened its own database connection after fork" \
        log_has "database connection to .* opened by pid $p "
done
expect_eq "the burst ran in 4 processes" 4 "$(wc -w <<<"$pids")"
t0=$SECONDS
wait_children 1 15 || not_ok "idle: back to one child" "$(worker_children)" "$(worker_log_tail 8)"
diag "back to one child $((SECONDS - t0)) s after the burst ended (keepalive 3 s)"
expect_eq "idle: the pool shrank back to 1 after the keepalive" 1 "$(worker_children | wc -w)"
check "one log line says it shrank" log_has 'autoscale: idle for [0-9]+ s; shrinking the pool to 1'
id=$(send ops.version '[0]')
expect_eq "the shrunk pool still runs tasks" v1 "$(result_of "$id")"
expect_eq "no error logged" 0 "$(grep -cE 'ERROR|CRITICAL' "$WORKER_LOG")" \
    "$(grep -E 'ERROR|CRITICAL' "$WORKER_LOG" | head -5)"
stop_worker TERM 20
expect_eq "the worker stops on SIGTERM with exit 0" 0 "$WORKER_RC" "$(worker_log_tail)"
check_worker_logs_clean
tap_done
