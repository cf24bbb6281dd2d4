#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_eta_flood.sh (issue 9, point 4): ETA/countdown messages never block
# a child. It used to set aside at most 128 and then wait for the next one in
# place, so an ordinary task behind 300 tasks an hour out waited the hour.
# Now a child holds any number, `inspect scheduled` lists them, ordinary
# tasks keep flowing, and a warm stop puts every held message back.
. "$(dirname "$0")/lib.sh"

start_redis
build_rel_lib early || tap_done
NODE=eta@localhost
start_worker -A "$REL_LIB" -c 1 -b "$REDIS_URL" --result-backend "$REDIS_URL" -n "$NODE"
wait_children 1 20 || not_ok "worker started" "$(worker_log_tail)"

# send_countdown N SECONDS: N tasks from one producer.
send_countdown() {
    "$PY" - "$1" "$2" <<'PY'
import sys
import os
sys.path.insert(0, os.environ["REL_DIR"])
from rel import make_app
app = make_app()
with app.producer_or_acquire() as producer:
    for _ in range(int(sys.argv[1])):
        app.send_task("rel.pid", args=[0], countdown=float(sys.argv[2]), producer=producer)
PY
}
export REL_DIR

send_countdown 300 3600
_drained() { [[ $(queue_len) == 0 ]]; }
wait_for 30 _drained || diag "the 300 countdown tasks were not all taken: $(queue_len) left"
t0=$(date +%s.%N)
id=$(send rel.pid '[0]')
st=$(meta_of "$id" 15 | summary | cut -d' ' -f1)
t1=$(date +%s.%N)
expect_eq "an ordinary task behind 300 tasks an hour out runs" "SUCCESS" "$st" "$(worker_log_tail 5)"
diag "send to result: $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}') s"

n=$("$PY" - <<PY
from celery import Celery
app = Celery(broker="$REDIS_URL")
r = app.control.inspect(destination=["$NODE"], timeout=5).scheduled() or {}
entries = r.get("$NODE", [])
ok = all(e.get("priority") == 6 and e["request"]["name"] == "rel.pid" and e.get("eta") for e in entries)
print(len(entries) if ok else "malformed")
PY
)
expect_eq "inspect scheduled lists all 300 held messages" "300" "$n"

# A second flood due soon: all run, and ordinary tasks sent after them too.
send_countdown 2000 8
id=$(send rel.pid '[0]')
st=$(meta_of "$id" 20 | summary | cut -d' ' -f1)
expect_eq "an ordinary task behind 2000 more countdown tasks runs" "SUCCESS" "$st" \
    "$(worker_log_tail 5)"
_all_ran() { [[ $(redis_cli eval "return #redis.call('keys', 'celery-task-meta-*')" 0) -ge 2002 ]]; }
if wait_for 40 _all_ran; then
    ok "the 2000 countdown tasks ran once due"
else
    not_ok "the 2000 countdown tasks ran once due" "$(redis_cli eval "return #redis.call('keys', 'celery-task-meta-*')" 0) results"
fi

stop_worker
expect_eq "a warm stop puts the 300 held messages back on the queue" "300" "$(queue_len)" \
    "$(worker_log_tail 5)"
expect_eq "and leaves nothing unacked" "0 0" "$(unacked_count)"
check_worker_logs_clean
tap_done
