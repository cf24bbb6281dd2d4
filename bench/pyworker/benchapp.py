# SPDX-License-Identifier: MIT
"""benchapp.py: the Python Celery contender of the benchmark (bench/run.sh).

tasks.add and books.get_book_info with exactly the SQL of examples/books/books.c
(one UPDATE ... RETURNING title, prepared once per connection, run as its own
implicit transaction), and the usual per-process connection recipe:
worker_process_init opens a psycopg2 connection, worker_process_shutdown closes
it, tasks reuse the module-level connection.

Run from this directory:
  python3 -m celery -A benchapp worker -P prefork -c N --without-gossip \
      --without-mingle --without-heartbeat -l warning
Environment: BENCH_BROKER, BENCH_BACKEND (redis URLs), BENCH_DB (libpq URL).
"""
import os

import psycopg2
from celery import Celery
from celery.signals import worker_process_init, worker_process_shutdown

app = Celery("benchapp", broker=os.environ["BENCH_BROKER"], backend=os.environ["BENCH_BACKEND"])
# Celery's defaults otherwise (prefetch multiplier 4, early ack, json, results
# kept for a day), as a team would run it.
app.conf.update(result_expires=86400, broker_connection_retry_on_startup=True)

GET_BOOK_SQL = "UPDATE books SET fetched_at = now() WHERE id = %s RETURNING title"

_conn = None
_cur = None


@worker_process_init.connect
def open_connection(**_):
    """Per child, after fork: one connection, one prepared statement."""
    global _conn, _cur
    _conn = psycopg2.connect(os.environ["BENCH_DB"],
                             application_name="bench pyworker pid %d" % os.getpid())
    # As books.c: the statement is its own (implicit) transaction, one round
    # trip; psycopg2's default would add BEGIN and COMMIT round trips.
    _conn.autocommit = True
    _cur = _conn.cursor()
    _cur.execute("PREPARE books_get_book_info (bigint) AS "
                 + GET_BOOK_SQL.replace("%s", "$1"))


@worker_process_shutdown.connect
def close_connection(**_):
    global _conn, _cur
    if _conn is not None:
        _cur.close()
        _conn.close()
        _conn = _cur = None


@app.task(name="tasks.add")
def add(x, y):
    return x + y


@app.task(name="books.get_book_info")
def get_book_info(book_id):
    _cur.execute("EXECUTE books_get_book_info (%s)", (book_id,))
    row = _cur.fetchone()
    if row is None:
        raise LookupError("book %d not found" % book_id)
    return row[0]
