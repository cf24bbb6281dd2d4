# SPDX-License-Identifier: MIT
"""cases_fleet.py (run by test_fleet.sh and, on RabbitMQ, test_fleet_amqp.sh): a
mixed fleet on one broker (Redis or RabbitMQ), one
Python Celery worker (pyfleet.py, queues celery + pyonly) and one celeriac
worker (queues celery + conly), both with -E. The same `celery` commands see
and steer both; tasks from Python are shared between them; messages sent by
`celeriac call` are run by the Python worker; a chain crosses both.
Which worker ran a task is read from its task-succeeded event's hostname.
"""
import json
import subprocess
import time

from celery import chain

from parity import (BIN, BROKER, RESULT, Events, PyWorker, Worker, celery, celery_json, check, done,
                    eq, flatten, make_app, not_ok, summary, wait_meta)

C = "cfleet@localhost"
P = "pyfleet@localhost"
app = make_app()

ev = Events()
py = PyWorker(P, "-E", "-c", 2, "-Q", "celery,pyonly")
cw = Worker(C, "-E", "-c", 2, "-Q", "celery,conly")
if not py.wait_ready():
    not_ok("the Python worker starts", *py.log_tail())
    done()
if not cw.alive():
    not_ok("the celeriac worker starts", *cw.log_tail())
    done()


def ran_on(task_id, timeout=10):
    e = ev.wait_for("task-succeeded", timeout, uuid=task_id) or ev.wait_for("task-failed", 0.1, uuid=task_id)
    return e.get("hostname") if e else None


# ---- one set of commands sees both ---------------------------------------------------------
rc, doc, text = celery_json("inspect", "ping", "-t", "1.5")
eq("celery inspect ping lists both nodes", {C: {"ok": "pong"}, P: {"ok": "pong"}}, doc, text)
rc, out, err = celery("inspect", "ping", "-t", "1.5")
check("celery inspect ping (text): '2 nodes online.'", "2 nodes online." in out, out, err)
rc, doc, text = celery_json("inspect", "registered", "-t", "1.5")
both = {"tasks.add", "tasks.sleep", "tasks.echo", "tasks.fail"}
check("celery inspect registered answers for both, each with tasks.add/sleep/echo/fail",
      doc and set(doc) == {C, P} and all(both <= set(v) for v in doc.values()), text)
rc, doc, text = celery_json("inspect", "active_queues", "-t", "1.5")
eq("celery inspect active_queues: each node's queues",
   {C: ["celery", "conly"], P: ["celery", "pyonly"]},
   {k: sorted(q["name"] for q in v) for k, v in (doc or {}).items()}, text)
rc, doc, text = celery_json("inspect", "stats", "-t", "1.5")
check("celery inspect stats answers for both (pool.processes of each)",
      doc and set(doc) == {C, P} and all(len(v["pool"]["processes"]) == 2 for v in doc.values()), text)
wk = {h: ev.worker(h) for h in (C, P)}
check("celery.events.state.State: both workers alive", all(w and w.alive for w in wk.values()),
      {h: (w and w.alive) for h, w in wk.items()})
rc, doc, text = celery_json("control", "rate_limit", "tasks.echo", "100/s", "-t", "1.5")
eq("celery control rate_limit reaches both", {C: {"ok": "new rate limit set successfully"},
                                               P: {"ok": "new rate limit set successfully"}},
   flatten(doc), text)

# ---- tasks from Python shared by both ---------------------------------------------------------
rs = [app.send_task("tasks.sleep", args=[0.2]) for _ in range(24)]
ms = [wait_meta(r.id, 30) for r in rs]
eq("24 tasks.sleep(0.2) sent from Python all succeed", ["SUCCESS 0.2"] * 24, [summary(m) for m in ms])
hosts = [ran_on(r.id, 5) for r in rs]
check("both workers ran some of them (task-succeeded hostnames: %d celeriac, %d Python)"
      % (hosts.count(C), hosts.count(P)), hosts.count(C) >= 1 and hosts.count(P) >= 1, hosts)
r = app.send_task("tasks.add", args=[20, 22], queue="conly")
eq("a task sent to conly is run by celeriac", ["SUCCESS 42", C], [summary(wait_meta(r.id)), ran_on(r.id)])
r = app.send_task("tasks.add", args=[20, 22], queue="pyonly")
eq("a task sent to pyonly is run by Python", ["SUCCESS 42", P], [summary(wait_meta(r.id)), ran_on(r.id)])

# ---- celeriac call -> the Python worker ---------------------------------------------------------------


def call(*args, timeout=30, cmd="call"):
    """`celeriac call ARGS...` (or `celeriac result ...` with cmd="result")."""
    p = subprocess.run([BIN, cmd] + [str(a) for a in args] + ["-b", BROKER, "--result-backend", RESULT],
                       capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return p.returncode, p.stdout.strip(), p.stderr.strip()


rc, out, err = call("tasks.add", 2, 3, "--queue", "pyonly")
check("celeriac call tasks.add 2 3 --queue pyonly: prints the id", rc == 0 and len(out) == 36, rc, out, err)
if rc == 0:
    eq("... the Python worker runs it: 5", ["SUCCESS 5", P], [summary(wait_meta(out)), ran_on(out)],
       *py.log_tail(5))
    eq("... celeriac result ID --wait reads it", [0, "5"], list(call(out, "--wait", cmd="result")[:2]))
rc, out, err = call("tasks.add", "--kwargs", json.dumps({"x": 1, "y": 2}), "--queue", "pyonly", "--wait")
eq("celeriac call tasks.add --kwargs '{\"x\":1,\"y\":2}' --queue pyonly --wait: 3", [0, "3"], [rc, out], err)
rc, out, err = call("tasks.echo", "--args", json.dumps([{"a": [1, "two", None]}]), "--queue", "pyonly", "--wait")
eq("celeriac call tasks.echo --args JSON --queue pyonly --wait: the value round-trips",
   [0, {"a": [1, "two", None]}], [rc, json.loads(out) if out.startswith("{") else out], err)
rc, out, err = call("tasks.fail", "boom", "--queue", "pyonly", "--wait")
check("celeriac call tasks.fail boom --queue pyonly --wait: exit 1, the ValueError shown",
      rc == 1 and "ValueError" in out + err and "boom" in out + err, rc, out, err)
t0 = time.time()
rc, out, err = call("tasks.add", 1, 1, "--countdown", 2, "--queue", "pyonly")
m = wait_meta(out, 10) if rc == 0 else None
took = time.time() - t0
check("celeriac call --countdown 2 --queue pyonly: the Python worker runs it after >= 1.8 s (%.1f s)" % took,
      summary(m) == "SUCCESS 2" and took >= 1.8, summary(m), err)


# ---- a chain across both kinds of worker ------------------------------------------------------------------
sig = chain(app.signature("tasks.add", args=(1, 1), queue="conly"),
            app.signature("tasks.add", args=(2,), queue="pyonly"),
            app.signature("tasks.add", args=(3,), queue="conly"),
            app.signature("tasks.add", args=(4,), queue="pyonly"))
res = sig.apply_async()
steps = []
node = res
while node is not None:
    steps.insert(0, node)
    node = node.parent
try:
    value = res.get(timeout=20)
except Exception as e:  # noqa: BLE001
    value = repr(e)
eq("chain(add(1,1)@conly, add(2)@pyonly, add(3)@conly, add(4)@pyonly) from Python: 11", 11, value)
eq("... its steps ran celeriac, Python, celeriac, Python", [C, P, C, P], [ran_on(s.id, 3) for s in steps])

# ---- revoke reaches both; shutdown one -----------------------------------------------------------------
# countdown 6: the revoke goes through `celery control`, a Python start-up of a
# second or two on a loaded machine
r = app.send_task("tasks.add", args=[1, 1], countdown=6, queue="pyonly")
r2 = app.send_task("tasks.add", args=[1, 1], countdown=6, queue="conly")
time.sleep(0.5)
rc, doc, text = celery_json("control", "revoke", r.id, r2.id, "-t", "1.5")
check("celery control revoke is answered by both", set(flatten(doc)) == {C, P}, text)
eq("the revoked countdown tasks are REVOKED on both kinds of worker", ["REVOKED", "REVOKED"],
   [(wait_meta(x.id, 12) or {}).get("status") for x in (r, r2)])

rc, out, err = celery("control", "shutdown", "-d", C, "-t", "1")
eq("celery control shutdown -d celeriac: the celeriac worker exits 0", 0, cw.wait_exit(20), *cw.log_tail())
check("the Python worker is still up", py.alive())
off = ev.wait_for("worker-offline", 5, hostname=C)
check("State: celeriac offline, Python alive",
      off and not ev.worker(C).alive and ev.worker(P).alive)
rc, doc, text = celery_json("inspect", "ping", "-t", "1.5")
eq("celery inspect ping now lists only the Python worker", {P: {"ok": "pong"}}, doc, text)
eq("the Python worker exits 0 on SIGTERM", 0, py.stop())
ev.stop()
done()
