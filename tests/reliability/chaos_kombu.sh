# SPDX-License-Identifier: MIT
# shellcheck shell=bash disable=SC2034,SC2154 # variables shared with chaos.sh
# chaos_kombu.sh: what chaos_sql.sh and chaos_sqlite.sh share, both brokers
# being kombu's SQL transport: the progress read from kombu_message, and the
# duplicate runs classified from the worker log. The sourcing file defines
# kombu_rows (prints "ready claimed", "? ?" when the table cannot be read)
# and kombu_detail (prints the rows by visible and version).

broker_progress() {
    local r
    read -r -a r <<<"$(kombu_rows)"
    echo "ready ${r[0]}, claimed ${r[1]}"
}

broker_settled() { [[ $(kombu_rows) == "0 0" ]]; }

kombu_final() {
    final_rows=$(kombu_rows)
    final_detail=$(kombu_detail 2>&1 | tr '\n' ' ')
}

# classify_duplicates LOST_REGEX: the runs in the log, classified by
# chaos_duplicates.py, into killed_running killed_unstarted swept dup_ids
# dup_runs dup_kill dup_lost dup_other: a duplicate is put down to its
# slot's death (the kill), a failure LOST_REGEX names, or nothing.
classify_duplicates() {
    read -r killed_running killed_unstarted swept dup_ids dup_runs dup_kill dup_lost dup_other \
        <<<"$("$PY" "$REL_DIR/chaos_duplicates.py" "$WORKER_LOG" "$TEST_TMP/duplicates.txt" \
            --lost "$1" --ignore "^Task " \
            --count "killed=\]: its process died \(signal \d+\); requeued" \
            --count "unstarted=its child died before starting it" \
            --count "swept=gave back (\d+) message")"
    echo "# requeued:         $killed_running tasks cut short by a kill (requeued by the replacement), $killed_unstarted claimed and unstarted by a killed child, $swept claims given back by the visibility sweep (${VT} s)"
    echo "# re-runs:          $db_reruns idempotent re-runs after a lost database connection"
}

broker_final_line() { echo "left in kombu_message: $final_rows (ready, claimed) — $final_detail"; }

check_kombu_empty() {
    expect_eq "chaos: kombu_message is empty afterwards (ready, claimed)" "0 0" "$final_rows" \
        "$final_detail"
}
