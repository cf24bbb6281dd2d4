# SPDX-License-Identifier: MIT
"""client_cases.py: Debian's Python Celery client (5.2.6) against a running
celeriac worker (started by test_client.sh with -A libbooks.so, PostgreSQL and
--result-backend). Each case sends with send_task() as an application would and
checks what AsyncResult shows and what is stored in Redis.

Environment: REDIS_URL, PG_URL.
"""
import json
import os
import re
import time

import psycopg2
import redis

from client import make_app, stored_meta
import tap

REDIS_URL = os.environ["REDIS_URL"]
PG_URL = os.environ["PG_URL"]
DATE_DONE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?([+-]\d\d:\d\d|Z)?$")

app = make_app()
rds = redis.Redis.from_url(REDIS_URL)
db = psycopg2.connect(PG_URL)
db.autocommit = True


def sql(query, *params):
    with db.cursor() as cur:
        cur.execute(query, params)
        return cur.fetchall() if cur.description else None


def get(res, timeout=10):
    """(value, exception) of res.get()."""
    try:
        return res.get(timeout=timeout), None
    except Exception as exc:
        return None, exc


def check_meta_common(name, res, meta, status):
    """Fields every stored meta must have, as celery 5.2 writes them."""
    problems = []
    if meta is None:
        tap.not_ok(name + ": result stored under celery-task-meta-<id>", "no key for " + res.id)
        return False
    if meta.get("status") != status:
        problems.append("status %r, expected %r" % (meta.get("status"), status))
    if meta.get("task_id") != res.id:
        problems.append("task_id %r, expected %r" % (meta.get("task_id"), res.id))
    for key in ("result", "traceback", "children", "date_done"):
        if key not in meta:
            problems.append("no %r field" % key)
    if meta.get("children") not in ([], None):
        problems.append("children %r" % (meta.get("children"),))
    dd = meta.get("date_done")
    if not isinstance(dd, str) or not DATE_DONE.match(dd):
        problems.append("date_done %r is not ISO-8601" % (dd,))
    return tap.check(name + ": stored meta has status, result, traceback, children, date_done, task_id",
                     not problems, *problems, meta)


# ---- SUCCESS ----------------------------------------------------------------
res = app.send_task("tasks.add", args=[2, 3])
value, exc = get(res)
tap.eq("add(2, 3) via send_task: AsyncResult.get() == 5", 5, value, repr(exc))
tap.eq("add(2, 3): state SUCCESS", "SUCCESS", res.state)
meta, ttl = stored_meta(res.id)
check_meta_common("add(2, 3)", res, meta, "SUCCESS")
tap.eq("add(2, 3): stored result is 5", 5, (meta or {}).get("result"))
tap.check("add(2, 3): key expires in about one day (TTL %s)" % ttl,
          ttl is not None and 86000 <= ttl <= 86400, "ttl=%r" % ttl)

res = app.send_task("tasks.add", kwargs={"x": 2, "y": 3})
value, exc = get(res)
tap.eq("add(x=2, y=3) keyword form == 5", 5, value, repr(exc))

res = app.send_task("tasks.add", args=[2], kwargs={"y": 40})
value, exc = get(res)
tap.eq("add(2, y=40) mixed form == 42", 42, value, repr(exc))

res = app.send_task("tasks.add", args=[-(2 ** 40), 1])
value, exc = get(res)
tap.eq("add(-2**40, 1) keeps 64-bit integers", -(2 ** 40) + 1, value, repr(exc))

# ---- books.get_book_info -------------------------------------------------------
title = sql("SELECT title FROM books WHERE id = 1")[0][0]
sql("UPDATE books SET fetched_at = NULL WHERE id = 1")
before = time.time()
res = app.send_task("books.get_book_info", args=[1])
value, exc = get(res)
tap.eq("get_book_info(1) returns the seeded title", title, value, repr(exc))
tap.eq("get_book_info(1): state SUCCESS", "SUCCESS", res.state)
meta, ttl = stored_meta(res.id)
check_meta_common("get_book_info(1)", res, meta, "SUCCESS")
fetched = sql("SELECT extract(epoch FROM fetched_at) FROM books WHERE id = 1")[0][0]
tap.check("get_book_info(1) set fetched_at to now", fetched is not None and
          abs(float(fetched) - before) < 30, "fetched_at epoch %r, sent at %r" % (fetched, before))

# ---- FAILURE ------------------------------------------------------------------
res = app.send_task("books.get_book_info", args=[999999])
value, exc = get(res)
tap.check("get_book_info(999999): get() raises LookupError", isinstance(exc, LookupError),
          "got value %r, exception %r" % (value, exc))
tap.eq("get_book_info(999999): state FAILURE", "FAILURE", res.state)
meta, ttl = stored_meta(res.id)
check_meta_common("get_book_info(999999)", res, meta, "FAILURE")
r = (meta or {}).get("result") or {}
tap.eq("get_book_info(999999): stored exc_type", "LookupError", r.get("exc_type"), meta)
tap.eq("get_book_info(999999): stored exc_module", "builtins", r.get("exc_module"), meta)
tap.check("get_book_info(999999): stored exc_message is a list naming the id",
          isinstance(r.get("exc_message"), list) and "999999" in json.dumps(r.get("exc_message")),
          meta)
tap.check("get_book_info(999999): FAILURE key expires in about one day",
          ttl is not None and 86000 <= ttl <= 86400, "ttl=%r" % ttl)

res = app.send_task("tasks.nosuch", args=[1])
value, exc = get(res)
meta, _ = stored_meta(res.id)
r = (meta or {}).get("result") or {}
tap.eq("unknown task: FAILURE stored", "FAILURE", (meta or {}).get("status"), meta)
tap.eq("unknown task: exc_type NotRegistered", "NotRegistered", r.get("exc_type"), meta)
tap.eq("unknown task: exc_module celery.exceptions", "celery.exceptions", r.get("exc_module"), meta)
tap.eq("unknown task: exc_message is [name]", ["tasks.nosuch"], r.get("exc_message"), meta)
tap.eq("unknown task: task_id stored", res.id, (meta or {}).get("task_id"), meta)
tap.check("unknown task: get() raises NotRegistered", type(exc).__name__ == "NotRegistered",
          "got value %r, exception %r" % (value, exc))

res = app.send_task("tasks.add", args=["a", 1])
value, exc = get(res)
meta, _ = stored_meta(res.id)
r = (meta or {}).get("result") or {}
tap.check("add('a', 1): get() raises TypeError", isinstance(exc, TypeError),
          "got value %r, exception %r" % (value, exc))
tap.eq("add('a', 1): FAILURE with exc_type TypeError, exc_module builtins",
       ["FAILURE", "TypeError", "builtins"],
       [(meta or {}).get("status"), r.get("exc_type"), r.get("exc_module")], meta)

res = app.send_task("tasks.add", args=[1])
value, exc = get(res)
tap.check("add(1) (missing argument): get() raises TypeError", isinstance(exc, TypeError),
          "got value %r, exception %r" % (value, exc))

res = app.send_task("tasks.fail", args=["boom"])
value, exc = get(res)
meta, _ = stored_meta(res.id)
tap.check("tasks.fail('boom'): get() raises ValueError('boom')",
          isinstance(exc, ValueError) and exc.args == ("boom",), "got %r / %r" % (value, exc))
tap.eq("tasks.fail('boom'): stored exception", {"exc_type": "ValueError", "exc_message": ["boom"],
                                                "exc_module": "builtins"}, (meta or {}).get("result"))

res = app.send_task("tasks.add", args=[2 ** 62, 2 ** 62])
value, exc = get(res)
tap.check("add(2**62, 2**62): OverflowError, not a wrapped sum", isinstance(exc, OverflowError),
          "got value %r, exception %r" % (value, exc))

# ---- JSON round trip ----------------------------------------------------------
payload = {"s": "caf\u00e9 \u2603 \"quoted\" \\ \n", "i": 7, "f": 2.5, "n": None, "b": [True, False],
           "nested": {"a": [[1], {"b": []}], "e": {}}}
res = app.send_task("tasks.echo", args=[payload])
value, exc = get(res)
tap.eq("tasks.echo round-trips unicode, escapes, nesting, empty containers", payload, value, repr(exc))

# ---- ignore_result ----------------------------------------------------------------
sql("UPDATE books SET fetched_at = NULL WHERE id = 5")
res = app.send_task("books.get_book_info", args=[5], ignore_result=True)
deadline = time.time() + 10
ran = False
while time.time() < deadline:
    if sql("SELECT fetched_at IS NOT NULL FROM books WHERE id = 5")[0][0]:
        ran = True
        break
    time.sleep(0.1)
tap.check("ignore_result=True: the task ran (fetched_at of book 5 set)", ran)
time.sleep(1.0)
tap.eq("ignore_result=True: no result key stored", 0, rds.exists("celery-task-meta-" + res.id))

# ---- many in flight ------------------------------------------------------------
results = [app.send_task("tasks.add", args=[i, i]) for i in range(100)]
values = []
for res in results:
    v, e = get(res, timeout=30)
    values.append(v if e is None else repr(e))
tap.eq("100 adds in flight all come back right", [2 * i for i in range(100)], values)

# ---- the broker is left clean ---------------------------------------------------------
deadline = time.time() + 5
while time.time() < deadline and (rds.llen("celery") or rds.hlen("unacked")):
    time.sleep(0.1)
tap.eq("queue 'celery' empty and nothing left in unacked / unacked_index",
       [0, 0, 0], [rds.llen("celery"), rds.hlen("unacked"), rds.zcard("unacked_index")])

tap.done()
