#!/usr/bin/python3
# SPDX-License-Identifier: MIT
# demo_client.py: the Python Celery side of `make demo` and `make demo-redis`
# (scripts/demo.sh): enqueue books.get_book_info tasks, watch them run, check the
# results as Python reads them, and report the worker's per-child facts from
# /proc. Not a test suite: it prints what it sees and exits non-zero with one
# line when something is wrong. Brokers: kombu's SQL transport in an SQLite file
# (sqla+sqlite:////abs/path.db) with Celery's database backend
# (db+sqlite:////abs/path.db), or Redis for both.
#
#   demo_client.py enqueue BROKER_URL N BOOKS IDFILE
#   demo_client.py watch   BROKER_URL BACKEND_URL N WORKER_PID STARTED_EPOCH [STALL_SECONDS]
#   demo_client.py check   BROKER_URL BACKEND_URL IDFILE SAMPLE
#   demo_client.py facts   WORKER_PID DBPATH LOGFILE [OTHER_DBPATH...]
#   demo_client.py children WORKER_PID
import datetime
import json
import os
import pickle
import random
import sqlite3
import sys
import time

QUEUE = "celery"
META_PREFIX = "celery-task-meta-"
SQLA_SQLITE = "sqla+sqlite:///"
DB_SQLITE = "db+sqlite:///"


def die(msg):
    print(f"demo: {msg}", file=sys.stderr)
    sys.exit(1)


def celery_app(broker, backend=None):
    from celery import Celery

    app = Celery("demo", broker=broker, backend=backend)
    # Fail fast instead of retrying for ever when the private Redis is gone.
    app.conf.broker_connection_retry = False
    app.conf.broker_connection_max_retries = 0
    return app


def sqlite_path(url):
    """The file of a sqla+sqlite:/// or db+sqlite:/// URL, None for any other."""
    for prefix in (SQLA_SQLITE, DB_SQLITE):
        if url.startswith(prefix):
            return url[len(prefix):]
    return None


def sqlite_count(path, sql):
    """One count from an SQLite file; 0 while the file or the table does not
    exist yet (the worker creates celery_taskmeta when a child starts)."""
    if not os.path.exists(path):
        return 0
    db = sqlite3.connect(path, timeout=5)
    try:
        return db.execute(sql).fetchone()[0]
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):
            return 0
        raise
    finally:
        db.close()


READY_SQL = ("SELECT count(*) FROM kombu_message m JOIN kombu_queue q ON q.id = m.queue_id"
             f" WHERE q.name = '{QUEUE}' AND m.visible")


def enqueue(broker, n, books, idfile):
    """send_task N tasks (book ids cycling 1..BOOKS); writes 'task_id book_id' lines.

    On kombu's SQL transport each send is one INSERT and one commit, and kombu
    swallows a failed commit (e.g. "database is locked" past the 5 s busy
    timeout): the ready rows are counted afterwards, so a lost send is an
    error here, not a task that silently never runs."""
    app = celery_app(broker)
    db = sqlite_path(broker)
    before = sqlite_count(db, READY_SQL) if db else 0
    lines = []
    tty = sys.stderr.isatty()
    start = last_draw = time.monotonic()
    # One producer for all sends: send_task would otherwise take a connection
    # from the pool and declare the queue on every call.
    with app.producer_or_acquire() as producer:
        for i in range(n):
            book_id = i % books + 1
            res = app.send_task("books.get_book_info", args=[book_id], producer=producer)
            lines.append(f"{res.id} {book_id}\n")
            now = time.monotonic()
            if tty and now - last_draw >= 0.5:
                print(f"\r  enqueued {i + 1:6d}/{n}   {(i + 1) / (now - start):5.0f}/s",
                      end="", file=sys.stderr, flush=True)
                last_draw = now
    elapsed = time.monotonic() - start
    if tty and elapsed >= 0.5:
        print("\r\033[K", end="", file=sys.stderr, flush=True)
    with open(idfile, "w") as f:
        f.writelines(lines)
    if db:
        stored = sqlite_count(db, READY_SQL) - before
        if stored != n:
            die(f"sent {n} tasks but {stored} rows were stored in kombu_message: "
                "kombu's publisher drops a send whose commit fails")
    how = (f"one row each in {os.path.basename(db)} (kombu's SQL transport), counted"
           if db else "")
    print(f"enqueued {n} books.get_book_info tasks with Celery's send_task "
          f"in {elapsed:.2f} s ({n / elapsed:.0f}/s){', ' + how if how else ''}")


def redis_client(url):
    import redis

    return redis.Redis.from_url(url, socket_timeout=5)


def proc_state(pid):
    """The /proc state letter of pid, or None when it no longer exists."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def counters(broker, backend):
    """Two functions: the number of ready messages, the number of stored results."""
    b, r = sqlite_path(broker), sqlite_path(backend)
    if b and r:
        return (lambda: sqlite_count(b, READY_SQL),
                lambda: sqlite_count(r, "SELECT count(*) FROM celery_taskmeta"))
    b, r = redis_client(broker), redis_client(backend)
    # The result database is private to the demo: every key in it is a
    # celery-task-meta-* key, so DBSIZE counts results in O(1).
    return (lambda: b.llen(QUEUE), r.dbsize)


def watch(broker, backend, n, worker_pid, started, stall):
    """Polls queue length and result count until all N results exist.

    Polls every 0.1 s so the end time is accurate, redraws one progress line
    every 0.5 s. Prints 'RESULT elapsed' on stdout's last line: seconds since
    `started` (the Unix time the worker was launched at).
    """
    queued_now, done_now = counters(broker, backend)
    tty = sys.stderr.isatty()
    # Wall clock, not monotonic: the start was taken by the shell before this
    # interpreter existed.
    start = started
    last_change, last_done, last_draw = start, -1, 0.0
    while True:
        queued, done = queued_now(), done_now()
        now = time.time()
        if done != last_done:
            last_change, last_done = now, done
        if tty and (now - last_draw >= 0.5 or done >= n):
            rate = done / (now - start) if now > start else 0.0
            print(f"\r  queued {queued:6d}   results {done:6d}/{n}   {rate:7.0f} tasks/s",
                  end="", file=sys.stderr, flush=True)
            last_draw = now
        elif not tty and (now - last_draw >= 2.0 or done >= n):
            print(f"  queued {queued} results {done}/{n}", file=sys.stderr, flush=True)
            last_draw = now
        if done >= n:
            break
        state = proc_state(worker_pid)
        if state is None or state == "Z":
            if tty:
                print(file=sys.stderr)
            die(f"the worker (pid {worker_pid}) exited with {done}/{n} results stored")
        if now - last_change > stall:
            if tty:
                print(file=sys.stderr)
            die(f"no new result for {stall:.0f} s ({done}/{n} stored, {queued} still queued)")
        time.sleep(0.1)
    if tty:
        print(file=sys.stderr)
    elapsed = time.time() - start
    print(f"RESULT {elapsed:.3f}")


def stored_results(backend, ids):
    """The stored result of each id as a dict (status, result, date_done), or
    None: read from celery_taskmeta in one query (the result column is a
    pickle, as Celery's PickleType writes it), or from Redis in one pipeline."""
    path = sqlite_path(backend)
    if path:
        db = sqlite3.connect(path, timeout=5)
        try:
            rows = db.execute("SELECT task_id, status, result, date_done FROM celery_taskmeta")
            # Our own worker wrote these pickles into our own temp dir.
            metas = {tid: {"status": status, "date_done": date_done,
                           "result": pickle.loads(blob) if blob is not None else None}
                     for tid, status, blob, date_done in rows}
        finally:
            db.close()
        return [metas.get(tid) for tid in ids]
    r = redis_client(backend)
    pipe = r.pipeline(transaction=False)
    for tid in ids:
        pipe.get(META_PREFIX + tid)
    return [json.loads(raw) if raw else None for raw in pipe.execute()]


def check(broker, backend, idfile, sample):
    """Every stored result is SUCCESS with the right title; a sample is read
    back through Celery's own AsyncResult.get()."""
    with open(idfile) as f:
        tasks = [(tid, int(book)) for tid, book in (line.split() for line in f)]
    bad, done = [], []
    for (tid, book), meta in zip(tasks, stored_results(backend, [tid for tid, _ in tasks])):
        if not meta or meta.get("status") != "SUCCESS" or meta.get("result") != f"Book {book}":
            bad.append((tid, book, meta))
        elif meta.get("date_done"):
            done.append(meta["date_done"])
    if bad:
        tid, book, meta = bad[0]
        die(f"{len(bad)}/{len(tasks)} results wrong; first: task {tid} (book {book}): {meta}")
    print(f"all {len(tasks)} results are SUCCESS with the right title")
    # The worker stamps each result with date_done: the span from the first to
    # the last is its throughput without process start-up and without our polling.
    stamps = []
    for text in done:
        try:
            stamps.append(datetime.datetime.fromisoformat(text.replace("Z", "+00:00")))
        except ValueError:
            pass
    if len(stamps) >= 2:
        span = (max(stamps) - min(stamps)).total_seconds()
        if span > 0:
            print(f"date_done of the first and last result are {span:.3f} s apart: "
                  f"{(len(stamps) - 1) / span:.0f} tasks/s once the children run")

    app = celery_app(broker, backend)
    picked = random.sample(tasks, min(sample, len(tasks)))
    for tid, book in picked:
        res = app.AsyncResult(tid)
        value = res.get(timeout=10)
        if res.status != "SUCCESS" or value != f"Book {book}":
            die(f"AsyncResult({tid}).get() gave {res.status} {value!r}, want SUCCESS 'Book {book}'")
    tid, book = picked[0]
    print(f"{len(picked)} read back with Celery's AsyncResult.get(), e.g. "
          f"get_book_info({book}) -> {app.AsyncResult(tid).get(timeout=10)!r}")


def children_of(pid, control=False):
    """The worker's pool children; with control=True, its control process
    (comm "celeriac:control": remote control and heartbeats, no database)."""
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                head, tail = f.read().rsplit(")", 1)
        except (FileNotFoundError, ProcessLookupError):
            continue
        comm = head.split("(", 1)[1]
        if int(tail.split()[1]) == pid and comm.startswith("celeriac:contr") == control:
            kids.append(int(entry))
    return sorted(kids)


def status_field(pid, name):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return line.split(":", 1)[1].strip()
    return "?"


def db_fds(pid, dbpath):
    """The fds of pid open on the database file itself (not -wal / -shm)."""
    real = os.path.realpath(dbpath)
    fds = []
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == real:
                    fds.append(int(fd))
            except OSError:
                continue
    except PermissionError:
        return None
    return sorted(fds)


def facts(worker_pid, dbpath, logfile, others=()):
    """One SQLite connection per child, none in the master, each opened by the
    child itself (its pid on the worker's 'connected' log line). others: the
    broker's and the result backend's SQLite files, on which each child holds
    one handle too and the master none."""
    kids = children_of(worker_pid)
    if not kids:
        die(f"the worker (pid {worker_pid}) has no child processes")
    with open(logfile, errors="replace") as f:
        log = f.read().splitlines()
    # The child logs "database connection to '...' opened by pid N (after fork,
    # ...)" once it is connected (src/worker/child.c).
    connect_lines = [l for l in log if "database connection to" in l and "opened by pid" in l]
    problems = []

    def on_others(pid, want):
        counts = []
        for path in others:
            n = len(db_fds(pid, path))
            counts.append(f"{n} on {os.path.basename(path)}")
            if n != want:
                problems.append(f"pid {pid} has {n} handles on {os.path.basename(path)}, "
                                f"want {want}")
        return f" ({', '.join(counts)})" if counts else ""

    master_fds = db_fds(worker_pid, dbpath)
    print(f"master pid {worker_pid}: {len(master_fds)} handle(s) on {os.path.basename(dbpath)}"
          f"{on_others(worker_pid, 0)}, RSS {status_field(worker_pid, 'VmRSS')}")
    if master_fds:
        problems.append(f"the master holds the database open (fds {master_fds})")
    for pid in kids:
        fds = db_fds(pid, dbpath)
        mine = [l for l in connect_lines if f"opened by pid {pid} " in l]
        print(f"child  pid {pid}: {len(fds)} handle(s) on {os.path.basename(dbpath)}"
              f"{on_others(pid, 1)}, RSS {status_field(pid, 'VmRSS')}, "
              f"{len(mine)} connect log line(s)")
        for l in mine[:2]:
            print(f"    log: {l.strip()}")
        if len(fds) != 1:
            problems.append(f"child {pid} has {len(fds)} handles on the database, want 1")
        if not mine:
            problems.append(f"no 'database connected' log line names child pid {pid}")
    for pid in children_of(worker_pid, control=True):
        fds = db_fds(pid, dbpath)
        print(f"control pid {pid}: {len(fds)} handle(s) on {os.path.basename(dbpath)}, "
              f"RSS {status_field(pid, 'VmRSS')} (remote control and heartbeats)")
        if fds:
            problems.append(f"the control process {pid} holds the database open")
    if problems:
        die("; ".join(problems))
    also = " (and one each on the broker's and the results' files)" if others else ""
    print(f"{len(kids)} children, one database connection each{also}, each opened by the child "
          f"after fork (the master holds none)")


def main(argv):
    if len(argv) < 2:
        die("usage: demo_client.py enqueue|watch|check|facts|children ...")
    cmd, args = argv[1], argv[2:]
    if cmd == "enqueue" and len(args) == 4:
        enqueue(args[0], int(args[1]), int(args[2]), args[3])
    elif cmd == "watch" and len(args) in (5, 6):
        watch(args[0], args[1], int(args[2]), int(args[3]), float(args[4]),
              float(args[5]) if len(args) == 6 else 60.0)
    elif cmd == "check" and len(args) == 4:
        check(args[0], args[1], args[2], int(args[3]))
    elif cmd == "children" and len(args) == 1:
        print(" ".join(str(pid) for pid in children_of(int(args[0]))))
    elif cmd == "facts" and len(args) >= 3:
        facts(int(args[0]), args[1], args[2], args[3:])
    else:
        die(f"bad arguments for {cmd}: {args}")


if __name__ == "__main__":
    main(sys.argv)
