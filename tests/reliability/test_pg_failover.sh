#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_pg_failover.sh (issue 14, point 2): PostgreSQL failover with a libpq
# multi-host URL. A primary and a streaming standby (pg_basebackup -R) on
# loopback; the worker's --db names both with target_session_attrs=read-write.
# The primary is stopped (immediate) mid-run and the standby promoted: every
# idempotent task succeeds, the others succeed or fail with a clear error,
# none is lost, every child ends on the new primary, the logs stay bounded.
# Bad input first: the standby as the only host is named as a standby, with
# backoff, and the queued tasks wait. Last, a primary fenced read-only
# (default_transaction_read_only, SQLSTATE 25006 on write) is left for
# another host like a lost connection.
. "$(dirname "$0")/lib.sh"

ROUNDS=${PG_FAILOVER_ROUNDS:-4}
IDEM_PER_ROUND=${PG_FAILOVER_IDEM:-300}
WRITE_PER_ROUND=${PG_FAILOVER_WRITE:-60}

start_redis
start_pg
build_rel_lib || tap_done
psql_db -c "CREATE TABLE rel_runs (task_id text NOT NULL, pid int NOT NULL)" >/dev/null

# ---- the standby: pg_basebackup -R from the primary, on its own port -------------------
# -c fast: a checkpoint at once, not spread over minutes. initdb's pg_hba.conf
# (-A trust) lets 127.0.0.1 replicate; wal_level replica
# and max_wal_senders are PostgreSQL 15's defaults.
SB_DIR=$TEST_TMP/pg-standby
SB_DATA=$SB_DIR/data
SB_PORT=$(free_port)
SB_PID=
mkdir -p "$SB_DIR"
[[ $(id -u) -eq 0 ]] && chown postgres: "$SB_DIR"
if ! _as_pg "$PGBIN/pg_basebackup" -h 127.0.0.1 -p "$PG_PORT" -U postgres -D "$SB_DATA" -R -c fast \
    -X stream >"$SB_DIR/basebackup.log" 2>&1; then
    not_ok "setup: pg_basebackup" "$(cat "$SB_DIR/basebackup.log")"
    tap_done
fi
cat >>"$SB_DATA/postgresql.conf" <<EOF
port = $SB_PORT
unix_socket_directories = '$SB_DIR'
EOF
_as_pg "$PGBIN/pg_ctl" -w -t 60 -D "$SB_DATA" -l "$SB_DIR/postgres.log" start >/dev/null 2>&1 ||
    { not_ok "setup: start the standby" "$(tail -5 "$SB_DIR/postgres.log")"; tap_done; }
SB_PID=$(head -1 "$SB_DATA/postmaster.pid")

stop_standby() {
    if [[ -n $SB_PID ]] && _svc_pid_is "$SB_PID" postgres; then
        kill -QUIT "$SB_PID" 2>/dev/null
        wait_pid_gone 30 "$SB_PID" || kill -KILL "$SB_PID" 2>/dev/null
    fi
    SB_PID=
}
_pf_cleanup() {
    local rc=$?
    stop_standby >/dev/null 2>&1
    (exit $rc)
    services_cleanup
}
trap _pf_cleanup EXIT

psql_sb() { psql -X -A -t -q "postgresql://postgres@127.0.0.1:$SB_PORT/${1:-celeriac}" "${@:2}"; }
_sb_caught_up() { [[ $(psql_sb celeriac -c "SELECT to_regclass('rel_runs') IS NOT NULL" 2>/dev/null) == t ]]; }
wait_for 30 _sb_caught_up || { not_ok "setup: the standby replays the primary" "$(tail -5 "$SB_DIR/postgres.log")"; tap_done; }
expect_eq "setup: a streaming standby on port $SB_PORT (in recovery)" t "$(psql_sb postgres -c 'SELECT pg_is_in_recovery()')"

BACKOFF=(--db-backoff-base 100 --db-backoff-cap 1000)

# ---- bad input: the standby as the only host --------------------------------------------
SB_ONLY="postgresql://postgres@127.0.0.1:$SB_PORT/celeriac"
ids_waiting=$TEST_TMP/ids-waiting
rel bulk rel.record 5 --mod 1 --out "$ids_waiting" || not_ok "publish 5 tasks"
start_worker -A "$REL_LIB" -c 2 -b "$REDIS_URL" --result-backend "$REDIS_URL" --db "$SB_ONLY" \
    "${BACKOFF[@]}" --db-connect-attempts 1000 -n standbyonly@localhost
sleep 1.5
# shellcheck disable=SC2046 # a list of pids
bytes1=$(log_bytes) cpu1=$(cpu_ticks $(worker_all_children) "$WORKER_PID")
sleep 3
# shellcheck disable=SC2046
bytes2=$(log_bytes) cpu2=$(cpu_ticks $(worker_all_children) "$WORKER_PID")
line=$(grep -m1 -E "is a standby" "$WORKER_LOG")
if [[ $line == *"127.0.0.1:$SB_PORT"* && $line == *"read-only"* ]]; then
    ok "the standby as the only host: one clear line naming it ($(sed -E 's/.*(database .)/\1/' <<<"$line" | cut -c1-150)...)"
else
    not_ok "the standby as the only host: a clear line naming it" "$(worker_log_tail 10)"
fi
n=$(log_count "is a standby")
if ((n <= 2)); then
    ok "... logged once per child ($n lines for 2 children over 4.5 s), later attempts counted"
else
    not_ok "... logged once per child" "$n lines" "$(grep 'standby' "$WORKER_LOG" | head -6)"
fi
diag "standby-only: log grew $((bytes2 - bytes1)) bytes, CPU $((cpu2 - cpu1)) ticks over 3 s"
if ((bytes2 - bytes1 < 2000 && cpu2 - cpu1 < 30)); then
    ok "... with backoff: no spin (log +$((bytes2 - bytes1)) B, CPU $((cpu2 - cpu1))/300 ticks over 3 s)"
else
    not_ok "... with backoff: no spin" "log +$((bytes2 - bytes1)) B, CPU $((cpu2 - cpu1)) ticks" "$(worker_log_tail 10)"
fi
expect_eq "... the queued tasks wait in the queue (none pulled and failed)" 5 "$(queue_len)" \
    "unacked $(unacked_count)" "$(worker_log_tail 10)"
stop_worker TERM 20
expect_eq "... and the worker stops cleanly on TERM while waiting" 0 "$WORKER_RC" "$(worker_log_tail 10)"

# A worker that only reads may use a standby when it says so (here through
# libpq's environment; ?target_session_attrs=any in the URL does the same).
PGTARGETSESSIONATTRS=any start_worker -A "$REL_LIB" -c 1 -Q readonly -b "$REDIS_URL" \
    --result-backend "$REDIS_URL" --db "$SB_ONLY" -n reader@localhost
id=$(send rel.pg '[]' --queue readonly)
m=$(meta_of "$id" 15)
expect_eq "PGTARGETSESSIONATTRS=any: a reading worker may use the standby" SUCCESS \
    "$(jget status <<<"$m")" "$m" "$(worker_log_tail 10)"
stop_worker TERM 20

# ---- failover in the middle of a run -------------------------------------------------------
MULTI="postgresql://postgres@127.0.0.1:$PG_PORT,127.0.0.1:$SB_PORT/celeriac?target_session_attrs=read-write"
RESULT_URL="redis://127.0.0.1:$REDIS_PORT/1"
export RESULT_URL
ids_idem=$TEST_TMP/ids-idem ids_write=$TEST_TMP/ids-write
: >"$ids_idem"
: >"$ids_write"
for ((r = 0; r < ROUNDS; r++)); do # interleaved, so writes run when the primary stops
    rel bulk rel.record "$IDEM_PER_ROUND" --mod 8 --out "$TEST_TMP/i.$r" && cat "$TEST_TMP/i.$r" >>"$ids_idem"
    rel bulk rel.write "$WRITE_PER_ROUND" --mod 8 --out "$TEST_TMP/w.$r" && cat "$TEST_TMP/w.$r" >>"$ids_write"
    if ((r == 0)); then # four statements in flight when the primary stops
        sleep_w=$(send rel.pg_sleep '[4]' --count 2 | tr '\n' ' ')
        sleep_i=$(send rel.pg_sleep_idem '[4]' --count 2 | tr '\n' ' ')
    fi
done
total=$(($(wc -l <"$ids_idem") + $(wc -l <"$ids_write")))
diag "published $(wc -l <"$ids_idem") idempotent rel.record and $(wc -l <"$ids_write") rel.write (late ack, 1-8 ms each), after the 5 waiting"
done_count() { redis_cli -n 1 dbsize; }
start_worker -A "$REL_LIB" -c 4 -b "$REDIS_URL" --result-backend "$RESULT_URL" --db "$MULTI" \
    "${BACKOFF[@]}" -n failover@localhost
wait_children 4 20 || not_ok "worker started 4 children" "$(worker_log_tail)"
if log_has "database connection to '127.0.0.1:$PG_PORT' opened"; then
    ok "the multi-host URL reaches the primary, and the log names the host reached"
else
    not_ok "the multi-host URL reaches the primary, and the log names the host reached" \
        "$(grep -E 'database' "$WORKER_LOG" | head -5)"
fi
_sleepers() {
    (($(psql_admin -c "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'celeriac %'
                       AND state = 'active' AND query LIKE '%pg_sleep%'") >= 4))
}
wait_for 60 _sleepers || diag "the four rel.pg_sleep did not run together; $(done_count) done"
at=$(done_count)
t_stop=$(date +%s.%N)
stop_pg immediate
diag "primary stopped (immediate) after $at of $total results"
sleep 1
t_promote=$(date +%s.%N)
_as_pg "$PGBIN/pg_ctl" -w -t 30 -D "$SB_DATA" promote >/dev/null 2>&1 || not_ok "promote the standby"
t_promoted=$(date +%s.%N)
# every child was inside pg_sleep at the stop: no result until one reconnects
_moving() { (($(done_count) > at)); }
wait_for 30 _moving
t_moving=$(date +%s.%N)
diag "$(awk -v a="$t_stop" -v p="$t_promote" -v b="$t_promoted" -v c="$t_moving" \
    'BEGIN { printf "time to recover: primary stopped, promote issued after %.1f s (pg_ctl promote -w took %.1f s); first result %.1f s after the promote was issued, %.1f s after the stop", p - a, b - p, c - p, c - a }')"
tally_i=$(rel tally "$ids_idem" --timeout 60)
tally_w=$(rel tally "$ids_write" --timeout 30)
diag "idempotent: $tally_i"
diag "non-idempotent: $tally_w"
expect_eq "every idempotent late-ack task ends SUCCESS across the failover" \
    "$(wc -l <"$ids_idem")" "$(jget counts.SUCCESS <<<"$tally_i")" "$tally_i" "$(worker_log_tail 20)"
nw=$(wc -l <"$ids_write")
sw=$(jget counts.SUCCESS <<<"$tally_w")
fw=$(jget counts.FAILURE <<<"$tally_w")
[[ $sw == "<missing>" ]] && sw=0
[[ $fw == "<missing>" ]] && fw=0
expect_eq "every non-idempotent task ends SUCCESS or FAILURE (none pending, none lost)" \
    "$nw" "$((sw + fw))" "$tally_w"
retried=$(log_count "re-running after reconnect")
diag "failover figures: $retried idempotent runs re-run after reconnect; rel.write: $fw failed, $sw succeeded; 2 rel.pg_sleep in flight failed"
if ((fw == 0)) || [[ $(jget exc_types <<<"$tally_w") == '{"OperationalError": '* ]]; then
    ok "... the failed ones fail with OperationalError ($fw)"
else
    not_ok "... the failed ones fail with OperationalError" "$tally_w"
fi
if ((fw > 0)); then
    msg=$(grep -m1 -oE "rel\.write\[[^]]*\] raised unexpected: .*" "$WORKER_LOG")
    if [[ $msg == *"database connection lost"* || $msg == *"standby"* ]]; then
        ok "... with a clear error (${msg:0:160})"
    else
        not_ok "... with a clear error" "$msg"
    fi
fi
# shellcheck disable=SC2086
metas=$(rel wait $sleep_w $sleep_i --timeout 20)
st=$("$PY" -c 'import json,sys; print(" ".join((json.loads(l) or {}).get("status","NONE") for l in sys.stdin))' <<<"$metas")
expect_eq "statements in flight when the primary stops: 2 non-idempotent FAILURE, 2 idempotent re-run SUCCESS" \
    "FAILURE FAILURE SUCCESS SUCCESS" "$st" "$metas"
if [[ $(head -1 <<<"$metas") == *OperationalError*"database connection lost"* ]]; then
    ok "... the failures are OperationalError: database connection lost"
else
    not_ok "... the failures are OperationalError: database connection lost" "$(head -1 <<<"$metas")"
fi
tally_5=$(rel tally "$ids_waiting" --timeout 10)
expect_eq "the 5 tasks queued while the only host was a standby run once a primary is found" \
    5 "$(jget counts.SUCCESS <<<"$tally_5")" "$tally_5"
expect_eq "nothing left queued or unacked" "0 0 0" "$(queue_len) $(unacked_count)"
apps=$(psql_sb postgres -c "SELECT count(DISTINCT application_name) FROM pg_stat_activity
                             WHERE application_name LIKE 'celeriac %'")
expect_eq "every child's connection is to the new primary (pg_stat_activity on port $SB_PORT)" \
    4 "$apps" "$(psql_sb postgres -c "SELECT application_name FROM pg_stat_activity")"
if log_has "re-established.*127\.0\.0\.1:$SB_PORT|'127\.0\.0\.1:$SB_PORT' reachable again"; then
    ok "the reconnects name the host reached (127.0.0.1:$SB_PORT)"
else
    not_ok "the reconnects name the host reached" "$(grep -E 're-established|reachable' "$WORKER_LOG" | head -4)"
fi
# each child: one line when its connection breaks, one 'retrying' at the first
# failed connect, one at the end of the episode; no line per attempt.
nlines=$(grep -cE "database|standby|retrying" "$WORKER_LOG")
nretry=$(log_count "retrying in [0-9]+ ms")
diag "database-related log lines during the run: $nlines ($nretry 'retrying' lines)"
if ((nretry <= 4 * 2)); then
    ok "the outage is logged once per child per episode ($nretry 'retrying' lines for 4 children)"
else
    not_ok "the outage is logged once per child per episode" "$(grep -E 'retrying in' "$WORKER_LOG" | head -12)"
fi
if ! log_has "killed by signal|exited with code|cannot serve"; then
    ok "no child died or gave up during the failover"
else
    not_ok "no child died or gave up during the failover" "$(grep -E 'killed by signal|exited with code|cannot serve' "$WORKER_LOG")"
fi

# ---- a primary fenced read-only: SQLSTATE 25006 on write ----------------------------------
# An operator fences the old primary (default_transaction_read_only = on);
# sessions already open there see writes refused. A child must treat that as
# "this connection is on a read-only server": close, reconnect with backoff
# (libpq refuses the read-only host), re-run idempotent tasks, fail the others.
psql_sb postgres -c "ALTER SYSTEM SET default_transaction_read_only = on" >/dev/null
psql_sb postgres -c "SELECT pg_reload_conf()" >/dev/null
sleep 0.5
id_i=$(send rel.record '[0]')
id_w=$(send rel.write '[0]')
sleep 2
psql_sb postgres -c "ALTER SYSTEM RESET default_transaction_read_only" >/dev/null
psql_sb postgres -c "SELECT pg_reload_conf()" >/dev/null
m=$(meta_of "$id_i" 20)
expect_eq "fenced primary: an idempotent write is re-run on a new connection once it is writable: SUCCESS" \
    SUCCESS "$(jget status <<<"$m")" "$m" "$(worker_log_tail 15)"
m=$(meta_of "$id_w" 20)
msg=$(jget result.exc_message <<<"$m")
if [[ $(jget status <<<"$m") == FAILURE && $(jget result.exc_type <<<"$m") == OperationalError &&
    $msg == *"connection on a read-only server"* ]]; then
    ok "fenced primary: a non-idempotent write fails with a clear error ($msg)"
else
    not_ok "fenced primary: a non-idempotent write fails with a clear error" "$m" "$(worker_log_tail 15)"
fi
if log_has "database '127\.0\.0\.1:$SB_PORT' is read-only \(default_transaction_read_only = on.*\) and read-write is wanted"; then
    ok "... the child says which host is read-only and reconnects"
else
    not_ok "... the child says which host is read-only" "$(worker_log_tail 15)"
fi
stop_worker TERM 30
expect_eq "worker exits 0" 0 "$WORKER_RC" "$(worker_log_tail)"

# ---- the SQL broker through the same layer ----------------------------------------------------
# The old primary is down: the multi-host sqla+ URL must reach the new one.
SQLA_MULTI="sqla+postgresql://postgres@127.0.0.1:$PG_PORT,127.0.0.1:$SB_PORT/celeriac?target_session_attrs=read-write"
start_worker -A "$REL_LIB" -c 2 -b "$SQLA_MULTI" --result-backend "$RESULT_URL" --db "$MULTI" \
    "${BACKOFF[@]}" -n sqlfailover@localhost
wait_children 2 20 || not_ok "worker with a multi-host sqla+postgresql:// broker started" "$(worker_log_tail)"
id=$(BROKER_URL="sqla+postgresql://postgres@127.0.0.1:$SB_PORT/celeriac" send rel.record '[0]')
m=$(meta_of "$id" 20)
expect_eq "a multi-host sqla+postgresql:// broker URL reaches the primary (the first host is down)" \
    SUCCESS "$(jget status <<<"$m")" "$m" "$(worker_log_tail 15)"
stop_worker TERM 30
expect_eq "... worker exits 0" 0 "$WORKER_RC" "$(worker_log_tail)"

check_worker_logs_clean
tap_done
