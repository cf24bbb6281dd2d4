# SPDX-License-Identifier: MIT
"""cases_canvas.py (run by test_canvas.sh): retries, ETA/countdown,
chains, link/link_error, groups, chords and priorities, each sent from a Python
application with Celery's own canvas and read back as it reads results.
"""
import json
import threading
import time
from datetime import datetime, timedelta, timezone

from celery import chain, chord, group

from parity import (AMQP, RESULT, Worker, check, done, eq, make_app, meta, not_ok, parse_iso, redis_client,
                    summary, wait_meta)

N = "canvas@localhost"
app = make_app()
sig = app.signature


def get(res, timeout=15):
    try:
        return res.get(timeout=timeout)
    except Exception as e:  # noqa: BLE001
        return repr(e)


class StateLog:
    """The states the result backend publishes for one task id (Celery's Redis
    backend PUBLISHes every stored meta on the key's channel)."""

    def __init__(self, task_id):
        self.states = []
        self.ps = redis_client(RESULT).pubsub()
        self.ps.subscribe("celery-task-meta-" + task_id)
        self.ps.get_message(timeout=1)  # the subscribe confirmation
        self.t = threading.Thread(target=self._run, daemon=True)
        self.stop = False
        self.t.start()

    def _run(self):
        while not self.stop:
            m = self.ps.get_message(timeout=0.2)
            if m and m.get("type") == "message":
                self.states.append(json.loads(m["data"]).get("status"))

    def close(self):
        time.sleep(0.3)
        self.stop = True
        self.t.join(2)
        self.ps.close()
        return self.states


w = Worker(N, "-c", 2, "-E")
if not w.alive():
    not_ok("worker starts", *w.log_tail())
    done()

# ---- retries ---------------------------------------------------------------------------------
tid = "retry-" + str(int(time.time() * 1000))
log = StateLog(tid)
r = app.send_task("tasks.flaky", args=[2], task_id=tid)
v = get(r)
states = log.close()
eq("tasks.flaky(2) (celeriac_retry twice): AsyncResult.get() is 2", 2, v, *w.log_tail(5))
eq("... the backend saw RETRY, RETRY, then SUCCESS", ["RETRY", "RETRY", "SUCCESS"],
   [s for s in states if s != "STARTED"], states)
eq("tasks.flaky(10) past max_retries=5: FAILURE KeyError('again')", "FAILURE KeyError('again')",
   summary(wait_meta(app.send_task("tasks.flaky", args=[10]).id, 15)))
eq("tasks.unsteady(2) (autoretry on TimeoutError): 2", 2, get(app.send_task("tasks.unsteady", args=[2])))
m = wait_meta(app.send_task("tasks.unsteady", args=[9]).id, 15)
check("tasks.unsteady(9) past max_retries=3: FAILURE TimeoutError", summary(m).startswith("FAILURE TimeoutError"),
      summary(m))

# ---- ETA and countdown, without blocking other tasks ---------------------------------------------
t0 = time.time()
late = app.send_task("tasks.add", args=[1, 1], countdown=2)
eta_at = datetime.now(timezone.utc) + timedelta(seconds=1.5)
at = app.send_task("tasks.add", args=[2, 2], eta=eta_at)
quick = [app.send_task("tasks.add", args=[i, 0]) for i in range(4)]
mq = [wait_meta(q.id, 5) for q in quick]
quick_done = max(parse_iso(m["date_done"]) for m in mq) if all(mq) else None
ml, ma = wait_meta(late.id, 8), wait_meta(at.id, 8)
check("tasks sent after a countdown/ETA task run at once (< 1.4 s), not behind it",
      quick_done is not None and quick_done - t0 < 1.4, [summary(m) for m in mq])
check("countdown=2: run no earlier than due (%s)" % (ml and round(parse_iso(ml["date_done"]) - t0, 2)),
      ml and summary(ml) == "SUCCESS 2" and parse_iso(ml["date_done"]) >= t0 + 1.95, summary(ml))
check("eta=now+1.5s: run no earlier than the ETA (%s)" % (ma and round(parse_iso(ma["date_done"]) - t0, 2)),
      ma and summary(ma) == "SUCCESS 4" and parse_iso(ma["date_done"]) >= eta_at.timestamp() - 0.05,
      summary(ma))

# ---- chains ------------------------------------------------------------------------------------------
eq("chain(add.s(1, 1), add.s(2)): 4", 4, get(chain(sig("tasks.add", (1, 1)), sig("tasks.add", (2,)))()))
eq("add.s(1, 1) | add.s(2) | add.s(3) | echo.s(): 7", 7,
   get((sig("tasks.add", (1, 1)) | sig("tasks.add", (2,)) | sig("tasks.add", (3,)) | sig("tasks.echo"))()))
c = chain(sig("tasks.add", (1, 1)), sig("tasks.add", (2,)))()
eq("chain: the parent step's result is readable too", [4, 2], [get(c), get(c.parent)])
eq("chain: the first step's AsyncResult.children is the next step", [c.id],
   [ch.id for ch in (app.AsyncResult(c.parent.id).children or [])])
c = chain(sig("tasks.fail", ("stop",)), sig("tasks.add", (2,)))()
first = summary(wait_meta(c.parent.id, 8))
time.sleep(0.5)
eq("chain whose first step fails: that step is FAILURE and the next never runs",
   ["FAILURE ValueError('stop')", None], [first, meta(c.id)])

# ---- link / link_error ---------------------------------------------------------------------------------
cb_sig = sig("tasks.echo")
cb_sig.freeze()
r = app.send_task("tasks.add", args=[2, 2], link=cb_sig)
eq("link: the callback gets the parent's result (echo -> 4)", ["SUCCESS 4", "SUCCESS 4"],
   [summary(wait_meta(r.id)), summary(wait_meta(cb_sig.id))])
eq("link: the parent's AsyncResult.children is the callback", [cb_sig.id],
   [ch.id for ch in (app.AsyncResult(r.id).children or [])])
cbs = [sig("tasks.echo"), sig("tasks.add", (10,))]
for s in cbs:
    s.freeze()
r = app.send_task("tasks.add", args=[1, 2], link=cbs)
eq("two link callbacks both run: echo -> 3, add(3, 10) -> 13", ["SUCCESS 3", "SUCCESS 13"],
   [summary(wait_meta(s.id)) for s in cbs])
eb = sig("tasks.echo")
eb.freeze()
r = app.send_task("tasks.fail", args=["nope"], link_error=eb)
eq("link_error: the errback runs with the failed task's id", ["FAILURE ValueError('nope')", "SUCCESS %s" %
                                                              json.dumps(r.id)],
   [summary(wait_meta(r.id)), summary(wait_meta(eb.id))])
cb2 = sig("tasks.echo")
cb2.freeze()
r = app.send_task("tasks.fail", args=["nope"], link=cb2)
time.sleep(1)
eq("link is not called after a failure", None, wait_meta(cb2.id, 0.1))
eb2 = sig("tasks.echo")
eb2.freeze()
r = app.send_task("tasks.add", args=[1, 1], link_error=eb2)
wait_meta(r.id)
time.sleep(0.5)
eq("link_error is not called after a success", None, wait_meta(eb2.id, 0.1))

# ---- groups and chords (Redis backend) ---------------------------------------------------------------------
eq("group(add(1,1), add(2,2), add(3,3)): [2, 4, 6]", [2, 4, 6],
   get(group(sig("tasks.add", (i, i)) for i in (1, 2, 3))()))
eq("chord([add(i,i) for i in 0..4], echo.s()): [0, 2, 4, 6, 8]", [0, 2, 4, 6, 8],
   get(chord([sig("tasks.add", (i, i)) for i in range(5)], sig("tasks.echo"))()))
eq("chord of 12 echo members over 2 children: the body gets their results in order",
   list(range(12)), get(chord([sig("tasks.echo", (i,)) for i in range(12)], sig("tasks.echo"))()))
res = chord([sig("tasks.add", (1, 1)), sig("tasks.fail", ("member",))], sig("tasks.echo"))()
m = wait_meta(res.id, 15)
check("chord with a failing member: the body is FAILURE ChordError", summary(m).startswith("FAILURE ChordError"),
      summary(m), *w.log_tail(5))
culprit = res.parent.results[1].id
eq("ChordError says what Celery says: Dependency <id> raised ValueError('member')",
   ["Dependency %s raised ValueError('member')" % culprit],
   ((m or {}).get("result") or {}).get("exc_message"))
g = group(sig("tasks.echo"), sig("tasks.echo"))
gres = g.freeze()
r = app.send_task("tasks.add", args=[1, 1], link=g)
eq("a group as a link callback: each member gets the parent's result, as Celery",
   ["SUCCESS 2", "SUCCESS 2", "SUCCESS 2"],
   [summary(wait_meta(x.id, 8)) for x in [r] + list(gres.results)])

# ---- priorities (Redis: 0 first; RabbitMQ: the higher first) ---------------------------------------------------
# Sent while no worker consumes "prio", then a one-child worker starts: kombu's
# Redis transport files priority 9, 6, 3, 0 under separate lists and a
# consumer takes 0 first. On RabbitMQ the client declares "prio" with
# x-max-priority, as a Queue(max_priority=10) of its task_queues, and the
# worker adopts it; the server hands out the higher priority first.
labels = ["p9", "p6", "p3", "p0", "p9b", "p0b"]
prios = [9, 6, 3, 0, 9, 0]
prio_q = "prio"
if AMQP:
    from kombu import Exchange, Queue
    prio_q = Queue("prio", Exchange("prio"), "prio", max_priority=10)
rs = [app.send_task("tasks.echo", args=[lab], queue=prio_q, priority=p) for lab, p in zip(labels, prios)]
pw = Worker("prio@localhost", "-c", 1, "-Q", "prio")
ms = [wait_meta(r.id, 10) for r in rs]
order = [lab for _, lab in sorted((parse_iso(m["date_done"]), lab) for m, lab in zip(ms, labels) if m)]
expected = ["p9", "p9b", "p6", "p3", "p0", "p0b"] if AMQP else ["p0", "p0b", "p3", "p6", "p9", "p9b"]
eq("priorities: run order " + ", ".join(expected), expected, order,
   *pw.log_tail(8))
eq("the priority worker exits 0", 0, pw.stop())
eq("the worker exits 0 on SIGTERM", 0, w.stop())
done()
