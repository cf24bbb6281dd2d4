#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_reserved.sh (issue 10, remote control): a task a child has received
# and not started (held back by a rate limit, as Celery's consumer holds
# rate-limited requests) is what `inspect reserved` lists and what
# `query_task` calls "reserved"; once it runs it is active, then gone.
. "$(dirname "$0")/lib.sh"

start_redis
build_rel_lib early || tap_done
NODE=reserved@localhost
start_worker -A "$REL_LIB" -c 1 -b "$REDIS_URL" --result-backend "$REDIS_URL" -n "$NODE"
wait_children 1 20 || not_ok "worker started" "$(worker_log_tail)"

rate_limit "$NODE" 6/m >/dev/null
first=$(send rel.pid '[0]')
meta_of "$first" 10 >/dev/null
second=$(send rel.pid '[7]')
_popped() { [[ $(queue_len) == 0 ]]; }
wait_for 5 _popped || diag "the second task was not popped"
sleep 0.3

inspect() { # what ID
    "$PY" - "$1" "$2" <<PY
import json, sys
from celery import Celery
app = Celery(broker="$REDIS_URL")
i = app.control.inspect(destination=["$NODE"], timeout=2)
r = i.reserved() if sys.argv[1] == "reserved" else i.query_task(sys.argv[2])
print(json.dumps((r or {}).get("$NODE")))
PY
}
got=$(inspect reserved "" | "$PY" -c '
import json, sys
r = json.load(sys.stdin) or []
print(" ".join("%s %s %s %s %s" % (e["id"], e["name"], e["args"], e["acknowledged"], e["time_start"]) for e in r))')
expect_eq "inspect reserved lists the rate-limited task, not acknowledged, not started" \
    "$second rel.pid [7] False None" "$got"
got=$(inspect query "$second" | "$PY" -c '
import json, sys
r = json.load(sys.stdin) or {}
print(" ".join("%s %s" % (k, v[0]) for k, v in r.items()))')
expect_eq "query_task calls it reserved" "$second reserved" "$got"
meta_of "$second" 15 >/dev/null
expect_eq "once it has run, nothing is reserved" "[]" "$(inspect reserved "")"
stop_worker
tap_done
