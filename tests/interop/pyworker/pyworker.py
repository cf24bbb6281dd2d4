# SPDX-License-Identifier: MIT
"""pyworker.py: the reference implementation of examples/books as a Python
Celery app, for the differential test (test_differential.sh). Same task names,
same semantics and the same exception types and texts as examples/books/books.c,
with the usual per-process connection recipe (worker_process_init opens a
psycopg2 connection, worker_process_shutdown closes it).

Run: python3 -m celery -A pyworker worker -P prefork -c 2 (from this directory)
Environment: BROKER_URL, RESULT_URL, PG_URL; TASK_SERIALIZER,
RESULT_SERIALIZER (default json) and ACCEPT_CONTENT (comma-separated, default
json) for the msgpack differential (test_differential_msgpack.sh);
SQL_POLLING_INTERVAL, seconds between kombu's polls of an empty SQL table
(sqla+...: default 1) for the SQL differential (test_differential_sql.sh).
"""
import os
import time

import psycopg2
from celery import Celery
from celery.signals import worker_process_init, worker_process_shutdown

app = Celery("pyworker", broker=os.environ["BROKER_URL"], backend=os.environ["RESULT_URL"])
app.conf.update(
    task_serializer=os.environ.get("TASK_SERIALIZER", "json"),
    accept_content=os.environ.get("ACCEPT_CONTENT", "json").split(","),
    result_serializer=os.environ.get("RESULT_SERIALIZER", "json"),
    result_expires=86400,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
)
if os.environ.get("SQL_POLLING_INTERVAL"):
    # kombu's SQL transport hands every transport option to create_engine(),
    # so the interval is set on the transport class itself.
    from kombu.transport import sqlalchemy as kombu_sqla
    kombu_sqla.Transport.polling_interval = float(os.environ["SQL_POLLING_INTERVAL"])

_conn = None
INT64_MAX = 2 ** 63 - 1
INT64_MIN = -(2 ** 63)


@worker_process_init.connect
def open_connection(**_):
    global _conn
    _conn = psycopg2.connect(os.environ["PG_URL"], application_name="pyworker-%d" % os.getpid())


@worker_process_shutdown.connect
def close_connection(**_):
    global _conn
    if _conn is not None:
        _conn.close()
        _conn = None


# ---- argument checks with celeriac's semantics and texts (celeriac_arg_*) ----
# The texts below must equal what celeriac stores; test_differential.sh fails
# on any difference in exc_type, exc_module or exc_message.
from argspec import arg_int, arg_number, arg_str, arg_any  # noqa: E402


@app.task(name="tasks.add")
def add(*args, **kwargs):
    x = arg_int(args, kwargs, 0, "x")
    y = arg_int(args, kwargs, 1, "y")
    s = x + y
    if s > INT64_MAX or s < INT64_MIN:
        raise OverflowError("%d + %d does not fit in int64" % (x, y))
    return s


@app.task(name="tasks.sleep")
def sleep(*args, **kwargs):
    seconds = arg_number(args, kwargs, 0, "seconds")
    if seconds != seconds or seconds < 0:
        raise ValueError("sleep length must be non-negative")
    if seconds > 1e9:
        raise OverflowError("sleep length is too large")
    time.sleep(seconds)
    return float(seconds)


@app.task(name="tasks.fail")
def fail(*args, **kwargs):
    raise ValueError(arg_str(args, kwargs, 0, "message"))


@app.task(name="tasks.echo")
def echo(*args, **kwargs):
    return arg_any(args, kwargs, 0, "x")


@app.task(name="tasks.flaky", bind=True)
def flaky(self, *args, **kwargs):
    """Retries with KeyError('again') until retried `times` times (books.c)."""
    times = arg_int(args, kwargs, 0, "times")
    if self.request.retries < times:
        raise self.retry(exc=KeyError("again"), countdown=0.1, max_retries=5)
    return self.request.retries


@app.task(name="books.get_book_info")
def get_book_info(*args, **kwargs):
    book_id = arg_int(args, kwargs, 0, "book_id")
    with _conn:  # one transaction: commit on return, rollback on exception
        with _conn.cursor() as cur:
            cur.execute("SELECT title FROM books WHERE id = %s", (book_id,))
            row = cur.fetchone()
            if row is None:
                raise LookupError("book %d not found" % book_id)
            cur.execute("UPDATE books SET fetched_at = now() WHERE id = %s", (book_id,))
            return row[0]


@app.task(name="books.get_book_info_txn")
def get_book_info_txn(*args, **kwargs):
    """libbooks flags this one CELERIAC_TRANSACTIONAL (celeriac runs it in the
    transaction that deletes its message); Python runs it as get_book_info."""
    return get_book_info(*args, **kwargs)
