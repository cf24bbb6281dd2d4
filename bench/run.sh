#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# run.sh: what `make bench` runs after the build. Builds the floor and the
# latency watcher into $BUILD/bench, starts a private redis-server, a
# throwaway PostgreSQL 15 and (when BENCH_BROKERS names amqp) a private
# RabbitMQ (tests/lib/rabbitmq.sh) on free loopback ports in temp dirs, seeds
# the books table, then lets bench.py measure celeriac, Python Celery and the
# floor side by side (and both on kombu's SQL transport in that PostgreSQL), write RESULTS.md and the plot data; gnuplot draws the
# PNGs. Stops everything it started, by pid, on every exit path.
#
# Knobs (environment):
#   BENCH_TASKS (20000)       tasks per run      BENCH_REPS (3)      runs per point
#   BENCH_PY_TASKS, BENCH_PY_REPS  the same for Python Celery (default: as above)
#   BENCH_BOOKS (10000)       rows in books      BENCH_LATENCY_SECONDS (10)
#   BENCH_CONCURRENCY ("1 2 4")  BENCH_CONTENDERS ("celeriac python floor")
#   BENCH_BROKERS ("redis amqp sql")  where W1 and W2 run: Redis, a private
#                             RabbitMQ (celeriac and Python Celery; results in Redis),
#                             and kombu's SQL transport in the bench's PostgreSQL
#                             database (W1 only: celeriac, celeriac running the
#                             transactional variant of the task, Python Celery;
#                             results in Redis; and W3 on that broker)
#   BENCH_AMQP_TASKS, BENCH_AMQP_REPS, BENCH_AMQP_PY_TASKS, BENCH_AMQP_PY_REPS
#                             the same for the RabbitMQ runs (default: as on Redis)
#   BENCH_AMQP_CONTENDERS ("celeriac python floor")
#   BENCH_SQL_TASKS, BENCH_SQL_REPS   the same for the PostgreSQL broker (default: as on Redis)
#   BENCH_SQL_PY_TASKS (2000), BENCH_SQL_PY_REPS  Python Celery there: kombu's SQL
#                             consumer is slow, so fewer tasks per run
#   BENCH_SQL_CONTENDERS ("celeriac celeriac-txn python floor")
#   BENCH_DURABLE (1), BENCH_DURABLE_REPS (2)
#                             W1 on Redis, the floor and pgbench again at c = 2 and 4
#                             with PostgreSQL's fsync on (commits wait for the disk)
#   BENCH_LATENCY_WINDOWS (3) the half-load W3 runs behind the p99 targets: windows of
#                             BENCH_LATENCY_SECONDS each, taken in turn across contenders,
#                             percentiles over all of them
#   BENCH_QUICK=1             2000 tasks, 1 rep, 2 windows of 3 s of W3; writes to $BUILD/bench/
#                             so a smoke run does not replace the committed results
#   BENCH_OUT                 where RESULTS.md and the PNGs go (default bench/)
#   BENCH_KEEP=1              keep the temp dir (logs, raw data)
set -euo pipefail

cd "$(dirname "$0")/.."
root=$PWD
BUILD=${BUILD:-build}
case $BUILD in /*) build=$BUILD ;; *) build=$root/$BUILD ;; esac
python=/usr/bin/python3
pgbin=/usr/lib/postgresql/15/bin

if [[ ${BENCH_QUICK:-0} == 1 ]]; then
    export BENCH_TASKS=${BENCH_TASKS:-2000} BENCH_REPS=${BENCH_REPS:-1}
    export BENCH_DURABLE_REPS=${BENCH_DURABLE_REPS:-1}
    export BENCH_LATENCY_SECONDS=${BENCH_LATENCY_SECONDS:-3}
    export BENCH_LATENCY_WINDOWS=${BENCH_LATENCY_WINDOWS:-2}
    export BENCH_OUT=${BENCH_OUT:-$build/bench}
fi
export BENCH_TASKS=${BENCH_TASKS:-20000} BENCH_REPS=${BENCH_REPS:-3}
export BENCH_BOOKS=${BENCH_BOOKS:-10000}
export BENCH_BROKERS=${BENCH_BROKERS:-redis amqp sql}
amqp=0
[[ " $BENCH_BROKERS " == *" amqp "* ]] && amqp=1
export BENCH_OUT=${BENCH_OUT:-$root/bench}
export BENCH_ROOT=$root BENCH_BUILD=$build
export PYTHONDONTWRITEBYTECODE=1

say() { printf 'bench: %s\n' "$*" >&2; }
fail() {
    printf 'bench: FAILED: %s\n' "$*" >&2
    exit 1
}

[[ -x $build/celeriac && -f $build/examples/libbooks.so ]] ||
    fail "$build/celeriac or $build/examples/libbooks.so missing: run make"
for tool in redis-server redis-cli gnuplot psql pkg-config; do
    command -v "$tool" >/dev/null || fail "$tool not found"
done
[[ -x $pgbin/initdb ]] || fail "$pgbin/initdb not found (apt-get install postgresql-15)"
"$python" -c 'import celery, redis, psycopg2' 2>/dev/null ||
    fail "$python cannot import celery, redis and psycopg2"
if ((amqp)); then
    [[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]] ||
        fail "rabbitmq-server not found (apt-get install rabbitmq-server, or BENCH_BROKERS=redis)"
    "$python" -c 'import amqp' 2>/dev/null || fail "$python cannot import amqp (py-amqp)"
fi
if [[ " $BENCH_BROKERS " == *" sql "* ]]; then
    "$python" -c 'import sqlalchemy' 2>/dev/null ||
        fail "$python cannot import sqlalchemy (apt-get install python3-sqlalchemy, or leave sql out of BENCH_BROKERS)"
fi

# ---- build the floor and the watcher ------------------------------------------
mkdir -p "$build/bench" "$BENCH_OUT"
warn="-Wall -Wextra -Werror -Wstrict-prototypes -Wmissing-prototypes -Wold-style-definition
      -Wwrite-strings -Wpointer-arith -Wvla -Wformat=2 -Wshadow -fno-common"
build_tool() { # name pkgs...
    local name=$1
    shift
    if [[ ! -x $build/bench/$name || $root/bench/$name.c -nt $build/bench/$name ]]; then
        # shellcheck disable=SC2046,SC2086
        ${CC:-cc} -std=c11 -O2 -g $warn $(pkg-config --cflags "$@") \
            -o "$build/bench/$name" "$root/bench/$name.c" $(pkg-config --libs "$@")
    fi
}
build_tool floor hiredis libpq jansson librabbitmq
build_tool latency hiredis jansson libpq

tmp=$(mktemp -d "${TMPDIR:-/tmp}/celeriac-bench.XXXXXX")
chmod 755 "$tmp" # the postgres user must reach its subdirectory
export BENCH_TMP=$tmp
# The binaries under test, copied so that a rebuild during the run changes nothing.
mkdir -p "$tmp/bin"
cp "$build/celeriac" "$build/examples/libbooks.so" "$tmp/bin/"
export BENCH_CELERIAC=$tmp/bin/celeriac BENCH_LIBBOOKS=$tmp/bin/libbooks.so
# What was built: the commit, and whether the sources differed from it.
rev=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git -C "$root" status --porcelain -- src include examples Makefile 2>/dev/null) ]]; then
    rev="$rev (with uncommitted changes to the sources)"
fi
export BENCH_CELERIAC_REV=$rev
redis_pid=
pg_pid=
rmq_up=0

as_pg() {
    if [[ $(id -u) -eq 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# Stops what this script started, by pid only (the workers are bench.py's and
# are stopped by it; it is our child, so it is gone by the time this runs).
cleanup() {
    local rc=$?
    trap - EXIT
    set +e # stop everything even if one stop fails
    if ((rmq_up)); then
        rabbitmq_stop # beam and its epmd, by pid (tests/lib/rabbitmq.sh)
        rmq_up=0
    fi
    if [[ -n $pg_pid ]] && kill -0 "$pg_pid" 2>/dev/null; then
        kill -INT "$pg_pid" 2>/dev/null || true # fast shutdown
        for _ in $(seq 100); do kill -0 "$pg_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pg_pid" 2>/dev/null || true
    fi
    if [[ -n $redis_pid ]]; then
        kill -TERM "$redis_pid" 2>/dev/null || true
        wait "$redis_pid" 2>/dev/null || true
    fi
    if ((rc != 0)); then
        for f in "$tmp"/*.log; do
            [[ -s $f ]] || continue
            echo "bench: last lines of $(basename "$f"):" >&2
            tail -n 15 "$f" >&2
        done
    fi
    if [[ ${BENCH_KEEP:-0} == 1 ]]; then
        say "kept $tmp"
    else
        rm -rf "$tmp"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() { "$python" "$root/tests/lib/free_port.py"; }

# ---- redis ------------------------------------------------------------------------
for attempt in 1 2 3; do
    port=$(free_port)
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
        --daemonize no --dir "$tmp" --logfile "$tmp/redis.log" --loglevel warning \
        </dev/null &
    redis_pid=$!
    for _ in $(seq 50); do
        [[ $(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null) == PONG ]] && break 2
        kill -0 "$redis_pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -TERM "$redis_pid" 2>/dev/null || true
    wait "$redis_pid" 2>/dev/null || true
    redis_pid=
    ((attempt < 3)) || fail "redis-server did not start: $(tail -n 3 "$tmp/redis.log" 2>/dev/null)"
done
export BENCH_REDIS_PORT=$port BENCH_REDIS_PID=$redis_pid
say "redis-server pid $redis_pid on 127.0.0.1:$port (no persistence)"

# ---- postgresql -----------------------------------------------------------------------
mkdir -p "$tmp/pg"
[[ $(id -u) -eq 0 ]] && chown postgres: "$tmp/pg"
as_pg "$pgbin/initdb" -A trust --nosync -U postgres -E UTF8 --locale=C.UTF-8 \
    -D "$tmp/pg/data" >"$tmp/initdb.log" 2>&1 || fail "initdb: $(tail -n 5 "$tmp/initdb.log")"
for attempt in 1 2 3; do
    pg_port=$(free_port)
    # fsync off: a throwaway cluster; commits still write WAL but never wait for
    # the disk. Checkpoints are spaced out and run (by bench.py) between runs.
    cat >"$tmp/pg/data/postgresql.auto.conf" <<EOF
port = $pg_port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$tmp/pg'
fsync = off
checkpoint_timeout = '1h'
max_wal_size = '8GB'
max_connections = 100
EOF
    if as_pg "$pgbin/pg_ctl" -w -t 60 -D "$tmp/pg/data" -l "$tmp/pg/postgres.log" start \
        >/dev/null 2>&1; then
        pg_pid=$(head -n 1 "$tmp/pg/data/postmaster.pid")
        break
    fi
    ((attempt < 3)) || fail "postgres did not start: $(tail -n 5 "$tmp/pg/postgres.log")"
done
psql -X -q -v ON_ERROR_STOP=1 "postgresql://postgres@127.0.0.1:$pg_port/postgres" \
    -c "CREATE DATABASE bench" >/dev/null
export BENCH_PG_URL="postgresql://postgres@127.0.0.1:$pg_port/bench" BENCH_PG_PID=$pg_pid
"$root/examples/books/seed.sh" postgres "$BENCH_PG_URL" "$BENCH_BOOKS"
say "PostgreSQL 15 pid $pg_pid on 127.0.0.1:$pg_port (fsync off), $BENCH_BOOKS books seeded"

# ---- rabbitmq ---------------------------------------------------------------------------
if ((amqp)); then
    # shellcheck source=../tests/lib/rabbitmq.sh
    . "$root/tests/lib/rabbitmq.sh"
    rmq_up=1 # from here on cleanup stops it (rabbitmq_stop is idempotent)
    RMQ_EXIT_TRAP=0 rabbitmq_start || fail "RabbitMQ did not start"
    export BENCH_RABBITMQ_PORT=$RABBITMQ_PORT BENCH_RABBITMQ_PID=$RMQ_BEAM_PID
    export BENCH_RABBITMQ_START_MS=$RABBITMQ_START_MS
    say "RabbitMQ $(dpkg-query -W -f '${Version}' rabbitmq-server 2>/dev/null) pid $RMQ_BEAM_PID" \
        "on 127.0.0.1:$RABBITMQ_PORT (private node, started in $RABBITMQ_START_MS ms)"
fi

# ---- measure ------------------------------------------------------------------------
start=$SECONDS
BENCH_LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
export BENCH_LOADAVG_START
say "load average at start: $BENCH_LOADAVG_START"
for w in W1 W2; do
    "$python" "$root/bench/bench.py" enqueue "$w" "$BENCH_TASKS"
done
"$python" "$root/bench/bench.py" calibrate start
"$python" "$root/bench/bench.py" throughput
"$python" "$root/bench/bench.py" durable
"$python" "$root/bench/bench.py" latency
"$python" "$root/bench/bench.py" calibrate end
BENCH_ELAPSED=$((SECONDS - start)) PYTHONPATH=$root/bench "$python" "$root/bench/bench.py" report

# ---- plots ------------------------------------------------------------------------------
gnuplot -e "data='$tmp'; out='$BENCH_OUT'" "$root/bench/plots.gp"
say "wrote $BENCH_OUT/RESULTS.md, $BENCH_OUT/throughput.png and $BENCH_OUT/latency.png" \
    "in $((SECONDS - start)) s"
