# SPDX-License-Identifier: MIT
"""parity.py: what the tests/parity cases share. Everything they assert is
what Debian's Celery 5.2.6 itself reports: the real `celery` command
(`python3 -m celery -b URL inspect|control ... -j`), `app.control`,
`celery.events` (EventReceiver feeding a State) and AsyncResult.

    celery(*args)            -> (rc, stdout, stderr) of `python3 -m celery -b BROKER ...`
    celery_json(*args)       -> (rc, parsed -j output or None, text)
    make_app()               -> a Celery app on BROKER/RESULT (sends by name)
    Worker(...)              -> a celeriac worker started here (pid recorded for cleanup)
    PyWorker(...)            -> a Python Celery worker (tests/parity/pyfleet.py)
    Events()                 -> EventReceiver in a thread: .events list, .state (State)
    wait_until(fn, timeout)  -> fn's first truthy value, or None

Environment (set by the .sh wrapper): BROKER_URL, RESULT_URL, REDIS_PORT,
CELERIAC_BIN, BOOKS_LIB, TEST_TMP, CELERIAC_PIDS_FILE.
"""
import json
import os
import signal
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))

from tap import ok, not_ok, check, eq, diag, done  # noqa: E402

__all__ = ["AMQP", "ok", "not_ok", "check", "eq", "diag", "done", "PY", "BROKER", "RESULT", "REDIS_PORT", "BIN",
           "LIB", "TMP", "celery", "celery_json", "flatten", "make_app", "redis_client", "meta", "wait_meta",
           "summary", "wait_until", "parse_iso", "os_children", "pid_alive", "Worker", "PyWorker", "Events"]

PY = "/usr/bin/python3"
BROKER = os.environ["BROKER_URL"]
RESULT = os.environ.get("RESULT_URL", BROKER)
REDIS_PORT = int(os.environ.get("REDIS_PORT", "0"))
AMQP = BROKER.startswith(("amqp://", "pyamqp://", "amqps://"))
BIN = os.environ.get("CELERIAC_BIN", "")
LIB = os.environ.get("BOOKS_LIB", "")
TMP = os.environ.get("TEST_TMP", "/tmp")
PIDS_FILE = os.environ.get("CELERIAC_PIDS_FILE", "")


# ---- the celery command ---------------------------------------------------------
def celery(*args, timeout=60):
    """Runs the real `celery` command; returns (rc, stdout, stderr)."""
    cmd = [PY, "-m", "celery", "-b", BROKER] + [str(a) for a in args]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        return 124, e.stdout or "", "timed out: " + " ".join(cmd)
    return p.returncode, p.stdout, p.stderr


def celery_json(*args, timeout=60):
    """`celery ... -j`: returns (rc, the JSON document it printed or None, all its text)."""
    rc, out, err = celery(*args, "-j", timeout=timeout)
    doc = None
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("{") or line.startswith("["):
            try:
                doc = json.loads(line)
            except ValueError:
                pass
    return rc, doc, "rc=%d\nstdout: %s\nstderr: %s" % (rc, out.strip(), err.strip())


def flatten(replies):
    """[{node: reply}, ...] (control -j, app.control.broadcast) -> {node: reply}."""
    out = {}
    for r in replies or []:
        out.update(r)
    return out


# ---- the Python side of an application --------------------------------------------
def make_app(name="parity"):
    from celery import Celery
    app = Celery(name, broker=BROKER, backend=RESULT)
    app.conf.update(
        broker_connection_retry_on_startup=False,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        result_expires=86400,
    )
    return app


def redis_client(url=None):
    import redis
    return redis.Redis.from_url(url or BROKER)


def meta(task_id):
    """The stored result meta (dict) of task_id in RESULT, or None."""
    raw = redis_client(RESULT).get("celery-task-meta-" + task_id)
    return json.loads(raw) if raw else None


def wait_meta(task_id, timeout=15, states=("SUCCESS", "FAILURE", "REVOKED")):
    return wait_until(lambda: (lambda m: m if m and m.get("status") in states else None)(meta(task_id)),
                      timeout)


def summary(m):
    """"STATUS value" or "STATUS ExcType('message')" of a stored meta."""
    if not m:
        return "none"
    r = m.get("result")
    if isinstance(r, dict) and "exc_type" in r:
        msg = r.get("exc_message")
        if isinstance(msg, list):
            msg = ", ".join(repr(x) for x in msg)
        else:
            msg = repr(msg)
        return "%s %s(%s)" % (m.get("status"), r.get("exc_type"), msg)
    return "%s %s" % (m.get("status"), json.dumps(r))


def wait_until(fn, timeout=10.0, interval=0.1):
    deadline = time.time() + timeout
    while True:
        try:
            v = fn()
        except Exception:  # noqa: BLE001 - a probe that fails just means "not yet"
            v = None
        if v:
            return v
        if time.time() >= deadline:
            return None
        time.sleep(interval)


def parse_iso(s):
    from datetime import datetime
    return datetime.fromisoformat(s).timestamp()


# ---- processes we start ---------------------------------------------------------------
def record_pid(pid, kind):
    if PIDS_FILE:
        with open(PIDS_FILE, "a") as f:
            f.write("%d %s\n" % (pid, kind))


def os_children(pid):
    """Pids whose parent is pid (from /proc), sorted."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                st = f.read()
        except OSError:
            continue
        fields = st[st.rfind(")") + 2:].split()
        if fields[0] != "Z" and int(fields[1]) == pid:
            out.append(int(d))
    return sorted(out)


def pid_alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            st = f.read()
    except OSError:
        return False
    return st[st.rfind(")") + 2:].split()[0] != "Z"


class _Proc:
    kind = "proc"

    def _start(self, cmd, log, cwd=None, env=None):
        self.log = log
        self.cmd = cmd
        self.logf = open(log, "ab")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.logf,
                                     stderr=subprocess.STDOUT, cwd=cwd, env=env)
        self.pid = self.proc.pid
        record_pid(self.pid, self.kind)
        self.rc = None

    def alive(self):
        return self.proc.poll() is None

    def children(self):
        return os_children(self.pid)

    def log_text(self):
        try:
            with open(self.log, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def log_tail(self, n=25):
        return ["log: " + line for line in self.log_text().splitlines()[-n:]]

    def wait_exit(self, timeout):
        """The exit status, or None if still running after timeout."""
        try:
            self.rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        return self.rc

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.proc.poll() is not None:
            self.rc = self.proc.returncode
            return self.rc
        kids = self.children()
        self.proc.send_signal(sig)
        rc = self.wait_exit(timeout)
        if rc is None:
            self.proc.kill()
            self.proc.wait()
            rc = "timeout"
        for k in kids:  # a killed master's children: only ours
            try:
                with open("/proc/%d/cmdline" % k, "rb") as f:
                    if self.kind.encode() in f.read():
                        os.kill(k, signal.SIGKILL)
            except OSError:
                pass
        self.rc = rc
        return rc


class Worker(_Proc):
    """`celeriac worker -A libbooks.so -b BROKER --result-backend RESULT -n NAME ARGS...`."""
    kind = "celeriac"
    seq = 0

    def __init__(self, name, *args, lib=None, ready=True):
        Worker.seq += 1
        self.name = name
        cmd = [BIN, "worker", "-A", lib or LIB, "-b", BROKER, "--result-backend", RESULT,
               "-n", name] + [str(a) for a in args]
        self._start(cmd, os.path.join(TMP, "celeriac-%d-%s.log" % (Worker.seq, name.split("@")[0])))
        if ready and not self.wait_ready():
            diag("worker %s did not log ready" % name, *self.log_tail())

    def wait_ready(self, timeout=20):
        return wait_until(lambda: " ready." in self.log_text() or not self.alive(), timeout) \
            and self.alive()

    def pool(self):
        """The pool children: every child but the control process."""
        return [p for p in self.children() if _comm(p).startswith("celeriac:child")]

    def control_pid(self):
        c = [p for p in self.children() if _comm(p).startswith("celeriac:contro")]
        return c[0] if c else None


def _comm(pid):
    """The kernel's 15-character process name (celeriac sets "celeriac:child0",
    "celeriac:contro[l]")."""
    try:
        with open("/proc/%d/comm" % pid) as f:
            return f.read().strip()
    except OSError:
        return ""


class PyWorker(_Proc):
    """A Python Celery worker running tests/parity/pyfleet.py (tasks.add, .sleep, .echo, .fail)."""
    kind = "celery"

    def __init__(self, name, *args):
        self.name = name
        env = dict(os.environ, C_FORCE_ROOT="1", PYTHONPATH=HERE)
        cmd = [PY, "-m", "celery", "-A", "pyfleet", "worker", "-n", name, "-l", "info",
               "--without-gossip", "--without-mingle"] + [str(a) for a in args]
        self._start(cmd, os.path.join(TMP, "pyworker-%s.log" % name.split("@")[0]), cwd=HERE, env=env)

    def wait_ready(self, timeout=60):
        return wait_until(lambda: " ready." in self.log_text() or not self.alive(), timeout) \
            and self.alive()


# ---- events -----------------------------------------------------------------------------
class Events:
    """Celery's EventReceiver on the broker, in a thread, feeding a
    celery.events.state.State as `celery events` and Flower do. Every event
    (as the receiver delivers it) is appended to .events."""

    def __init__(self, app=None):
        self.app = app or make_app("parity-events")
        self.state = self.app.events.State()
        self.events = []
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.error = None
        self.recv = None
        self.consuming = threading.Event()
        if AMQP:
            # On RabbitMQ the receiver's queue is bound before consume() yields.
            probe = self.consuming.is_set
        else:
            # kombu's Redis transport PSUBSCRIBEs on the first poll: ready once the
            # server counts one pattern subscription more than before.
            r = redis_client()
            before = r.pubsub_numpat()
            probe = lambda: r.pubsub_numpat() > before  # noqa: E731
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        if wait_until(lambda: self.error or probe(), 10, 0.02):
            self.ready.set()
        if self.error or not self.ready.is_set():
            diag("event receiver did not start: %r" % (self.error,))

    def _on_event(self, event):
        with self.lock:
            self.events.append(dict(event))
            self.state.event(event)

    def _run(self):
        try:
            with self.app.connection() as conn:
                self.recv = self.app.events.Receiver(conn, handlers={"*": self._on_event})
                ready = self.recv.on_consume_ready

                def on_consume_ready(*args, **kwargs):
                    ready(*args, **kwargs)
                    self.consuming.set()
                self.recv.on_consume_ready = on_consume_ready
                for _ in self.recv.consume(limit=None, timeout=None, wakeup=False):
                    pass
        except Exception as e:  # noqa: BLE001
            self.error = e
            self.ready.set()

    def stop(self):
        if self.recv is not None:
            self.recv.should_stop = True
        self.thread.join(5)

    def of(self, type_=None, hostname=None, uuid=None):
        with self.lock:
            evs = list(self.events)
        return [e for e in evs
                if (type_ is None or e.get("type") == type_)
                and (hostname is None or e.get("hostname") == hostname)
                and (uuid is None or e.get("uuid") == uuid)]

    def wait_for(self, type_, timeout=10, **match):
        def probe():
            evs = self.of(type_, match.get("hostname"), match.get("uuid"))
            return evs[-1] if evs else None
        return wait_until(probe, timeout, 0.05)

    def worker(self, hostname):
        with self.lock:
            return self.state.workers.get(hostname)

    def task(self, uuid):
        with self.lock:
            return self.state.tasks.get(uuid)
