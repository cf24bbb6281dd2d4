#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# chaos.sh (issue 3, point 9; `make chaos`): CHAOS_TASKS (default 10,000)
# books.get_book_info tasks on PostgreSQL with `--acks-late -c 4`, while a
# killer SIGKILLs a random pool child every ~0.5 s, PostgreSQL is restarted
# once (at 25 % done) and Redis (appendonly yes, appendfsync always) once (at
# 60 % done). Afterwards every task id must have a stored SUCCESS (all result
# keys are read), `unacked` must be empty, and the worker log must account for
# every message that went back to a queue: a Redis MONITOR counts the pushes
# of redelivered messages, which must equal the requeues the log reports.
#
# Prints the figures (tasks, kills, restarts, requeues, duration, lost) and
# TAP lines; exits non-zero if a check failed.
#
# CHAOS_ACKS=early runs the same storm on an early-ack worker, which pops with
# a plain BRPOP and keeps no unacked record: a child killed between pop and
# start has its message put back from its slot's parcel (logged "put back"); a
# child killed while running a task loses that task as early ack means to
# (FAILURE WorkerLostError stored). Every id must then have a result, every
# FAILURE must be a WorkerLostError, and there can be no more of them than kills.
#
# Environment: CHAOS_ACKS (late), CHAOS_TASKS (10000), CHAOS_KILL_INTERVAL (0.5 s, +-20 %),
# CHAOS_VISIBILITY_TIMEOUT (15 s: how soon a message stranded by a kill
# between its pop and its start is restored), CHAOS_TIMEOUT (900 s),
# BUILD, KEEP_TMP=1 keeps the logs.
. "$(dirname "$0")/lib.sh"

N=${CHAOS_TASKS:-10000}
KILL_INTERVAL=${CHAOS_KILL_INTERVAL:-0.5}
VT=${CHAOS_VISIBILITY_TIMEOUT:-15}
LIMIT=${CHAOS_TIMEOUT:-900}
CONC=4
ACKS=${CHAOS_ACKS:-late}
case $ACKS in
late) ACK_FLAGS=(--acks-late) ;;
early) ACK_FLAGS=() ;;
*) echo "chaos: CHAOS_ACKS must be early or late, not '$ACKS'" >&2; exit 2 ;;
esac

start_redis_aof
start_pg
seed_books_pg || { not_ok "chaos: seed the books table"; tap_done; }
RESULT_URL="redis://127.0.0.1:$REDIS_PORT/1"
export RESULT_URL
done_count() { redis_cli -n 1 dbsize 2>/dev/null | grep -E '^[0-9]+$' || echo -1; }

IDS=$TEST_TMP/ids
KILLS=$TEST_TMP/kills
MONLOG=$TEST_TMP/monitor.pushes
PAUSE=$TEST_TMP/killer.pause
STOP=$TEST_TMP/chaos.stop
: >"$KILLS"
: >"$MONLOG"

t_pub=$SECONDS
rel bulk books.get_book_info "$N" --out "$IDS" || { not_ok "chaos: publish $N tasks"; tap_done; }
diag "published $N books.get_book_info in $((SECONDS - t_pub)) s"

# ---- the MONITOR: every LPUSH/RPUSH the server executes, across restarts ----------------
monitor_loop() {
    while [[ ! -f $STOP ]]; do
        redis_cli monitor 2>/dev/null | grep -a --line-buffered -E '"[LR]PUSH"' >>"$MONLOG"
        sleep 0.02
    done
}
monitor_up() { redis_cli client list 2>/dev/null | grep -q 'cmd=monitor'; }
monitor_stop() {
    local id
    for id in $(redis_cli client list 2>/dev/null | awk '/cmd=monitor/ { sub("id=", "", $1); print $1 }'); do
        redis_cli client kill id "$id" >/dev/null 2>&1
    done
}
monitor_loop &
MON_LOOP=$!
_svc_record_pid "$MON_LOOP" bash
wait_for 10 monitor_up || diag "MONITOR did not connect"

# ---- the worker ---------------------------------------------------------------------------
t0=$(date +%s.%N)
start_worker -c "$CONC" "${ACK_FLAGS[@]}" -b "$REDIS_URL" --result-backend "$RESULT_URL" --db "$PG_URL" \
    -l debug --visibility-timeout "$VT" --sweep-interval 2 \
    --db-backoff-base 200 --db-backoff-cap 2000 -n chaos@localhost
wait_children "$CONC" 20 || diag "worker did not start $CONC children: $(worker_log_tail 5)"

# ---- the killer: a random pool child every ~KILL_INTERVAL s -----------------------------
killer() {
    local kids k
    while [[ ! -f $STOP ]]; do
        if [[ ! -f $PAUSE ]]; then
            read -r -a kids <<<"$(worker_children)"
            if ((${#kids[@]})); then
                k=${kids[RANDOM % ${#kids[@]}]}
                kill -KILL "$k" 2>/dev/null && echo "$(date +%s.%N) $k" >>"$KILLS"
            fi
        fi
        sleep "$(awk -v i="$KILL_INTERVAL" -v r="$RANDOM" 'BEGIN { printf "%.3f", i * (0.8 + 0.4 * r / 32767) }')"
    done
}
killer &
KILLER=$!
_svc_record_pid "$KILLER" bash

# ---- drive: restarts at 25 % and 60 %, stop killing at 98 % ----------------------------------
pg_restarted=no redis_restarted=no killing=yes
pg_at="" redis_at="" last_report=$SECONDS
deadline=$((SECONDS + LIMIT))
worker_died=no
while ((SECONDS < deadline)); do
    d=$(done_count)
    ((d >= N)) && break
    if ! worker_alive; then
        worker_died=yes
        diag "the worker exited during the run: $(grep -E 'CRITICAL|cannot serve|stopping' "$WORKER_LOG" | tail -3)"
        break
    fi
    if [[ $pg_restarted == no ]] && ((d >= N / 4)); then
        pg_at=$d
        stop_pg fast
        sleep 2
        start_pg_again
        pg_restarted=yes
        diag "PostgreSQL restarted (2 s down) at $pg_at done"
    fi
    if [[ $redis_restarted == no ]] && ((d >= N * 3 / 5)); then
        redis_at=$d
        touch "$PAUSE" # no kill while the MONITOR is reconnecting
        sleep 1
        restart_redis_aof 2
        wait_for 10 monitor_up || diag "MONITOR did not reconnect"
        sleep 1
        rm -f "$PAUSE"
        redis_restarted=yes
        diag "Redis restarted (2 s down, AOF) at $redis_at done"
    fi
    if [[ $killing == yes ]] && ((d >= N * 98 / 100)); then
        touch "$PAUSE"
        killing=no
        diag "killer stopped at $d done"
    fi
    if ((SECONDS - last_report >= 10)); then
        diag "progress: $d/$N done, $(wc -l <"$KILLS") kills, queue $(queue_len), unacked $(redis_cli hlen unacked)"
        last_report=$SECONDS
    fi
    sleep 0.2
done
touch "$PAUSE"
_settled() { (($(done_count) >= N)) && [[ "$(queue_len) $(unacked_count)" == "0 0 0" ]]; }
[[ $worker_died == no ]] && wait_for $((VT + 30)) _settled
t1=$(date +%s.%N)
duration=$("$PY" -c "print(round($t1 - $t0, 1))")

touch "$STOP"
wait "$KILLER" 2>/dev/null
stop_worker TERM 30
worker_rc=$WORKER_RC
final_unacked=$(unacked_count)
final_queue=$(queue_len)
monitor_stop
wait "$MON_LOOP" 2>/dev/null

# ---- figures ----------------------------------------------------------------------------------
tally=$(rel tally "$IDS")
success=$(jget counts.SUCCESS <<<"$tally")
[[ $success == "<missing>" ]] && success=0
worker_lost_stored=$(jget exc_types.WorkerLostError <<<"$tally")
[[ $worker_lost_stored == "<missing>" ]] && worker_lost_stored=0
failures=$(jget counts.FAILURE <<<"$tally")
[[ $failures == "<missing>" ]] && failures=0
if [[ $ACKS == early ]]; then
    lost=$((N - success - worker_lost_stored)) # a killed running task is settled, not lost
else
    lost=$((N - success))
fi
kills=$(wc -l <"$KILLS")
log=$WORKER_LOG
deaths=$(log_count 'killed by signal 9' "$log")
# Requeues seen on the server (MONITOR: pushes of messages marked redelivered)
# against what the log reports: LPUSH = a dead child's late-ack task put back
# (the log names its task id), RPUSH = restored by the visibility sweep (the
# log gives counts) or at shutdown.
read -r lost_requeues failed_requeues nothing_to_requeue sweep_restored shutdown_restored \
    seen_lpush seen_rpush unexplained_lpush <<<"$("$PY" - "$log" "$MONLOG" <<'PYEOF'
import re, sys
log = open(sys.argv[1], errors="replace").read()
mon = open(sys.argv[2], errors="replace").read().splitlines()
requeued = re.findall(r"Task [^\[]+\[([0-9a-f-]+)\]: its process died \(signal \d+\); requeued", log)
failed = re.findall(r"requeue of ([0-9a-f-]+) failed", log)
sweep = sum(int(n) for n in re.findall(r"restored (\d+) unacknowledged", log))
shutdown = len(re.findall(r"restored to its queue", log)) + len(re.findall(r"by a process that died before starting it was put back", log))
lpush, rpush = [], []
for line in mon:
    if "redelivered" not in line:
        continue
    m = re.search(r'\\"id\\": ?\\"([0-9a-f-]+)', line)
    tid = m.group(1) if m else "?"
    (lpush if '"LPUSH"' in line else rpush).append(tid)
unexplained = set(lpush) - set(requeued)
nothing = len(set(requeued) - set(failed) - set(lpush))
print(len(requeued), len(failed), nothing, sweep, shutdown, len(lpush), len(rpush), len(unexplained))
PYEOF
)"
logged_requeues=$((lost_requeues - failed_requeues - nothing_to_requeue + sweep_restored + shutdown_restored))
seen_requeues=$((seen_lpush + seen_rpush))
reruns=$(log_count 're-running after reconnect' "$log")
duplicates=$(log_count 'already (has|holds) a SUCCESS result' "$log")
runs_ok=$(log_count 'books\.get_book_info\[[^]]+\] succeeded' "$log")
worker_lost=$(log_count 'raised WorkerLostError' "$log")
respawn_waits=$(log_count 'keeps dying' "$log")

echo "# ---- chaos figures ----"
echo "# tasks:            $N (books.get_book_info, $ACKS ack, -c $CONC, PostgreSQL)"
echo "# duration:         ${duration} s (worker start to all settled)"
echo "# kills:            $kills SIGKILLs of pool children ($deaths deaths logged by the master; $respawn_waits respawn back-offs)"
echo "# restarts:         PostgreSQL 1 (at $pg_at done), Redis 1 (AOF, at $redis_at done)"
echo "# requeues:         $seen_requeues (MONITOR: $seen_lpush LPUSH of a dead child's task, $seen_rpush RPUSH by the sweep/shutdown)"
echo "#   in the log:     $lost_requeues 'requeued' after a child died ($failed_requeues of them failed, $nothing_to_requeue had nothing left to requeue: already acked), $sweep_restored restored by the visibility sweep (${VT} s), $shutdown_restored put back unstarted or at shutdown"
echo "# re-runs:          $reruns idempotent re-runs after a lost database connection"
echo "# executions:       $runs_ok successful runs for $N tasks ($duplicates found a SUCCESS already stored and kept it)"
echo "# results:          $tally"
echo "# lost:             $lost"
echo "# unacked after:    $final_unacked (hash, index); queue $final_queue"

if [[ $ACKS == late ]]; then
    expect_eq "chaos: every one of the $N task ids has a stored SUCCESS" "$N" "$success" "$tally"
    expect_eq "chaos: no FAILURE stored" 0 "$failures" "$tally"
else
    expect_eq "chaos: every one of the $N task ids has a stored result" "$N" \
        "$((success + failures))" "$tally"
    expect_eq "chaos: every FAILURE is a WorkerLostError (a task running when its child was killed)" \
        "$failures" "$worker_lost_stored" "$tally"
    if ((worker_lost_stored <= kills)); then
        ok "chaos: no more WorkerLostErrors ($worker_lost_stored) than kills ($kills)"
    else
        not_ok "chaos: no more WorkerLostErrors than kills" "$worker_lost_stored > $kills"
    fi
fi
expect_eq "chaos: lost = 0" 0 "$lost"
expect_eq "chaos: unacked is empty and nothing is queued afterwards" "0 0 0" "$final_unacked $final_queue"
expect_eq "chaos: every LPUSH requeue seen on the server is logged with its task id" 0 "$unexplained_lpush"
expect_eq "chaos: every sweep/shutdown RPUSH seen on the server is counted in the log" \
    "$seen_rpush" "$((sweep_restored + shutdown_restored))" "sweep $sweep_restored, shutdown $shutdown_restored"
expect_eq "chaos: no requeue failed (a failed one waits for the visibility timeout: an hour by default)" \
    0 "$failed_requeues" "$(grep -E 'requeue of .* failed' "$log" | head -5)"
expect_eq "chaos: every SIGKILL of a child is logged by the master" "$kills" "$deaths"
if [[ $ACKS == late ]]; then
    expect_eq "chaos: no WorkerLostError (late ack + reject_on_worker_lost requeues instead)" 0 "$worker_lost"
fi
if ((kills >= 5)); then
    ok "chaos: the killer actually killed ($kills children)"
else
    not_ok "chaos: the killer actually killed" "kills: $kills"
fi
expect_eq "chaos: the worker survived the run" no "$worker_died" \
    "$(grep -E 'CRITICAL|cannot serve|not replacing' "$log" | tail -5)"
expect_eq "chaos: PostgreSQL and Redis were each restarted once" "yes yes" "$pg_restarted $redis_restarted"
expect_eq "chaos: the worker still exits 0 on TERM" 0 "$worker_rc" "$(worker_log_tail 10)"
check_worker_logs_clean
if [[ -n ${KEEP_TMP:-} ]]; then
    diag "worker log: $log; kills: $KILLS; monitor: $MONLOG"
fi
tap_done
