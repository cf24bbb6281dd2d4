# SPDX-License-Identifier: MIT
"""sql_client.py: Debian's Python Celery client on kombu's SQL transport, for
tests/sql/*.sh. Tasks are sent with send_task() exactly as an application on
broker_url='sqla+...' sends them; results are read from the result backend.

    sql_client.py send NAME [--args JSON] [--each JSON_LIST] [--countdown S]
                        [--expires S] [--queue Q]         -> one task id a line
    sql_client.py chain --each JSON_LIST --queues Q1,Q2   -> tasks.add(a, b) on Q1, then
                                                             tasks.add(c) on Q2, for each
                                                             [a, b, c]: the last step's id
    sql_client.py wait ID... [--timeout S]                -> one JSON line a task:
                                                             {id, state, result}
    sql_client.py kombu-tables                            -> kombu creates its tables
    sql_client.py latency NAME [--args JSON] [--count N]  -> {median, max} seconds

Environment: BROKER_URL (sqla+...), RESULT_URL.
"""
import argparse
import json
import os
import sys
import time

from celery import Celery


def make_app():
    app = Celery("celeriac_sql_tests", broker=os.environ["BROKER_URL"],
                 backend=os.environ.get("RESULT_URL"))
    app.conf.update(
        broker_connection_retry_on_startup=False,
        broker_connection_max_retries=3,
        task_serializer="json",
        accept_content=["json"],
    )
    return app


def cmd_send(app, a):
    calls = json.loads(a.each) if a.each else [json.loads(a.args)] * a.count
    opts = {}
    if a.countdown:
        opts["countdown"] = a.countdown
    if a.expires:
        opts["expires"] = a.expires
    if a.queue:
        opts["queue"] = a.queue
    with app.producer_or_acquire() as producer:
        for args in calls:
            r = app.send_task(a.name, args=args, producer=producer, **opts)
            print(r.id, flush=True)


def cmd_chain(app, a):
    from celery import chain
    q1, q2 = a.queues.split(",")
    for x, y, z in json.loads(a.each):
        r = chain(app.signature("tasks.add", (x, y)).set(queue=q1),
                  app.signature("tasks.add", (z,)).set(queue=q2)).apply_async()
        print(r.id, flush=True)


def cmd_wait(app, a):
    deadline = time.monotonic() + a.timeout
    for tid in a.ids:
        r = app.AsyncResult(tid)
        out = {"id": tid}
        try:
            left = max(0.1, deadline - time.monotonic())
            out["result"] = r.get(timeout=left, propagate=False, interval=0.05)
            out["state"] = r.state
            if r.state == "FAILURE" or isinstance(out["result"], BaseException):
                out["result"] = "%s: %s" % (type(r.result).__name__, r.result)
        except Exception as exc:  # a timeout is an answer here
            out["state"] = "TIMEOUT:%s" % type(exc).__name__
        print(json.dumps(out), flush=True)


def cmd_latency(app, a):
    """Sends one task at a time to an idle worker and reports the median and
    the largest send-to-result time: without a wake-up, each would wait for
    the worker's next poll."""
    times = []
    for i in range(a.count):
        t0 = time.monotonic()
        app.send_task(a.name, args=json.loads(a.args)).get(timeout=10, interval=0.005)
        times.append(time.monotonic() - t0)
        time.sleep(0.05)
    times.sort()
    print(json.dumps({"median": times[len(times) // 2], "max": times[-1]}))


def cmd_kombu_tables(app, _):
    # kombu creates its tables on the channel's first use (metadata.create_all)
    with app.connection_for_write() as conn:
        conn.default_channel.session  # noqa: B018 (the engine, and create_all, on first use)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("send")
    s.add_argument("name")
    s.add_argument("--args", default="[]")
    s.add_argument("--each")
    s.add_argument("--count", type=int, default=1)
    s.add_argument("--countdown", type=float)
    s.add_argument("--expires", type=float)
    s.add_argument("--queue")
    c = sub.add_parser("chain")
    c.add_argument("--each", required=True)
    c.add_argument("--queues", required=True)
    w = sub.add_parser("wait")
    w.add_argument("ids", nargs="+")
    w.add_argument("--timeout", type=float, default=30)
    sub.add_parser("kombu-tables")
    lat = sub.add_parser("latency")
    lat.add_argument("name")
    lat.add_argument("--args", default="[]")
    lat.add_argument("--count", type=int, default=10)
    a = p.parse_args()
    app = make_app()
    {"send": cmd_send, "chain": cmd_chain, "wait": cmd_wait, "kombu-tables": cmd_kombu_tables,
     "latency": cmd_latency}[a.cmd](app, a)


if __name__ == "__main__":
    sys.exit(main())
