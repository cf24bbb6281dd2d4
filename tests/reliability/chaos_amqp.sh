# SPDX-License-Identifier: MIT
# shellcheck shell=bash disable=SC2034,SC2154 # variables shared with chaos.sh
# chaos_amqp.sh: sourced by chaos.sh for CHAOS_BROKER=amqp: the broker is a
# private RabbitMQ (tests/lib/rabbitmq.sh), the results go to a throwaway
# Redis (db 1). The tasks are published as Celery publishes them (persistent,
# to the durable queue "celery"), and the node is restarted once on the same
# data directory (a clean stop, 2 s down), so the queue and its messages
# survive. RabbitMQ keeps each child's unacked delivery and requeues it when
# the child's connection closes: a task whose child is killed runs again, and
# so does one whose ack was lost with the restart. There is nothing like the
# MONITOR accounting of Redis; instead the worker log's successful runs are
# counted against N: the duplicates must be no more than the kills plus what
# the children could hold unacked at the restart (CONC x prefetch 1), and
# those not caused by a kill no more than the latter. The hooks chaos.sh
# calls are described there.
. "$(dirname "${BASH_SOURCE[0]}")/../lib/rabbitmq.sh"

BROKER_LABEL="RabbitMQ"
BROKER_WORKER_FLAGS=()
BROKER_SETTLE_WAIT=30
AMQP_PREFETCH=1 # per child: --prefetch-multiplier, whose default the worker runs with here

# rabbitmq_start installs its own EXIT trap: this one (set again after it)
# stops the node, then everything services.sh started, keeping the status.
chaos_amqp_cleanup() {
    local rc=$?
    rabbitmq_stop
    (exit "$rc")
    services_cleanup
}

broker_start() {
    start_redis # results only
    local rc=0
    rabbitmq_start || rc=$?
    trap chaos_amqp_cleanup EXIT
    if ((rc)); then
        not_ok "chaos: start a private RabbitMQ"
        tap_done
    fi
    diag "RabbitMQ started in ${RABBITMQ_START_MS} ms on port $RABBITMQ_PORT"
    BROKER_URL=$RABBITMQ_URL
}

broker_before_worker() { :; }

broker_restart() {
    if rabbitmq_restart 2; then
        diag "RabbitMQ restarted (2 s down, same data directory) at $1 done: accepting AMQP again ${RABBITMQ_RESTART_MS} ms after the stop began"
    else
        not_ok "chaos: RabbitMQ starts again on its data directory"
        tap_done
    fi
}

ready_count() { rel qlen 2>/dev/null | grep -E '^[0-9]+$' || echo -1; }

# every message the node holds in any queue, ready and unacked (rabbitmqctl)
node_messages() {
    rabbitmq_ctl list_queues -q name messages messages_unacknowledged 2>/dev/null |
        awk 'NF == 3 && $2 ~ /^[0-9]+$/ { m += $2; u += $3; n++ } END { if (n) print m + 0, u + 0; else print "? ?" }'
}

broker_progress() { echo "ready $(ready_count)"; }

# rabbitmqctl boots an Erlang VM: asked only once nothing is ready
broker_settled() { [[ $(ready_count) == 0 && $(node_messages) == "0 0" ]]; }

broker_after_worker() {
    final_node=$(node_messages)
    final_queues=$(rabbitmq_ctl list_queues -q name messages messages_unacknowledged durable 2>&1 | tr '\t\n' ' ;')
    [[ -n ${KEEP_TMP:-} ]] && cp -r "$RMQ_DIR/log" "$TEST_TMP/rabbitmq-log"
    return 0
}

# Runs in the log, classified by chaos_duplicates.py: a run cut short by a
# SIGKILL is reported by the replacement child, naming the task; a message
# whose child died before starting it likewise; an ack of a delivery whose
# channel has closed since finds nothing to ack. A duplicate is put down to
# its slot's death (the kill), its broker connection lost (the restart), or
# nothing (unexplained).
broker_figures() {
    read -r killed_running killed_unstarted stale_acks dup_ids dup_runs dup_kill dup_restart \
        dup_other <<<"$("$PY" "$REL_DIR/chaos_duplicates.py" "$WORKER_LOG" "$TEST_TMP/duplicates.txt" \
            --lost "broker connection to .* lost|(fetching from|connecting to) the broker failed" \
            --count "killed=\]: its process died \(signal \d+\); the broker requeued its message" \
            --count "unstarted=its child died before starting it; the broker requeued it" \
            --count "stale=was on a channel that has closed since")"
    duplicate_bound=$((kills + CONC * AMQP_PREFETCH))
    echo "# requeued by the server: $killed_running tasks cut short by a kill (run again), $killed_unstarted unstarted messages of killed children, $stale_acks acks that found their channel closed by the restart (delivered again)"
    echo "# re-runs:          $db_reruns idempotent re-runs after a lost database connection"
    echo "# executions:       $runs_ok successful runs for $N tasks: $dup_runs duplicates of $dup_ids tasks ($dup_kill: the child was killed before its ack, $dup_restart: its ack was lost with the RabbitMQ restart, $dup_other unexplained; $duplicates found a SUCCESS already stored and kept it); bound: kills + $CONC children x prefetch $AMQP_PREFETCH = $duplicate_bound"
}

broker_final_line() { echo "left on the node:  $final_node (messages, unacked over every queue) — $final_queues"; }

broker_checks() {
    expect_eq "chaos: nothing left on RabbitMQ afterwards (messages, unacked)" "0 0" "$final_node" "$final_queues"
    if ((dup_runs <= duplicate_bound)); then
        ok "chaos: duplicate runs ($dup_runs) <= kills + unacked at the restart ($kills + $CONC x $AMQP_PREFETCH)"
    else
        not_ok "chaos: duplicate runs <= kills + unacked at the restart" \
            "$dup_runs duplicates ($runs_ok successful runs for $N tasks), $kills kills, -c $CONC"
    fi
    if ((dup_restart + dup_other <= CONC * AMQP_PREFETCH)); then
        ok "chaos: duplicates not caused by a kill ($dup_restart + $dup_other) <= $CONC x prefetch $AMQP_PREFETCH (unacked at the restart)"
    else
        not_ok "chaos: duplicates not caused by a kill <= what was unacked at the restart" \
            "$dup_restart after the restart + $dup_other unexplained > $CONC x $AMQP_PREFETCH" \
            "$(cat "$TEST_TMP/duplicates.txt")"
    fi
    ((dup_other == 0)) || diag "unexplained duplicates: $(grep '^other' "$TEST_TMP/duplicates.txt")"
}

broker_keep_note() { echo "rabbitmq logs: $TEST_TMP/rabbitmq-log"; }
