#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_pgbouncer.sh (issue 14, point 4): celeriac behind Debian's PgBouncer in
# transaction pooling mode. A private PostgreSQL, a private pgbouncer (run as
# the postgres user, its own ini in the temp dir: pool_mode = transaction,
# default_pool_size = 5, server_round_robin = 1 so consecutive transactions of
# one client land on different server sessions), Redis for broker and results.
#  1. 3 workers x -c 8 straight to PostgreSQL: the same 3000 tasks, for
#     the comparison of throughput.
#  2. 3 workers x -c 8 with --db-pooler transaction: 3000 books.get_book_info
#     from the Python Celery client, every one SUCCESS with its title, the
#     server never sees more than 5 sessions, application_name still names
#     each child (SHOW CLIENTS) and reaches the server; throughput on "# " lines.
#  3. Without the flag: the library's prepared statement goes missing between
#     transactions; each child says so in one line naming the database and the
#     flag, switches itself over, and every task still ends SUCCESS.
#  4. PgBouncer refusing a feature (a startup parameter it does not pass
#     on): one line per child naming the pooler's address, the reason and the
#     remedy, backoff, then the worker stops (status 3).
#  5. Bad flags: --db-pooler with a bad value, with SQLite, and with a sqla+
#     broker naming the pooled database: exit 2, one line.
. "$(dirname "$0")/../integration/services.sh"

PGBOUNCER=${PGBOUNCER:-/usr/sbin/pgbouncer}
if [[ ! -x $PGBOUNCER ]]; then
    echo "not ok - setup: $PGBOUNCER not installed (apt-get install pgbouncer)"
    exit 1
fi
N_TASKS=${PGB_TASKS:-3000}

start_redis
start_pg
seed_books_pg || { echo "not ok - setup: seed books"; exit 1; }

# ---- pgbouncer ------------------------------------------------------------------------
PGB_DIR=$TEST_TMP/pgbouncer
PGB_PORT=$(free_port)
mkdir -p "$PGB_DIR"
cat >"$PGB_DIR/pgbouncer.ini" <<EOF
[databases]
celeriac = host=127.0.0.1 port=$PG_PORT dbname=celeriac user=postgres

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGB_PORT
unix_socket_dir =
auth_type = trust
auth_file = $PGB_DIR/users.txt
admin_users = postgres
pool_mode = transaction
default_pool_size = 5
min_pool_size = 0
reserve_pool_size = 0
max_db_connections = 5
max_client_conn = 100
server_round_robin = 1
logfile = $PGB_DIR/pgbouncer.log
pidfile = $PGB_DIR/pgbouncer.pid
EOF
echo '"postgres" ""' >"$PGB_DIR/users.txt"
[[ $(id -u) -eq 0 ]] && chown -R postgres: "$PGB_DIR"
if ! _as_pg "$PGBOUNCER" -d "$PGB_DIR/pgbouncer.ini" >"$PGB_DIR/start.log" 2>&1; then
    echo "not ok - setup: pgbouncer did not start"
    sed 's/^/#   /' "$PGB_DIR/start.log" "$PGB_DIR/pgbouncer.log" 2>/dev/null | tail -20
    exit 1
fi
_pgb_pidfile() { [[ -s $PGB_DIR/pgbouncer.pid ]]; }
wait_for 10 _pgb_pidfile
PGB_PID=$(cat "$PGB_DIR/pgbouncer.pid")
_svc_record_pid "$PGB_PID" pgbouncer
stop_pgbouncer() {
    [[ -n ${PGB_PID:-} ]] && _svc_pid_is "$PGB_PID" pgbouncer && kill -TERM "$PGB_PID" 2>/dev/null
    wait_pid_gone 10 "$PGB_PID" 2>/dev/null
    PGB_PID=
}
# (services.sh's EXIT trap stops it too, by the recorded pid)
PGB_URL="postgresql://postgres@127.0.0.1:$PGB_PORT/celeriac"
pgb_admin() { psql -X -A -t -q -F '|' "postgresql://postgres@127.0.0.1:$PGB_PORT/pgbouncer" -c "$1"; }
_pgb_up() { psql -X -A -t -q "$PGB_URL" -c 'SELECT 1' >/dev/null 2>&1; }
wait_for 10 _pgb_up || { echo "not ok - setup: pgbouncer does not answer"; tail -20 "$PGB_DIR/pgbouncer.log" | sed 's/^/#   /'; exit 1; }
diag "$("$PGBOUNCER" --version 2>&1 | head -1), pool_mode = transaction, default_pool_size = 5"

# Server sessions on the test database (the pooler's), not counting our probe.
server_sessions() {
    psql_admin -c "SELECT count(*) FROM pg_stat_activity WHERE datname = 'celeriac' AND backend_type = 'client backend'"
}

# sampler OUT: every 0.1 s, the number of server sessions and their
# application_names, one line each, until killed.
start_sampler() {
    (
        while :; do
            psql_admin -F '|' -c "SELECT count(*), coalesce(string_agg(DISTINCT application_name, ','), '') FROM pg_stat_activity WHERE datname = 'celeriac' AND backend_type = 'client backend'" 2>/dev/null
            sleep 0.1
        done
    ) >"$1" &
    SAMPLER_PID=$!
    _svc_record_pid "$SAMPLER_PID" bash
}
stop_sampler() {
    kill "$SAMPLER_PID" 2>/dev/null
    wait "$SAMPLER_PID" 2>/dev/null
}

cat >"$TEST_TMP/pb.py" <<'EOF'
# pb.py send N IDS_FILE: sends N books.get_book_info (ids 1..1000 in turn)
# with the Celery client. pb.py wait IDS_FILE TIMEOUT: waits for every result
# in Redis; prints one JSON line: counts by status, wrong titles, missing,
# and the throughput from the results' date_done (first to last).
import datetime, json, os, sys, time
import redis
from celery import Celery
url = os.environ["REDIS_URL"]
if sys.argv[1] == "send":
    app = Celery("pgb", broker=url, backend=url)
    app.conf.update(broker_connection_retry_on_startup=False, task_serializer="json")
    with open(sys.argv[3], "w") as f:
        for i in range(int(sys.argv[2])):
            f.write("%s %d\n" % (app.send_task("books.get_book_info", args=[1 + i % 1000]).id,
                                 1 + i % 1000))
    sys.exit(0)
want = dict((line.split()[0], "Book " + line.split()[1]) for line in open(sys.argv[2]))
ids, n = list(want), len(want)
r = redis.Redis.from_url(url)
done, deadline = {}, time.monotonic() + float(sys.argv[3])
while len(done) < n and time.monotonic() < deadline:
    left = [t for t in ids if t not in done]
    for t, raw in zip(left, r.mget(["celery-task-meta-" + t for t in left])):
        if raw is not None:
            done[t] = json.loads(raw)
    if len(done) < n:
        time.sleep(0.2)
status, wrong, stamps, failures = {}, 0, [], []
for t, m in done.items():
    status[m["status"]] = status.get(m["status"], 0) + 1
    if m["status"] == "SUCCESS":
        wrong += m["result"] != want[t]
    elif len(failures) < 3:
        failures.append(m.get("result"))
    stamps.append(datetime.datetime.fromisoformat(m["date_done"].replace("Z", "+00:00")))
span = (max(stamps) - min(stamps)).total_seconds() if stamps else 0
print(json.dumps({"sent": n, "stored": len(done), "status": status, "wrong": wrong,
                  "missing": n - len(done), "span_s": round(span, 3),
                  "per_s": round(len(done) / span) if span > 0 else 0, "failures": failures}))
EOF
send_books() { REDIS_URL=$REDIS_URL "$PY" "$TEST_TMP/pb.py" send "$1" "$TEST_TMP/ids-$2"; }
wait_books() { REDIS_URL=$REDIS_URL "$PY" "$TEST_TMP/pb.py" wait "$TEST_TMP/ids-$1" "${2:-60}"; }
# outcome <<<JSON: "STATUS COUNT ... wrong missing"
outcome() {
    "$PY" -c 'import json,sys; d=json.loads(sys.stdin.read()); print(" ".join("%s %s" % kv for kv in sorted(d["status"].items())), d["wrong"], d["missing"])'
}

all_logs_count() { # PATTERN LOG...
    local p=$1
    shift
    cat "$@" 2>/dev/null | grep -cE -- "$p"
}
_ready() { grep -q "@localhost ready" "$1"; }

# start_fleet NAME FLAGS...: 3 workers x -c 8 named NAME1..3@localhost; waits
# until all 24 children have their database connection. Sets PIDS, LOGS.
start_fleet() {
    local name=$1 n l
    shift
    PIDS=() LOGS=()
    for n in 1 2 3; do
        start_worker -b "$REDIS_URL" --result-backend "$REDIS_URL" -c 8 --without-heartbeat \
            -n "$name$n@localhost" "$@"
        PIDS+=("$WORKER_PID") LOGS+=("$WORKER_LOG")
    done
    for l in "${LOGS[@]}"; do
        wait_for 30 _ready "$l" || not_ok "worker ready ($l)" "$(worker_log_tail 20 "$l")"
    done
    _all_connected() { [[ $(all_logs_count "database connection to .* opened by pid" "${LOGS[@]}") -ge 24 ]]; }
    wait_for 30 _all_connected || not_ok "24 children connected ($name)" \
        "$(all_logs_count "opened by pid" "${LOGS[@]}")"
}
stop_fleet() {
    local p bad=""
    for p in "${PIDS[@]}"; do
        WORKER_PID=$p
        stop_worker TERM 20
        [[ $WORKER_RC == 0 ]] || bad+="$p:$WORKER_RC "
    done
    expect_eq "the three workers stop with exit 0" "" "$bad"
}

# ---- 1. the same 3 x 8 straight to PostgreSQL, for comparison -----------------------------
# The queue is filled first, then the workers start: date_done first to last
# measures the workers, not the client's sending.
send_books "$N_TASKS" direct
start_fleet direct --db "$PG_URL"
direct=$(wait_books direct 60)
expect_eq "straight to PostgreSQL: $N_TASKS tasks, every one SUCCESS" "SUCCESS $N_TASKS 0 0" \
    "$(outcome <<<"$direct")" "$direct"
stop_fleet

# ---- 2. 3 workers x 8 children through a pool of 5 --------------------------------------
start_sampler "$TEST_TMP/sessions.txt"
send_books "$N_TASKS" pooled
start_fleet pool --db "$PGB_URL" --db-pooler transaction
expect_eq "each worker skips the connection budget behind the pooler (one info line)" 3 \
    "$(all_logs_count "connection budget not checked: '127.0.0.1:$PGB_PORT/celeriac' is a transaction pooler" "${LOGS[@]}")"
pooled=$(wait_books pooled 60)
stop_sampler
expect_eq "$N_TASKS tasks through the pooler: every one SUCCESS with its title" \
    "SUCCESS $N_TASKS 0 0" "$(outcome <<<"$pooled")" "$pooled"
clients=$(pgb_admin "SHOW CLIENTS" 2>&1)
expect_eq "pgbouncer holds 24 client connections, one per child" 24 \
    "$(grep -c '|celeriac|' <<<"$clients")" "$clients"
names=$(tr '|' '\n' <<<"$clients" | grep -c '^celeriac child [0-7] pid [0-9]* pool[123]@localhost$')
expect_eq "... each named by its own application_name (SHOW CLIENTS)" 24 "$names" "$clients"
max_sessions=$(cut -d'|' -f1 "$TEST_TMP/sessions.txt" | sort -n | tail -1)
if [[ -n $max_sessions && $max_sessions -ge 1 && $max_sessions -le 5 ]]; then
    ok "the server saw at most 5 sessions during the run (max $max_sessions, $(wc -l <"$TEST_TMP/sessions.txt") samples)"
else
    not_ok "the server saw at most 5 sessions during the run" "max: ${max_sessions:-none}"
fi
# pgbouncer sets application_name on the server session to the name of the
# client whose transaction it runs (our readiness probe was psql).
server_names=$(cut -d'|' -f2 "$TEST_TMP/sessions.txt" | tr ',' '\n' | sort -u | grep -v -e '^$' -e '^psql$')
if [[ -n $server_names ]] && ! grep -qv '^celeriac child [0-7] pid [0-9]* pool[123]@localhost$' <<<"$server_names"; then
    ok "the server's application_name names the child whose transaction runs ($(wc -l <<<"$server_names") names seen)"
else
    not_ok "the server's application_name names the child whose transaction runs" "$server_names"
fi
expect_eq "no prepared-statement trouble in the logs" 0 \
    "$(all_logs_count 'prepared statement' "${LOGS[@]}")"
stop_fleet
diag "figures (3 workers x 8 children, $N_TASKS books.get_book_info, date_done first to last):"
diag "  straight to PostgreSQL (24 server sessions): $(jget per_s <<<"$direct") tasks/s ($(jget span_s <<<"$direct") s)"
diag "  through PgBouncer, pool of 5 (max $max_sessions server sessions): $(jget per_s <<<"$pooled") tasks/s ($(jget span_s <<<"$pooled") s)"

# ---- 3. without the flag: one line per child, then it switches over ---------------------
send_books 800 plain
start_worker -b "$REDIS_URL" --result-backend "$REDIS_URL" --db "$PGB_URL" -c 8 \
    -n plain@localhost --without-heartbeat
wait_for 30 _ready "$WORKER_LOG" || not_ok "the worker without --db-pooler is ready" "$(worker_log_tail)"
out=$(wait_books plain 60)
diag "without --db-pooler: $out"
expect_eq "without --db-pooler: 800 tasks, every one SUCCESS with its title" "SUCCESS 800 0 0" \
    "$(outcome <<<"$out")" "$out" "$(worker_log_tail 10)"
said=$(grep -c "database '127.0.0.1:$PGB_PORT/celeriac' lost a prepared statement between transactions (prepared statement \"books_get_book_info\" .*): a transaction pooler such as PgBouncer is in front of it; this child now runs as with --db-pooler transaction" "$WORKER_LOG")
if [[ $said -ge 1 && $said -le 8 ]]; then
    ok "each child that met the pooler said so once, naming the database and the flag ($said of 8)"
else
    not_ok "each child that met the pooler said so once, naming the database and the flag" \
        "$said lines" "$(grep -i 'prepared' "$WORKER_LOG" | head -5)"
fi
diag "$(grep -m1 'lost a prepared statement' "$WORKER_LOG" | sed 's/^.*WARNING/WARNING/')"
stop_worker TERM 20
expect_eq "it stops with exit 0" 0 "$WORKER_RC"

# ---- 4. PgBouncer refusing a feature: a startup parameter it does not pass on -----------
# (options=-c ... in the URL). Each child logs the refusal naming the pooler's
# address, backs off, gives up after --db-connect-attempts; the worker stops
# with status 3 (no child could connect) instead of respawning in a loop.
timeout 60 "$CELERIAC_BIN" worker -A "$BOOKS_LIB" -b "$REDIS_URL" -c 2 -n refused@localhost \
    --db "$PGB_URL?options=-c%20statement_timeout%3D5000" --db-pooler transaction \
    --db-connect-attempts 2 --db-backoff-base 100 </dev/null >"$TEST_TMP/refused.log" 2>&1
rc=$?
WORKER_LOGS+=("$TEST_TMP/refused.log")
expect_eq "a startup parameter PgBouncer refuses: the worker stops with status 3" 3 "$rc" \
    "$(tail -5 "$TEST_TMP/refused.log")"
expect_eq "... each child's cannot-serve line names the pooler's address, the refusal and the remedy" 2 \
    "$(grep -c "cannot serve: connect to '127.0.0.1:$PGB_PORT/celeriac' failed: .*unsupported startup parameter: options (a pooler's refusal: drop it from --db or see ignore_startup_parameters)" "$TEST_TMP/refused.log")" \
    "$(grep -E 'WARNING|ERROR|CRITICAL' "$TEST_TMP/refused.log" | head -6)"
expect_eq "... after backing off (one retry each)" 2 \
    "$(grep -c 'unsupported startup parameter: options .*(attempt 1/2); retrying in [0-9]* ms, with backoff' "$TEST_TMP/refused.log")"

# ---- 5. bad flags ------------------------------------------------------------------------
bad() { # NAME WANT_LINE_REGEX ARGS...
    local name=$1 want=$2
    shift 2
    "$CELERIAC_BIN" worker -A "$BOOKS_LIB" "$@" </dev/null >"$TEST_TMP/bad.out" 2>"$TEST_TMP/bad.err"
    local rc=$?
    WORKER_LOGS+=("$TEST_TMP/bad.err")
    expect_eq "$name: exit 2 with one line" "2 1 1" \
        "$rc $(wc -l <"$TEST_TMP/bad.err") $(grep -cE -- "$want" "$TEST_TMP/bad.err")" \
        "$(cat "$TEST_TMP/bad.err")"
}
bad "--db-pooler sometimes" "--db-pooler wants transaction or none, got 'sometimes'" \
    -b "$REDIS_URL" --db "$PGB_URL" --db-pooler sometimes
bad "--db-pooler transaction with SQLite" "--db-pooler transaction needs a postgresql:// --db" \
    -b "$REDIS_URL" --db "sqlite:///$TEST_TMP/x.db" --db-pooler transaction
bad "--db-pooler transaction with a sqla+ broker in the pooled database" \
    "the sqla\+ broker cannot use the pooled --db '127.0.0.1:$PGB_PORT/celeriac' \(LISTEN and prepared statements need a session\)" \
    -b "sqla+$PGB_URL" --db "$PGB_URL" --db-pooler transaction

check_worker_logs_clean
stop_pgbouncer
tap_done
