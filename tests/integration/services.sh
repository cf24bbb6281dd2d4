# SPDX-License-Identifier: MIT
# services.sh: sourced by integration and interop tests. Gives each test file a
# private temporary directory, a throwaway Redis and PostgreSQL on free
# loopback ports, helpers to start and stop the real worker, TAP-style result
# lines, and an EXIT trap that stops everything it started, by pid.
#
# It deliberately does not touch any system-wide service, and never kills a
# process it did not start itself.
#
# Usage in a test file:
#   . "$(dirname "$0")/../integration/services.sh"
#   start_redis; start_pg; seed_books_pg
#   start_worker -c 2 --db "$PG_URL"
#   ok "name" / not_ok "name" "detail"...; check "name" cmd...
#   tap_done

# ---- paths ----------------------------------------------------------------
CELERIAC_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${BUILD:-build}
case "$BUILD" in /*) BUILD_DIR=$BUILD ;; *) BUILD_DIR=$CELERIAC_ROOT/$BUILD ;; esac
CELERIAC_BIN=${CELERIAC_BIN:-$BUILD_DIR/celeriac}
BOOKS_LIB=${BOOKS_LIB:-$BUILD_DIR/examples/libbooks.so}
BOOKS_DIR=$CELERIAC_ROOT/examples/books
PY=/usr/bin/python3
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
TESTS_DIR=$CELERIAC_ROOT/tests
export PYTHONPATH="$TESTS_DIR/integration${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1

# Sanitizer builds: report to stderr (the worker log) and make leaks fatal.
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=0:detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}

TEST_TMP=$(mktemp -d "${TMPDIR:-/tmp}/celeriac-test.XXXXXX")
chmod 755 "$TEST_TMP" # the postgres user must be able to reach its subdirectory
# Workers' scoreboard files (what `celeriac status` reads) stay in here, not /dev/shm.
export CELERIAC_RUNTIME_DIR=$TEST_TMP

# Every pid this file starts: "pid kind" lines. run-all.sh may also read it
# (CELERIAC_PIDS_FILE) to stop leftovers of a test killed by its timeout.
SVC_PIDS_FILE=${CELERIAC_PIDS_FILE:-$TEST_TMP/pids}
: >>"$SVC_PIDS_FILE"

_svc_record_pid() { # pid kind
    echo "$1 $2" >>"$SVC_PIDS_FILE"
}

# True if pid is alive and is (still) the kind of process we started.
_svc_pid_is() { # pid kind
    local pid=$1 kind=$2 cmd
    [[ -r /proc/$pid/cmdline ]] || return 1
    cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    [[ -n $cmd ]] || return 1 # zombie
    case "$kind" in
    redis) [[ $cmd == *redis-server* ]] ;;
    postgres) [[ $cmd == *postgres* ]] ;;
    worker) [[ $cmd == *celeriac* ]] ;;
    *) [[ $cmd == *"$kind"* ]] ;;
    esac
}

# ---- TAP-style results ------------------------------------------------------
TAP_PASSED=0
TAP_FAILED=0

ok() { # name
    echo "ok - $1"
    TAP_PASSED=$((TAP_PASSED + 1))
}

not_ok() { # name [detail lines...]
    echo "not ok - $1"
    shift
    local line
    for line in "$@"; do
        printf '%s\n' "$line" | sed 's/^/#   /'
    done
    TAP_FAILED=$((TAP_FAILED + 1))
}

diag() { # lines...
    printf '%s\n' "$@" | sed 's/^/# /'
}

# check NAME CMD...: ok when CMD succeeds, not ok with CMD's output otherwise.
check() {
    local name=$1 out
    shift
    if out=$("$@" 2>&1); then
        ok "$name"
    else
        not_ok "$name" "command: $*" "$out"
    fi
}

# expect_eq NAME EXPECTED GOT [detail...]
expect_eq() {
    local name=$1 want=$2 got=$3
    shift 3
    if [[ "$want" == "$got" ]]; then
        ok "$name"
    else
        not_ok "$name" "expected: $want" "got:      $got" "$@"
    fi
}

# Ends the test file: exit 1 if any case failed, or if none ran.
tap_done() {
    TAP_DONE=1
    if ((TAP_PASSED + TAP_FAILED == 0)); then
        echo "not ok - $(basename "$0") ran no case"
        exit 1
    fi
    ((TAP_FAILED == 0))
    exit $?
}

# ---- small helpers ----------------------------------------------------------
# A TCP port on 127.0.0.1 that nothing listens on right now, below the
# kernel's ephemeral range (tests/lib/free_port.py says why).
free_port() { "$PY" "$TESTS_DIR/lib/free_port.py"; }

# wait_for TIMEOUT_SECONDS CMD...: poll CMD every 0.1 s until it succeeds.
wait_for() {
    local timeout=$1
    shift
    local deadline=$((SECONDS + timeout))
    while :; do
        "$@" >/dev/null 2>&1 && return 0
        ((SECONDS >= deadline)) && return 1
        sleep 0.1
    done
}

# wait_pid_gone TIMEOUT PID: for processes that are not our children.
wait_pid_gone() {
    local timeout=$1 pid=$2 i
    for ((i = 0; i < timeout * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        # a zombie child of ours counts as gone
        [[ $(ps -o stat= -p "$pid" 2>/dev/null) == Z* ]] && return 0
        sleep 0.1
    done
    ! kill -0 "$pid" 2>/dev/null
}

# ---- Redis --------------------------------------------------------------------
# start_redis [PASSWORD]: private redis-server, no persistence. Exports
# REDIS_PORT, REDIS_URL (db 0, with the password if given), REDIS_PID.
start_redis() {
    local password=${1:-}
    local dir=$TEST_TMP/redis
    mkdir -p "$dir"
    REDIS_PORT=$(free_port)
    REDIS_PASSWORD=$password
    {
        echo "port $REDIS_PORT"
        echo "bind 127.0.0.1"
        echo "unixsocket $dir/redis.sock"
        echo "unixsocketperm 700"
        echo "pidfile $dir/redis.pid"
        echo "dir $dir"
        echo "logfile $dir/redis.log"
        echo "save ''"
        echo "appendonly no"
        echo "daemonize no"
        echo "databases 16"
        [[ -n $password ]] && echo "requirepass $password"
    } >"$dir/redis.conf"
    redis-server "$dir/redis.conf" </dev/null >/dev/null 2>&1 &
    REDIS_PID=$!
    _svc_record_pid "$REDIS_PID" redis
    if ! wait_for 20 redis_cli ping; then
        echo "not ok - setup: redis-server did not answer on port $REDIS_PORT"
        tail -20 "$dir/redis.log" 2>/dev/null | sed 's/^/#   /'
        exit 1
    fi
    if [[ -n $password ]]; then
        REDIS_URL="redis://:$password@127.0.0.1:$REDIS_PORT/0"
    else
        REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
    fi
    export REDIS_PORT REDIS_URL REDIS_PID REDIS_PASSWORD
}

redis_cli() { # args... (db 0)
    if [[ -n ${REDIS_PASSWORD:-} ]]; then
        REDISCLI_AUTH=$REDIS_PASSWORD redis-cli --no-auth-warning -h 127.0.0.1 -p "$REDIS_PORT" "$@"
    else
        redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"
    fi
}

stop_redis() {
    [[ -n ${REDIS_PID:-} ]] || return 0
    if _svc_pid_is "$REDIS_PID" redis; then
        kill -TERM "$REDIS_PID" 2>/dev/null
        wait_pid_gone 10 "$REDIS_PID" || kill -KILL "$REDIS_PID" 2>/dev/null
    fi
    wait "$REDIS_PID" 2>/dev/null
    REDIS_PID=
}

# ---- PostgreSQL -----------------------------------------------------------------
# initdb and postgres refuse to run as root: then they run as `postgres`.
_as_pg() {
    if [[ $(id -u) -eq 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# start_pg: initdb a throwaway cluster and start it on a free port, loopback
# only, socket in the temp dir. Exports PG_PORT, PG_HOST, PG_SOCKDIR, PGDATA_DIR,
# PG_URL (database "celeriac"), PG_ADMIN_URL (database "postgres").
start_pg() {
    local dir=$TEST_TMP/pg
    mkdir -p "$dir"
    [[ $(id -u) -eq 0 ]] && chown postgres: "$dir"
    PGDATA_DIR=$dir/data
    PG_SOCKDIR=$dir
    PG_PORT=$(free_port)
    PG_HOST=127.0.0.1
    PG_LOG=$dir/postgres.log
    if ! _as_pg "$PGBIN/initdb" -A trust --nosync -U postgres -E UTF8 --locale=C.UTF-8 \
        -D "$PGDATA_DIR" >"$dir/initdb.log" 2>&1; then
        echo "not ok - setup: initdb failed"
        sed 's/^/#   /' "$dir/initdb.log"
        exit 1
    fi
    cat >>"$PGDATA_DIR/postgresql.conf" <<EOF
port = $PG_PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$PG_SOCKDIR'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 60
shared_buffers = 32MB
log_connections = on
log_disconnections = on
EOF
    _pg_ctl_start || exit 1
    export PG_PORT PG_HOST PG_SOCKDIR PGDATA_DIR
    PG_ADMIN_URL="postgresql://postgres@127.0.0.1:$PG_PORT/postgres"
    psql_admin -c "CREATE DATABASE celeriac" >/dev/null
    PG_URL="postgresql://postgres@127.0.0.1:$PG_PORT/celeriac"
    export PG_URL PG_ADMIN_URL
}

_pg_ctl_start() {
    if ! _as_pg "$PGBIN/pg_ctl" -w -t 60 -D "$PGDATA_DIR" -l "$PG_LOG" start >/dev/null 2>&1; then
        echo "not ok - setup: pg_ctl start failed"
        tail -20 "$PG_LOG" 2>/dev/null | sed 's/^/#   /'
        return 1
    fi
    PG_PID=$(head -1 "$PGDATA_DIR/postmaster.pid")
    _svc_record_pid "$PG_PID" postgres
    export PG_PID
}

# stop_pg [MODE]: fast (default) or immediate shutdown, by pid.
stop_pg() {
    local mode=${1:-fast} sig=INT
    [[ $mode == immediate ]] && sig=QUIT
    # pg_ctl may have been interrupted after the postmaster started
    if [[ -z ${PG_PID:-} && -n ${PGDATA_DIR:-} && -f $PGDATA_DIR/postmaster.pid ]]; then
        PG_PID=$(head -1 "$PGDATA_DIR/postmaster.pid")
    fi
    [[ -n ${PG_PID:-} ]] || return 0
    if _svc_pid_is "$PG_PID" postgres; then
        kill -"$sig" "$PG_PID" 2>/dev/null
        wait_pid_gone 30 "$PG_PID" || kill -KILL "$PG_PID" 2>/dev/null
    fi
    PG_PID=
}

start_pg_again() {
    _pg_ctl_start
}

# restart_pg: what an operator's `pg_ctl restart` does (fast mode).
restart_pg() {
    stop_pg fast && start_pg_again
}

# psql against the test database (or the admin one): -X no psqlrc, -A -t quiet.
psql_db() {
    psql -X -A -t -q -v ON_ERROR_STOP=1 "postgresql://postgres@127.0.0.1:$PG_PORT/celeriac" "$@"
}
psql_admin() {
    psql -X -A -t -q -v ON_ERROR_STOP=1 "postgresql://postgres@127.0.0.1:$PG_PORT/postgres" "$@"
}

# seed_books_pg: the example's schema and seed (examples/books/seed.sh) with
# books 1..1000 titled 'Book N'; a table of our own if the example has none.
seed_books_pg() {
    if [[ -x $BOOKS_DIR/seed.sh ]]; then
        "$BOOKS_DIR/seed.sh" postgres "$PG_URL" 1000 >/dev/null || return 1
    else
        psql_db -c "CREATE TABLE IF NOT EXISTS books (id bigint PRIMARY KEY, url text,
                    title text, fetched_at timestamptz)" || return 1
        psql_db -c "INSERT INTO books (id, url, title)
                    SELECT i, 'https://example.org/books/' || i, 'Book ' || i
                    FROM generate_series(1, 1000) AS i ON CONFLICT DO NOTHING" || return 1
    fi
    [[ $(psql_db -c "SELECT count(*) FROM books") -ge 1000 ]]
}

# seed_books_sqlite PATH: same for SQLite.
seed_books_sqlite() {
    local db=$1
    if [[ -x $BOOKS_DIR/seed.sh ]]; then
        "$BOOKS_DIR/seed.sh" sqlite "$db" 1000 >/dev/null || return 1
    else
        sqlite3 "$db" "PRAGMA journal_mode=WAL;
                       CREATE TABLE IF NOT EXISTS books (id INTEGER PRIMARY KEY, url text,
                       title text, fetched_at timestamptz);
                       WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000)
                       INSERT OR IGNORE INTO books (id, url, title)
                       SELECT i, 'https://example.org/books/' || i, 'Book ' || i FROM n" \
            >/dev/null || return 1
    fi
    [[ $(sqlite3 "$db" "SELECT count(*) FROM books") -ge 1000 ]]
}

# ---- the worker -------------------------------------------------------------------
# start_worker FLAGS...: `celeriac worker -A libbooks.so FLAGS...` in the
# background, stdout+stderr to $TEST_TMP/worker-N.log. Sets WORKER_PID and
# WORKER_LOG. The -A flag is added unless FLAGS has one.
WORKER_SEQ=0
start_worker() {
    local args=("$@") have_a=0 a
    for a in "${args[@]}"; do [[ $a == -A || $a == --app* ]] && have_a=1; done
    ((have_a)) || args=(-A "$BOOKS_LIB" "${args[@]}")
    WORKER_SEQ=$((WORKER_SEQ + 1))
    WORKER_LOG=$TEST_TMP/worker-$WORKER_SEQ.log
    WORKER_LOGS+=("$WORKER_LOG")
    echo "# worker $WORKER_SEQ: celeriac worker ${args[*]}" >"$WORKER_LOG.cmd"
    "$CELERIAC_BIN" worker "${args[@]}" </dev/null >"$WORKER_LOG" 2>&1 &
    WORKER_PID=$!
    WORKER_RC=
    _svc_record_pid "$WORKER_PID" worker
}

# worker_children [PID]: the pids of the worker's pool children, sorted. The
# control process (comm "celeriac:control", remote control and heartbeats),
# the metrics process, the master's connection-budget check and a fork not yet
# named (still "celeriac:master") are not among them; control_pid finds the
# control process.
worker_children() {
    local pid=${1:-$WORKER_PID}
    ps -o pid=,comm= --ppid "$pid" 2>/dev/null | awk '$2 !~ /^celeriac:(contr|metri|budge|maste)/ {print $1}' |
        sort -n | tr '\n' ' ' | sed 's/ $//'
}

control_pid() { # [PID]
    local pid=${1:-$WORKER_PID}
    ps -o pid=,comm= --ppid "$pid" 2>/dev/null | awk '$2 ~ /^celeriac:contr/ {print $1}'
}

# wait_children N [TIMEOUT]: until the worker has N children.
wait_children() {
    local n=$1 timeout=${2:-20}
    _count_children_is() { [[ $(worker_children | wc -w) -eq $1 ]]; }
    wait_for "$timeout" _count_children_is "$n"
}

worker_alive() { # [PID]
    local pid=${1:-$WORKER_PID}
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null && [[ $(ps -o stat= -p "$pid") != Z* ]]
}

# stop_worker [SIGNAL] [TIMEOUT]: signal the master (TERM by default), wait for
# it to exit, KILL it and its children past the timeout. Sets WORKER_RC
# (exit status, 128+N for a signal, "timeout" if it had to be killed).
stop_worker() {
    local sig=${1:-TERM} timeout=${2:-30} kids i
    [[ -n ${WORKER_PID:-} ]] || return 0
    # every child (pool children and the control process)
    kids=$(ps -o pid= --ppid "$WORKER_PID" 2>/dev/null | tr -d ' ')
    kill -"$sig" "$WORKER_PID" 2>/dev/null
    for ((i = 0; i < timeout * 10; i++)); do
        worker_alive || break
        sleep 0.1
    done
    if worker_alive; then
        WORKER_RC=timeout
        kill -KILL "$WORKER_PID" 2>/dev/null
        wait "$WORKER_PID" 2>/dev/null
    else
        wait "$WORKER_PID" 2>/dev/null
        WORKER_RC=$?
    fi
    # children of a killed master: stop them too (only if still ours)
    for i in $kids; do
        _svc_pid_is "$i" worker && kill -KILL "$i" 2>/dev/null
    done
    WORKER_PID=
    return 0
}

# wait_worker_exit TIMEOUT: for a worker expected to exit by itself. Sets
# WORKER_RC as stop_worker; returns 1 on timeout (the worker is then killed).
wait_worker_exit() {
    local timeout=$1 i
    for ((i = 0; i < timeout * 10; i++)); do
        worker_alive || break
        sleep 0.1
    done
    if worker_alive; then
        stop_worker KILL 5
        WORKER_RC=timeout
        return 1
    fi
    wait "$WORKER_PID" 2>/dev/null
    WORKER_RC=$?
    WORKER_PID=
    return 0
}

# Prints the last lines of the current (or given) worker log, as diagnostics.
worker_log_tail() { # [N] [LOG]
    local n=${1:-25} log=${2:-$WORKER_LOG}
    [[ -f $log ]] && tail -n "$n" "$log" | sed 's/^/log: /'
}

# Sanitizer and crash reports in any worker log of this file: one case.
check_worker_logs_clean() {
    local log hits=""
    for log in "${WORKER_LOGS[@]}"; do
        [[ -f $log ]] || continue
        if grep -qE 'ERROR: (Address|Leak|Memory|Thread)Sanitizer|runtime error:|SUMMARY: .*Sanitizer|AddressSanitizer' "$log"; then
            hits+="$log "
        fi
    done
    if [[ -z $hits ]]; then
        ok "no sanitizer report in any worker log"
    else
        local first=${hits%% *}
        not_ok "no sanitizer report in any worker log" "reports in: $hits" \
            "$(grep -E -A15 'Sanitizer|runtime error:' "$first" | head -40)"
    fi
}

# build_probe_lib: compiles tests/integration/probe_tasks.c into
# $TEST_TMP/libprobe.so (sets PROBE_LIB), as a user builds a task library.
build_probe_lib() {
    PROBE_LIB=$TEST_TMP/libprobe.so
    [[ -f $PROBE_LIB ]] && return 0
    # shellcheck disable=SC2046
    cc -std=c11 -Wall -Wextra -Werror -O1 -g -fPIC -shared -I"$CELERIAC_ROOT/include" \
        $(pkg-config --cflags libpq sqlite3) -o "$PROBE_LIB" "$TESTS_DIR/integration/probe_tasks.c" \
        $(pkg-config --libs libpq sqlite3) 2>"$TEST_TMP/probe-cc.log" || {
        not_ok "build the probe task library" "$(cat "$TEST_TMP/probe-cc.log")"
        return 1
    }
}

# ---- Python client ------------------------------------------------------------------
# client ARGS...: tests/integration/client.py with /usr/bin/python3.
client() {
    "$PY" "$TESTS_DIR/integration/client.py" "$@"
}

# client_values <<<LINES: what client.py send printed, one word per task:
# the value as JSON, or "raised:Type(args)", or "timeout". Space-separated.
client_values() {
    "$PY" -c '
import json, sys
out = []
for line in sys.stdin:
    line = line.strip()
    if not line.startswith("{"):
        continue
    d = json.loads(line)
    if d.get("ok"):
        out.append(json.dumps(d.get("value"), separators=(",", ":")))
    elif d.get("raised") in ("TimeoutError",):
        out.append("timeout")
    else:
        out.append("raised:%s%s" % (d.get("raised"), json.dumps(d.get("raised_args"), separators=(",", ":"))))
print(" ".join(out))'
}

# jget PATH <<<JSON: one field of a JSON document ("meta.result.exc_type",
# list indices as numbers). Strings print raw, anything else as JSON; a
# missing field prints "<missing>".
jget() {
    "$PY" -c '
import json, sys
d = json.loads(sys.stdin.read() or "null")
for k in [k for k in sys.argv[1].split(".") if k]:
    try:
        d = d[int(k)] if isinstance(d, list) else d[k]
    except (KeyError, IndexError, TypeError, ValueError):
        print("<missing>"); sys.exit(0)
print(d if isinstance(d, str) else json.dumps(d))' "$1"
}

# run_cases CMD...: runs a Python (or any) TAP-printing script, passes its
# lines through and adds its cases to this file's counts. A script that fails
# without a "not ok" line counts as one failed case.
run_cases() {
    local out=$TEST_TMP/cases-$RANDOM.out rc p f
    "$@" 2>&1 | tee "$out"
    rc=${PIPESTATUS[0]}
    p=$(grep -cE '^ok - ' "$out")
    f=$(grep -cE '^not ok - ' "$out")
    TAP_PASSED=$((TAP_PASSED + p))
    TAP_FAILED=$((TAP_FAILED + f))
    if ((rc != 0 && f == 0)); then
        local cmdline="$*"
        not_ok "${cmdline:0:100} exited with status $rc"
    fi
    return "$rc"
}

# ---- cleanup ------------------------------------------------------------------------
WORKER_LOGS=()
services_cleanup() {
    local rc=$?
    trap - EXIT
    # A file that ends anywhere but tap_done did not run its remaining
    # cases. bash leaves $? at 0 here when a syntax error (in a [[ ]], say)
    # ends the script, so without this such a file would pass.
    if [[ -z ${TAP_DONE:-} ]]; then
        echo "not ok - $(basename "$0") ended before its last case (exit status $rc; a syntax error or an unexpected exit)"
        ((rc == 0)) && rc=1
    fi
    stop_worker KILL 5 >/dev/null 2>&1
    local pid kind
    # anything else recorded in the pid file (extra workers, python workers)
    if [[ -f $SVC_PIDS_FILE ]]; then
        while read -r pid kind; do
            [[ -n $pid ]] || continue
            [[ $kind == postgres || $kind == redis ]] && continue
            if _svc_pid_is "$pid" "$kind"; then
                kill -KILL "$pid" 2>/dev/null
            fi
        done <"$SVC_PIDS_FILE"
    fi
    stop_pg immediate >/dev/null 2>&1
    stop_redis >/dev/null 2>&1
    if [[ -n ${KEEP_TMP:-} ]]; then
        echo "# kept $TEST_TMP" >&2
    else
        rm -rf "$TEST_TMP"
    fi
    exit "$rc"
}
trap services_cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT
