#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_reload.sh (issue 13, point 5): SIGHUP / `celeriac reload` loads the
# task library again and replaces the children one at a time, each after its
# current task. A broken library (garbage, missing, wrong ABI) is refused
# with one log line and the old children keep serving. Under a flow of
# late-ack tasks, the reload loses none and runs none twice; results switch
# from v1 to v2; every new child opens its own database connection; a long
# task running at reload time finishes in its old child.
. "$(dirname "$0")/lib.sh"

start_redis
start_pg
psql_db -c "CREATE TABLE ops_runs (task_id text, version text, pid int, backend int)" >/dev/null
V1=$(build_ops_lib libops-v1 -DOPS_VERSION='"v1"') || tap_done
V2=$(build_ops_lib libops-v2 -DOPS_VERSION='"v2"') || tap_done
BAD_ABI=$(build_ops_lib libops-badabi -DOPS_BAD_ABI) || tap_done
MOVED=$(build_ops_lib libops-moved -DOPS_VERSION='"v3"' -DOPS_EXTRA_FIRST) || tap_done
mkdir -p "$TEST_TMP/live"
LIB=$TEST_TMP/live/libops.so
PIDFILE=$TEST_TMP/worker.pid
install_lib "$V1" "$LIB"

start_worker -A "$LIB" -c 4 -b "$REDIS_URL" --result-backend "$REDIS_URL" --db "$PG_URL" \
    --pidfile "$PIDFILE" -n reload@localhost
wait_children 4 20 || not_ok "worker started 4 children" "$(worker_log_tail)"
_up4() { [[ $(log_count 'database connection to .* opened by pid') -ge 4 ]]; }
wait_for 20 _up4 || diag "children not connected: $(worker_log_tail 5)"
expect_eq "--pidfile holds the master's pid" "$WORKER_PID" "$(cat "$PIDFILE" 2>/dev/null)"

# ---- refused libraries: one line each, the old children keep serving ----------
before=$(worker_children)
refused=0
refuse_case() { # NAME REGEX: after the library was replaced on disk
    local name=$1 re=$2 id
    kill -HUP "$WORKER_PID"
    refused=$((refused + 1))
    _refused_n() { [[ $(log_count 'reload refused') -ge $1 ]]; }
    wait_for 10 _refused_n "$refused"
    expect_eq "$name: one log line says why" 1 \
        "$(grep 'reload refused' "$WORKER_LOG" | tail -n +"$refused" | grep -cE "$re")" \
        "$(grep 'reload refused' "$WORKER_LOG" | tail -1)"
    expect_eq "$name: the children are the same processes" "$before" "$(worker_children)"
    id=$(send ops.version '[0]')
    expect_eq "$name: a task sent afterwards runs with v1" v1 "$(result_of "$id")"
}
head -c 8192 /dev/urandom >"$LIB.new" && mv -f "$LIB.new" "$LIB"
refuse_case "garbage .so" "load task library '.*libops.so' failed: (invalid ELF header|file too short)"
rm -f "$LIB"
refuse_case "missing .so" "load task library '.*libops.so' failed: No such file or directory"
install_lib "$BAD_ABI" "$LIB"
refuse_case "ABI mismatch" "built for celeriac ABI 99"
install_lib "$MOVED" "$LIB"
# same table but ops.version second: positions index the shared tuning
refuse_case "task table reordered" "task 'ops.version' \(position 1\) is moved"
expect_eq "refused reloads: the master logged no other error" 0 \
    "$(grep -E 'ERROR|CRITICAL' "$WORKER_LOG" | grep -vc 'reload refused')" \
    "$(grep -E 'ERROR|CRITICAL' "$WORKER_LOG" | grep -v 'reload refused' | head -5)"

# ---- reload under load ----------------------------------------------------------
psql_db -c "TRUNCATE ops_runs" >/dev/null
install_lib "$V1" "$LIB" # back to v1 on disk: the running code is v1 anyway
long=$(send ops.version '[4000]')
sleep 0.5
N=3000
t0=$(date +%s.%N)
ops flow ops.version "$N" 300 --out "$TEST_TMP/flow.ids" --args '[0]' &
FLOW_PID=$!
sleep 2
install_lib "$V2" "$LIB"
out=$("$CELERIAC_BIN" reload --pidfile "$PIDFILE" 2>&1)
expect_eq "celeriac reload --pidfile: exit 0" 0 "$?" "$out"
_reload_done() { log_has 'reload: done in'; }
wait_for 30 _reload_done || not_ok "the reload ended" "$(worker_log_tail 15)"
grep -E 'reload: ' "$WORKER_LOG" | sed 's/^/# /' | head -8
wait "$FLOW_PID"
t=$(ops tally "$TEST_TMP/flow.ids" --timeout 40)
elapsed=$(echo "$(date +%s.%N) - $t0" | bc)
diag "reload under load: $t in ${elapsed% *} s"
expect_eq "under load: every one of $N tasks ended SUCCESS (none lost)" "$N" \
    "$(jget status.SUCCESS <<<"$t")" "$t"
dups=$(psql_db -c "SELECT count(*) FROM (SELECT task_id FROM ops_runs GROUP BY task_id
                   HAVING count(*) > 1) d")
expect_eq "under load: no task ran twice" 0 "$dups"
expect_eq "under load: every task ran once (rows in ops_runs)" "$((N + 1))" \
    "$(psql_db -c 'SELECT count(DISTINCT task_id) FROM ops_runs')"
v1=$(jget value.v1 <<<"$t") v2=$(jget value.v2 <<<"$t")
check "under load: results switch from v1 ($v1) to v2 ($v2)" \
    test "$v1" != "<missing>" -a "$v2" != "<missing>"
id=$(send ops.version '[0]')
expect_eq "after the reload: a new task runs with v2" v2 "$(result_of "$id")"
m=$(meta_of "$long" 20)
expect_eq "the long task running at reload time ended SUCCESS with v1 (in its old child)" \
    "SUCCESS v1" "$(jget status <<<"$m") $(jget result <<<"$m")" "$m"
lpid=$(psql_db -c "SELECT pid FROM ops_runs WHERE task_id = '$long'")
check "the long task ran in one of the children of before the reload (pid $lpid)" \
    grep -qw "$lpid" <<<"$before"
after=$(worker_children)
common=$(comm -12 <(tr ' ' '\n' <<<"$before" | sort) <(tr ' ' '\n' <<<"$after" | sort) | wc -l)
expect_eq "every child was replaced (4 children, no pid kept)" "4 0" \
    "$(wc -w <<<"$after") $common" "before: $before" "after: $after"
backends=""
for p in $after; do
    b=$(backend_of "$p")
    backends+="$b "
    check "new child $p opened its own database connection (backend $b) after fork" \
        log_has "database connection to .* opened by pid $p "
done
expect_eq "the 4 new children hold 4 distinct database backends" 4 \
    "$(tr ' ' '\n' <<<"$backends" | grep . | sort -u | wc -l)" "$backends"
expect_eq "the master logged no error during the reload" 0 \
    "$(grep -E 'ERROR|CRITICAL' "$WORKER_LOG" | grep -vc 'reload refused')" \
    "$(grep -E 'ERROR|CRITICAL' "$WORKER_LOG" | grep -v 'reload refused' | head -5)"
stop_worker TERM 20
expect_eq "the worker stops on SIGTERM with exit 0" 0 "$WORKER_RC" "$(worker_log_tail)"
check "the pid file is removed at exit" test ! -e "$PIDFILE"
check_worker_logs_clean
tap_done
