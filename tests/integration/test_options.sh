#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_options.sh: worker options as Celery has them: the banner, default
# concurrency = CPUs, -Q with several queues (and nothing taken from others),
# -n, -l, the default queue name.
. "$(dirname "$0")/services.sh"

start_redis

# ---- banner ----
DBP=$(free_port)
start_worker -c 3 -Q alpha,beta -n banner@testhost -b "redis://:BannerPw-1@127.0.0.1:$REDIS_PORT/0" \
    --result-backend "$REDIS_URL" --db "postgresql://bob:BannerPw-2@127.0.0.1:$DBP/books"
_banner_done() { grep -q 'books.get_book_info' "$WORKER_LOG"; }
wait_for 10 _banner_done
banner=$(head -40 "$WORKER_LOG")
stop_worker KILL 5
for want in "banner@testhost" "alpha" "beta" "tasks.add" "books.get_book_info" "127.0.0.1:$REDIS_PORT" \
    "127.0.0.1:$DBP/books" "$(sed -n 's/^#define CELERIAC_VERSION "\(.*\)"/\1/p' "$CELERIAC_ROOT/include/celeriac.h")"; do
    if grep -qF -- "$want" <<<"$banner"; then ok "banner shows '$want'"; else
        not_ok "banner shows '$want'" "$banner"; fi
done
if grep -qE 'concurrency:?[[:space:]]+3' <<<"$banner"; then ok "banner shows concurrency 3"; else
    not_ok "banner shows concurrency 3" "$banner"; fi
if grep -qE 'BannerPw' <<<"$banner"; then not_ok "banner masks passwords" "$banner"; else
    ok "banner masks passwords"; fi

# ---- default concurrency is the number of CPUs ----
start_worker -b "$REDIS_URL" --result-backend "$REDIS_URL"
ncpu=$(nproc)
if wait_children "$ncpu" 20; then ok "default concurrency: $ncpu children (nproc)"; else
    not_ok "default concurrency: $ncpu children (nproc)" "children: $(worker_children)" "$(worker_log_tail 5)"; fi
out=$(client send tasks.add --args '[1, 2]')
expect_eq "default queue is 'celery'" 3 "$(client_values <<<"$out")"
stop_worker TERM 20
expect_eq "exit 0 (default concurrency)" 0 "$WORKER_RC"

# ---- -Q alpha,beta consumes both and nothing else ----
start_worker -c 2 -Q alpha,beta -b "$REDIS_URL" --result-backend "$REDIS_URL" -n queues@localhost
out=$(client send tasks.add --args '[1, 1]' --queue alpha)
expect_eq "-Q alpha,beta: a task on alpha runs" 2 "$(client_values <<<"$out")" "$(worker_log_tail 5)"
out=$(client send tasks.add --args '[2, 2]' --queue beta)
expect_eq "-Q alpha,beta: a task on beta runs" 4 "$(client_values <<<"$out")" "$(worker_log_tail 5)"
client send tasks.add --args '[3, 3]' --queue gamma --no-wait >/dev/null
client send tasks.add --args '[4, 4]' --no-wait >/dev/null
sleep 1.5
expect_eq "-Q alpha,beta: gamma and celery are left alone" "1 1" \
    "$(redis_cli llen gamma) $(redis_cli llen celery)"
stop_worker TERM 20
expect_eq "exit 0 (-Q)" 0 "$WORKER_RC"
expect_eq "... and stay queued after it stops" "1 1" "$(redis_cli llen gamma) $(redis_cli llen celery)"

# ---- -l warning hides INFO, -l debug shows more ----
start_worker -c 1 -l warning -b "$REDIS_URL" --result-backend "$REDIS_URL"
client send tasks.add --args '[1, 1]' --queue celery >/dev/null
stop_worker TERM 20
if grep -qE ': (INFO|DEBUG)/' "$WORKER_LOG"; then
    not_ok "-l warning: no INFO or DEBUG line" "$(grep -m3 -E ': (INFO|DEBUG)/' "$WORKER_LOG")"
else
    ok "-l warning: no INFO or DEBUG line"
fi
start_worker -c 1 -l debug -b "$REDIS_URL" --result-backend "$REDIS_URL"
client send tasks.add --args '[1, 1]' >/dev/null
stop_worker TERM 20
if grep -qE ': DEBUG/' "$WORKER_LOG"; then ok "-l debug: DEBUG lines appear"; else
    not_ok "-l debug: DEBUG lines appear" "$(worker_log_tail 8)"; fi
if grep -qE '^\[[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2},[0-9]{3}: (INFO|WARNING)/MainProcess\] ' "$WORKER_LOG"; then
    ok "log lines have Celery's format [YYYY-MM-DD HH:MM:SS,mmm: LEVEL/ProcessName]"
else
    not_ok "log lines have Celery's format" "$(worker_log_tail 5)"
fi

check_worker_logs_clean
tap_done
