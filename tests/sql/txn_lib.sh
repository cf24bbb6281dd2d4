# SPDX-License-Identifier: MIT
# txn_lib.sh: sourced (after lib.sh) by the transactional-task tests: Redis
# for results, PostgreSQL as broker and task database, the txn_tasks.c
# library, the ledger table its tasks write, and the crash storm.

N=${TXN_TASKS:-1200}
start_redis
start_pg
SQL_BROKER="sqla+postgresql://postgres@127.0.0.1:$PG_PORT/celeriac"
TXN_LIB=$TEST_TMP/libtxn.so
# shellcheck disable=SC2046
cc -std=c11 -Wall -Wextra -Werror -O1 -g -fPIC -shared -I"$CELERIAC_ROOT/include" \
    $(pkg-config --cflags libpq) -o "$TXN_LIB" "$SQL_DIR/txn_tasks.c" $(pkg-config --libs libpq) \
    2>"$TEST_TMP/txn-cc.log" || { not_ok "build txn_tasks.c" "$(cat "$TEST_TMP/txn-cc.log")"; tap_done; }
psql_db -c "CREATE TABLE ledger (task_id text NOT NULL)" >/dev/null
ledger() { psql_db -c "SELECT count(*), count(DISTINCT task_id) FROM ledger WHERE $1"; }

start_txn_worker() { # NAME FLAGS...
    local name=$1
    shift
    start_worker -A "$TXN_LIB" -b "$SQL_BROKER" --result-backend "$REDIS_URL" --db "$PG_URL" \
        -n "$name@localhost" "$@"
}

# A child is killed only once it has lived STORM_MIN_AGE_US microseconds (from when
# the killer first saw it): time to connect and run tasks, so the storm makes
# progress on a slow machine too. Killed younger, every child could die
# before finishing a task, and the master's crash-loop back-off (rightly)
# would stall the slots. A sanitizer build's child takes about 0.2 s to start.
if ldd "$CELERIAC_BIN" 2>/dev/null | grep -q 'libasan\|libubsan'; then
    STORM_MIN_AGE_US=600000
else
    STORM_MIN_AGE_US=150000
fi

# storm TASK [SECONDS [EVERY [RESTART_AT]]]: sends N tasks (each sleeping
# SECONDS, 0.003), runs a -c 4 worker while a killer SIGKILLs a random child
# at least STORM_MIN_AGE_US old every EVERY seconds (0.2) until every task has a
# result; sets KILLS and OUT. With RESTART_AT, PostgreSQL (the broker too) is
# restarted once RESTART_AT writes are in the ledger, and LEFT_AT_RESTART is
# how many messages kombu_message still held then. By progress, not by time:
# a restart at a fixed instant came after the last task on a quick host, and
# before the first child had connected under the sanitizers.
# shellcheck disable=SC2034 # KILLS, OUT and LEFT_AT_RESTART are for the caller
storm() {
    local task=$1 seconds=${2:-0.003} every=${3:-0.2} restart=${4:-} ids
    rm -f "$TEST_TMP/kills-$task"
    ids=$(sqlc send "$task" --args "[$seconds]" --count "$N")
    start_txn_worker "storm-${task%%.*}" -c 4 --max-worker-lost-requeues 1000
    wait_children 4 20
    KILLS=0
    (
        declare -A seen
        local kid now old
        while kill -0 "$WORKER_PID" 2>/dev/null; do
            sleep "$every"
            now=${EPOCHREALTIME/[.,]/}
            old=()
            for kid in $(worker_children); do
                [[ -n ${seen[$kid]:-} ]] || seen[$kid]=$now
                ((now - seen[$kid] >= STORM_MIN_AGE_US)) && old+=("$kid")
            done
            ((${#old[@]})) && kill -KILL "${old[RANDOM % ${#old[@]}]}" 2>/dev/null &&
                echo kill >>"$TEST_TMP/kills-$task"
        done
    ) &
    local killer=$!
    if [[ -n $restart ]]; then
        wait_for 60 eval '(($(psql_db -c "SELECT count(*) FROM ledger") >= restart))'
        LEFT_AT_RESTART=$(psql_db -c "SELECT count(*) FROM kombu_message")
        restart_pg
    fi
    # shellcheck disable=SC2086
    OUT=$(sqlc wait $ids --timeout 120)
    kill "$killer" 2>/dev/null
    wait "$killer" 2>/dev/null
    KILLS=$(wc -l <"$TEST_TMP/kills-$task" 2>/dev/null || echo 0)
    stop_worker
}
