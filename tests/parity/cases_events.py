# SPDX-License-Identifier: MIT
"""cases_events.py (run by test_events.sh): a celeriac worker's events as
Celery's own consumers see them: an EventReceiver feeding
celery.events.state.State (what `celery events` and Flower use), and the real
`celery events --dump`.
"""
import os
import signal
import subprocess
import time

from parity import (BROKER, PY, TMP, Events, Worker, check, done, eq, flatten, make_app, not_ok,
                    summary, wait_meta, wait_until)

N = "events@localhost"
app = make_app()


def reply_of(replies):
    return flatten(replies).get(N)


def ctl():
    return make_app().control


ev = Events()
if ev.error:
    not_ok("the event receiver starts", repr(ev.error))
    done()
# `celery events --dump`, as an operator runs it, for the first part of the run
dump_log = os.path.join(TMP, "events-dump.txt")
dump = subprocess.Popen([PY, "-m", "celery", "-b", BROKER, "events", "--dump"], stdin=subprocess.DEVNULL,
                        stdout=open(dump_log, "wb"), stderr=subprocess.STDOUT)
time.sleep(1.5)  # the dumper's subscription is in place

w = Worker(N, "-c", 2, "-E")
if not w.alive():
    not_ok("worker starts", *w.log_tail())
    done()

# ---- worker-online, worker-heartbeat ------------------------------------------------------
online = ev.wait_for("worker-online", 10, hostname=N)
check("worker-online received", online, [e.get("type") for e in ev.events])
if online:
    eq("worker-online: Celery's fields (freq 2.0, pid of the master, sw_ident, ints and floats)",
       [2.0, w.pid, True, True, True, True, True, True],
       [online.get("freq"), online.get("pid"), isinstance(online.get("clock"), int),
        isinstance(online.get("timestamp"), float) and abs(online["timestamp"] - time.time()) < 30,
        isinstance(online.get("utcoffset"), int), isinstance(online.get("sw_ident"), str),
        isinstance(online.get("active"), int) and isinstance(online.get("processed"), int),
        isinstance(online.get("loadavg"), list) and len(online["loadavg"]) == 3], online)
beats = wait_until(lambda: (lambda b: b if len(b) >= 3 else None)(ev.of("worker-heartbeat", N)), 8, 0.1)
if beats:
    gaps = [round(b["local_received"] - a["local_received"], 2) for a, b in zip(beats, beats[1:])]
    check("worker-heartbeat every 2 s (gaps %s)" % gaps, all(1.5 <= g <= 2.6 for g in gaps[:2]), gaps)
    check("heartbeats carry freq 2.0 and a clock that moves forward",
          all(b.get("freq") == 2.0 for b in beats) and beats[-1]["clock"] > beats[0]["clock"], beats)
else:
    not_ok("three worker-heartbeat events within 8 s", [e.get("type") for e in ev.events])
wk = ev.worker(N)
check("celery.events.state.State: the worker is alive while it heartbeats", wk and wk.alive,
      wk and vars(wk))
check("State: worker pid, sw_ident, freq", wk and wk.pid == w.pid and wk.freq == 2.0 and wk.sw_ident,
      wk and vars(wk))

# ---- the heartbeat control command sends one at once -------------------------------------------
n_before = len(ev.of("worker-heartbeat", N))
t0 = time.time()
ctl().heartbeat(destination=[N])
extra = wait_until(lambda: len(ev.of("worker-heartbeat", N)) > n_before, 3, 0.02)
check("control heartbeat: a worker-heartbeat arrives within 1.2 s (%.2f s)" % (time.time() - t0),
      extra and time.time() - t0 < 1.2)

# ---- task events ----------------------------------------------------------------------------------


def task_events(task_id, want, timeout=8):
    def probe():
        types = [e["type"] for e in ev.of(uuid=task_id)]
        return types if all(t in types for t in want) else None
    return wait_until(probe, timeout, 0.05) or [e["type"] for e in ev.of(uuid=task_id)]


r = app.send_task("tasks.add", args=(2, 3))  # a tuple, so argsrepr is "(2, 3)"
types = task_events(r.id, ["task-received", "task-started", "task-succeeded"])
eq("tasks.add(2, 3): task-received, task-started, task-succeeded in that order",
   ["task-received", "task-started", "task-succeeded"], types)
evs = {e["type"]: e for e in ev.of(uuid=r.id)}
rec, suc = evs.get("task-received", {}), evs.get("task-succeeded", {})
eq("task-received: name, retries, root_id, parent_id, eta, expires, hostname",
   ["tasks.add", 0, r.id, None, None, None, N],
   [rec.get("name"), rec.get("retries"), rec.get("root_id"), rec.get("parent_id"), rec.get("eta"),
    rec.get("expires"), rec.get("hostname")], rec)
# Celery 5.2.6 sends args/kwargs as repr strings: the message's argsrepr "(2, 3)".
eq("task-received: args/kwargs are the message's argsrepr/kwargsrepr", ["(2, 3)", "{}"],
   [rec.get("args"), rec.get("kwargs")], rec)
eq("task-succeeded: result is the repr '5', runtime a float",
   ["5", True], [suc.get("result"), isinstance(suc.get("runtime"), float)], suc)
clocks = [e.get("clock") for e in ev.of(uuid=r.id)]
check("task events carry increasing clocks", all(isinstance(c, int) for c in clocks) and clocks == sorted(clocks),
      clocks)
t = ev.task(r.id)
eq("State: the task is SUCCESS, named, on the celeriac worker, result '5'",
   ["SUCCESS", "tasks.add", N, "5"], [t and t.state, t and t.name, t and t.worker and t.worker.hostname,
                                      t and t.result])

r = app.send_task("tasks.fail", args=["boom"])
types = task_events(r.id, ["task-failed"])
fail = {e["type"]: e for e in ev.of(uuid=r.id)}.get("task-failed", {})
eq("tasks.fail('boom'): task-failed with exception \"ValueError('boom')\"", "ValueError('boom')",
   fail.get("exception"), types)
check("task-failed has a traceback field (a string)", isinstance(fail.get("traceback"), str), fail)
t = ev.task(r.id)
eq("State: the task is FAILURE", "FAILURE", t and t.state)

r = app.send_task("tasks.flaky", args=[1])
types = task_events(r.id, ["task-retried", "task-succeeded"], 10)
recs = [e for e in ev.of("task-received", uuid=r.id)]
retried = ev.of("task-retried", uuid=r.id)
eq("tasks.flaky(1): task-retried with exception \"KeyError('again')\", then task-succeeded",
   ["KeyError('again')", True], [retried[0].get("exception") if retried else None,
                                  "task-succeeded" in types], types)
eq("tasks.flaky(1): a task-received per attempt, retries 0 then 1, the retry's parent_id is the task",
   [[0, 1], r.id], [[e.get("retries") for e in recs], recs[-1].get("parent_id") if recs else None], recs)
check("the retry's task-received carries its eta", len(recs) == 2 and recs[1].get("eta"), recs)

# ---- task-revoked ------------------------------------------------------------------------------------
r = app.send_task("tasks.add", args=[1, 1], countdown=3)
wait_until(lambda: ev.of("task-received", uuid=r.id), 3, 0.05)
ctl().revoke(r.id, destination=[N])
task_events(r.id, ["task-revoked"])
rv = ev.of("task-revoked", uuid=r.id)
eq("revoked countdown task: task-revoked terminated=False expired=False",
   [False, False], [rv[0].get("terminated"), rv[0].get("expired")] if rv else None,
   [e["type"] for e in ev.of(uuid=r.id)])
eq("State: REVOKED", "REVOKED", ev.task(r.id) and ev.task(r.id).state)
for what, opts in (("expired when received", {"expires": -10}),
                   ("expired while held for its countdown", {"countdown": 2, "expires": 1})):
    r = app.send_task("tasks.add", args=[1, 1], **opts)
    task_events(r.id, ["task-revoked"], 6)
    rv = ev.of("task-revoked", uuid=r.id)
    eq("task %s: task-revoked expired=True (Celery's Request._announce_revoked)" % what, True,
       rv[0].get("expired") if rv else None, "events: %s" % [e["type"] for e in ev.of(uuid=r.id)],
       "stored: " + summary(wait_meta(r.id, 1)))
r = app.send_task("tasks.sleep", args=[30])
task_events(r.id, ["task-started"])
ctl().revoke(r.id, terminate=True, signal="SIGKILL", destination=[N])
task_events(r.id, ["task-revoked"])
rv = ev.of("task-revoked", uuid=r.id)
eq("revoke terminate: task-revoked terminated=True signum=9", [True, 9],
   [rv[0].get("terminated"), rv[0].get("signum")] if rv else None, [e["type"] for e in ev.of(uuid=r.id)])

# ---- disable_events / enable_events -----------------------------------------------------------------
eq("control disable_events", {"ok": "task events disabled"},
   reply_of(ctl().disable_events(destination=[N], reply=True, timeout=1.5)))
eq("control disable_events again", {"ok": "task events already disabled"},
   reply_of(ctl().disable_events(destination=[N], reply=True, timeout=1.5)))
r = app.send_task("tasks.add", args=[4, 4])
eq("with task events disabled the task still runs", "SUCCESS 8", summary(wait_meta(r.id)))
beats_before = len(ev.of("worker-heartbeat", N))
time.sleep(2.2)
eq("... and sends no task event", [], [e["type"] for e in ev.of(uuid=r.id)])
check("... while worker heartbeats go on", len(ev.of("worker-heartbeat", N)) > beats_before)
eq("control enable_events", {"ok": "task events enabled"},
   reply_of(ctl().enable_events(destination=[N], reply=True, timeout=1.5)))
r = app.send_task("tasks.add", args=[5, 5])
eq("after enable_events: task events again", ["task-received", "task-started", "task-succeeded"],
   task_events(r.id, ["task-received", "task-started", "task-succeeded"]))

# ---- celery events --dump ----------------------------------------------------------------------------
dump.send_signal(signal.SIGINT)
try:
    dump.wait(10)
except subprocess.TimeoutExpired:
    dump.kill()
    dump.wait()
with open(dump_log, errors="replace") as f:
    text = f.read()
lines = [ln for ln in text.splitlines() if ln.startswith(N + " [")]
check("celery events --dump shows the celeriac worker started (worker-online) and heart-beating",
      any("] started:" in ln for ln in lines) and any("] heartbeat:" in ln for ln in lines), text[:3000])
check("celery events --dump shows task succeeded: tasks.add(...) result=5",
      "task succeeded: tasks.add(" in text and "result=5" in text, text[-3000:])

# ---- worker-offline ------------------------------------------------------------------------------------
rc = w.stop()
eq("the worker exits 0 on SIGTERM", 0, rc)
off = ev.wait_for("worker-offline", 5, hostname=N)
check("worker-offline received", off, [e.get("type") for e in ev.events[-5:]])
wk = ev.worker(N)
check("State: the worker is no longer alive", wk and not wk.alive, wk and vars(wk))
ev.stop()
done()
