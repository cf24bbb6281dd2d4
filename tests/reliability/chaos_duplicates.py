# SPDX-License-Identifier: MIT
# chaos_duplicates.py: the chaos classifier chaos_amqp.sh and chaos_sql.sh
# share. It reads the worker log: a successful run per "succeeded" line; a
# duplicate (a task that succeeded more than once) is put down to what its
# slot (ForkPoolWorker-N = child N-1) logged next after each earlier
# success: its death (a kill before the ack), its broker connection lost
# (the restart), or anything else (unexplained).
#
#   chaos_duplicates.py LOG DETAIL --lost REGEX [--ignore REGEX] [--count NAME=REGEX]...
#
# prints one line: each --count's total in order (a REGEX with a group adds
# the group's number, one without adds 1 per line), then the tasks run more
# than once, their extra runs, and those put down to "kill", "restart" and
# "other". DETAIL gets, for every duplicate not put down to a kill, the line
# its slot logged next. --lost names the lines of a lost broker connection;
# --ignore, child lines that are not an event at all.
import argparse
import collections
import re

LINE_RE = re.compile(r"^\[[^\]]*: \w+/(\S+)\] (.*)$")
OK_RE = re.compile(r"Task [^\[]+\[([0-9a-f-]+)\] succeeded in")
DEATH_RE = re.compile(r"^child (\d+) \(pid \d+\) (killed by signal|exited)")


def scan(path, lost, ignore, counted):
    """events: slot -> [(line no, kind, task id, text)] in log order, kind one
    of "ok", "death", "broker", "other"; ok: task id -> successes; counts:
    name -> total of each counted pattern."""
    events = collections.defaultdict(list)
    ok = collections.Counter()
    counts = {name: 0 for name, _ in counted}
    with open(path, errors="replace") as log:
        for no, line in enumerate(log):
            m = LINE_RE.match(line)
            if not m:
                continue
            who, text = m.groups()
            if who == "MainProcess":
                d = DEATH_RE.match(text)
                if d:
                    events[int(d.group(1))].append((no, "death", None, text))
                continue
            if not who.startswith("ForkPoolWorker-") or "already holds a SUCCESS" in text:
                continue
            slot = int(who.split("-")[1]) - 1
            t = OK_RE.search(text)
            if t:
                ok[t.group(1)] += 1
                events[slot].append((no, "ok", t.group(1), text))
            elif lost.search(text):
                events[slot].append((no, "broker", None, text))
            elif not (ignore and ignore.search(text)):
                events[slot].append((no, "other", None, text))
            for name, pattern in counted:
                c = pattern.search(text)
                if c:
                    counts[name] += int(c.group(1)) if pattern.groups else 1
    return events, ok, counts


def duplicate_causes(events, ok, detail_path):
    """A Counter of "kill", "restart", "other" over the extra runs; writes,
    for every duplicate not put down to a kill, the line its slot logged
    next to detail_path."""
    runs = collections.defaultdict(list)  # task id -> [(line no, its slot's next event)]
    for evs in events.values():
        for i, (no, kind, tid, _) in enumerate(evs):
            if kind == "ok" and ok[tid] > 1:
                runs[tid].append((no, evs[i + 1] if i + 1 < len(evs) else (None, "end", None, "")))
    why = collections.Counter()
    with open(detail_path, "w") as detail:
        for tid, rs in runs.items():
            for no, nxt in sorted(rs)[:-1]:  # the last success is the one acked
                cause = "kill" if nxt[1] == "death" else "restart" if nxt[1] == "broker" else "other"
                why[cause] += 1
                if cause != "kill":
                    print(f"{cause}: {tid} succeeded at log line {no + 1}; its slot next logged, "
                          f"at line {nxt[0] + 1 if nxt[0] is not None else '-'}: {nxt[3][:160]}",
                          file=detail)
    return why


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("log")
    ap.add_argument("detail")
    ap.add_argument("--lost", required=True)
    ap.add_argument("--ignore")
    ap.add_argument("--count", action="append", default=[])
    a = ap.parse_args()
    counted = [(name, re.compile(rx)) for name, rx in (c.split("=", 1) for c in a.count)]
    events, ok, counts = scan(a.log, re.compile(a.lost), a.ignore and re.compile(a.ignore),
                              counted)
    why = duplicate_causes(events, ok, a.detail)
    dups = {t: n - 1 for t, n in ok.items() if n > 1}
    print(*counts.values(), len(dups), sum(dups.values()), why["kill"], why["restart"],
          why["other"])


if __name__ == "__main__":
    main()
