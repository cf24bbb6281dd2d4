# SPDX-License-Identifier: MIT
"""prom.py: scrapes a Prometheus text exposition (format 0.0.4) and checks
its syntax as promtool would, for tests/ops/test_metrics.sh.

    prom.py URL check            syntax: every line is # HELP, # TYPE or a
                                 sample; each family has HELP and TYPE once,
                                 before its samples; histograms are cumulative
                                 and _count equals the +Inf bucket
    prom.py URL get METRIC [label=value ...]
                                 the sum of the matching samples' values
    prom.py URL status           the HTTP status of GET URL
"""
import re
import sys
import urllib.error
import urllib.request

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
SAMPLE = re.compile(r"^(%s)(?:\{((?:%s)(?:,%s)*)?\})? (\S+)$" % (NAME, LABEL, LABEL))
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')
TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}


def fetch(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        ctype = r.headers.get("Content-Type", "")
        return r.read().decode("utf-8"), ctype


def family_of(name, types):
    for suffix in ("_bucket", "_sum", "_count"):
        base = name[: -len(suffix)] if name.endswith(suffix) else None
        if base and types.get(base) == "histogram":
            return base
    return name


def parse(text):
    """[(name, labels dict, value)] and a list of errors."""
    errors, samples, helps, types, seen = [], [], {}, {}, set()
    if not text.endswith("\n"):
        errors.append("the exposition does not end with a newline")
    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            parts = line.split(" ", 3)
            if len(parts) < 4 or not re.fullmatch(NAME, parts[2]):
                errors.append("line %d: malformed %s" % (n, line))
                continue
            kind, fam = parts[1], parts[2]
            table = helps if kind == "HELP" else types
            if fam in table:
                errors.append("line %d: second %s for %s" % (n, kind, fam))
            if fam in seen:
                errors.append("line %d: %s after samples of %s" % (n, kind, fam))
            if kind == "TYPE" and parts[3] not in TYPES:
                errors.append("line %d: unknown type %s" % (n, parts[3]))
            table[fam] = parts[3]
            continue
        m = SAMPLE.match(line)
        if not m:
            errors.append("line %d: not a sample: %r" % (n, line))
            continue
        try:
            value = float(m.group(3))
        except ValueError:
            errors.append("line %d: bad value %r" % (n, m.group(3)))
            continue
        labels = dict(LABEL_RE.findall(m.group(2) or ""))
        fam = family_of(m.group(1), types)
        seen.add(fam)
        if fam not in helps or fam not in types:
            errors.append("line %d: %s has no HELP or TYPE before it" % (n, fam))
        samples.append((m.group(1), labels, value))
    errors += check_histograms(samples, types)
    return samples, errors


def check_histograms(samples, types):
    errors, series = [], {}
    for name, labels, value in samples:
        fam = family_of(name, types)
        if types.get(fam) != "histogram":
            continue
        key = (fam, tuple(sorted((k, v) for k, v in labels.items() if k != "le")))
        s = series.setdefault(key, {"buckets": [], "count": None})
        if name.endswith("_bucket"):
            s["buckets"].append((labels.get("le"), value))
        elif name.endswith("_count"):
            s["count"] = value
    for key, s in series.items():
        values = [v for _, v in s["buckets"]]
        if values != sorted(values):
            errors.append("%s: buckets not cumulative" % (key,))
        if not s["buckets"] or s["buckets"][-1][0] != "+Inf":
            errors.append("%s: no +Inf bucket last" % (key,))
        elif s["count"] != s["buckets"][-1][1]:
            errors.append("%s: _count %s != +Inf bucket %s" % (key, s["count"], s["buckets"][-1][1]))
    return errors


def main():
    url, cmd = sys.argv[1], sys.argv[2]
    if cmd == "status":
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                print(r.status)
        except urllib.error.HTTPError as e:
            print(e.code)
        return 0
    text, ctype = fetch(url)
    samples, errors = parse(text)
    if cmd == "check":
        if not ctype.startswith("text/plain; version=0.0.4"):
            errors.append("Content-Type %r" % ctype)
        for e in errors:
            print(e)
        return 1 if errors else 0
    want = dict(a.split("=", 1) for a in sys.argv[4:])
    total = sum(v for n, l, v in samples
                if n == sys.argv[3] and all(l.get(k) == v for k, v in want.items()))
    print(int(total) if total == int(total) else total)
    return 0


if __name__ == "__main__":
    sys.exit(main())
