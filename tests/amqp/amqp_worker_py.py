# SPDX-License-Identifier: MIT
"""amqp_worker_py.py: the Python Celery client side of test_amqp_worker.sh.
A Celery 5 app with broker amqp://... and the Redis result backend sends
tasks by name to celeriac workers consuming from RabbitMQ.

  declare BROKER                 pq (x-max-priority 10) and qq (quorum) as Python declares them
  send BROKER BACKEND NAME ARGS [--queue Q] [--priority P] [--countdown S] [--count N]
                                 prints the task id (N ids, one a line)
  wait BROKER BACKEND ID [TIMEOUT]  prints "STATUS json(result)" (and TRACEBACK? on failure)
  basic BROKER BACKEND           several tasks, a failure, a retry, a chain: checks results
  eta BROKER BACKEND             two countdown tasks held while four others finish first
  count BROKER QUEUE             messages ready in QUEUE
  delete BROKER QUEUE            deletes QUEUE

With AMQPT_TLS_CA set (test_amqp_tls.sh), the connection is TLS as Celery's
broker_use_ssl makes it: that CA, the client certificate AMQPT_TLS_CERT with
key AMQPT_TLS_KEY, cert_reqs CERT_REQUIRED.
"""
import json
import os
import ssl
import sys
import time

from celery import Celery
from kombu import Exchange, Queue


def app_for(broker, backend=None):
    app = Celery("amqpt", broker=broker.replace("amqp://", "pyamqp://", 1), backend=backend)
    app.conf.task_queues = [
        Queue("celery"),
        Queue("pq", Exchange("pq"), "pq", max_priority=10),
        Queue("qq", Exchange("qq"), "qq", queue_arguments={"x-queue-type": "quorum"}),
    ]
    app.conf.broker_connection_retry_on_startup = False
    if os.environ.get("AMQPT_TLS_CA"):
        app.conf.broker_use_ssl = {
            "ca_certs": os.environ["AMQPT_TLS_CA"],
            "certfile": os.environ["AMQPT_TLS_CERT"],
            "keyfile": os.environ["AMQPT_TLS_KEY"],
            "cert_reqs": ssl.CERT_REQUIRED,
        }
    return app


def declare(broker):
    app = app_for(broker)
    with app.connection_for_write() as conn:
        ch = conn.default_channel
        for q in app.conf.task_queues:
            q(ch).declare()


def send(broker, backend, name, args, opts):
    app = app_for(broker, backend)
    kw = {}
    count = 1
    i = 0
    while i < len(opts):
        k, v = opts[i], opts[i + 1]
        i += 2
        if k == "--queue":
            kw["queue"] = v
        elif k == "--priority":
            kw["priority"] = int(v)
        elif k == "--countdown":
            kw["countdown"] = float(v)
        elif k == "--count":
            count = int(v)
    for _ in range(count):
        print(app.send_task(name, args=json.loads(args), **kw).id)


def describe(r):
    st = r.state
    res = r.result
    if isinstance(res, Exception):
        res = "%s(%s)" % (type(res).__name__, res)
    out = "%s %s" % (st, json.dumps(res))
    if st == "FAILURE":
        out += " traceback=%s" % ("yes" if r.traceback else "no")
    return out


def wait(broker, backend, tid, timeout):
    app = app_for(broker, backend)
    r = app.AsyncResult(tid)
    deadline = time.time() + timeout
    while time.time() < deadline and r.state not in ("SUCCESS", "FAILURE"):
        time.sleep(0.1)
    print(describe(r))


def basic(broker, backend):
    app = app_for(broker, backend)
    bad = []
    adds = [app.send_task("amqpt.add", args=[i, 100]) for i in range(6)]
    fail = app.send_task("amqpt.fail")
    retry = app.send_task("amqpt.retry_once")
    chain = (app.signature("amqpt.add", args=(1, 2)) | app.signature("amqpt.add", args=(10,))).apply_async()
    for i, r in enumerate(adds):
        v = r.get(timeout=20)
        if v != i + 100:
            bad.append("add %d: %r" % (i, v))
    try:
        fail.get(timeout=20)
        bad.append("fail: no exception")
    except Exception as e:
        if type(e).__name__ != "ValueError" or "on purpose" not in str(e):
            bad.append("fail raised %r" % e)
        if not fail.traceback:
            bad.append("fail: no traceback")
    v = retry.get(timeout=20)
    if v != 1:
        bad.append("retry_once: %r" % v)
    v = chain.get(timeout=20)
    if v != 13:
        bad.append("chain: %r" % v)
    print("; ".join(bad) if bad else "ok")
    return 1 if bad else 0


def eta(broker, backend):
    app = app_for(broker, backend)
    held = [app.send_task("amqpt.mark", args=["eta%d" % i], countdown=5) for i in range(2)]
    time.sleep(0.5)
    t0 = time.time()
    adds = [app.send_task("amqpt.add", args=[i, 1]) for i in range(4)]
    bad = []
    for i, r in enumerate(adds):
        if r.get(timeout=20) != i + 1:
            bad.append("add %d" % i)
    took = time.time() - t0
    if took > 3:
        bad.append("four tasks behind two held ETA messages took %.1f s" % took)
    if any(h.state != "PENDING" for h in held):
        bad.append("ETA tasks ran early: %s" % [h.state for h in held])
    for h in held:
        if h.get(timeout=20) not in ("eta0", "eta1"):
            bad.append("eta result")
    print("; ".join(bad) if bad else "ok (%.1f s)" % took)
    return 1 if bad else 0


def count(broker, queue):
    app = app_for(broker)
    with app.connection_for_write() as conn:
        print(conn.default_channel.queue_declare(queue, passive=True).message_count)


def delete(broker, queue):
    app = app_for(broker)
    with app.connection_for_write() as conn:
        conn.default_channel.queue_delete(queue)


def main(argv):
    cmd = argv[1]
    if cmd == "declare":
        declare(argv[2])
    elif cmd == "send":
        send(argv[2], argv[3], argv[4], argv[5], argv[6:])
    elif cmd == "wait":
        wait(argv[2], argv[3], argv[4], float(argv[5]) if len(argv) > 5 else 30)
    elif cmd == "basic":
        return basic(argv[2], argv[3])
    elif cmd == "eta":
        return eta(argv[2], argv[3])
    elif cmd == "count":
        count(argv[2], argv[3])
    elif cmd == "delete":
        delete(argv[2], argv[3])
    else:
        print("unknown command %s" % cmd)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
