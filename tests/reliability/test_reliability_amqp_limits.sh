#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_reliability_amqp_limits.sh (issue 11, point 3): the limit and bad-input
# cases of the reliability suite on RabbitMQ (a private node,
# tests/lib/rabbitmq.sh; results in Redis, runs recorded in PostgreSQL by
# rel.record):
#  - capacity: 8 children consuming 20 queues run 2,000 tasks spread over
#    them, each once; idle afterwards, the worker uses next to no CPU;
#  - soft and hard time limits from the message's timelimit header, stored as
#    on Redis, the message settled once (a late-ack task cut by its hard limit
#    and requeued by the server with its child's connection is not run again);
#  - poison messages (a body that is not JSON, a message without Celery's
#    headers, pickle, an unknown task): each settled (not redelivered for
#    ever) with one log line, and the worker goes on serving;
#  - topology declared by someone else: the `celery` queue with
#    x-max-priority 5, not durable, or bound to a `celery` exchange of
#    another type is consumed as it is; without the queue, that exchange
#    (406 PRECONDITION_FAILED on celeriac's declare) is reported in one line
#    naming exchange, host, vhost and the server's reason and retried with
#    backoff (no spin) until it is gone.
. "$(dirname "$0")/amqp_lib.sh"

rel_amqp_start

# "ready unacked" summed over the queues whose name matches REGEX (rabbitmqctl)
rmq_counts() {
    rabbitmq_ctl list_queues -q name messages_ready messages_unacknowledged 2>/dev/null |
        awk -v re="^(${1:-celery})\$" '$1 ~ re { r += $2; u += $3; n++ } END { if (n) print r + 0, u + 0; else print "? ?" }'
}
runs() { psql_db -c "SELECT count(*) || ' ' || count(DISTINCT task_id) FROM rel_runs"; }
runs_of() { psql_db -c "SELECT count(*) FROM rel_runs WHERE task_id = '$1'"; }
_ready() { log_has "$1 ready\."; }
_drained() { [[ $(rmq_counts "${1:-celery}") == "0 0" ]]; }
# call_record: rel.record(0) sent by `celeriac call`, which publishes to the
# queue as it is (a Python client would declare it, and meet the 406 itself);
# prints "SUCCESS" once its result is stored.
call_record() {
    "$CELERIAC_BIN" call rel.record 0 -b "$BROKER_URL" --result-backend "$RESULT_URL" \
        --wait --timeout 20 2>&1 | grep -q '"pid"' && echo SUCCESS
}

# amqp_py SCRIPT ARGS...: py-amqp against the node (confirmed publishes).
amqp_py() {
    "$PY" - "$RABBITMQ_PORT" "$@" <<<"import amqp, json, sys
c = amqp.Connection(host='127.0.0.1:' + sys.argv[1])
c.connect()
ch = c.channel()
ch.confirm_select()
$AMQP_PY
c.close()"
}

# ---- topology declared by someone else --------------------------------------------------
# (runs first: the queues and exchanges below must not exist yet)
for how in "x-max-priority 5" "not durable"; do
    AMQP_PY="
args = {'x-max-priority': 5} if sys.argv[2] == 'x-max-priority 5' else {}
ch.queue_declare('celery', durable=sys.argv[2] != 'not durable', auto_delete=False, arguments=args)"
    amqp_py "$how" || not_ok "setup: declare the celery queue ($how) with py-amqp"
    start_worker "${W[@]}" -c 1 -n "topo@localhost"
    expect_eq "the celery queue declared by someone else ($how): consumed as it is" SUCCESS \
        "$(call_record)" "$(worker_log_tail 8)"
    if ! log_has "PRECONDITION_FAILED"; then
        ok "... without PRECONDITION_FAILED"
    else
        not_ok "... without PRECONDITION_FAILED" "$(grep PRECONDITION_FAILED "$WORKER_LOG" | head -3)"
    fi
    stop_worker TERM 20
    AMQP_PY="
ch.queue_delete('celery')
ch.exchange_delete('celery')"
    amqp_py || not_ok "delete the celery queue and exchange"
done

# The exchange `celery` is a topic exchange (celeriac declares a direct one)
# and the queue exists, bound to it: the queue is consumed as it is, its
# exchange and bindings left alone.
AMQP_PY="
ch.exchange_declare('celery', 'topic', durable=True, auto_delete=False)
ch.queue_declare('celery', durable=True, auto_delete=False)
ch.queue_bind('celery', 'celery', 'celery')"
amqp_py || not_ok "setup: declare a topic exchange celery and the celery queue with py-amqp"
start_worker "${W[@]}" -c 1 -n "xtopic@localhost"
expect_eq "the celery queue bound to a topic exchange 'celery' made by someone else: served" SUCCESS \
    "$(call_record)" "$(worker_log_tail 8)"
if ! log_has "PRECONDITION_FAILED"; then
    ok "... without redeclaring its exchange (no PRECONDITION_FAILED)"
else
    not_ok "... without redeclaring its exchange (no PRECONDITION_FAILED)" \
        "$(grep PRECONDITION_FAILED "$WORKER_LOG" | head -3)"
fi
stop_worker TERM 20
AMQP_PY="ch.queue_delete('celery')"
amqp_py || not_ok "delete the celery queue"

# The same exchange without the queue: celeriac must declare both, and the
# server refuses the exchange (406) on each attempt. One line, backoff, no
# spin; once the operator deletes the exchange, the next attempt serves.
start_worker "${W[@]}" -c 1 -n "xmissing@localhost"
wait_children 1 20
sleep 3
procs=("$WORKER_PID" $(worker_all_children))
t0=$(cpu_ticks "${procs[@]}")
b0=$(log_bytes)
sleep 4
ticks=$(($(cpu_ticks "${procs[@]}") - t0))
grown=$(($(log_bytes) - b0))
if ((ticks <= 20 && grown <= 600)); then
    ok "exchange 'celery' of another type, no queue: no spin ($((ticks * 10)) ms CPU and $grown log bytes in 4 s)"
else
    not_ok "exchange 'celery' of another type, no queue: at most 5 % CPU and 600 log bytes in 4 s" \
        "$((ticks * 10)) ms CPU, $grown bytes" "$(worker_log_tail 6)"
fi
line=$(grep -m1 PRECONDITION_FAILED "$WORKER_LOG")
if [[ $line == *"exchange 'celery'"*"127.0.0.1:$RABBITMQ_PORT vhost '/'"*"PRECONDITION_FAILED"*"inequivalent arg 'type'"* ]]; then
    ok "... one line names the exchange, host, vhost and the server's reason"
else
    not_ok "... one line names the exchange, host, vhost and the server's reason" "line: $line" \
        "$(worker_log_tail 8)"
fi
expect_eq "... logged once, not once per attempt" 1 "$(log_count PRECONDITION_FAILED)" \
    "$(grep PRECONDITION_FAILED "$WORKER_LOG" | head -5)"
worker_alive && ok "... the worker keeps retrying" || not_ok "... the worker keeps retrying" "$(worker_log_tail 6)"
AMQP_PY="ch.exchange_delete('celery')"
amqp_py || not_ok "delete the topic exchange celery"
expect_eq "... once the exchange is deleted, the worker declares its topology and serves" SUCCESS \
    "$(call_record)" "$(worker_log_tail 8)"
if log_has "connecting to the broker works again after [0-9]+ failed attempts"; then
    ok "... and logs the end of the episode with its count"
else
    not_ok "... and logs the end of the episode with its count" "$(worker_log_tail 6)"
fi
stop_worker TERM 20
expect_eq "worker exits 0" 0 "$WORKER_RC" "$(worker_log_tail)"

# ---- capacity: 8 children, 20 queues, 2,000 tasks spread over them ------------------------
QUEUES=$(seq -f 'q%g' 1 20 | paste -sd,)
N=2000
IDS=$TEST_TMP/ids-cap
redis_cli -n 1 flushdb >/dev/null
psql_db -c "TRUNCATE rel_runs" >/dev/null
start_worker "${W[@]}" -c 8 -Q "$QUEUES" -n cap@localhost
wait_for 30 _ready cap@localhost || not_ok "worker with 8 children and 20 queues ready" "$(worker_log_tail)"
consumers=$(rabbitmq_ctl list_queues -q name consumers 2>/dev/null | awk '$1 ~ /^q[0-9]+$/ && $2 == 8' | wc -l)
expect_eq "-c 8 -Q (20 queues): each queue has a consumer per child" 20 "$consumers" \
    "$(rabbitmq_ctl list_queues -q name consumers 2>&1 | head -5)"
t0=$SECONDS
rel bulk rel.record "$N" --mod 3 --queues "$QUEUES" --out "$IDS" || not_ok "publish $N rel.record to 20 queues"
tally=$(rel tally "$IDS" --timeout 90)
diag "$N tasks over 20 queues published and run in $((SECONDS - t0)) s: $tally"
expect_eq "-c 8, 20 queues: all $N SUCCESS" "$N" "$(jget counts.SUCCESS <<<"$tally")" "$tally" "$(worker_log_tail 10)"
expect_eq "... each ran exactly once (runs, tasks)" "$N $N" "$(runs)"
expect_eq "... in 8 different children" 8 "$(psql_db -c "SELECT count(DISTINCT pid) FROM rel_runs")"
if wait_for 10 _drained 'q[0-9]+'; then
    ok "... nothing left ready or unacked in the 20 queues"
else
    not_ok "... nothing left ready or unacked in the 20 queues" "ready unacked: $(rmq_counts 'q[0-9]+')"
fi
sleep 2
procs=("$WORKER_PID" $(worker_all_children))
c0=$(cpu_ticks "${procs[@]}")
sleep 5
ticks=$(($(cpu_ticks "${procs[@]}") - c0))
if ((ticks <= 50)); then
    ok "idle 5 s with 8 children on 20 queues: the whole worker used $((ticks * 10)) ms of CPU (${#procs[@]} processes)"
else
    not_ok "idle 5 s with 8 children on 20 queues: at most 500 ms of CPU" "$((ticks * 10)) ms over ${#procs[@]} processes"
fi
worst=$(rel roundtrip rel.record --queue q20 --count 5)
if [[ $worst != timeout ]] && awk -v w="$worst" 'BEGIN {exit !(w < 0.5)}'; then
    ok "... and runs a task sent to its twentieth queue at once (worst of 5: $worst s)"
else
    not_ok "... and runs a task sent to its twentieth queue within 0.5 s" "worst $worst s"
fi
stop_worker TERM 20
expect_eq "worker exits 0" 0 "$WORKER_RC" "$(worker_log_tail)"

# ---- time limits from the message header ---------------------------------------------
start_worker "${W[@]}" -c 1 -n limits@localhost
wait_children 1 20 || not_ok "worker started" "$(worker_log_tail)"
kid=$(only_child)
id=$(send rel.record '[5000]' --soft-time-limit 1)
expect_eq "header soft_time_limit=1 on a 5 s late-ack task: SoftTimeLimitExceeded" \
    "FAILURE SoftTimeLimitExceeded(billiard.exceptions)" "$(meta_of "$id" 15 | summary)" "$(worker_log_tail 8)"
expect_eq "... run once, same child" "1 $kid" "$(runs_of "$id") $(only_child)"
id=$(send rel.record '[10000]' --time-limit 2)
m=$(meta_of "$id" 15)
expect_eq "header time_limit=2 on a 10 s late-ack task: TimeLimitExceeded" \
    "FAILURE TimeLimitExceeded(billiard.exceptions)" "$(summary <<<"$m")" "$m" "$(worker_log_tail 8)"
if wait_replaced "$kid" 1 10; then
    ok "... the child that hit the hard limit was replaced"
else
    not_ok "... the child that hit the hard limit was replaced" "children: $(worker_children)"
fi
sleep 1.5
# the server requeued the killed child's delivery: the replacement settles it
expect_eq "... the message the server requeued is acked, not run again (runs, ready, unacked)" \
    "1 0 0" "$(runs_of "$id") $(rmq_counts)" "$(worker_log_tail 8)"
expect_eq "... and the stored outcome stays TimeLimitExceeded" \
    "FAILURE TimeLimitExceeded(billiard.exceptions)" "$(meta_of "$id" 1 | summary)"

# ---- poison messages -----------------------------------------------------------------------
bad_json=$("$PY" -c 'import uuid; print(uuid.uuid4())')
pickled=$("$PY" -c 'import uuid; print(uuid.uuid4())')
AMQP_PY="
def headers(tid):
    return {'lang': 'py', 'task': 'rel.record', 'id': tid, 'root_id': tid, 'parent_id': None,
            'group': None, 'retries': 0, 'eta': None, 'expires': None,
            'timelimit': [None, None], 'argsrepr': '()', 'kwargsrepr': '{}', 'origin': 'test'}
def pub(body, ctype, hdrs):
    ch.basic_publish(amqp.Message(body, content_type=ctype, content_encoding='utf-8',
                                  application_headers=hdrs, delivery_mode=2),
                     exchange='', routing_key='celery')
pub(b'{not json', 'application/json', headers(sys.argv[2]))
pub(b'\\x80\\x04K\\x01.', 'application/x-python-serialize', headers(sys.argv[3]))
pub(b'{\"hello\": 1}', 'application/json', {})"
amqp_py "$bad_json" "$pickled" || not_ok "setup: publish three poison messages with py-amqp"
unknown=$(send rel.no_such_task '[]')
expect_eq "poison: a body that is not JSON is FAILURE DecodeError (stored under its id)" \
    "FAILURE DecodeError(kombu.exceptions)" "$(meta_of "$bad_json" 15 | summary)" "$(worker_log_tail 8)"
expect_eq "poison: a pickled body is FAILURE ContentDisallowed" "FAILURE ContentDisallowed(kombu.exceptions)" \
    "$(meta_of "$pickled" 15 | summary)" "$(worker_log_tail 8)"
expect_eq "poison: an unknown task is FAILURE NotRegistered" "FAILURE NotRegistered(celery.exceptions)" \
    "$(meta_of "$unknown" 15 | summary)" "$(worker_log_tail 8)"
wait_for 10 _drained
poison_lines() {
    echo "$(log_count "$bad_json") $(log_count "$pickled") $(log_count "rel\.no_such_task") \
$(log_count "(dropped|rejected invalid|acked undecodable) (a )?message .*\(no id\)|dropped a message from queue 'celery'")"
}
first=$(poison_lines)
sleep 3
expect_eq "poison: each settled with one log line, none redelivered 3 s later (lines per message; ready, unacked)" \
    "1 1 1 1 0 0" "$(poison_lines) $(rmq_counts)" "$(grep -E "$bad_json|$pickled|no_such|dropped|rejected|undecodable" "$WORKER_LOG" | head -8)"
[[ $first == "1 1 1 1" ]] || diag "lines right after settling: $first"
kid=$(only_child)
id=$(send rel.record '[0]')
expect_eq "poison: the worker goes on serving, same child" "SUCCESS $kid" \
    "$(meta_of "$id" 15 | jget status) $(only_child)" "$(worker_log_tail 8)"
stop_worker TERM 20
expect_eq "worker exits 0" 0 "$WORKER_RC" "$(worker_log_tail)"

check_worker_logs_clean
tap_done
