# SPDX-License-Identifier: MIT
"""cases_revoke.py (run by test_revoke.sh): `celery control revoke` and
`terminate` reaching a celeriac worker, revoked ids never run, expired tasks
not run; each outcome read as a Python application reads it (AsyncResult,
TaskRevokedError) and from `celery inspect`.
"""
import time
import uuid
from datetime import datetime, timedelta, timezone

from parity import (Worker, celery_json, check, done, eq, flatten, make_app, meta, not_ok,
                    summary, wait_meta, wait_until)

N = "revoke@localhost"
app = make_app()


def node(doc):
    return (doc or {}).get(N)


def reply_of(replies):
    return flatten(replies).get(N)


def raised(res, timeout=10):
    """What AsyncResult.get() raised (repr), or the value."""
    try:
        return "value %r" % (res.get(timeout=timeout),)
    except Exception as e:  # noqa: BLE001
        return repr(e)


def active_on(task_id):
    a = make_app().control.inspect(destination=[N], timeout=1).active() or {}
    hit = [x for x in a.get(N) or [] if x.get("id") == task_id]
    return hit[0] if hit else None


w = Worker(N, "-c", 2)
if not w.alive():
    not_ok("worker starts", *w.log_tail())
    done()

# ---- a queued countdown task, revoked before it is due ---------------------------------
r = app.send_task("tasks.add", args=[1, 1], countdown=3)
time.sleep(0.5)  # the worker has taken it and holds it until it is due
rc, doc, text = celery_json("control", "revoke", r.id, "-d", N)
eq("celery control revoke ID (countdown task held by the worker)",
   {"ok": "tasks %s flagged as revoked" % r.id}, reply_of(doc), text)
m = wait_meta(r.id, 8)
eq("the revoked countdown task is stored REVOKED, never run", "REVOKED TaskRevokedError('revoked')", summary(m),
   *w.log_tail(8))
check("AsyncResult.get() raises TaskRevokedError", "TaskRevokedError" in raised(r), raised(r))
eq("AsyncResult.state", "REVOKED", app.AsyncResult(r.id).state)
rc, doc, text = celery_json("inspect", "revoked", "-d", N)
check("celery inspect revoked lists it", r.id in (node(doc) or []), text)

# ---- an id revoked before it is even sent -----------------------------------------------------
tid = str(uuid.uuid4())
rc, doc, text = celery_json("control", "revoke", tid, "-d", N)
after = app.send_task("tasks.add", args=[2, 2])
r2 = app.send_task("tasks.add", args=[5, 5], task_id=tid)
after2 = app.send_task("tasks.add", args=[3, 3])
eq("tasks around it run", ["SUCCESS 4", "SUCCESS 6"],
   [summary(wait_meta(after.id)), summary(wait_meta(after2.id))])
eq("a task whose id was revoked before it was sent is REVOKED, not run",
   "REVOKED TaskRevokedError('revoked')", summary(wait_meta(r2.id, 8)))

# ---- several ids in one revoke ------------------------------------------------------------------
rs = [app.send_task("tasks.add", args=[i, i], countdown=3) for i in range(3)]
time.sleep(0.3)
rc, doc, text = celery_json("control", "revoke", rs[0].id, rs[1].id, "-d", N)
eq("celery control revoke ID1 ID2", {"ok": "tasks %s, %s flagged as revoked" % (rs[0].id, rs[1].id)},
   reply_of(doc), text)
eq("the two revoked are REVOKED, the third runs when due",
   ["REVOKED TaskRevokedError('revoked')"] * 2 + ["SUCCESS 4"],
   [summary(wait_meta(x.id, 8)) for x in rs])

# ---- expires ---------------------------------------------------------------------------------------
past = datetime.now(timezone.utc) - timedelta(seconds=30)
r = app.send_task("tasks.add", args=[1, 2], expires=past)
eq("a task already expired when received is REVOKED 'expired'", "REVOKED TaskRevokedError('expired')",
   summary(wait_meta(r.id, 8)))
r = app.send_task("tasks.add", args=[1, 2], countdown=2, expires=1)
eq("a countdown task that expires before it is due is REVOKED 'expired'",
   "REVOKED TaskRevokedError('expired')", summary(wait_meta(r.id, 8)))
r = app.send_task("tasks.add", args=[1, 2], expires=30)
eq("a task with expires in the future runs", "SUCCESS 3", summary(wait_meta(r.id, 8)))

# ---- many revoked ids: the last 50,000 are remembered, as Celery's worker does ---------------
many = [str(uuid.uuid4()) for _ in range(6000)]
make_app().control.revoke(many, destination=[N], reply=True, timeout=5)
first = app.send_task("tasks.add", args=[1, 1], task_id=many[0])
eq("the first of 6000 ids revoked at once is still revoked (a 4,096-entry memory forgot it)",
   "REVOKED TaskRevokedError('revoked')", summary(wait_meta(first.id, 8)))
rc, doc, text = celery_json("inspect", "revoked", "-d", N)
check("inspect revoked lists all 6000", set(many) <= set(node(doc) or []), len(node(doc) or []))

# ---- revoke --terminate of a running task -------------------------------------------------------------
for how in ("control.revoke(id, terminate=True)", "celery control terminate SIGKILL ID"):
    r = app.send_task("tasks.sleep", args=[30])
    a = wait_until(lambda: active_on(r.id), 8)
    if not a:
        not_ok("%s: the task runs first" % how, summary(meta(r.id)), *w.log_tail(8))
        continue
    victim = a.get("worker_pid")
    pool_before = w.pool()
    t0 = time.time()
    if how.startswith("control"):
        rep = reply_of(make_app().control.revoke(r.id, terminate=True, destination=[N], reply=True,
                                                 timeout=1.5))
    else:
        rc, doc, text = celery_json("control", "terminate", "SIGKILL", r.id, "-d", N)
        rep = reply_of(doc)
    eq("%s: reply" % how, {"ok": "terminate: %s" % r.id}, rep)
    m = wait_meta(r.id, 10)
    took = time.time() - t0
    eq("%s: REVOKED TaskRevokedError('terminated') (in %.1f s)" % (how, took),
       "REVOKED TaskRevokedError('terminated')", summary(m), *w.log_tail(8))
    check("%s: AsyncResult.get() raises TaskRevokedError" % how,
          "TaskRevokedError" in raised(app.AsyncResult(r.id)), raised(app.AsyncResult(r.id)))
    new_pool = wait_until(lambda: (lambda p: p if len(p) == len(pool_before) and victim not in p else None)
                          (w.pool()), 10)
    check("%s: the child %s that ran it is gone and was replaced" % (how, victim),
          new_pool and victim in pool_before, pool_before, new_pool)
    rc, doc, text = celery_json("inspect", "stats", "-d", N)
    procs = ((node(doc) or {}).get("pool") or {}).get("processes") or []
    check("%s: inspect stats lists the new child, not the old" % how,
          victim not in procs and sorted(procs) == sorted(w.pool()), procs, w.pool())
    eq("%s: the worker keeps serving" % how, "SUCCESS 5",
       summary(wait_meta(app.send_task("tasks.add", args=[2, 3]).id, 8)))
rc, doc, text = celery_json("control", "terminate", "SIGTERM", str(uuid.uuid4()), "-d", N)
eq("terminate of a task no child runs", {"ok": "terminate: tasks unknown"}, reply_of(doc), text)

eq("the worker exits 0 on SIGTERM", 0, w.stop())
done()
