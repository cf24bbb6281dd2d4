#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_db_budget.sh (issue 14, point 3): the database connection budget. A
# private PostgreSQL with max_connections 10 and 3 slots reserved (7 for
# ordinary roles). -c 8 warns once with the numbers and still serves;
# --db-budget strict refuses with exit 2 and one line; a second worker
# counts the first one's connections (the warning, inspect stats, the
# metrics); a server that refuses with "too many clients" makes the child
# back off (one log line for the episode, little CPU), and it serves once
# connections are free. SQLite: no check.
. "$(dirname "$0")/../integration/services.sh"

start_redis
start_pg
cat >>"$PGDATA_DIR/postgresql.conf" <<EOF
max_connections = 10
superuser_reserved_connections = 3
client_connection_check_interval = 200
EOF
restart_pg || exit 1
expect_eq "setup: the server allows 10 connections, 3 reserved" "10|3" \
    "$(psql_admin -c "SELECT current_setting('max_connections'), current_setting('superuser_reserved_connections')" | tr -d ' ')"

log_has() { grep -qE "$1" "${2:-$WORKER_LOG}"; }
log_count() { grep -cE "$1" "${2:-$WORKER_LOG}"; }
celeriac_sessions() {
    psql_admin -c "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'celeriac child %'"
}
ci() { "$CELERIAC_BIN" inspect -b "$REDIS_URL" "$@"; }
adds_ok() { # N: N tasks.add(2, 3) all return 5
    local out
    out=$(client send tasks.add --args '[2, 3]' --count "$1" --timeout 20)
    [[ $(client_values <<<"$out") == "$(printf '5 %.0s' $(seq "$1") | sed 's/ $//')" ]]
}
W=(-b "$REDIS_URL" --result-backend "$REDIS_URL" --db "$PG_URL")

# ---- 1. -c 8 on room for 7: one warning with the numbers, the worker serves --------
start_worker "${W[@]}" -c 8 -n over@localhost
_ready() { log_has "@localhost ready"; }
wait_for 30 _ready || not_ok "the worker became ready" "$(worker_log_tail)"
expect_eq "-c 8 with room for 7: one warning with the numbers" 1 \
    "$(log_count 'connection budget exceeded by 1: this worker opens up to 8 connections to .*, other celeriac workers hold 0 \(fleet total 8\), the server allows 7 \(max_connections 10 minus 3 reserved\)')" \
    "$(grep -E 'budget' "$WORKER_LOG")"
if adds_ok 4; then ok "the worker over budget still serves tasks"; else
    not_ok "the worker over budget still serves tasks" "$(worker_log_tail)"; fi
stop_worker TERM 20
expect_eq "it stops with exit 0" 0 "$WORKER_RC"

# ---- 2. --db-budget strict: exit 2, one line -----------------------------------------
"$CELERIAC_BIN" worker -A "$BOOKS_LIB" "${W[@]}" -c 8 -n strict@localhost --db-budget strict \
    </dev/null >"$TEST_TMP/strict.out" 2>"$TEST_TMP/strict.err"
rc=$?
WORKER_LOGS+=("$TEST_TMP/strict.err") # a sanitizer's report would be there
expect_eq "--db-budget strict over budget: exit 2" 2 "$rc" "$(cat "$TEST_TMP/strict.err")"
expect_eq "... with one line on stderr naming the overrun" "1 1" \
    "$(grep -c budget "$TEST_TMP/strict.err") $(grep -c '^celeriac worker: connection budget exceeded by 1 (--db-budget strict): this worker opens up to 8' "$TEST_TMP/strict.err")" \
    "$(cat "$TEST_TMP/strict.err")"
expect_eq "... and no child was started (no celeriac session on the server)" 0 "$(celeriac_sessions)"
"$CELERIAC_BIN" worker -A "$BOOKS_LIB" "${W[@]}" -c 8 --db-budget sometimes </dev/null \
    >/dev/null 2>"$TEST_TMP/bad.err"
expect_eq "--db-budget with a bad value: exit 2" "2 1" "$? $(wc -l <"$TEST_TMP/bad.err")" \
    "$(cat "$TEST_TMP/bad.err")"

# ---- 3. a second worker counts the first one's connections ---------------------------
start_worker "${W[@]}" -c 2 -n first@localhost
FIRST_PID=$WORKER_PID FIRST_LOG=$WORKER_LOG
_two() { [[ $(celeriac_sessions) == 2 ]]; }
wait_for 20 _two || not_ok "the first worker holds 2 connections" "$(worker_log_tail)"
expect_eq "the first worker is within its budget (an info line, no warning)" "1 0" \
    "$(log_count 'connection budget: this worker opens up to 2 connections') $(log_count 'budget exceeded')"
MPORT=$(free_port)
start_worker "${W[@]}" -c 6 -n second@localhost --metrics "127.0.0.1:$MPORT"
wait_for 30 _ready || not_ok "the second worker became ready" "$(worker_log_tail)"
expect_eq "the second worker's warning counts the first one's 2 connections" 1 \
    "$(log_count 'connection budget exceeded by 1: this worker opens up to 6 connections to .*, other celeriac workers hold 2 \(fleet total 8\), the server allows 7')" \
    "$(grep -E 'budget' "$WORKER_LOG")"
fleet_stats() {
    ci stats --json -t 2 -d second@localhost 2>/dev/null | "$PY" -c '
import json, sys
b = json.load(sys.stdin)["second@localhost"]["celeriac-db-budget"]
print(b["fleet"], b["planned"], b["available"], b["max_connections"])' 2>/dev/null
}
_fleet8() { [[ $(fleet_stats) == "8 6 7 10" ]]; }
if wait_for 20 _fleet8; then
    ok "inspect stats: fleet 8 (both workers, after child 0 counted), planned 6, available 7, max 10"
else
    not_ok "inspect stats: fleet 8, planned 6, available 7, max 10" "got: $(fleet_stats)" \
        "$(ci stats --json -t 2 -d second@localhost 2>&1 | head -c 600)"
fi
M() { "$PY" "$TESTS_DIR/ops/prom.py" "http://127.0.0.1:$MPORT/metrics" get "$@" 2>/dev/null; }
expect_eq "metrics: celeriac_db_connections_fleet 8, celeriac_db_max_connections 10, available 7" \
    "8 10 7" "$(M celeriac_db_connections_fleet) $(M celeriac_db_max_connections) $(M celeriac_db_connections_available)"
check "the exposition still parses" "$PY" "$TESTS_DIR/ops/prom.py" "http://127.0.0.1:$MPORT/metrics" check
stop_worker TERM 20
SECOND_RC=$WORKER_RC
WORKER_PID=$FIRST_PID WORKER_LOG=$FIRST_LOG
stop_worker TERM 20
expect_eq "both stop with exit 0" "0 0" "$SECOND_RC $WORKER_RC"

# ---- 4. "too many clients": back off, one line, little CPU, then serve ---------------
start_worker "${W[@]}" -c 1 -n full@localhost --db-backoff-base 100 --db-backoff-cap 1000
wait_for 30 _ready || not_ok "the worker became ready" "$(worker_log_tail)"
_one() { [[ $(celeriac_sessions) == 1 ]]; }
wait_for 20 _one
HOLDERS=()
hold() { # one superuser session that sleeps (the test's own, stopped by pid)
    psql -X -q "postgresql://postgres@127.0.0.1:$PG_PORT/postgres" -c "$1" \
        -c "SELECT pg_sleep(120)" >/dev/null 2>&1 &
    HOLDERS+=($!)
}
used=$(psql_admin -c "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'")
# the count included its own session: leave one slot for the terminator
for ((i = 0; i < 10 - (used - 1) - 1; i++)); do hold "SELECT 1"; done
sleep 1
hold "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE 'celeriac child 0 %'"
sleep 1
hold "SELECT 1" # takes the slot the child's session left: the server is full
sleep 1
alive=0
for p in "${HOLDERS[@]}"; do kill -0 "$p" 2>/dev/null && alive=$((alive + 1)); done
expect_eq "setup: ${#HOLDERS[@]} sessions held, the child's terminated: the server is full" \
    "${#HOLDERS[@]}" "$alive"
refused_before=$(grep -c 'too many clients' "$PG_LOG")
# (client_connection_check_interval: a holder's backend ends soon after its psql)
# the child finds its session gone before this task and reconnects
client send tasks.add --args '[2, 3]' --timeout 40 >"$TEST_TMP/full.out" 2>&1 &
SENDER=$!
_refused() { [[ $(log_count 'is full: it refuses new connections \(too many clients') -ge 1 ]]; }
wait_for 10 _refused || not_ok "the child reports the full server" "$(worker_log_tail)"
child=$(worker_children)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
t0=$(ticks "$child")
lines0=$(log_count 'too many clients|is full|refuse')
sleep 5
t1=$(ticks "$child")
lines1=$(log_count 'too many clients|is full|refuse')
refused=$(($(grep -c 'too many clients' "$PG_LOG") - refused_before))
if ((refused >= 3)); then ok "the child retries while the server is full ($refused refusals in the server's log)"; else
    not_ok "the child retries while the server is full" "refusals: $refused" "$(worker_log_tail)"; fi
expect_eq "the episode is one log line, not one per attempt" "1 1" "$lines0 $lines1" \
    "$(grep -E 'too many clients|is full|refuse' "$WORKER_LOG")"
if ((t1 - t0 <= 50)); then
    ok "little CPU while backing off ($((t1 - t0)) ticks in 5 s)"
else
    not_ok "little CPU while backing off" "$((t1 - t0)) ticks in 5 s"
fi
for p in "${HOLDERS[@]}"; do kill "$p" 2>/dev/null; done
for p in "${HOLDERS[@]}"; do wait "$p" 2>/dev/null; done
wait "$SENDER"
expect_eq "connections freed: the child connects and the task returns 5" 5 \
    "$(client_values <"$TEST_TMP/full.out")" "$(cat "$TEST_TMP/full.out")" "$(worker_log_tail 8)"
expect_eq "the end of the episode is logged once, with the count" 1 \
    "$(log_count "has a free connection slot again after [0-9]+ refused attempts in [0-9.]+ s \(too many clients\)")" \
    "$(worker_log_tail 8)"
stop_worker TERM 20
expect_eq "it stops with exit 0" 0 "$WORKER_RC"

# ---- SQLite: nothing to count ----------------------------------------------------------
seed_books_sqlite "$TEST_TMP/books.db" >/dev/null
start_worker -b "$REDIS_URL" --result-backend "$REDIS_URL" --db "sqlite://$TEST_TMP/books.db" -c 1 \
    -n lite@localhost
wait_for 30 _ready || not_ok "the SQLite worker became ready" "$(worker_log_tail)"
expect_eq "SQLite: no budget line" 0 "$(log_count 'connection budget')" "$(grep 'connection budget' "$WORKER_LOG")"
stop_worker TERM 20

check_worker_logs_clean
tap_done
