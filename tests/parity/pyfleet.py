# SPDX-License-Identifier: MIT
"""pyfleet.py: the Python Celery worker of the mixed-fleet test. The same task
names as examples/books (tasks.add, tasks.sleep, tasks.echo, tasks.fail) with
the same results, so a message can go to either kind of worker.

Run: python3 -m celery -A pyfleet worker -E -Q celery,pyonly (from this
directory). Environment: BROKER_URL, RESULT_URL.
"""
import os
import time

from celery import Celery

app = Celery("pyfleet", broker=os.environ["BROKER_URL"],
             backend=os.environ.get("RESULT_URL", os.environ["BROKER_URL"]))
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    result_serializer="json",
    result_expires=86400,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
)


@app.task(name="tasks.add")
def add(x, y):
    return x + y


@app.task(name="tasks.sleep")
def sleep(seconds):
    time.sleep(seconds)
    return float(seconds)


@app.task(name="tasks.echo")
def echo(x):
    return x


@app.task(name="tasks.fail")
def fail(message):
    raise ValueError(message)
