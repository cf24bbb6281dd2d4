#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""bench.py: the measuring half of `make bench` (bench/run.sh starts the services
and calls it). Enqueues the tasks with the real Python Celery client, runs each
contender (celeriac, Python Celery, the C floor) on them, measures throughput,
CPU and memory from /proc, runs the latency test, and writes RESULTS.md plus the
data files the gnuplot scripts draw.

  bench.py enqueue    WORKLOAD N          template list of N real Celery messages
                                          (and, with amqp in BENCH_BROKERS, the same
                                          messages as Celery sends them over AMQP; with
                                          sql, W1's as Celery stores them in kombu_message,
                                          and again as books.get_book_info_txn)
  bench.py throughput                     every W1/W2 run on each broker -> runs.jsonl
  bench.py latency                        W3 -> latency.jsonl, lat-<contender>.dat
  bench.py report                         RESULTS.md and the plot data

Configuration comes from the environment run.sh sets (BENCH_*). Every process
this starts is stopped by its pid; nothing else is touched.
"""
import datetime
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time

ENV = os.environ
ROOT = ENV.get("BENCH_ROOT", os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = ENV.get("BENCH_BUILD", os.path.join(ROOT, "build"))
TMP = ENV.get("BENCH_TMP", "/tmp")
OUT = ENV.get("BENCH_OUT", os.path.join(ROOT, "bench"))
REDIS_PORT = int(ENV.get("BENCH_REDIS_PORT", "6379"))
PG_URL = ENV.get("BENCH_PG_URL", "")
PG_PID = int(ENV.get("BENCH_PG_PID", "0"))
REDIS_PID = int(ENV.get("BENCH_REDIS_PID", "0"))
TASKS = int(ENV.get("BENCH_TASKS", "20000"))
PY_TASKS = int(ENV.get("BENCH_PY_TASKS", str(TASKS)))
REPS = int(ENV.get("BENCH_REPS", "3"))
PY_REPS = int(ENV.get("BENCH_PY_REPS", str(REPS)))
BOOKS = int(ENV.get("BENCH_BOOKS", "10000"))
CONCURRENCIES = [int(c) for c in ENV.get("BENCH_CONCURRENCY", "1 2 4").split()]
LAT_SECONDS = float(ENV.get("BENCH_LATENCY_SECONDS", "10"))
LAT_CONCURRENCY = int(ENV.get("BENCH_LATENCY_CONCURRENCY", "2"))
# The half-load runs behind the p99 targets are this many windows of
# LAT_SECONDS each, interleaved across contenders, their percentiles taken over
# every window's latencies: one window's p99 is mostly whether a burst of
# foreign load happened to fall inside it.
LAT_WINDOWS = int(ENV.get("BENCH_LATENCY_WINDOWS", "3"))
CONTENDERS = ENV.get("BENCH_CONTENDERS", "celeriac python floor floor-kombu").split()
# W3 for the three the issue names; floor-kombu is a throughput yardstick only.
LAT_CONTENDERS = [c for c in ENV.get("BENCH_LAT_CONTENDERS", "celeriac python floor").split()
                  if c in CONTENDERS]
# Brokers the W1/W2 runs use: "redis" (the runs of issue 5, results in Redis db 1),
# "amqp" (a private RabbitMQ run.sh starts; results in the same Redis db 1) and
# "sql" (kombu's SQL transport in the bench's PostgreSQL database, beside the
# books table; W1 only; results in the same Redis db 1).
BROKERS = ENV.get("BENCH_BROKERS", "redis amqp sql").split()
RABBITMQ_PORT = int(ENV.get("BENCH_RABBITMQ_PORT", "0"))
RABBITMQ_PID = int(ENV.get("BENCH_RABBITMQ_PID", "0"))
# On RabbitMQ: celeriac, Python Celery and the floor on RabbitMQ (floor-kombu
# is Redis only); tasks and runs per point default to the Redis part's.
AMQP_CONTENDERS = [c for c in ENV.get("BENCH_AMQP_CONTENDERS", "celeriac python floor").split()
                   if c in ("celeriac", "python", "floor")]
AMQP_TASKS = int(ENV.get("BENCH_AMQP_TASKS", str(TASKS)))
AMQP_PY_TASKS = int(ENV.get("BENCH_AMQP_PY_TASKS", str(PY_TASKS)))
AMQP_REPS = int(ENV.get("BENCH_AMQP_REPS", str(REPS)))
AMQP_PY_REPS = int(ENV.get("BENCH_AMQP_PY_REPS", str(PY_REPS)))
# On the PostgreSQL broker (issue 12): celeriac, celeriac running the transactional
# variant of W1's task (its UPDATE and its message's DELETE in one transaction),
# and Python Celery on kombu's own SQL consumer, which polls and serialises every
# consumer on one row lock: it gets fewer tasks per run (BENCH_SQL_PY_TASKS) so
# the bench stays bounded; and the floor on this broker (celeriac's two round
# trips per message, nothing else).
SQL_CONTENDERS = [c for c in ENV.get("BENCH_SQL_CONTENDERS",
                                     "celeriac celeriac-txn python floor").split()
                  if c in ("celeriac", "celeriac-txn", "python", "floor")]
SQL_TASKS = int(ENV.get("BENCH_SQL_TASKS", str(TASKS)))
SQL_PY_TASKS = int(ENV.get("BENCH_SQL_PY_TASKS", str(min(2000, TASKS))))
SQL_REPS = int(ENV.get("BENCH_SQL_REPS", str(REPS)))
SQL_PY_REPS = int(ENV.get("BENCH_SQL_PY_REPS", str(PY_REPS)))
SQL_WORKLOADS = ("W1",)
TXN_TASK = "books.get_book_info_txn"
WORKLOADS = {"W1": "books.get_book_info", "W2": "tasks.add"}
TASK_OF = dict(WORKLOADS, W3="books.get_book_info")  # W3: latency, W1's task

BROKER = f"redis://127.0.0.1:{REDIS_PORT}/0"
BACKEND = f"redis://127.0.0.1:{REDIS_PORT}/1"
STAGING = f"redis://127.0.0.1:{REDIS_PORT}/2"  # template lists live in db 2
AMQP_BROKER = f"amqp://guest:guest@127.0.0.1:{RABBITMQ_PORT}//"
AMQP_QUEUE = "celery"
SQL_BROKER = "sqla+" + PG_URL  # the books database: transactional tasks apply
META = "celery-task-meta-"
TICK = os.sysconf("SC_CLK_TCK")
STALL_S = 60.0


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def die(msg):
    log(f"FAILED: {msg}")
    sys.exit(1)


def redis(db):
    import redis as redis_py

    return redis_py.Redis(host="127.0.0.1", port=REDIS_PORT, db=db, socket_timeout=30)


def template_key(workload):
    return f"bench:template:{workload}"


def ids_file(workload):
    return os.path.join(TMP, f"ids-{workload}.txt")


# ---- enqueue ------------------------------------------------------------------

def task_args(workload, i):
    if workload == "W1":
        return [i % BOOKS + 1]
    if workload == "W3":
        return [(i * 7919) % BOOKS + 1]
    return [i, 2 * i + 1]


def expected(workload, args):
    if workload == "W1":
        return f"Book {args[0]}"
    return args[0] + args[1]


def enqueue(workload, n):
    """N messages from Celery's own send_task into list `celery` of the staging
    db, renamed to the template every run copies from. Writes 'id args-json' lines
    in list order (the order the workers pop them is the reverse)."""
    from celery import Celery

    app = Celery("benchclient", broker=STAGING)  # no backend: no per-task SUBSCRIBE
    app.conf.broker_connection_retry = False
    r2 = redis(2)
    r2.delete("celery", template_key(workload))
    sent = []
    t0 = time.monotonic()
    with app.producer_or_acquire() as producer:
        for i in range(n):
            args = task_args(workload, i)
            res = app.send_task(TASK_OF[workload], args=args, producer=producer)
            sent.append((res.id, args))
    elapsed = time.monotonic() - t0
    r2.rename("celery", template_key(workload))
    if r2.llen(template_key(workload)) != n:
        die(f"template {workload} has {r2.llen(template_key(workload))} messages, want {n}")
    with open(ids_file(workload), "w") as f:
        for tid, args in sent:
            f.write(f"{tid} {json.dumps(args)}\n")
    log(f"enqueued {n} {TASK_OF[workload]} messages with Celery's send_task in "
        f"{elapsed:.1f} s ({n / elapsed:.0f}/s); template list {template_key(workload)}")
    if "amqp" in BROKERS and workload in WORKLOADS:
        enqueue_amqp(workload, sent)
    if "sql" in BROKERS and workload in SQL_WORKLOADS:
        enqueue_sql(workload, sent, TASK_OF[workload])
        enqueue_sql(workload, sent, TXN_TASK)


def amqp_connect():
    import amqp

    conn = amqp.Connection(host=f"127.0.0.1:{RABBITMQ_PORT}", userid="guest",
                           password="guest", virtual_host="/", connect_timeout=10)
    conn.connect()
    return conn


def amqp_template_file(workload):
    return os.path.join(TMP, f"amqp-template-{workload}.pickle")


def enqueue_amqp(workload, sent):
    """The same tasks (same ids and args) sent by Celery's send_task with the
    pyamqp transport into queue `celery` (declared by kombu as Celery's client
    declares it: durable), then read back as they arrived, bodies and
    properties (persistent, with Celery's headers) byte for byte, into a
    template file every run republishes from (RabbitMQ has no COPY)."""
    from celery import Celery

    conn = amqp_connect()
    ch = conn.channel()
    try:
        ch.queue_purge(AMQP_QUEUE)
    except Exception:  # not declared yet: send_task declares it
        ch = conn.channel()
    app = Celery("benchclient", broker=AMQP_BROKER.replace("amqp://", "pyamqp://", 1))
    app.conf.broker_connection_retry = False
    t0 = time.monotonic()
    with app.producer_or_acquire() as producer:
        for tid, args in sent:
            app.send_task(TASK_OF[workload], args=args, task_id=tid, producer=producer)
    elapsed = time.monotonic() - t0
    n = len(sent)
    deadline = time.monotonic() + 60
    while amqp_queue_depth(ch) < n:
        if time.monotonic() > deadline:
            die(f"queue {AMQP_QUEUE} holds {amqp_queue_depth(ch)} messages after send_task, "
                f"want {n}")
        time.sleep(0.05)
    msgs = []
    ch.basic_qos(0, 1000, False)

    def got(m):
        msgs.append((m.body, dict(m.properties)))
        if len(msgs) % 500 == 0:
            ch.basic_ack(m.delivery_tag, multiple=True)

    tag = ch.basic_consume(AMQP_QUEUE, callback=got)
    while len(msgs) < n:
        conn.drain_events(timeout=30)
    ch.basic_cancel(tag)
    ch.queue_purge(AMQP_QUEUE)
    conn.close()
    ids = [tid for tid, _ in sent]
    got_ids = [p.get("correlation_id") for _, p in msgs]
    if got_ids != ids:
        die(f"AMQP template {workload}: the messages came back in another order or with "
            f"other ids")
    if any(p.get("delivery_mode") != 2 for _, p in msgs):
        die(f"AMQP template {workload}: Celery sent a non-persistent message")
    import pickle

    with open(amqp_template_file(workload), "wb") as f:
        pickle.dump(msgs, f)
    log(f"enqueued {n} {TASK_OF[workload]} messages with Celery's send_task over AMQP in "
        f"{elapsed:.1f} s ({n / elapsed:.0f}/s); saved as template {amqp_template_file(workload)}")


def amqp_queue_depth(ch):
    """Ready messages in the queue (a passive declare)."""
    return ch.queue_declare(AMQP_QUEUE, passive=True).message_count


_amqp_templates = {}


def amqp_fill(workload, n):
    """Empties queue `celery` and publishes the first n messages of the template
    into it, as Celery's client did (default exchange, routing key `celery`, the
    same body and properties); returns once RabbitMQ counts all n as ready."""
    import amqp
    import pickle

    if workload not in _amqp_templates:
        with open(amqp_template_file(workload), "rb") as f:
            _amqp_templates[workload] = pickle.load(f)
    msgs = _amqp_templates[workload][:n]
    conn = amqp_connect()
    ch = conn.channel()
    ch.queue_purge(AMQP_QUEUE)
    t0 = time.monotonic()
    # No publisher confirms (py-amqp would wait for each): the depth check
    # below is what says every message arrived.
    for body, props in msgs:
        ch.basic_publish(amqp.Message(body, **props), exchange="", routing_key=AMQP_QUEUE)
    deadline = time.monotonic() + 120
    while amqp_queue_depth(ch) != n:
        if time.monotonic() > deadline:
            die(f"queue {AMQP_QUEUE} holds {amqp_queue_depth(ch)} messages, want {n}")
        time.sleep(0.05)
    elapsed = time.monotonic() - t0
    conn.close()
    return elapsed


def pg_connect():
    import psycopg2

    conn = psycopg2.connect(PG_URL, application_name="bench.py")
    conn.autocommit = True
    return conn


def sql_template(workload, task):
    return f"bench_template_{workload.lower()}{'_txn' if task == TXN_TASK else ''}"


def enqueue_sql(workload, sent, task):
    """The same tasks (same ids and args), sent by Celery's send_task with
    kombu's SQL transport (sqla+postgresql://, SQLAlchemy): kombu creates its
    tables as it does for any app, and inserts one row per send. The rows, in
    the order they were sent, are copied into a template table every run
    refills kombu_message from (their payloads byte for byte)."""
    from celery import Celery

    conn = pg_connect()
    cur = conn.cursor()
    table = sql_template(workload, task)
    cur.execute("SELECT to_regclass('kombu_message') IS NOT NULL")
    if cur.fetchone()[0]:
        cur.execute("TRUNCATE kombu_message")
    cur.execute(f"DROP TABLE IF EXISTS {table}")
    app = Celery("benchclient", broker=SQL_BROKER)
    app.conf.broker_connection_retry = False
    t0 = time.monotonic()
    with app.producer_or_acquire() as producer:
        for tid, args in sent:
            app.send_task(task, args=args, task_id=tid, producer=producer)
    elapsed = time.monotonic() - t0
    cur.execute(f"CREATE TABLE {table} AS SELECT row_number() OVER (ORDER BY id) AS ord,"
                " payload, queue_id, payload::json->'headers'->>'id' AS task_id,"
                " payload::json->'headers'->>'task' AS task FROM kombu_message"
                " WHERE visible AND version = 1 AND timestamp IS NULL")
    cur.execute(f"SELECT task_id, task FROM {table} ORDER BY ord")
    rows = cur.fetchall()
    if [r[0] for r in rows] != [tid for tid, _ in sent] or any(r[1] != task for r in rows):
        die(f"SQL template {table}: kombu_message holds {len(rows)} rows, not the {len(sent)} "
            f"{task} messages in the order they were sent")
    cur.execute(f"CREATE UNIQUE INDEX ON {table} (ord)")
    cur.execute("TRUNCATE kombu_message")
    conn.close()
    with open(os.path.join(TMP, "sql-enqueue.jsonl"), "a") as f:
        f.write(json.dumps({"table": table, "tasks": len(sent), "seconds": elapsed}) + "\n")
    log(f"enqueued {len(sent)} {task} messages with Celery's send_task over sqla+postgresql in "
        f"{elapsed:.1f} s ({len(sent) / elapsed:.0f}/s); saved as template table {table}")


def sql_fill(workload, n, task):
    """Empties kombu_message and inserts the template's first n rows into it as
    kombu's _put does (id from message_id_sequence, visible, no timestamp,
    version 1, the same payload and queue), in the order they were sent, in
    one statement; then VACUUM ANALYZE so every run starts from the same
    table state."""
    conn = pg_connect()
    cur = conn.cursor()
    t0 = time.monotonic()
    cur.execute("TRUNCATE kombu_message")
    cur.execute("INSERT INTO kombu_message (id, visible, timestamp, payload, version, queue_id)"
                " SELECT nextval('message_id_sequence'), true, NULL, payload, 1, queue_id"
                f" FROM (SELECT * FROM {sql_template(workload, task)} WHERE ord <= %s"
                " ORDER BY ord) t", (n,))
    elapsed = time.monotonic() - t0
    cur.execute("VACUUM ANALYZE kombu_message")
    cur.execute("SELECT count(*) FROM kombu_message WHERE visible")
    got = cur.fetchone()[0]
    conn.close()
    if got != n:
        die(f"kombu_message holds {got} ready rows, want {n}")
    return elapsed


def load_ids(workload):
    with open(ids_file(workload)) as f:
        return [(tid, json.loads(args)) for tid, args in (line.split(" ", 1) for line in f)]


# ---- /proc ------------------------------------------------------------------

def proc_stat(pid):
    """(ppid, state, utime+stime+cutime+cstime in seconds) or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))
    return int(fields[1]), fields[0], ticks / TICK


def descendants(pid):
    """Live descendants of pid, breadth first."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = proc_stat(int(entry))
            if st:
                parents.setdefault(st[0], []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for kid in sorted(parents.get(todo.pop(0), [])):
            out.append(kid)
            todo.append(kid)
    return out


def tree_cpu(pid):
    """CPU seconds of pid and its live descendants, including what each has
    reaped (cutime/cstime). Read while the children still live: a child's time
    reaches its parent's cutime only once it is reaped."""
    total = 0.0
    for p in [pid] + descendants(pid):
        st = proc_stat(p)
        if st:
            total += st[2]
    return total


def smaps(pid):
    """(RSS kB, PSS kB) from /proc/PID/smaps_rollup."""
    rss = pss = None
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return rss, pss


def machine_busy():
    """Busy CPU seconds of the whole machine so far (all CPUs, /proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...
    return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / TICK


def own_cpu():
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


_quiet_budget = [float(ENV.get("BENCH_QUIET_WAIT", "30"))]
_reruns = [int(ENV.get("BENCH_RERUNS", "8"))]


def wait_for_quiet():
    """Before a run: wait (within an overall budget) while other processes on
    the machine use more than 15 % of a CPU, so runs start on a quiet machine."""
    while True:
        b0, o0, t0 = machine_busy(), own_cpu() + service_cpu_total(), time.monotonic()
        time.sleep(0.5)
        foreign = (machine_busy() - b0 - (own_cpu() + service_cpu_total() - o0)) / (
            time.monotonic() - t0)
        if foreign < 0.15 or _quiet_budget[0] <= 0:
            return foreign
        log(f"other processes use {100 * foreign:.0f} % of a CPU; waiting for quiet "
            f"({_quiet_budget[0]:.0f} s of waiting left)")
        time.sleep(2)
        _quiet_budget[0] -= 2.5


def comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except (FileNotFoundError, ProcessLookupError):
        return "?"


def tree_mem(pid):
    """RSS/PSS of the master, of each pool child, and of any other helper
    process in the tree (celeriac's control process), with its name."""
    kids, others = [], []
    for k in descendants(pid):
        name = comm(k)
        if "contro" in name:
            others.append([name] + list(smaps(k)))
        else:
            kids.append(smaps(k))
    return {"master": smaps(pid), "children": kids, "others": others}


def is_running(proc):
    st = proc_stat(proc.pid)
    return proc.poll() is None and st is not None and st[1] != "Z"


# ---- contenders -----------------------------------------------------------------

def worker_cmd(contender, concurrency, broker="redis"):
    """(argv, cwd, env) of a contender at this concurrency, consuming from
    Redis db 0 or from RabbitMQ; results go to Redis db 1 either way."""
    env = dict(ENV)
    url = {"amqp": AMQP_BROKER, "sql": SQL_BROKER}.get(broker, BROKER)
    if contender in ("celeriac", "celeriac-txn"):  # the txn one differs by its messages
        return ([ENV.get("BENCH_CELERIAC", os.path.join(BUILD, "celeriac")), "worker",
                 "-A", ENV.get("BENCH_LIBBOOKS", os.path.join(BUILD, "examples", "libbooks.so")),
                 "-c", str(concurrency),
                 "-b", url, "--result-backend", BACKEND, "--db", PG_URL, "-l", "warning"],
                ROOT, env)
    if contender == "python":
        # Celery's own AMQP transport is py-amqp, spelt pyamqp://.
        env.update(BENCH_BROKER=url.replace("amqp://", "pyamqp://", 1), BENCH_BACKEND=BACKEND,
                   BENCH_DB=PG_URL, PYTHONDONTWRITEBYTECODE="1")
        return (["/usr/bin/python3", "-m", "celery", "-A", "benchapp", "worker",
                 "-c", str(concurrency), "-P", "prefork", "--without-gossip",
                 "--without-mingle", "--without-heartbeat", "-l", "warning"],
                os.path.join(ROOT, "bench", "pyworker"), env)
    if contender == "floor" or (contender == "floor-kombu" and broker == "redis"):
        # --idle-exit 0: stopped with TERM like the others, not by an empty queue.
        # floor-kombu: the floor plus kombu's unacked bookkeeping (optional
        # contender, BENCH_CONTENDERS="... floor-kombu"; Redis only). On sql the
        # broker's connection runs the task's statement too: no --db.
        return ([os.path.join(BUILD, "bench", "floor"), "-c", str(concurrency),
                 "-b", url, "-r", BACKEND]
                + ([] if broker == "sql" else ["--db", PG_URL]) + ["--idle-exit", "0"]
                + (["--kombu-ack"] if contender == "floor-kombu" else []), ROOT, env)
    raise ValueError(contender)


def log_name(contender, broker):
    return os.path.join(TMP, f"{contender}{'' if broker == 'redis' else '-' + broker}.log")


def start_worker(contender, concurrency, logpath, broker="redis"):
    argv, cwd, env = worker_cmd(contender, concurrency, broker)
    logf = open(logpath, "ab")
    logf.write(f"\n==== {' '.join(argv)}\n".encode())
    logf.flush()
    return subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            stdout=logf, stderr=subprocess.STDOUT)


def stop_worker(proc):
    """Warm stop by pid; KILL after 60 s. Returns the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(60)
        except subprocess.TimeoutExpired:
            log(f"pid {proc.pid} ignored TERM for 60 s; killing it")
            proc.kill()
    return proc.wait()


def pg_maintenance():
    """Same table state for every run: VACUUM the updated rows away, CHECKPOINT."""
    conn = pg_connect()
    with conn.cursor() as cur:
        cur.execute("VACUUM books")
        cur.execute("CHECKPOINT")
    conn.close()


def service_cpu():
    """CPU seconds so far of our redis-server, PostgreSQL (all its processes)
    and RabbitMQ (beam and what it runs)."""
    out = {}
    if REDIS_PID:
        out["redis"] = tree_cpu(REDIS_PID)
    if PG_PID:
        out["postgres"] = tree_cpu(PG_PID)
    if RABBITMQ_PID:
        out["rabbitmq"] = tree_cpu(RABBITMQ_PID)
    return out


def foreign_share(busy, ours, svc0, svc1, wall):
    """CPU others used over a run of `wall` seconds, as a fraction of one
    CPU: the machine's busy seconds less ours (this script, its children,
    the worker) and our services'."""
    return max(0.0, busy - ours - sum(svc1[k] - svc0[k] for k in svc1)) / wall


def measure_start(proc):
    """Counters for measure_foreign over a stretch of a run of proc."""
    return (time.monotonic(), machine_busy(), own_cpu(), tree_cpu(proc.pid), service_cpu_total())


def measure_foreign(proc, m0):
    """CPU used since m0 by processes that are none of ours (this script and its
    children, the worker, Redis, PostgreSQL), as a fraction of one CPU."""
    t0, busy0, own0, worker0, svc0 = m0
    used = (machine_busy() - busy0) - (own_cpu() - own0) - (tree_cpu(proc.pid) - worker0) \
        - (service_cpu_total() - svc0)
    return max(0.0, used) / (time.monotonic() - t0)


# Commands this script sends while a run is measured; all others are the worker's.
OWN_COMMANDS = {"dbsize", "info", "config", "flushdb", "copy", "ltrim", "llen", "mget",
                "ping", "select", "client", "hello", "exists"}


def redis_commands(r, n):
    """The worker's Redis commands over the run: {command: [calls per task, usec
    per task]} from INFO commandstats (reset at the start). A script's or a
    transaction's time includes the commands it ran, which are listed too."""
    out = {}
    for key, st in r.info("commandstats").items():
        name = key.replace("cmdstat_", "")
        if name not in OWN_COMMANDS:
            out[name] = [st["calls"] / n, st["usec"] / n]
    return out


def service_cpu_total():
    return sum(service_cpu().values())


def parse_done(text):
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).replace(tzinfo=None)


def check_results(workload, ids):
    """All results SUCCESS with the right value; returns (first, last) date_done."""
    r1 = redis(1)
    stamps, bad = [], []
    for i in range(0, len(ids), 2000):
        chunk = ids[i:i + 2000]
        for (tid, args), raw in zip(chunk, r1.mget([META + t for t, _ in chunk])):
            meta = json.loads(raw) if raw else None
            if (not meta or meta.get("status") != "SUCCESS"
                    or meta.get("result") != expected(workload, args)
                    or meta.get("task_id") != tid):
                bad.append((tid, meta))
            else:
                stamps.append(parse_done(meta["date_done"]))
    if bad:
        die(f"{len(bad)}/{len(ids)} results wrong; first: {bad[0]}")
    return min(stamps), max(stamps)


def run_once(contender, workload, concurrency, rep, n, broker="redis"):
    ids_all = load_ids(workload)
    r0, r1, r2 = redis(0), redis(1), redis(2)
    r0.flushdb()
    r1.flushdb()
    ids = ids_all[:n]
    fill_s = None
    if broker == "amqp":
        fill_s = amqp_fill(workload, n)  # the first n messages, in order
    elif broker == "sql":
        fill_s = sql_fill(workload, n, TXN_TASK if contender == "celeriac-txn" else
                          TASK_OF[workload])
    else:
        # LPUSH left message 0 at the right end, where the workers pop: keeping
        # the rightmost n elements keeps messages 0..n-1.
        r2.execute_command("COPY", template_key(workload), "celery", "DB", 0)
        if n < len(ids_all):
            r0.ltrim("celery", -n, -1)  # the rightmost n: messages 0..n-1
        if r0.llen("celery") != n:
            die(f"queue holds {r0.llen('celery')} messages, want {n}")
    if workload == "W1":
        pg_maintenance()

    wait_for_quiet()
    r0.config_resetstat()
    svc0 = service_cpu()
    busy0, own0 = machine_busy(), own_cpu()
    logpath = log_name(contender, broker)
    t0 = time.monotonic()
    proc = start_worker(contender, concurrency, logpath, broker)
    done, last_done, last_change = 0, -1, t0
    mem_early = None
    try:
        while True:
            time.sleep(0.01)
            done = r1.dbsize()
            now = time.monotonic()
            if done >= n:
                break
            if done != last_done:
                last_done, last_change = done, now
            if mem_early is None and done >= n // 10:
                mem_early = tree_mem(proc.pid)
            if not is_running(proc):
                die(f"{contender} exited (status {proc.poll()}) with {done}/{n} results; "
                    f"see {logpath}")
            if now - last_change > STALL_S:
                die(f"{contender}: no result for {STALL_S:.0f} s ({done}/{n}); see {logpath}")
        wall = time.monotonic() - t0
        cpu = tree_cpu(proc.pid)
        mem = tree_mem(proc.pid)
        svc1 = service_cpu()
        busy1, own1 = machine_busy(), own_cpu()
        cmdstats = redis_commands(r0, n)
    finally:
        rc = stop_worker(proc)
    if rc != 0:
        die(f"{contender} exited with status {rc} after TERM; see {logpath}")
    first, last = check_results(workload, ids)
    span = (last - first).total_seconds()
    row = {
        "broker": broker,
        "contender": contender, "workload": workload, "concurrency": concurrency, "rep": rep,
        "tasks": n, "wall_s": wall, "wall_rate": n / wall,
        "steady_s": span, "rate": (n - 1) / span if span > 0 else float("nan"),
        "cpu_s": cpu, "cpu_ms_per_task": 1000 * cpu / n,
        "svc_cpu_ms_per_task": {k: 1000 * (svc1[k] - svc0[k]) / n for k in svc1},
        "mem": mem, "mem_early": mem_early, "redis_commands": cmdstats,
        # CPU used by processes that are not ours (other users of the machine),
        # as a fraction of one CPU over the run: a disturbed run shows here.
        "foreign_cpu": foreign_share(busy1 - busy0, cpu + own1 - own0, svc0, svc1, wall),
    }
    if fill_s is not None:
        row["fill_s"] = fill_s
    log(f"{workload} {'' if broker == 'redis' else broker + ' '}{contender:8s} c={concurrency} rep {rep}: {row['rate']:8.0f} tasks/s "
        f"(wall {row['wall_rate']:.0f}/s incl. start), {row['cpu_ms_per_task']:.3f} CPU ms/task, "
        f"child RSS {[m[0] for m in mem['children']]} kB"
        + (f", others used {100 * row['foreign_cpu']:.0f} % of a CPU"
           if row["foreign_cpu"] > 0.05 else ""))
    return row


PGBENCH = ENV.get("BENCH_PGBENCH", "1") == "1"


def run_pgbench(concurrency, rep, n):
    """The database alone: pgbench running books.get_book_info's statement
    (prepared, random ids) over `concurrency` connections, n transactions in
    all, against the same PostgreSQL as the workers, in the same run. What
    a worker adds to the database's own cost shows beside it."""
    script = os.path.join(TMP, "pgbench-w1.sql")
    with open(script, "w") as f:
        f.write(f"\\set id random(1, {BOOKS})\n"
                "UPDATE books SET fetched_at = now() WHERE id = :id RETURNING title;\n")
    pg_maintenance()
    wait_for_quiet()
    svc0 = service_cpu()
    busy0, own0 = machine_busy(), own_cpu()
    t = os.times()
    child0 = t.children_user + t.children_system
    t0 = time.monotonic()
    out = subprocess.run(["pgbench", "-n", "-M", "prepared", "-c", str(concurrency), "-j",
                          str(concurrency), "-t", str(max(1, n // concurrency)), "-f", script,
                          PG_URL], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    wall = time.monotonic() - t0
    t = os.times()
    cpu = t.children_user + t.children_system - child0
    svc1 = service_cpu()
    busy1, own1 = machine_busy(), own_cpu()
    m = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", out.stdout)
    if out.returncode != 0 or not m:
        die(f"pgbench failed ({out.returncode}): {out.stderr.strip()[-300:]}")
    done = concurrency * max(1, n // concurrency)
    row = {"broker": "pgbench", "contender": "pgbench", "workload": "W1",
           "concurrency": concurrency, "rep": rep, "tasks": done, "wall_s": wall,
           "rate": float(m.group(1)), "cpu_ms_per_task": 1000 * cpu / done,
           "svc_cpu_ms_per_task": {k: 1000 * (svc1[k] - svc0[k]) / done for k in svc1},
           "foreign_cpu": foreign_share(busy1 - busy0, own1 - own0, svc0, svc1, wall)}
    log(f"W1 pgbench c={concurrency} rep {rep}: {row['rate']:8.0f} tx/s, "
        f"PostgreSQL {row['svc_cpu_ms_per_task'].get('postgres', 0):.3f} CPU ms/tx, "
        f"pgbench {row['cpu_ms_per_task']:.3f}"
        + (f", others used {100 * row['foreign_cpu']:.0f} % of a CPU"
           if row["foreign_cpu"] > 0.05 else ""))
    return row


DURABLE = ENV.get("BENCH_DURABLE", "1") == "1"
DURABLE_REPS = int(ENV.get("BENCH_DURABLE_REPS", "2"))
DURABLE_CONCURRENCIES = [c for c in (2, 4) if c in CONCURRENCIES]


def pg_set_fsync(on):
    """Turns PostgreSQL's fsync on or off (a reload, no restart) and waits
    until a new connection sees it."""
    want = "on" if on else "off"
    conn = pg_connect()
    with conn.cursor() as cur:
        cur.execute(f"ALTER SYSTEM SET fsync = {want}")
        cur.execute("SELECT pg_reload_conf()")
    conn.close()
    for _ in range(100):
        conn = pg_connect()
        with conn.cursor() as cur:
            cur.execute("SHOW fsync")
            got = cur.fetchone()[0]
        conn.close()
        if got == want:
            return
        time.sleep(0.05)
    die(f"PostgreSQL did not take fsync = {want}")


def durable():
    """W1 on Redis, the floor and pgbench once more, with each commit
    waiting for the disk (fsync on), as a production database runs: the
    comparison issue 15 quotes (0.82 x pgbench at c = 2). With fsync off, a
    commit costs the database almost nothing and no worker that also moves
    a message and a result per task can come near it."""
    path = os.path.join(TMP, "durable.jsonl")
    log("durable: PostgreSQL with fsync on for the next runs")
    pg_set_fsync(True)
    try:
        with open(path, "a") as out:
            for conc in DURABLE_CONCURRENCIES:
                for rep in range(DURABLE_REPS):
                    for contender in ("celeriac", "floor"):
                        row = run_once(contender, "W1", conc, rep, TASKS)
                        row["broker"] = "redis-durable"
                        out.write(json.dumps(row) + "\n")
                    row = run_pgbench(conc, rep, TASKS)
                    row["broker"] = "pgbench-durable"
                    out.write(json.dumps(row) + "\n")
                    out.flush()
    finally:
        pg_set_fsync(False)
        log("durable: fsync off again")


def plan(rep, workload):
    """(broker, contender, tasks) of the runs of repetition rep at one point:
    the Redis contenders, then the RabbitMQ ones, then the PostgreSQL broker's."""
    out = []
    if "redis" in BROKERS:
        for contender in CONTENDERS:
            is_py = contender == "python"
            if rep < (PY_REPS if is_py else REPS):
                out.append(("redis", contender, PY_TASKS if is_py else TASKS))
    if "amqp" in BROKERS:
        for contender in AMQP_CONTENDERS:
            is_py = contender == "python"
            if rep < (AMQP_PY_REPS if is_py else AMQP_REPS):
                out.append(("amqp", contender, AMQP_PY_TASKS if is_py else AMQP_TASKS))
    if "sql" in BROKERS and workload in SQL_WORKLOADS:
        for contender in SQL_CONTENDERS:
            is_py = contender == "python"
            if rep < (SQL_PY_REPS if is_py else SQL_REPS):
                out.append(("sql", contender, SQL_PY_TASKS if is_py else SQL_TASKS))
    return out


def throughput():
    path = os.path.join(TMP, "runs.jsonl")
    reps = max(REPS, PY_REPS) if "redis" in BROKERS else 0
    if "amqp" in BROKERS:
        reps = max(reps, AMQP_REPS, AMQP_PY_REPS)
    if "sql" in BROKERS:
        reps = max(reps, SQL_REPS, SQL_PY_REPS)
    with open(path, "a") as out:
        for workload in WORKLOADS:
            for concurrency in CONCURRENCIES:
                # Contenders (and brokers) interleaved within each repetition so
                # drift in the machine (or the table) hits all of them alike.
                for rep in range(reps):
                    for broker, contender, n in plan(rep, workload):
                        # A run that others disturbed (over 30 % of a CPU) is run
                        # once more, within an overall budget; the row says so.
                        for attempt in range(2):
                            row = run_once(contender, workload, concurrency, rep, n, broker)
                            row["attempt"] = attempt + 1
                            if row["foreign_cpu"] <= 0.3 or attempt == 1 or _reruns[0] <= 0:
                                break
                            _reruns[0] -= 1
                            log("disturbed by other processes; running it again")
                        out.write(json.dumps(row) + "\n")
                        out.flush()
                    if PGBENCH and workload == "W1" and rep < REPS:
                        out.write(json.dumps(run_pgbench(concurrency, rep, TASKS)) + "\n")
                        out.flush()


# ---- latency ----------------------------------------------------------------------

def load_runs():
    with open(os.path.join(TMP, "runs.jsonl")) as f:
        runs = [json.loads(line) for line in f]
    durable_path = os.path.join(TMP, "durable.jsonl")
    if os.path.exists(durable_path):
        with open(durable_path) as f:
            runs += [json.loads(line) for line in f]
    for r in runs:
        r.setdefault("broker", "redis")
    return runs


def median_rate(runs, contender, workload, concurrency, key="rate", broker="redis"):
    vals = [r[key] for r in runs if r["contender"] == contender and r["broker"] == broker and
            r["workload"] == workload and r["concurrency"] == concurrency]
    return statistics.median(vals) if vals else None


def pct(sorted_vals, p):
    return sorted_vals[min(len(sorted_vals) - 1, int(p / 100 * len(sorted_vals)))]


def latency_row(contender, variant, rate, achieved, lat, extra=None):
    """Summary of sorted latencies (ms); writes the CDF data for the plot."""
    with open(os.path.join(TMP, f"lat{variant}-{contender}.dat"), "w") as f:
        step = max(1, len(lat) // 2000)
        for i in list(range(0, len(lat), step)) + [len(lat) - 1]:
            f.write(f"{lat[i]:.4f} {(i + 1) / len(lat):.6f}\n")
    row = {"contender": contender, "variant": variant, "concurrency": LAT_CONCURRENCY,
           "target_rate": rate, "achieved_rate": achieved, "tasks": len(lat),
           "p50": pct(lat, 50), "p90": pct(lat, 90), "p99": pct(lat, 99),
           "p999": pct(lat, 99.9), "max": lat[-1], "mean": statistics.fmean(lat),
           "lat": lat}
    row.update(extra or {})
    log(f"W3{variant} {contender:8s} c={LAT_CONCURRENCY} at {rate:.0f}/s (sent {achieved:.0f}/s): "
        f"p50 {row['p50']:.2f} ms  p99 {row['p99']:.2f} ms  max {row['max']:.2f} ms")
    return row


def pool_windows(rows):
    """One row from windows of the same paced run: percentiles over every
    latency of every window, each window's p99 and the most foreign CPU any
    of them saw beside them."""
    if len(rows) == 1:
        return rows[0]
    first = rows[0]
    lat = sorted(x for r in rows for x in r["lat"])
    extra = {k: v for k, v in first.items()
             if k not in ("contender", "variant", "concurrency", "target_rate", "achieved_rate",
                          "tasks", "p50", "p90", "p99", "p999", "max", "mean", "lat")}
    extra["windows"] = len(rows)
    extra["window_p99"] = [r["p99"] for r in rows]
    extra["foreign_cpu"] = max(r.get("foreign_cpu", 0) for r in rows)
    if "late_sends" in first:
        extra["late_sends"] = sum(r["late_sends"] for r in rows)
    if "max_per_second" in first:
        extra["max_per_second"] = [x for r in rows for x in r["max_per_second"]]
    return latency_row(first["contender"], first["variant"], first["target_rate"],
                       statistics.fmean(r["achieved_rate"] for r in rows), lat, extra)


def half_load_windows(out, contenders, paced, variant, caps):
    """LAT_WINDOWS windows of each contender paced at half of its capacity
    (caps) by paced(contender, rate, seconds, variant, extra), taken in turn;
    writes each contender's pooled row. With celeriac and the floor both in,
    every window also paces the floor at celeriac's rate (variant SAME_RATE +
    variant; its own half load is lower): whether a p99 at that rate is the
    machine's, in the same run, beside celeriac's."""
    def window(contender, cap, v):
        return paced(contender, cap / 2, LAT_SECONDS, v, {"capacity": cap})

    windows = {c: [] for c in contenders}
    beside = []
    both = "celeriac" in contenders and "floor" in contenders
    for _ in range(LAT_WINDOWS):
        for contender in contenders:
            windows[contender].append(window(contender, caps[contender], variant))
        if both:
            beside.append(window("floor", caps["celeriac"], SAME_RATE + variant))
    for contender in contenders:
        write_row(out, pool_windows(windows[contender]))
    if beside:
        write_row(out, pool_windows(beside))


def write_row(out, row):
    out.write(json.dumps({k: v for k, v in row.items() if k != "lat"}) + "\n")
    out.flush()


def wait_results(r1, proc, contender, want, timeout=60):
    deadline = time.monotonic() + timeout
    while r1.dbsize() < want:
        if time.monotonic() > deadline or not is_running(proc):
            die(f"{contender}: {r1.dbsize()}/{want} results in the latency run")
        time.sleep(0.02)


WARM = 50
# The variant prefix of the floor's half-load windows paced at celeriac's rate
# ("=h" beside "h"): see half_load_windows.
SAME_RATE = "="


def redis_pace_run(contender, rate, count):
    """One paced run on Redis: WARM messages to warm up, then the next count
    messages of the W3 template (made in advance by send_task) released into
    the queue by bench/latency.c on a fixed schedule (LMOVE, the LPUSH
    send_task ends with; as fast as it can when the rate is out of reach),
    which also stamps each result as it is published. Returns
    ([(sent, received)], {second: worst latency ms}, others' CPU)."""
    r0, r1 = redis(0), redis(1)
    r0.flushdb()
    r1.flushdb()
    pg_maintenance()
    wait_for_quiet()
    r2 = redis(2)
    r2.execute_command("COPY", template_key("W3"), "bench:pace", "DB", 0)
    if r0.llen("bench:pace") < WARM + count:
        die(f"W3 template too short: {r0.llen('bench:pace')} < {WARM + count}")
    proc = start_worker(contender, LAT_CONCURRENCY, os.path.join(TMP, f"{contender}.log"))
    out = os.path.join(TMP, f"paced-{contender}.txt")
    try:
        for _ in range(WARM):  # warm-up: the worker is up and connected once done
            r0.lmove("bench:pace", "celery", "RIGHT", "LEFT")
        wait_results(r1, proc, contender, WARM)
        time.sleep(0.5)
        m0 = measure_start(proc)
        subprocess.run([os.path.join(BUILD, "bench", "latency"), "pace", "127.0.0.1",
                        str(REDIS_PORT), "bench:pace", f"{rate:.3f}", str(count), out],
                       check=True, stdin=subprocess.DEVNULL)
        foreign = measure_foreign(proc, m0)
        if not is_running(proc):
            die(f"{contender} died during the latency run")
    finally:
        stop_worker(proc)
    stamps, timeline = [], {}
    with open(out) as f:
        for line in f:
            _, sent, recv = line.split()
            if float(recv) < 0:
                die(f"{contender}: a paced task never got its result")
            stamps.append((float(sent), float(recv)))
            sec = int(float(sent))
            timeline[sec] = max(timeline.get(sec, 0), 1000 * (float(recv) - float(sent)))
    return stamps, timeline, foreign


def latency_paced(contender, rate, seconds, variant="a", extra=None):
    """W3a (or another variant's rate): paced on Redis, rate * seconds messages."""
    count = int(rate * seconds)
    stamps, timeline, foreign = redis_pace_run(contender, rate, count)
    lat = sorted(1000 * (r - s) for s, r in stamps)
    # the schedule is fixed: count messages over count / rate seconds
    return latency_row(contender, variant, rate, count / seconds, lat,
                       dict(extra or {}, foreign_cpu=foreign,
                            max_per_second=[round(timeline[k], 1) for k in sorted(timeline)]))


def redis_capacity(contender, count):
    """The rate the paced pipeline sustains on Redis with its sender and the
    result watcher in the loop: count messages released with no pause,
    results per second from the first release to the last result."""
    return pipeline_rate(contender, "redis", redis_pace_run(contender, 1e6, count)[0])


def pipeline_rate(contender, broker, stamps):
    """Results per second of an unpaced run's [(sent, received)], from the
    first send to the last result; logged as the capacity on broker."""
    rate = len(stamps) / (max(r for _, r in stamps) - min(s for s, _ in stamps))
    log(f"W3 capacity of {contender} on {broker} with the sender in the loop: {rate:.0f} tasks/s")
    return rate


def watch_start(name):
    """Starts bench/latency.c watch (PSUBSCRIBE to the results in Redis db 1);
    returns (process, output path) once it has subscribed."""
    out = os.path.join(TMP, f"watch-{name}.txt")
    ready = out + ".ready"
    if os.path.exists(ready):
        os.unlink(ready)
    sub = subprocess.Popen([os.path.join(BUILD, "bench", "latency"), "watch", "127.0.0.1",
                            str(REDIS_PORT), out, ready], stdin=subprocess.DEVNULL)
    for _ in range(200):
        if os.path.exists(ready):
            return sub, out
        time.sleep(0.05)
    sub.terminate()
    sub.wait()
    die("latency watch did not subscribe")


def watch_stop(sub):
    """Tells the watcher every result is in (or stops it); waits for it."""
    if sub.poll() is None:
        try:
            redis(1).publish(META + "__end__", "end")
            sub.wait(30)
        finally:
            if sub.poll() is None:
                sub.terminate()
                sub.wait()


def watch_stamps(contender, out, sends):
    """[(sent, received)] of the sends {task id: time sent}, from the watcher's file."""
    recv = {}
    with open(out) as f:
        for line in f:
            tid, t = line.split()
            recv[tid] = float(t)
    missing = [t for t in sends if recv.get(t, 0) <= 0]
    if missing:
        die(f"{contender}: {len(missing)} sent tasks never got their result")
    return [(ts, recv[t]) for t, ts in sends.items()]


def watch_latencies(contender, out, sends):
    """Sorted send-to-result latencies (ms) of the sends {task id: time sent}."""
    return sorted(1000 * (r - s) for s, r in watch_stamps(contender, out, sends))


def paced(rate, count, send):
    """Calls send(i) for i < count at t0 + i / rate; returns (seconds the
    schedule took, how many sends were over 1 ms late)."""
    late = 0
    t0 = time.monotonic()
    for i in range(count):
        target = t0 + i / rate
        now = time.monotonic()
        if target > now:
            time.sleep(target - now)
        elif now - target > 0.001:
            late += 1
        send(i)
    return time.monotonic() - t0, late


def latency_live(contender, rate, seconds):
    """W3b: sent live with Celery's send_task from this process at a steady rate
    (time.time() just before the call); latency.c watch stamps the results."""
    from celery import Celery

    r0, r1 = redis(0), redis(1)
    r0.flushdb()
    r1.flushdb()
    pg_maintenance()
    app = Celery("benchsender", broker=BROKER)  # no backend: no per-task SUBSCRIBE
    app.conf.broker_connection_retry = False
    wait_for_quiet()
    sub, out = watch_start(contender)
    proc = None
    sends = {}
    try:
        proc = start_worker(contender, LAT_CONCURRENCY, os.path.join(TMP, f"{contender}.log"))
        count = int(rate * seconds)
        with app.producer_or_acquire() as producer:
            for i in range(WARM):
                app.send_task("books.get_book_info", args=[i + 1], producer=producer)
            wait_results(r1, proc, contender, WARM)
            time.sleep(0.5)
            m0 = measure_start(proc)

            def send(i):
                ts = time.time()
                tid = app.send_task("books.get_book_info", args=[(i * 7919) % BOOKS + 1],
                                    producer=producer).id
                sends[tid] = ts

            send_span, late = paced(rate, count, send)
        wait_results(r1, proc, contender, WARM + count)
        foreign = measure_foreign(proc, m0)
    finally:
        if proc:
            stop_worker(proc)
        watch_stop(sub)
    lat = watch_latencies(contender, out, sends)
    return latency_row(contender, "b", rate, count / send_span, lat,
                       {"late_sends": late, "foreign_cpu": foreign})


def amqp_pace_run(contender, rate, count):
    """One paced run on RabbitMQ: WARM messages to warm up, then the next
    count messages of the W3 template (made in advance by Celery's send_task
    over AMQP; bodies and properties byte for byte) published from this
    process at rate per second on a fixed schedule (as fast as it can when
    the rate is out of reach) to the default exchange as Celery's client
    publishes them (no confirms), each stamped just before its basic_publish;
    latency.c watch stamps each result as it is published. Returns
    ([(sent, received)], seconds the schedule took, late sends, others' CPU)."""
    import amqp
    import pickle

    with open(amqp_template_file("W3"), "rb") as f:
        msgs = pickle.load(f)
    if len(msgs) < WARM + count:
        die(f"AMQP W3 template too short: {len(msgs)} < {WARM + count}")
    r1 = redis(1)
    r1.flushdb()
    pg_maintenance()
    conn = amqp_connect()
    ch = conn.channel()
    ch.queue_purge(AMQP_QUEUE)
    wait_for_quiet()
    sub, out = watch_start(f"amqp-{contender}")
    proc = None
    sends = {}

    def send(i):
        body, props = msgs[WARM + i]
        sends[props["correlation_id"]] = time.time()
        ch.basic_publish(amqp.Message(body, **props), exchange="", routing_key=AMQP_QUEUE)

    try:
        proc = start_worker(contender, LAT_CONCURRENCY, log_name(contender, "amqp"), "amqp")
        for body, props in msgs[:WARM]:
            ch.basic_publish(amqp.Message(body, **props), exchange="", routing_key=AMQP_QUEUE)
        wait_results(r1, proc, contender, WARM)
        time.sleep(0.5)
        m0 = measure_start(proc)
        send_span, late = paced(rate, count, send)
        wait_results(r1, proc, contender, WARM + count)
        foreign = measure_foreign(proc, m0)
        if not is_running(proc):
            die(f"{contender} died during the latency run on RabbitMQ")
    finally:
        conn.close()
        if proc:
            stop_worker(proc)
        watch_stop(sub)
    return watch_stamps(contender, out, sends), send_span, late, foreign


def amqp_capacity(contender, count):
    """The rate the paced pipeline sustains on RabbitMQ with its sender in
    the loop (this process publishing, RabbitMQ routing each message, the
    worker, its results): count messages published with no pause, results
    per second from the first publish to the last result."""
    return pipeline_rate(contender, "amqp", amqp_pace_run(contender, 1e6, count)[0])


def latency_amqp_paced(contender, rate, seconds, variant="qa", extra=None):
    """W3 on RabbitMQ, paced (as W3a), rate * seconds messages."""
    count = int(rate * seconds)
    stamps, send_span, late, foreign = amqp_pace_run(contender, rate, count)
    lat = sorted(1000 * (r - s) for s, r in stamps)
    return latency_row(contender, variant, rate, count / send_span, lat,
                       dict(extra or {}, late_sends=late, foreign_cpu=foreign, broker="amqp"))


def sql_pace_run(contender, rate, count):
    """One paced run on the PostgreSQL broker: WARM messages to warm up, then
    bench/latency.c pace-sql releases the next count rows of the W3 template
    (sql_template: made in advance by Celery's send_task on sqla+postgresql)
    into kombu_message, one INSERT per message in its own transaction, as
    kombu's _put inserts them, at rate per second on a fixed schedule (as fast
    as it can when the rate is out of reach), stamping each just before its
    INSERT and each result as it is published. Returns ([(sent, received)],
    others' CPU)."""
    table = sql_template("W3", TXN_TASK if contender == "celeriac-txn" else TASK_OF["W3"])
    r1 = redis(1)
    r1.flushdb()
    conn = pg_connect()
    cur = conn.cursor()
    cur.execute("TRUNCATE kombu_message")
    pg_maintenance()
    wait_for_quiet()
    proc = start_worker(contender, LAT_CONCURRENCY, log_name(contender, "sql"), "sql")
    out = os.path.join(TMP, f"paced-sql-{contender}.txt")
    try:
        cur.execute("INSERT INTO kombu_message (id, visible, timestamp, payload, version,"
                    " queue_id) SELECT nextval('message_id_sequence'), true, NULL, payload, 1,"
                    f" queue_id FROM (SELECT * FROM {table} WHERE ord <= %s ORDER BY ord) t",
                    (WARM,))
        wait_results(r1, proc, contender, WARM)
        time.sleep(0.5)
        m0 = measure_start(proc)
        subprocess.run([os.path.join(BUILD, "bench", "latency"), "pace-sql", "127.0.0.1",
                        str(REDIS_PORT), PG_URL, table, str(WARM + 1), f"{rate:.3f}", str(count),
                        out], check=True, stdin=subprocess.DEVNULL)
        foreign = measure_foreign(proc, m0)
        if not is_running(proc):
            die(f"{contender} died during the latency run")
    finally:
        conn.close()
        stop_worker(proc)
    stamps = []
    with open(out) as f:
        for line in f:
            _, t_sent, t_recv = line.split()
            if float(t_recv) < 0:
                die(f"{contender}: a paced task never got its result on the PostgreSQL broker")
            stamps.append((float(t_sent), float(t_recv)))
    return stamps, foreign


def sql_capacity(contender, count):
    """The rate the whole paced pipeline sustains (pace-sql's INSERTs and
    commits, the trigger's NOTIFY, the worker, its results), not W1's rate
    from a queue filled in advance: count messages with no pause between
    INSERTs, results per second from the first INSERT to the last result."""
    return pipeline_rate(contender, "sql", sql_pace_run(contender, 1e6, count)[0])


def latency_sql_paced(contender, rate, seconds, variant="sa", extra=None):
    """W3 on the PostgreSQL broker, paced (as W3a), rate * seconds messages."""
    count = int(rate * seconds)
    stamps, foreign = sql_pace_run(contender, rate, count)
    lat = sorted(1000 * (r - s) for s, r in stamps)
    return latency_row(contender, variant, rate, count / seconds, lat,
                       dict(extra or {}, foreign_cpu=foreign, broker="sql"))


def latency_sql(contender, rate, seconds):
    """W3 on the PostgreSQL broker, live (as W3b): tasks sent at a steady rate from this
    process by SELECT celeriac_enqueue(...) (the outbox function celeriac
    installs: one INSERT of the protocol-2 message Celery's client would
    send, committed by the statement, its row's trigger NOTIFYing the idle
    children), time.time() just before the statement; latency.c watch stamps
    the results as they are published to Redis. Send-to-result, so it bounds
    send-to-start from above."""
    r1 = redis(1)
    r1.flushdb()
    conn = pg_connect()
    cur = conn.cursor()
    cur.execute("TRUNCATE kombu_message")
    pg_maintenance()
    task = TXN_TASK if contender == "celeriac-txn" else TASK_OF["W3"]
    send_sql = "SELECT celeriac_enqueue('celery', %s, %s)"
    wait_for_quiet()
    sub, out = watch_start(f"sql-{contender}")
    proc = None
    sends, commit_ms = {}, []

    def send(i):
        ts = time.time()
        cur.execute(send_sql, (task, json.dumps([(i * 7919) % BOOKS + 1])))
        tid = cur.fetchone()[0]
        commit_ms.append(1000 * (time.time() - ts))
        sends[tid] = ts

    try:
        proc = start_worker(contender, LAT_CONCURRENCY, log_name(contender, "sql"), "sql")
        count = int(rate * seconds)
        for i in range(WARM):
            cur.execute(send_sql, (task, json.dumps([i + 1])))
        wait_results(r1, proc, contender, WARM)
        time.sleep(0.5)
        m0 = measure_start(proc)
        send_span, late = paced(rate, count, send)
        wait_results(r1, proc, contender, WARM + count)
        foreign = measure_foreign(proc, m0)
    finally:
        conn.close()
        if proc:
            stop_worker(proc)
        watch_stop(sub)
    lat = watch_latencies(contender, out, sends)
    commit_ms.sort()
    return latency_row(contender, "sb", rate, count / send_span, lat,
                       {"late_sends": late, "foreign_cpu": foreign, "broker": "sql",
                        "send_p50": pct(commit_ms, 50), "send_p99": pct(commit_ms, 99)})


def half_of_w1(contenders, broker):
    """{contender: half its W1 median at LAT_CONCURRENCY on broker}."""
    runs = load_runs()
    half = {}
    for contender in contenders:
        top = median_rate(runs, contender, "W1", LAT_CONCURRENCY, broker=broker)
        if not top:
            die(f"no W1 run of {contender} on {broker} at c={LAT_CONCURRENCY} to take half of")
        half[contender] = top / 2
    return half


def latency():
    import uuid

    out = open(os.path.join(TMP, "latency.jsonl"), "w")
    with out:
        if "redis" in BROKERS:
            latency_redis(out)
        if "amqp" in BROKERS:
            latency_amqp(out)
        if "sql" in BROKERS:
            # Paced at half of each one's own W1 median on this broker; then
            # celeriac_enqueue live at half of the slowest contender's.
            half = half_of_w1(SQL_CONTENDERS, "sql")
            # Not Python's latency: its consumer polls once a second. The
            # floor waits for the same trigger's NOTIFY as celeriac's children.
            lat_sql = [c for c in SQL_CONTENDERS if c != "python"]
            caps = {}
            for contender in lat_sql:
                # "sa" at half of W1 (a queue filled in advance), as before;
                # "sh" at half of what the pipeline sustains with the sender's
                # own INSERT and commit per message in it: half load.
                cap_n = min(SQL_TASKS, 10000)
                task = TXN_TASK if contender == "celeriac-txn" else TASK_OF["W3"]
                n = WARM + max(cap_n, int(half[contender] * LAT_SECONDS)) + 10
                enqueue_sql("W3", [(str(uuid.uuid4()), task_args("W3", i)) for i in range(n)],
                            task)
                caps[contender] = sql_capacity(contender, cap_n)
                write_row(out, latency_sql_paced(contender, half[contender], LAT_SECONDS, "sa",
                                                 {"capacity": caps[contender]}))
            half_load_windows(out, lat_sql, latency_sql_paced, "sh", caps)
            for contender in lat_sql:
                write_row(out, latency_sql(contender, min(half.values()), LAT_SECONDS))


def latency_amqp(out):
    """W3 on RabbitMQ: each contender paced at half its own W1 median there."""
    import uuid

    half = half_of_w1(AMQP_CONTENDERS, "amqp")
    # "qa" at half of W1 (a queue filled in advance); "qh" at half of what
    # the pipeline sustains with this process publishing into it: half load.
    cap_n = min(AMQP_TASKS, 10000)
    n = WARM + max(cap_n, int(max(half.values()) * LAT_SECONDS)) + 10
    enqueue_amqp("W3", [(str(uuid.uuid4()), task_args("W3", i)) for i in range(n)])
    caps = {}
    for contender in AMQP_CONTENDERS:
        caps[contender] = amqp_capacity(contender, cap_n)
        write_row(out, latency_amqp_paced(contender, half[contender], LAT_SECONDS, "qa",
                                          {"capacity": caps[contender]}))
    half_load_windows(out, AMQP_CONTENDERS, latency_amqp_paced, "qh", caps)


def latency_redis(out):
    half = half_of_w1(LAT_CONTENDERS, "redis")
    # "a" at half of W1 (a queue filled in advance), one window; "h" at half
    # of what the pipeline sustains with latency.c releasing each message and
    # watching each result on the same two CPUs: half load, as on the other
    # brokers. Each needs WARM + its messages, distinct, from the template.
    cap_n = min(TASKS, 10000)
    enqueue("W3", WARM + max(cap_n, int(max(half.values()) * LAT_SECONDS)) + 10)
    live_rate = min(half.values())
    caps = {}
    for contender in LAT_CONTENDERS:
        write_row(out, latency_paced(contender, half[contender], LAT_SECONDS))
        caps[contender] = redis_capacity(contender, cap_n)
    half_load_windows(out, LAT_CONTENDERS, latency_paced, "h", caps)
    for contender in LAT_CONTENDERS:
        write_row(out, latency_live(contender, live_rate, LAT_SECONDS))


# ---- the machine's speed ---------------------------------------------------------

def calibrate(label):
    """CPU time of a fixed piece of pure computation, median of 3, appended to
    calibration.jsonl. This machine is a VM whose host steals no visible time
    (/proc reports no steal), yet some runs find every contender 20-50 %
    slower per task: the same work taking more CPU here is how a run shows it."""
    import resource

    def once():
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        acc = 0
        for i in range(6_000_000):
            acc = (acc * 31 + i) % 1_000_003
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        return (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)

    ms = 1000 * statistics.median(once() for _ in range(3))
    with open(os.path.join(TMP, "calibration.jsonl"), "a") as out:
        out.write(json.dumps({"label": label, "cpu_ms": ms}) + "\n")
    log(f"speed check ({label}): the fixed loop took {ms:.0f} ms of CPU")


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "enqueue" and len(sys.argv) == 4:
        # enough for every run that takes its first n messages
        enqueue(sys.argv[2], max(int(sys.argv[3]), PY_TASKS, AMQP_TASKS, AMQP_PY_TASKS,
                                 *((SQL_TASKS, SQL_PY_TASKS) if "sql" in BROKERS else ())))
    elif cmd == "throughput":
        throughput()
    elif cmd == "durable":
        if DURABLE and PGBENCH and DURABLE_CONCURRENCIES and "redis" in BROKERS:
            durable()
    elif cmd == "latency":
        latency()
    elif cmd == "calibrate" and len(sys.argv) == 3:
        calibrate(sys.argv[2])
    elif cmd == "report":
        import report  # noqa: E402  bench/report.py

        report.main()
    else:
        die("usage: bench.py enqueue WORKLOAD N | throughput | durable | latency | "
            "calibrate LABEL | report")
