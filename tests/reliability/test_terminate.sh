#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_terminate.sh (issue 10, remote control): revoke --terminate sends the
# signal asked for (TERM by default, as Celery; it used to be KILL whatever
# was asked), and a task that does not die of it is killed after a grace
# period. Either way the task ends REVOKED and the slot gets a new child.
. "$(dirname "$0")/lib.sh"

start_redis
build_rel_lib || tap_done
NODE=term@localhost
start_worker -A "$REL_LIB" -c 1 -b "$REDIS_URL" --result-backend "$REDIS_URL" -n "$NODE"
wait_children 1 20 || not_ok "worker started" "$(worker_log_tail)"

# terminate ID [SIGNAL]: Celery's revoke(terminate=True[, signal=SIGNAL]).
terminate() {
    "$PY" - "$1" "${2:-}" <<PY
import sys
from celery import Celery
app = Celery(broker="$REDIS_URL")
kw = {"signal": sys.argv[2]} if sys.argv[2] else {}
print(app.control.revoke(sys.argv[1], terminate=True, destination=["$NODE"], reply=True,
                         timeout=2, **kw))
PY
}
_running() { [[ $(queue_len) == 0 ]] && sleep 0.5; }

# ---- the default signal, TERM ------------------------------------------------------------
victim=$(only_child)
id=$(send rel.wedge '[30]')
wait_for 10 _running
t0=$(date +%s.%N)
terminate "$id" >/dev/null
st=$(meta_of "$id" 10 | summary)
took=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
expect_eq "revoke --terminate (default TERM): REVOKED (in $took s)" \
    "REVOKED {\"exc_type\":\"TaskRevokedError\",\"exc_message\":[\"terminated\"],\"exc_module\":\"celery.exceptions\"}" \
    "$st" "$(worker_log_tail 6)"
if log_has "pid $victim\) killed by signal 15"; then
    ok "the child died of SIGTERM, the signal asked for (not SIGKILL)"
else
    not_ok "the child died of SIGTERM, the signal asked for" "$(grep -m2 'killed by signal' "$WORKER_LOG")"
fi
wait_replaced "$victim" 1 10 || not_ok "the slot got a new child" "$(worker_children)"

# ---- a task that does not die of it: KILL after the grace period -------------------------
victim=$(only_child)
id=$(send rel.deaf '[60]')
wait_for 10 _running
t0=$(date +%s.%N)
terminate "$id" SIGTERM >/dev/null
st=$(meta_of "$id" 20 | summary | cut -d' ' -f1)
took=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
expect_eq "a task deaf to TERM is REVOKED all the same (in $took s)" "REVOKED" "$st" \
    "$(worker_log_tail 6)"
if awk -v t="$took" 'BEGIN {exit !(t >= 4 && t < 12)}' && log_has "still running 5 s after terminate"; then
    ok "it was killed after the 5 s grace period ($took s)"
else
    not_ok "it is killed after the 5 s grace period" "took $took s" \
        "$(grep -m2 'still running\|killed by signal' "$WORKER_LOG")"
fi
wait_replaced "$victim" 1 10 || not_ok "the slot got a new child" "$(worker_children)"
id=$(send rel.pid '[0]')
expect_eq "the worker keeps serving" "SUCCESS" "$(meta_of "$id" 10 | summary | cut -d' ' -f1)"
stop_worker
check_worker_logs_clean
tap_done
