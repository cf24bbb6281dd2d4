#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# fleet.sh: `make fleet`, issue 14 point 5. Simulated partitions: builds network
# namespaces on a private subnet (10.231.0.0/24, exists only inside them) joined
# by veth pairs to a bridge in namespace cel-net; cel-redis runs Redis,
# cel-pg a private PostgreSQL 15, cel-w1..w3 one celeriac worker each, cel-cl
# the Python Celery client. While FLEET_TASKS late-ack tasks arrive, nft DROP
# rules cut w1 from everything, then w2 from PostgreSQL only, then w3 from Redis
# only, each healed after FLEET_CUT_S seconds. Checks: every task SUCCESS,
# kombu's unacked hash empty, no FAILURE, the cut host quiet (log lines, CPU)
# and back at work by itself after the heal. Prints the figures and a
# "N passed, N failed" summary. Needs root, ip, nft, redis-server, PostgreSQL 15.
# Everything it creates (namespaces with their veths and nft rules, processes
# by pid, the temp dir) goes on every exit; nothing it did not create is touched.
#
# The workers run with short network timeouts (FLEET_TIMEOUT_S, default 3:
# Redis socket_timeout on broker and backend, libpq keepalives and
# tcp_user_timeout in the --db URL), so a cut is noticed within seconds; the
# check asserts it is (FLEET_NOTICE_MAX_S). FLEET_LEAN=1 (`make fleet-lean`,
# what .ci/run runs) keeps all three cuts and every check with 2,000 tasks,
# 10 s cuts and shorter phases: about a minute instead of about 3.5.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${BUILD:-build}
case "$BUILD" in /*) BD=$BUILD ;; *) BD=$ROOT/$BUILD ;; esac
BIN=$BD/celeriac
LIB=$BD/examples/libbooks.so
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
if [[ ${FLEET_LEAN:-0} == 1 ]]; then
    TASKS=${FLEET_TASKS:-2000}
    CUT_S=${FLEET_CUT_S:-10}
    SETTLE_S=${FLEET_SETTLE_S:-4}
    DRAIN_S=${FLEET_DRAIN_S:-30}
else
    TASKS=${FLEET_TASKS:-20000}
    CUT_S=${FLEET_CUT_S:-40}
    SETTLE_S=${FLEET_SETTLE_S:-8}
    DRAIN_S=${FLEET_DRAIN_S:-90}
fi
TIMEOUT_S=${FLEET_TIMEOUT_S:-3} # Redis socket_timeout; libpq tcp_user_timeout in ms below
# a cut must be noticed within this: the timeout, a blocking fetch (1 s), a
# task arriving to hit the dead link, and slack for a loaded machine
NOTICE_MAX_S=${FLEET_NOTICE_MAX_S:-$((2 * TIMEOUT_S + 3))}
NET=10.231.0
REDIS_IP=$NET.1
PG_IP=$NET.2
CL_IP=$NET.100
HOSTS="redis pg w1 w2 w3 cl"
declare -A IP=([redis]=$REDIS_IP [pg]=$PG_IP [w1]=$NET.11 [w2]=$NET.12 [w3]=$NET.13 [cl]=$CL_IP)
BROKER=redis://$REDIS_IP:6379/0
BACKEND=redis://$REDIS_IP:6379/1
DB=postgresql://postgres@$PG_IP:5432/bench
# what the workers use: the URL's libpq parameters override the worker's defaults
WDB="$DB?connect_timeout=2&keepalives_idle=$TIMEOUT_S&keepalives_interval=1&keepalives_count=2"
WDB+="&tcp_user_timeout=$((TIMEOUT_S * 1000))"

TMP=$(mktemp -d /tmp/celeriac-fleet.XXXXXX)
chmod 755 "$TMP"
PIDS=() # "pid" of every process started here
NETNS=() # every namespace created here (its veth end and nft rules go with it)
PASSED=0
FAILED=0
ok() { echo "ok - $1"; PASSED=$((PASSED + 1)); }
not_ok() { echo "not ok - $1"; shift; for l in "$@"; do echo "#   $l"; done; FAILED=$((FAILED + 1)); }
say() { echo "# $*"; }
now() { date +%s.%N; }

# pid and its descendants, deepest first
tree() {
    local p c
    for c in $(cat /proc/"$1"/task/*/children 2>/dev/null); do
        tree "$c"
    done
    echo "$1"
}

cleanup() {
    local pid all=() i
    # workers first, while Redis and PostgreSQL are still there to say goodbye to
    for pid in "${PIDS[@]}"; do
        all+=($(tree "$pid"))
        kill -TERM "$pid" 2>/dev/null
    done
    for i in $(seq 100); do
        alive=0
        for pid in "${PIDS[@]}"; do
            kill -0 "$pid" 2>/dev/null && alive=1
        done
        [[ $alive == 0 ]] && break
        sleep 0.1
    done
    for pid in "${all[@]}"; do
        kill -KILL "$pid" 2>/dev/null && echo "# killed $pid (did not stop on TERM in 10 s)"
    done
    if [[ -f $TMP/pg/data/postmaster.pid ]]; then
        pid=$(head -1 "$TMP/pg/data/postmaster.pid")
        if kill -QUIT "$pid" 2>/dev/null; then
            for _ in $(seq 50); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
        fi
    fi
    local ns
    for ns in "${NETNS[@]}"; do
        ip netns del "$ns" 2>/dev/null # takes its veth ends, the bridge and nft rules along
    done
    [[ ${FLEET_KEEP:-0} == 1 ]] || rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

die() { echo "Bail out! $*"; exit 1; }

in_ns() { local h=$1; shift; ip netns exec "cel-$h" "$@"; }
add_ns() { ip netns add "$1" && NETNS+=("$1"); }

[[ $(id -u) -eq 0 ]] || die "needs root (network namespaces)"
command -v nft >/dev/null || die "nft not found (apt-get install nftables)"
command -v ip >/dev/null || die "ip not found (apt-get install iproute2)"
[[ -x $BIN && -f $LIB ]] || die "build first: $BIN, $LIB"
for h in $HOSTS net; do
    ip netns list | grep -qw "cel-$h" && die "namespace cel-$h exists already (a leftover run?)"
done

T_START=$(date +%s)
say "$TASKS tasks, cuts of $CUT_S s, settle $SETTLE_S s, timeouts $TIMEOUT_S s" \
    "(cuts must be noticed within $NOTICE_MAX_S s)"

# ---- network ----------------------------------------------------------------
add_ns cel-net || die "ip netns add cel-net"
ip -n cel-net link set lo up
ip -n cel-net link add br-celeriac type bridge
ip -n cel-net link set br-celeriac up
for h in $HOSTS; do
    add_ns "cel-$h" || die "ip netns add cel-$h"
    ip -n cel-net link add "v-$h" type veth peer name eth0 netns "cel-$h" || die "veth $h"
    ip -n cel-net link set "v-$h" master br-celeriac up
    ip -n "cel-$h" link set lo up
    ip -n "cel-$h" addr add "${IP[$h]}/24" dev eth0
    ip -n "cel-$h" link set eth0 up
done

# ---- Redis --------------------------------------------------------------------
ip netns exec cel-redis redis-server --bind "$REDIS_IP" --port 6379 --save '' --appendonly no \
    --protected-mode no --dir "$TMP" --logfile "$TMP/redis.log" &
PIDS+=($!)
# ---- PostgreSQL ---------------------------------------------------------------
mkdir -p "$TMP/pg" && chown postgres "$TMP/pg"
runuser -u postgres -- "$PGBIN/initdb" -A trust --nosync -U postgres -E UTF8 --locale=C.UTF-8 \
    -D "$TMP/pg/data" >"$TMP/initdb.log" 2>&1 || die "initdb failed ($TMP/initdb.log)"
cat >>"$TMP/pg/data/postgresql.conf" <<CONF
listen_addresses = '$PG_IP'
unix_socket_directories = '$TMP/pg'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 40
CONF
echo "host all all $NET.0/24 trust" >>"$TMP/pg/data/pg_hba.conf"
in_ns pg runuser -u postgres -- "$PGBIN/pg_ctl" -w -t 60 -D "$TMP/pg/data" -l "$TMP/pg/log" start \
    >/dev/null || die "pg_ctl start failed"
for _ in $(seq 50); do
    in_ns cl redis-cli -h "$REDIS_IP" ping 2>/dev/null | grep -q PONG && break
    sleep 0.1
done
in_ns cl psql -X -q -h "$PG_IP" -U postgres -d postgres -c 'CREATE DATABASE bench' || die "createdb"
in_ns cl "$ROOT/examples/books/seed.sh" postgres "$DB" 10000 || die "seed"

# ---- workers ------------------------------------------------------------------
export CELERIAC_RUNTIME_DIR=$TMP
declare -A WPID
for w in w1 w2 w3; do
    ip netns exec "cel-$w" "$BIN" worker -A "$LIB" -c 2 -b "$BROKER" --result-backend "$BACKEND" \
        --db "$WDB" --broker-transport-option "socket_timeout=$TIMEOUT_S" \
        --broker-transport-option socket_connect_timeout=2 \
        --result-backend-transport-option "socket_timeout=$TIMEOUT_S" \
        --result-backend-transport-option socket_connect_timeout=2 --acks-late --visibility-timeout 5 --sweep-interval 1 --db-connect-timeout 2 \
        --db-idle-check 1000 -n "$w@fleet" -l debug --log-format json -f "$TMP/$w.log" >"$TMP/$w.out" 2>&1 &
    WPID[$w]=$!
    PIDS+=($!)
done
sleep 2
for w in w1 w2 w3; do
    kill -0 "${WPID[$w]}" 2>/dev/null || die "worker $w died at start: $(tail -3 "$TMP/$w.log")"
done

# CPU ticks (utime+stime) of a worker's master and its children
ticks() {
    local m=$1 t=0 p
    for p in $m $(cat /proc/"$m"/task/*/children 2>/dev/null); do
        [[ -r /proc/$p/stat ]] || continue
        t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
    done
    echo $t
}

# ---- the client: FLEET_TASKS tasks spread over the whole run ------------------
RUN_S=$((4 + 3 * (CUT_S + SETTLE_S) + SETTLE_S)) # tasks keep coming after the last heal
ip netns exec cel-cl /usr/bin/python3 "$ROOT/tests/fleet/client.py" send \
    "$BROKER" "$TASKS" "$RUN_S" "$TMP/ids" >"$TMP/client.log" 2>&1 &
CLIENT=$!
PIDS+=($CLIENT)

: >"$TMP/events"
# cut HOST WHAT PEERS...: nft drops both ways to each peer (a partition, not a refusal)
cut() {
    local w=$1 what=$2; shift 2
    local p rules=""
    for p in "$@"; do
        rules+="add rule inet fleet in ip saddr $p drop; add rule inet fleet out ip daddr $p drop; "
    done
    in_ns "$w" nft "add table inet fleet; add chain inet fleet in { type filter hook input priority 0; }; add chain inet fleet out { type filter hook output priority 0; }; $rules"
    echo "$w $what cut $(now) $(ticks "${WPID[$w]}")" >>"$TMP/events"
    say "$(date -u +%T) $w cut from $what"
}
heal() {
    local w=$1 what=$2
    echo "$w $what heal $(now) $(ticks "${WPID[$w]}")" >>"$TMP/events"
    in_ns "$w" nft delete table inet fleet
    say "$(date -u +%T) $w healed"
}

sleep 4
cut w1 everything "$REDIS_IP" "$PG_IP"
sleep "$CUT_S"
heal w1 everything
sleep "$SETTLE_S"
cut w2 postgresql "$PG_IP"
sleep "$CUT_S"
heal w2 postgresql
sleep "$SETTLE_S"
cut w3 redis "$REDIS_IP"
sleep "$CUT_S"
heal w3 redis
wait "$CLIENT" || not_ok "client sent every task" "$(tail -5 "$TMP/client.log")"
say "$(tail -1 "$TMP/client.log")"

# ---- wait for the last results (visibility timeout 5 s, sweep 1 s) ------------
deadline=$(( $(date +%s) + DRAIN_S ))
while :; do
    left=$(in_ns cl /usr/bin/python3 "$ROOT/tests/fleet/client.py" pending "$BACKEND" "$TMP/ids")
    [[ $left == 0 ]] && break
    (( $(date +%s) > deadline )) && break
    sleep 2
done
echo "done $(now)" >>"$TMP/events"
for w in w1 w2 w3; do
    kill -0 "${WPID[$w]}" 2>/dev/null && ok "$w still running at the end" \
        || not_ok "$w still running at the end" "$(tail -3 "$TMP/$w.log")"
done

# ---- checks and figures -------------------------------------------------------
in_ns cl /usr/bin/python3 "$ROOT/tests/fleet/client.py" check "$BROKER" "$BACKEND" "$TMP/ids" \
    "$TMP/events" "$TMP" "$NOTICE_MAX_S" >"$TMP/check.out" 2>&1
cat "$TMP/check.out"
P=$(grep -c '^ok - ' "$TMP/check.out")
F=$(grep -c '^not ok - ' "$TMP/check.out")
PASSED=$((PASSED + P))
FAILED=$((FAILED + F))
[[ ${FLEET_KEEP:-0} == 1 ]] && say "kept $TMP"
say "wall time $(( $(date +%s) - T_START )) s (before teardown)"
echo "$PASSED passed, $FAILED failed"
[[ $FAILED -eq 0 ]]
