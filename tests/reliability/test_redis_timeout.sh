#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_redis_timeout.sh (issue 14): kombu's socket_timeout and
# socket_connect_timeout transport options. A Redis host that stops
# answering (SIGSTOP: the kernel still accepts TCP and buffers writes, so
# only read timeouts fire, as behind a partition) is noticed within
# socket_timeout, said once per episode as "no answer from Redis ... within
# N s (socket_timeout)", without a spin; the worker resumes when it answers
# again, and a warm shutdown does not wait the old fixed 30 s.
. "$(dirname "$0")/lib.sh"

# ---- bad values: exit 2, one line -------------------------------------------------
# bad_start NAME WANT FLAGS...: exit 2 and one stderr line containing WANT.
bad_start() {
    local name=$1 want=$2 rc
    shift 2
    "$CELERIAC_BIN" worker -c 1 "$@" </dev/null >"$TEST_TMP/bad.out" 2>"$TEST_TMP/bad.err"
    rc=$?
    if [[ $rc == 2 && $(wc -l <"$TEST_TMP/bad.err") == 1 ]] && grep -q -- "$want" "$TEST_TMP/bad.err"; then
        ok "$name: exit 2, one line ($(cat "$TEST_TMP/bad.err"))"
    else
        not_ok "$name: exit 2 with one line naming '$want'" "exit $rc" "$(cat "$TEST_TMP/bad.err")"
    fi
}
B=(-A "$BOOKS_LIB" -b redis://127.0.0.1:1/0)
bad_start "socket_timeout=0" "socket_timeout wants a positive number of seconds, got '0'" \
    "${B[@]}" --broker-transport-option socket_timeout=0
bad_start "socket_timeout=-1" "socket_timeout wants a positive number of seconds, got '-1'" \
    "${B[@]}" --broker-transport-option socket_timeout=-1
bad_start "socket_connect_timeout=soon" \
    "socket_connect_timeout wants a positive number of seconds, got 'soon'" \
    "${B[@]}" --broker-transport-option socket_connect_timeout=soon
bad_start "result backend socket_timeout=nan" \
    "result-backend-transport-option socket_timeout wants a positive number" \
    "${B[@]}" --result-backend redis://127.0.0.1:1/1 --result-backend-transport-option socket_timeout=nan
bad_start "an unknown key" "unknown option 'socket_keepalive'" \
    "${B[@]}" --broker-transport-option socket_keepalive=1
bad_start "socket_timeout for a database result backend" \
    "socket_timeout applies to a redis:// or sentinel:// result backend URL only" \
    "${B[@]}" --result-backend "db+sqlite:///$TEST_TMP/r.db" \
    --result-backend-transport-option socket_timeout=2

build_rel_lib || tap_done
start_redis
RESULT_URL="redis://127.0.0.1:$REDIS_PORT/1"
export RESULT_URL
NO_ANSWER="no answer from Redis '127.0.0.1:$REDIS_PORT' within 2 s \(socket_timeout\)"
resume_redis() { kill -CONT "$REDIS_PID" 2>/dev/null; }
trap_prev=$(trap -p EXIT | sed -E "s/^trap -- '(.*)' EXIT$/\1/")
# shellcheck disable=SC2064 # a stopped Redis would hold up the cleanup's TERM
trap "resume_redis; $trap_prev" EXIT

# ---- blocking waits longer than socket_timeout ------------------------------------
# The idle fetch blocks 1 s in BLMOVE: with socket_timeout=0.5 that wait must
# not count as silence (the deadline of a blocking command is its own
# timeout plus socket_timeout).
start_worker -A "$REL_LIB" -c 1 -b "$REDIS_URL" --result-backend "$RESULT_URL" -n short@localhost \
    --broker-transport-option socket_timeout=0.5 --result-backend-transport-option socket_timeout=0.5
wait_children 1 20 || not_ok "worker started" "$(worker_log_tail)"
sleep 2.5
id=$(send rel.pid '[0]')
expect_eq "socket_timeout=0.5 below the 1 s blocking fetch: idle 2.5 s, then a task succeeds" \
    SUCCESS "$(meta_of "$id" 10 | jget status)" "$(worker_log_tail 10)"
expect_eq "... and no timeout was reported" 0 "$(log_count "no answer from Redis")" "$(worker_log_tail 10)"
stop_worker TERM 10

# ---- a Redis that stops answering -------------------------------------------------
start_worker -A "$REL_LIB" -c 1 -b "$REDIS_URL" --result-backend "$RESULT_URL" -n stopped@localhost \
    --broker-transport-option socket_timeout=2 --result-backend-transport-option socket_timeout=2
wait_children 1 20 || not_ok "worker started" "$(worker_log_tail)"
id=$(send rel.pid '[0]')
expect_eq "socket_timeout=2: a task succeeds" SUCCESS "$(meta_of "$id" 10 | jget status)" \
    "$(worker_log_tail 10)"

kill -STOP "$REDIS_PID"
t0=$(date +%s%N)
_noticed() { log_has "$NO_ANSWER"; }
if wait_for 8 _noticed; then
    ms=$((($(date +%s%N) - t0) / 1000000))
    if ((ms >= 1500 && ms <= 6000)); then
        ok "Redis stopped: the idle worker says so after $ms ms ($(grep -m1 -E "$NO_ANSWER" "$WORKER_LOG" | cut -c1-160))"
    else
        not_ok "Redis stopped: the idle worker says so within 2-6 s" "after $ms ms" "$(worker_log_tail 10)"
    fi
else
    not_ok "Redis stopped: the idle worker says 'no answer ... within 2 s (socket_timeout)'" \
        "$(worker_log_tail 15)"
fi
# The child and the control process keep trying to reconnect (each
# attempt: a TCP connect the kernel accepts, then 2 s of silence). By 4 s
# after the first line each has said what failed; 4 s more of attempts
# must add nothing.
sleep 4
n1=$(log_count "no answer from Redis")
k0=$(cpu_ticks $(worker_all_children) "$WORKER_PID")
sleep 4
k1=$(cpu_ticks $(worker_all_children) "$WORKER_PID")
n2=$(log_count "no answer from Redis")
if ((n1 == n2 && n1 <= 6)); then
    ok "said once per episode: $n1 lines from the child and the control process, none more in 4 s of attempts"
else
    not_ok "said once per episode, not once per attempt" "$n1 lines, then $n2 after 4 s" \
        "$(grep -E "no answer from Redis" "$WORKER_LOG" | head -12)"
fi
if ((k1 - k0 <= 20)); then
    ok "while Redis is stopped, the worker does not spin ($(((k1 - k0) * 10)) ms CPU in 4 s)"
else
    not_ok "while Redis is stopped, the worker does not spin" "$(((k1 - k0) * 10)) ms CPU in 4 s"
fi

kill -CONT "$REDIS_PID"
id=$(send rel.pid '[0]')
expect_eq "Redis answers again: a task sent afterwards succeeds" SUCCESS \
    "$(meta_of "$id" 15 | jget status)" "$(worker_log_tail 15)"
if log_has "connecting to the broker works again"; then
    ok "the child reconnected and said so once ($(log_count "works again") 'works again' lines)"
else
    not_ok "the child reconnected and said so" "$(worker_log_tail 15)"
fi

# ---- warm shutdown while Redis is stopped -----------------------------------------
kill -STOP "$REDIS_PID"
sleep 0.5
t0=$(date +%s%N)
stop_worker TERM 20
ms=$((($(date +%s%N) - t0) / 1000000))
if [[ $WORKER_RC == 0 ]] && ((ms <= 10000)); then
    ok "warm shutdown while Redis is stopped: exit 0 after $ms ms (not the old 30 s)"
else
    not_ok "warm shutdown while Redis is stopped ends within a few seconds of socket_timeout" \
        "exit $WORKER_RC after $ms ms" "$(worker_log_tail 15)"
fi
kill -CONT "$REDIS_PID"

check_worker_logs_clean
tap_done
