#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""client.py: the Python half of tests/fleet/fleet.sh (run inside cel-cl).

  client.py send BROKER N SECONDS IDS      N books.get_book_info tasks at an even
                                           rate over SECONDS; their ids to IDS
  client.py pending BACKEND IDS            how many ids have no SUCCESS result yet
  client.py check BROKER BACKEND IDS EVENTS DIR NOTICE_MAX
                                           TAP lines and the figures per scenario,
                                           from the results and the workers' json logs;
                                           a cut must be logged within NOTICE_MAX s
"""
import collections
import datetime
import json
import sys
import time

import redis


def rconn(url):
    return redis.Redis.from_url(url)


def send(broker, n, seconds, ids_path):
    from celery import Celery

    app = Celery("fleetclient", broker=broker)
    app.conf.broker_connection_retry = False
    rate = n / seconds
    t0 = time.monotonic()
    with open(ids_path, "w") as f, app.producer_or_acquire() as producer:
        for i in range(n):
            due = t0 + i / rate
            d = due - time.monotonic()
            if d > 0:
                time.sleep(d)
            res = app.send_task("books.get_book_info", args=[i % 10000 + 1], producer=producer)
            f.write(res.id + "\n")
    el = time.monotonic() - t0
    print(f"sent {n} tasks in {el:.1f} s ({n / el:.0f}/s)")


def statuses(backend, ids):
    r = rconn(backend)
    out = {}
    for i in range(0, len(ids), 1000):
        chunk = ids[i:i + 1000]
        vals = r.mget([f"celery-task-meta-{t}" for t in chunk])
        for t, v in zip(chunk, vals):
            out[t] = json.loads(v)["status"] if v else None
    return out


def read_ids(path):
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def pending(backend, ids_path):
    st = statuses(backend, read_ids(ids_path))
    print(sum(1 for s in st.values() if s != "SUCCESS"))


def ts(s):
    return datetime.datetime.fromisoformat(s).timestamp()


def load_log(path):
    """(time, level, message, task_id) per json record."""
    recs = []
    with open(path, errors="replace") as f:
        for line in f:
            try:
                o = json.loads(line)
            except ValueError:
                recs.append((None, "?", line.strip(), None))
                continue
            recs.append((ts(o["time"]), o.get("level", ""), o.get("message", ""), o.get("task_id")))
    return recs


def is_task_line(msg):
    return " succeeded in " in msg or msg.startswith("Received task") or msg.startswith("Task accepted")


def check(broker, backend, ids_path, events_path, d, notice_max):
    notice_max = float(notice_max)
    passed = failed = 0

    def ok(cond, name, *detail):
        nonlocal passed, failed
        if cond:
            print(f"ok - {name}")
            passed += 1
        else:
            print(f"not ok - {name}")
            for x in detail:
                print(f"#   {x}")
            failed += 1

    ids = read_ids(ids_path)
    st = statuses(backend, ids)
    c = collections.Counter(st.values())
    ok(c.get("SUCCESS", 0) == len(ids), f"all {len(ids)} tasks SUCCESS in Redis db 1",
       f"statuses: {dict(c)}")
    ok(c.get("FAILURE", 0) == 0, "no task FAILURE", f"{c.get('FAILURE', 0)} failed")
    rb = rconn(broker)
    un, ui, q = rb.hlen("unacked"), rb.zcard("unacked_index"), rb.llen("celery")
    ok(un == 0 and ui == 0 and q == 0, "kombu's unacked hash, unacked_index and queue empty",
       f"unacked {un}, unacked_index {ui}, celery {q}")

    logs = {w: load_log(f"{d}/{w}.log") for w in ("w1", "w2", "w3")}
    done = {w: sorted(t for t, lv, m, tid in recs if t and " succeeded in " in m)
            for w, recs in logs.items()}
    per_id = collections.Counter()
    for w, recs in logs.items():
        for t, lv, m, tid in recs:
            if " succeeded in " in m and tid:
                per_id[tid] += 1
    dups = sum(1 for v in per_id.values() if v > 1)
    print(f"# completions per host: " + ", ".join(f"{w} {len(v)}" for w, v in done.items()))
    print(f"# duplicates (ids run to success more than once; at-least-once permits): {dups}")
    total_lines = sum(len(v) for v in done.values())
    ok(set(per_id) >= set(ids), "every id has a 'succeeded' line in some worker log",
       f"{len(set(ids) - set(per_id))} missing")
    # a task run twice (at-least-once) must end the same way both times
    outcomes = collections.defaultdict(set)
    for w, recs in logs.items():
        for t, lv, m, tid in recs:
            if not tid:
                continue
            if " succeeded in " in m:
                outcomes[tid].add("SUCCESS")
            elif " raised " in m:
                outcomes[tid].add("FAILURE")
    mixed = [t for t, o in outcomes.items() if len(o) > 1]
    ok(not mixed, "no task ran twice with different outcomes",
       *[f"{t}: {sorted(outcomes[t])}" for t in mixed[:5]])

    ev = [l.split() for l in open(events_path)]
    cuts = {}
    for e in ev:
        if e[0] in ("w1", "w2", "w3"):
            cuts.setdefault(e[0], {})[e[2]] = (float(e[3]), int(e[4]))
            cuts[e[0]]["what"] = e[1]
    hz = 100
    for w, c_ in cuts.items():
        t_cut, k_cut = c_["cut"]
        t_heal, k_heal = c_["heal"]
        what = c_["what"]
        others = [o for o in done if o != w]
        span = t_heal - t_cut
        own_in = sum(1 for t in done[w] if t_cut + 1 < t < t_heal)
        oth_in = sum(1 for o in others for t in done[o] if t_cut < t < t_heal)
        oth_before = sum(1 for o in others for t in done[o] if t_cut - 4 < t < t_cut)
        after = [t for t in done[w] if t > t_heal]
        recover = after[0] - t_heal if after else None
        noise = [(t, lv, m) for t, lv, m, tid in logs[w] if t and t_cut <= t <= t_heal + 1 and not is_task_line(m)]
        warn = [x for x in noise if x[1] not in ("DEBUG", "debug")]
        notice = (noise[0][0] - t_cut) if noise else None
        cpu_s = (k_heal - k_cut) / hz
        print(f"# {w} cut from {what} for {span:.1f} s:")
        print(f"#   first log line about it {notice:.1f} s after the cut" if notice is not None
              else "#   no log line during the cut")
        ok(notice is not None and notice <= notice_max,
           f"{w} ({what} cut) notices the cut within {notice_max:.0f} s",
           "no log line during the cut" if notice is None else f"first line after {notice:.1f} s")
        print(f"#   log lines during the cut: {len(noise)} ({len(warn)} above debug); "
              f"CPU {cpu_s:.2f} s ({100 * cpu_s / span:.0f}% of one CPU)")
        for t, lv, m in noise[:6]:
            print(f"#     +{t - t_cut:5.1f}s {lv} {m[:150]}")
        print(f"#   its completions during the cut (after the first second): {own_in}")
        restored = 0
        for o in others:
            for t, lv, m, tid in logs[o]:
                if t and t_cut <= t <= t_heal and m.startswith("restored "):
                    restored += int(m.split()[1])
        print(f"#   messages the others restored from unacked during the cut: {restored}")
        print(f"#   others: {oth_in / span:.0f} tasks/s during the cut, {oth_before / 4:.0f}/s in the 4 s before")
        print(f"#   first task completed after the heal: "
              + (f"{recover:.1f} s" if recover is not None else "never"))
        ok(recover is not None and recover < 30, f"{w} ({what} cut) completes tasks again by itself after the heal",
           "no task completed after the heal")
        ok(len(warn) <= 60, f"{w} ({what} cut) does not flood its log ({len(warn)} lines above debug in {span:.0f} s)",
           *[m[:200] for _, _, m in warn[:5]])
        ok(cpu_s < 0.25 * span, f"{w} ({what} cut) does not spin ({cpu_s:.2f} s CPU in {span:.0f} s)")
    print(f"# {passed} passed, {failed} failed (checks of client.py)")


def main():
    cmd = sys.argv[1]
    if cmd == "send":
        send(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5])
    elif cmd == "pending":
        pending(sys.argv[2], sys.argv[3])
    elif cmd == "check":
        check(*sys.argv[2:8])
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
