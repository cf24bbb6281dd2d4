# SPDX-License-Identifier: MIT
# shellcheck shell=bash disable=SC2034,SC2154 # variables shared with chaos.sh
# chaos_sqlite.sh: sourced by chaos.sh for CHAOS_BROKER=sqlite: the broker is
# kombu's SQL transport in an SQLite file (sqla+sqlite:///, the embedded
# default's broker), the results go to a throwaway Redis (db 1), the books
# to the PostgreSQL chaos.sh restarts. An SQLite file has no server to
# restart: its fault, at 60 % done, is another process holding the file's
# write lock (BEGIN IMMEDIATE) for SQLITE_LOCK_SECONDS (12 s), beyond two
# busy timeouts, so claims and acks fail with "database is locked" and are
# retried with backoff. Nothing is lost with the lock: a claim or an ack
# that did not commit changed nothing. So every duplicate run must be put
# down to a kill (the child died before its ack), none to the lock or the
# PostgreSQL restart, and the file's kombu_message must be empty afterwards.
# The hooks chaos.sh calls are described there.

BROKER_LABEL="the SQLite broker file"
BROKER_FAULT="its write lock held for ${SQLITE_LOCK_SECONDS:=12} s by another process"
BROKER_WORKER_FLAGS=(--visibility-timeout "$VT" --sweep-interval 2)
BROKER_SETTLE_WAIT=$((VT + 30))
BROKER_DB=$TEST_TMP/broker.db

broker_start() {
    start_redis # results only
    BROKER_URL="sqla+sqlite:///$BROKER_DB"
}

# The lock: a process started before the worker (Python takes a while to
# start), waiting for $TEST_TMP/lock.now; then it takes the write lock, says
# "locked BEFORE", keeps it, and counts the results stored meanwhile (Redis
# db 1) before it commits: "held BEFORE AFTER". It asks for the lock every
# millisecond without a busy timeout: SQLite's busy handler sleeps up to
# 100 ms between tries, and the children's short transactions kept winning
# the file until the work was done.
broker_before_worker() {
    "$PY" -c 'import os, sqlite3, sys, time
import redis
results = redis.Redis(host="127.0.0.1", port=int(sys.argv[3]), db=1)
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=0)
while not os.path.exists(sys.argv[4]):
    time.sleep(0.002)
deadline = time.monotonic() + 30
while True:
    try:
        db.execute("BEGIN IMMEDIATE")
        break
    except sqlite3.OperationalError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.001)
before = results.dbsize()
print("locked", before, flush=True)
time.sleep(float(sys.argv[2]))
after = results.dbsize()
db.execute("COMMIT")
print("held", before, after, flush=True)' "$BROKER_DB" "$SQLITE_LOCK_SECONDS" "$REDIS_PORT" \
        "$TEST_TMP/lock.now" >"$TEST_TMP/locker.out" 2>&1 &
    LOCKER=$!
    _svc_record_pid "$LOCKER" python3
}

broker_restart() {
    touch "$TEST_TMP/lock.now"
    if wait_for 30 grep -q locked "$TEST_TMP/locker.out"; then
        diag "$BROKER_LABEL: write lock asked for at $1 done, taken at $(awk '/^locked/ {print $2}' "$TEST_TMP/locker.out") done, for $SQLITE_LOCK_SECONDS s"
    else
        not_ok "chaos: another process takes the SQLite file's write lock" \
            "$(cat "$TEST_TMP/locker.out")"
    fi
}

sq() { sqlite3 -batch -cmd ".timeout 5000" "$BROKER_DB" "$@"; }
# rows in kombu_message: "ready claimed" ("? ?" when the file cannot be read)
kombu_rows() {
    sq -separator ' ' "SELECT count(*) FILTER (WHERE visible), count(*) FILTER (WHERE NOT visible)
                        FROM kombu_message" 2>/dev/null | grep -E '^[0-9]+ [0-9]+$' || echo "? ?"
}
kombu_detail() { sq "SELECT visible, version, count(*) FROM kombu_message GROUP BY 1, 2 ORDER BY 1, 2"; }
# shellcheck source=chaos_kombu.sh
. "$REL_DIR/chaos_kombu.sh"

broker_after_worker() {
    # never asked for (the run ended before 60 %): it would wait for ever
    [[ -f $TEST_TMP/lock.now ]] || kill "$LOCKER" 2>/dev/null
    wait "$LOCKER" 2>/dev/null
    read -r _ lock_before lock_after <<<"$(grep '^held' "$TEST_TMP/locker.out")"
    kombu_final
}

broker_figures() {
    classify_duplicates "database is locked|connection lost|unreachable|database system is shutting|terminating connection|server closed the connection"
    echo "# lock:             $((lock_after - lock_before)) results stored while the file was locked ($lock_before before, $lock_after at its end); $(log_count 'database is locked' "$WORKER_LOG") log lines name the locked file"
    echo "# executions:       $runs_ok successful runs for $N tasks: $dup_runs duplicates of $dup_ids tasks ($dup_kill: the child was killed before its ack, $dup_lost: after a locked file or the PostgreSQL restart, $dup_other unexplained; $duplicates found a SUCCESS already stored and kept it); bound: the kills, $kills"
}

broker_checks() {
    check_kombu_empty
    if ((dup_runs <= kills)); then
        ok "chaos: duplicate runs ($dup_runs) <= kills ($kills)"
    else
        not_ok "chaos: duplicate runs <= kills" \
            "$dup_runs duplicates ($runs_ok successful runs for $N tasks), $kills kills"
    fi
    expect_eq "chaos: no duplicate run after the locked file or the restart, none unexplained" \
        "0 0" "$dup_lost $dup_other" "$(cat "$TEST_TMP/duplicates.txt")"
    # The tasks running when the lock came can store their results (their
    # acks wait for the file); nothing else may finish while it is held.
    if [[ $lock_before =~ ^[0-9]+$ ]] && ((lock_before < N)); then
        ok "chaos: the lock came while tasks remained ($lock_before of $N done)"
    else
        not_ok "chaos: the lock came while tasks remained" "$(cat "$TEST_TMP/locker.out")"
    fi
    if [[ $lock_before =~ ^[0-9]+$ && $lock_after =~ ^[0-9]+$ ]] &&
        ((lock_after - lock_before <= CONC)); then
        ok "chaos: the locked file held the work up ($((lock_after - lock_before)) results stored in its $SQLITE_LOCK_SECONDS s, at most the $CONC running)"
    else
        not_ok "chaos: the locked file held the work up" "$(cat "$TEST_TMP/locker.out")"
    fi
}

broker_keep_note() { echo "kombu_message: $final_detail; broker file: $BROKER_DB"; }
