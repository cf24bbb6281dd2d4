#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# demo.sh: what `make demo` (`demo.sh sqlite`, the default) and `make demo-redis`
# (`demo.sh redis`) run after the build. Seeds a SQLite books database in a temp
# dir; the broker and the results are, for sqlite, kombu's SQL transport and
# Celery's database backend in two more SQLite files there (no server at all),
# for redis, a private redis-server on a free loopback port. Enqueues DEMO_TASKS
# books.get_book_info tasks with Python Celery before the worker starts, runs a
# celeriac worker on them, shows progress, checks the results, prints
# throughput and each child's connections and RSS, then stops everything it
# started (by pid). Knobs: BUILD (build dir, as in the Makefile), DEMO_TASKS
# (3000 on sqlite, where Python's kombu commits one row per send, about 300/s
# here; 5000 on redis), DEMO_BOOKS (10000), DEMO_CONCURRENCY (2), DEMO_KEEP=1
# keeps the temp dir (databases, logs) for a look afterwards.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$PWD
mode=${1:-sqlite}
case $mode in
sqlite) tasks=${DEMO_TASKS:-3000} ;;
redis) tasks=${DEMO_TASKS:-5000} ;;
*)
    echo "usage: demo.sh [sqlite|redis]" >&2
    exit 2
    ;;
esac
books=${DEMO_BOOKS:-10000}
concurrency=${DEMO_CONCURRENCY:-2}
python=/usr/bin/python3
client=$root/scripts/demo_client.py
build=${BUILD:-build}
[[ $build == /* ]] || build=$root/$build
celeriac=$build/celeriac
library=$build/examples/libbooks.so

say() { printf 'demo: %s\n' "$*"; }
fail() {
    printf 'demo: FAILED: %s\n' "$*" >&2
    exit 1
}

for n in "$tasks" "$books" "$concurrency"; do
    [[ $n =~ ^[1-9][0-9]*$ ]] ||
        fail "DEMO_TASKS, DEMO_BOOKS and DEMO_CONCURRENCY must be positive integers"
done
[[ -x $celeriac && -f $library ]] || fail "$celeriac or $library missing: run make"
command -v sqlite3 >/dev/null || fail "sqlite3 not found (scripts/bootstrap.sh installs it)"
if [[ $mode == redis ]]; then
    command -v redis-server >/dev/null ||
        fail "redis-server not found (scripts/bootstrap.sh installs it)"
    "$python" -c 'import celery, redis' 2>/dev/null ||
        fail "$python cannot import celery and redis (apt-get install python3-celery python3-redis)"
else
    "$python" -c 'import celery, sqlalchemy' 2>/dev/null ||
        fail "$python cannot import celery and sqlalchemy" \
            "(apt-get install python3-celery python3-sqlalchemy)"
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/celeriac-demo.XXXXXX")
redis_pid=
worker_pid=

# Stops what this script started, by pid only, on every exit path.
cleanup() {
    local rc=$?
    trap - EXIT
    if [[ -n $worker_pid ]] && kill -0 "$worker_pid" 2>/dev/null; then
        kill -TERM "$worker_pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$worker_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$worker_pid" 2>/dev/null || true
    fi
    if ((rc != 0)) && [[ -s $tmp/worker.log ]]; then
        echo "demo: last lines of the worker's log:" >&2
        tail -n 20 "$tmp/worker.log" >&2
    fi
    if [[ -n $redis_pid ]]; then
        kill -TERM "$redis_pid" 2>/dev/null || true
        wait "$redis_pid" 2>/dev/null || true
    fi
    if [[ ${DEMO_KEEP:-0} == 1 ]]; then
        echo "demo: kept $tmp" >&2
    else
        rm -rf "$tmp"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# True while the worker runs; an exited one stays a zombie until waited for.
worker_running() {
    local stat
    stat=$(cat "/proc/$worker_pid/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat:0:1} != Z ]]
}

free_port() {
    "$python" -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

# ---- database -------------------------------------------------------------
db=$tmp/books.db
"$root/examples/books/seed.sh" sqlite "$db" "$books"
say "SQLite database $db seeded with $books books"

# ---- broker and results ----------------------------------------------------
# A private redis-server for `demo.sh redis`. The port is free when chosen but
# could be taken before redis binds it: retry.
start_redis() {
    local tries=3
    while ((tries-- > 0)); do
        port=$(free_port)
        redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
            --daemonize no --pidfile "$tmp/redis.pid" --dir "$tmp" \
            --logfile "$tmp/redis.log" --loglevel warning &
        redis_pid=$!
        for _ in $(seq 50); do
            [[ $(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null) == PONG ]] && return 0
            kill -0 "$redis_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -TERM "$redis_pid" 2>/dev/null || true
        wait "$redis_pid" 2>/dev/null || true
        redis_pid=
    done
    fail "redis-server did not start: $(tail -n 3 "$tmp/redis.log" 2>/dev/null)"
}

if [[ $mode == redis ]]; then
    start_redis
    broker=redis://127.0.0.1:$port/0
    backend=redis://127.0.0.1:$port/1
    say "private redis-server pid $redis_pid on 127.0.0.1:$port"
else
    # Two files beside books.db, not one: each SQLite file has one write lock,
    # and the children's claims and acks (broker) and their result rows then
    # queue on two locks instead of one (about 15 % more tasks/s here). Nothing
    # to start: kombu (in the Python client) and the children create the tables.
    broker=sqla+sqlite:///$tmp/broker.db
    backend=db+sqlite:///$tmp/results.db
    say "no server: kombu's SQL transport in $tmp/broker.db," \
        "Celery's database result backend in $tmp/results.db"
fi

# ---- enqueue --------------------------------------------------------------
"$python" "$client" enqueue "$broker" "$tasks" "$books" "$tmp/ids" ||
    fail "could not enqueue the tasks"

# ---- worker ---------------------------------------------------------------
say "starting: ${celeriac#"$root"/} worker -A ${library#"$root"/} -c $concurrency" \
    "-b $broker --result-backend $backend --db sqlite://$db -l info"
started=$(date +%s.%N)
"$celeriac" worker -A "$library" -c "$concurrency" -b "$broker" \
    --result-backend "$backend" --db "sqlite://$db" -l info \
    >"$tmp/worker.log" 2>&1 &
worker_pid=$!

if ! watch_out=$("$python" "$client" watch "$broker" "$backend" "$tasks" "$worker_pid" \
    "$started"); then
    if ! worker_running; then
        rc=0
        wait "$worker_pid" || rc=$?
        worker_pid=
        fail "the worker exited with status $rc before the tasks were done"
    fi
    fail "tasks did not complete"
fi
read -r _ elapsed <<<"$(tail -n 1 <<<"$watch_out")"
rate=$("$python" -c "print(f'{$tasks / $elapsed:.0f}')")
say "$tasks tasks done $elapsed s after the worker was started: $rate tasks/s (start-up included)"

# ---- results --------------------------------------------------------------
"$python" "$client" check "$broker" "$backend" "$tmp/ids" 20 || fail "results are wrong"
fetched=$(sqlite3 "$db" 'SELECT count(*) FROM books WHERE fetched_at IS NOT NULL')
want=$((tasks < books ? tasks : books))
((fetched == want)) || fail "$fetched books have fetched_at set, want $want"
say "$fetched books have fetched_at set in the database"

# ---- per-child facts ------------------------------------------------------
others=()
[[ $mode == sqlite ]] && others=("$tmp/broker.db" "$tmp/results.db")
"$python" "$client" facts "$worker_pid" "$db" "$tmp/worker.log" "${others[@]}" ||
    fail "per-child facts"

# ---- warm shutdown --------------------------------------------------------
kids=$("$python" "$client" children "$worker_pid")
kill -TERM "$worker_pid"
for _ in $(seq 300); do
    worker_running || break
    sleep 0.1
done
worker_running && fail "the worker did not exit within 30 s of SIGTERM"
rc=0
wait "$worker_pid" || rc=$?
worker_pid=
((rc == 0)) || fail "the worker exited with status $rc after SIGTERM, want 0"
for pid in $kids; do
    [[ -e /proc/$pid ]] && fail "child $pid still runs after the master exited"
done
say "SIGTERM: worker exited 0, children gone"
say "OK"
