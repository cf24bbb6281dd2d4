# SPDX-License-Identifier: MIT
"""report.py: turns the raw data of a bench run (runs.jsonl, latency.jsonl in
BENCH_TMP) into bench/RESULTS.md and the data files bench/plots.gp draws.
Called as `bench.py report` by run.sh; every figure in RESULTS.md comes from
this run's measurements."""
import datetime
import json
import os
import platform
import statistics
import subprocess

import bench

NAMES = {"celeriac": "celeriac", "python": "Python Celery", "floor": "floor (C)",
         "floor-kombu": "floor + kombu acks", "celeriac-txn": "celeriac, transactional task"}
KB = 1024


def sh(*argv):
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20)
        return (out.stdout or out.stderr).strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def first_line(text):
    return text.splitlines()[0] if text else "?"


def machine():
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    try:
        with open("/etc/debian_version") as f:
            debian = f.read().strip()
    except OSError:
        debian = "?"
    import celery
    import kombu
    import billiard
    import redis as redis_py
    import psycopg2

    rev = os.environ.get("BENCH_CELERIAC_REV") or sh("git", "-C", bench.ROOT, "rev-parse",
                                                      "--short", "HEAD")
    with open("/proc/loadavg") as f:
        load_end = " ".join(f.read().split()[:3])
    amqp = []
    if "amqp" in bench.BROKERS:
        import amqp as py_amqp

        otp = sh("erl", "-noshell", "-eval",
                 'io:format("~s", [erlang:system_info(otp_release)]), halt().')
        rmq = sh("dpkg-query", "-W", "-f", "${Version}", "rabbitmq-server")
        amqp = [
            ("rabbitmq-server", f"{rmq} on Erlang/OTP {otp}: a private node started by "
                                "tests/lib/rabbitmq.sh (one scheduler, `+S 1:1`, no "
                                "busy-waiting, no plugins)"),
            ("py-amqp / rabbitmq-c", f"{py_amqp.__version__} / "
                                     f"{sh('pkg-config', '--modversion', 'librabbitmq')}"),
        ]
    return [
        ("date", datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")),
        ("CPU", cpu),
        ("nproc", sh("nproc")),
        ("RAM", f"{mem_kb / KB / KB:.1f} GiB"),
        ("kernel", platform.release()),
        ("OS", f"Debian {debian}"),
        ("celeriac", f"commit {rev}, as built when the run started"),
        ("redis-server", first_line(sh("redis-server", "--version"))),
        ("PostgreSQL", first_line(sh("/usr/lib/postgresql/15/bin/postgres", "--version"))),
        ("Python", platform.python_version()),
        ("celery / kombu / billiard", f"{celery.__version__} / {kombu.__version__} / "
                                      f"{billiard.__version__}"),
        ("redis-py / psycopg2", f"{redis_py.__version__} / {psycopg2.__version__.split()[0]}"),
        ("gcc", first_line(sh("gcc", "--version"))),
        ("hiredis / libpq / jansson", " / ".join(
            sh("pkg-config", "--modversion", p) for p in ("hiredis", "libpq", "jansson"))),
    ] + amqp + [
        ("speed check: CPU time of a fixed loop (bench.py calibrate) at start → end",
         calibration_text()),
        ("load average (1, 5, 15 min) at start → end",
         f"{os.environ.get('BENCH_LOADAVG_START', '?')} → {load_end} (the machine is shared;"
         " what other processes used during each run is the \"others' CPU\" column)"),
    ]


# The speed check on this machine, 2026-11-30: 212-232 ms with nothing else
# running, 214-220 ms beside a CI run (CPU time, so other load barely moves
# it; a slower host does).
CALIBRATION_QUIET_MS = "212–232"


def calibration_text():
    """The speed check's figures, or why there are none."""
    path = os.path.join(os.environ.get("BENCH_TMP", "/tmp"), "calibration.jsonl")
    try:
        with open(path) as f:
            rows = {r["label"]: r["cpu_ms"] for r in map(json.loads, f)}
    except (OSError, ValueError, KeyError):
        return "not measured"
    vals = " → ".join(f"{rows[k]:.0f} ms" for k in ("start", "end") if k in rows)
    return (f"{vals} (the same work on the same machine: a higher figure means a slower "
            "machine, from outside this VM when the load average does not show it; "
            f"{CALIBRATION_QUIET_MS} ms on a quiet day here)")


def med(vals):
    return statistics.median(vals) if vals else None


def select(runs, **kw):
    return [r for r in runs if all(r[k] == v for k, v in kw.items())]


def fmt(v, spec="{:.0f}"):
    return "–" if v is None else spec.format(v)


def ratio(a, b, spec="{:.2f}"):
    return "–" if not a or not b else spec.format(a / b)


def throughput_table(runs, workload, key, title_note):
    cs = bench.CONCURRENCIES
    fk = "floor-kombu" in bench.CONTENDERS
    lines = [f"| concurrency | " + " | ".join(NAMES[c] for c in bench.CONTENDERS)
             + " | celeriac / floor | celeriac / Python |"
             + (" celeriac / (floor + kombu acks) |" if fk else ""),
             "|---:|" + "---:|" * (len(bench.CONTENDERS) + 2 + fk)]
    for conc in cs:
        cells = []
        meds = {}
        for c in bench.CONTENDERS:
            vals = [r[key] for r in select(runs, contender=c, workload=workload,
                                           concurrency=conc)]
            meds[c] = med(vals)
            spread = f" ({min(vals):.0f}–{max(vals):.0f})" if len(vals) > 1 else ""
            cells.append(f"**{fmt(meds[c])}**{spread}" if c == "celeriac" else
                         f"{fmt(meds[c])}{spread}")
        lines.append(f"| {conc} | " + " | ".join(cells) + f" | {ratio(meds.get('celeriac'), meds.get('floor'))}"
                     f" | {ratio(meds.get('celeriac'), meds.get('python'), '{:.1f}')} |"
                     + (f" {ratio(meds.get('celeriac'), meds.get('floor-kombu'))} |" if fk else ""))
    return "\n".join(lines) + ("\n\n" + title_note if title_note else "")


def pgbench_section(runs, sruns, pruns):
    """W1 beside the database alone (issue 15, point 3): pgbench running the
    task's statement at the same concurrency, in the same run."""
    has_sql = bool(select(sruns, contender="celeriac", workload="W1"))
    lines = ["| concurrency | pgbench (tx/s) | celeriac on Redis | / pgbench | floor (C) | / pgbench"
             + (" | celeriac on `sqla+postgresql` | / pgbench" if has_sql else "")
             + " | PostgreSQL CPU per tx, pgbench (ms) | others' CPU |",
             "|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if has_sql else "") + "---:|---:|"]
    for conc in bench.CONCURRENCIES:
        p = select(pruns, concurrency=conc)
        if not p:
            continue
        pb = med([r["rate"] for r in p])
        cel = median_of(runs, "rate", contender="celeriac", workload="W1", concurrency=conc)
        flo = median_of(runs, "rate", contender="floor", workload="W1", concurrency=conc)
        row = f"| {conc} | {fmt(pb)} | {fmt(cel)} | {ratio(cel, pb)} | {fmt(flo)} | {ratio(flo, pb)}"
        if has_sql:
            sq = median_of(sruns, "rate", contender="celeriac", workload="W1", concurrency=conc)
            row += f" | {fmt(sq)} | {ratio(sq, pb)}"
        pg_cpu = med([r["svc_cpu_ms_per_task"].get("postgres", 0) for r in p])
        foreign = med([r["foreign_cpu"] for r in p])
        lines.append(row + f" | {fmt(pg_cpu, '{:.3f}')} | {fmt(100 * foreign)} % |")
    return f"""## W1 beside the database alone: pgbench

pgbench ran `books.get_book_info`'s statement (`UPDATE books SET fetched_at = now() WHERE
id = :id RETURNING title`, prepared, random ids) over as many connections as the workers'
concurrency, {bench.TASKS} transactions per run, against the same PostgreSQL, interleaved
with the workers' runs (median of {max((r["rep"] for r in pruns), default=0) + 1}). A
worker at 1.00 × pgbench would add nothing visible to the database's own cost.

{chr(10).join(lines)}
"""


def durable_section(druns, dpruns):
    """The same comparison with commits that wait for the disk (fsync on)."""
    lines = ["| concurrency | pgbench (tx/s) | celeriac on Redis | / pgbench | floor (C) "
             "| / pgbench | celeriac / floor | worker CPU ms/task: celeriac / floor "
             "| PostgreSQL CPU ms/task: pgbench / celeriac |",
             "|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for conc in bench.DURABLE_CONCURRENCIES:
        pb = median_of(dpruns, "rate", concurrency=conc)
        cel = median_of(druns, "rate", contender="celeriac", concurrency=conc)
        flo = median_of(druns, "rate", contender="floor", concurrency=conc)
        if not pb or not cel:
            continue
        ccpu = median_of(druns, "cpu_ms_per_task", contender="celeriac", concurrency=conc)
        fcpu = median_of(druns, "cpu_ms_per_task", contender="floor", concurrency=conc)
        pg = {k: med([r["svc_cpu_ms_per_task"].get("postgres", 0)
                      for r in select(rs, concurrency=conc, **kw)])
              for k, rs, kw in (("pgbench", dpruns, {}),
                                ("celeriac", druns, {"contender": "celeriac"}))}
        lines.append(f"| {conc} | {fmt(pb)}{spread(dpruns, 'rate', concurrency=conc)} "
                     f"| {fmt(cel)}{spread(druns, 'rate', contender='celeriac', concurrency=conc)} "
                     f"| {ratio(cel, pb)} | {fmt(flo)} | {ratio(flo, pb)} | {ratio(cel, flo)} "
                     f"| {fmt(ccpu, '{:.3f}')} / {fmt(fcpu, '{:.3f}')} "
                     f"| {fmt(pg['pgbench'], '{:.3f}')} / {fmt(pg['celeriac'], '{:.3f}')} |")
    reps = max((r["rep"] for r in dpruns), default=0) + 1
    return f"""### The same, with commits on disk (fsync on)

Every other figure here comes from a PostgreSQL with fsync off, where a commit
costs the database almost nothing: pgbench then runs its statement 5 to 10 times as
fast as any worker that also takes a message from Redis and stores a result can, the
floor included. A production database waits for the disk at each commit. So after the
throughput runs, `make bench` turns fsync on (a reload) and runs W1 on Redis, the floor
and pgbench once more at c = 2 and 4 (median of {reps}; {bench.TASKS} tasks or
transactions per run), then turns it off again.

{chr(10).join(lines)}
"""


def cpu_table(runs, workload):
    lines = ["| concurrency | " + " | ".join(NAMES[c] for c in bench.CONTENDERS)
             + " | celeriac / floor | Redis: " + " / ".join(bench.CONTENDERS)
             + " | PostgreSQL: " + " / ".join(bench.CONTENDERS) + " |",
             "|---:|" + "---:|" * (len(bench.CONTENDERS) + 3)]
    for conc in bench.CONCURRENCIES:
        meds, redis_m, pg_m = {}, [], []
        for c in bench.CONTENDERS:
            sel = select(runs, contender=c, workload=workload, concurrency=conc)
            meds[c] = med([r["cpu_ms_per_task"] for r in sel])
            redis_m.append(fmt(med([r["svc_cpu_ms_per_task"].get("redis", 0) for r in sel]),
                               "{:.3f}"))
            pg_m.append(fmt(med([r["svc_cpu_ms_per_task"].get("postgres", 0) for r in sel]),
                            "{:.3f}"))
        lines.append(f"| {conc} | " + " | ".join(fmt(meds[c], "{:.3f}") for c in bench.CONTENDERS)
                     + f" | {ratio(meds.get('celeriac'), meds.get('floor'))} | "
                     + " / ".join(redis_m) + " | " + " / ".join(pg_m) + " |")
    return "\n".join(lines)


def mb(kb):
    return "–" if kb is None else f"{kb / KB:.1f}"


def memory_table(runs, contenders=None):
    lines = ["| workload | contender | c | master RSS / PSS | each child RSS / PSS "
             "| child RSS at 10 % → end | other processes RSS / PSS |",
             "|---|---|---:|---:|---|---|---|"]
    for workload in bench.WORKLOADS:
        for c in contenders or bench.CONTENDERS:
            for conc in bench.CONCURRENCIES:
                sel = select(runs, contender=c, workload=workload, concurrency=conc)
                if not sel:
                    continue
                r = sel[-1]  # the last repetition
                m = r["mem"]
                kids = ", ".join(f"{mb(k[0])} / {mb(k[1])}" for k in m["children"])
                early = r.get("mem_early") or {}
                growth = ", ".join(
                    f"{mb(a[0])} → {mb(b[0])}"
                    for a, b in zip(early.get("children", []), m["children"]))
                others = ", ".join(f"{o[0]} {mb(o[1])} / {mb(o[2])}"
                                   for o in m.get("others", []))
                lines.append(f"| {workload} | {NAMES[c]} | {conc} | {mb(m['master'][0])} / "
                             f"{mb(m['master'][1])} | {kids} | {growth or '–'} | "
                             f"{others or '–'} |")
    return "\n".join(lines)


def span_text(lats, variant):
    """How long a paced variant ran: one window, or several interleaved."""
    n = next((r.get("windows", 1) for r in lats if r["variant"] == variant), 1)
    if n == 1:
        return f"for {bench.LAT_SECONDS:.0f} s"
    return (f"in {n} windows of {bench.LAT_SECONDS:.0f} s each, taken in turn with the other "
            f"contenders' (every percentile is over all {n} windows' tasks; the p99 of each "
            f"window is in the last column)")


def window_cells(r):
    return " / ".join(f"{p:.2f}" for p in r.get("window_p99", [r["p99"]]))


def windows_note(r):
    if "window_p99" not in r:
        return ""
    return f"; over {len(r['window_p99'])} windows of {bench.LAT_SECONDS:.0f} s, each window's p99 {window_cells(r)} ms"


# Where a half-load table has the floor's windows at celeriac's rate.
SAME_RATE_NOTE = ("The floor is also paced at celeriac's rate, in windows of its own taken "
                  "in turn with the others: what the bare loop's p99 is at the load celeriac "
                  "carried.")


def at_celeriac_rate(r):
    """The label of the floor's windows paced at celeriac's rate."""
    return " at celeriac's rate" if r["variant"].startswith(bench.SAME_RATE) else ""


def capacity_of(r):
    """Whose capacity a row was paced at half of, when not its own."""
    return " (celeriac's)" if r["variant"].startswith(bench.SAME_RATE) else ""


def latency_table(lats, variant, late=False, capacity=False):
    windowed = any("window_p99" in r for r in lats if r["variant"] == variant)
    lines = ["| contender | " + ("capacity with the sender (tasks/s) | " if capacity else "")
             + "rate sent (tasks/s) | tasks | p50 ms | p90 ms | p99 ms | p99.9 ms "
             "| max ms | mean ms | " + ("late sends | " if late else "") + "others' CPU |"
             + (" p99 of each window ms |" if windowed else ""),
             "|---|" + ("---:|" if capacity else "") + "---:|---:|---:|---:|---:|---:|---:|---:|"
             + ("---:|" if late else "") + "---:|" + ("---:|" if windowed else "")]
    for r in lats:
        if r["variant"] not in (variant, bench.SAME_RATE + variant):
            continue
        lines.append(f"| {NAMES[r['contender']]}{at_celeriac_rate(r)} | "
                     + (f"{r['capacity']:.0f}{capacity_of(r)} | " if capacity else "")
                     + f"{r['achieved_rate']:.0f} | {r['tasks']} | "
                     f"{r['p50']:.2f} | {r['p90']:.2f} | {r['p99']:.2f} | {r['p999']:.2f} | "
                     f"{r['max']:.2f} | {r['mean']:.2f} | "
                     + (f"{r.get('late_sends', 0)} | " if late else "")
                     + f"{100 * r.get('foreign_cpu', 0):.0f} % |"
                     + (f" {window_cells(r)} |" if windowed else ""))
    return "\n".join(lines)


def targets(runs, lats):
    out = []

    def line(name, measured, ok):
        out.append(f"| {name} | {measured} | {'**met**' if ok else '**missed**'} |")

    w1 = {}
    for conc in bench.CONCURRENCIES:
        cel = med([r["rate"] for r in select(runs, contender="celeriac", workload="W1",
                                             concurrency=conc)])
        flo = med([r["rate"] for r in select(runs, contender="floor", workload="W1",
                                             concurrency=conc)])
        cc = med([r["cpu_ms_per_task"] for r in select(runs, contender="celeriac",
                                                       workload="W1", concurrency=conc)])
        fc = med([r["cpu_ms_per_task"] for r in select(runs, contender="floor", workload="W1",
                                                       concurrency=conc)])
        w1[conc] = (cel / flo if cel and flo else None, cc / fc if cc and fc else None)
    if all(v[0] is not None for v in w1.values()):
        line("W1 tasks/s ≥ 0.9 × floor, every concurrency",
             ", ".join(f"c={c}: {v[0]:.2f}" for c, v in w1.items()),
             all(v[0] >= 0.9 for v in w1.values()))
        line("W1 CPU per task ≤ 1.3 × floor",
             ", ".join(f"c={c}: {v[1]:.2f}" for c, v in w1.items()),
             all(v[1] <= 1.3 for v in w1.values()))
    cel = med([r["rate"] for r in select(runs, contender="celeriac", workload="W2",
                                         concurrency=2)])
    py = med([r["rate"] for r in select(runs, contender="python", workload="W2",
                                        concurrency=2)])
    if cel and py:
        line("W2 tasks/s ≥ 10 × Python Celery at c=2", f"{cel / py:.1f} ×", cel / py >= 10)
    cel_runs = select(runs, contender="celeriac")
    if cel_runs:
        last = [r for r in cel_runs if r["rep"] == max(x["rep"] for x in cel_runs)]
        child = max(k[0] for r in last for k in r["mem"]["children"])
        master = max(r["mem"]["master"][0] for r in last)
        growth = max((b[0] - a[0]) for r in last if r.get("mem_early")
                     for a, b in zip(r["mem_early"]["children"], r["mem"]["children"]))
        line(f"celeriac child ≤ 4 MB RSS after {bench.TASKS} tasks, not growing",
             f"largest child {mb(child)} MB (PSS in the memory table); largest growth "
             f"from 10 % to the end of a run {growth} kB (counted as flat up to 16 kB)",
             child <= 4 * KB and growth <= 16)
        line("celeriac master ≤ 4 MB RSS", f"{mb(master)} MB", master <= 4 * KB)
    for r in lats:
        if r["contender"] == "celeriac" and r["variant"] == "h":
            line("W3 p99 ≤ 5 ms at half load (paced at half the capacity with the sender, c=2)",
                 f"{r['p99']:.2f} ms at {r['achieved_rate']:.0f}/s (half of {r['capacity']:.0f}/s)"
                 f"{windows_note(r)}", r["p99"] <= 5)
    return ("| target (issue 5) | measured in this run | |\n|---|---|---|\n" + "\n".join(out))


# ---- RabbitMQ (issue 11) ----------------------------------------------------------

def median_of(runs, key, **kw):
    return med([r[key] for r in select(runs, **kw)])


def spread(runs, key, **kw):
    vals = [r[key] for r in select(runs, **kw)]
    return f" ({min(vals):.0f}–{max(vals):.0f})" if len(vals) > 1 else ""


def largest_child(runs, contender="celeriac"):
    """(largest child RSS kB, largest growth kB from 10 % to the end) over the
    last repetition of contender's runs, as the Redis target reads them."""
    sel = select(runs, contender=contender)
    if not sel:
        return None, None
    last = [r for r in sel if r["rep"] == max(x["rep"] for x in sel)]
    child = max(k[0] for r in last for k in r["mem"]["children"])
    growth = max(((b[0] - a[0]) for r in last if r.get("mem_early")
                  for a, b in zip(r["mem_early"]["children"], r["mem"]["children"])),
                 default=None)
    return child, growth


def amqp_targets(runs, aruns):
    out = []

    def line(name, measured, ok):
        out.append(f"| {name} | {measured} | {'**met**' if ok else '**not met**'} |")

    cel = median_of(aruns, "rate", contender="celeriac", workload="W1", concurrency=2)
    py = median_of(aruns, "rate", contender="python", workload="W1", concurrency=2)
    if cel and py:
        line("W1 ≥ 4 × Python on RabbitMQ at c=2",
             f"{cel / py:.1f} × ({cel:.0f} against {py:.0f} tasks/s)", cel / py >= 4)
    ratios = {}
    for conc in bench.CONCURRENCIES:
        a = median_of(aruns, "rate", contender="celeriac", workload="W1", concurrency=conc)
        r = median_of(runs, "rate", contender="celeriac", workload="W1", concurrency=conc)
        if a and r:
            ratios[conc] = (a / r, a, r)
    if ratios:
        line("celeriac W1 on RabbitMQ ≥ 0.8 × on Redis (each c)",
             ", ".join(f"c={c}: {v[0]:.2f} ({v[1]:.0f} / {v[2]:.0f})"
                       for c, v in ratios.items()),
             all(v[0] >= 0.8 for v in ratios.values()))
    child, growth = largest_child(aruns)
    if child is not None:
        line("child RSS ≤ 4 MB on RabbitMQ",
             f"largest child {mb(child)} MB after {bench.AMQP_TASKS} tasks (PSS in the memory "
             f"table); largest growth from 10 % to the end of a run "
             f"{'–' if growth is None else growth} kB",
             child <= 4 * KB)
    return ("| target (issue 11, RabbitMQ) | measured in this run | |\n|---|---|---|\n"
            + "\n".join(out))


def amqp_throughput_table(runs, aruns, workload, key):
    """celeriac and Python Celery on RabbitMQ, beside their own Redis medians of
    this run."""
    lines = ["| concurrency | celeriac | Python Celery | celeriac / Python "
             "| celeriac on Redis | celeriac RabbitMQ / Redis "
             "| Python Celery on Redis | Python RabbitMQ / Redis "
             "| floor (C) on RabbitMQ | celeriac / floor |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for conc in bench.CONCURRENCIES:
        kw = dict(workload=workload, concurrency=conc)
        ca = median_of(aruns, key, contender="celeriac", **kw)
        pa = median_of(aruns, key, contender="python", **kw)
        cr = median_of(runs, key, contender="celeriac", **kw)
        pr = median_of(runs, key, contender="python", **kw)
        fa = median_of(aruns, key, contender="floor", **kw)
        lines.append(
            f"| {conc} | **{fmt(ca)}**{spread(aruns, key, contender='celeriac', **kw)} | "
            f"{fmt(pa)}{spread(aruns, key, contender='python', **kw)} | "
            f"{ratio(ca, pa, '{:.1f}')} | {fmt(cr)} | {ratio(ca, cr)} | {fmt(pr)} | "
            f"{ratio(pa, pr)} | {fmt(fa)}{spread(aruns, key, contender='floor', **kw)} | "
            f"{ratio(ca, fa)} |")
    return "\n".join(lines)


def amqp_cpu_table(runs, aruns, workload):
    lines = ["| concurrency | celeriac | Python Celery | celeriac on Redis "
             "| Python Celery on Redis | floor (C) on RabbitMQ "
             "| RabbitMQ: celeriac / python / floor "
             "| Redis (results): celeriac / python / floor "
             "| PostgreSQL: celeriac / python / floor |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for conc in bench.CONCURRENCIES:
        kw = dict(workload=workload, concurrency=conc)
        cells = [fmt(median_of(aruns, "cpu_ms_per_task", contender=c, **kw), "{:.3f}")
                 for c in ("celeriac", "python")]
        cells += [fmt(median_of(runs, "cpu_ms_per_task", contender=c, **kw), "{:.3f}")
                  for c in ("celeriac", "python")]
        cells.append(fmt(median_of(aruns, "cpu_ms_per_task", contender="floor", **kw), "{:.3f}"))
        for svc in ("rabbitmq", "redis", "postgres"):
            cells.append(" / ".join(
                fmt(med([r["svc_cpu_ms_per_task"].get(svc, 0)
                         for r in select(aruns, contender=c, **kw)]), "{:.3f}")
                for c in ("celeriac", "python", "floor")))
        lines.append(f"| {conc} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def amqp_section(runs, aruns, lats):
    reps = max(r["rep"] for r in aruns) + 1
    py = select(aruns, contender="python")
    py_reps = max((r["rep"] for r in py), default=-1) + 1
    py_n = py[0]["tasks"] if py else bench.AMQP_PY_TASKS
    fill = [r["fill_s"] for r in aruns if "fill_s" in r]
    fill_rate = med([r["tasks"] / r["fill_s"] for r in aruns if r.get("fill_s")])
    cut = ""
    if (bench.AMQP_TASKS, bench.AMQP_REPS) != (bench.TASKS, bench.REPS) or \
            (bench.AMQP_PY_TASKS, bench.AMQP_PY_REPS) != (bench.PY_TASKS, bench.PY_REPS):
        cut = ("\n\n**Fewer runs or tasks than on Redis** (to keep the whole bench under about "
               "25 minutes): on RabbitMQ celeriac ran {} × {} tasks and Python Celery {} × {} "
               "per point; on Redis {} × {} and {} × {}.".format(
                   bench.AMQP_REPS, bench.AMQP_TASKS, bench.AMQP_PY_REPS, bench.AMQP_PY_TASKS,
                   bench.REPS, bench.TASKS, bench.PY_REPS, bench.PY_TASKS))
    return f"""## On RabbitMQ: W1 and W2 (issue 11)

The same tasks (same ids, same arguments) on a private RabbitMQ node, in the same run
as the Redis figures above and interleaved with them; results and the done count go
to the same Redis db 1 as on Redis, so only the broker differs. celeriac: `-b
amqp://guest:guest@127.0.0.1:PORT//` (one AMQP connection per child, prefetch 1 per
child, early ack); Python Celery: `pyamqp://…` (py-amqp, prefetch multiplier 4 as on
Redis). Median of {reps} runs of {bench.AMQP_TASKS} pre-enqueued tasks (Python Celery:
{py_reps} runs of {py_n}), min–max in brackets; each run's queue was filled in
{fmt(med(fill), "{:.1f}")} s (median; {fmt(fill_rate)} messages/s), before the worker
started.{cut}

### W1 on RabbitMQ, `books.get_book_info` (tasks/s)

{amqp_throughput_table(runs, aruns, "W1", "rate")}

Including start-up:

{amqp_throughput_table(runs, aruns, "W1", "wall_rate")}

### Worker CPU per task on RabbitMQ, W1 (ms; median)

{amqp_cpu_table(runs, aruns, "W1")}

### W2 on RabbitMQ, `tasks.add` (tasks/s)

{amqp_throughput_table(runs, aruns, "W2", "rate")}

Including start-up:

{amqp_throughput_table(runs, aruns, "W2", "wall_rate")}

### Worker CPU per task on RabbitMQ, W2 (ms)

{amqp_cpu_table(runs, aruns, "W2")}

### Memory on RabbitMQ (MB, as above)

{memory_table(aruns, bench.AMQP_CONTENDERS)}{amqp_latency_text(lats)}"""


def amqp_latency_text(lats):
    rates = ", ".join(f"{NAMES[r['contender']]} {r['target_rate']:.0f}/s"
                      for r in lats if r["variant"] == "qa")
    if not rates:
        return ""
    return f"""

### W3 on RabbitMQ: send → result, concurrency {bench.LAT_CONCURRENCY}

**Paced at half of W1.** Each contender at half its own W1 median on RabbitMQ at
c={bench.LAT_CONCURRENCY} ({rates}) for {bench.LAT_SECONDS:.0f} s. The messages were made in advance by Celery's
`send_task` over pyamqp (fresh task ids; bodies and properties kept byte for byte, as
for the throughput runs) and published by `bench.py` with py-amqp on a fixed schedule
to the default exchange, routing key `celery`, no confirms, as Celery's client
publishes them. Latency from just before each `basic_publish` to the moment its
published result is read by a `PSUBSCRIBE` on `celery-task-meta-*` in Redis.
"Late sends" counts publishes that left more than 1 ms after their slot.

{latency_table(lats, "qa", late=True)}

**Paced at half load.** W1 drains a queue filled before the worker started; here each
message is also published while the worker runs, and that sender (this Python
process) and RabbitMQ's routing of each publish share the two CPUs with the worker.
So the same schedule was first run with no pause between publishes to find the rate
the whole pipeline sustains ("capacity": min(10000, tasks per run) messages, first
publish to last result), then at half of that {span_text(lats, "qh")}: half load. {SAME_RATE_NOTE}

{latency_table(lats, "qh", late=True, capacity=True)}"""


def amqp_method(aruns):
    return f"""- **On RabbitMQ**: a private RabbitMQ node (`tests/lib/rabbitmq.sh`: its own
  epmd, Erlang cookie, data and config in a temp dir, one Erlang scheduler, no plugins)
  on a free 127.0.0.1 port, started and stopped by `bench/run.sh`. Each workload's
  tasks are sent once by Celery's own client with the pyamqp transport (`send_task`,
  the same task ids and arguments as the Redis template; kombu declares the durable
  queue `celery` as Celery does, and sends persistent messages to the default exchange
  with routing key `celery`), read back as they arrived (body and properties:
  persistent, Celery's headers) into a template; before each run the queue is purged
  and the template's first N messages are published again byte for byte with py-amqp
  (the default exchange, routing key `celery`, no publisher confirms) until RabbitMQ
  counts N ready messages. Then the worker starts, exactly as on Redis. W3 on RabbitMQ
  is published on a schedule from such a template (below). The floor runs here too
  (`floor -b amqp://…`: rabbitmq-c, prefetch 1 per child, early ack); not measured on
  RabbitMQ: floor + kombu acks (Redis only).
"""


# ---- the PostgreSQL broker (issue 12) ------------------------------------------------

def sql_targets(runs, sruns, lats):
    out = []

    def line(name, measured, ok):
        out.append(f"| {name} | {measured} | {'**met**' if ok else '**not met**'} |")

    def per_c(num, den, num_runs, den_runs, spec="{:.1f}"):
        vals = {}
        for conc in bench.CONCURRENCIES:
            a = median_of(num_runs, "rate", contender=num, workload="W1", concurrency=conc)
            b = median_of(den_runs, "rate", contender=den, workload="W1", concurrency=conc)
            if a and b:
                vals[conc] = (a / b, a, b)
        text = ", ".join(f"c={c}: {spec.format(v[0])} ({v[1]:.0f} / {v[2]:.0f})"
                         for c, v in vals.items())
        return vals, text

    vals, text = per_c("celeriac", "python", sruns, sruns)
    if vals:
        line("celeriac W1 on sqla+postgresql ≥ 20 × Python Celery on sqla+postgresql (each c)",
             text.replace(" (", " × (", len(vals)), all(v[0] >= 20 for v in vals.values()))
    vals, text = per_c("celeriac-txn", "python", sruns, sruns)
    if vals:
        line("the same, transactional task (batched, --sql-batch 16)",
             text.replace(" (", " × (", len(vals)), all(v[0] >= 20 for v in vals.values()))
    # Not a target: the bound of the early-ack path. On the PostgreSQL broker
    # it does all that the Redis run does per message (the task's statement,
    # the result in Redis) and a commit instead of an LMOVE, so it cannot
    # outrun celeriac on Redis: where this is below 20, so is it.
    vals, text = per_c("celeriac", "python", runs, sruns)
    if vals:
        out.append("| for reference: celeriac W1 on Redis / Python Celery on sqla+postgresql "
                   "(the early-ack path's bound) | " + text.replace(" (", " × (", len(vals))
                   + " | – |")
    vals, text = per_c("celeriac-txn", "celeriac", sruns, runs, "{:.2f}")
    if vals:
        line("transactional W1 on sqla+postgresql ≥ 0.8 × celeriac W1 on Redis, same run "
             "(each c)", text, all(v[0] >= 0.8 for v in vals.values()))
    for r in lats:
        if r["variant"] == "sh" and r["contender"] in ("celeriac", "celeriac-txn"):
            line(f"send-to-start p99 ≤ 10 ms at half load on the PostgreSQL broker "
                 f"({'transactional task, ' if r['contender'] == 'celeriac-txn' else ''}"
                 f"paced at half the capacity with the sender, c={r['concurrency']}; "
                 f"measured to the result, which bounds it)",
                 f"{r['p99']:.2f} ms at {r['achieved_rate']:.0f}/s of {r['capacity']:.0f}/s "
                 f"(p50 {r['p50']:.2f} ms){windows_note(r)}", r["p99"] <= 10)
    child, growth = largest_child(sruns)
    if child is not None:
        line("child RSS ≤ 4 MB on the PostgreSQL broker",
             f"largest child {mb(child)} MB after {bench.SQL_TASKS} tasks; largest growth from "
             f"10 % to the end of a run {'–' if growth is None else growth} kB", child <= 4 * KB)
    return ("| target (issue 12, PostgreSQL broker) | measured in this run | |\n|---|---|---|\n"
            + "\n".join(out))


def perf_targets(runs, aruns, sruns, pruns, lats, druns=(), dpruns=()):
    """Issue 15: worker CPU at the floor and the queue beside the database,
    on every broker the run measured."""
    out = []

    def line(name, measured, ok):
        out.append(f"| {name} | {measured} | {'**met**' if ok else '**not met**'} |")

    def cpu_line(name, celeriac_runs, floor_runs):
        """celeriac's W1 CPU per task over the floor's, each concurrency."""
        vals = {}
        for conc in bench.CONCURRENCIES:
            cc = median_of(celeriac_runs, "cpu_ms_per_task", contender="celeriac",
                           workload="W1", concurrency=conc)
            fc = median_of(floor_runs, "cpu_ms_per_task", contender="floor", workload="W1",
                           concurrency=conc)
            if cc and fc:
                vals[conc] = (cc / fc, cc, fc)
        if vals:
            line(name, ", ".join(f"c={c}: {v[0]:.2f} ({v[1]:.3f} / {v[2]:.3f} ms)"
                                 for c, v in vals.items()),
                 all(v[0] <= 1.3 for v in vals.values()))

    brokers = [(name, r) for name, r in (("Redis", runs), ("RabbitMQ", aruns),
                                         ("sqla+postgresql", sruns)) if r]
    for name, bruns in brokers:
        cpu_line(f"worker CPU per task ≤ 1.3 × the floor's (on Redis), W1 on {name}",
                 bruns, runs)
        if bruns is not runs:  # on Redis the line above is already like with like
            cpu_line(f"worker CPU per task ≤ 1.3 × the floor on the same broker, W1 on {name}",
                     bruns, bruns)
    vals = {}
    for conc in (2, 4):
        cel = median_of(runs, "rate", contender="celeriac", workload="W1", concurrency=conc)
        pb = median_of(pruns, "rate", concurrency=conc)
        if cel and pb:
            vals[conc] = (cel / pb, cel, pb)
    if vals:
        line("celeriac W1 on Redis ≥ 0.9 × pgbench running its statement (c = 2, 4)",
             ", ".join(f"c={c}: {v[0]:.2f} ({v[1]:.0f} / {v[2]:.0f})" for c, v in vals.items()),
             all(v[0] >= 0.9 for v in vals.values()))
    dvals = {}
    for conc in bench.DURABLE_CONCURRENCIES:
        cel = median_of(druns, "rate", contender="celeriac", concurrency=conc)
        flo = median_of(druns, "rate", contender="floor", concurrency=conc)
        pb = median_of(dpruns, "rate", concurrency=conc)
        if cel and pb:
            dvals[conc] = (cel / pb, cel, pb, flo / pb if flo else None)
    if dvals:
        line("celeriac W1 on Redis ≥ 0.9 × pgbench, commits on disk (fsync on; the floor's ratio beside it)",
             ", ".join(f"c={c}: {v[0]:.2f} ({v[1]:.0f} / {v[2]:.0f}; floor {fmt(v[3], '{:.2f}')})"
                       for c, v in dvals.items()),
             all(v[0] >= 0.9 for v in dvals.values()))
    for name, bruns in brokers:
        child, _ = largest_child(bruns)
        if child is not None:
            line(f"child RSS ≤ 4 MB on {name}", f"largest child {mb(child)} MB", child <= 4 * KB)
    for name, variant in (("Redis", "h"), ("RabbitMQ", "qh"), ("sqla+postgresql", "sh")):
        row = next((r for r in lats if r["variant"] == variant
                    and r["contender"] == "celeriac"), None)
        floor = next((r for r in lats if r["variant"] == variant
                      and r["contender"] == "floor"), None)
        same = next((r for r in lats if r["variant"] == bench.SAME_RATE + variant
                     and r["contender"] == "floor"), None)
        if row:
            of = f" (half of {row['capacity']:.0f}/s)" if "capacity" in row else ""
            beside = (f"; floor (C): {floor['p99']:.2f} ms at {floor['achieved_rate']:.0f}/s"
                      f" (windows {window_cells(floor)})" if floor else "")
            if same:
                beside += (f"; floor (C) at celeriac's rate: {same['p99']:.2f} ms at "
                           f"{same['achieved_rate']:.0f}/s (windows {window_cells(same)})")
            line(f"p99 send-to-result ≤ 5 ms at half load on {name} (c={row['concurrency']})",
                 f"{row['p99']:.2f} ms at {row['achieved_rate']:.0f}/s{of}{windows_note(row)}"
                 f"{beside}", row["p99"] <= 5)
    return ("| target (issue 15, every broker) | measured in this run | |\n|---|---|---|\n"
            + "\n".join(out))


def sql_throughput_table(runs, sruns, key):
    lines = ["| concurrency | celeriac | celeriac, transactional | Python Celery "
             "| celeriac / Python | transactional / Python | celeriac on Redis "
             "| celeriac sql / Redis | transactional / Redis "
             "| floor (C) on sql | celeriac / floor |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for conc in bench.CONCURRENCIES:
        kw = dict(workload="W1", concurrency=conc)
        c = median_of(sruns, key, contender="celeriac", **kw)
        t = median_of(sruns, key, contender="celeriac-txn", **kw)
        p = median_of(sruns, key, contender="python", **kw)
        r = median_of(runs, key, contender="celeriac", **kw)
        f = median_of(sruns, key, contender="floor", **kw)
        lines.append(
            f"| {conc} | **{fmt(c)}**{spread(sruns, key, contender='celeriac', **kw)} | "
            f"**{fmt(t)}**{spread(sruns, key, contender='celeriac-txn', **kw)} | "
            f"{fmt(p)}{spread(sruns, key, contender='python', **kw)} | "
            f"{ratio(c, p, '{:.1f}')} | {ratio(t, p, '{:.1f}')} | {fmt(r)} | {ratio(c, r)} | "
            f"{ratio(t, r)} | {fmt(f)}{spread(sruns, key, contender='floor', **kw)} | "
            f"{ratio(c, f)} |")
    return "\n".join(lines)


def sql_cpu_table(runs, sruns):
    who = ("celeriac", "celeriac-txn", "python", "floor")
    lines = ["| concurrency | worker: celeriac / transactional / Python / floor "
             "| PostgreSQL: celeriac / transactional / Python / floor "
             "| Redis (results): celeriac / transactional / Python / floor "
             "| celeriac on Redis: worker / PostgreSQL / Redis |",
             "|---:|---|---|---|---|"]
    for conc in bench.CONCURRENCIES:
        kw = dict(workload="W1", concurrency=conc)
        cells = [" / ".join(fmt(median_of(sruns, "cpu_ms_per_task", contender=c, **kw), "{:.3f}")
                            for c in who)]
        for svc in ("postgres", "redis"):
            cells.append(" / ".join(
                fmt(med([r["svc_cpu_ms_per_task"].get(svc, 0)
                         for r in select(sruns, contender=c, **kw)]), "{:.3f}") for c in who))
        rsel = select(runs, contender="celeriac", **kw)
        cells.append(" / ".join([fmt(med([r["cpu_ms_per_task"] for r in rsel]), "{:.3f}")] + [
            fmt(med([r["svc_cpu_ms_per_task"].get(svc, 0) for r in rsel]), "{:.3f}")
            for svc in ("postgres", "redis")]))
        lines.append(f"| {conc} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sql_latency_table(lats, variant, capacity=False):
    live = variant == "sb"
    windowed = any("window_p99" in r for r in lats if r["variant"] == variant)
    lines = ["| task | " + ("capacity with the sender (tasks/s) | " if capacity else "")
             + "rate sent (tasks/s) | tasks | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms "
             + ("| send (celeriac_enqueue round trip) p50 / p99 ms | late sends " if live else "")
             + "| others' CPU |" + (" p99 of each window ms |" if windowed else ""),
             "|---|" + ("---:|" if capacity else "") + "---:|---:|---:|---:|---:|---:|---:|"
             + ("---:|---:|" if live else "") + "---:|" + ("---:|" if windowed else "")]
    for r in lats:
        if r["variant"] not in (variant, bench.SAME_RATE + variant):
            continue
        task = bench.TXN_TASK if r["contender"] == "celeriac-txn" else bench.TASK_OF["W3"]
        who = "floor (C)" if r["contender"] == "floor" else "celeriac"
        lines.append(f"| {who}, `{task}`{at_celeriac_rate(r)} | "
                     + (f"{r['capacity']:.0f}{capacity_of(r)} | " if capacity else "")
                     + f"{r['achieved_rate']:.0f} | {r['tasks']} | "
                     f"{r['p50']:.2f} | {r['p90']:.2f} | {r['p99']:.2f} | {r['p999']:.2f} | "
                     f"{r['max']:.2f} | "
                     + (f"{r['send_p50']:.2f} / {r['send_p99']:.2f} | {r['late_sends']} | "
                        if live else "")
                     + f"{100 * r.get('foreign_cpu', 0):.0f} % |"
                     + (f" {window_cells(r)} |" if windowed else ""))
    return "\n".join(lines)


def sql_enqueue_rates():
    """min–max of the rates at which send_task filled the SQL templates."""
    try:
        with open(os.path.join(bench.TMP, "sql-enqueue.jsonl")) as f:
            rates = [r["tasks"] / r["seconds"] for r in map(json.loads, f) if r["seconds"] > 0]
    except OSError:
        return "–"
    return f"{min(rates):.0f}–{max(rates):.0f}" if rates else "–"


def sql_section(runs, sruns, lats):
    reps = max(r["rep"] for r in sruns) + 1
    py = select(sruns, contender="python")
    py_reps = max((r["rep"] for r in py), default=-1) + 1
    py_n = py[0]["tasks"] if py else bench.SQL_PY_TASKS
    fill_rate = med([r["tasks"] / r["fill_s"] for r in sruns if r.get("fill_s")])
    slat = [r for r in lats if r["variant"] in ("sa", "sh", "sb")]
    b_rate = next((r["target_rate"] for r in lats if r["variant"] == "sb"), 0)
    lat_text = f"""
### W3 on the PostgreSQL broker: send → result, concurrency {bench.LAT_CONCURRENCY}

Send-to-result, which bounds send-to-start from above: the result is read from Redis
by a `PSUBSCRIBE celery-task-meta-*` (`bench/latency.c`) as on Redis.

**Paced at half of W1 (as W3a).** Each task at half its own W1 median on this broker at
c={bench.LAT_CONCURRENCY}, for {bench.LAT_SECONDS:.0f} s. The messages were sent in
advance by Celery's `send_task` on `sqla+postgresql://` into a template table (as for
the throughput runs; fresh task ids), and `bench/latency.c pace-sql` releases them on
a fixed schedule into `kombu_message`, one prepared `INSERT … SELECT` each (its own
transaction, the row as kombu's `_put` inserts it; celeriac's trigger NOTIFYs the idle
children), stamping each just before its INSERT.

{sql_latency_table(lats, "sa")}

**Paced at half load.** The schedule above takes half of W1's rate, and W1 drains a
queue filled before the worker started. Here every message is also INSERTed and
committed while the worker runs, and on two CPUs that sender's work (its commit, the
trigger's `NOTIFY`, the index insert) competes with the worker's for PostgreSQL. So
the same pacing was first run with no pause between INSERTs to find the rate the
whole pipeline sustains (its "capacity": min(10000, tasks per run) messages, first
INSERT to last result), then at half of that {span_text(lats, "sh")}: half load. {SAME_RATE_NOTE}

{sql_latency_table(lats, "sh", capacity=True)}

**Live `celeriac_enqueue` (as W3b).** At {b_rate:.0f}/s (half of the slowest contender's
W1 median on this broker, Python Celery's), sent one at a time from one Python process
with psycopg2 in autocommit by `SELECT celeriac_enqueue('celery', task, args)`
(celeriac's outbox function: one INSERT of the protocol-2 message Celery's client would
send, committed by the statement). Latency from just before that statement, so it
includes the INSERT's own round trip and commit (shown as "send").

{sql_latency_table(lats, "sb")}
""" if slat else ""
    return f"""## On the PostgreSQL broker: W1 (issue 12)

kombu's SQL transport in the bench's own PostgreSQL database, beside the books table:
celeriac with `-b sqla+postgresql://postgres@127.0.0.1:PORT/bench` (the `--db`
database, so `books.get_book_info_txn`, flagged `CELERIAC_TRANSACTIONAL`, runs its
`UPDATE` and the `DELETE` of its message in one transaction; `books.get_book_info` is
acked early, its row deleted when it starts); Python Celery with `broker_url =
'sqla+postgresql://…'` (kombu's own consumer over SQLAlchemy and psycopg2: one
`SELECT … FOR UPDATE` per message from the consumer process, prefetch multiplier 4,
early ack, which in kombu's SQL transport leaves the row invisible, never deleted).
Results go to the same Redis db 1 as on Redis, so only the broker differs. In the same
run as the Redis figures and interleaved with them. Median of {reps} runs of
{bench.SQL_TASKS} pre-enqueued tasks for celeriac; **Python Celery: {py_reps} runs of
only {py_n}**, as kombu's consumer takes several seconds per thousand (its rate is
taken, like every rate here, from its own first to last result).

**How the tasks are enqueued**: once per task name, Celery's own client sends the
{bench.SQL_TASKS} tasks (the ids and arguments of the Redis template) with
`send_task` on `sqla+postgresql://` (kombu creates its tables; one row per send); the
rows are copied, in the order they were sent, into a template table. Before each run
`kombu_message` is emptied (`TRUNCATE`) and the template's first N rows are inserted
into it in one `INSERT … SELECT` as kombu's `_put` inserts them (id from
`message_id_sequence`, visible, NULL timestamp, version 1, the payload byte for byte;
{fmt(fill_rate)} rows/s, median), then `VACUUM ANALYZE kombu_message`, then the usual
`VACUUM books; CHECKPOINT`. kombu's publisher itself, sending these templates in
this run, inserted {sql_enqueue_rates()} rows/s.

### W1 on the PostgreSQL broker (tasks/s)

{sql_throughput_table(runs, sruns, "rate")}

Including start-up:

{sql_throughput_table(runs, sruns, "wall_rate")}

### CPU per task on the PostgreSQL broker, W1 (ms; median)

PostgreSQL's CPU here is the broker's work (claim, ack) plus the task's statement;
on Redis it is the task's statement alone.

{sql_cpu_table(runs, sruns)}

### Memory on the PostgreSQL broker (MB, as above)

{memory_table(sruns, bench.SQL_CONTENDERS)}
{lat_text}"""


def sql_method():
    return """- **On the PostgreSQL broker**: kombu's tables (`kombu_queue`, `kombu_message`) in
  the bench's PostgreSQL database `bench`, next to `books` (celeriac adds its ready-row
  index, its NOTIFY trigger and `celeriac_enqueue()` on first start). The same
  PostgreSQL serves the broker's statements, the task's and, for Python Celery,
  SQLAlchemy's; its CPU is counted as a service, as Redis's. See the section above for
  how the queue is filled. The floor runs here too (`floor -b sqla+postgresql://…`: one
  connection per child, celeriac's two pipelined round trips per message, then the
  task's statement on it; an idle child waits for the NOTIFY of celeriac's trigger, as
  celeriac's do). Not measured on this broker: floor + kombu acks, W2, and the
  latency of Python Celery (its consumer polls once a second when idle).
"""


def redis_table(runs, workload, conc):
    """What each contender asks of Redis per task (last run at this point)."""
    lines = ["| contender | Redis CPU ms/task | commands per task: calls × µs (a script's or "
             "EXEC's time includes the commands it runs) |", "|---|---:|---|"]
    for c in bench.CONTENDERS:
        sel = select(runs, contender=c, workload=workload, concurrency=conc)
        if not sel or "redis_commands" not in sel[-1]:
            continue
        r = sel[-1]
        cmds = sorted(r["redis_commands"].items(), key=lambda kv: -kv[1][1])
        text = ", ".join(f"{name.upper()} {calls:.2f} × {usec / calls:.1f}"
                         for name, (calls, usec) in cmds if calls >= 0.01)
        lines.append(f"| {NAMES[c]} | {r['svc_cpu_ms_per_task'].get('redis', 0):.3f} | {text} |")
    return "\n".join(lines)


def all_runs_table(runs):
    lines = ["| workload | contender | c | rep | tasks | tasks/s | incl. start-up | CPU ms/task "
             "| others' CPU |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        lines.append(f"| {r['workload']} | {NAMES[r['contender']]} | {r['concurrency']} | "
                     f"{r['rep'] + 1} | {r['tasks']} | {r['rate']:.0f} | {r['wall_rate']:.0f} | "
                     f"{r['cpu_ms_per_task']:.3f} | {100 * r.get('foreign_cpu', 0):.0f} % |")
    return "\n".join(lines)


def write_plot_data(runs, lats, aruns, sruns):
    for workload in bench.WORKLOADS:
        tput_data(runs, workload, bench.CONTENDERS, f"tput-{workload}.dat")
        tput_data(aruns, workload, bench.AMQP_CONTENDERS, f"tput-amqp-{workload}.dat")
        tput_data(sruns, workload, bench.SQL_CONTENDERS, f"tput-sql-{workload}.dat")
    with open(os.path.join(bench.TMP, "plot.gpvars"), "w") as f:
        f.write("contenders = '" + " ".join(bench.CONTENDERS if runs else []) + "'\n")
        f.write("amqpcontenders = '" + " ".join(bench.AMQP_CONTENDERS if aruns else []) + "'\n")
        f.write("sqlcontenders = '" + " ".join(bench.SQL_CONTENDERS if sruns else []) + "'\n")
        f.write("latcontenders = '" + " ".join(bench.LAT_CONTENDERS if lats else []) + "'\n")
        rates = {r["contender"]: r["achieved_rate"] for r in lats if r["variant"] == "h"}
        f.write("w3rates = '" + " ".join(f"{rates.get(c, 0):.0f}" for c in bench.LAT_CONTENDERS)
                + "'\n")


# Sections recorded by other commands than `make bench`, from this heading to
# the end of RESULTS.md: carried over when the file is written again.
KEPT_FROM = "## Chaos on RabbitMQ"


def kept_sections(path):
    try:
        with open(path) as f:
            old = f.read()
    except OSError:
        return ""
    at = old.find("\n" + KEPT_FROM + "\n")
    return "\n" + old[at + 1:].rstrip("\n") + "\n" if at >= 0 else ""


def tput_data(runs, workload, contenders, name):
    with open(os.path.join(bench.TMP, name), "w") as f:
        f.write("# concurrency, then median min max for " + " ".join(contenders) + "\n")
        for conc in bench.CONCURRENCIES:
            cells = [str(conc)]
            for c in contenders:
                vals = [r["rate"] for r in select(runs, contender=c, workload=workload,
                                                  concurrency=conc)]
                cells += ([f"{med(vals):.1f}", f"{min(vals):.1f}", f"{max(vals):.1f}"]
                          if vals else ["NaN"] * 3)
            f.write(" ".join(cells) + "\n")


def main():
    all_runs = bench.load_runs()
    runs = select(all_runs, broker="redis")  # every table of issue 5 is about these
    aruns = select(all_runs, broker="amqp")
    sruns = select(all_runs, broker="sql")
    pruns = select(all_runs, broker="pgbench")
    druns = select(all_runs, broker="redis-durable", workload="W1")
    dpruns = select(all_runs, broker="pgbench-durable")
    with open(os.path.join(bench.TMP, "latency.jsonl")) as f:
        all_lats = [json.loads(line) for line in f]
    redis_w3 = ("a", "h", "b", bench.SAME_RATE + "h")
    lats = [r for r in all_lats if r["variant"] in redis_w3]
    write_plot_data(runs, lats, aruns, sruns)
    reps = max((r["rep"] for r in runs), default=-1) + 1
    py_reps = max((r["rep"] for r in runs if r["contender"] == "python"), default=-1) + 1
    py_n = next((r["tasks"] for r in runs if r["contender"] == "python"), bench.TASKS)
    a_rates = ", ".join(f"{NAMES[r['contender']]} {r['target_rate']:.0f}/s"
                        for r in lats if r["variant"] == "a")
    b_rate = next((r["target_rate"] for r in lats if r["variant"] == "b"), 0)
    elapsed = int(os.environ.get("BENCH_ELAPSED", "0"))
    facts = "\n".join(f"| {k} | {v} |" for k, v in machine())

    amqp_details = f"""
<details><summary>Every run on RabbitMQ</summary>

{all_runs_table(aruns)}

</details>
""" if aruns else ""
    sql_details = f"""
<details><summary>Every run on the PostgreSQL broker</summary>

{all_runs_table(sruns)}

</details>
""" if sruns else ""
    targets_text = "\n\n".join(t for t in (targets(runs, lats) if runs else "",
                                            amqp_targets(runs, aruns) if aruns else "",
                                            sql_targets(runs, sruns, all_lats) if sruns else "",
                                            perf_targets(runs, aruns, sruns, pruns, all_lats,
                                                         druns, dpruns)
                                            if runs and pruns else "")
                                 if t)
    redis_text = f"""## W1: the seed workload, `books.get_book_info` (tasks/s)

Median of {reps} runs of {bench.TASKS} pre-enqueued tasks (Python Celery: {py_reps} runs of
{py_n}), min–max in brackets; rate from the first result's `date_done` to the last's.

{throughput_table(runs, "W1", "rate", "")}

Including start-up (from starting the worker to the last result, polled every 10 ms):

{throughput_table(runs, "W1", "wall_rate", "")}

{pgbench_section(runs, sruns, pruns) if pruns else ""}
{durable_section(druns, dpruns) if druns and dpruns else ""}
### Worker CPU per task, W1 (ms; master + every child; median)

{cpu_table(runs, "W1")}

### What the worker asks of Redis per task, W1 at c=2

{redis_table(runs, "W1", 2)}

## W2: no database, `tasks.add` (tasks/s)

{throughput_table(runs, "W2", "rate", "")}

Including start-up:

{throughput_table(runs, "W2", "wall_rate", "")}

### Worker CPU per task, W2 (ms)

{cpu_table(runs, "W2")}

## Memory (MB, `/proc/PID/smaps_rollup` after the last task of the last run, before TERM)

{memory_table(runs)}

""" if runs else ""
    amqp_text = amqp_section(runs, aruns, all_lats) + "\n\n" if aruns else ""
    amqp_text += sql_section(runs, sruns, all_lats) + "\n\n" if sruns else ""
    latency_img = "\n![latency](latency.png)\n" if lats else ""
    latency_text = f"""## W3: latency at half load, concurrency {bench.LAT_CONCURRENCY}

**W3a, paced at half of W1.** Each contender at half its own W1 median at c={bench.LAT_CONCURRENCY}
({a_rates}) {span_text(lats, "a")}. Messages made in advance by Celery's
`send_task`, released into the queue on a fixed schedule by `bench/latency.c`
(`LMOVE`, the `LPUSH` that ends `send_task`); latency = from just before that
push to the moment the published result is read by a `PSUBSCRIBE` on
`celery-task-meta-*` (results are SETEX'd and PUBLISHed atomically, so a
published result is readable).

{latency_table(lats, "a")}

**W3h, paced at half load.** W1 drains a queue filled before the worker started;
here `latency.c` releases each message and reads each result while the worker
runs, on the same two CPUs. So the same schedule was first run with no pause
between releases to find the rate the whole pipeline sustains ("capacity":
min(10000, tasks per run) messages, first release to last result), then at half
of that {span_text(lats, "h")}: half load, as on RabbitMQ and the PostgreSQL
broker. {SAME_RATE_NOTE} Half of W1 (above) is about two thirds of that capacity, where any burst
of other work builds a queue that takes a second to drain.

{latency_table(lats, "h", capacity=True)}

**W3b, live `send_task`.** All three at the same rate, {b_rate:.0f}/s (half of the slowest
contender's W1 maximum), sent by Celery's `send_task` from one Python process; latency
from just before the `send_task` call (so it includes the client's own ~0.3 ms of message
building) to the result being read, as above.

{latency_table(lats, "b")}

""" if lats else ""

    text = f"""# celeriac benchmark results

Written by `make bench` (`bench/run.sh`) in {elapsed // 60} min {elapsed % 60} s; every figure
below was measured in that one run, except the last sections (chaos runs from
`make chaos CHAOS_BROKER=amqp` and `CHAOS_BROKER=sql`, PgBouncer, partitions from `make fleet`:
recorded by hand and carried over). Do not edit the rest by hand: run `make bench` again.

## Machine

| | |
|---|---|
{facts}

## Targets

{targets_text}

{redis_text}{amqp_text}{latency_text}![throughput](throughput.png)
{latency_img}
## Method

- **Services**: a private `redis-server` (no persistence: `--save '' --appendonly no`)
  and a throwaway PostgreSQL 15 cluster (`initdb -A trust --nosync`, **fsync off**,
  checkpoints only between runs), both on free 127.0.0.1 ports, started and stopped
  by `bench/run.sh`. All traffic is TCP loopback, for every contender. Broker: db 0,
  results: db 1, message templates: db 2 of that Redis. `books` seeded with
  {bench.BOOKS} rows by `examples/books/seed.sh`.
- **Tasks**: enqueued once per workload by Celery's own client (`send_task` with one
  producer from `app.producer_or_acquire()`, no result backend on the client so no
  per-task SUBSCRIBE) into a template list; before each run the broker and result
  databases are flushed and the template is copied into the queue with Redis `COPY`
  (so task ids repeat across runs, never within one). W1 args cycle through book ids
  1..{bench.BOOKS}; W2 adds two integers. Before each W1 run: `VACUUM books; CHECKPOINT`.
- **Contenders**, each with its database connection opened per child after fork, and
  `--db` configured in W2 too (the same deployment, the task just does not use it):
  - celeriac: `build/celeriac worker -A build/examples/libbooks.so -c N -b redis://…/0
    --result-backend redis://…/1 --db postgresql://…/bench -l warning` (early ack,
    kombu's unacked bookkeeping, as Celery).
  - Python Celery: `bench/pyworker/benchapp.py`, `python3 -m celery -A benchapp worker
    -c N -P prefork --without-gossip --without-mingle --without-heartbeat -l warning`;
    Celery defaults otherwise (prefetch multiplier 4, early ack); `worker_process_init`
    connects with psycopg2 and `PREPARE`s the statement, `worker_process_shutdown`
    closes, tasks `EXECUTE` it on the module-level connection (autocommit, so the
    statement is its own transaction, as in books.c).
  - floor: `bench/floor.c`, N forked processes each doing only `BRPOP` (the four
    priority lists, 1 s timeout), jansson decode of envelope and body, the prepared
    statement (W1), then `MULTI; SETEX celery-task-meta-<id> 86400 <meta>; PUBLISH; EXEC`
    in one round trip. No acks, no unacked bookkeeping, no logging, no reconnects.
  - floor + kombu acks (`floor --kombu-ack`): the floor plus exactly the Redis work
    kombu's transport does per message and nothing else, `MULTI ZADD unacked_index
    HSET unacked EXEC` and the early ack `MULTI ZREM HDEL EXEC`, sent before the task
    runs without waiting for the replies (read after the result is stored), so no extra
    round trip, only the extra work in Redis and the client. Not a target; it shows how much of the distance to the floor is the
    price of being able to restore unacked messages as kombu does.
  - The SQL is the same for all of them, books.c's single statement
    `UPDATE books SET fetched_at = now() WHERE id = $1 RETURNING title` (one implicit
    transaction; the issue's "SELECT + UPDATE" is done by this one statement).
{amqp_method(aruns) if aruns else ""}{sql_method() if sruns else ""}- **Throughput**: the time is taken from the results themselves: (N − 1) / (last
  `date_done` − first `date_done`), which leaves out process start-up (about 1 s of
  imports for Python Celery). The wall-clock rate including start-up is shown too. Each
  run checks every result: SUCCESS, the right value, the right id. Runs are interleaved
  (for each workload, concurrency and repetition: {", ".join(NAMES[c] for c in bench.CONTENDERS)}{
  (", then on RabbitMQ: " + ", ".join(NAMES[c] for c in bench.AMQP_CONTENDERS)) if aruns else ""}{
  (", then on the PostgreSQL broker (W1): " + ", ".join(NAMES[c] for c in bench.SQL_CONTENDERS))
  if sruns else ""}).
- **CPU**: utime + stime (+ cutime + cstime of anything they reaped) of the master and
  every live descendant (pool children, celeriac's control process) from `/proc/PID/stat`, read when the last result appeared and before
  TERM, divided by N; it includes start-up. Redis, PostgreSQL and RabbitMQ CPU is the
  difference over the run for their whole process trees.
- **Memory**: `Rss` and `Pss` from `/proc/PID/smaps_rollup` of the master, each
  pool child and any other process of the worker (celeriac's remote-control process)
  after the last result (and of the children at 10 % of the run, to see growth).
  RSS counts every shared-library page a process has touched (libc, libpq with its
  TLS/GSSAPI/LDAP dependencies, hiredis, jansson); PSS divides shared pages among the
  processes using them. The floor, which links the same libraries, shows what RSS any
  C worker with libpq pays before doing anything.
- **Latency**: see W3 above; p-th percentile = the sorted sample at index ⌊p/100 · n⌋.
  The machine has {sh("nproc")} CPUs for the sender, Redis, PostgreSQL and the workers
  together; a contender runs at half of a maximum that was measured with all of them
  busy.
- **Other load**: the machine is shared with other work. Before each run the bench
  waits (at most {bench.ENV.get("BENCH_QUIET_WAIT", "30")} s in all) until processes that
  are not its own use less than 15 % of a CPU, records what they used during each run
  ("others' CPU", as a fraction of one CPU; in this run up to
  {100 * max(r.get("foreign_cpu", 0) for r in all_runs):.0f} % in a throughput run), and runs
  a throughput run once more when that exceeded 30 % (at most
  {bench.ENV.get("BENCH_RERUNS", "8")} times in all; the table of every run shows the
  kept one).
- Numbers are this machine's and this run's; the floor is the yardstick, ratios to it
  are what carry over.

<details><summary>Every run</summary>

{all_runs_table(runs)}

</details>
{amqp_details}{sql_details}"""
    path = os.path.join(bench.OUT, "RESULTS.md")
    text += kept_sections(path)
    with open(path, "w") as f:
        f.write(text)

    with open(os.path.join(bench.OUT, "runs.json"), "w") as f:
        json.dump({"runs": all_runs, "latency": lats}, f, indent=1)
