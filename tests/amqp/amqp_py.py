# SPDX-License-Identifier: MIT
"""amqp_py.py: the Python Celery / kombu side of test_amqp_link.sh.

  declare URL            declare what a Celery 5.2 worker and client declare
  send URL QUEUE         app.send_task(...) with priority 3; prints what was sent
  check-recv SENT GOT    compare our decoded fields (GOT) with SENT (JSON files)
  recv URL QUEUE ID      basic_get one message with kombu and check it
"""
import json
import sys

from celery import Celery
from kombu import Exchange, Queue


def make_app(url):
    app = Celery("amqp_py", broker=url.replace("amqp://", "pyamqp://", 1))
    app.conf.task_queues = [
        Queue("celery"),
        Queue("pq", Exchange("pq"), "pq", max_priority=10),
        Queue("qq", Exchange("qq"), "qq", queue_arguments={"x-queue-type": "quorum"}),
    ]
    return app


def declare(url):
    app = make_app(url)
    from celery.events.event import get_exchange
    with app.connection_for_write() as conn:
        ch = conn.default_channel
        for q in app.conf.task_queues:
            q(ch).declare()
        mailbox = app.control.mailbox
        mailbox.get_queue("py@test")(ch).declare()
        mailbox.reply_exchange(ch).declare()
        get_exchange(conn)(ch).declare()


def send(url, queue):
    app = make_app(url)
    kwargs = {"nested": {"list": [1, 2.5, None, True], "text": "\u00e9"}}
    r = app.send_task("x", args=[1, "\u00e9"], kwargs=kwargs, priority=3, queue=queue)
    print(json.dumps({"id": r.id, "task": "x", "args": [1, "\u00e9"], "kwargs": kwargs,
                      "priority": 3, "reply_to": app.thread_oid, "routing_key": queue}))


def check_recv(sent_file, got_file):
    sent = json.load(open(sent_file))
    got = json.load(open(got_file))
    bad = []
    for k in ("task", "args", "kwargs", "priority", "reply_to", "routing_key"):
        if sent[k] != got[k]:
            bad.append("%s: sent %r, decoded %r" % (k, sent[k], got[k]))
    if got["id"] != sent["id"] or got["correlation_id"] != sent["id"]:
        bad.append("id %r / correlation_id %r, sent %r" % (got["id"], got["correlation_id"], sent["id"]))
    h = got["headers"]
    if h.get("lang") != "py" or h.get("timelimit") != [None, None] or h.get("retries") != 0:
        bad.append("headers %r" % h)
    if not got["delivery_tag"].isdigit():
        bad.append("delivery_tag %r" % got["delivery_tag"])
    for b in bad:
        print("# " + b)
    return 1 if bad else 0


def recv(url, queue, task_id):
    app = make_app(url)
    with app.connection_for_read() as conn:
        ch = conn.default_channel
        raw = ch.basic_get(queue, no_ack=True)
        if raw is None:
            print("# no message in %s" % queue)
            return 1
        m = ch.message_to_python(raw)
        args, kwargs, embed = m.decode()
        checks = {
            "task": (m.headers.get("task"), "books.add"),
            "id": (m.headers.get("id"), task_id),
            "correlation_id": (m.properties.get("correlation_id"), task_id),
            "args": (args, [7, "\u00e9t\u00e9", {"deep": [2.5, True, None]}]),
            "kwargs": (kwargs, {"who": "celeriac"}),
            "priority": (m.properties.get("priority"), 6),
            "delivery_mode": (m.properties.get("delivery_mode"), 2),
            "content_type": (m.content_type, "application/json"),
            "content_encoding": (m.content_encoding, "utf-8"),
            "routing_key": (m.delivery_info.get("routing_key"), queue),
            "group_index": (m.headers.get("group_index", "missing"), None),
        }
        bad = ["%s: got %r, want %r" % (k, g, w) for k, (g, w) in checks.items() if g != w]
        for b in bad:
            print("# " + b)
        return 1 if bad else 0


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "declare":
        declare(sys.argv[2])
    elif cmd == "send":
        send(sys.argv[2], sys.argv[3])
    elif cmd == "check-recv":
        sys.exit(check_recv(sys.argv[2], sys.argv[3]))
    elif cmd == "recv":
        sys.exit(recv(sys.argv[2], sys.argv[3], sys.argv[4]))
