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
kombu_detail() {
    psql_db -c "SELECT visible, version, count(*) FROM kombu_message GROUP BY 1, 2 ORDER BY 1, 2"
}
# shellcheck source=chaos_kombu.sh
. "$REL_DIR/chaos_kombu.sh"

broker_after_worker() { kombu_final; }

# A duplicate is put down to its slot's death (the kill), a failure of the
# broker database (the restart), or nothing (unexplained).
broker_figures() {
    classify_duplicates "connection lost|the broker failed|unreachable|database system is shutting|terminating connection|server closed the connection"
    dup_restart=$dup_lost
    duplicate_bound=$((kills + CONC))
    echo "# executions:       $runs_ok successful runs for $N tasks: $dup_runs duplicates of $dup_ids tasks ($dup_kill: the child was killed before its ack, $dup_restart: its ack was lost with the PostgreSQL restart, $dup_other unexplained; $duplicates found a SUCCESS already stored and kept it); bound: kills + $CONC claims held at the restart = $duplicate_bound"
}

broker_checks() {
    check_kombu_empty
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
