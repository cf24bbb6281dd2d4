# SPDX-License-Identifier: MIT
"""db_backend_client.py: Debian's Python Celery client against a worker that
stores results with Celery's database backend (db+postgresql://, db+sqlite:///),
for test_db_backend.sh.

  db_backend_client.py cases BROKER BACKEND      values, failure, retry, columns
  db_backend_client.py send BROKER BACKEND PREFIX the differential task set, ids PREFIX-N
  db_backend_client.py compare BACKEND A B        rows A-N and B-N: same bytes and columns
  db_backend_client.py one BROKER BACKEND         one task, for a schema made elsewhere
  db_backend_client.py submit BROKER BACKEND ID   sends add(1, 2) as ID without waiting
  db_backend_client.py wait BROKER BACKEND ID     reads ID's result (3)
  db_backend_client.py create BACKEND             lets Python create the tables
"""
import pickle
import sys

import sqlalchemy as sa
from celery import Celery

from tap import check, diag, done, eq, ok, not_ok

TIMEOUT = 20
EXTENDED = ("name", "args", "kwargs", "worker", "retries", "queue")

# The differential set: (task, args); results of every JSON shape, a
# failure, and a retried task.
DIFF_TASKS = [
    ("tasks.add", [2, 3]),
    ("tasks.add", [2 ** 40, 1]),
    ("tasks.add", [-70000, 1]),
    ("tasks.echo", ["h\u00e9llo"]),
    ("tasks.echo", [2.5]),
    ("tasks.echo", [[1, "a", None, True, False, "a", ""]]),
    ("tasks.echo", [{"k": {"k": [1, 2.5]}, "l": [{"k": 1}, {"k": 2}], "e": "\u20ac"}]),
    ("tasks.echo", [None]),
    ("tasks.fail", ["boom"]),
    ("tasks.flaky", [1]),
]


def make_app(broker, backend):
    app = Celery("dbclient", broker=broker, backend=backend)
    app.conf.update(broker_connection_retry_on_startup=True, result_expires=None)
    return app


def engine_of(backend):
    return sa.create_engine(backend[len("db+"):])


def row_of(engine, task_id):
    with engine.connect() as c:
        r = c.execute(sa.text("SELECT * FROM celery_taskmeta WHERE task_id = :t"),
                      {"t": task_id}).mappings().first()
        return dict(r) if r else None


def get_quiet(res):
    try:
        return res.get(timeout=TIMEOUT), None
    except Exception as e:  # the FAILURE case: the exception is the result
        return None, e


def check_values(app):
    for name, args, want in [
        ("tasks.add", [2, 3], 5),
        ("tasks.add", [2 ** 40, 2 ** 40], 2 ** 41),
        ("tasks.echo", ["h\u00e9llo w\u00f6rld \u20ac"], "h\u00e9llo w\u00f6rld \u20ac"),
        ("tasks.echo", [2.5], 2.5),
        ("tasks.echo", [[1, "two", 3.0, None, True]], [1, "two", 3.0, None, True]),
        ("tasks.echo", [{"a": {"b": [1, {"c": None}]}, "d": ""}],
         {"a": {"b": [1, {"c": None}]}, "d": ""}),
    ]:
        res = app.send_task(name, args=args)
        got, exc = get_quiet(res)
        eq("%s%r: SUCCESS read back with AsyncResult.get()" % (name, args), want, got,
           repr(exc))
        eq("%s%r: state SUCCESS" % (name, args), "SUCCESS", res.state)


def check_failure(app, engine):
    res = app.send_task("tasks.fail", args=["it broke"])
    _, exc = get_quiet(res)
    check("FAILURE: get() raises the builtin ValueError", isinstance(exc, ValueError),
          repr(exc))
    eq("FAILURE: the exception's args", ("it broke",), getattr(exc, "args", None))
    eq("FAILURE: state", "FAILURE", res.state)
    check("FAILURE: AsyncResult.traceback names the exception",
          "ValueError" in (res.traceback or ""), res.traceback)
    row = row_of(engine, res.id)
    check("FAILURE: date_done set", row and row["date_done"] is not None, row)
    return res.id


def check_retry(app, engine):
    res = app.send_task("tasks.flaky", args=[2])
    got, exc = get_quiet(res)
    eq("retried twice then SUCCESS: the result", 2, got, repr(exc))
    eq("retried twice then SUCCESS: state", "SUCCESS", res.state)
    row = row_of(engine, res.id)
    check("retried task: one row, traceback cleared by the SUCCESS",
          row and row["traceback"] is None, row)
    return res.id


def check_columns(engine, ids):
    for tid in ids:
        row = row_of(engine, tid)
        bad = [c for c in EXTENDED if row and row[c] is not None]
        check("row %s: extended columns NULL (no result_extended)" % tid[:8],
              row and not bad, row)
    try:
        from celery.backends.database.session import ResultModelBase
        ResultModelBase.metadata.create_all(engine)
        ok("Python's create_all accepts the tables as they are")
    except Exception as e:  # noqa
        not_ok("Python's create_all accepts the tables as they are", repr(e))


def cmd_cases(broker, backend):
    app = make_app(broker, backend)
    engine = engine_of(backend)
    check_values(app)
    ids = [check_failure(app, engine), check_retry(app, engine)]
    check_columns(engine, ids)


def cmd_send(broker, backend, prefix):
    app = make_app(broker, backend)
    results = [app.send_task(name, args=args, task_id="%s-%d" % (prefix, i))
               for i, (name, args) in enumerate(DIFF_TASKS)]
    for r in results:
        get_quiet(r)
    states = [r.state for r in results]
    check("%s: every differential task finished" % prefix,
          all(s in ("SUCCESS", "FAILURE") for s in states), states)


def pickle_hex(column):
    return None if column is None else bytes(column).hex()  # None: PickleType's NULL


def unpickle(column):
    return None if column is None else pickle.loads(column)


def cmd_compare(backend, a, b):
    engine = engine_of(backend)
    for i, (name, args) in enumerate(DIFF_TASKS):
        ra, rb = row_of(engine, "%s-%d" % (a, i)), row_of(engine, "%s-%d" % (b, i))
        what = "%s%r" % (name, args)
        if not ra or not rb:
            not_ok("%s: both workers stored a row" % what, ra, rb)
            continue
        eq("%s: same status" % what, ra["status"], rb["status"])
        eq("%s: same result pickle bytes" % what, pickle_hex(ra["result"]),
           pickle_hex(rb["result"]), "unpickled: %r / %r" % (
               unpickle(ra["result"]), unpickle(rb["result"])))
        shape = {c: (ra[c] is None, rb[c] is None) for c in ra if c not in ("id", "task_id")}
        eq("%s: same NULL columns" % what, {c: v[0] for c, v in shape.items()},
           {c: v[1] for c, v in shape.items()})


def cmd_one(broker, backend):
    app = make_app(broker, backend)
    got, exc = get_quiet(app.send_task("tasks.add", args=[20, 22]))
    eq("a task's result stored in tables Python made", 42, got, repr(exc))


def cmd_submit(broker, backend, task_id):
    make_app(broker, backend).send_task("tasks.add", args=[1, 2], task_id=task_id)
    ok("sent %s while the result database is down" % task_id)


def cmd_wait(broker, backend, task_id):
    got, exc = get_quiet(make_app(broker, backend).AsyncResult(task_id))
    eq("result stored once the database is back", 3, got, repr(exc))


def cmd_create(backend):
    make_app("memory://", backend).backend.ResultSession().close()
    ok("Python created the tables in %s" % backend.split("@")[-1])


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    {"cases": cmd_cases, "send": cmd_send, "compare": cmd_compare, "one": cmd_one,
     "submit": cmd_submit, "wait": cmd_wait, "create": cmd_create}[cmd](*args)
    diag("db_backend_client %s done" % cmd)
    done()


if __name__ == "__main__":
    main()
