# SPDX-License-Identifier: MIT
"""bad_input.py: hostile bytes on the queue (raw LPUSH with redis-py, as any
client could). For every case the worker must stay up (same pids), take the
message off the queue and out of unacked/unacked_index, log a reason, store a
FAILURE where the spec says Celery does (and never a SUCCESS for a message
that should not run), and then still run a normal task.

Environment: REDIS_URL, WORKER_PIDS (master and children), WORKER_LOG,
QUEUE (default celery).
"""
import base64
import json
import os
import re
import time
import uuid

import redis

from client import make_app
import tap

R = redis.Redis.from_url(os.environ["REDIS_URL"])
PIDS = [int(p) for p in os.environ["WORKER_PIDS"].split()]
LOG = os.environ["WORKER_LOG"]
QUEUE = os.environ.get("QUEUE", "celery")
app = make_app()

LEVEL = re.compile(rb"^\[[^\]]*: (WARNING|ERROR|CRITICAL)/")


def b64(data):
    if isinstance(data, str):
        data = data.encode()
    return base64.b64encode(data).decode()


def envelope(task="tasks.add", args=(2, 3), kwargs=None, task_id=None, body=None,
             content_type="application/json", body_encoding="base64", headers=None,
             properties=None, tag=None):
    task_id = task_id or str(uuid.uuid4())
    tag = tag or str(uuid.uuid4())
    if body is None:
        body = b64(json.dumps([list(args), kwargs or {},
                               {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]))
    h = {"lang": "py", "task": task, "id": task_id, "root_id": task_id, "parent_id": None,
         "group": None, "retries": 0, "timelimit": [None, None], "eta": None, "expires": None,
         "ignore_result": False}
    if headers is not None:
        h = headers
    p = {"correlation_id": task_id, "reply_to": "", "delivery_mode": 2,
         "delivery_info": {"exchange": "", "routing_key": QUEUE}, "priority": 0,
         "body_encoding": body_encoding, "delivery_tag": tag}
    if properties is not None:
        p = properties
    env = {"body": body, "content-encoding": "utf-8", "content-type": content_type,
           "headers": h, "properties": p}
    return env, task_id, tag


def alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def log_size():
    return os.path.getsize(LOG)


def new_log_lines(offset):
    with open(LOG, "rb") as f:
        f.seek(offset)
        return f.read().splitlines()


def wait_settled(tag, timeout=20):
    """Until the queue is empty and tag is in neither unacked nor unacked_index."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        in_q = R.llen(QUEUE)
        if tag:
            held = R.hexists("unacked", tag) or R.zscore("unacked_index", tag) is not None
        else:
            held = R.hlen("unacked") > 0
        if not in_q and not held:
            return True
        time.sleep(0.05)
    return False


def meta_of(task_id):
    raw = R.get("celery-task-meta-" + task_id) if task_id else None
    return json.loads(raw) if raw else None


def normal_task_ok():
    res = app.send_task("tasks.add", args=[20, 22])
    try:
        return res.get(timeout=15) == 42
    except Exception:
        return False


def run_case(name, raw, task_id=None, tag=None, expect="no-success", exc_type=None):
    """expect: "failure" (FAILURE with exc_type required), "no-success" (nothing
    or a FAILURE), "any" (anything, e.g. a repaired envelope that ran)."""
    off = log_size()
    t0 = time.time()
    R.lpush(QUEUE, raw)
    problems = []
    if not wait_settled(tag):
        problems.append("still queued or unacked after 20 s: llen=%d unacked=%s" % (
            R.llen(QUEUE), R.hkeys("unacked")[:3]))
    # A normal task after it: the worker (one child, see test_bad_input.sh)
    # has then finished with the bad message, result included.
    if not normal_task_ok():
        problems.append("a normal tasks.add(20, 22) did not come back after it")
    dead = [p for p in PIDS if not alive(p)]
    if dead:
        problems.append("processes gone: %s" % dead)
    lines = new_log_lines(off)
    reasons = [l for l in lines if LEVEL.match(l)]
    if not reasons:
        problems.append("no WARNING/ERROR/CRITICAL line logged for it")
    meta = meta_of(task_id)
    status = meta.get("status") if meta else None
    if expect == "failure":
        if status != "FAILURE":
            problems.append("expected a stored FAILURE, got %r" % (meta,))
        else:
            r = meta.get("result") or {}
            if exc_type and r.get("exc_type") != exc_type:
                problems.append("exc_type %r, expected %r" % (r.get("exc_type"), exc_type))
            if not isinstance(r.get("exc_message"), list) or not r.get("exc_module"):
                problems.append("exception not encoded as Celery does: %r" % (r,))
            if meta.get("task_id") != task_id:
                problems.append("task_id %r, expected %r" % (meta.get("task_id"), task_id))
    elif expect == "no-success":
        if status not in (None, "FAILURE"):
            problems.append("stored %r for a message that must not run" % (meta,))
        if status == "FAILURE" and meta.get("task_id") != task_id:
            problems.append("FAILURE stored with task_id %r" % meta.get("task_id"))
    if tap.check("bad input, %s: settled, logged, worker alive, next task runs" % name,
                 not problems, *problems, *[l.decode("utf-8", "replace")[:300] for l in lines[-6:]]):
        tap.diag("  %s: stored %s, %.2f s, log: %s" % (
            name, status or "nothing", time.time() - t0,
            reasons[0].decode("utf-8", "replace")[:160] if reasons else "-"))


def dumps(env):
    return json.dumps(env).encode()


# ---- envelope-level garbage: no id can be trusted ----
run_case("not JSON", b"this is not json {\"body\":", tag=None)
run_case("empty string", b"", tag=None)
run_case("JSON array instead of object", b"[1, 2, 3]", tag=None)
run_case("JSON string", b"\"celery\"", tag=None)
run_case("invalid UTF-8 in the envelope",
         b'{"body": "W1syLCAzXSwge30sIHt9XQ==", "content-type": "application/json", '
         b'"content-encoding": "utf-8", "headers": {"task": "tasks.add", "id": "\xff\xfe\xfd"}, '
         b'"properties": {"delivery_tag": "t-utf8", "body_encoding": "base64", '
         b'"delivery_info": {"exchange": "", "routing_key": "celery"}}}', tag="t-utf8")
deep = b"[" * 200000 + b"]" * 200000
run_case("deeply nested JSON envelope (200000 levels)",
         b'{"body": "x", "headers": {"task": "tasks.add", "x": ' + deep + b'}}', tag=None)

# ---- broken envelope fields ----
env, tid, tag = envelope()
del env["properties"]
run_case("no properties", dumps(env), task_id=tid, tag=None, expect="any")
env, tid, tag = envelope()
del env["properties"]["delivery_tag"]
run_case("no delivery_tag", dumps(env), task_id=tid, tag=None, expect="any")
env, tid, tag = envelope()
del env["properties"]["delivery_info"]
run_case("no delivery_info", dumps(env), task_id=tid, tag=tag, expect="any")
env, tid, tag = envelope()
env["properties"] = "not an object"
run_case("properties not an object", dumps(env), task_id=tid, tag=None, expect="any")
env, tid, tag = envelope(content_type="application/x-foo")
run_case("unknown content-type", dumps(env), task_id=tid, tag=tag)
env, tid, tag = envelope(content_type="application/x-python-serialize",
                         body=b64(b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00N."))
run_case("pickle content-type refused", dumps(env), task_id=tid, tag=tag)
env, tid, tag = envelope(body="!!! not base64 @@@")
run_case("body not base64", dumps(env), task_id=tid, tag=tag)
env, tid, tag = envelope(body_encoding="rot13")
run_case("unknown body_encoding", dumps(env), task_id=tid, tag=tag)
env, tid, tag = envelope(body=b64("this is not json"))
run_case("body not JSON", dumps(env), task_id=tid, tag=tag)
env, tid, tag = envelope(body=b64('{"args": [2, 3]}'))
del env["headers"]["task"]
run_case("no task name, body not v1 either", dumps(env), task_id=tid, tag=tag)
env, tid, tag = envelope()
env["headers"]["task"] = 123
run_case("task name not a string", dumps(env), task_id=tid, tag=tag)
env, tid, tag = envelope()
env["headers"] = ["not", "an", "object"]
run_case("headers not an object", dumps(env), task_id=None, tag=tag)

# ---- bodies that are not [args, kwargs, embed] ----
for label, body in [
    ("body a JSON object", '{"a": 1}'),
    ("body a number", "42"),
    ("body [args] only", "[[2, 3]]"),
    ("args not a list", '["x", {}, {}]'),
    ("kwargs not an object", "[[2, 3], [], {}]"),
    ("body null", "null"),
]:
    env, tid, tag = envelope(body=b64(body))
    run_case(label, dumps(env), task_id=tid, tag=tag)

env, tid, tag = envelope(body=b64(b'[["\xff\xfe"], {}, {}]'))
run_case("invalid UTF-8 in the body", dumps(env), task_id=tid, tag=tag)
env, tid, tag = envelope(body=b64("[" * 100000 + "]" * 100000))
run_case("deeply nested body (100000 levels)", dumps(env), task_id=tid, tag=tag)
env, tid, tag = envelope(body=b64('[[1180591620717411303424, 1], {}, {}]'))
run_case("integer beyond 64 bits", dumps(env), task_id=tid, tag=tag)

# ---- well-formed messages that must fail as Celery fails them ----
env, tid, tag = envelope(task="tasks.nosuch")
run_case("unknown task", dumps(env), task_id=tid, tag=tag, expect="failure", exc_type="NotRegistered")
env, tid, tag = envelope(task="tasks.add\u0000evil")
run_case("task name with a NUL", dumps(env), task_id=tid, tag=tag)
env, tid, tag = envelope(task="t" * 100000)
run_case("100 kB task name", dumps(env), task_id=tid, tag=tag, expect="failure", exc_type="NotRegistered")
env, tid, tag = envelope(args=("a", 1))
run_case("wrong argument types add('a', 1)", dumps(env), task_id=tid, tag=tag, expect="failure",
         exc_type="TypeError")
env, tid, tag = envelope(args=(), kwargs={"x": 1})
run_case("missing argument add(x=1)", dumps(env), task_id=tid, tag=tag, expect="failure",
         exc_type="TypeError")

# ---- size ----
big = "x" * (20 * 1024 * 1024)
env, tid, tag = envelope(args=(big, 1))
# Over the 16 MB --max-message-size: not decoded, but its id (correlation_id,
# after the body) is read, so its client gets a FAILURE instead of waiting.
run_case("20 MB payload", dumps(env), task_id=tid, tag=tag, expect="failure",
         exc_type="InvalidTaskError")
del big, env

# ---- no leak: RSS of the child across many bad messages ----
def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def batch(n):
    pipe = R.pipeline(transaction=False)
    pad = "p" * 2000
    for i in range(n):
        kind = i % 6
        if kind == 0:
            pipe.lpush(QUEUE, b"not json " + pad.encode())
        elif kind == 1:
            env, _, _ = envelope(body="!!!" + pad)
            pipe.lpush(QUEUE, dumps(env))
        elif kind == 2:
            env, _, _ = envelope(task="tasks.nosuch." + pad)
            pipe.lpush(QUEUE, dumps(env))
        elif kind == 3:
            env, _, _ = envelope(args=(pad, 1))
            pipe.lpush(QUEUE, dumps(env))
        elif kind == 4:
            env, _, _ = envelope(body=b64('{"x": "%s"}' % pad))
            pipe.lpush(QUEUE, dumps(env))
        else:
            env, _, _ = envelope(content_type="application/x-" + pad)
            pipe.lpush(QUEUE, dumps(env))
    pipe.execute()
    wait_settled(None, timeout=120)
    normal_task_ok()


children = PIDS[1:]
batch(600)  # warm up allocator and caches
before = {p: rss_kb(p) for p in children}
batch(3000)
after = {p: rss_kb(p) for p in children}
growth = {p: after[p] - before[p] for p in children}
tap.check("no leak: child RSS grows < 3 MB over 3000 bad messages of ~2 kB (%s kB)" % growth,
          all(g < 3072 for g in growth.values()), "before %s" % before, "after %s" % after)
tap.check("still alive after the flood", all(alive(p) for p in PIDS),
          [p for p in PIDS if not alive(p)])
tap.eq("queue and unacked empty after the flood", [0, 0, 0],
       [R.llen(QUEUE), R.hlen("unacked"), R.zcard("unacked_index")])
tap.done()
