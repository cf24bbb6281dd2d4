#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_valgrind.sh: a worker's whole life under valgrind: every child and the
# control process start, open their connections, run tasks (success, failure,
# retry, a lost connection), answer `inspect stats`, and shut down warm. Each
# process must end with no memory error and nothing definitely or indirectly
# lost. (Under an ASan build valgrind cannot run: the file reports a skip.)
. "$(dirname "$0")/services.sh"

if ldd "$CELERIAC_BIN" 2>/dev/null | grep -q libasan; then
    ok "valgrind run # SKIP the binary is built with AddressSanitizer"
    tap_done
fi
command -v valgrind >/dev/null || { not_ok "valgrind is installed"; tap_done; }

start_redis
start_pg
seed_books_pg

VG_DIR=$TEST_TMP/valgrind
mkdir -p "$VG_DIR"
WORKER_LOG=$TEST_TMP/worker-valgrind.log
WORKER_LOGS+=("$WORKER_LOG")
valgrind --trace-children=yes --leak-check=full --show-leak-kinds=definite,indirect \
    --errors-for-leak-kinds=definite,indirect --log-file="$VG_DIR/vg.%p" \
    "$CELERIAC_BIN" worker -A "$BOOKS_LIB" -c 2 -b "$REDIS_URL" --result-backend "$REDIS_URL" \
    --db "$PG_URL" -n vg@localhost </dev/null >"$WORKER_LOG" 2>&1 &
WORKER_PID=$!
_svc_record_pid "$WORKER_PID" worker
wait_children 2 60 || not_ok "worker under valgrind started 2 children" "$(worker_log_tail)"
ready() { grep -q "ready\." "$WORKER_LOG"; }
wait_for 60 ready || not_ok "worker under valgrind became ready" "$(worker_log_tail)"

export CELERIAC_BROKER_URL=$REDIS_URL CELERIAC_RESULT_BACKEND=$REDIS_URL
call() { "$CELERIAC_BIN" call "$@" --wait --timeout 60; }
expect_eq "get_book_info under valgrind" '"Book 7"' "$(call books.get_book_info 7)"
expect_eq "a failing task under valgrind" \
    'FAILURE {"exc_type":"LookupError","exc_message":["book 100000 not found"],"exc_module":"builtins"}' \
    "$(call books.get_book_info 100000)"
expect_eq "a retried task under valgrind" 1 "$(call tasks.flaky 1)"
# A lost connection: terminate every celeriac backend, then run tasks again.
psql_admin -c "select pg_terminate_backend(pid) from pg_stat_activity where application_name like 'celeriac%'" >/dev/null
for i in 1 2 3 4; do
    expect_eq "get_book_info after the backends were terminated ($i)" "\"Book $i\"" \
        "$(call books.get_book_info $i)"
done
"$PY" -m celery -b "$REDIS_URL" inspect stats >/dev/null 2>&1 ||
    not_ok "inspect stats answered under valgrind"
stop_worker TERM 90
expect_eq "warm shutdown under valgrind: exit 0" 0 "$WORKER_RC" "$(worker_log_tail)"

logs=("$VG_DIR"/vg.*)
if ((${#logs[@]} < 4)); then
    not_ok "valgrind logs for the master, 2 children and the control process" "${logs[*]}"
fi
for f in "${logs[@]}"; do
    pid=${f##*.}
    errors=$(sed -n 's/.*ERROR SUMMARY: \([0-9]*\) errors.*/\1/p' "$f" | tail -1)
    if [[ $errors == 0 ]]; then
        ok "valgrind: process $pid has no memory error and no leak"
    else
        not_ok "valgrind: process $pid has no memory error and no leak" "$(tail -40 "$f")"
    fi
done
tap_done
