# SPDX-License-Identifier: MIT
# chaos_duplicates.py: what the chaos classifiers of chaos_amqp.sh and
# chaos_sql.sh share. A duplicate (a task that succeeded more than once) is
# put down to what its slot logged next after each earlier success: its
# death (a kill before the ack), its broker connection lost (the restart),
# or anything else (unexplained).
import collections


def duplicate_causes(events, ok, detail_path):
    """events: slot -> [(line no, kind, task id, text)] in log order, kind one
    of "ok", "death", "broker", "other"; ok: task id -> successes. Returns a
    Counter of "kill", "restart", "other"; writes, for every duplicate not put
    down to a kill, the line its slot logged next to detail_path."""
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
