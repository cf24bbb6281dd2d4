# SPDX-License-Identifier: MIT
"""cases_inspect.py (run by test_inspect.sh): `celery inspect` and `celery
control` against a celeriac worker, read as Celery prints them (-j), and bad
control messages that must be answered or ignored without harm.
"""
import base64
import json
import time
import uuid

from kombu import Exchange, Queue

from parity import (BROKER, REDIS_PORT, TMP, Worker, celery, celery_json, check, done, eq, flatten,
                    make_app, meta, not_ok, os_children, parse_iso, pid_alive, redis_client,
                    summary, wait_meta, wait_until)

N = "parity@localhost"
SILENT = "silent@localhost"
app = make_app()


def insp(timeout=1.0):
    return make_app().control.inspect(destination=[N], timeout=timeout)


def node(doc):
    return (doc or {}).get(N)


def reply_of(replies):
    return flatten(replies).get(N)


def ctl():
    """app.control of a fresh app. Timeouts: kombu 5.2.4's Redis client leaves
    its BRPOP (1 s server timeout) outstanding when a collection ends by its
    own timeout, and the next collection from the process reads that first; so
    a broadcast with timeout < 1 s right after one that waited its whole
    timeout gets no reply, from a Python worker just as from celeriac. Calls
    that expect a reply use timeout >= 1.5 s (or a destination, which returns
    at the first reply)."""
    return make_app().control


w = Worker(N, "-c", 2, "--db", "sqlite:///%s/parity.db" % TMP)
silent = Worker(SILENT, "-c", 1, "-Q", "silentq", "--without-remote-control")
if not w.alive():
    not_ok("worker starts", *w.log_tail())
    done()

# ---- ping ----------------------------------------------------------------------
rc, out, err = celery("inspect", "ping", "-t", "1")
check("celery inspect ping: exit 0 and '%s: OK pong'" % N,
      rc == 0 and ("%s: OK" % N) in out and "pong" in out, out, err)
check("celery inspect ping: the --without-remote-control worker does not answer",
      SILENT not in out and "1 node online." in out, out)
rc, doc, text = celery_json("inspect", "ping", "-t", "1")
eq("celery inspect ping -j", {N: {"ok": "pong"}}, doc, text)

# ---- stats -----------------------------------------------------------------------
rc, doc, text = celery_json("inspect", "stats", "-d", N)
s = node(doc) or {}
eq("inspect stats: has every key Flower reads",
   [], [k for k in ("total", "pid", "clock", "uptime", "pool", "broker", "prefetch_count", "rusage")
        if k not in s], text)
eq("inspect stats: pid is the master's", w.pid, s.get("pid"))
check("inspect stats: clock is a string of digits, uptime an int",
      isinstance(s.get("clock"), str) and s["clock"].isdigit() and isinstance(s.get("uptime"), int),
      s.get("clock"), s.get("uptime"))
pool = s.get("pool") or {}
eq("inspect stats: pool.max-concurrency", 2, pool.get("max-concurrency"))
eq("inspect stats: pool.processes are the worker's two pool children",
   sorted(w.pool()), sorted(pool.get("processes") or []), "os children: %s" % w.children())
broker = s.get("broker") or {}
eq("inspect stats: broker hostname, port, transport, virtual_host",
   ["127.0.0.1", REDIS_PORT, "redis", "0"],
   [broker.get("hostname"), broker.get("port"), broker.get("transport"), broker.get("virtual_host")])
kids = pool.get("celeriac-children") or []
eq("inspect stats: pool.celeriac-children has one entry per child, by index",
   [[0, 1], sorted(pool.get("processes") or [])],
   [[k.get("index") for k in kids], sorted(k.get("pid") for k in kids)], kids)
bad = [k for k in kids
       if k.get("db") != "up" or not isinstance(k.get("db_age"), (int, float)) or k["db_age"] < 0
       or k.get("db_reconnects") != 0 or not isinstance(k.get("processed"), int)
       or not isinstance(k.get("state"), str)]
check("inspect stats: each child's db is up (SQLite), db_age >= 0, db_reconnects 0, processed int",
      kids and not bad, kids)
age0 = {k.get("index"): k.get("db_age") for k in kids}

# ---- registered, active_queues, conf, report, clock --------------------------------
rc, doc, text = celery_json("inspect", "registered", "-d", N)
reg = node(doc)
check("inspect registered: a sorted list with the library's tasks",
      isinstance(reg, list) and reg == sorted(reg)
      and {"tasks.add", "tasks.sleep", "tasks.echo", "tasks.fail", "books.get_book_info"} <= set(reg),
      text)
rc, doc, text = celery_json("inspect", "active_queues", "-d", N)
want_q = Queue("celery", Exchange("celery"), "celery").as_dict(recurse=True)
eq("inspect active_queues: kombu's Queue('celery').as_dict(recurse=True)", [want_q], node(doc), text)
rc, doc, text = celery_json("inspect", "conf", "-d", N)
check("inspect conf: a dict", isinstance(node(doc), dict) and node(doc), text)
rc, doc, text = celery_json("inspect", "report", "-d", N)
check("inspect report: {'ok': text}", isinstance((node(doc) or {}).get("ok"), str), text)
rc, doc, text = celery_json("inspect", "clock", "-d", N)
c1 = (node(doc) or {}).get("clock")
rc, doc, text2 = celery_json("inspect", "clock", "-d", N)
c2 = (node(doc) or {}).get("clock")
check("inspect clock: an int that moves forward", isinstance(c1, int) and isinstance(c2, int) and c2 > c1,
      text, text2)

# ---- active, query_task, reserved, scheduled while a task runs ----------------------
r = app.send_task("tasks.sleep", args=(3,))  # a tuple, so argsrepr is "(3,)"
t_sent = time.time()
running = wait_until(lambda: [a for a in insp().active()[N] if a["id"] == r.id], 5)
rc, doc, text = celery_json("inspect", "active", "-d", N)
act = [a for a in node(doc) or [] if a.get("id") == r.id]
if act:
    a = act[0]
    eq("inspect active: the running task's id, name, args, kwargs, hostname, acknowledged",
       [r.id, "tasks.sleep", [3], {}, N, True],
       [a.get("id"), a.get("name"), a.get("args"), a.get("kwargs"), a.get("hostname"), a.get("acknowledged")],
       a)
    check("inspect active: worker_pid is a pool child, time_start is now",
          a.get("worker_pid") in w.pool() and abs((a.get("time_start") or 0) - t_sent) < 5, a, w.pool())
    rc, sdoc, stext = celery_json("inspect", "stats", "-d", N)
    states = {k.get("pid"): k.get("state") for k in
              ((node(sdoc) or {}).get("pool") or {}).get("celeriac-children") or []}
    check("inspect stats: the child running it is not idle", states.get(a.get("worker_pid")) not in
          (None, "idle"), states, a.get("worker_pid"))
else:
    not_ok("inspect active: lists the running tasks.sleep", text)
safe = (insp().active(safe=True) or {}).get(N) or []
safe = [a for a in safe if a.get("id") == r.id]
# Celery 5.2.6: with safe=True, args/kwargs are the message's argsrepr/kwargsrepr
# headers, which the Python client sets to repr(): "(3,)" and "{}".
eq("inspect active(safe=True): args/kwargs are the message's argsrepr/kwargsrepr",
   ["(3,)", "{}"], [safe[0].get("args"), safe[0].get("kwargs")] if safe else None, safe)
rc, doc, text = celery_json("inspect", "query_task", r.id, "-d", N)
q = (node(doc) or {}).get(r.id)
check("inspect query_task ID: ['active', request info]",
      isinstance(q, list) and len(q) == 2 and q[0] == "active" and q[1].get("id") == r.id, text)
rc, doc, text = celery_json("inspect", "query_task", str(uuid.uuid4()), "-d", N)
eq("inspect query_task of an unknown id: {}", {}, node(doc), text)
rc, doc, text = celery_json("inspect", "reserved", "-d", N)
rc, doc2, text2 = celery_json("inspect", "scheduled", "-d", N)
check("inspect reserved / scheduled: lists", isinstance(node(doc), list) and isinstance(node(doc2), list),
      text, text2)
m = wait_meta(r.id, 10)
eq("the task inspected while running succeeds", "SUCCESS 3.0", summary(m))
rc, doc, text = celery_json("inspect", "stats", "-d", N)
s = node(doc) or {}
eq("inspect stats: total counts tasks.sleep once", 1, (s.get("total") or {}).get("tasks.sleep"), text)
kids = (s.get("pool") or {}).get("celeriac-children") or []
check("inspect stats: the children's processed counts add up to at least 1, db_age grew",
      sum(k.get("processed", 0) for k in kids) >= 1
      and all(k.get("db_age", 0) >= (age0.get(k.get("index")) or 0) for k in kids), kids, age0)

# ---- revoke, revoked -----------------------------------------------------------------
ids = [str(uuid.uuid4()), str(uuid.uuid4())]
rc, doc, text = celery_json("control", "revoke", ids[0], "-d", N)
eq("celery control revoke ID", {"ok": "tasks %s flagged as revoked" % ids[0]}, reply_of(doc), text)
rc, doc, text = celery_json("control", "revoke", ids[1], "-d", N)
rc, doc, text = celery_json("inspect", "revoked", "-d", N)
check("inspect revoked: lists the revoked ids", set(ids) <= set(node(doc) or []), text)

# ---- destination, pattern + matcher -----------------------------------------------------
rc, out, err = celery("inspect", "ping", "-d", "nobody@nowhere", "-t", "0.5")
check("inspect ping -d another node: celeriac does not answer (exit 69, no nodes replied)",
      rc == 69 and N not in out, "rc=%d" % rc, out, err)
eq("control.ping(destination=[other]): no reply", [],
   ctl().ping(destination=["nobody@nowhere"], timeout=0.5))
eq("control.ping(destination=[other, celeriac]): one reply",
   [{N: {"ok": "pong"}}], ctl().ping(destination=["nobody@nowhere", N], timeout=1.5))
for pattern, matcher, want in (("parity@*", "glob", True), ("nobody*", "glob", False),
                               ("par.ty@", "pcre", True), ("arity", "pcre", False),
                               ("[", "pcre", False)):
    # Celery: glob = fnmatch(name, pattern); pcre = re.match(pattern, name), anchored at the start
    got = ctl().ping(pattern=pattern, matcher=matcher, timeout=1.5 if want else 1.0, limit=1 if want else None)
    eq("control.ping(pattern=%r, matcher=%r): %s" % (pattern, matcher, "pong" if want else "no reply"),
       [{N: {"ok": "pong"}}] if want else [], got)

# ---- bad control messages ------------------------------------------------------------------
pids_before = (w.pid, w.control_pid(), tuple(w.pool()))
eq("unknown method: {'error': \"KeyError('no_such_cmd')\"}",
   {"error": "KeyError('no_such_cmd')"},
   reply_of(ctl().broadcast("no_such_cmd", reply=True, timeout=1, destination=[N])))
rc, doc, text = celery_json("control", "rate_limit", "tasks.add", "x/y", "-d", N)
rep = reply_of(doc) or {}
check("control rate_limit tasks.add x/y: error 'Invalid rate limit string...'",
      str(rep.get("error", "")).startswith("Invalid rate limit string"), text)
rc, doc, text = celery_json("control", "rate_limit", "tasks.nosuch", "1/s", "-d", N)
eq("control rate_limit of an unknown task", {"error": "unknown task"}, reply_of(doc), text)
rc, doc, text = celery_json("control", "time_limit", "tasks.nosuch", "1", "2", "-d", N)
eq("control time_limit of an unknown task", {"error": "unknown task"}, reply_of(doc), text)
for method, args in (("rate_limit", {}),                 # missing arguments: TypeError in Celery
                     ("enable_events", {"bogus": 1}),    # takes no arguments
                     ("pool_grow", {"n": "lots"})):
    rep = reply_of(ctl().broadcast(method, arguments=args, reply=True, timeout=1, destination=[N]))
    check("bad arguments %s(%s): an error reply" % (method, json.dumps(args)),
          isinstance(rep, dict) and "error" in rep, rep)
time.sleep(1)  # a resize would show by now
eq("after bad arguments: same master, control process and pool children", pids_before,
   (w.pid, w.control_pid(), tuple(w.pool())))
if len(w.pool()) != 2:  # pool_grow("lots") grew it: back to 2 for what follows
    ctl().pool_shrink(len(w.pool()) - 2, destination=[N], reply=True, timeout=1)
    wait_until(lambda: len(w.pool()) == 2, 10)
pids_before = (w.pid, w.control_pid(), tuple(w.pool()))
for method, args in (("revoke", {"task_id": 42}), ("revoke", {"task_id": {"x": [1]}}),
                     ("query_task", {"ids": "not-a-list"}), ("ping", {"unexpected": [1, 2]})):
    rep = reply_of(ctl().broadcast(method, arguments=args, reply=True, timeout=1, destination=[N]))
    check("odd arguments %s(%s): some reply" % (method, json.dumps(args)), rep is not None, rep)

rcli = redis_client()
db = BROKER.rsplit("/", 1)[-1] or "0"
chan = "/%s.celery.pidbox" % db


def envelope(body_bytes, headers=None, content_type="application/json", extra=None):
    env = {"body": base64.b64encode(body_bytes).decode(), "content-encoding": "utf-8",
           "content-type": content_type, "headers": headers or {},
           "properties": {"delivery_mode": 2, "body_encoding": "base64", "delivery_tag": str(uuid.uuid4()),
                          "delivery_info": {"exchange": "celery.pidbox", "routing_key": ""}, "priority": 0}}
    env.update(extra or {})
    return json.dumps(env)


garbage = [
    "garbage", "", "{", "[]", "null", "{}", '{"body": 5}', '{"body": "!!!not base64!!!"}',
    envelope(b"not json at all"), envelope(b"[1, 2, 3]"), envelope(b'{"method": 5}'),
    envelope(b'{"method": "ping", "arguments": "no"}'),
    envelope(b'{"method": "ping", "arguments": {}, "destination": "parity@localhost"}'),
    envelope(b'{"method": "ping", "arguments": {}, "pattern": "[", "matcher": "pcre"}'),
    envelope(b'{"method": "ping", "arguments": {}, "reply_to": "nowhere", "ticket": 7}'),
    envelope(b'{"method": "ping", "arguments": {}, "reply_to": {"exchange": 1, "routing_key": null}}'),
    envelope(b'{"method": "ping"}', headers={"clock": "x"}),
    envelope(b'\x80\x81\xfe\xff'),
    envelope(b'{"method": "ping"}', content_type="application/x-python-serialize"),
    envelope(b"{" * 5000),
    "x" * 300000,
]
for g in garbage:
    rcli.publish(chan, g)
time.sleep(0.5)
eq("garbage PUBLISHed on %s is ignored: ping still answers" % chan,
   [{N: {"ok": "pong"}}], ctl().ping(destination=[N], timeout=2))
now_pids = (w.pid, w.control_pid(), tuple(w.pool()))
eq("after odd arguments and garbage: same master, control process and children", pids_before, now_pids,
   *w.log_tail())

# ---- rate_limit --------------------------------------------------------------------------------


def spread(name, args_list):
    """Sends the tasks, waits for all; returns (results, seconds from first to last date_done)."""
    rs = [app.send_task(name, args=a) for a in args_list]
    ms = [wait_meta(x.id, 20) for x in rs]
    if not all(ms):
        return [summary(m) for m in ms], None
    done_at = [parse_iso(m["date_done"]) for m in ms]
    return [summary(m) for m in ms], max(done_at) - min(done_at)


rc, doc, text = celery_json("control", "rate_limit", "tasks.add", "2/s", "-d", N)
eq("celery control rate_limit tasks.add 2/s", {"ok": "new rate limit set successfully"}, reply_of(doc), text)
rc, doc, text = celery_json("inspect", "registered", "-d", N)
check("inspect registered shows 'tasks.add [rate_limit=2/s]'", "tasks.add [rate_limit=2/s]" in (node(doc) or []),
      text)
res, took = spread("tasks.add", [[i, 1] for i in range(5)])
check("rate 2/s over the worker's two children: 5 tasks.add span >= 1.5 s (%s s)" % took,
      took is not None and took >= 1.5 and res == ["SUCCESS %d" % (i + 1) for i in range(5)], res)
rc, doc, text = celery_json("control", "rate_limit", "tasks.add", "", "-d", N)
eq("celery control rate_limit tasks.add '': disabled", {"ok": "rate limit disabled successfully"},
   reply_of(doc), text)
res, took = spread("tasks.add", [[i, 1] for i in range(5)])
check("rate limit off: 5 tasks.add span < 1.2 s (%s s)" % took, took is not None and took < 1.2, res)
# Celery's rate() takes a bare number as per second; "0" is no limit (its
# reply says "new rate limit set successfully", the limit is then off).
rc, doc, text = celery_json("control", "rate_limit", "tasks.add", "0", "-d", N)
check("celery control rate_limit tasks.add 0: accepted as Celery's rate('0') (no limit)",
      "ok" in (reply_of(doc) or {}), text)
res, took = spread("tasks.add", [[i, 1] for i in range(5)])
check("after rate_limit 0: 5 tasks.add span < 1.2 s (%s s)" % took, took is not None and took < 1.2, res)
rc, doc, text = celery_json("control", "rate_limit", "tasks.echo", "100/m", "-d", N)
eq("celery control rate_limit tasks.echo 100/m", {"ok": "new rate limit set successfully"},
   reply_of(doc), text)
res, took = spread("tasks.echo", [[i] for i in range(3)])
check("rate 100/m: 3 tasks.echo span >= 1.0 s (%s s)" % took, took is not None and took >= 1.0, res)
ctl().rate_limit("tasks.echo", None, destination=[N], reply=True, timeout=1)

# ---- time_limit --------------------------------------------------------------------------------
rc, doc, text = celery_json("control", "time_limit", "tasks.sleep", "1", "2", "-d", N)
eq("celery control time_limit tasks.sleep 1 2", {"ok": "time limits set successfully"}, reply_of(doc), text)
t0 = time.time()
m = wait_meta(app.send_task("tasks.sleep", args=[10]).id, 8)
took = time.time() - t0
check("soft limit 1 s: tasks.sleep(10) fails with SoftTimeLimitExceeded in < 3 s (%.1f s)" % took,
      summary(m).startswith("FAILURE SoftTimeLimitExceeded") and took < 3, summary(m), *w.log_tail(5))
pool_before = w.pool()
rep = reply_of(ctl().time_limit("tasks.sleep", soft=None, hard=1, destination=[N], reply=True,
                                      timeout=1))
eq("control.time_limit(tasks.sleep, hard=1)", {"ok": "time limits set successfully"}, rep)
t0 = time.time()
m = wait_meta(app.send_task("tasks.sleep", args=[10]).id, 8)
took = time.time() - t0
check("hard limit 1 s: tasks.sleep(10) fails with TimeLimitExceeded in < 3.5 s (%.1f s)" % took,
      summary(m).startswith("FAILURE TimeLimitExceeded") and took < 3.5, summary(m), *w.log_tail(5))
check("hard limit: the child that ran it was replaced",
      wait_until(lambda: len(w.pool()) == len(pool_before) and w.pool() != pool_before, 10),
      pool_before, w.pool())
rep = reply_of(ctl().time_limit("tasks.sleep", soft=None, hard=None, destination=[N], reply=True,
                                      timeout=1))
eq("control.time_limit(tasks.sleep, None, None): limits removed", {"ok": "time limits set successfully"}, rep)
m = wait_meta(app.send_task("tasks.sleep", args=[1.5]).id, 8)
eq("without limits tasks.sleep(1.5) succeeds again", "SUCCESS 1.5", summary(m))

# ---- pool_grow / pool_shrink ---------------------------------------------------------------------


def stats_procs():
    s = insp().stats()[N]
    return sorted(s["pool"]["processes"]), s["pool"]["celeriac-children"]


n0 = len(stats_procs()[0])
rc, doc, text = celery_json("control", "pool_grow", "2", "-d", N)
eq("celery control pool_grow 2", {"ok": "pool will grow"}, reply_of(doc), text)
grown = wait_until(lambda: (lambda p: p if len(p[0]) == n0 + 2 else None)(stats_procs()), 10, 0.3)
check("after pool_grow 2: inspect stats lists %d processes and celeriac-children, as many OS pool children"
      % (n0 + 2), grown and len(grown[1]) == n0 + 2 and sorted(w.pool()) == grown[0], grown, w.pool())
rc, doc, text = celery_json("control", "pool_shrink", "1", "-d", N)
eq("celery control pool_shrink 1", {"ok": "pool will shrink"}, reply_of(doc), text)
shrunk = wait_until(lambda: (lambda p: p if len(p[0]) == n0 + 1 else None)(stats_procs()), 10, 0.3)
check("after pool_shrink 1: inspect stats lists %d processes" % (n0 + 1),
      shrunk and wait_until(lambda: len(w.pool()) == n0 + 1, 5), shrunk, w.pool())
ms = [wait_meta(app.send_task("tasks.add", args=[i, i]).id, 10) for i in range(6)]
eq("the resized pool runs tasks", ["SUCCESS %d" % (2 * i) for i in range(6)], [summary(m) for m in ms])
eq("pool_grow beyond --max-concurrency (64) gives a reply, not a crash", True,
   reply_of(ctl().pool_grow(1000, destination=[N], reply=True, timeout=1)) is not None)
# ---- add_consumer / cancel_consumer: the running worker follows ----------------------------------
eq("control add_consumer extra: Celery's reply", {"ok": "add consumer extra"},
   reply_of(ctl().add_consumer("extra", destination=[N], reply=True, timeout=1.5)))
got = wait_meta(app.send_task("tasks.add", args=[20, 22], queue="extra").id, 10)
eq("a task sent to the added queue runs", "SUCCESS 42", summary(got))
names = [q["name"] for q in (node(ctl().inspect(destination=[N], timeout=1.5).active_queues())
                             or [])]
eq("inspect active_queues shows the added queue", ["celery", "extra"], names)
eq("control cancel_consumer extra: Celery's reply", {"ok": "no longer consuming from extra"},
   reply_of(ctl().cancel_consumer("extra", destination=[N], reply=True, timeout=1.5)))
time.sleep(1.5)  # every child picks the change up before its next fetch
left = app.send_task("tasks.add", args=[1, 1], queue="extra")
time.sleep(2)
eq("a task sent to the cancelled queue stays queued", [None, 1],
   [meta(left.id), redis_client(BROKER).llen("extra")])
redis_client(BROKER).delete("extra")
eq("the default queue still runs", "SUCCESS 4",
   summary(wait_meta(app.send_task("tasks.add", args=[2, 2]).id, 10)))

check("the worker is alive after all control commands", w.alive() and pid_alive(w.control_pid() or 0),
      *w.log_tail())

# ---- shutdown ----------------------------------------------------------------------------------
rc, out, err = celery("control", "shutdown", "-t", "1")
check("celery control shutdown: no reply, as Celery (exit 69)", rc == 69 and N not in out, rc, out, err)
rc_w = w.wait_exit(20)
eq("after control shutdown the celeriac worker exits 0", 0, rc_w, *w.log_tail())
eq("its children are gone too", [], os_children(w.pid))
check("the --without-remote-control worker ignored the broadcast shutdown", silent.alive(),
      *silent.log_tail())
eq("that worker exits 0 on SIGTERM", 0, silent.stop())
done()
