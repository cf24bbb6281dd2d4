#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_postgres.sh: one PostgreSQL connection per child, opened after fork and
# visible in pg_stat_activity; none left after SIGTERM; a pg_terminate_backend
# and a server restart are survived by the next tasks without a respawn; a
# killed child is replaced with a fresh connection; an unreachable database at
# startup gives a clear error and exit 3 within a minute.
. "$(dirname "$0")/services.sh"

start_redis
start_pg
seed_books_pg || { not_ok "seed the books table"; tap_done; }

# application_name of every celeriac backend, one per line.
celeriac_backends() {
    psql_admin -c "SELECT application_name FROM pg_stat_activity
                   WHERE application_name LIKE 'celeriac%' ORDER BY 1"
}
count_backends() {
    psql_admin -c "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'celeriac%'"
}
backends_are() { [[ $(count_backends) == "$1" ]]; }
# The server pid of the backend whose application_name names client pid $1.
backend_of() {
    psql_admin -c "SELECT pid FROM pg_stat_activity
                   WHERE application_name LIKE 'celeriac%' AND application_name ~ ('pid ' || '$1' || '( |$)')"
}
backend_gone() { [[ -z $(psql_admin -c "SELECT 1 FROM pg_stat_activity WHERE pid = $1") ]]; }

# hold_books_lock SECONDS: an open transaction holds an ACCESS EXCLUSIVE lock on
# books for SECONDS, so every get_book_info blocks meanwhile and each idle
# child takes one message: this makes sure both children run a task.
hold_books_lock() {
    psql_db -c "BEGIN; LOCK TABLE books IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep($1); COMMIT;" \
        >/dev/null 2>&1 &
    LOCK_PID=$!
    _lock_held() {
        [[ $(psql_db -c "SELECT count(*) FROM pg_locks WHERE relation = 'books'::regclass
                         AND mode = 'AccessExclusiveLock' AND granted") == 1 ]]
    }
    wait_for 10 _lock_held
}

# per-child check: every child pid appears in exactly one backend's application_name
one_backend_per_child() {
    local names kid n bad=""
    names=$(celeriac_backends)
    for kid in $(worker_children); do
        n=$(grep -cE "pid $kid( |\$)" <<<"$names")
        [[ $n == 1 ]] || bad+="child $kid has $n backends; "
    done
    if [[ -n $bad ]]; then
        echo "$bad"
        echo "backends: $names"
        return 1
    fi
}

run_books() { # ids... -> client output lines
    local each
    each=$(printf '[%s],' "$@")
    client send books.get_book_info --each "[${each%,}]" --timeout 30
}
expected_books() { # ids... -> the client_values words for Book <id>
    local id out=()
    for id in "$@"; do out+=("\"Book $id\""); done
    echo "${out[*]}"
}

# ---- one connection per child --------------------------------------------
start_worker -c 2 -b "$REDIS_URL" --result-backend "$REDIS_URL" --db "$PG_URL" -n pgtest@localhost
wait_children 2 20 || not_ok "worker started 2 children" "$(worker_log_tail)"
if wait_for 15 backends_are 2; then
    ok "-c 2: two celeriac backends in pg_stat_activity"
else
    not_ok "-c 2: two celeriac backends in pg_stat_activity" "$(celeriac_backends)" "$(worker_log_tail)"
fi
check "each child pid names exactly one backend (application_name)" one_backend_per_child
names=$(celeriac_backends)
if grep -qE "pid $WORKER_PID( |\$)" <<<"$names"; then
    not_ok "the master holds no database connection" "$names"
else
    ok "the master holds no database connection"
fi
# From the kernel's socket table: which ports does the master talk to?
master_peers=$(ss -Htnp state established 2>/dev/null | grep -E "pid=$WORKER_PID," |
    awk '{print $4}' | sed 's/.*://' | sort -u | tr '\n' ' ')
if [[ " $master_peers " == *" $PG_PORT "* || " $master_peers " == *" $REDIS_PORT "* ]]; then
    not_ok "the master process has no TCP connection to PostgreSQL or Redis" \
        "master $WORKER_PID peers: $master_peers (pg $PG_PORT, redis $REDIS_PORT)"
else
    ok "the master process has no TCP connection to PostgreSQL or Redis"
fi
kid=$(worker_children | cut -d' ' -f1)
kid_peers=$(ss -Htnp state established 2>/dev/null | grep -E "pid=$kid," | awk '{print $4}' | sed 's/.*://' |
    sort -u | tr '\n' ' ')
if [[ " $kid_peers " == *" $PG_PORT "* && " $kid_peers " == *" $REDIS_PORT "* ]]; then
    ok "a child holds its own connections to PostgreSQL and Redis (socket table)"
else
    not_ok "a child holds its own connections to PostgreSQL and Redis (socket table)" \
        "child $kid peers: $kid_peers (pg $PG_PORT, redis $REDIS_PORT)"
fi
sleep 1.5
expect_eq "still exactly two backends a moment later" 2 "$(count_backends)" "$(celeriac_backends)"
pids_before="$WORKER_PID $(worker_children)"

out=$(run_books 1 2)
expect_eq "get_book_info works on PostgreSQL" "$(expected_books 1 2)" "$(client_values <<<"$out")"

# ---- pg_terminate_backend of one child's connection -------------------------
kid0=$(worker_children | cut -d' ' -f1)
victim=$(backend_of "$kid0")
if [[ -z $victim ]]; then
    not_ok "found the backend of child $kid0" "$(celeriac_backends)"
else
    lines_before=$(wc -l <"$WORKER_LOG")
    psql_admin -c "SELECT pg_terminate_backend($victim)" >/dev/null
    wait_for 10 backend_gone "$victim" || diag "backend $victim still listed"
    hold_books_lock 2 || diag "could not take the table lock"
    out=$(run_books 11 12 13 14)
    wait "$LOCK_PID" 2>/dev/null
    expect_eq "after pg_terminate_backend of child $kid0's backend the next tasks succeed" \
        "$(expected_books 11 12 13 14)" "$(client_values <<<"$out")" "$(worker_log_tail 15)"
    out=$(run_books 15 16 17 18 19 20)
    expect_eq "... and the ones after them" "$(expected_books 15 16 17 18 19 20)" \
        "$(client_values <<<"$out")" "$(worker_log_tail 15)"
    expect_eq "no process was restarted (same master and children)" "$pids_before" \
        "$WORKER_PID $(worker_children)" "$(worker_log_tail 15)"
    newb=$(backend_of "$kid0")
    if [[ -n $newb && $newb != "$victim" ]]; then
        ok "child $kid0 reconnected (backend $victim -> $newb)"
    else
        not_ok "child $kid0 reconnected" "old backend $victim, now '$newb'" "$(celeriac_backends)"
    fi
    check "still one backend per child after the reconnect" one_backend_per_child
    if tail -n +"$((lines_before + 1))" "$WORKER_LOG" | grep -qiE 'lost|terminat|closed|reconnect'; then
        ok "the lost connection is logged with a reason"
    else
        not_ok "the lost connection is logged with a reason" "$(tail -n +"$((lines_before + 1))" "$WORKER_LOG" | head -20)"
    fi
fi

# ---- server restart between tasks ----------------------------------------------
old_pg=$PG_PID
restart_pg
if [[ -n $PG_PID && $PG_PID != "$old_pg" ]]; then
    ok "PostgreSQL restarted (postmaster $old_pg -> $PG_PID)"
    hold_books_lock 2 || diag "could not take the table lock"
    out=$(run_books 21 22 23 24)
    wait "$LOCK_PID" 2>/dev/null
    expect_eq "after a server restart the next tasks succeed on both children" \
        "$(expected_books 21 22 23 24)" "$(client_values <<<"$out")" "$(worker_log_tail 20)"
    expect_eq "no process was restarted by the server restart" "$pids_before" \
        "$WORKER_PID $(worker_children)" "$(worker_log_tail 15)"
    if wait_for 10 backends_are 2; then
        ok "two backends again after the server restart"
    else
        not_ok "two backends again after the server restart" "$(celeriac_backends)"
    fi
    check "one backend per child after the server restart" one_backend_per_child
else
    not_ok "PostgreSQL restarted" "pid '$PG_PID'" "$(tail -20 "$PG_LOG")"
fi

# ---- a killed child is replaced, with its own fresh connection ---------------------
kids=$(worker_children)
kid1=$(cut -d' ' -f2 <<<"$kids")
old_backend=$(backend_of "$kid1")
kill -KILL "$kid1"
_replaced() { local k; k=$(worker_children); [[ $(wc -w <<<"$k") == 2 && " $k " != *" $kid1 "* ]]; }
if wait_for 30 _replaced; then
    ok "a child killed with SIGKILL is replaced ($kid1 -> $(worker_children))"
    if wait_for 15 backends_are 2 && wait_for 5 one_backend_per_child; then
        ok "the replacement opened its own connection; the dead child's is gone"
    else
        not_ok "the replacement opened its own connection; the dead child's is gone" \
            "$(celeriac_backends)"
    fi
    [[ -n $old_backend ]] && ! backend_gone "$old_backend" &&
        not_ok "the killed child's backend $old_backend is gone" "$(celeriac_backends)"
    out=$(run_books 31 32)
    expect_eq "tasks succeed after the respawn" "$(expected_books 31 32)" "$(client_values <<<"$out")"
else
    not_ok "a child killed with SIGKILL is replaced" "children now: $(worker_children)" \
        "$(worker_log_tail 10)"
fi

# ---- SIGTERM: no connection left ----------------------------------------------------
stop_worker TERM 30
expect_eq "worker exits 0 on SIGTERM" 0 "$WORKER_RC" "$(worker_log_tail)"
if wait_for 10 backends_are 0; then
    ok "no celeriac backend left after SIGTERM"
else
    not_ok "no celeriac backend left after SIGTERM" "$(celeriac_backends)"
fi
if grep -qiE 'closed' "$WORKER_LOG"; then
    ok "children log closing their connections"
else
    not_ok "children log closing their connections" "$(worker_log_tail 10)"
fi

# ---- a connection lost while idle is found before the next task ----------------------
# probe.pg is not idempotent: it succeeds after a loss only if the worker
# notices the dead connection and reconnects before running it.
probe_round() { # -> "childpid:backend ..." sorted, or the client's error words
    local out
    out=$(client send probe.pg --each '[[0.5],[0.5]]' --timeout 30)
    "$PY" -c '
import json, sys
words = []
for line in sys.stdin:
    d = json.loads(line)
    v = d.get("value") if d.get("ok") else None
    words.append("%s:%s" % (v["pid"], v["backend"]) if isinstance(v, dict) else
                 "raised:%s%s" % (d.get("raised"), d.get("raised_args")))
print(" ".join(sorted(words)))' <<<"$out"
}
if build_probe_lib; then
    start_worker -A "$PROBE_LIB" -c 2 -b "$REDIS_URL" --result-backend "$REDIS_URL" --db "$PG_URL"
    wait_for 15 backends_are 2 || diag "backends: $(celeriac_backends)"
    first=$(probe_round)
    kids=$(worker_children)
    want_pids=$(tr ' ' '\n' <<<"$kids" | sort | tr '\n' ' ' | sed 's/ $//')
    got_pids=$(tr ' ' '\n' <<<"$first" | cut -d: -f1 | sort | tr '\n' ' ' | sed 's/ $//')
    expect_eq "probe.pg ran once on each child" "$want_pids" "$got_pids" "round: $first"
    victims=$(psql_admin -c "SELECT string_agg(pid::text, ' ') FROM pg_stat_activity
                             WHERE application_name LIKE 'celeriac%'")
    psql_admin -c "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                   WHERE application_name LIKE 'celeriac%'" >/dev/null
    for b in $victims; do wait_for 10 backend_gone "$b"; done
    sleep 0.5
    second=$(probe_round)
    bad=""
    for w in $second; do
        [[ $w == raised:* ]] && bad+="$w "
        for b in $victims; do [[ ${w#*:} == "$b" ]] && bad+="$w still on old backend; "; done
    done
    if [[ -z $bad && $(wc -w <<<"$second") == 2 ]]; then
        ok "non-idempotent task after pg_terminate_backend of both idle connections succeeds ($second)"
    else
        not_ok "non-idempotent task after pg_terminate_backend of both idle connections succeeds" \
            "killed backends: $victims" "round: $second" "$(worker_log_tail 12)"
    fi
    restart_pg
    sleep 0.5
    third=$(probe_round)
    if [[ $third != *raised:* && $(wc -w <<<"$third") == 2 ]]; then
        ok "non-idempotent task after a server restart succeeds ($third)"
    else
        not_ok "non-idempotent task after a server restart succeeds" "round: $third" "$(worker_log_tail 12)"
    fi
    expect_eq "probe worker kept its children" "$kids" "$(worker_children)"
    stop_worker TERM 30
    expect_eq "probe worker exits 0 on SIGTERM" 0 "$WORKER_RC" "$(worker_log_tail)"
fi

# ---- unreachable database at startup -------------------------------------------------
CLOSED=$(free_port)
t0=$SECONDS
start_worker -c 2 -b "$REDIS_URL" --db "postgresql://postgres@127.0.0.1:$CLOSED/x"
if wait_worker_exit 60; then
    ok "unreachable database (defaults): the worker stops by itself ($((SECONDS - t0)) s)"
    expect_eq "unreachable database: exit status 3 (cannot serve)" 3 "$WORKER_RC" "$(worker_log_tail 10)"
else
    not_ok "unreachable database (defaults): the worker stops by itself within 60 s" "$(worker_log_tail 20)"
fi
if grep -q "127.0.0.1" "$WORKER_LOG" && grep -q "$CLOSED" "$WORKER_LOG"; then
    ok "unreachable database: the error names host and port"
else
    not_ok "unreachable database: the error names host and port (127.0.0.1:$CLOSED)" "$(worker_log_tail 10)"
fi
if grep -qiE 'refused|could not connect|connect' "$WORKER_LOG"; then
    ok "unreachable database: the error gives libpq's reason"
else
    not_ok "unreachable database: the error gives libpq's reason" "$(worker_log_tail 10)"
fi
attempts=$(grep -ciE 'attempt|retry|retrying|backoff' "$WORKER_LOG")
diag "log lines about attempts/retries: $attempts"

t0=$SECONDS
start_worker -c 1 -b "$REDIS_URL" --db "postgresql://postgres@127.0.0.1:$CLOSED/x" \
    --db-connect-attempts 2 --db-backoff-base 50 --db-backoff-cap 100
if wait_worker_exit 15; then
    ok "--db-connect-attempts 2 --db-backoff-base 50: gives up fast ($((SECONDS - t0)) s, exit $WORKER_RC)"
else
    not_ok "--db-connect-attempts 2 --db-backoff-base 50: gives up within 15 s" "$(worker_log_tail 20)"
fi

check_worker_logs_clean
tap_done
