#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_sqlite.sh: --db sqlite:///abs and sqlite://rel. Tasks succeed, the file
# is in WAL mode with a busy timeout, one handle per child, many concurrent
# writers all succeed, the handles are closed at exit (WAL checkpointed away),
# an unusable path gives a clear error and a non-zero exit.
. "$(dirname "$0")/services.sh"

start_redis
mkdir -p "$TEST_TMP/sq" "$TEST_TMP/rel/data"
DB=$TEST_TMP/sq/books.db
seed_books_sqlite "$DB" || { not_ok "seed the SQLite books table"; tap_done; }
expected_books() { local id out=(); for id in "$@"; do out+=("\"Book $id\""); done; echo "${out[*]}"; }
each() { local e; e=$(printf '[%s],' "$@"); echo "[${e%,}]"; }

# ---- absolute path ----
start_worker -c 2 -b "$REDIS_URL" --result-backend "$REDIS_URL" --db "sqlite://$DB" -n sq@localhost
wait_children 2 20 || not_ok "worker started 2 children" "$(worker_log_tail)"
kids=$(worker_children)
out=$(client send books.get_book_info --each "$(each 1 2 3 4)" --timeout 20)
expect_eq "get_book_info on sqlite:///abs/path" "$(expected_books 1 2 3 4)" "$(client_values <<<"$out")" \
    "$(worker_log_tail)"
expect_eq "the update is committed (fetched_at of books 1..4 set)" 4 \
    "$(sqlite3 "$DB" "SELECT count(*) FROM books WHERE id <= 4 AND fetched_at IS NOT NULL")"
if [[ -e $DB-wal ]]; then ok "WAL mode: $DB-wal exists while the worker runs"; else
    not_ok "WAL mode: $DB-wal exists while the worker runs" "$(ls -la "$TEST_TMP/sq")"; fi
expect_eq "journal_mode of the file is wal" wal "$(sqlite3 "$DB" "PRAGMA journal_mode")"
out=$(client send books.get_book_info --args '[999999]')
expect_eq "unknown book on SQLite raises LookupError" 'raised:LookupError["book 999999 not found"]' \
    "$(client_values <<<"$out")"

# concurrent writers: two children updating the same file
ids=$(seq 100 299 | tr '\n' ' ')
# shellcheck disable=SC2086
out=$(client send books.get_book_info --each "$(each $ids)" --timeout 60)
vals=$(client_values <<<"$out")
# shellcheck disable=SC2086
if [[ $vals == "$(expected_books $ids)" ]]; then
    ok "200 get_book_info from two children on one SQLite file all succeed"
else
    not_ok "200 get_book_info from two children on one SQLite file all succeed" \
        "$(tr ' ' '\n' <<<"$vals" | grep -v '^"Book' | sort | uniq -c | head)" "$(worker_log_tail 10)"
fi
expect_eq "no child was replaced" "$kids" "$(worker_children)" "$(worker_log_tail)"
stop_worker TERM 30
expect_eq "worker exits 0 on SIGTERM (sqlite)" 0 "$WORKER_RC" "$(worker_log_tail)"
n_closed=$(grep -cE 'closed .*exiting' "$WORKER_LOG")
if [[ $n_closed -ge 2 ]]; then ok "both children log closing their SQLite handle at exit"; else
    not_ok "both children log closing their SQLite handle at exit" "$(worker_log_tail 6)"; fi

# ---- the handle each child sees (probe library) ----
if build_probe_lib; then
    start_worker -A "$PROBE_LIB" -c 2 -b "$REDIS_URL" --result-backend "$REDIS_URL" --db "sqlite://$DB"
    wait_children 2 20
    out=$(client send probe.sqlite --each '[[0.5],[0.5]]' --timeout 20)
    info=$("$PY" -c '
import json, sys
rows = [json.loads(l).get("value") for l in sys.stdin if l.startswith("{")]
rows = [r for r in rows if isinstance(r, dict)]
print(len(rows), len({r["pid"] for r in rows}), " ".join(sorted({r["journal_mode"] for r in rows})),
      min([r["busy_timeout"] for r in rows] or [0]), " ".join(sorted({r["file"] for r in rows})))' <<<"$out")
    read -r n npids modes busy file <<<"$info"
    expect_eq "probe.sqlite ran on both children" "2 2" "$n $npids" "$out"
    expect_eq "each child's handle is in WAL mode" wal "$modes"
    if [[ ${busy:-0} -gt 0 ]]; then ok "each child's handle has a busy timeout (${busy} ms)"; else
        not_ok "each child's handle has a busy timeout" "busy_timeout=$busy"; fi
    expect_eq "the handle is on the configured file" "$(realpath "$DB")" "$(realpath "${file:-/nonexistent}" 2>/dev/null)"
    stop_worker TERM 30
    expect_eq "probe worker exits 0 (sqlite)" 0 "$WORKER_RC" "$(worker_log_tail)"
fi

# ---- relative path: sqlite://rel/path is relative to the working directory ----
seed_books_sqlite "$TEST_TMP/rel/data/rel.db" || not_ok "seed the relative database"
pushd "$TEST_TMP/rel" >/dev/null
start_worker -c 1 -b "$REDIS_URL" --result-backend "$REDIS_URL" --db "sqlite://data/rel.db"
popd >/dev/null
out=$(client send books.get_book_info --args '[9]' --timeout 20)
expect_eq "get_book_info on sqlite://relative/path" '"Book 9"' "$(client_values <<<"$out")" "$(worker_log_tail)"
expect_eq "the relative file is the one updated" 1 \
    "$(sqlite3 "$TEST_TMP/rel/data/rel.db" "SELECT count(*) FROM books WHERE id = 9 AND fetched_at IS NOT NULL")"
stop_worker TERM 30
expect_eq "worker exits 0 (relative sqlite)" 0 "$WORKER_RC" "$(worker_log_tail)"
# With one child, its close is the last one: SQLite checkpoints and removes
# the WAL file. A WAL file left behind means the handle was never closed.
if [[ ! -s $TEST_TMP/rel/data/rel.db-wal ]]; then ok "the handle was closed at exit (WAL checkpointed away)"; else
    not_ok "the handle was closed at exit (WAL checkpointed away)" "$(ls -la "$TEST_TMP/rel/data")"; fi

# ---- unusable paths ----
t0=$SECONDS
start_worker -c 2 -b "$REDIS_URL" --db "sqlite:///nonexistent-dir/x.db"
if wait_worker_exit 60; then
    if [[ $WORKER_RC != 0 ]]; then
        ok "sqlite:///nonexistent-dir/x.db: non-zero exit ($WORKER_RC) after $((SECONDS - t0)) s"
    else
        not_ok "sqlite:///nonexistent-dir/x.db: non-zero exit" "exit 0" "$(worker_log_tail)"
    fi
else
    not_ok "sqlite:///nonexistent-dir/x.db: the worker stops within 60 s" "$(worker_log_tail 20)"
fi
if grep -q "/nonexistent-dir/x.db" "$WORKER_LOG"; then
    ok "sqlite:///nonexistent-dir/x.db: the error names the file"
else
    not_ok "sqlite:///nonexistent-dir/x.db: the error names the file" "$(worker_log_tail 10)"
fi
if [[ -e /nonexistent-dir ]]; then not_ok "the worker created /nonexistent-dir"; fi

# a path that is a directory
start_worker -c 1 -b "$REDIS_URL" --db "sqlite://$TEST_TMP/sq"
if wait_worker_exit 60 && [[ $WORKER_RC != 0 ]]; then
    ok "a directory as the sqlite file: non-zero exit ($WORKER_RC)"
else
    not_ok "a directory as the sqlite file: non-zero exit within 60 s" "rc $WORKER_RC" "$(worker_log_tail 10)"
fi

# a file that is not a database: refused at open (exit 3), or, if opened
# lazily, every task fails cleanly
echo "this is not a database" >"$TEST_TMP/sq/garbage.db"
start_worker -c 1 -b "$REDIS_URL" --result-backend "$REDIS_URL" --db "sqlite://$TEST_TMP/sq/garbage.db"
if wait_worker_exit 30; then
    if [[ $WORKER_RC != 0 ]]; then ok "a file that is not a database: non-zero exit ($WORKER_RC)"; else
        not_ok "a file that is not a database: non-zero exit" "$(worker_log_tail 10)"; fi
else
    start_worker -c 1 -b "$REDIS_URL" --result-backend "$REDIS_URL" --db "sqlite://$TEST_TMP/sq/garbage.db"
    out=$(client send books.get_book_info --args '[1]' --timeout 20)
    case "$(client_values <<<"$out")" in
    raised:*Timeout*) not_ok "a file that is not a database: the task fails cleanly" "$out" "$(worker_log_tail 10)" ;;
    raised:*) ok "a file that is not a database: the task fails cleanly ($(client_values <<<"$out" | cut -c1-80))" ;;
    *) not_ok "a file that is not a database: the task fails cleanly" "$out" "$(worker_log_tail 10)" ;;
    esac
    stop_worker TERM 20
fi

check_worker_logs_clean
tap_done
