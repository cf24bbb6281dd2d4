# SPDX-License-Identifier: MIT
"""client.py: the Python Celery client the integration tests drive celeriac with.

Debian's python3-celery (5.2.6) sends tasks with send_task() exactly as an
application would, waits with AsyncResult.get(), and reads the stored result
meta straight from Redis. One JSON line per task on stdout.

    client.py send NAME [--args JSON | --each JSON_LIST] [--kwargs JSON] [--count N] [--timeout S]
                        [--ignore-result] [--queue Q] [--no-wait]
    client.py meta TASK_ID

Environment: REDIS_URL (broker), RESULT_URL (result backend, default REDIS_URL).
"""
import argparse
import json
import os
import sys
import time

from celery import Celery
import redis


def make_app(broker=None, backend=None):
    """A client app: broker and backend as given, else REDIS_URL and
    RESULT_URL (default REDIS_URL)."""
    broker = broker or os.environ["REDIS_URL"]
    backend = backend or os.environ.get("RESULT_URL", os.environ.get("REDIS_URL"))
    app = Celery("celeriac_tests", broker=broker, backend=backend)
    app.conf.update(
        broker_connection_retry_on_startup=False,
        broker_connection_max_retries=3,
        result_expires=86400,
        task_serializer="json",
        accept_content=["json"],
    )
    return app


def stored_meta(task_id):
    url = os.environ.get("RESULT_URL", os.environ["REDIS_URL"])
    r = redis.Redis.from_url(url)
    raw = r.get("celery-task-meta-" + task_id)
    if raw is None:
        return None, None
    ttl = r.ttl("celery-task-meta-" + task_id)
    return json.loads(raw), ttl


def outcome(res, timeout, wait=True):
    """What the client saw for one AsyncResult, as a dict."""
    out = {"id": res.id}
    if wait:
        t0 = time.monotonic()
        try:
            value = res.get(timeout=timeout)
            out["ok"] = True
            out["value"] = value
        except Exception as exc:  # the task's exception, rebuilt by Celery, or a timeout
            out["ok"] = False
            out["raised"] = type(exc).__name__
            out["raised_module"] = type(exc).__module__
            out["raised_args"] = [a if isinstance(a, (int, float, str, bool, type(None)))
                                  else repr(a) for a in getattr(exc, "args", ())]
        out["seconds"] = round(time.monotonic() - t0, 3)
        out["state"] = res.state
    meta, ttl = stored_meta(res.id)
    out["meta"] = meta
    out["ttl"] = ttl
    return out


def cmd_send(ns):
    app = make_app()
    args = json.loads(ns.args) if ns.args is not None else None
    kwargs = json.loads(ns.kwargs) if ns.kwargs is not None else None
    opts = {}
    if ns.queue:
        opts["queue"] = ns.queue
    if ns.ignore_result:
        opts["ignore_result"] = True
    if ns.each is not None:
        results = [app.send_task(ns.name, args=a, kwargs=kwargs, **opts) for a in json.loads(ns.each)]
    else:
        results = [app.send_task(ns.name, args=args, kwargs=kwargs, **opts) for _ in range(ns.count)]
    for res in results:
        if ns.no_wait:
            print(json.dumps({"id": res.id}), flush=True)
        elif ns.ignore_result:
            # Nothing will come back: give the worker time to run it, then look.
            print(json.dumps(outcome(res, ns.timeout, wait=False)), flush=True)
        else:
            print(json.dumps(outcome(res, ns.timeout)), flush=True)
    return 0


def cmd_meta(ns):
    meta, ttl = stored_meta(ns.task_id)
    print(json.dumps({"id": ns.task_id, "meta": meta, "ttl": ttl}))
    return 0


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("send")
    s.add_argument("name")
    s.add_argument("--args")
    s.add_argument("--kwargs")
    s.add_argument("--count", type=int, default=1)
    s.add_argument("--each", help="JSON list of args lists: one task per element")
    s.add_argument("--timeout", type=float, default=10)
    s.add_argument("--queue")
    s.add_argument("--ignore-result", action="store_true")
    s.add_argument("--no-wait", action="store_true")
    m = sub.add_parser("meta")
    m.add_argument("task_id")
    ns = p.parse_args()
    return {"send": cmd_send, "meta": cmd_meta}[ns.cmd](ns)


if __name__ == "__main__":
    sys.exit(main())
