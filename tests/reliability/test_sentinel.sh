#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_sentinel.sh (issue 14, point 1): Redis Sentinel for the broker and the
# result backend, as kombu and Celery write it. One master, one replica and
# three sentinels (Debian's redis-sentinel, quorum 2) on loopback; Python
# Celery publishes a late-ack batch through the sentinels; the master is
# SIGKILLed mid-run. Every task must end SUCCESS (the publishes were
# replicated before the kill, and replication keeps order, so what the new
# master holds is a prefix of what celeriac wrote: a message is queued,
# unacked (restored by the sweep) or acked after its result); each process
# logs the failover once; the log stays small. Bad input: a master name no
# sentinel knows (one line, backoff, as for an unreachable Redis), a list
# mixing schemes and a missing master_name (exit 2, one line), also for
# `celeriac call` and `celeriac inspect`. The other clients through the
# sentinels: `celeriac inspect ping`, `celeriac call --wait` and a C program
# on celeriac_client_new_with_transport_options (libceleriac-client.a).
. "$(dirname "$0")/lib.sh"

N=${SENTINEL_TASKS:-2000}
NAME=mymaster
SDIR=$TEST_TMP/sentinel
mkdir -p "$SDIR"
if command -v redis-sentinel >/dev/null; then
    SENTINEL_CMD=(redis-sentinel)
else # the same binary: Debian's redis-sentinel package only adds the name
    SENTINEL_CMD=(redis-server --sentinel)
fi

cli() { redis-cli -h 127.0.0.1 -p "$1" "${@:2}"; }

# start_node NAME PORT [replicaof PORT]: a redis-server without persistence.
start_node() {
    local name=$1 port=$2
    {
        echo "port $port"
        echo "bind 127.0.0.1"
        echo "dir $SDIR"
        echo "dbfilename $name.rdb"
        echo "logfile $SDIR/$name.log"
        echo "save ''"
        echo "appendonly no"
        echo "daemonize no"
        echo "repl-diskless-sync yes"
        echo "repl-diskless-sync-delay 0"
        [[ ${3:-} == replicaof ]] && echo "replicaof 127.0.0.1 $4"
    } >"$SDIR/$name.conf"
    redis-server "$SDIR/$name.conf" </dev/null >/dev/null 2>&1 &
    eval "${name}_PID=$!"
    _svc_record_pid "$!" redis-server
    disown "$!" # stopped by pid; no "Killed" notice from bash
    wait_for 20 cli "$port" ping || { not_ok "setup: $name did not answer on $port"; tap_done; }
}

start_sentinel() { # PORT
    {
        echo "port $1"
        echo "bind 127.0.0.1"
        echo "dir $SDIR"
        echo "logfile $SDIR/sentinel-$1.log"
        echo "daemonize no"
        echo "sentinel monitor $NAME 127.0.0.1 $PM 2"
        echo "sentinel down-after-milliseconds $NAME 1000"
        echo "sentinel failover-timeout $NAME 4000"
        echo "sentinel parallel-syncs $NAME 1"
    } >"$SDIR/sentinel-$1.conf"
    "${SENTINEL_CMD[@]}" "$SDIR/sentinel-$1.conf" </dev/null >/dev/null 2>&1 &
    _svc_record_pid "$!" sentinel
    disown "$!"
}

PM=$(free_port)
PR=$(free_port)
start_node master "$PM"
start_node replica "$PR" replicaof "$PM"
_linked() { cli "$PR" info replication | grep -q 'master_link_status:up'; }
wait_for 20 _linked || { not_ok "setup: the replica did not sync"; tap_done; }
S=()
for i in 1 2 3; do
    p=$(free_port)
    S+=("$p")
    start_sentinel "$p"
done
# each sentinel must know the replica and the two other sentinels
_ready() {
    local p
    for p in "${S[@]}"; do
        [[ $(cli "$p" sentinel replicas "$NAME" 2>/dev/null | grep -c "^$PR$") -ge 1 ]] || return 1
        [[ $(cli "$p" sentinel sentinels "$NAME" 2>/dev/null | grep -c '^name$') == 2 ]] || return 1
    done
}
wait_for 30 _ready || { not_ok "setup: the sentinels did not find the replica and each other"; tap_done; }
diag "master :$PM, replica :$PR, sentinels :${S[0]} :${S[1]} :${S[2]} (${SENTINEL_CMD[*]})"

BROKER="sentinel://127.0.0.1:${S[0]};sentinel://127.0.0.1:${S[1]};sentinel://127.0.0.1:${S[2]}"
RESULTS="sentinel://127.0.0.1:${S[0]}/1;sentinel://127.0.0.1:${S[1]}/1;sentinel://127.0.0.1:${S[2]}/1"
build_rel_lib || tap_done

# ---- bad input ---------------------------------------------------------------------
# bad_run NAME WANT ARGS...: `celeriac ARGS...` exits 2 with one stderr line containing WANT.
bad_run() {
    local name=$1 want=$2 rc
    shift 2
    "$CELERIAC_BIN" "$@" </dev/null >"$TEST_TMP/bad.out" 2>"$TEST_TMP/bad.err"
    rc=$?
    if [[ $rc == 2 && $(wc -l <"$TEST_TMP/bad.err") == 1 ]] && grep -q -- "$want" "$TEST_TMP/bad.err"; then
        ok "$name: exit 2, one line ($(cat "$TEST_TMP/bad.err"))"
    else
        not_ok "$name: exit 2 with one line naming '$want'" "exit $rc" "$(cat "$TEST_TMP/bad.err")"
    fi
}
bad_start() { bad_run "$1" "$2" worker -A "$REL_LIB" -c 1 "${@:3}"; }
bad_start "a list mixing sentinel:// and redis://" "mixes 'sentinel://' with 'redis://'" \
    -b "sentinel://127.0.0.1:${S[0]};redis://127.0.0.1:$PM" --broker-transport-option master_name=$NAME
bad_start "sentinel:// broker without master_name" "needs --broker-transport-option master_name" \
    -b "$BROKER"
bad_start "sentinel:// result backend without master_name" \
    "needs --result-backend-transport-option master_name" \
    -b "$BROKER" --broker-transport-option master_name=$NAME --result-backend "$RESULTS"
bad_start "an unknown transport option" "unknown option 'visibility'" \
    -b "$BROKER" --broker-transport-option visibility=3
bad_run "call: a bad socket_timeout" "socket_timeout wants a positive number of seconds, got 'soon'" \
    call rel.pid 0 -b "$BROKER" --broker-transport-option master_name=$NAME \
    --broker-transport-option socket_timeout=soon
bad_run "call --wait: a sentinel:// result backend without master_name" \
    "needs --result-backend-transport-option master_name" \
    call rel.pid 0 --wait -b "$BROKER" --broker-transport-option master_name=$NAME --result-backend "$RESULTS"
bad_run "inspect: an unknown transport option" "unknown option 'visibility'" \
    inspect ping -b "$BROKER" --broker-transport-option visibility=3
bad_run "control: sentinel:// without master_name" "needs --broker-transport-option master_name" \
    control heartbeat -b "$BROKER"

# A name no sentinel knows: like an unreachable Redis, the children retry
# with backoff and say so once per episode.
start_worker -A "$REL_LIB" -c 2 -b "$BROKER" --broker-transport-option master_name=nosuch \
    -n unknown@localhost
sleep 4
if worker_alive; then
    ok "a master name no sentinel knows: the worker keeps retrying (as for an unreachable Redis)"
else
    not_ok "a master name no sentinel knows: the worker keeps retrying" "$(worker_log_tail 10)"
fi
line=$(grep -m1 "knows a master named 'nosuch'" "$WORKER_LOG")
per_proc=$(grep "knows a master named 'nosuch'" "$WORKER_LOG" | grep -oE '/[A-Za-z]+(-[0-9]+)?\]' | sort | uniq -c |
    awk '$1 > 1' | wc -l)
if [[ -n $line && $line == *"127.0.0.1:${S[0]},127.0.0.1:${S[1]},127.0.0.1:${S[2]}"* && $per_proc == 0 ]]; then
    ok "... one line per process names the sentinels and the reason ($(sed 's/.*\] //' <<<"$line"))"
else
    not_ok "... one line per process names the sentinels and the reason" "$(worker_log_tail 10)"
fi
lines=$(wc -l <"$WORKER_LOG")
((lines < 40)) && ok "... and no flood: $lines log lines in 4 s" ||
    not_ok "... and no flood ($lines log lines in 4 s)" "$(worker_log_tail 10)"
stop_worker TERM 10

# ---- a password on the master and on the sentinel ----------------------------------
# The URL's password goes to the master, and to a sentinel that answers NOAUTH.
PW=$(free_port)
{
    echo "port $PW"; echo "bind 127.0.0.1"; echo "dir $SDIR"; echo "dbfilename pw.rdb"
    echo "logfile $SDIR/pw.log"; echo "save ''"; echo "requirepass s3cr3t"
} >"$SDIR/pw.conf"
redis-server "$SDIR/pw.conf" </dev/null >/dev/null 2>&1 &
_svc_record_pid "$!" redis-server
disown "$!"
SP=$(free_port)
{
    echo "port $SP"; echo "bind 127.0.0.1"; echo "dir $SDIR"; echo "logfile $SDIR/sentinel-pw.log"
    echo "requirepass s3cr3t"
    echo "sentinel monitor pwmaster 127.0.0.1 $PW 1"; echo "sentinel auth-pass pwmaster s3cr3t"
} >"$SDIR/sentinel-pw.conf"
"${SENTINEL_CMD[@]}" "$SDIR/sentinel-pw.conf" </dev/null >/dev/null 2>&1 &
_svc_record_pid "$!" sentinel
disown "$!"
_pw_up() { redis-cli --no-auth-warning -a s3cr3t -p "$SP" sentinel get-master-addr-by-name pwmaster | grep -q "$PW"; }
wait_for 20 _pw_up || diag "the password-protected sentinel did not come up"
start_worker -A "$REL_LIB" -c 1 --without-remote-control -b "sentinel://:s3cr3t@127.0.0.1:$SP/2" \
    --broker-transport-option master_name=pwmaster -n pw@localhost
wait_children 1 20
_pw_found() { log_has "master 'pwmaster' is at 127.0.0.1:$PW"; }
if wait_for 10 _pw_found && ! log_has "s3cr3t"; then
    ok "a password on master and sentinel: both authenticated, the password never logged"
else
    not_ok "a password on master and sentinel: both authenticated, the password never logged" \
        "$(worker_log_tail 10)"
fi
stop_worker TERM 10

# ---- publish through the sentinels (kombu's SentinelChannel) -----------------------
ids=$TEST_TMP/ids
cat >"$TEST_TMP/pub.py" <<'EOF'
import os, sys
from celery import Celery
app = Celery("sn", broker=os.environ["BROKER"], backend=os.environ["RESULTS"])
app.conf.update(broker_transport_options={"master_name": os.environ["NAME"]},
                result_backend_transport_options={"master_name": os.environ["NAME"]},
                broker_connection_retry_on_startup=False, task_serializer="json",
                accept_content=["json"])
if sys.argv[1] == "bulk":
    n = int(sys.argv[2])
    with app.connection_for_write() as conn, open(sys.argv[3], "w") as out:
        producer = app.amqp.Producer(conn)
        for i in range(n):
            out.write(app.send_task("rel.sleep_late", args=[0.02], producer=producer).id + "\n")
else:  # one round trip through Celery's SentinelBackend
    r = app.send_task("rel.sleep_late", args=[0])
    print(r.get(timeout=20)["pid"] > 0)
EOF
pub() { BROKER=$BROKER RESULTS=$RESULTS NAME=$NAME "$PY" "$TEST_TMP/pub.py" "$@"; }

start_worker -A "$REL_LIB" -c 4 --acks-late -b "$BROKER" --broker-transport-option master_name=$NAME \
    --result-backend "$RESULTS" --result-backend-transport-option master_name=$NAME \
    --visibility-timeout 5 --sweep-interval 1 -n sentinel@localhost
wait_children 4 20 || not_ok "worker started 4 children" "$(worker_log_tail)"
got=$(pub one 2>&1)
expect_eq "Python Celery (kombu sentinel broker, SentinelBackend) round trip through celeriac" True \
    "$got" "$(worker_log_tail 10)"
if log_has "redis sentinel: master '$NAME' is at 127.0.0.1:$PM \(from sentinel 127.0.0.1:"; then
    ok "each process logs where the sentinels put the master"
else
    not_ok "each process logs where the sentinels put the master" "$(worker_log_tail 10)"
fi

# ---- the other clients through the sentinels -----------------------------------------
tc=$(date +%s.%N)
out=$("$CELERIAC_BIN" inspect ping -b "$BROKER" --broker-transport-option master_name=$NAME \
    --broker-transport-option socket_timeout=5 -d sentinel@localhost -t 5 2>&1)
rc=$?
if [[ $rc == 0 && $out == *"sentinel@localhost: OK"*pong* ]]; then
    ok "celeriac inspect ping through the sentinels with master_name"
else
    not_ok "celeriac inspect ping through the sentinels with master_name" "exit $rc" "$out"
fi
out=$(timeout 30 "$CELERIAC_BIN" call rel.pid 0 --wait --timeout 20 -b "$BROKER" \
    --broker-transport-option master_name=$NAME --result-backend "$RESULTS" \
    --result-backend-transport-option master_name=$NAME 2>"$TEST_TMP/call.err")
rc=$?
if [[ $rc == 0 && $out == '{"pid":'* ]]; then
    ok "celeriac call --wait through sentinel:// broker and result backend ($out)"
else
    not_ok "celeriac call --wait through sentinel:// broker and result backend" "exit $rc" "$out" \
        "$(cat "$TEST_TMP/call.err")" "$(worker_log_tail 10)"
fi
SAN=()
nm "$BUILD_DIR/libceleriac-client.a" 2>/dev/null | grep -q ' U __asan_' && SAN=(-fsanitize=address,undefined)
# shellcheck disable=SC2046
if cc -std=c11 -Wall -Wextra -Werror -O1 -g "${SAN[@]}" -I"$CELERIAC_ROOT/include" \
    -o "$TEST_TMP/sentinel_client" "$REL_DIR/sentinel_client.c" "$BUILD_DIR/libceleriac-client.a" \
    $(pkg-config --libs hiredis jansson librabbitmq msgpack openssl) -lm 2>"$TEST_TMP/sc-cc.log"; then
    # stdout: the program's lines; stderr: the client's log (where the master is)
    out=$(timeout 30 "$TEST_TMP/sentinel_client" "$BROKER" "$RESULTS" "$NAME" 2>"$TEST_TMP/sc.err")
    rc=$?
    expect_eq "C client (celeriac_client_new_with_transport_options): a task through the sentinels, its result SUCCESS" \
        "0 SUCCESS" "$rc $(sed -n 1p <<<"$out")" "$out" "$(cat "$TEST_TMP/sc.err")" "$(worker_log_tail 10)"
    expect_eq "... a bad option value: refused with one line" \
        "refused: broker_transport_options socket_timeout wants a positive number of seconds, got 'soon'" \
        "$(sed -n 2p <<<"$out")" "$out"
    expect_eq "... sentinel:// without master_name: refused with one line" \
        "refused: bad broker URL: sentinel:// needs broker_transport_options master_name=NAME" \
        "$(sed -n 3p <<<"$out")" "$out"
else
    not_ok "build a C program against libceleriac-client.a" "$(cat "$TEST_TMP/sc-cc.log")"
fi
diag "$(printf 'inspect, call and the C client through the sentinels: %.1f s' "$(bc <<<"$(date +%s.%N) - $tc")")"

t0=$SECONDS
pub bulk "$N" "$ids" || not_ok "publish $N tasks through the sentinels"
waited=$(cli "$PM" wait 1 5000)
diag "published $N late-ack tasks in $((SECONDS - t0)) s; WAIT 1 5000 -> $waited replica(s) have them"
done_on() { cli "$1" -n 1 dbsize 2>/dev/null || echo 0; }
_some() { (($(done_on "$PM") >= N / 4)); }
wait_for 60 _some || diag "only $(done_on "$PM") results after 60 s"
kids=$(worker_children)
# What the failover can lose is what the replica had not received at the
# kill: the master's replication offset just before it against the
# replica's final one (the gap can only be larger: writes went on between
# the sample and the kill), and the results the old master had against
# those the new one starts with. The tasks behind them are still queued or
# unacked on the new master, so they run again: celeriac adds no loss.
offset() { cli "$1" info replication | tr -d '\r' | sed -n 's/^master_repl_offset://p'; }
# On loopback a replica is never behind, and a killed master's kernel
# still delivers what it had sent: to open a real window, the replication
# link is cut 0.5 s before the kill and the replica cannot come back (a
# masterauth this master refuses), as in a network blip. Writes in that
# window exist only on the old master.
cli "$PR" config set masterauth wrong-on-purpose >/dev/null
cli "$PM" client kill type replica >/dev/null
sleep 0.5
r_off=$(offset "$PR")
before=$(done_on "$PM")
m_off=$(offset "$PM")
kill -KILL "$master_PID"
tk=$(date +%s.%N)
_switched() { [[ $(cli "${S[0]}" sentinel get-master-addr-by-name "$NAME" 2>/dev/null | sed -n 2p) == "$PR" ]]; }
wait_for 30 _switched || not_ok "the sentinels promoted the replica" "$(tail -5 "$SDIR/sentinel-${S[0]}.log")"
ts=$(date +%s.%N)
at_switch=$(done_on "$PR")
diag "master SIGKILLed with >= $before of $N results stored; the replica had $at_switch of them when" \
    "promoted: >= $((before > at_switch ? before - at_switch : 0)) stored results and >= $((m_off > r_off ? m_off - r_off : 0)) bytes of writes" \
    "(results, acks, pops) were lost with the master (asynchronous replication)"
_grew() { (($(done_on "$PR") > at_switch)); }
wait_for 30 _grew
tr=$(date +%s.%N)
diag "$(printf 'sentinels switched %.1f s after the kill; the first new result %.1f s after the kill' \
    "$(bc <<<"$ts - $tk")" "$(bc <<<"$tr - $tk")")"
tally=$(RESULT_URL="redis://127.0.0.1:$PR/1" rel tally "$ids" --timeout 90)
diag "after the failover: $tally"
expect_eq "master killed in the middle of $N late-ack tasks: all $N SUCCESS on the new master" \
    "$N" "$(jget counts.SUCCESS <<<"$tally")" "$tally" "$(worker_log_tail 20)"
_drained() { [[ "$(cli "$PR" llen celery) $(cli "$PR" hlen unacked)" == "0 0" ]]; }
if wait_for 20 _drained; then
    ok "afterwards nothing is queued or unacked on the new master"
else
    not_ok "afterwards nothing is queued or unacked on the new master" \
        "queue $(cli "$PR" llen celery), unacked $(cli "$PR" hlen unacked)" "$(worker_log_tail 15)"
fi
expect_eq "no child died: the same four children" "$kids" "$(worker_children)"
restored=$(grep -oE 'restored [0-9]+ unacknowledged' "$WORKER_LOG" | grep -oE '[0-9]+' | paste -sd+ | bc 2>/dev/null)
diag "messages the visibility sweep put back (popped on the old master, never settled): ${restored:-0}"
moved="moved from 127.0.0.1:$PM to 127.0.0.1:$PR"
by_proc=$(grep -F "$moved" "$WORKER_LOG" | grep -oE '/[A-Za-z]+(-[0-9]+)?\]' | sort | uniq -c)
children_once=$(grep -c 'ForkPoolWorker' <<<"$by_proc")
if [[ $children_once == 4 ]] && awk '$1 != 1 {bad = 1} END {exit bad}' <<<"$by_proc"; then
    ok "one failover line per process ($(grep -cF "$moved" "$WORKER_LOG") lines: $(tr -s ' \n' ' ' <<<"$by_proc"))"
else
    not_ok "one failover line per process, every child among them" "$by_proc" "$(worker_log_tail 20)"
fi
diag "the line: $(grep -m1 -F "$moved" "$WORKER_LOG" | sed 's/^.*\] //')"
lines=$(wc -l <"$WORKER_LOG")
((lines < 150)) && ok "no spin: $lines log lines for the whole run" ||
    not_ok "no spin: the log stays small ($lines lines)" "$(worker_log_tail 30)"
got=$(pub one 2>&1)
expect_eq "a Python round trip after the failover" True "$got" "$(worker_log_tail 10)"

# ---- a switchover: the old master comes back as a replica, SENTINEL FAILOVER -----------
# The master is demoted while alive: children meet READONLY / UNBLOCKED or
# the sentinel's CLIENT KILL, and must find the new master again.
start_node master "$PM" replicaof "$PR"
_pm_replica() {
    cli "${S[0]}" sentinel replicas "$NAME" | tr -d '\r' | paste - - |
        awk -v p="$PM" '$1 == "port" {port = $2} $1 == "flags" && port == p && $2 == "slave" {ok = 1} END {exit !ok}'
}
_pm_synced() { cli "$PM" info replication | grep -q 'master_link_status:up'; }
wait_for 30 _pm_synced && wait_for 30 _pm_replica || diag "the old master did not come back as a replica in time"
ids2=$TEST_TMP/ids2
N2=$((N / 2))
pub bulk "$N2" "$ids2" || not_ok "publish $N2 more tasks"
cli "$PR" wait 1 5000 >/dev/null
_started() { (($(cli "$PR" llen celery) < N2 * 3 / 4)); }
wait_for 30 _started
fo=$(cli "${S[0]}" sentinel failover "$NAME")
_back() { [[ $(cli "${S[0]}" sentinel get-master-addr-by-name "$NAME" 2>/dev/null | sed -n 2p) == "$PM" ]]; }
wait_for 30 _back || not_ok "SENTINEL FAILOVER ($fo) moved the master back to :$PM"
tb=$SECONDS
moved="moved from 127.0.0.1:$PR to 127.0.0.1:$PM"
_followed() { (($(grep -cF "$moved" "$WORKER_LOG") >= 4)); }
wait_for 30 _followed
# A live old master stays a master until Sentinel's next INFO to it (up to
# 10 s) reconfigures it and kills its clients: that is when the children
# move. What they wrote there meanwhile is discarded by its resync and
# done again (as with kombu, which also waits for an error).
diag "the children followed the switchover $((SECONDS - tb)) s after the sentinels announced it"
tally=$(RESULT_URL="redis://127.0.0.1:$PM/1" rel tally "$ids2" --timeout 60)
diag "after the switchover: $tally"
expect_eq "switchover in the middle of $N2 late-ack tasks: all $N2 SUCCESS" \
    "$N2" "$(jget counts.SUCCESS <<<"$tally")" "$tally" "$(worker_log_tail 20)"
by_proc=$(grep -F "$moved" "$WORKER_LOG" | grep -oE '/[A-Za-z]+(-[0-9]+)?\]' | sort | uniq -c)
if [[ $(grep -c 'ForkPoolWorker' <<<"$by_proc") == 4 ]] && awk '$1 != 1 {bad = 1} END {exit bad}' <<<"$by_proc"; then
    ok "one switchover line per process ($(tr -s ' \n' ' ' <<<"$by_proc"))"
else
    not_ok "one switchover line per process, every child among them" "$by_proc" "$(worker_log_tail 20)"
fi
readonly_hits=$(grep -cE 'READONLY|UNBLOCKED' "$WORKER_LOG")
diag "connections closed on READONLY/UNBLOCKED during the switchover: $readonly_hits"
stop_worker TERM 20
check_worker_logs_clean
tap_done
