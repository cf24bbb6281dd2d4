#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_passwords.sh: broker, result backend and database URLs with passwords
# work, and no password ever reaches the log: banner, task logs, reconnects,
# connection errors, authentication failures.
. "$(dirname "$0")/services.sh"

RPW=RedisPw-7f3a9c1e
PPW=PgPw-51e2d0b4
start_redis "$RPW"
start_pg
seed_books_pg || { not_ok "seed the books table"; tap_done; }
BROKER="redis://:$RPW@127.0.0.1:$REDIS_PORT/0"
DBURL="postgresql://postgres:$PPW@127.0.0.1:$PG_PORT/celeriac"

no_secret_in() { # name log secrets...
    local name=$1 log=$2 s hits=""
    shift 2
    for s in "$@"; do grep -qF -- "$s" "$log" && hits+="$s "; done
    if [[ -z $hits ]]; then
        ok "$name: no password in the log"
    else
        not_ok "$name: no password in the log" "found: $hits" "$(grep -nF -e "$1" "$log" | head -5)" \
            "$(for s in "$@"; do grep -nF -- "$s" "$log"; done | head -8)"
    fi
}

# ---- everything works with passwords, and none is logged ----
start_worker -c 2 -b "$BROKER" --result-backend "$BROKER" --db "$DBURL" -l debug -n pw@localhost
wait_children 2 20 || not_ok "worker started" "$(worker_log_tail)"
out=$(REDIS_URL=$BROKER client send tasks.add --args '[2, 3]' --timeout 15)
expect_eq "tasks run through a password-protected Redis" 5 "$(client_values <<<"$out")" "$(worker_log_tail)"
out=$(REDIS_URL=$BROKER client send books.get_book_info --each '[[1], [999999]]' --timeout 15)
expect_eq "... and a PostgreSQL URL with a password" '"Book 1" raised:LookupError["book 999999 not found"]' \
    "$(client_values <<<"$out")" "$(worker_log_tail)"
psql_admin -c "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE 'celeriac%'" >/dev/null
sleep 0.3
out=$(REDIS_URL=$BROKER client send books.get_book_info --each '[[2], [3]]' --timeout 20)
expect_eq "reconnect after pg_terminate_backend with a password URL" '"Book 2" "Book 3"' \
    "$(client_values <<<"$out")" "$(worker_log_tail)"
stop_worker TERM 30
if grep -qE 'transport:.*127\.0\.0\.1' "$WORKER_LOG"; then
    ok "the banner still shows the broker (password masked): $(grep -m1 -E 'transport:' "$WORKER_LOG" | sed 's/.*transport: *//')"
else
    not_ok "the banner shows the broker with the password masked" "$(head -20 "$WORKER_LOG")"
fi
no_secret_in "normal run at -l debug (banner, tasks, reconnect, shutdown)" "$WORKER_LOG" "$RPW" "$PPW"

# ---- libpq conninfo with a password ----
CPW=PgConninfoPw-93ab
start_worker -c 1 -b "$BROKER" --result-backend "$BROKER" -l debug \
    --db "host=127.0.0.1 port=$PG_PORT dbname=celeriac user=postgres password=$CPW"
out=$(REDIS_URL=$BROKER client send books.get_book_info --args '[4]' --timeout 15)
expect_eq "a libpq conninfo with password= works" '"Book 4"' "$(client_values <<<"$out")" "$(worker_log_tail)"
stop_worker TERM 30
no_secret_in "conninfo run" "$WORKER_LOG" "$CPW"

# ---- errors that print the target must not print the password ----
CLOSED=$(free_port)
start_worker -c 1 -b "$BROKER" --db "postgresql://postgres:$PPW@127.0.0.1:$CLOSED/x" \
    --db-connect-attempts 2 --db-backoff-base 50 --db-backoff-cap 100
wait_worker_exit 30 || true
no_secret_in "unreachable PostgreSQL URL with a password (exit $WORKER_RC)" "$WORKER_LOG" "$PPW"

start_worker -c 1 -b "$BROKER" --db "host=127.0.0.1 port=$CLOSED dbname=x user=postgres password=$CPW" \
    --db-connect-attempts 2 --db-backoff-base 50 --db-backoff-cap 100
wait_worker_exit 30 || true
no_secret_in "unreachable conninfo with a password (exit $WORKER_RC)" "$WORKER_LOG" "$CPW"

WPW=WrongRedisPw-c0ffee
start_worker -c 1 -b "redis://:$WPW@127.0.0.1:$REDIS_PORT/0" --db "$DBURL"
sleep 3
stop_worker TERM 10
expect_eq "SIGTERM stops a worker that is retrying a refused broker login" 0 "$WORKER_RC" "$(worker_log_tail 5)"
if grep -qiE 'auth|WRONGPASS|password' "$WORKER_LOG"; then
    ok "a wrong Redis password is reported"
else
    not_ok "a wrong Redis password is reported" "$(worker_log_tail 10)"
fi
no_secret_in "wrong Redis password" "$WORKER_LOG" "$WPW" "$PPW"

start_worker -c 1 -b "redis://:$WPW@127.0.0.1:$CLOSED/0"
sleep 3
stop_worker TERM 10
expect_eq "SIGTERM stops a worker that is retrying an unreachable broker" 0 "$WORKER_RC" "$(worker_log_tail 5)"
no_secret_in "unreachable Redis URL with a password" "$WORKER_LOG" "$WPW"

# ---- through the environment ----
EPW=EnvPw-5d5d5d
CELERIAC_BROKER_URL=$BROKER CELERIAC_RESULT_BACKEND=$BROKER \
    CELERIAC_DB_URL="postgresql://postgres:$EPW@127.0.0.1:$PG_PORT/celeriac" start_worker -c 1 -l debug
out=$(REDIS_URL=$BROKER client send books.get_book_info --args '[5]' --timeout 15)
expect_eq "settings from CELERIAC_BROKER_URL / CELERIAC_RESULT_BACKEND / CELERIAC_DB_URL" '"Book 5"' \
    "$(client_values <<<"$out")" "$(worker_log_tail)"
stop_worker TERM 30
no_secret_in "settings from the environment" "$WORKER_LOG" "$EPW" "$RPW"

check_worker_logs_clean
tap_done
