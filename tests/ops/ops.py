# SPDX-License-Identifier: MIT
"""ops.py: the Python side of tests/ops (Debian's celery and redis-py).

    ops.py flow NAME N RATE --out FILE [--args JSON]
                      -> sends N tasks at about RATE a second, ids to FILE
    ops.py tally FILE [--timeout S]
                      -> waits for every id, prints {"total", "status": {..},
                         "value": {..}} as JSON

Environment: REDIS_URL (broker and results).
"""
import argparse
import collections
import json
import os
import sys
import time

import redis


def make_app():
    from celery import Celery
    url = os.environ["REDIS_URL"]
    app = Celery("celeriac_ops", broker=url, backend=url)
    app.conf.update(broker_connection_retry_on_startup=False, task_serializer="json",
                    accept_content=["json"])
    return app


def cmd_flow(ns):
    app = make_app()
    args = json.loads(ns.args)
    t0 = time.monotonic()
    with app.connection_for_write() as conn, open(ns.out, "w") as out:
        producer = app.amqp.Producer(conn)
        for i in range(ns.n):
            out.write(app.send_task(ns.name, args=args, producer=producer).id + "\n")
            out.flush()
            ahead = t0 + (i + 1) / ns.rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
    return 0


def cmd_tally(ns):
    r = redis.Redis.from_url(os.environ["REDIS_URL"])
    with open(ns.file) as f:
        ids = [line.strip() for line in f if line.strip()]
    deadline = time.monotonic() + ns.timeout
    while True:
        ms = []
        for k in range(0, len(ids), 1000):
            ms.extend(r.mget(["celery-task-meta-" + i for i in ids[k:k + 1000]]))
        ms = [json.loads(v) if v is not None else None for v in ms]
        done = sum(1 for m in ms if m and m.get("status") in ("SUCCESS", "FAILURE"))
        if done == len(ids) or time.monotonic() >= deadline:
            break
        time.sleep(0.3)
    status = collections.Counter((m or {}).get("status", "MISSING") for m in ms)
    value = collections.Counter(str(m.get("result")) for m in ms if m and m.get("status") == "SUCCESS")
    print(json.dumps({"total": len(ids), "distinct": len(set(ids)), "status": dict(status),
                      "value": dict(value)}))
    return 0


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("flow")
    f.add_argument("name")
    f.add_argument("n", type=int)
    f.add_argument("rate", type=float)
    f.add_argument("--out", required=True)
    f.add_argument("--args", default="[]")
    t = sub.add_parser("tally")
    t.add_argument("file")
    t.add_argument("--timeout", type=float, default=60)
    ns = p.parse_args()
    return {"flow": cmd_flow, "tally": cmd_tally}[ns.cmd](ns)


if __name__ == "__main__":
    sys.exit(main())
