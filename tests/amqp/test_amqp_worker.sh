#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_amqp_worker.sh (issue 11): celeriac workers consuming Celery tasks from
# a private RabbitMQ (tests/lib/rabbitmq.sh, one node for the file), results
# in a throwaway Redis, sent by Debian's Python Celery
# (amqp_worker_py.py) to the tasks of amqp_tasks.c: results, a failure, a
# retry, a chain step published by celeriac, ETA held while others run, a
# late-ack child SIGKILLed mid-task, a body over --max-message-size,
# priorities, a quorum queue, -Q with two queues, -c 2, a bad password, a
# deleted queue, a connection the server closes while an ETA message is
# held, warm shutdown with held ETA.
. "$(dirname "$0")/lib.sh"
start_redis
rabbitmq_test_start
diag "rabbitmq started in ${RABBITMQ_START_MS} ms on port $RABBITMQ_PORT"
AMQP=$RABBITMQ_URL
export AMQPT_RUNS=$TEST_TMP/runs
: >"$AMQPT_RUNS"

py() { "$PY" "$HERE/amqp_worker_py.py" "$@"; }
psend() { py send "$AMQP" "$REDIS_URL" "$@"; }
pwait() { py wait "$AMQP" "$REDIS_URL" "$@"; }
qcount() { py count "$AMQP" "$1" 2>/dev/null; }
runs_of() { grep -c "^$1 " "$AMQPT_RUNS"; }
worker() { start_worker -A "$LIB" -b "$AMQP" --result-backend "$REDIS_URL" "$@"; }

# ---- the scheme picks the transport ---------------------------------------------
out=$("$CELERIAC_BIN" worker -A "$LIB" -b "foo://127.0.0.1/" 2>&1)
rc=$?
if [[ $rc == 2 && $(wc -l <<<"$out") == 1 && $out == *"unsupported scheme 'foo'"*amqp://* ]]; then
    ok "unknown broker scheme: one line, exit status 2"
else
    not_ok "unknown broker scheme: one line, exit status 2" "rc $rc" "$out"
fi

# ---- priorities, a quorum queue, -Q with two queues (one child) --------------------------
py declare "$AMQP" || not_ok "python declares pq (x-max-priority) and qq (quorum)"
for p in 1 5 9; do psend amqpt.mark "[\"prio$p\", 0.2]" --queue pq --priority "$p" >/dev/null; done
qid=$(psend amqpt.add '[2, 3]' --queue qq)
worker -c 1 -Q pq,qq -n amqpt-q@localhost
got=$(pwait "$qid" 20)
expect_eq "a task on a quorum queue declared by python (adopted, no PRECONDITION_FAILED)" \
    "SUCCESS 5" "$got"
wait_for 10 bash -c "[[ \$(grep -c '^prio' '$AMQPT_RUNS') == 3 ]]"
order=$(grep '^prio' "$AMQPT_RUNS" | cut -d' ' -f1 | tr '\n' ' ')
expect_eq "x-max-priority queue served higher priority first" "prio9 prio5 prio1 " "$order"
if ! log_has "PRECONDITION_FAILED"; then
    ok "no PRECONDITION_FAILED in the log"
else
    not_ok "no PRECONDITION_FAILED in the log" "$(worker_log_tail 8)"
fi
if [[ -n $(control_pid) ]]; then ok "a control process on amqp://"; else not_ok "a control process on amqp://"; fi
stop_worker TERM 20
expect_eq "warm shutdown exit status" 0 "$WORKER_RC"

# ---- results, failure, retry, chain, ETA (two children) ----------------------------
worker -c 2 -n amqpt@localhost
wait_children 2 20 || not_ok "worker -c 2 started" "$(worker_log_tail)"
out=$(py basic "$AMQP" "$REDIS_URL" 2>&1)
expect_eq "-c 2: six adds, FAILURE with traceback, a retry, a chain step published by celeriac" \
    ok "$out"

# ---- a deleted queue: the cancelled consumer is declared and consumed again ----------------
py delete "$AMQP" celery
if wait_for 10 log_has "cancelled by the server"; then
    ok "the server's cancel notice is logged"
else
    not_ok "the server's cancel notice is logged" "$(worker_log_tail 6)"
fi
sleep 0.5
got=$(pwait "$(psend amqpt.add '[4, 4]')" 20)
expect_eq "after the queue was deleted and declared again, tasks still run" "SUCCESS 8" "$got"
stop_worker TERM 20

# ---- --max-message-size: a body over the limit is not decoded, its client told -----
worker -c 1 -Q big --max-message-size 2000 -n amqpt-big@localhost
wait_children 1 20
big=$(printf 'x%.0s' $(seq 1 5000))
got=$(pwait "$(psend amqpt.add "[\"$big\", 1]" --queue big)" 20)
if [[ $got == 'FAILURE "InvalidTaskError('*"exceeds the worker's limit of 2000 bytes"* ]]; then
    ok "a 5 kB body over --max-message-size 2000: FAILURE InvalidTaskError under its id"
else
    not_ok "a 5 kB body over --max-message-size 2000: FAILURE InvalidTaskError under its id" \
        "$got" "$(worker_log_tail 6)"
fi
expect_eq "... the message is removed from the queue" 0 "$(qcount big)"
got=$(pwait "$(psend amqpt.add '[2, 2]' --queue big)" 20)
expect_eq "... and the next task of normal size runs" "SUCCESS 4" "$got"
stop_worker TERM 20

# ---- --prefetch-multiplier: what one child holds unacked -------------------------------
worker -c 1 -Q pf --prefetch-multiplier 3 -n amqpt-pf@localhost
wait_children 1 20
# Early ack: the running message is acked, so the child reserves 3 more, as
# Celery's prefetch counts unacked messages only.
mapfile -t ids < <(psend amqpt.mark '["pf", 1.5]' --queue pf --count 5)
expect_eq "--prefetch-multiplier 3: a busy child runs 1 and reserves 3 of 5 messages" 1 "$(qcount pf)"
got=$(pwait "${ids[4]}" 20)
expect_eq "... and all five run" 'SUCCESS "pf"' "$got"
stop_worker TERM 20

# ---- queues celeriac declares: --queue-type, --queue-max-priority ----------------------------
worker -c 1 -Q qnew --queue-type quorum -n amqpt-qt@localhost
wait_children 1 20
# (a Python client would declare qnew classic: celeriac call publishes only)
got=$("$CELERIAC_BIN" call amqpt.add 1 2 --queue qnew -b "$AMQP" --result-backend "$REDIS_URL" \
    --wait --timeout 20 2>&1)
expect_eq "--queue-type quorum: the queue it declares is a quorum queue, and serves" \
    "qnew quorum 3" "$(rabbitmq_ctl list_queues -q name type | awk '$1 == "qnew" { print $1, $2 }') $got"
stop_worker TERM 20
worker -c 1 -Q pnew --queue-max-priority 5 -n amqpt-mp@localhost
wait_children 1 20
expect_eq "--queue-max-priority 5: the queue it declares has x-max-priority 5" 1 \
    "$(rabbitmq_ctl list_queues -q name arguments | grep -c '^pnew.*x-max-priority.*5')"
stop_worker TERM 20
out=$("$CELERIAC_BIN" worker -A "$LIB" -b "$AMQP" --queue-type quorum --queue-max-priority 5 2>&1)
expect_eq "--queue-max-priority with --queue-type quorum: a usage error" "2 1" "$? $(wc -l <<<"$out")" "$out"

# ---- rpc:// results: each state a reply to the client's queue ----------------------------
start_worker -A "$LIB" -b "$AMQP" --result-backend rpc:// -c 2 -n amqpt-rpc@localhost
wait_children 2 20 || not_ok "worker --result-backend rpc:// started" "$(worker_log_tail)"
out=$(py basic "$AMQP" rpc:// 2>&1)
expect_eq "rpc://: six adds, FAILURE with traceback, a retry, a chain, read by AsyncResult.get()" \
    ok "$out"
stop_worker TERM 20
expect_eq "rpc://: warm shutdown exit status" 0 "$WORKER_RC"
out=$("$CELERIAC_BIN" worker -A "$LIB" -b "$REDIS_URL" --result-backend rpc:// 2>&1)
rc=$?
if [[ $rc == 2 && $(wc -l <<<"$out") == 1 && $out == *"rpc:// needs an amqp:// or sqla+ broker"* ]]; then
    ok "rpc:// with a Redis broker: one line, exit status 2"
else
    not_ok "rpc:// with a Redis broker: one line, exit status 2" "rc $rc" "$out"
fi

# ---- one child: ETA held while others run; late ack, SIGKILL mid-task ------------------
worker -c 1 -n amqpt-late@localhost
wait_children 1 20
out=$(py eta "$AMQP" "$REDIS_URL" 2>&1)
if [[ $out == ok* ]]; then
    ok "-c 1: two countdown messages held unacked do not block the child: $out"
else
    not_ok "-c 1: countdown messages held unacked do not block the child" "$out" "$(worker_log_tail 8)"
fi
lid=$(psend amqpt.mark_late '["late1", 2]')
if wait_for 15 bash -c "grep -q '^late1 ' '$AMQPT_RUNS'"; then
    victim=$(grep '^late1 ' "$AMQPT_RUNS" | head -1 | cut -d' ' -f2)
    kill -KILL "$victim"
    got=$(pwait "$lid" 30)
    expect_eq "late-ack task of a SIGKILLed child comes back and succeeds" 'SUCCESS "late1"' "$got"
    expect_eq "it ran twice: once killed, once to the end" 2 "$(runs_of late1)"
    last=$(grep '^late1 ' "$AMQPT_RUNS" | tail -1 | cut -d' ' -f2)
    [[ $last != "$victim" ]] && ok "the second run was in the replacement child" ||
        not_ok "the second run was in the replacement child" "both in $victim"
    if log_has "the broker requeued its message .acks_late, reject_on_worker_lost; death 1 of at most 4"; then
        ok "the replacement's log says the broker requeued it"
    else
        not_ok "the replacement's log says the broker requeued it" "$(worker_log_tail 8)"
    fi
else
    not_ok "late-ack task started" "$(worker_log_tail 8)"
fi

# ---- the server closes the connection while an ETA message is held: it runs once ----
# (the server requeued it; the held copy must not run too, as Celery clears
# its ETA timer on a connection loss)
psend amqpt.mark '["conn1"]' --countdown 2.5 >/dev/null
wait_for 10 bash -c "[[ \$('$PY' '$HERE/amqp_worker_py.py' count '$AMQP' celery) == 0 ]]"
sleep 0.3
rabbitmq_ctl close_all_connections "celeriac test" >/dev/null 2>&1 ||
    not_ok "rabbitmqctl close_all_connections"
if wait_for 15 bash -c "grep -q '^conn1 ' '$AMQPT_RUNS'"; then
    sleep 1.5
    expect_eq "an ETA message held when the connection was closed runs once" 1 \
        "$(runs_of conn1)" "$(worker_log_tail 8)"
else
    not_ok "an ETA message held when the connection was closed runs" "$(worker_log_tail 8)"
fi

# ---- warm shutdown with held ETA messages: back in the queue --------------------------
psend amqpt.mark '["held1"]' --countdown 120 >/dev/null
psend amqpt.mark '["held2"]' --countdown 120 >/dev/null
wait_for 10 bash -c "[[ \$('$PY' '$HERE/amqp_worker_py.py' count '$AMQP' celery) == 0 ]]"
sleep 0.5
expect_eq "held ETA messages are out of the queue while held" 0 "$(qcount celery)"
stop_worker TERM 20
expect_eq "warm shutdown exit status" 0 "$WORKER_RC"
expect_eq "held ETA messages are back in the queue after a warm shutdown" 2 "$(qcount celery)"
if log_has "not due before shutdown; restored to its queue"; then
    ok "the log says each held message was restored"
else
    not_ok "the log says each held message was restored" "$(worker_log_tail 8)"
fi
py delete "$AMQP" celery

# ---- a dead child's late-ack task, settled once by whichever child gets it back -------------
# The server requeues the delivery when the child's connection closes; the
# master notes the death and the child it comes back to (here usually the idle
# sibling, racing the master's reaping) settles it as Celery's worker would.
kill_first_run() { # label: SIGKILLs the child of the label's latest run
    wait_for 15 bash -c "grep -q '^$1 ' '$AMQPT_RUNS'" || return 1
    kill -KILL "$(grep "^$1 " "$AMQPT_RUNS" | tail -1 | cut -d' ' -f2)"
}
lost_wait() { # id label: the result, a second for a wrong re-run to show, the runs
    local got
    got=$(pwait "$1" 20)
    sleep 1
    echo "${got%% traceback=*} runs=$(runs_of "$2")"
}
worker -c 2 --no-reject-on-worker-lost --time-limit 2.5 -n amqpt-lost@localhost
wait_children 2 20
lid=$(psend amqpt.mark_late '["nrl", 2]')
kill_first_run nrl
got=$(lost_wait "$lid" nrl)
expect_eq "--no-reject-on-worker-lost: a late-ack task whose child was SIGKILLed fails with WorkerLostError, run once" \
    'FAILURE "WorkerLostError(Worker exited prematurely: signal 9 (Killed).)" runs=1' "$got" "$(worker_log_tail 8)"
tid=$(psend amqpt.mark_late '["tl", 5]')
got=$(lost_wait "$tid" tl)
expect_eq "--time-limit 2.5: a late-ack task killed by its hard limit is TimeLimitExceeded, run once" \
    'FAILURE "TimeLimitExceeded(TimeLimitExceeded(2.5,))" runs=1' "$got" "$(worker_log_tail 8)"
expect_eq "the copies the broker requeued were acked without running" 2 \
    "$(grep -c 'acked without running it again' "$WORKER_LOG")"
stop_worker TERM 20
worker -c 2 --max-worker-lost-requeues 1 -n amqpt-poison@localhost
wait_children 2 20
pid_=$(psend amqpt.mark_late '["poison", 3]')
kill_first_run poison
wait_for 15 bash -c "[[ \$(grep -c '^poison ' '$AMQPT_RUNS') == 2 ]]" && kill_first_run poison
got=$(lost_wait "$pid_" poison)
expect_eq "--max-worker-lost-requeues 1: a task whose child dies each run fails with WorkerLostError after 2 runs" \
    'FAILURE "WorkerLostError(Worker exited prematurely: the task'"'"'s process died in each of its 2 runs.)" runs=2' \
    "$got" "$(worker_log_tail 8)"
stop_worker TERM 20

# ---- a bad password: one clear line, retried without spinning -------------------------
bad_url="amqp://guest:wrong@127.0.0.1:$RABBITMQ_PORT//"
start_worker -A "$LIB" -b "$bad_url" --result-backend "$REDIS_URL" -c 1 -n amqpt-bad@localhost
wait_children 1 20
sleep 1.5
procs=("$WORKER_PID" $(worker_all_children))
t0=$(cpu_ticks "${procs[@]}")
b0=$(log_bytes)
sleep 4
ticks=$(($(cpu_ticks "${procs[@]}") - t0))
grown=$(($(log_bytes) - b0))
if ((ticks <= 20 && grown <= 400)); then
    ok "bad password: $((ticks * 10)) ms CPU and $grown log bytes in 4 s"
else
    not_ok "bad password: at most 5 % CPU and 400 log bytes in 4 s" "$((ticks * 10)) ms CPU, $grown bytes" \
        "$(worker_log_tail 6)"
fi
if log_has "127\.0\.0\.1:$RABBITMQ_PORT vhost '/'.*ACCESS_REFUSED" && ! grep -q wrong "$WORKER_LOG"; then
    ok "bad password: the log names host, port, vhost and the server's reason, never the password"
else
    not_ok "bad password: the log names host, vhost and the server's reason" "$(worker_log_tail 6)"
fi
worker_alive && ok "bad password: the worker keeps retrying" || not_ok "bad password: the worker keeps retrying"
stop_worker TERM 20

check_worker_logs_clean
tap_done
