#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_shutdown.sh: SIGTERM is warm (the running task finishes, its result is
# stored, queued messages stay queued, exit 0); a second SIGTERM or a SIGQUIT
# is cold; children leave when the master is killed.
. "$(dirname "$0")/services.sh"

start_redis

# started: the early-acked message left the queue and unacked (it is running).
started() { [[ $(redis_cli llen celery) == "${1:-0}" && $(redis_cli hlen unacked) == 0 ]]; }
now_utc() { date -u +%Y-%m-%dT%H:%M:%S.%N | cut -c1-26; }

# ---- warm shutdown: the running task finishes ------------------------------------
start_worker -c 2 -b "$REDIS_URL" --result-backend "$REDIS_URL" -n warm@localhost
wait_children 2 20 || not_ok "worker started 2 children" "$(worker_log_tail)"
kids=$(worker_children)
id=$(client send tasks.sleep --args '[3]' --no-wait | jget id)
wait_for 10 started || diag "the sleep task did not start"
sleep 0.5
term_at=$(now_utc)
t0=$(date +%s.%N)
stop_worker TERM 30
t1=$(date +%s.%N)
took=$("$PY" -c "print(round($t1 - $t0, 1))")
expect_eq "warm shutdown: exit 0" 0 "$WORKER_RC" "$(worker_log_tail)"
meta=$(client meta "$id")
expect_eq "warm shutdown: the running tasks.sleep(3) finished and stored SUCCESS" \
    "SUCCESS 3.0" "$(jget meta.status <<<"$meta") $(jget meta.result <<<"$meta")" "$meta" "$(worker_log_tail)"
done_at=$(jget meta.date_done <<<"$meta")
if [[ $done_at > $term_at ]]; then
    ok "warm shutdown: the task finished after the SIGTERM (term $term_at, done $done_at, exit after ${took} s)"
else
    not_ok "warm shutdown: the task finished after the SIGTERM" "term $term_at, done $done_at"
fi
gone=yes
for k in $kids; do wait_pid_gone 5 "$k" || gone="no ($k)"; done
expect_eq "warm shutdown: every child exited" yes "$gone"
expect_eq "warm shutdown: nothing left in unacked" "0 0" \
    "$(redis_cli hlen unacked) $(redis_cli zcard unacked_index)"

# ---- warm shutdown keeps queued messages queued ----------------------------------
start_worker -c 1 -b "$REDIS_URL" --result-backend "$REDIS_URL" -n queued@localhost
wait_children 1 20
client send tasks.sleep --args '[2]' --no-wait >/dev/null
wait_for 10 started || diag "the sleep task did not start"
ids=$(client send tasks.add --args '[2, 3]' --count 3 --no-wait | "$PY" -c 'import sys, json; print(" ".join(json.loads(l)["id"] for l in sys.stdin))')
stop_worker TERM 30
expect_eq "warm shutdown with a backlog: exit 0" 0 "$WORKER_RC" "$(worker_log_tail)"
expect_eq "warm shutdown with a backlog: the 3 queued messages are still queued, none unacked" \
    "3 0" "$(redis_cli llen celery) $(redis_cli hlen unacked)" "$(worker_log_tail)"
start_worker -c 1 -b "$REDIS_URL" --result-backend "$REDIS_URL" -n queued2@localhost
all=""
for id in $ids; do
    _done() { [[ $(client meta "$1" | jget meta.status) == SUCCESS ]]; }
    wait_for 20 _done "$id" && all+="5 " || all+="missing "
done
expect_eq "the next worker runs them" "5 5 5 " "$all"
stop_worker TERM 30

# ---- a second SIGTERM is cold ------------------------------------------------------
start_worker -c 1 -b "$REDIS_URL" --result-backend "$REDIS_URL" -n cold@localhost
wait_children 1 20
kids=$(worker_children)
client send tasks.sleep --args '[30]' --no-wait >/dev/null
wait_for 10 started || diag "the sleep task did not start"
kill -TERM "$WORKER_PID"
sleep 0.5
t0=$SECONDS
stop_worker TERM 10
if [[ $WORKER_RC != timeout ]]; then
    ok "second SIGTERM: cold shutdown, exit $WORKER_RC within $((SECONDS - t0)) s with a 30 s task running"
else
    not_ok "second SIGTERM: cold shutdown within 10 s" "$(worker_log_tail)"
fi
gone=yes
for k in $kids; do wait_pid_gone 5 "$k" || gone="no ($k)"; done
expect_eq "cold shutdown: the busy child is gone" yes "$gone"

# ---- SIGQUIT is cold -------------------------------------------------------------------
start_worker -c 1 -b "$REDIS_URL" --result-backend "$REDIS_URL" -n quit@localhost
wait_children 1 20
kids=$(worker_children)
client send tasks.sleep --args '[30]' --no-wait >/dev/null
wait_for 10 started || diag "the sleep task did not start"
t0=$SECONDS
stop_worker QUIT 10
if [[ $WORKER_RC != timeout ]]; then
    ok "SIGQUIT: cold shutdown, exit $WORKER_RC within $((SECONDS - t0)) s"
else
    not_ok "SIGQUIT: cold shutdown within 10 s" "$(worker_log_tail)"
fi
gone=yes
for k in $kids; do wait_pid_gone 5 "$k" || gone="no ($k)"; done
expect_eq "SIGQUIT: the busy child is gone" yes "$gone"

# ---- children leave when the master dies ----------------------------------------------
start_worker -c 2 -b "$REDIS_URL" --result-backend "$REDIS_URL" -n orphan@localhost
wait_children 2 20
kids=$(ps -o pid= --ppid "$WORKER_PID" | tr -d ' ' | tr '\n' ' ') # pool children and any other
kill -KILL "$WORKER_PID"
wait "$WORKER_PID" 2>/dev/null
WORKER_PID=
gone=yes
for k in $kids; do wait_pid_gone 10 "$k" || gone="no ($k still running)"; done
expect_eq "every child process exits by itself when the master is killed ($kids)" yes "$gone"
for k in $kids; do _svc_pid_is "$k" worker && kill -KILL "$k" 2>/dev/null; done

check_worker_logs_clean
tap_done
