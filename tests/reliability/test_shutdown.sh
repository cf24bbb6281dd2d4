#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_shutdown.sh (issue 3, point 7) with late ack and a database: a warm
# shutdown (TERM) lets the running task finish, store and ack, then closes
# everything; a cold one (second TERM, or QUIT) stops at once and puts the
# late-ack message back on its queue, marked redelivered, as kombu does when
# its channel closes (then run by celeriac); a master killed with SIGKILL leaves
# children that finish their task and exit: no orphan keeps running.
. "$(dirname "$0")/lib.sh"

start_redis
start_pg
build_rel_lib || tap_done
W=(-A "$REL_LIB" -b "$REDIS_URL" --result-backend "$REDIS_URL" --db "$PG_URL" --acks-late)
count_backends() {
    psql_admin -c "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'celeriac%'"
}
_no_backends() { [[ $(count_backends) == 0 ]]; }
now_utc() { date -u +%Y-%m-%dT%H:%M:%S.%N | cut -c1-26; }

# ---- warm: the running task finishes, is stored and acked ----------------------------
start_worker "${W[@]}" -c 2 -n warm@localhost
wait_children 2 20 || not_ok "worker started 2 children" "$(worker_log_tail)"
kids=$(worker_all_children)
id=$(send rel.pg_sleep '[2]')
wait_running 1 || diag "the task did not start: queue $(queue_len), unacked $(unacked_count)"
term_at=$(now_utc)
stop_worker TERM 30
expect_eq "warm shutdown (TERM) with a late-ack task running: exit 0" 0 "$WORKER_RC" "$(worker_log_tail)"
m=$(meta_of "$id" 1)
done_at=$(jget date_done <<<"$m")
if [[ $(jget status <<<"$m") == SUCCESS && $done_at > $term_at ]]; then
    ok "warm shutdown: the running task finished after the TERM and stored SUCCESS (term $term_at, done $done_at)"
else
    not_ok "warm shutdown: the running task finished after the TERM and stored SUCCESS" "term $term_at" "$m" \
        "$(worker_log_tail 10)"
fi
expect_eq "warm shutdown: its late ack was sent (queue and unacked empty)" "0 0 0" "$(queue_len) $(unacked_count)"
gone=yes
for k in $kids; do wait_pid_gone 5 "$k" || gone="no ($k)"; done
expect_eq "warm shutdown: every child (and the control process) exited" yes "$gone"
if wait_for 5 _no_backends; then
    ok "warm shutdown: no celeriac connection left in pg_stat_activity"
else
    not_ok "warm shutdown: no celeriac connection left in pg_stat_activity" "$(celeriac_backends)"
fi

# ---- cold: second TERM, or QUIT: the late-ack message goes back to its queue ----------
for how in "TERM TERM" "QUIT"; do
    start_worker "${W[@]}" -c 1 -n cold@localhost
    wait_children 1 20
    kids=$(worker_all_children)
    id=$(send rel.pid '[3]')
    wait_running 1 || diag "the task did not start: queue $(queue_len), unacked $(unacked_count)"
    t0=$SECONDS
    if [[ $how == "TERM TERM" ]]; then
        kill -TERM "$WORKER_PID"
        sleep 0.3
        stop_worker TERM 10
    else
        stop_worker QUIT 10
    fi
    if [[ $WORKER_RC != timeout ]] && ((SECONDS - t0 <= 3)); then
        ok "cold shutdown ($how): the master exits at once ($((SECONDS - t0)) s, status $WORKER_RC) with a task running"
    else
        not_ok "cold shutdown ($how): the master exits at once" "status $WORKER_RC after $((SECONDS - t0)) s" \
            "$(worker_log_tail 10)"
    fi
    gone=yes
    for k in $kids; do wait_pid_gone 3 "$k" || gone="no ($k)"; done
    expect_eq "cold shutdown ($how): every child is gone" yes "$gone"
    # As kombu restores a closing channel's unacked messages (issue 9, point
    # 10a): not left in unacked until the visibility timeout.
    restored=$(redis_cli lindex celery 0)
    if [[ $(meta_of "$id" 0 | summary) == none && $(queue_len) == 1 && $(unacked_count) == "0 0" &&
        $restored =~ \"redelivered\":\ ?true ]]; then
        ok "cold shutdown ($how): no result; the message is back in its queue, marked redelivered, unacked empty"
    else
        not_ok "cold shutdown ($how): no result; the message is back in its queue, marked redelivered" \
            "result $(meta_of "$id" 0 | summary), queue $(queue_len), unacked $(unacked_count)" "${restored:0:400}"
    fi
    if wait_for 5 _no_backends; then
        ok "cold shutdown ($how): no celeriac connection left in pg_stat_activity"
    else
        not_ok "cold shutdown ($how): no celeriac connection left in pg_stat_activity" "$(celeriac_backends)"
    fi
    start_worker "${W[@]}" -c 1 -n after-cold@localhost
    m=$(meta_of "$id" 15)
    expect_eq "cold shutdown ($how): the restored task then runs to SUCCESS" SUCCESS "$(jget status <<<"$m")" \
        "$(worker_log_tail 10)"
    stop_worker TERM 20
    expect_eq "cold shutdown ($how): nothing left afterwards" "0 0 0" "$(queue_len) $(unacked_count)"
done

# ---- the master dies by SIGKILL -----------------------------------------------------------
start_worker "${W[@]}" -c 2 -n orphan@localhost
wait_children 2 20
kids=$(worker_all_children)
id=$(send rel.pid '[2]')
wait_running 1 || diag "the task did not start: queue $(queue_len), unacked $(unacked_count)"
kill -KILL "$WORKER_PID"
wait "$WORKER_PID" 2>/dev/null
WORKER_PID=
sleep 1
busy=0
for k in $kids; do kill -0 "$k" 2>/dev/null && busy=$((busy + 1)); done
diag "1 s after the master's SIGKILL $busy of $(wc -w <<<"$kids") processes remain (the busy child finishes its 2 s task)"
gone=yes
for k in $kids; do wait_pid_gone 6 "$k" || gone="no ($k: $(tr '\0' ' ' </proc/"$k"/cmdline 2>/dev/null))"; done
expect_eq "master SIGKILLed: no child (nor the control process) is alive a few seconds later" yes "$gone"
m=$(meta_of "$id" 1)
expect_eq "master SIGKILLed: the running task finished and stored SUCCESS" SUCCESS "$(jget status <<<"$m")" "$m" \
    "$(worker_log_tail 10)"
expect_eq "master SIGKILLed: its late ack was sent (unacked empty)" "0 0 0" "$(queue_len) $(unacked_count)"
# They leave through their one exit path (PR_SET_PDEATHSIG's TERM or the
# death-watch pipe's EOF, whichever comes first), closing their connection.
expect_eq "master SIGKILLed: both children left through their exit path (connection closed, logged)" 2 \
    "$(log_count 'closed after [0-9.]+ s: worker child exiting')" "$(worker_log_tail 10)"
if wait_for 5 _no_backends; then
    ok "master SIGKILLed: no celeriac connection left in pg_stat_activity"
else
    not_ok "master SIGKILLed: no celeriac connection left in pg_stat_activity" "$(celeriac_backends)"
fi
for k in $kids; do _svc_pid_is "$k" worker && kill -KILL "$k" 2>/dev/null; done

check_worker_logs_clean
tap_done
