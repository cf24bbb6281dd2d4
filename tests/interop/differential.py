# SPDX-License-Identifier: MIT
"""differential.py: one client script, two workers. `run` sends the same cases
to whatever worker consumes BROKER_URL (default REDIS_URL; Redis or RabbitMQ)
and records what the Python client saw and what was stored in the result
backend (REDIS_URL; on kombu's SQL transport, sqla+..., too); `compare` requires the Python reference worker
(pyworker/pyworker.py) and celeriac to agree on every case.

    differential.py run OUT.json          (BROKER_URL, REDIS_URL, PG_URL)
    differential.py left OUT.json         (BROKER_URL; AMQP or SQL, after the worker stopped)
    differential.py compare PY.json C.json

Compared: the client's view (value, or exception class, module and args), the
state, the stored meta's keys and values except date_done, traceback and
task_id (which must equal the id in each run), the key's TTL (to the minute),
and for ignore_result cases that no key was written. On RabbitMQ also the
task messages each worker published where no worker consumes them (a link
callback and a chain step routed to queue diff.held, the retries of a task
sent through exchange diff.x, copied to diff.tap): exchange, routing key,
properties, headers and body, ids as the case they belong to. `left` counts
what is still in the queue once the worker is gone (unacked deliveries come
back then) and deletes what the run declared, so the next run starts clean.
On kombu's SQL transport (sqla+postgresql://, one broker database per run)
`left` counts the rows of kombu_message by kind: ready, claimed by celeriac
(a negative version), and claimed by kombu (a positive version: kombu never
deletes a row its consumer acked), and lists the queues in kombu_queue; the
link callback and the chain step are read (and deleted) from the rows of
diff.held at the end of `run`.
"""
import json
import os
import re
import sys
import time

import psycopg2
import redis

from client import make_app, stored_meta
import tap

# name -> (task, args, kwargs, options). The order is the sending order.
CASES = [
    ("ignored_add", "tasks.add", [20, 22], None, {"ignore_result": True}),
    ("ignored_book", "books.get_book_info", [3], None, {"ignore_result": True}),
    ("add_args", "tasks.add", [2, 3], None, {}),
    ("add_kwargs", "tasks.add", None, {"x": 2, "y": 3}, {}),
    ("add_mixed", "tasks.add", [2], {"y": 40}, {}),
    ("add_negative", "tasks.add", [-7, 3], None, {}),
    ("add_integral_float", "tasks.add", [2.0, 3], None, {}),
    ("add_fraction", "tasks.add", [2.5, 3], None, {}),
    ("add_str", "tasks.add", ["a", 1], None, {}),
    ("add_bool", "tasks.add", [True, 1], None, {}),
    ("add_null", "tasks.add", [None, 1], None, {}),
    ("add_list_kw", "tasks.add", None, {"x": [1], "y": 2}, {}),
    ("add_missing_y", "tasks.add", [1], None, {}),
    ("add_no_args", "tasks.add", None, None, {}),
    ("add_overflow", "tasks.add", [2 ** 62, 2 ** 62], None, {}),
    ("add_int64_edge", "tasks.add", [2 ** 63 - 2, 1], None, {}),
    ("book_1", "books.get_book_info", [1], None, {}),
    ("book_kw", "books.get_book_info", None, {"book_id": 2}, {}),
    ("book_unknown", "books.get_book_info", [999999], None, {}),
    ("book_negative", "books.get_book_info", [-1], None, {}),
    ("book_str", "books.get_book_info", ["1"], None, {}),
    ("book_missing_arg", "books.get_book_info", [], None, {}),
    ("book_null_title", "books.get_book_info", [7], None, {}),
    ("book_unicode_title", "books.get_book_info", [8], None, {}),
    ("unknown_task", "tasks.nosuch", [1, 2], None, {}),
    ("fail", "tasks.fail", ["boom \u2603"], None, {}),
    ("fail_wrong_type", "tasks.fail", [42], None, {}),
    ("echo_nested", "tasks.echo", [{"s": "caf\u00e9 \"q\" \\ \n\t", "i": -12, "f": 0.1, "n": None,
                                    "b": [True, False], "e": {}, "l": [[], [[]]]}], None, {}),
    ("echo_null", "tasks.echo", [None], None, {}),
    ("echo_big_int", "tasks.echo", [2 ** 63 - 1], None, {}),
    ("echo_kw", "tasks.echo", None, {"x": "kw"}, {}),
    # Python's json writes NaN and Infinity; they must come back as written.
    ("echo_specials", "tasks.echo", [[float("nan"), float("inf"), float("-inf"), 0.5]], None, {}),
    ("echo_specials_kw", "tasks.echo", None, {"x": {"n": float("nan")}}, {}),
    ("sleep_short", "tasks.sleep", [0.2], None, {}),
    ("sleep_negative", "tasks.sleep", [-1], None, {}),
    ("countdown", "tasks.add", [1, 1], None, {"countdown": 0.5}),
    ("priority", "tasks.add", [2, 2], None, {"priority": 5}),
    # two retries (countdown 0.1): the retry message goes back where the task came from
    ("flaky_retry", "tasks.flaky", [2], None, {}),
    # Protocol 1 (task_protocol=1, as celery-node and gocelery send): the
    # same tasks, the same answers.
    ("p1_add", "tasks.add", [2, 3], None, {"_protocol": 1}),
    ("p1_add_kwargs", "tasks.add", None, {"x": 2, "y": 40}, {"_protocol": 1}),
    ("p1_fail", "tasks.fail", ["boom"], None, {"_protocol": 1}),
    ("p1_echo", "tasks.echo", [{"a": [1, None, "\u2603"]}], None, {"_protocol": 1}),
    ("p1_countdown", "tasks.add", [1, 1], None, {"_protocol": 1, "countdown": 0.5}),
    ("p1_unknown", "tasks.nosuch", [1], None, {"_protocol": 1}),
    ("p1_ignored", "tasks.add", [1, 2], None, {"_protocol": 1, "ignore_result": True}),
    # link callbacks are recorded in the parent's children (fixed callback
    # ids, so the two runs store the same JSON)
    ("link_one", "tasks.add", [1, 2], None,
     {"_link": [("tasks.echo", "0d4c6f1e-0000-4000-8000-00000000000a")]}),
    ("link_two", "tasks.add", [2, 2], None,
     {"_link": [("tasks.echo", "0d4c6f1e-0000-4000-8000-00000000000b"),
                ("tasks.echo", "0d4c6f1e-0000-4000-8000-00000000000c")]}),
    # Canvas built with Celery's own primitives (cv_*: the ids differ in
    # every run, so the client's view, the state and the stored status and
    # result are compared).
    ("cv_chain_group_echo", None, None, None, {"_canvas": "chain_group_echo"}),
    ("cv_group_group", None, None, None, {"_canvas": "group_group"}),
    ("cv_chain_chord", None, None, None, {"_canvas": "chain_chord"}),
    ("cv_chain_chain", None, None, None, {"_canvas": "chain_chain"}),
    ("cv_link_group", None, None, None, {"_canvas": "link_group"}),
    ("cv_link_chord", None, None, None, {"_canvas": "link_chord"}),
    ("cv_chord_nested_group", None, None, None, {"_canvas": "chord_nested_group"}),
    ("cv_link_chord_nested", None, None, None, {"_canvas": "link_chord_nested"}),
    # RabbitMQ (and, but for the exchange case, kombu's SQL transport): what
    # a worker publishes, read off queues no worker consumes (see the module
    # doc). A link callback with priority and
    # expires to a queue that does not exist yet (the publisher declares it);
    # a chain step; a task sent through exchange diff.x that retries once
    # (back through diff.x with its routing key and priority, as Celery's
    # Task.signature_from_request does).
    ("amqp_link_held", "tasks.add", [3, 4], None,
     {"_only": ("amqp", "sql"), "_link": [("tasks.echo", "0d4c6f1e-0000-4000-8000-0000000000b1",
                                  {"queue": "diff.held", "priority": 2, "expires": 600})]}),
    ("amqp_chain_held", None, None, None, {"_only": ("amqp", "sql"), "_chain_held": True}),
    ("amqp_retry_exchange", "tasks.flaky", [1], None,
     {"_only": "amqp", "exchange": "diff.x", "routing_key": "diff.rk", "priority": 3}),
]

# Cases that cannot apply on a broker: name -> (broker, why). Printed as
# "# SKIP" lines by compare; an "_only" case is skipped on the other broker.
# None on AMQP: no case here needs remote control or events, and the one
# Redis-only check (the queue, unacked hash and index left behind) has an
# AMQP form (`left`).
# On kombu's SQL transport the held cases read the rows published to
# diff.held instead.
SKIPS = {"amqp_retry_exchange": ("sql", "kombu's SQL transport keeps exchanges and bindings in "
                                        "each process's memory: a task sent through exchange "
                                        "diff.x reaches no table another process reads")}
ONLY_WHY = {"amqp": "reads AMQP exchanges, queues and message properties",
            ("amqp", "sql"): "reads the messages a worker published to a queue no worker "
                             "consumes (on RabbitMQ, or in kombu's SQL tables)"}

CHAIN_FIRST_ID = "0d4c6f1e-0000-4000-8000-0000000000b2"
CHAIN_HELD_ID = "0d4c6f1e-0000-4000-8000-0000000000b3"
HELD = "diff.held"          # routed to, consumed by no worker
TAP = "diff.tap"            # bound to diff.x as celery is: a copy of what goes through it
TAP_EXCHANGE, TAP_KEY = "diff.x", "diff.rk"


def build_canvas(app, which):
    """Applies one canvas; returns the result the application holds."""
    from celery import chain, chord, group
    s = app.signature
    if which == "chain_group_echo":
        return chain(s("tasks.add", (1, 1)), group(s("tasks.add", (1,)), s("tasks.add", (2,))),
                     s("tasks.echo"))()
    if which == "group_group":
        return (group(s("tasks.add", (1, 1)), s("tasks.add", (2, 2)))
                | group(s("tasks.echo"), s("tasks.echo")))()
    if which == "chain_chord":
        return chain(s("tasks.add", (2, 2)),
                     chord([s("tasks.add", (10,)), s("tasks.add", (20,))], s("tasks.echo")))()
    if which == "chord_nested_group":
        # a chord header member that is itself a group, applied by the worker
        return chain(s("tasks.add", (2, 2)),
                     chord([s("tasks.add", (10,)),
                            group(s("tasks.add", (20,)), s("tasks.add", (30,)))],
                           s("tasks.echo")))()
    if which == "chain_chain":
        return chain(s("tasks.add", (1, 1)), chain(s("tasks.add", (1,)), s("tasks.add", (1,))),
                     s("tasks.echo"))()
    if which == "link_group":
        g = group(s("tasks.echo"), s("tasks.echo"))
        g.freeze()
        app.send_task("tasks.add", args=[3, 4], link=g)
        return g
    if which == "link_chord":
        c = chord([s("tasks.add", (1,)), s("tasks.add", (2,))], s("tasks.echo"))
        res = c.freeze()
        app.send_task("tasks.add", args=[5, 5], link=c)
        return res
    if which == "link_chord_nested":
        # sent unfrozen: the worker meets the nested group in the header
        from celery.result import AsyncResult
        from celery.utils import uuid
        body_id = uuid()
        c = chord([s("tasks.add", (1,)), group(s("tasks.add", (2,)), s("tasks.add", (3,)))],
                  s("tasks.echo").set(task_id=body_id))
        app.send_task("tasks.add", args=[5, 5], link=c)
        return AsyncResult(body_id, app=app)
    raise ValueError(which)

# Fields not compared: they legitimately differ between two runs.
VOLATILE = {"date_done", "traceback", "task_id"}


def client_view(res, timeout):
    try:
        value = res.get(timeout=timeout)
        return {"value": value}
    except Exception as exc:
        return {"raised": type(exc).__name__, "module": type(exc).__module__,
                "args": [a if isinstance(a, (str, int, float, bool, type(None))) else repr(a)
                         for a in exc.args]}


def broker_url():
    return os.environ.get("BROKER_URL") or os.environ["REDIS_URL"]


def broker_kind(url):
    scheme = url.split("://", 1)[0]
    if scheme.startswith(("sqla+", "sqlalchemy+")):
        return "sql"
    return "amqp" if scheme in ("amqp", "amqps", "pyamqp") else "redis"


def skipped(name, opts, kind):
    """Why case name does not run on broker kind, or None."""
    on, why = SKIPS.get(name, (None, None))
    if on == kind:
        return why
    only = opts.get("_only")
    if isinstance(only, str) and only != kind:
        return "%s only: %s" % (only, ONLY_WHY[only])
    if isinstance(only, tuple) and kind not in only:
        return "%s only: %s" % (" and ".join(only), ONLY_WHY[only])
    return None


# ---- RabbitMQ: what the workers publish, read where no worker consumes ----
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")


def labeled(v, ids):
    """v with every id the run knows as its label, any other UUID as
    "<uuid>" and ISO times as "<time>": what must agree between two runs."""
    if isinstance(v, dict):
        return {k: labeled(x, ids) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [labeled(x, ids) for x in v]
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    if isinstance(v, str):
        if v in ids:
            return ids[v]
        if UUID_RE.match(v):
            return "<uuid>"
        if TIME_RE.match(v):
            return "<time>"
    return v


def amqp_setup(conn):
    """Exchange diff.x, bound to celery (declared as Celery declares it) and
    to diff.tap with the same routing key. diff.held is left undeclared."""
    from kombu import Exchange, Queue
    ch = conn.default_channel
    Queue("celery", Exchange("celery"), "celery")(ch).declare()
    x = Exchange(TAP_EXCHANGE, "direct", durable=True)
    Queue(TAP, x, TAP_KEY)(ch).declare()
    ch.queue_bind(queue="celery", exchange=TAP_EXCHANGE, routing_key=TAP_KEY)


def amqp_record(m, ids):
    props = dict(m.properties)
    headers = props.pop("application_headers", None) or {}
    if isinstance(headers.get("origin"), str) and "@" in headers["origin"]:
        headers["origin"] = "<origin>"  # gen<pid>@host, celeriac<pid>@host
    if "expiration" in props:  # ms left when published: to the second
        props["expiration"] = "%ds" % round(int(props["expiration"]) / 1000)
    body = m.body
    try:
        body = json.loads(body)
    except ValueError:
        body = repr(body)
    return labeled({"exchange": m.delivery_info.get("exchange"),
                    "routing_key": m.delivery_info.get("routing_key"),
                    "properties": props, "headers": headers, "body": body}, ids)


def amqp_published(conn, ids):
    """Every message on diff.held and diff.tap (consumed), labeled."""
    from amqp.exceptions import NotFound
    out = {}
    ch = conn.channel()
    for q in (HELD, TAP):
        msgs = []
        try:
            while True:
                m = ch.basic_get(q, no_ack=True)
                if m is None:
                    break
                msgs.append(amqp_record(m, ids))
        except NotFound:
            out[q] = "no such queue"
            ch = conn.channel()
            continue
        out[q] = sorted(msgs, key=strict)
    ch.close()
    return out


def sql_published(ids):
    """kombu's SQL transport: the rows published to diff.held as records
    like amqp_record's (deleted once read, as basic_get consumes)."""
    import base64
    import sqlalchemy
    engine = sqlalchemy.create_engine(broker_url().split("+", 1)[1])
    msgs = []
    with engine.begin() as db:
        rows = db.execute(sqlalchemy.text(
            "DELETE FROM kombu_message WHERE queue_id ="
            " (SELECT id FROM kombu_queue WHERE name = :q) RETURNING payload"), {"q": HELD})
        for (payload,) in rows:
            env = json.loads(payload)
            props = dict(env.get("properties") or {})
            info = props.pop("delivery_info", None) or {}
            props.pop("delivery_tag", None)  # a fresh uuid each message
            if "expiration" in props:  # ms left when published: to the second
                props["expiration"] = "%ds" % round(int(props["expiration"]) / 1000)
            props["content_type"] = env.get("content-type")
            props["content_encoding"] = env.get("content-encoding")
            headers = env.get("headers") or {}
            if isinstance(headers.get("origin"), str) and "@" in headers["origin"]:
                headers["origin"] = "<origin>"
            body = env.get("body")
            if props.get("body_encoding") == "base64":
                body = base64.b64decode(body)
            try:
                body = json.loads(body)
            except (TypeError, ValueError):
                body = repr(body)
            msgs.append(labeled({"exchange": info.get("exchange"),
                                 "routing_key": info.get("routing_key"),
                                 "properties": props, "headers": headers, "body": body}, ids))
    engine.dispose()
    return {HELD: sorted(msgs, key=strict)}


def sql_left():
    """kombu's tables after the worker stopped: the rows of kombu_message by
    kind, and the queues in kombu_queue."""
    import sqlalchemy
    url = broker_url()
    engine = sqlalchemy.create_engine(url.split("+", 1)[1])
    with engine.connect() as db:
        rows = db.execute(sqlalchemy.text(
            "SELECT count(*) FILTER (WHERE visible),"
            "       count(*) FILTER (WHERE NOT visible AND version < 0),"
            "       count(*) FILTER (WHERE NOT visible AND version > 0)"
            "  FROM kombu_message")).fetchone()
        queues = [r[0] for r in db.execute(sqlalchemy.text(
            "SELECT name FROM kombu_queue ORDER BY name"))]
        ready = [json.loads(r[0]).get("headers", {}) for r in db.execute(sqlalchemy.text(
            "SELECT payload FROM kombu_message WHERE visible ORDER BY id"))]
    engine.dispose()
    return {"ready": rows[0], "celeriac_claimed": rows[1], "kombu_claimed": rows[2],
            "queues": queues,
            "ready_tasks": ["%s[%s]" % (h.get("task"), h.get("id")) for h in ready]}


def cmd_left(out_path):
    """AMQP, after the worker stopped: the messages left in each queue the
    run used (its unacked deliveries are back by now), then deletes them and
    the exchanges, so the next run declares everything itself."""
    import kombu
    from amqp.exceptions import NotFound
    with open(out_path) as f:
        out = json.load(f)
    if broker_kind(broker_url()) == "sql":
        out["_broker_left"] = sql_left()
        with open(out_path, "w") as f:
            json.dump(out, f, indent=1, sort_keys=True)
        return 0
    left = {}
    with kombu.Connection(broker_url()) as conn:
        ch = conn.channel()
        for q in ("celery", HELD, TAP, TAP_KEY):
            try:
                left[q] = ch.queue_declare(queue=q, passive=True).message_count
                ch.queue_delete(queue=q)
            except NotFound:
                ch = conn.channel()
        for x in ("celery", TAP_EXCHANGE):
            ch.exchange_delete(exchange=x)
    out["_broker_left"] = left
    with open(out_path, "w") as f:
        json.dump(out, f, indent=1, sort_keys=True)
    return 0


def send_case(app, app_v1, name, task, args, kwargs, opts):
    if opts.get("_canvas"):
        return build_canvas(app, opts["_canvas"])
    if opts.get("_chain_held"):
        from celery import chain
        s = app.signature
        chain(s("tasks.add", (2, 3)).set(task_id=CHAIN_FIRST_ID, priority=4),
              s("tasks.echo").set(task_id=CHAIN_HELD_ID, queue=HELD)).apply_async()
        return app.AsyncResult(CHAIN_FIRST_ID)
    sender = app_v1 if opts.get("_protocol") == 1 else app
    send_opts = {k: v for k, v in opts.items() if not k.startswith("_")}
    if opts.get("_link"):
        send_opts["link"] = [app.signature(n).set(task_id=i, **(more[0] if more else {}))
                             for n, i, *more in opts["_link"]]
    return sender.send_task(task, args=args, kwargs=kwargs, **send_opts)


def cmd_run(out_path):
    broker, kind = broker_url(), broker_kind(broker_url())
    app = make_app(broker=broker, backend=os.environ["REDIS_URL"])
    app_v1 = make_app(broker=broker, backend=os.environ["REDIS_URL"])
    app_v1.conf.task_protocol = 1
    rds = redis.Redis.from_url(os.environ["REDIS_URL"])
    db = psycopg2.connect(os.environ["PG_URL"])
    db.autocommit = True
    with db.cursor() as cur:
        # Same starting rows for both runs: a NULL title and a non-ASCII one.
        cur.execute("UPDATE books SET title = NULL WHERE id = 7")
        cur.execute("UPDATE books SET title = %s WHERE id = 8", ("Caf\u00e9 \u2603 \U0001F4DA",))
    if kind == "amqp":
        with app.connection_for_write() as conn:
            amqp_setup(conn)
    sent = []
    ids = {app.thread_oid: "<client oid>", CHAIN_HELD_ID: "<amqp_chain_held.step>"}
    for name, task, args, kwargs, opts in CASES:
        if skipped(name, opts, kind):
            continue
        res = send_case(app, app_v1, name, task, args, kwargs, opts)
        sent.append((name, opts, res))
        ids.setdefault(res.id, "<%s>" % name)
        for n, i, *_ in opts.get("_link", ()):
            ids.setdefault(i, "<%s.link>" % name)
    out = {"_broker": kind}
    for name, opts, res in sent:
        rec = {"id": res.id}
        if opts.get("ignore_result"):
            rec["client"] = None
        else:
            rec["client"] = client_view(res, 20)
            rec["state"] = getattr(res, "state", None)
        out[name] = rec
    # The ignore_result cases were sent first, so they have run by now; give
    # a late writer a moment anyway before looking for their keys.
    time.sleep(1.0)
    for name, rec in out.items():
        if name.startswith("_"):
            continue
        meta, ttl = stored_meta(rec["id"])
        rec["meta"] = meta
        rec["ttl_minutes"] = None if ttl is None or ttl < 0 else round(ttl / 60)
    with db.cursor() as cur:
        cur.execute("SELECT fetched_at IS NOT NULL FROM books WHERE id = 3")
        out["_ignored_book_ran"] = cur.fetchone()[0]
    if kind == "amqp":
        with app.connection_for_read() as conn:
            out["_published"] = amqp_published(conn, ids)
        # _broker_left: `left`, once the worker has stopped
    elif kind == "sql":
        out["_published"] = sql_published(ids)
        # _broker_left: `left`, once the worker has stopped
    else:
        out["_broker_left"] = [rds.llen("celery"), rds.hlen("unacked"), rds.zcard("unacked_index")]
    with open(out_path, "w") as f:
        json.dump(out, f, indent=1, sort_keys=True)
    return 0


def self_blanked(rec):
    """rec with a parent_id naming the task itself (a retried task's) as
    "<self>": the ids differ between runs, the relation must not."""
    meta = rec.get("meta")
    if isinstance(meta, dict) and meta.get("parent_id") == rec.get("id"):
        rec = dict(rec, meta=dict(meta, parent_id="<self>"))
    return rec


def group_ids_blanked(children):
    """children with each group's own id (fresh in every run) blanked:
    a group's tuple is [[id, parent], [member tuples]]."""
    if not isinstance(children, list):
        return children
    out = []
    for t in children:
        if (isinstance(t, list) and len(t) == 2 and isinstance(t[1], list)
                and isinstance(t[0], list) and t[0]):
            t = [["<group>"] + t[0][1:], group_ids_blanked(t[1])]
        out.append(t)
    return out


def last_line(text):
    lines = [l for l in text.splitlines() if l.strip()]
    return lines[-1] if lines else ""


def strict(v):
    """JSON text that tells 5 from 5.0 and True from 1."""
    return json.dumps(v, sort_keys=True)


def case_problems(p, q):
    """What differs between two runs' records of one case: the client's
    view, the state, and the stored meta (keys, values except VOLATILE,
    task_id, date_done, the traceback's last line, the TTL)."""
    problems = []
    if strict(p.get("client")) != strict(q.get("client")):
        problems.append("client saw:  python %s" % strict(p.get("client")))
        problems.append("             celeriac %s" % strict(q.get("client")))
    if p.get("state") != q.get("state"):
        problems.append("state: python %r, celeriac %r" % (p.get("state"), q.get("state")))
    pm, cm = p.get("meta"), q.get("meta")
    if (pm is None) != (cm is None):
        problems.append("stored: python %s, celeriac %s" % (
            "nothing" if pm is None else "a result", "nothing" if cm is None else "a result"))
    elif pm is not None:
        if sorted(pm) != sorted(cm):
            problems.append("meta keys: python %s, celeriac %s" % (sorted(pm), sorted(cm)))
        for k in sorted(set(pm) | set(cm)):
            if k in VOLATILE:
                continue
            pv, cv = pm.get(k), cm.get(k)
            if k == "children":
                pv, cv = group_ids_blanked(pv), group_ids_blanked(cv)
            if strict(pv) != strict(cv):
                problems.append("meta[%r]: python %s" % (k, strict(pm.get(k))))
                problems.append("%s  celeriac %s" % (" " * len(k), strict(cm.get(k))))
        for run, meta, rec in (("python", pm, p), ("celeriac", cm, q)):
            if meta.get("task_id") != rec["id"]:
                problems.append("%s stored task_id %r for %r" % (run, meta.get("task_id"), rec["id"]))
            dd = meta.get("date_done")
            if meta.get("status") in ("SUCCESS", "FAILURE") and not (
                    isinstance(dd, str) and re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", dd)):
                problems.append("%s date_done %r" % (run, dd))
        # A FAILURE carries a traceback whose last line is what Python
        # prints for the exception ("ValueError: boom").
        if pm.get("status") == "FAILURE":
            ptb, ctb = pm.get("traceback"), cm.get("traceback")
            if not isinstance(ctb, str) or not ctb.startswith("Traceback"):
                problems.append("celeriac traceback %r" % (ctb,))
            elif isinstance(ptb, str) and last_line(ptb) != last_line(ctb):
                problems.append("traceback ends: python %r" % last_line(ptb))
                problems.append("              celeriac %r" % last_line(ctb))
        if p.get("ttl_minutes") != q.get("ttl_minutes"):
            problems.append("ttl minutes: python %r, celeriac %r" % (p.get("ttl_minutes"),
                                                                     q.get("ttl_minutes")))
    return problems


def cmd_compare(py_path, c_path):
    with open(py_path) as f:
        py = json.load(f)
    with open(c_path) as f:
        c = json.load(f)

    # The reference itself must be sane, or agreeing with it proves nothing.
    ref = py.get("add_args", {})
    tap.check("reference (Python worker) answered add(2, 3) == 5",
              ref.get("client") == {"value": 5}, ref)
    tap.check("reference raised LookupError for an unknown book",
              py.get("book_unknown", {}).get("client", {}).get("raised") == "LookupError",
              py.get("book_unknown"))
    tap.check("reference ran the ignore_result get_book_info", py.get("_ignored_book_ran") is True)
    tap.eq("celeriac ran the ignore_result get_book_info", True, c.get("_ignored_book_ran"))
    kind = py.get("_broker", "redis")
    tap.eq("both runs used the same broker", kind, c.get("_broker", "redis"))
    if kind == "amqp":
        # counted after each worker stopped: unacked deliveries are back by then
        for run, rec in (("reference", py), ("celeriac", c)):
            left = rec.get("_broker_left") or {}
            tap.check("%s left no message in any queue the run used" % run,
                      left and not any(left.values()), left)
        tap.eq("celeriac declared the queues Python's worker declared",
               sorted(py.get("_broker_left") or {}), sorted(c.get("_broker_left") or {}))
    elif kind == "sql":
        pl, cl = py.get("_broker_left") or {}, c.get("_broker_left") or {}
        # kombu's consumer only hides the rows it acks; celeriac's ack deletes
        tap.check("reference (kombu) left its acked rows, hidden with a positive version",
                  (pl.get("kombu_claimed") or 0) > 0, pl)
        tap.eq("celeriac left no row in kombu_message (ready, its claims, kombu's)",
               [0, 0, 0], [cl.get("ready"), cl.get("celeriac_claimed"), cl.get("kombu_claimed")],
               cl)
        if pl.get("ready"):
            # Celery's worker on this transport leaves the acks of its last
            # deliveries (and of its ETA tasks) unsent, and kombu's warm
            # shutdown then restores them as new rows: ready to run again.
            tap.diag("known difference: the reference's warm shutdown restored %d message(s) "
                     "it had run, as new ready rows: %s"
                     % (pl["ready"], " ".join(pl.get("ready_tasks") or [])))
        tap.eq("celeriac created the queues the reference created in kombu_queue",
               pl.get("queues"), cl.get("queues"))
    else:
        tap.eq("reference left the broker clean (queue, unacked, unacked_index)", [0, 0, 0],
               py.get("_broker_left"))
        tap.eq("celeriac left the broker clean (queue, unacked, unacked_index)", [0, 0, 0],
               c.get("_broker_left"))

    for name, _, _, _, opts in CASES:
        why = skipped(name, opts, kind)
        if why:
            tap.diag("SKIP %s on %s: %s" % (name, kind, why))
            continue
        p, q = py.get(name), c.get(name)
        if p is None or q is None:
            tap.not_ok("%s: recorded in both runs" % name)
            continue
        problems = []
        if name.startswith("cv_"):
            # the ids differ between runs: the value, the state, and what was stored
            for k in ("client", "state"):
                if strict(p.get(k)) != strict(q.get(k)):
                    problems.append("%s: python %s, celeriac %s" % (k, strict(p.get(k)),
                                                                    strict(q.get(k))))
            pm, cm = p.get("meta") or {}, q.get("meta") or {}
            for k in ("status", "result"):
                if strict(pm.get(k)) != strict(cm.get(k)):
                    problems.append("meta[%r]: python %s, celeriac %s" % (k, strict(pm.get(k)),
                                                                          strict(cm.get(k))))
            tap.check("%s: celeriac matches the Python worker" % name, not problems, *problems)
            continue
        problems = case_problems(self_blanked(p), self_blanked(q))
        summary = (q.get("client") or {}).get("raised") or (
            "no result" if q.get("client") is None else "value")
        tap.check("%s: celeriac matches the Python worker (%s)" % (name, summary), not problems,
                  *problems)
    if kind in ("amqp", "sql"):
        compare_published(py.get("_published") or {}, c.get("_published") or {}, kind)
    return 0


def by_task(msgs):
    """Published messages by "task id#retries" (ids as labels); a second
    message under one key gets a "'", so a duplicate publish shows up as a
    message only one side sent."""
    out = {}
    for m in msgs:
        h = m.get("headers") or {}
        key = "%s %s#%s" % (h.get("task"), h.get("id"), h.get("retries"))
        if key in out:
            key += "'"
        out[key] = m
    return out


# What celeriac publishes differs from Python's worker here by design (see
# README, "Differences to know"): (message part, key) -> why. Shown as
# "# known difference" lines, not failures.
KNOWN = {
    ("headers", "lang"): 'celeriac says "c" (the spec allows it; nothing reads it)',
    ("headers", "argsrepr"): "Python's repr() of the args, celeriac's JSON text of them "
                             "(display only: inspect, Flower)",
    ("headers", "kwargsrepr"): "as argsrepr",
}
# reply_to of a message the worker sends on its own (a link callback):
# Python's worker names its own rpc:// reply queue, celeriac has none.
OWN_REPLY_TO = ("<uuid>", "")


def known_difference(part, key, pv, cv):
    if (part, key) in KNOWN:
        return KNOWN[(part, key)]
    if (part, key) == ("properties", "reply_to") and (pv, cv) == OWN_REPLY_TO:
        return "celeriac has no rpc:// reply queue of its own to name"
    return None


def compare_published(pp, cp, kind):
    """The messages each worker published to diff.held and diff.tap (on
    AMQP; diff.held alone on kombu's SQL transport)."""
    queues = [(HELD, "a link callback (priority 2, expires 600) and a chain step")]
    if kind == "amqp":
        queues.append((TAP, "a task sent through diff.x and its retry"))
    for q, what in queues:
        pm, cm = pp.get(q), cp.get(q)
        tap.check("reference published %s to %s" % (what, q),
                  isinstance(pm, list) and len(pm) == 2, pm)
        problems = []
        if not isinstance(pm, list) or not isinstance(cm, list):
            problems = ["python   %s" % strict(pm), "celeriac %s" % strict(cm)]
        else:
            pk, ck = by_task(pm), by_task(cm)
            for key in sorted(set(pk) | set(ck)):
                a, b = pk.get(key), ck.get(key)
                if a is None or b is None:
                    problems.append("%s: published by %s only: %s" % (
                        key, "python" if b is None else "celeriac", strict(a or b)))
                    continue
                for part in ("exchange", "routing_key", "properties", "headers", "body"):
                    av, bv = a.get(part), b.get(part)
                    if isinstance(av, dict) and isinstance(bv, dict):
                        for k in sorted(set(av) | set(bv)):
                            pv, cv = av.get(k, "<absent>"), bv.get(k, "<absent>")
                            if strict(pv) == strict(cv):
                                continue
                            why = known_difference(part, k, pv, cv)
                            if why:
                                tap.diag("known difference: %s %s[%r]: python %s, celeriac %s: %s"
                                         % (key, part, k, strict(pv), strict(cv), why))
                            else:
                                problems.append("%s %s[%r]: python %s, celeriac %s" % (
                                    key, part, k, strict(pv), strict(cv)))
                    elif strict(av) != strict(bv):
                        problems.append("%s %s: python %s, celeriac %s" % (
                            key, part, strict(av), strict(bv)))
        tap.check("celeriac publishes %s to %s as Python's worker does" % (what, q),
                  not problems, *problems)


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "run":
        rc = cmd_run(sys.argv[2])
        sys.exit(rc)
    if len(sys.argv) == 3 and sys.argv[1] == "left":
        sys.exit(cmd_left(sys.argv[2]))
    if len(sys.argv) == 4 and sys.argv[1] == "compare":
        cmd_compare(sys.argv[2], sys.argv[3])
        tap.done()
    print(__doc__, file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main()
