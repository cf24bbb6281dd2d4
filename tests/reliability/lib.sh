# SPDX-License-Identifier: MIT
# lib.sh: sourced by tests/reliability/*.sh. Everything in
# tests/integration/services.sh (throwaway Redis and PostgreSQL, the worker,
# TAP lines, cleanup by pid), plus: the misbehaving task library
# (rel_tasks.c), rel.py, a Redis with AOF that can be restarted on the same
# port, and small readers of results and of the unacked bookkeeping.
. "$(dirname "${BASH_SOURCE[0]}")/../integration/services.sh"
REL_DIR=$CELERIAC_ROOT/tests/reliability

# worker_children (services.sh) counts pool children only, not the control process.

# every process the master forked (pool children and the control process)
worker_all_children() {
    ps -o pid= --ppid "${1:-$WORKER_PID}" 2>/dev/null | tr -d ' ' | sort -n | tr '\n' ' ' | sed 's/ $//'
}

# build_rel_lib [early]: compiles rel_tasks.c into $TEST_TMP/librel.so (REL_LIB);
# with "early", into librel-early.so, where no task acks late (plain-pop mode).
build_rel_lib() {
    local variant=() name=librel.so
    [[ ${1:-} == early ]] && variant=(-DREL_EARLY_ONLY) name=librel-early.so
    REL_LIB=$TEST_TMP/$name
    [[ -f $REL_LIB ]] && return 0
    # shellcheck disable=SC2046
    if ! cc -std=c11 -Wall -Wextra -Werror -O1 -g -fPIC -shared -I"$CELERIAC_ROOT/include" \
        "${variant[@]}" $(pkg-config --cflags libpq) -o "$REL_LIB" "$REL_DIR/rel_tasks.c" \
        $(pkg-config --libs libpq) 2>"$TEST_TMP/rel-cc.log"; then
        not_ok "build the reliability task library" "$(cat "$TEST_TMP/rel-cc.log")"
        return 1
    fi
}

rel() { # rel.py ARGS...
    REDIS_URL=$REDIS_URL RESULT_URL=${RESULT_URL:-$REDIS_URL} "$PY" "$REL_DIR/rel.py" "$@"
}

# send NAME [ARGS_JSON] [rel.py send options]: prints the task id.
send() {
    local name=$1 args=${2:-[]}
    shift 2 2>/dev/null || shift $#
    rel send "$name" --args "$args" "$@"
}

# meta_of ID [TIMEOUT]: the stored meta once the task is ready ("null" if not in time).
meta_of() {
    rel wait "$1" --timeout "${2:-30}"
}

# summary <<<META: "STATUS result" or "STATUS exc_type(exc_module)".
summary() {
    "$PY" -c '
import json, sys
m = json.loads(sys.stdin.read() or "null")
if not m:
    print("none"); sys.exit(0)
r = m.get("result")
if m.get("status") == "FAILURE" and isinstance(r, dict):
    print("FAILURE %s(%s)" % (r.get("exc_type"), r.get("exc_module")))
else:
    print("%s %s" % (m.get("status"), json.dumps(r, separators=(",", ":"))))'
}

unacked_count() { echo "$(redis_cli hlen unacked) $(redis_cli zcard unacked_index)"; }
queue_len() { redis_cli llen "${1:-celery}"; }

# only_child: the worker's (first) child; tests that need "the busy child" use -c 1.
only_child() { worker_children | cut -d' ' -f1; }

# wait_running EXPECTED_UNACKED [TIMEOUT]: until the queue is empty and the
# unacked hash holds EXPECTED_UNACKED entries (0: early-acked task started,
# 1: late-ack task popped), plus a moment for the task to get going.
wait_running() {
    _running() { [[ $(queue_len) == 0 && $(redis_cli hlen unacked) == "$1" ]]; }
    wait_for "${2:-15}" _running "$1" || return 1
    sleep 0.3
}

# wait_replaced OLD_PID [N] [TIMEOUT]: until the worker has N children again, none OLD_PID.
wait_replaced() {
    _replaced_now() { local k; k=$(worker_children); [[ $(wc -w <<<"$k") == "$2" && " $k " != *" $1 "* ]]; }
    wait_for "${3:-20}" _replaced_now "$1" "${2:-1}"
}

# expect_ran_in_replacement NAME KILLED_PID META: one case, the task's result
# (rel.pid's {"pid"}) came from a process other than the one killed.
expect_ran_in_replacement() {
    local ran_in
    ran_in=$(jget result.pid <<<"$3")
    if [[ $ran_in != "$2" && $ran_in != "<missing>" ]]; then
        ok "$1 (pid $ran_in)"
    else
        not_ok "$1" "ran in $ran_in, killed $2"
    fi
}

# log_has REGEX [LOG]: the worker log (default: current) has a matching line.
log_has() { grep -qE "$1" "${2:-$WORKER_LOG}"; }
log_count() { grep -cE "$1" "${2:-$WORKER_LOG}"; }

# ---- a Redis with persistence, restartable on the same port ----------------
# start_redis_aof: like start_redis but appendonly yes / appendfsync always.
start_redis_aof() {
    local dir=$TEST_TMP/redis
    mkdir -p "$dir"
    REDIS_PORT=${REDIS_PORT:-$(free_port)}
    REDIS_PASSWORD=
    {
        echo "port $REDIS_PORT"
        echo "bind 127.0.0.1"
        echo "unixsocket $dir/redis.sock"
        echo "unixsocketperm 700"
        echo "pidfile $dir/redis.pid"
        echo "dir $dir"
        echo "logfile $dir/redis.log"
        echo "save ''"
        echo "appendonly yes"
        echo "appendfsync always"
        echo "enable-debug-command local"
        echo "daemonize no"
        echo "databases 16"
    } >"$dir/redis.conf"
    _redis_aof_launch
    REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
    export REDIS_PORT REDIS_URL REDIS_PID REDIS_PASSWORD
}

_redis_aof_launch() {
    local dir=$TEST_TMP/redis
    redis-server "$dir/redis.conf" </dev/null >/dev/null 2>&1 &
    REDIS_PID=$!
    _svc_record_pid "$REDIS_PID" redis
    if ! wait_for 30 redis_cli ping; then
        echo "not ok - setup: redis-server (AOF) did not answer on port $REDIS_PORT"
        tail -20 "$dir/redis.log" 2>/dev/null | sed 's/^/#   /'
        exit 1
    fi
    wait_for 60 _redis_loaded
}
_redis_loaded() { [[ $(redis_cli info persistence 2>/dev/null | tr -d '\r' | grep '^loading:') == loading:0 ]]; }

# restart_redis_aof [DOWN_SECONDS]: TERM (Redis fsyncs the AOF and exits),
# stay down DOWN_SECONDS, start again on the same port with the same data.
restart_redis_aof() {
    local down=${1:-1}
    stop_redis
    sleep "$down"
    _redis_aof_launch
}

# stop_pg / start_pg_again are in services.sh; restart with a pause:
restart_pg_down() { # DOWN_SECONDS
    stop_pg fast
    sleep "${1:-1}"
    start_pg_again
}

# The PostgreSQL backend pid whose application_name names client pid $1.
backend_of() {
    psql_admin -c "SELECT pid FROM pg_stat_activity
                   WHERE application_name ~ ('^celeriac .* pid ' || '$1' || '( |\$)')"
}
celeriac_backends() {
    psql_admin -c "SELECT pid || ' ' || application_name || ' ' || state || ' ' || left(query, 60)
                   FROM pg_stat_activity WHERE application_name LIKE 'celeriac%' ORDER BY 1"
}

# cpu_ticks PID...: user + system CPU of the processes so far, in clock ticks
# (1/100 s); a pid that is gone counts 0.
cpu_ticks() {
    local pid sum=0 f
    for pid in "$@"; do
        f=$(cut -d')' -f2- "/proc/$pid/stat" 2>/dev/null) || continue
        # after "comm)": state is field 1, utime 12, stime 13
        sum=$((sum + $(awk '{print $12 + $13}' <<<"$f")))
    done
    echo "$sum"
}

# redis_commands_sent SECONDS: commands clients send to Redis during SECONDS
# (MONITOR, less what scripts run inside: those are one command sent).
redis_commands_sent() {
    timeout "$1" redis-cli -p "$REDIS_PORT" monitor 2>/dev/null |
        grep -v -e ' lua\]' -e '"monitor"' -c
}

# log_bytes [LOG]: the size of the worker log.
log_bytes() { stat -c %s "${1:-$WORKER_LOG}" 2>/dev/null || echo 0; }

# rate_limit NODE RATE: the real `celery control rate_limit rel.pid`; prints its reply.
rate_limit() {
    "$PY" -m celery -b "$REDIS_URL" control -d "$1" rate_limit rel.pid "$2" 2>&1
}
