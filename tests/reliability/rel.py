# SPDX-License-Identifier: MIT
"""rel.py: the Python side of the reliability tests (Debian's celery 5.2.6,
kombu 5.2.4, redis-py). Sends tasks as an application would, reads results
and the broker's bookkeeping, and plays a kombu consumer where a test needs a
Python process to leave or restore an unacked message.

    rel.py send NAME [--args JSON] [--count N] [--time-limit S] [--soft-time-limit S] [--countdown S]
                     [--queue Q] [--task-id ID] [--expires S]
                                   -> one task id per line
    rel.py roundtrip NAME [--queue Q] [--count N]
                                   -> the worst send-to-result seconds of N tasks
    rel.py bulk NAME N --out FILE [--mod M] [--queues Q1,Q2,...]
                                   -> N tasks NAME(i % M + 1), ids to FILE
                                      (round robin over the queues when given)
    rel.py wait ID... [--timeout S]
                                   -> one stored meta (JSON) per line; "null" if none
    rel.py tally FILE [--timeout S]
                                   -> waits for every id in FILE, prints counts by status
    rel.py orphan [--queue Q]      -> kombu basic_get (records unacked as kombu does),
                                      then os._exit: prints the delivery tag
    rel.py handwrite TAG AGE [--task NAME] [--args JSON] [--priority P]
                                   -> writes an unacked entry as kombu's QoS.append does,
                                      scored now - AGE; prints the task id
    rel.py restore-visible VT      -> kombu QoS.restore_visible with visibility_timeout VT
    rel.py qlen [QUEUE]            -> messages ready in QUEUE (default celery): LLEN on
                                      Redis, a passive queue.declare on RabbitMQ

Environment: REDIS_URL (broker), RESULT_URL (results, default REDIS_URL);
BROKER_URL, when set, is the broker instead of REDIS_URL: amqp://... is
RabbitMQ through py-amqp, where send and bulk publish as Celery does
(persistent, to a durable queue).
"""
import argparse
import base64
import collections
import json
import os
import sys
import time
import uuid

import redis


def broker_url():
    url = os.environ.get("BROKER_URL") or os.environ["REDIS_URL"]
    if url.startswith("amqp://"):
        url = "py" + url  # kombu's py-amqp transport, whatever else is installed
    return url


def result_url():
    return os.environ.get("RESULT_URL", broker_url())


def make_app():
    from celery import Celery
    app = Celery("celeriac_rel", broker=broker_url(), backend=result_url())
    app.conf.update(
        broker_connection_retry_on_startup=False,
        task_serializer="json",
        accept_content=["json"],
        result_expires=86400,
    )
    return app


def cmd_send(ns):
    app = make_app()
    args = json.loads(ns.args) if ns.args is not None else []
    opts = {}
    if ns.time_limit is not None:
        opts["time_limit"] = ns.time_limit
    if ns.soft_time_limit is not None:
        opts["soft_time_limit"] = ns.soft_time_limit
    if ns.countdown is not None:
        opts["countdown"] = ns.countdown
    if ns.queue is not None:
        opts["queue"] = ns.queue
    if ns.task_id is not None:
        opts["task_id"] = ns.task_id
    if ns.expires is not None:
        opts["expires"] = ns.expires  # seconds from now; negative: already expired
    for _ in range(ns.count):
        print(app.send_task(ns.name, args=args, **opts).id, flush=True)
    return 0


def cmd_bulk(ns):
    # One connection of our own, not the pool's: a pooled connection is
    # dropped at exit without the AMQP close, and RabbitMQ then loses the
    # publishes it had not read yet (there are no publisher confirms). On
    # RabbitMQ a passive declare on the same channel after the last publish
    # returns once the server has routed them all; then the connection is
    # closed with the handshake.
    app = make_app()
    queues = ns.queues.split(",") if ns.queues else [None]
    with app.connection_for_write() as conn, open(ns.out, "w") as out:
        producer = app.amqp.Producer(conn)
        for i in range(ns.n):
            q = queues[i % len(queues)]
            res = app.send_task(ns.name, args=[i % ns.mod + 1], producer=producer,
                                **({"queue": q} if q else {}))
            out.write(res.id + "\n")
        if not broker_url().startswith("redis"):
            producer.channel.queue_declare(queues[-1] or app.conf.task_default_queue,
                                           passive=True)
    return 0


def cmd_roundtrip(ns):
    # Seconds from send to a stored result, measured in one process (no
    # interpreter start-up in the figure).
    app = make_app()
    r = redis.Redis.from_url(result_url())
    app.send_task(ns.name, args=[0], queue=ns.queue)  # warm the connection
    worst = 0.0
    for _ in range(ns.count):
        t0 = time.monotonic()
        tid = app.send_task(ns.name, args=[0], queue=ns.queue).id
        while r.get("celery-task-meta-" + tid) is None:
            if time.monotonic() - t0 > ns.timeout:
                print("timeout")
                return 1
            time.sleep(0.002)
        worst = max(worst, time.monotonic() - t0)
    print("%.3f" % worst)
    return 0


def metas(r, ids):
    keys = ["celery-task-meta-" + i for i in ids]
    out = []
    for k in range(0, len(keys), 1000):
        out.extend(r.mget(keys[k:k + 1000]))
    return [json.loads(v) if v is not None else None for v in out]


def cmd_wait(ns):
    r = redis.Redis.from_url(result_url())
    deadline = time.monotonic() + ns.timeout
    got = {}
    while True:
        for i, m in zip(ns.ids, metas(r, ns.ids)):
            if m is not None and m.get("status") in ("SUCCESS", "FAILURE", "REVOKED"):
                got[i] = m
        if len(got) == len(ns.ids) or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    for i in ns.ids:
        print(json.dumps(got.get(i)))
    return 0


def cmd_tally(ns):
    r = redis.Redis.from_url(result_url())
    with open(ns.file) as f:
        ids = [line.strip() for line in f if line.strip()]
    deadline = time.monotonic() + ns.timeout
    while True:
        ms = metas(r, ids)
        done = sum(1 for m in ms if m is not None and m.get("status") in ("SUCCESS", "FAILURE"))
        if done == len(ids) or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    counts = collections.Counter((m or {}).get("status", "MISSING") for m in ms)
    exc = collections.Counter(m["result"].get("exc_type") for m in ms
                              if m and m.get("status") == "FAILURE" and isinstance(m.get("result"), dict))
    print(json.dumps({"total": len(ids), "counts": dict(counts), "exc_types": dict(exc),
                      "distinct_ids": len(set(ids))}))
    return 0


def cmd_orphan(ns):
    # A kombu consumer that takes one message without acking it, then dies
    # without closing its channel (a crash): kombu's QoS.append has recorded
    # it in unacked / unacked_index, and nothing restores it.
    from kombu import Connection
    conn = Connection(broker_url())
    ch = conn.default_channel
    deadline = time.monotonic() + 10
    msg = None
    while msg is None and time.monotonic() < deadline:
        msg = ch.basic_get(ns.queue, no_ack=False)
        if msg is None:
            time.sleep(0.05)
    if msg is None:
        print("no message", file=sys.stderr)
        return 1
    print(msg.delivery_tag, flush=True)
    sys.stdout.flush()
    os._exit(0)


def cmd_handwrite(ns):
    # What kombu 5.2's QoS.append writes for a Celery message (spec 4.5): a
    # ZADD of the delivery time and an HSET of [envelope, exchange, routing_key].
    task_id = str(uuid.uuid4())
    body = json.dumps([json.loads(ns.args), {}, {"callbacks": None, "errbacks": None,
                                                 "chain": None, "chord": None}])
    env = {
        "body": base64.b64encode(body.encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py", "task": ns.task, "id": task_id, "shadow": None, "eta": None,
            "expires": None, "group": None, "group_index": None, "retries": 0,
            "timelimit": [None, None], "root_id": task_id, "parent_id": None,
            "argsrepr": repr(json.loads(ns.args)), "kwargsrepr": "{}",
            "origin": "gen1@rel", "ignore_result": False,
        },
        "properties": {
            "correlation_id": task_id, "reply_to": str(uuid.uuid4()),
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": ns.queue},
            "priority": ns.priority, "body_encoding": "base64", "delivery_tag": ns.tag,
        },
    }
    r = redis.Redis.from_url(broker_url())
    with r.pipeline() as p:
        p.zadd("unacked_index", {ns.tag: time.time() - ns.age})
        p.hset("unacked", ns.tag, json.dumps([env, "", ns.queue]))
        p.execute()
    print(task_id)
    return 0


def cmd_restore_visible(ns):
    from kombu import Connection
    conn = Connection(broker_url(), transport_options={"visibility_timeout": ns.vt})
    ch = conn.default_channel
    ch.qos.restore_visible(interval=1)
    conn.release()
    return 0


def cmd_qlen(ns):
    url = broker_url()
    if url.startswith("redis"):
        print(redis.Redis.from_url(url).llen(ns.queue))
        return 0
    from kombu import Connection
    with Connection(url, connect_timeout=5) as conn:
        print(conn.default_channel.queue_declare(ns.queue, passive=True).message_count)
    return 0


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("send")
    s.add_argument("name")
    s.add_argument("--args")
    s.add_argument("--count", type=int, default=1)
    s.add_argument("--time-limit", type=float)
    s.add_argument("--soft-time-limit", type=float)
    s.add_argument("--countdown", type=float)
    s.add_argument("--queue")
    s.add_argument("--task-id")
    s.add_argument("--expires", type=float)
    rt = sub.add_parser("roundtrip")
    rt.add_argument("name")
    rt.add_argument("--queue")
    rt.add_argument("--count", type=int, default=5)
    rt.add_argument("--timeout", type=float, default=10)
    b = sub.add_parser("bulk")
    b.add_argument("name")
    b.add_argument("n", type=int)
    b.add_argument("--out", required=True)
    b.add_argument("--mod", type=int, default=1000)
    b.add_argument("--queues")
    w = sub.add_parser("wait")
    w.add_argument("ids", nargs="+")
    w.add_argument("--timeout", type=float, default=30)
    t = sub.add_parser("tally")
    t.add_argument("file")
    t.add_argument("--timeout", type=float, default=0)
    o = sub.add_parser("orphan")
    o.add_argument("--queue", default="celery")
    h = sub.add_parser("handwrite")
    h.add_argument("tag")
    h.add_argument("age", type=float)
    h.add_argument("--task", default="tasks.add")
    h.add_argument("--args", default="[2, 3]")
    h.add_argument("--queue", default="celery")
    h.add_argument("--priority", type=int, default=0)
    rv = sub.add_parser("restore-visible")
    rv.add_argument("vt", type=float)
    ql = sub.add_parser("qlen")
    ql.add_argument("queue", nargs="?", default="celery")
    ns = p.parse_args()
    return {"send": cmd_send, "roundtrip": cmd_roundtrip, "bulk": cmd_bulk, "wait": cmd_wait,
            "tally": cmd_tally, "orphan": cmd_orphan, "handwrite": cmd_handwrite,
            "restore-visible": cmd_restore_visible, "qlen": cmd_qlen}[ns.cmd](ns)


if __name__ == "__main__":
    sys.exit(main())
