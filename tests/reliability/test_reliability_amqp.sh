#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_reliability_amqp.sh (issue 11, point 3): the outage and shutdown cases
# of the reliability suite on RabbitMQ (a private node, tests/lib/rabbitmq.sh;
# results in Redis, tasks recorded per run in PostgreSQL by rel.record):
#  - RabbitMQ's application stopped (connections forced closed, the port
#    refusing) for seconds in the middle of late-ack tasks: children reconnect
#    with backoff, logging each outage once, not once per attempt; every task
#    SUCCESS, run at most once more than the messages held unacked at the stop;
#    nothing left ready or unacked;
#  - PostgreSQL down in the middle of a run: the children take nothing from the
#    queue they cannot run; afterwards every task SUCCESS, each run exactly once;
#  - a cold shutdown (QUIT) with an early-ack task running: WorkerLostError stored;
#  - a cold shutdown (QUIT) with late-ack tasks running and an ETA message held:
#    the server has all three back in the queue, and a new worker runs them.
# (The chaos run restarts the node under kills; test_amqp_worker.sh covers a
# server closing connections and a warm shutdown with held ETA messages.)
. "$(dirname "$0")/amqp_lib.sh"

rel_amqp_start

done_count() { redis_cli -n 1 dbsize 2>/dev/null | grep -E '^[0-9]+$' || echo 0; }
ready() { rel qlen "${1:-celery}" 2>/dev/null | grep -E '^[0-9]+$' || echo "?"; }
# "ready unacked" of a queue, from the node (rabbitmqctl: about a second)
rmq_counts() {
    rabbitmq_ctl list_queues -q name messages_ready messages_unacknowledged 2>/dev/null |
        awk -v q="${1:-celery}" '$1 == q { print $2, $3; f = 1 } END { if (!f) print "? ?" }'
}
# "rows distinct" of rel_runs: runs recorded, tasks that ran
runs() { psql_db -c "SELECT count(*) || ' ' || count(DISTINCT task_id) FROM rel_runs"; }
runs_of() { psql_db -c "SELECT count(*) FROM rel_runs WHERE task_id = '$1'"; }
new_round() { # ids file name: empties the results and the runs
    redis_cli -n 1 flushdb >/dev/null
    psql_db -c "TRUNCATE rel_runs" >/dev/null
    IDS=$TEST_TMP/$1
}
# the pool children's lines about the broker failing or working again
broker_lines() { grep -E 'ForkPoolWorker-[0-9]+\].*(connecting to|fetching from) the broker' "$WORKER_LOG"; }

# ---- RabbitMQ stopped for 4 s in the middle of 2,000 late-ack tasks -------------------
# 1 to 20 ms each (about 5 s of work for 4 children): the stop, which takes
# rabbitmqctl a second or two to send, lands in the middle of the run.
N=2000
new_round ids-rmq
rel bulk rel.record "$N" --mod 20 --out "$IDS" || not_ok "publish $N rel.record"
start_worker "${W[@]}" -c 4 -n rmqout@localhost
wait_children 4 20 || not_ok "worker started 4 children" "$(worker_log_tail)"
kids=$(worker_children)
_tenth() { (($(done_count) >= N / 10)); }
wait_for 60 _tenth || diag "only $(done_count) done after 60 s"
at=$(done_count)
t0=$(date +%s%N)
rabbitmq_ctl stop_app >/dev/null 2>&1 || not_ok "rabbitmqctl stop_app"
stopped=$(done_count)
sleep 4
during=$(done_count)
rabbitmq_ctl start_app >/dev/null 2>&1 || not_ok "rabbitmqctl start_app"
diag "RabbitMQ application stopped at $at of $N results (stopped at $stopped, $during after 4 s down), started again $((($(date +%s%N) - t0) / 1000000)) ms after the stop began"
if ((stopped == during && during < N)); then
    ok "setup: the stop landed mid-run (no result stored while it was down: $stopped -> $during of $N)"
else
    not_ok "setup: the stop landed mid-run, nothing stored while down" "$at, $stopped -> $during of $N"
fi
tally=$(rel tally "$IDS" --timeout 90)
diag "after the restart: $tally"
expect_eq "RabbitMQ stopped mid-run: all $N late-ack tasks SUCCESS" "$N" "$(jget counts.SUCCESS <<<"$tally")" \
    "$tally" "$(worker_log_tail 15)"
expect_eq "... none FAILURE, none missing" "<missing> <missing>" \
    "$(jget counts.FAILURE <<<"$tally") $(jget counts.MISSING <<<"$tally")"
read -r rows distinct <<<"$(runs)"
expect_eq "... every task ran (rel_runs names all $N)" "$N" "$distinct"
# At the stop each child held at most one unacked delivery (prefetch 1): the
# server requeued it, and a child that was running it finished it but could
# not ack it, so it runs again. Nothing else may run twice.
if ((rows - N <= 4)); then
    ok "... duplicate runs ($((rows - N))) <= the deliveries unacked at the stop (4 children x prefetch 1)"
else
    not_ok "... duplicate runs <= 4 children x prefetch 1" "$rows runs of $N tasks" \
        "$(psql_db -c "SELECT task_id, count(*) FROM rel_runs GROUP BY 1 HAVING count(*) > 1 LIMIT 10")"
fi
_drained() { [[ $(rmq_counts) == "0 0" ]]; }
if wait_for 15 _drained; then
    ok "... nothing left ready or unacked in the queue"
else
    not_ok "... nothing left ready or unacked in the queue" "ready unacked: $(rmq_counts)"
fi
expect_eq "... no child died: the same four children" "$kids" "$(worker_children)" "$(worker_log_tail 10)"
# One outage: each child logs the lost connection and the failing connect
# once, and each recovery once, however many attempts it took (the backoff
# is capped at 10 s, so the last child may take that long after the start).
_all_back() { [[ $(broker_lines | grep -c 'connecting to the broker works again') == 4 ]]; }
wait_for 20 _all_back
attempts=$(broker_lines | grep -oE 'connecting to the broker works again after [0-9]+' | grep -oE '[0-9]+$' | paste -sd+ | bc)
lines=$(broker_lines | wc -l)
per_child=$(broker_lines | grep -oE 'ForkPoolWorker-[0-9]+' | sort | uniq -c | sort -rn | head -1 | awk '{print $1}')
diag "broker lines in the log: $lines for ${attempts:-0} failed connect attempts"
if _all_back && ((${per_child:-99} <= 4 && lines < ${attempts:-0} + 8)); then
    ok "each child logged the outage and its end once, not each attempt ($lines lines for ${attempts:-0} failed connects, at most $per_child a child)"
else
    not_ok "each child logged the outage and its end once (at most 4 lines a child)" \
        "$lines lines, ${attempts:-0} failed connects" "$(broker_lines | head -24)"
fi
if broker_lines | grep -q "127\.0\.0\.1:$RABBITMQ_PORT vhost '/'"; then
    ok "... naming the node's host, port and vhost"
else
    not_ok "... naming the node's host, port and vhost" "$(broker_lines | head -6)"
fi
stop_worker TERM 30
expect_eq "worker exits 0 after the outage" 0 "$WORKER_RC" "$(worker_log_tail)"

# ---- PostgreSQL down in the middle of 1,000 tasks --------------------------------------
N=1000
new_round ids-pg
rel bulk rel.record "$N" --mod 20 --out "$IDS" || not_ok "publish $N rel.record"
start_worker "${W[@]}" -c 2 --db-backoff-base 200 --db-backoff-cap 1000 -n pgout@localhost
wait_children 2 20 || not_ok "worker started 2 children" "$(worker_log_tail)"
_quarter() { (($(done_count) >= N / 4)); }
wait_for 60 _quarter || diag "only $(done_count) done after 60 s"
stop_pg fast
diag "PostgreSQL stopped after $(done_count) of $N results"
sleep 1
q1=$(ready) d1=$(done_count)
sleep 2
q2=$(ready) d2=$(done_count)
held=$(rmq_counts)
if [[ $q1 == "$q2" && $d1 == "$d2" ]] && ((q2 > 0)); then
    ok "while PostgreSQL is down the children take nothing from the queue (ready $q1 -> $q2, results $d1 -> $d2 over 2 s)"
else
    not_ok "while PostgreSQL is down the children take nothing from the queue" \
        "ready $q1 -> $q2, results $d1 -> $d2 over 2 s" "$(worker_log_tail 10)"
fi
unacked=${held#* }
if [[ $unacked =~ ^[0-9]+$ ]] && ((unacked <= 2)); then
    ok "... and hold at most their prefetch unacked ($unacked; 2 children x 1)"
else
    not_ok "... and hold at most their prefetch unacked (2)" "ready unacked: $held"
fi
start_pg_again
tally=$(rel tally "$IDS" --timeout 90)
diag "after PostgreSQL came back: $tally"
expect_eq "PostgreSQL down mid-run: all $N SUCCESS" "$N" "$(jget counts.SUCCESS <<<"$tally")" \
    "$tally" "$(worker_log_tail 15)"
expect_eq "... none FAILURE, none missing" "<missing> <missing>" \
    "$(jget counts.FAILURE <<<"$tally") $(jget counts.MISSING <<<"$tally")"
expect_eq "... each ran exactly once (runs, tasks)" "$N $N" "$(runs)" \
    "$(psql_db -c "SELECT task_id, count(*) FROM rel_runs GROUP BY 1 HAVING count(*) > 1 LIMIT 10")"
if wait_for 15 _drained; then
    ok "... nothing left ready or unacked in the queue"
else
    not_ok "... nothing left ready or unacked in the queue" "ready unacked: $(rmq_counts)"
fi
if ! log_has "killed by signal|exited with code|cannot serve"; then
    ok "... no child died or gave up"
else
    not_ok "... no child died or gave up" "$(grep -E 'killed by signal|exited with code|cannot serve' "$WORKER_LOG")"
fi
stop_worker TERM 30
expect_eq "worker exits 0 after the database outage" 0 "$WORKER_RC" "$(worker_log_tail)"

# ---- cold shutdown (QUIT): running late-ack tasks and a held ETA message go back -------
new_round ids-cold
start_worker "${W[@]}" -c 2 -n cold@localhost
wait_children 2 20 || not_ok "worker started 2 children" "$(worker_log_tail)"
eta=$(send rel.record '[0]' --countdown 15)
a=$(send rel.record '[8000]')
b=$(send rel.record '[8000]')
_running() { [[ $(runs_of "$a") == 1 && $(runs_of "$b") == 1 && $(ready) == 0 ]]; }
if wait_for 15 _running; then
    ok "setup: both 8 s tasks are running and the ETA message is held (queue empty)"
else
    not_ok "setup: both 8 s tasks are running and the ETA message is held" \
        "runs $(runs_of "$a") $(runs_of "$b"), ready $(ready)" "$(worker_log_tail 10)"
fi
t0=$SECONDS
stop_worker QUIT 15
if [[ $WORKER_RC != timeout ]] && ((SECONDS - t0 <= 5)); then
    ok "cold shutdown (QUIT): the master exits promptly ($((SECONDS - t0)) s, status $WORKER_RC)"
else
    not_ok "cold shutdown (QUIT): the master exits promptly" "status $WORKER_RC after $((SECONDS - t0)) s" \
        "$(worker_log_tail 10)"
fi
expect_eq "cold shutdown: the 2 running tasks and the held ETA message are back in the queue, none unacked" \
    "3 0" "$(rmq_counts)" "$(worker_log_tail 10)"
expect_eq "cold shutdown: no result was stored for the killed tasks" "none none" \
    "$(meta_of "$a" 0 | summary) $(meta_of "$b" 0 | summary)"
start_worker "${W[@]}" -c 2 -n after-cold@localhost
got="$(meta_of "$a" 20 | jget status) $(meta_of "$b" 20 | jget status) $(meta_of "$eta" 25 | jget status)"
expect_eq "a new worker runs the restored tasks and the ETA task to SUCCESS" "SUCCESS SUCCESS SUCCESS" "$got" \
    "$(worker_log_tail 10)"
expect_eq "... the killed tasks ran twice (cut short, then to the end), the ETA task once" "2 2 1" \
    "$(runs_of "$a") $(runs_of "$b") $(runs_of "$eta")"
if wait_for 10 _drained; then
    ok "... nothing left ready or unacked"
else
    not_ok "... nothing left ready or unacked" "ready unacked: $(rmq_counts)"
fi
stop_worker TERM 20
expect_eq "worker exits 0" 0 "$WORKER_RC" "$(worker_log_tail)"

# ---- cold shutdown with an early-ack task running: WorkerLostError, as on Redis ----------
# Its message was acked when it started, so nothing comes back: the salvage
# process stores the failure a replacement child would have stored.
start_worker "${W[@]}" -c 1 -n coldearly@localhost
wait_children 1 20 || not_ok "worker for the early-ack cold shutdown started" "$(worker_log_tail)"
early=$(send rel.pid '[4]')
_started() { [[ $(rmq_counts) == "0 0" ]]; }
wait_for 15 _started || not_ok "setup: the early-ack task was taken and acked" "$(rmq_counts)"
sleep 0.5
stop_worker QUIT 15
expect_eq "cold shutdown: the early-ack task killed running is FAILURE WorkerLostError" \
    "FAILURE WorkerLostError(billiard.exceptions)" "$(meta_of "$early" 10 | summary)" \
    "$(worker_log_tail 8)"

check_worker_logs_clean
tap_done
