#!/usr/bin/python3
# SPDX-License-Identifier: MIT
# demo_client.py: the Python Celery side of `make demo` (scripts/demo.sh): enqueue
# books.get_book_info tasks, watch them run, check the results as Python reads
# them, and report the worker's per-child facts from /proc. Not a test suite:
# it prints what it sees and exits non-zero with one line when something is wrong.
#
#   demo_client.py enqueue BROKER_URL N BOOKS IDFILE
#   demo_client.py watch   BROKER_URL BACKEND_URL N WORKER_PID STARTED_EPOCH [STALL_SECONDS]
#   demo_client.py check   BROKER_URL BACKEND_URL IDFILE SAMPLE
#   demo_client.py facts   WORKER_PID DBPATH LOGFILE
#   demo_client.py children WORKER_PID
import datetime
import json
import os
import random
import sys
import time

QUEUE = "celery"
META_PREFIX = "celery-task-meta-"


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


def enqueue(broker, n, books, idfile):
    """send_task N tasks (book ids cycling 1..BOOKS); writes 'task_id book_id' lines."""
    app = celery_app(broker)
    lines = []
    start = time.monotonic()
    # One producer for all sends: send_task would otherwise take a connection
    # from the pool and declare the queue on every call.
    with app.producer_or_acquire() as producer:
        for i in range(n):
            book_id = i % books + 1
            res = app.send_task("books.get_book_info", args=[book_id], producer=producer)
            lines.append(f"{res.id} {book_id}\n")
    elapsed = time.monotonic() - start
    with open(idfile, "w") as f:
        f.writelines(lines)
    print(f"enqueued {n} books.get_book_info tasks with Celery's send_task "
          f"in {elapsed:.2f} s ({n / elapsed:.0f}/s)")


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


def watch(broker, backend, n, worker_pid, started, stall):
    """Polls queue length and result count until all N results exist.

    Polls every 0.1 s so the end time is accurate, redraws one progress line
    every 0.5 s. Prints 'RESULT elapsed' on stdout's last line: seconds since
    `started` (the Unix time the worker was launched at).
    """
    b = redis_client(broker)
    r = redis_client(backend)
    tty = sys.stderr.isatty()
    # Wall clock, not monotonic: the start was taken by the shell before this
    # interpreter existed.
    start = started
    last_change, last_done, last_draw = start, -1, 0.0
    while True:
        # The result database is private to the demo: every key in it is a
        # celery-task-meta-* key, so DBSIZE counts results in O(1).
        queued = b.llen(QUEUE)
        done = r.dbsize()
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


def check(broker, backend, idfile, sample):
    """Every stored result is SUCCESS with the right title; a sample is read
    back through Celery's own AsyncResult.get()."""
    with open(idfile) as f:
        tasks = [(tid, int(book)) for tid, book in (line.split() for line in f)]
    r = redis_client(backend)
    bad, done = [], []
    pipe = r.pipeline(transaction=False)
    for tid, _ in tasks:
        pipe.get(META_PREFIX + tid)
    for (tid, book), raw in zip(tasks, pipe.execute()):
        meta = json.loads(raw) if raw else None
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


def facts(worker_pid, dbpath, logfile):
    """One SQLite connection per child, none in the master, each opened by the
    child itself (its pid on the worker's 'connected' log line)."""
    kids = children_of(worker_pid)
    if not kids:
        die(f"the worker (pid {worker_pid}) has no child processes")
    with open(logfile, errors="replace") as f:
        log = f.read().splitlines()
    # The child logs "database connection to '...' opened by pid N (after fork,
    # ...)" once it is connected (src/worker/child.c).
    connect_lines = [l for l in log if "database connection to" in l and "opened by pid" in l]
    problems = []
    master_fds = db_fds(worker_pid, dbpath)
    print(f"master pid {worker_pid}: {len(master_fds)} handle(s) on {os.path.basename(dbpath)}, "
          f"RSS {status_field(worker_pid, 'VmRSS')}")
    if master_fds:
        problems.append(f"the master holds the database open (fds {master_fds})")
    for pid in kids:
        fds = db_fds(pid, dbpath)
        mine = [l for l in connect_lines if f"opened by pid {pid} " in l]
        print(f"child  pid {pid}: {len(fds)} handle(s) on {os.path.basename(dbpath)}, "
              f"RSS {status_field(pid, 'VmRSS')}, "
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
    print(f"{len(kids)} children, one database connection each, each opened by the child "
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
    elif cmd == "facts" and len(args) == 3:
        facts(int(args[0]), args[1], args[2])
    else:
        die(f"bad arguments for {cmd}: {args}")


if __name__ == "__main__":
    main(sys.argv)
