#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_lost_worker.sh (issue 3, points 1 and 2): late ack keeps a running
# task's message in `unacked`; a child killed mid-task is replaced and its
# task settled as Celery settles a lost worker: requeued (late ack +
# reject_on_worker_lost) and then run once more, or FAILURE WorkerLostError
# (early ack, or --no-reject-on-worker-lost); task code that segfaults or
# aborts is a lost worker too; and a task that crashes every child does not
# make the master fork-bomb.
. "$(dirname "$0")/lib.sh"

start_redis
build_rel_lib || tap_done
W=(-A "$REL_LIB" -c 1 -b "$REDIS_URL" --result-backend "$REDIS_URL" -l debug)

# entry_holds ID: the unacked hash holds the message of task ID.
entry_holds() { redis_cli hvals unacked | grep -q "\"id\": *\"$1\""; }

# ---- late ack: in unacked while running; SIGKILL requeues, it runs again once -------
start_worker "${W[@]}" --acks-late -n late@localhost
wait_children 1 20 || not_ok "late-ack worker started its child" "$(worker_log_tail)"
id=$(send rel.pid '[3]')
if wait_running 1 && entry_holds "$id"; then
    ok "--acks-late: while the task runs, its message is in unacked (queue 0, unacked $(unacked_count))"
else
    not_ok "--acks-late: while the task runs, its message is in unacked" \
        "queue $(queue_len), unacked $(unacked_count)" "$(worker_log_tail 10)"
fi
kid=$(only_child)
kill -KILL "$kid"
if wait_replaced "$kid" 1 20; then
    ok "the SIGKILLed child is replaced at once ($kid -> $(only_child))"
else
    not_ok "the SIGKILLed child is replaced" "children: $(worker_children)" "$(worker_log_tail 10)"
fi
m=$(meta_of "$id" 20)
expect_eq "the killed late-ack task is requeued and then succeeds" "SUCCESS" \
    "$(jget status <<<"$m")" "$m" "$(worker_log_tail 15)"
expect_ran_in_replacement "it ran again in the replacement child" "$kid" "$m"
if log_has "rel\.pid\[$id\]: its process died \(signal 9\); requeued"; then
    ok "the log says the task was requeued because its process died (signal 9)"
else
    not_ok "the log says the task was requeued because its process died" "$(worker_log_tail 15)"
fi
expect_eq "exactly one successful run of the requeued task (log)" 1 \
    "$(log_count "rel\.pid\[$id\] succeeded")" "$(grep -F "$id" "$WORKER_LOG")"
expect_eq "after the requeued run: queue empty, unacked empty" "0 0 0" \
    "$(queue_len) $(unacked_count)"
stop_worker TERM 20
expect_eq "late-ack worker exits 0 on SIGTERM" 0 "$WORKER_RC" "$(worker_log_tail)"

# ---- the replacement dies too, before it settled its predecessor's task -----------------
# REL_INIT_SLEEP makes each child spend 2 s in the library's process_init,
# before it settles what its predecessor left: killing it there must not
# drop the lost task; the next replacement settles it.
export REL_INIT_SLEEP=2
start_worker "${W[@]}" --acks-late -n handoff@localhost
unset REL_INIT_SLEEP
_ready() { log_has "handoff@localhost ready"; }
wait_for 20 _ready || diag "worker not ready: $(worker_log_tail 5)"
id=$(send rel.pid '[2]')
wait_running 1 || diag "the task did not start: queue $(queue_len), unacked $(unacked_count)"
kid=$(only_child)
kill -KILL "$kid"
wait_replaced "$kid" 1 10 || diag "no replacement for $kid"
second=$(only_child)
sleep 0.5
kill -KILL "$second"
diag "killed the busy child $kid, then its replacement $second while it was starting"
m=$(meta_of "$id" 25)
expect_eq "a replacement killed before settling: the next one still requeues the task, which succeeds" \
    SUCCESS "$(jget status <<<"$m")" "unacked $(unacked_count), queue $(queue_len)" \
    "$(grep -E 'killed by|keeps dying|requeued' "$WORKER_LOG" | head -6)"
stop_worker TERM 20
redis_cli del celery unacked unacked_index >/dev/null # what a failed case left

# ---- early ack (default): SIGKILL -> WorkerLostError, not run again --------------------
start_worker "${W[@]}" -n early@localhost
wait_children 1 20
id=$(send rel.pid '[3]')
if wait_running 0; then
    ok "early ack: the message is acked when the task starts (queue 0, unacked $(unacked_count))"
else
    not_ok "early ack: the message is acked when the task starts" \
        "queue $(queue_len), unacked $(unacked_count)" "$(worker_log_tail 10)"
fi
kid=$(only_child)
kill -KILL "$kid"
m=$(meta_of "$id" 20)
expect_eq "early ack + SIGKILL: FAILURE WorkerLostError (billiard.exceptions) is stored" \
    "FAILURE WorkerLostError(billiard.exceptions)" "$(summary <<<"$m")" "$m" "$(worker_log_tail 10)"
msg=$(jget result.exc_message <<<"$m")
if [[ $msg == *"signal 9"* ]]; then
    ok "the WorkerLostError names the signal ($msg)"
else
    not_ok "the WorkerLostError names the signal 9" "exc_message: $msg"
fi
sleep 1
expect_eq "early ack + SIGKILL: not run again, nothing queued or unacked" "0 0 0 0" \
    "$(log_count "rel\.pid\[$id\] succeeded") $(queue_len) $(unacked_count)" "$(worker_log_tail 10)"
m=$(meta_of "$id" 1)
expect_eq "... and the stored state stays FAILURE" FAILURE "$(jget status <<<"$m")"
id2=$(send rel.pid '[0]')
m=$(meta_of "$id2" 20)
expect_eq "the replacement child runs the next task" SUCCESS "$(jget status <<<"$m")" "$(worker_log_tail 10)"
stop_worker TERM 20

# ---- late ack with --no-reject-on-worker-lost: WorkerLostError, acked ------------------
start_worker "${W[@]}" --acks-late --no-reject-on-worker-lost -n norej@localhost
wait_children 1 20
id=$(send rel.pid '[3]')
wait_running 1 || diag "the task did not start: queue $(queue_len) unacked $(unacked_count)"
kid=$(only_child)
kill -KILL "$kid"
m=$(meta_of "$id" 20)
expect_eq "--acks-late --no-reject-on-worker-lost + SIGKILL: FAILURE WorkerLostError" \
    "FAILURE WorkerLostError(billiard.exceptions)" "$(summary <<<"$m")" "$m" "$(worker_log_tail 10)"
sleep 1
expect_eq "--no-reject-on-worker-lost: not requeued, not run again, unacked empty" "0 0 0 0" \
    "$(log_count "rel\.pid\[$id\] succeeded") $(queue_len) $(unacked_count)" "$(worker_log_tail 10)"
stop_worker TERM 20

# ---- a task's own CELERIAC_ACKS_LATE on a default worker ---------------------------------
start_worker "${W[@]}" -n flag@localhost
wait_children 1 20
id=$(send rel.sleep_late '[3]')
if wait_running 1 && entry_holds "$id"; then
    ok "a task flagged CELERIAC_ACKS_LATE stays in unacked while it runs (worker default early)"
else
    not_ok "a task flagged CELERIAC_ACKS_LATE stays in unacked while it runs" \
        "queue $(queue_len), unacked $(unacked_count)" "$(worker_log_tail 10)"
fi
kid=$(only_child)
kill -KILL "$kid"
m=$(meta_of "$id" 20)
expect_eq "CELERIAC_ACKS_LATE task + SIGKILL: requeued, then SUCCESS" SUCCESS \
    "$(jget status <<<"$m")" "$m" "$(worker_log_tail 10)"
expect_eq "... run to success exactly once; nothing left behind" "1 0 0 0" \
    "$(log_count "rel\.sleep_late\[$id\] succeeded") $(queue_len) $(unacked_count)"

# ---- task code that crashes: segfault, abort -----------------------------------------------
for t in segv:11 abort:6; do
    name=rel.${t%%:*} sig=${t##*:}
    kid=$(only_child)
    id=$(send "$name")
    m=$(meta_of "$id" 20)
    got="$(summary <<<"$m") $(jget result.exc_message <<<"$m")"
    if [[ $got == "FAILURE WorkerLostError(billiard.exceptions) "*"signal $sig"* ]]; then
        ok "$name (early ack): FAILURE WorkerLostError, signal $sig"
    else
        not_ok "$name (early ack): FAILURE WorkerLostError, signal $sig" "got: $got" "$(worker_log_tail 10)"
    fi
    if wait_replaced "$kid" 1 20; then
        ok "$name: the crashed child is replaced"
    else
        not_ok "$name: the crashed child is replaced" "children: $(worker_children)"
    fi
done
if log_has "killed by signal 11"; then
    ok "the master logs the child's death by signal 11"
else
    not_ok "the master logs the child's death by signal 11" "$(worker_log_tail 15)"
fi
id=$(send rel.pid '[0]')
expect_eq "tasks run normally after the crashes" SUCCESS "$(meta_of "$id" 20 | jget status)"
stop_worker TERM 20
expect_eq "worker exits 0 after crashes in task code" 0 "$WORKER_RC"

# ---- the requeue while other consumers keep changing the unacked hash --------------------
# Busy fleets pop and ack all the time, so `unacked` changes between a
# restore's WATCH and its EXEC; the requeue must still happen (kombu retries
# its transaction until it goes through), not be left for the sweep.
start_worker "${W[@]}" --acks-late -n contention@localhost
wait_children 1 20
id=$(send rel.pid '[2]')
wait_running 1 || diag "the task did not start: queue $(queue_len), unacked $(unacked_count)"
redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -n 5000000 -c 8 -r 100000 \
    HSET unacked churn:__rand_int__ x >/dev/null 2>&1 &
BENCH=$!
_svc_record_pid "$BENCH" redis-benchmark
sleep 0.5
kid=$(only_child)
kill -KILL "$kid"
m=$(meta_of "$id" 15)
kill "$BENCH" 2>/dev/null
wait "$BENCH" 2>/dev/null
expect_eq "late-ack task of a killed child is requeued while unacked is busy, then succeeds" SUCCESS \
    "$(jget status <<<"$m")" "$(grep -E 'requeue|conflict' "$WORKER_LOG" | head -4)"
if ! log_has "requeue of .* failed"; then
    ok "no requeue failed under contention"
else
    not_ok "no requeue failed under contention" "$(grep -E 'requeue of .* failed' "$WORKER_LOG" | head -3)"
fi
stop_worker TERM 20

# ---- a task that crashes every child: no fork bomb --------------------------------------------
# rel.segv_late acks late, so each replacement requeues it, takes it again and
# dies: a crash loop. The master must back off instead of forking flat out.
# (--max-worker-lost-requeues ends such a loop after a few deaths, see
# test_poison.sh; here it is set high to watch the backoff.)
redis_cli del celery unacked unacked_index >/dev/null
start_worker "${W[@]}" -n loop@localhost --max-worker-lost-requeues 1000
wait_children 1 20
send rel.segv_late >/dev/null
sleep 10
deaths=$(log_count "child 0 \(pid [0-9]+\) killed by signal 11")
if ((deaths >= 2 && deaths <= 12)); then
    ok "crash loop: $deaths children died in 10 s (respawn backs off; no fork bomb)"
else
    not_ok "crash loop: between 2 and 12 children die in 10 s" "deaths: $deaths" "$(worker_log_tail 15)"
fi
if log_has "keeps dying after [0-9.]+ s; replacing it in [0-9]+ ms"; then
    ok "crash loop: the log says why ($(grep -oE 'keeps dying after [0-9.]+ s; replacing it in [0-9]+ ms' "$WORKER_LOG" | tail -1))"
else
    not_ok "crash loop: the log says the child keeps dying" "$(worker_log_tail 15)"
fi
delays=$(grep -oE 'replacing it in [0-9]+ ms' "$WORKER_LOG" | grep -oE '[0-9]+' | tr '\n' ' ')
first=${delays%% *} last=$(wc -w <<<"$delays")
last=$(cut -d' ' -f"$last" <<<"$delays")
if [[ -n $first && -n $last ]] && ((last > first)); then
    ok "crash loop: the respawn delay grows ($delays ms)"
else
    not_ok "crash loop: the respawn delay grows" "delays: $delays"
fi
if worker_alive; then ok "crash loop: the master is alive"; else not_ok "crash loop: the master is alive" "$(worker_log_tail)"; fi
stop_worker TERM 20
expect_eq "crash loop: the master still stops on SIGTERM with exit 0" 0 "$WORKER_RC" "$(worker_log_tail)"
held=$(($(queue_len) + $(redis_cli hlen unacked)))
expect_eq "crash loop: the crashing message is kept (queue or unacked), not lost" 1 "$held"

# ---- a child that finished a task is no crash loop -----------------------------------------------
# Killed young again and again (the OOM killer, an operator), each child
# having served: each is replaced at once, as Celery's pool does, not ever
# more slowly.
redis_cli del celery unacked unacked_index >/dev/null
start_worker "${W[@]}" -n served@localhost
wait_children 1 20
_replaced() { local k; k=$(worker_children); [[ -n $k && $k != "$kid" ]]; } # kid: the one killed
times=
for round in 1 2 3 4; do
    m=$(meta_of "$(send rel.pid '[0]')" 10)
    kid=$(worker_children)
    [[ $(jget result.pid <<<"$m") == "$kid" ]] || diag "round $round: the task ran in $(jget result.pid <<<"$m"), not $kid"
    t0=$(date +%s%N)
    kill -KILL "$kid"
    wait_for 10 _replaced || times+="never "
    times+="$((($(date +%s%N) - t0) / 1000000)) "
done
# the master logs every delayed replacement ("keeps dying ...; replacing it in N ms")
if [[ $times != *never* ]] && ! log_has "keeps dying"; then
    ok "4 children killed young after serving: each replaced at once (${times}ms; no respawn back-off)"
else
    not_ok "4 children killed young after serving: each replaced at once" "replaced after: $times ms" \
        "$(grep 'keeps dying' "$WORKER_LOG" | head -3)"
fi
stop_worker TERM 20

check_worker_logs_clean
tap_done
