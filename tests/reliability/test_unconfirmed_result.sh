#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_unconfirmed_result.sh: an early-ack task's result is sent to Redis
# without waiting for the reply (read before the next store), and its
# message is already acked. If the child then dies and the result backend
# never got those bytes (it restarted before reading them), the task would
# have no result at all and its client would wait for ever. The slot names
# such a result until its reply is read; the next child of the slot stores
# WorkerLostError for it unless the result arrived (a SUCCESS is kept).
# When no next child comes (the worker is stopping), the salvage process
# does, on Redis and on another transport (salvage.c, salvage_transport.c).
# Found by the early-ack chaos run under ASan: 1 task of 2,000 with no result.
. "$(dirname "$0")/lib.sh"

start_redis # the broker
BROKER=$REDIS_URL
BACKEND_DIR=$TEST_TMP/backend-redis
mkdir -p "$BACKEND_DIR"
BACKEND_PORT=$(free_port)
BACKEND=redis://127.0.0.1:$BACKEND_PORT/0
start_backend() {
    redis-server --port "$BACKEND_PORT" --bind 127.0.0.1 --save '' --appendonly no \
        --dir "$BACKEND_DIR" </dev/null >>"$BACKEND_DIR/redis.log" 2>&1 &
    BACKEND_PID=$!
    _svc_record_pid "$BACKEND_PID" redis
    wait_for 20 redis-cli -p "$BACKEND_PORT" ping >/dev/null ||
        { not_ok "setup: the backend redis-server answers"; tap_done; }
}
start_backend
# The stopped backend dies with the bytes it had not read; an empty one
# takes its place on the same port.
restart_backend_empty() {
    kill -KILL "$BACKEND_PID" 2>/dev/null
    kill -CONT "$BACKEND_PID" 2>/dev/null
    wait_pid_gone 10 "$BACKEND_PID"
    start_backend
}
# expect_worker_lost ID CASE: the backend holds WorkerLostError under ID.
expect_worker_lost() {
    local got
    got=$(redis-cli -p "$BACKEND_PORT" get "celery-task-meta-$1")
    if [[ $got == *'"status": "FAILURE"'*WorkerLostError* ]]; then
        ok "$2"
    else
        not_ok "$2" "stored: ${got:-(nothing)}" "$(worker_log_tail 12)"
    fi
}
send() { "$CELERIAC_BIN" call "$@" -b "$BROKER" --result-backend "$BACKEND"; }
state_of() { "$CELERIAC_BIN" result "$1" -b "$BROKER" --result-backend "$BACKEND" --timeout 10 2>&1; }

start_worker -c 1 -b "$BROKER" --result-backend "$BACKEND" -n unconfirmed@localhost
wait_children 1 20 || not_ok "worker started" "$(worker_log_tail)"
expect_eq "warm-up task" 5 "$(send tasks.add 2 3 --wait --timeout 20)" "$(worker_log_tail)"
sleep 2 # the warm-up's reply is read after the next fetch

# ---- the backend never gets the result: WorkerLostError, not silence ----
kill -STOP "$BACKEND_PID"
id=$(send tasks.add 20 22)
child=$(worker_children)
# The child runs it (microseconds) and writes its result into the stopped
# server's socket, which takes it: the write does not wait for the reply.
sleep 1.5
kill -KILL "$child"
restart_backend_empty
wait_for 20 bash -c "[[ -n \$(redis-cli -p $BACKEND_PORT get celery-task-meta-$id) ]]"
expect_worker_lost "$id" \
    "a result the backend never got: the next child stores WorkerLostError under its id"
if log_has "before the result backend confirmed its result"; then
    ok "... and says so in the log"
else
    not_ok "... and says so in the log" "$(worker_log_tail 8)"
fi

# ---- the result arrived: the SUCCESS is kept ----
wait_children 1 20
id2=$(send tasks.add 1 1)
wait_for 10 bash -c "[[ -n \$(redis-cli -p $BACKEND_PORT get celery-task-meta-$id2) ]]"
kill -KILL "$(worker_children)" # possibly before its reply was read
wait_children 1 20
sleep 1
got=$(redis-cli -p "$BACKEND_PORT" get "celery-task-meta-$id2")
if [[ $got == *'"status": "SUCCESS"'*'"result": 2'* ]]; then
    ok "a result that arrived stays SUCCESS when its child is killed right after"
else
    not_ok "a result that arrived stays SUCCESS when its child is killed right after" \
        "stored: ${got:-(nothing)}" "$(worker_log_tail 8)"
fi
expect_eq "the worker runs the next task" 7 "$(send tasks.add 3 4 --wait --timeout 20)" \
    "$(worker_log_tail)"
stop_worker TERM 20

# ---- no replacement comes (the worker is stopping): the salvage process stores it ----
# on Redis (salvage.c) and on another transport (salvage_transport.c)
salvage_case() {
    local broker=$1 label=$2 child id
    start_worker -c 1 -b "$broker" --result-backend "$BACKEND" -n "unconfirmed-$label@localhost"
    wait_children 1 20 || not_ok "$label: worker started again" "$(worker_log_tail)"
    expect_eq "$label: warm-up task" 9 \
        "$("$CELERIAC_BIN" call tasks.add 4 5 -b "$broker" --result-backend "$BACKEND" --wait \
            --timeout 20)" "$(worker_log_tail)"
    sleep 2
    kill -STOP "$BACKEND_PID"
    id=$("$CELERIAC_BIN" call tasks.add 30 12 -b "$broker" --result-backend "$BACKEND")
    child=$(worker_children)
    sleep 1.5
    # Warm shutdown: the idle child leaves, and leaving reads its replies
    # first, which the stopped server never sends; it dies there.
    kill -TERM "$WORKER_PID"
    sleep 1
    kill -KILL "$child"
    restart_backend_empty
    wait_pid_gone 30 "$WORKER_PID"
    expect_worker_lost "$id" \
        "$label: a child dying while the worker stops: the salvage process stores WorkerLostError"
    if grep -q "Salvage.*before the result backend confirmed" "$WORKER_LOG"; then
        ok "$label: ... and the salvage process says so in the log"
    else
        not_ok "$label: ... and the salvage process says so in the log" "$(worker_log_tail 12)"
    fi
    stop_worker TERM 20 # reaped already: collects its exit status
}
salvage_case "$BROKER" redis
start_pg
salvage_case "sqla+$PG_URL" sqla+postgresql

# ---- a child that exits on its own reads its replies first ----
start_worker -c 1 --max-tasks-per-child 1 -b "$BROKER" --result-backend "$BACKEND" \
    -n unconfirmed2@localhost
wait_children 1 20 || not_ok "worker with --max-tasks-per-child 1 started" "$(worker_log_tail)"
vals=""
for i in 1 2 3; do vals+="$(send tasks.add "$i" 0 --wait --timeout 20) "; done
expect_eq "three tasks, each child retiring after one" "1 2 3 " "$vals" "$(worker_log_tail)"
if log_has "before the result backend confirmed"; then
    not_ok "retiring children leave no unconfirmed result to their replacements" \
        "$(grep "before the result backend confirmed" "$WORKER_LOG")"
else
    ok "retiring children leave no unconfirmed result to their replacements"
fi
stop_worker TERM 20
check_worker_logs_clean
tap_done
