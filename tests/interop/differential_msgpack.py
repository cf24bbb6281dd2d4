# SPDX-License-Identifier: MIT
"""differential_msgpack.py: differential.py for Celery's msgpack serializer.
A client with task_serializer='msgpack' and accept_content=['json', 'msgpack']
sends the same cases to the Python reference worker and to celeriac, each
configured the same way; results, states and stored meta (decoded, whichever
encoding) must agree, and so must the encoding the meta was stored in.

    differential_msgpack.py run MODE OUT.json          (REDIS_URL, PG_URL)
    differential_msgpack.py compare MODE PY.json C.json

MODE msgpack: result_serializer='msgpack' everywhere (celeriac
--result-serializer msgpack). MODE json: msgpack tasks, Celery's default JSON
results (celeriac's default). Link callbacks and chain steps routed to the
queue 'held', which no worker consumes, are read off it: they must go out as
msgpack messages with the same task, args and kwargs, proving that a worker
publishes in kind. Two cases are celeriac's own (Python differs by design):
an integer above int64 and an application/x-yaml body, each a FAILURE with a
clear reason.
"""
import base64
import json
import os
import sys
import time
import uuid

import msgpack
import psycopg2
import redis

from client import make_app
from differential import case_problems, client_view, self_blanked, strict
import tap

HELD = "held"
LINK_HELD_ID = "0d4c6f1e-0000-4000-8000-0000000000a1"
CHAIN_HELD_ID = "0d4c6f1e-0000-4000-8000-0000000000a2"
CHAIN_FIRST_ID = "0d4c6f1e-0000-4000-8000-0000000000a3"
LINK_RUNS_ID = "0d4c6f1e-0000-4000-8000-0000000000a4"

NESTED = {"s": "caf\u00e9 \"q\" \\ \n\t \U0001F4DA", "i": -12, "f": 0.1, "n": None,
          "b": [True, False], "e": {}, "l": [[], [[]]], "d": {"x": {"y": {"z": [1, 2.5]}}}}

# name -> (task, args, kwargs, options), sent in this order; which modes run it
CASES = [
    ("add_args", "tasks.add", [2, 3], None, {}),
    ("add_kwargs", "tasks.add", None, {"x": 2, "y": 40}, {}),
    ("add_integral_float", "tasks.add", [2.0, 3], None, {}),
    ("add_overflow", "tasks.add", [2 ** 62, 2 ** 62], None, {}),
    ("add_str", "tasks.add", ["a", 1], None, {}),
    ("echo_unicode", "tasks.echo", ["caf\u00e9 \u2603 \U0001F4DA \u00e9\u0301"], None, {}),
    ("echo_nested", "tasks.echo", [NESTED], None, {}),
    ("echo_specials", "tasks.echo", [[float("nan"), float("inf"), float("-inf"), 0.5]], None, {}),
    ("echo_specials_kw", "tasks.echo", None, {"x": {"n": float("nan"), "i": float("-inf")}}, {}),
    ("echo_big_int", "tasks.echo", [2 ** 63 - 1], None, {}),
    ("echo_small_int", "tasks.echo", [-2 ** 63], None, {}),
    ("echo_float", "tasks.echo", [2.0], None, {}),
    ("echo_empty", "tasks.echo", [""], None, {}),
    ("fail", "tasks.fail", ["boom \u2603"], None, {}),
    ("fail_wrong_type", "tasks.fail", [42], None, {}),
    ("unknown_task", "tasks.nosuch", [1, 2], None, {}),
    ("flaky_retry", "tasks.flaky", [2], None, {}),
    ("book_1", "books.get_book_info", [1], None, {}),
    ("book_unknown", "books.get_book_info", [999999], None, {}),
    ("link_runs", "tasks.add", [1, 2], None, {"_link": ("tasks.echo", LINK_RUNS_ID, None)}),
    ("link_held", "tasks.add", [3, 4], None, {"_link": ("tasks.echo", LINK_HELD_ID, HELD)}),
    ("chain_held", None, None, None, {"_chain_held": True}),
    ("chord", None, None, None, {"_chord": True}),
]
JSON_MODE_CASES = {"add_args", "echo_specials", "fail", "flaky_retry", "link_runs", "link_held"}
# celeriac's own answers (Python's differ by design, see the module doc)
BIG_UINT = 2 ** 64 - 1


def msgpack_app(mode):
    app = make_app()
    app.conf.update(task_serializer="msgpack", result_serializer=mode,
                    accept_content=["json", "msgpack"])
    return app


def stored(rds, task_id):
    """The stored meta decoded, its encoding, and its TTL."""
    raw = rds.get("celery-task-meta-" + task_id)
    if raw is None:
        return None, None, None
    if raw[:1] == b"{":
        meta, enc = json.loads(raw), "json"
    else:
        meta, enc = msgpack.unpackb(raw, raw=False), "msgpack"
    return meta, enc, rds.ttl("celery-task-meta-" + task_id)


def send(app, name, task, args, kwargs, opts):
    from celery import chain, chord
    s = app.signature
    if opts.get("_chain_held"):
        chain(s("tasks.add", (2, 3)).set(task_id=CHAIN_FIRST_ID),
              s("tasks.echo").set(task_id=CHAIN_HELD_ID, queue=HELD)).apply_async()
        return app.AsyncResult(CHAIN_FIRST_ID)
    if opts.get("_chord"):
        return chord([s("tasks.add", (1, 1)), s("tasks.add", (2, 2))], s("tasks.echo"))()
    send_opts = {}
    if opts.get("_link"):
        cb, cb_id, queue = opts["_link"]
        sig = s(cb).set(task_id=cb_id)
        if queue:
            sig = sig.set(queue=queue)
        send_opts["link"] = sig
    return app.send_task(task, args=args, kwargs=kwargs, **send_opts)


def raw_envelope(rds, content_type, body):
    """LPUSHes a hand-made task message; returns its id."""
    tid = str(uuid.uuid4())
    env = {"body": base64.b64encode(body).decode(), "content-encoding": "binary",
           "content-type": content_type,
           "headers": {"lang": "py", "task": "tasks.echo", "id": tid, "root_id": tid,
                       "parent_id": None, "group": None, "retries": 0,
                       "timelimit": [None, None], "eta": None, "expires": None},
           "properties": {"correlation_id": tid, "reply_to": "", "delivery_mode": 2,
                          "delivery_info": {"exchange": "", "routing_key": "celery"},
                          "priority": 0, "body_encoding": "base64",
                          "delivery_tag": str(uuid.uuid4())}}
    rds.lpush("celery", json.dumps(env))
    return tid


def held_messages(rds):
    """The messages on the held queue by task id: how they were encoded and what they carry."""
    out = {}
    for raw in rds.lrange(HELD, 0, -1):
        env = json.loads(raw)
        body = base64.b64decode(env["body"])
        ctype = env.get("content-type")
        args, kwargs, _ = (msgpack.unpackb(body, raw=False) if ctype == "application/x-msgpack"
                           else json.loads(body))
        out[env["headers"]["id"]] = {"content-type": ctype,
                                     "content-encoding": env.get("content-encoding"),
                                     "task": env["headers"]["task"], "args": args,
                                     "kwargs": kwargs}
    return out


def state_of(res):
    """res.state, or what stopped the client reading it (meta it cannot decode)."""
    try:
        return res.state
    except Exception as exc:
        return "unreadable: %s" % type(exc).__name__


def cmd_run(mode, out_path):
    app = msgpack_app(mode)
    rds = redis.Redis.from_url(os.environ["REDIS_URL"])
    db = psycopg2.connect(os.environ["PG_URL"])
    db.autocommit = True
    sent = []
    for name, task, args, kwargs, opts in CASES:
        if mode == "json" and name not in JSON_MODE_CASES:
            continue
        sent.append((name, opts, send(app, name, task, args, kwargs, opts)))
    extra = {}
    if mode == "msgpack":
        extra["big_uint"] = app.send_task("tasks.echo", args=[BIG_UINT]).id
        extra["yaml"] = raw_envelope(rds, "application/x-yaml", b"- [2, 3]\n- {}\n- {}\n")
    out = {}
    for name, opts, res in sent:
        rec = {"id": res.id, "client": client_view(res, 20), "state": state_of(res)}
        if opts.get("_link") and not opts["_link"][2]:
            cb = app.AsyncResult(opts["_link"][1])
            rec["callback"] = client_view(cb, 20)
        out[name] = rec
    time.sleep(1.0)
    for name, rec in out.items():
        meta, enc, ttl = stored(rds, rec["id"])
        rec["meta"], rec["encoding"] = meta, enc
        rec["ttl_minutes"] = None if ttl is None or ttl < 0 else round(ttl / 60)
    for name, tid in extra.items():
        deadline = time.monotonic() + 10
        meta = None
        while meta is None and time.monotonic() < deadline:
            meta, enc, _ = stored(rds, tid)
            time.sleep(0.2)
        out["_" + name] = {"meta": meta, "encoding": enc if meta else None}
    out["_held"] = held_messages(rds)
    out["_broker_left"] = [rds.llen("celery"), rds.hlen("unacked"), rds.zcard("unacked_index")]
    with open(out_path, "w") as f:
        json.dump(out, f, indent=1, sort_keys=True)
    return 0


def compare_cases(mode, py, c):
    for name, *_ in CASES:
        if mode == "json" and name not in JSON_MODE_CASES:
            continue
        p, q = py.get(name), c.get(name)
        if p is None or q is None:
            tap.not_ok("%s: recorded in both runs" % name)
            continue
        if name == "chord":  # fresh ids in every run: value, state, status, result
            problems = ["%s: python %s, celeriac %s" % (k, strict(p.get(k)), strict(q.get(k)))
                        for k in ("client", "state") if strict(p.get(k)) != strict(q.get(k))]
            for k in ("status", "result"):
                pv, cv = (p.get("meta") or {}).get(k), (q.get("meta") or {}).get(k)
                if strict(pv) != strict(cv):
                    problems.append("meta[%r]: python %s, celeriac %s" % (k, strict(pv), strict(cv)))
        else:
            problems = case_problems(self_blanked(p), self_blanked(q))
        if strict(p.get("callback")) != strict(q.get("callback")):
            problems.append("callback: python %s, celeriac %s" % (strict(p.get("callback")),
                                                                  strict(q.get("callback"))))
        for run, rec in (("python", p), ("celeriac", q)):
            if rec.get("encoding") != mode:
                problems.append("%s stored the meta as %r, not %s" % (run, rec.get("encoding"), mode))
        summary = (q.get("client") or {}).get("raised") or "value"
        tap.check("%s %s: celeriac matches the Python worker (%s)" % (mode, name, summary),
                  not problems, *problems)


def compare_held(mode, py, c):
    ph, ch = py.get("_held", {}), c.get("_held", {})
    ids = [LINK_HELD_ID] + ([CHAIN_HELD_ID] if mode == "msgpack" else [])
    for tid in ids:
        p, q = ph.get(tid), ch.get(tid)
        tap.check("%s: Python's worker published %s as msgpack" % (mode, tid),
                  p is not None and p["content-type"] == "application/x-msgpack", p)
        tap.check("%s: celeriac publishes %s as Python does (msgpack, same task and args)"
                  % (mode, tid), p is not None and strict(p) == strict(q),
                  "python   %s" % strict(p), "celeriac %s" % strict(q))


def compare_own(c):
    big = c.get("_big_uint") or {}
    meta = big.get("meta") or {}
    exc = meta.get("result") or {}
    tap.check("celeriac refuses an integer above int64 in msgpack with a FAILURE that says so",
              meta.get("status") == "FAILURE" and "does not fit in int64" in strict(exc), big)
    yaml = c.get("_yaml") or {}
    meta = yaml.get("meta") or {}
    tap.check("celeriac still refuses application/x-yaml with a FAILURE (content disallowed)",
              meta.get("status") == "FAILURE" and "content disallowed" in strict(meta.get("result"))
              and "application/x-yaml" in strict(meta.get("result")), yaml)


def cmd_compare(mode, py_path, c_path):
    with open(py_path) as f:
        py = json.load(f)
    with open(c_path) as f:
        c = json.load(f)
    ref = py.get("add_args", {})
    tap.check("%s: reference (Python worker) answered add(2, 3) == 5" % mode,
              ref.get("client") == {"value": 5}, ref)
    for run, rec in (("reference", py), ("celeriac", c)):
        tap.eq("%s: %s left the broker clean (queue, unacked, unacked_index)" % (mode, run),
               [0, 0, 0], rec.get("_broker_left"))
    compare_cases(mode, py, c)
    compare_held(mode, py, c)
    if mode == "msgpack":
        compare_own(c)
    return 0


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "run" and sys.argv[2] in ("msgpack", "json"):
        sys.exit(cmd_run(sys.argv[2], sys.argv[3]))
    if len(sys.argv) == 5 and sys.argv[1] == "compare":
        cmd_compare(sys.argv[2], sys.argv[3], sys.argv[4])
        tap.done()
    print(__doc__, file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main()
