# SPDX-License-Identifier: MIT
"""tap.py: TAP-like result lines for the Python halves of the test files.

ok("name"), not_ok("name", "detail", ...), check(name, cond, *detail),
eq(name, want, got) print "ok - name" / "not ok - name" (+ "#   detail"
lines); done() exits 1 if anything failed or nothing ran.
"""
import json
import sys

passed = 0
failed = 0


def _detail(lines):
    for line in lines:
        if not isinstance(line, str):
            line = json.dumps(line, default=repr)
        for part in line.splitlines() or [""]:
            print("#   " + part)


def ok(name):
    global passed
    passed += 1
    print("ok - " + name, flush=True)


def not_ok(name, *detail):
    global failed
    failed += 1
    print("not ok - " + name)
    _detail(detail)
    sys.stdout.flush()


def check(name, cond, *detail):
    if cond:
        ok(name)
    else:
        not_ok(name, *detail)
    return bool(cond)


def eq(name, want, got, *detail):
    return check(name, want == got, "expected: " + json.dumps(want, default=repr),
                 "got:      " + json.dumps(got, default=repr), *detail)


def diag(*lines):
    for line in lines:
        print("# " + str(line))
    sys.stdout.flush()


def done():
    if passed + failed == 0:
        print("not ok - no case ran")
        sys.exit(1)
    sys.exit(1 if failed else 0)
