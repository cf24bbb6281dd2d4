#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_db_outage.sh (issue 3, point 5): a task whose connection dies
# mid-flight is re-run after reconnecting when it is idempotent and fails
# with OperationalError otherwise; PostgreSQL restarted in the middle of
# 5,000 get_book_info tasks loses none and fails none, children pull no task
# while the database is down, say so in the SIGUSR1 status, back off, and
# resume by themselves.
. "$(dirname "$0")/lib.sh"

N=${DB_OUTAGE_TASKS:-5000}
start_redis
start_pg
seed_books_pg || { not_ok "seed the books table"; tap_done; }
build_rel_lib || tap_done

running_sleep_backend() {
    psql_admin -c "SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'celeriac%'
                   AND state = 'active' AND query LIKE '%pg_sleep%' LIMIT 1"
}
_sleep_running() { [[ -n $(running_sleep_backend) ]]; }

# ---- a connection lost mid-task ----------------------------------------------------------
start_worker -A "$REL_LIB" -c 1 -b "$REDIS_URL" --result-backend "$REDIS_URL" --db "$PG_URL" -n midflight@localhost
wait_children 1 20 || not_ok "worker started" "$(worker_log_tail)"
kid=$(only_child)
id=$(send rel.pg_sleep '[5]')
if wait_for 10 _sleep_running; then
    b=$(running_sleep_backend)
    psql_admin -c "SELECT pg_terminate_backend($b)" >/dev/null
    m=$(meta_of "$id" 15)
    expect_eq "non-idempotent task whose backend is terminated mid-statement: FAILURE OperationalError" \
        "OperationalError" "$(jget result.exc_type <<<"$m")" "$m" "$(worker_log_tail 10)"
    msg=$(jget result.exc_message <<<"$m")
    if [[ $msg == *"connection"* ]]; then
        ok "... with a clear connection error ($msg)"
    else
        not_ok "... with a clear connection error" "exc_message: $msg"
    fi
    id=$(send rel.pg)
    m=$(meta_of "$id" 15)
    nb=$(jget result.backend <<<"$m")
    if [[ $(jget status <<<"$m") == SUCCESS && $nb != "$b" ]]; then
        ok "the next task runs on a new connection ($b -> $nb), same child"
    else
        not_ok "the next task runs on a new connection" "$m" "$(worker_log_tail 10)"
    fi
else
    not_ok "setup: rel.pg_sleep(5) is running on the server" "$(celeriac_backends)"
fi

id=$(send rel.pg_sleep_idem '[2]')
if wait_for 10 _sleep_running; then
    b=$(running_sleep_backend)
    psql_admin -c "SELECT pg_terminate_backend($b)" >/dev/null
    m=$(meta_of "$id" 20)
    nb=$(jget result.backend <<<"$m")
    if [[ $(jget status <<<"$m") == SUCCESS && $nb != "$b" ]]; then
        ok "idempotent task whose backend is terminated mid-statement: re-run after reconnect, SUCCESS (backend $b -> $nb)"
    else
        not_ok "idempotent task whose backend is terminated mid-statement: re-run after reconnect, SUCCESS" \
            "$m" "$(worker_log_tail 10)"
    fi
    if log_has "rel\.pg_sleep_idem\[$id\]: database connection lost .*re-running after reconnect"; then
        ok "the re-run is logged with its reason"
    else
        not_ok "the re-run is logged with its reason" "$(worker_log_tail 10)"
    fi
else
    not_ok "setup: rel.pg_sleep_idem(2) is running on the server" "$(celeriac_backends)"
fi
expect_eq "no child was replaced by the lost connections" "$kid" "$(only_child)"
stop_worker TERM 20

# ---- a child that dies while PostgreSQL is down ---------------------------------------------
# Its replacement cannot connect until the database is back. It must wait for
# it like any running child (not give up with "cannot serve" after
# --db-connect-attempts, which is for a worker that never could connect),
# then settle the task its predecessor died running (late ack: requeue).
start_worker -A "$REL_LIB" -c 2 --acks-late -b "$REDIS_URL" --result-backend "$REDIS_URL" --db "$PG_URL" \
    --db-backoff-base 100 --db-backoff-cap 500 -n outagekill@localhost
wait_children 2 20 || not_ok "worker started" "$(worker_log_tail)"
id=$(send rel.pid '[3]')
wait_running 1 || diag "the task did not start: queue $(queue_len), unacked $(unacked_count)"
stop_pg fast
# kill both children, so the busy one surely dies mid-task
kids=$(worker_children)
# shellcheck disable=SC2086
kill -KILL $kids
sleep 4 # several connect attempts of the replacements (base 100 ms, cap 500 ms)
start_pg_again
if wait_children 2 20 && worker_alive; then
    ok "children killed while PostgreSQL was down are replaced and serve again once it is back"
else
    not_ok "children killed while PostgreSQL was down are replaced and serve again once it is back" \
        "worker alive: $(worker_alive && echo yes || echo "no (exit $(wait "$WORKER_PID"; echo $?))"), children: $(worker_children)" \
        "$(grep -E 'cannot serve|not replacing|stopping|unreachable' "$WORKER_LOG" | head -6)"
fi
if ! log_has "cannot serve"; then
    ok "no slot is given up ('cannot serve') because of a database outage after start"
else
    not_ok "no slot is given up ('cannot serve') because of a database outage after start" \
        "$(grep -E 'cannot serve|unreachable after' "$WORKER_LOG" | head -4)"
fi
m=$(meta_of "$id" 20)
expect_eq "the late-ack task of a child killed during the outage is requeued and succeeds after it" \
    SUCCESS "$(jget status <<<"$m")" "unacked $(unacked_count), queue $(queue_len)" \
    "$(grep -E 'requeued|cannot serve|no child' "$WORKER_LOG" | head -5)"
stop_worker TERM 20
redis_cli del celery unacked unacked_index >/dev/null # what a failed case above left

# ---- a child killed while it holds a message it could not start (database down) -------
# The child takes the message, finds its connection dead and waits for the
# database before starting the task; killed there, the message is in
# `unacked` but its task never started. It should go back to the queue when
# the child's death is noticed, not an hour later (--visibility-timeout).
start_worker -A "$REL_LIB" -c 1 --acks-late -b "$REDIS_URL" --result-backend "$REDIS_URL" --db "$PG_URL" \
    --db-backoff-base 100 --db-backoff-cap 500 -n heldmsg@localhost
wait_children 1 20
# Ready = the child has connected: a database that is down before the worker
# ever served is a start-up failure ("cannot serve"), not an outage.
_ready() { grep -q "ready\." "$WORKER_LOG"; }
wait_for 20 _ready || diag "the worker did not become ready"
stop_pg fast
sleep 0.5
id=$(send rel.pid '[0]')
_held() { [[ $(queue_len) == 0 && $(redis_cli hlen unacked) == 1 ]]; }
if wait_for 10 _held; then
    ok "setup: with the database down the child took one message and holds it unstarted"
else
    not_ok "setup: the child took the message" "queue $(queue_len), unacked $(unacked_count)" "$(worker_log_tail 5)"
fi
kid=$(only_child)
kill -KILL "$kid"
sleep 1
start_pg_again
m=$(meta_of "$id" 15)
expect_eq "a message held unstarted by a child that died is requeued at once and runs (not after the visibility timeout)" \
    SUCCESS "$(jget status <<<"$m")" "queue $(queue_len), unacked $(unacked_count)" \
    "$(grep -E 'killed by|requeued|restored' "$WORKER_LOG" | head -4)"
stop_worker TERM 20
redis_cli del celery unacked unacked_index >/dev/null

# ---- PostgreSQL restart in the middle of $N get_book_info ------------------------------
RESULT_URL="redis://127.0.0.1:$REDIS_PORT/1"
export RESULT_URL
ids=$TEST_TMP/ids
t0=$SECONDS
rel bulk books.get_book_info "$N" --out "$ids" || not_ok "publish $N tasks"
diag "published $N get_book_info in $((SECONDS - t0)) s"
done_count() { redis_cli -n 1 dbsize; }
start_worker -c 4 -b "$REDIS_URL" --result-backend "$RESULT_URL" --db "$PG_URL" \
    --db-backoff-base 200 --db-backoff-cap 2000 -n outage@localhost
wait_children 4 20 || not_ok "worker started 4 children" "$(worker_log_tail)"
_quarter() { (($(done_count) >= N / 4)); }
wait_for 60 _quarter || diag "only $(done_count) done after 60 s"
at=$(done_count)
stop_pg fast
diag "PostgreSQL stopped after $at of $N results"
sleep 1
q1=$(queue_len)
kill -USR1 "$WORKER_PID"
sleep 2
q2=$(queue_len)
held=$(redis_cli hlen unacked)
if [[ $q1 == "$q2" ]] && ((q2 > 0)); then
    ok "while PostgreSQL is down the children pull no task (queue $q1 -> $q2 over 2 s; $held held)"
else
    not_ok "while PostgreSQL is down the children pull no task" "queue $q1 -> $q2 over 2 s, unacked $held" \
        "$(worker_log_tail 15)"
fi
if grep -E 'child [0-9] pid [0-9]+: .*database down' "$WORKER_LOG" | grep -q .; then
    ok "SIGUSR1 shows the children's database as down ($(grep -cE 'child [0-9] pid [0-9]+: .*database down' "$WORKER_LOG") of 4)"
else
    not_ok "SIGUSR1 shows the children's database as down" "$(grep -E 'child [0-9] pid' "$WORKER_LOG" | tail -4)"
fi
start_pg_again
t1=$SECONDS
tally=$(rel tally "$ids" --timeout 180)
diag "after the restart: all settled in $((SECONDS - t1)) s: $tally"
expect_eq "PostgreSQL restart in the middle of $N get_book_info: all $N SUCCESS" \
    "$N" "$(jget counts.SUCCESS <<<"$tally")" "$tally" "$(worker_log_tail 20)"
expect_eq "... none FAILURE, none missing" "<missing> <missing>" \
    "$(jget counts.FAILURE <<<"$tally") $(jget counts.MISSING <<<"$tally")" "$tally"
expect_eq "... nothing left queued or unacked" "0 0 0" "$(queue_len) $(unacked_count)"
if log_has "retrying in [0-9]+ ms"; then
    ok "the children logged their backoff ($(grep -cE 'retrying in [0-9]+ ms' "$WORKER_LOG") lines)"
else
    not_ok "the children logged their backoff" "$(worker_log_tail 15)"
fi
# issue 9: a repeated failure is logged once per episode, with a count at its end
expect_eq "each child logged its outage once: one 'retrying' line and one 'reachable again after N failed attempts' line" \
    "$(log_count "retrying in [0-9]+ ms")" "$(log_count "reachable again after [0-9]+ failed attempts?")" \
    "$(grep -E 'retrying in|reachable again' "$WORKER_LOG" | head -12)"
expect_eq "every child re-established its connection by itself" 4 \
    "$(grep -E 're-established' "$WORKER_LOG" | grep -oE 'ForkPoolWorker-[0-9]+' | sort -u | wc -l)" \
    "$(grep -E 're-established|unusable' "$WORKER_LOG" | head)"
if ! log_has "killed by signal|exited with code|cannot serve"; then
    ok "no child died or gave up during the outage"
else
    not_ok "no child died or gave up during the outage" "$(grep -E 'killed by signal|exited with code|cannot serve' "$WORKER_LOG")"
fi
stop_worker TERM 30
expect_eq "worker exits 0" 0 "$WORKER_RC" "$(worker_log_tail)"

check_worker_logs_clean
tap_done
