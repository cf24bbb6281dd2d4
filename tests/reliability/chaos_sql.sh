# SPDX-License-Identifier: MIT
# shellcheck shell=bash disable=SC2034,SC2154 # variables shared with chaos.sh
# chaos_sql.sh: sourced by chaos.sh for CHAOS_BROKER=sql: the broker is
# kombu's SQL transport on the PostgreSQL that also holds the books
# (sqla+postgresql://, issue 12), the results go to a throwaway Redis (db 1).
# The tasks are published by Debian's Python client as an application on
# broker_url='sqla+...' publishes them (kombu creates its tables). The one
# PostgreSQL restart chaos.sh makes (at 25 % done) takes the broker down
# too, so there is no second restart. A late-ack task whose child is killed
# is requeued by the replacement (a new row); a claim whose ack was lost
# with the restart stays claimed until the visibility sweep gives it back
# (CHAOS_VISIBILITY_TIMEOUT, 15 s). Afterwards kombu_message must be empty,
# and the worker log's successful runs are counted against N: the duplicates
# must be no more than the kills plus what the children held at the restart
# (CONC: one claim each), and those not caused by a kill no more than the
# latter. (A child killed while it retries the ack the restart cut off is
# counted once, as the restart's: its replacement gives the claim back as
# unstarted, and the task runs again.) The hooks chaos.sh calls are
# described there.

BROKER_LABEL="PostgreSQL (kombu's SQL transport)"
BROKER_IS_PG=yes # chaos.sh: the broker is the PostgreSQL it starts and restarts
BROKER_WORKER_FLAGS=(--visibility-timeout "$VT" --sweep-interval 2)
BROKER_SETTLE_WAIT=$((VT + 30))

broker_start() {
    start_redis # results only
    start_pg
    BROKER_URL="sqla+postgresql://postgres@127.0.0.1:$PG_PORT/celeriac"
}

broker_before_worker() { :; }

broker_restart() { :; } # the PostgreSQL restart is the broker's

# rows in kombu_message: "ready claimed" ("? ?" while PostgreSQL is down)
kombu_rows() {
    psql_db -c "SELECT count(*) FILTER (WHERE visible), count(*) FILTER (WHERE NOT visible)
                  FROM kombu_message" 2>/dev/null | tr '|' ' ' | grep -E '^[0-9]+ [0-9]+$' ||
        echo "? ?"
}

broker_progress() {
    local r
    read -r -a r <<<"$(kombu_rows)"
    echo "ready ${r[0]}, claimed ${r[1]}"
}

broker_settled() { [[ $(kombu_rows) == "0 0" ]]; }

broker_after_worker() {
    final_rows=$(kombu_rows)
    final_detail=$(psql_db -c "SELECT visible, version, count(*) FROM kombu_message GROUP BY 1, 2
                                ORDER BY 1, 2" 2>&1 | tr '\n' ' ')
    return 0
}

# Runs in the log, as chaos_amqp.sh counts them: a successful run per
# "succeeded" line; a duplicate (a task that succeeded more than once) is
# put down to what its slot (ForkPoolWorker-N = child N-1) logged next after
# the earlier success: its death (the kill), or a failure of the broker
# database (the restart); anything else is unexplained.
broker_figures() {
    read -r killed_running killed_unstarted swept dup_ids dup_runs dup_kill dup_restart dup_other \
        <<<"$("$PY" - "$WORKER_LOG" "$TEST_TMP/duplicates.txt" "$REL_DIR" <<'PYEOF'
import collections, re, sys
sys.path.insert(0, sys.argv[3])
import chaos_duplicates
line_re = re.compile(r"^\[[^\]]*: \w+/(\S+)\] (.*)$")
ok_re = re.compile(r"Task [^\[]+\[([0-9a-f-]+)\] succeeded in")
death_re = re.compile(r"^child (\d+) \(pid \d+\) (killed by signal|exited)")
events = collections.defaultdict(list)  # slot -> [(line no, kind, task id, text)]
ok = collections.Counter()
killed = unstarted = swept = 0
for no, line in enumerate(open(sys.argv[1], errors="replace")):
    m = line_re.match(line)
    if not m:
        continue
    who, text = m.groups()
    if who == "MainProcess":
        d = death_re.match(text)
        if d:
            events[int(d.group(1))].append((no, "death", None, text))
        continue
    if not who.startswith("ForkPoolWorker-") or "already holds a SUCCESS" in text:
        continue
    slot = int(who.split("-")[1]) - 1
    t = ok_re.search(text)
    if t:
        ok[t.group(1)] += 1
        events[slot].append((no, "ok", t.group(1), text))
    elif re.search(r"connection lost|the broker failed|unreachable|database system is shutting"
                   r"|terminating connection|server closed the connection", text):
        events[slot].append((no, "broker", None, text))
    elif not text.startswith("Task "):
        events[slot].append((no, "other", None, text))
    killed += bool(re.search(r"\]: its process died \(signal \d+\); requeued", text))
    unstarted += "its child died before starting it" in text
    m = re.search(r"gave back (\d+) message", text)
    swept += int(m.group(1)) if m else 0
why = chaos_duplicates.duplicate_causes(events, ok, sys.argv[2])
dups = {t: n - 1 for t, n in ok.items() if n > 1}
print(killed, unstarted, swept, len(dups), sum(dups.values()), why["kill"], why["restart"],
      why["other"])
PYEOF
)"
    duplicate_bound=$((kills + CONC))
    echo "# requeued:         $killed_running tasks cut short by a kill (requeued by the replacement), $killed_unstarted claimed and unstarted by a killed child, $swept claims given back by the visibility sweep (${VT} s)"
    echo "# re-runs:          $db_reruns idempotent re-runs after a lost database connection"
    echo "# executions:       $runs_ok successful runs for $N tasks: $dup_runs duplicates of $dup_ids tasks ($dup_kill: the child was killed before its ack, $dup_restart: its ack was lost with the PostgreSQL restart, $dup_other unexplained; $duplicates found a SUCCESS already stored and kept it); bound: kills + $CONC claims held at the restart = $duplicate_bound"
}

broker_final_line() { echo "left in kombu_message: $final_rows (ready, claimed) — $final_detail"; }

broker_checks() {
    expect_eq "chaos: kombu_message is empty afterwards (ready, claimed)" "0 0" "$final_rows" \
        "$final_detail"
    if ((dup_runs <= duplicate_bound)); then
        ok "chaos: duplicate runs ($dup_runs) <= kills + claims held at the restart ($kills + $CONC)"
    else
        not_ok "chaos: duplicate runs <= kills + claims held at the restart" \
            "$dup_runs duplicates ($runs_ok successful runs for $N tasks), $kills kills, -c $CONC"
    fi
    if ((dup_restart + dup_other <= CONC)); then
        ok "chaos: duplicates not caused by a kill ($dup_restart + $dup_other) <= $CONC (claims held at the restart)"
    else
        not_ok "chaos: duplicates not caused by a kill <= the claims held at the restart" \
            "$dup_restart after the restart + $dup_other unexplained > $CONC" \
            "$(cat "$TEST_TMP/duplicates.txt")"
    fi
    ((dup_other == 0)) || diag "unexplained duplicates: $(grep '^other' "$TEST_TMP/duplicates.txt")"
}

broker_keep_note() { echo "kombu_message: $final_detail"; }
