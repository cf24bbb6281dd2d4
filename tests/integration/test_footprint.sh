#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_footprint.sh: what a worker costs in memory, and the start-up that keeps
# it small. The master makes the dynamic linker bind every library at start
# (util/bind_now.h: it re-executes itself once with LD_BIND_NOW), so children
# do not each resolve the same symbols again after fork. Checked here: after
# a few hundred W1 tasks on PostgreSQL each child and the master stay within
# 4 MB of RSS (a plain build; ASan's shadow memory makes that meaningless), the
# master keeps the pid it was started with, and neither LD_BIND_NOW nor its
# marker leaks into the tasks' environment unless the user set it.
. "$(dirname "$0")/services.sh"

start_redis
start_pg
seed_books_pg || { not_ok "seed the books table"; tap_done; }
build_probe_lib || tap_done
asan=0
ldd "$CELERIAC_BIN" 2>/dev/null | grep -q libasan && asan=1
rss_kib() { awk '$1 == "VmRSS:" {print $2}' "/proc/$1/status" 2>/dev/null; }
each() { local e; e=$(printf '[%s],' "$@"); echo "[${e%,}]"; }

# ---- the seed workload: child and master RSS ----
start_worker -c 2 -b "$REDIS_URL" --result-backend "$REDIS_URL" --db "$PG_URL" -n fp@localhost
master=$WORKER_PID
wait_children 2 20 || not_ok "worker started 2 children" "$(worker_log_tail)"
# shellcheck disable=SC2046
out=$(client send books.get_book_info --each "$(each $(seq 1 400))" --timeout 60)
n=$(client_values <<<"$out" | grep -oE '"Book [0-9]+"' | wc -l)
expect_eq "400 get_book_info on PostgreSQL all succeed" 400 "$n" "$(worker_log_tail)"
expect_eq "the master kept the pid it was started with (the re-exec keeps it)" \
    "celeriac:master" "$(cat "/proc/$master/comm" 2>/dev/null)"
if ((asan)); then
    echo "ok - child and master RSS within 4 MB # SKIP ASan build (shadow memory)"
else
    sizes=""
    worst=0
    for pid in $(worker_children) "$master"; do
        kib=$(rss_kib "$pid")
        sizes+="$(cat "/proc/$pid/comm"):${kib}kB "
        ((kib > worst)) && worst=$kib
    done
    if ((worst > 0 && worst <= 4096)); then
        ok "each child and the master within 4 MB of RSS after 400 tasks ($sizes)"
    else
        not_ok "each child and the master within 4 MB of RSS after 400 tasks" "$sizes"
    fi
fi
stop_worker

# ---- the tasks' environment ----
start_worker -A "$PROBE_LIB" -c 1 -b "$REDIS_URL" --result-backend "$REDIS_URL" --db "$PG_URL" \
    -n fp2@localhost
wait_children 1 20 || not_ok "probe worker started" "$(worker_log_tail)"
env_of() { client_values <<<"$(client send probe.env --args "[\"$1\"]" --timeout 20)"; }
expect_eq "a task does not inherit LD_BIND_NOW set by the worker's start-up" null \
    "$(env_of LD_BIND_NOW)" "$(worker_log_tail)"
expect_eq "... nor its marker" null "$(env_of CELERIAC_SET_LD_BIND_NOW)"
stop_worker

LD_BIND_NOW=1 start_worker -A "$PROBE_LIB" -c 1 -b "$REDIS_URL" --result-backend "$REDIS_URL" \
    --db "$PG_URL" -n fp3@localhost
wait_children 1 20 || not_ok "probe worker with LD_BIND_NOW=1 started" "$(worker_log_tail)"
expect_eq "LD_BIND_NOW set by the user is left for the tasks" '"1"' "$(env_of LD_BIND_NOW)" \
    "$(worker_log_tail)"
stop_worker

check_worker_logs_clean
tap_done
