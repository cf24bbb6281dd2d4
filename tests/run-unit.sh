#!/bin/sh
# SPDX-License-Identifier: MIT
# run-unit.sh: runs unit-test binaries (tests/unit/harness.h) and totals their
# "ok -" / "not ok -" lines, ending with "N passed, N failed".
#
# Usage: tests/run-unit.sh build/tests/test_*
# Environment:
#   TEST_PREFIX   command prefixed to every binary, e.g.
#                 "valgrind --error-exitcode=99 --leak-check=full --log-file=build/vg.%p"
#   UNIT_TIMEOUT  seconds each binary may run (default 60)
#   UNIT_QUIET=1  print only failures, diagnostics and the totals
# A binary that exits non-zero, times out or dies without reporting a failed
# case counts as one extra failure, so a crash or sanitizer report is never lost.
set -u

timeout_s=${UNIT_TIMEOUT:-60}
prefix=${TEST_PREFIX:-}
quiet=${UNIT_QUIET:-0}
passed=0
failed=0

if [ $# -eq 0 ]; then
    echo "usage: $0 test-binary..." >&2
    exit 2
fi

out=$(mktemp "${TMPDIR:-/tmp}/celeriac-unit.XXXXXX") || exit 2
trap 'rm -f "$out"' EXIT INT TERM

for bin in "$@"; do
    name=$(basename "$bin")
    if [ ! -x "$bin" ]; then
        echo "not ok - $name: not built"
        failed=$((failed + 1))
        continue
    fi
    # shellcheck disable=SC2086 # TEST_PREFIX is a command line to split
    timeout -k 5 "$timeout_s" $prefix "$bin" >"$out" 2>&1
    rc=$?
    if [ "$quiet" = 1 ]; then
        grep -v '^ok - ' "$out" | grep -v '^# .*: [0-9]* passed, [0-9]* failed$'
    else
        cat "$out"
    fi
    p=$(grep -c '^ok - ' "$out")
    f=$(grep -c '^not ok - ' "$out")
    passed=$((passed + p))
    failed=$((failed + f))
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        case $rc in
        124) why="timed out after ${timeout_s}s" ;;
        137) why="killed after timeout" ;;
        *) if [ "$rc" -gt 128 ]; then why="killed by signal $((rc - 128))"; else why="exit status $rc"; fi ;;
        esac
        echo "not ok - $name: $why"
        failed=$((failed + 1))
    elif [ "$rc" -eq 0 ] && [ "$f" -ne 0 ]; then
        echo "not ok - $name: reported failures but exited 0"
        failed=$((failed + 1))
    elif [ "$rc" -eq 0 ] && [ "$p" -eq 0 ]; then
        echo "not ok - $name: ran no test case"
        failed=$((failed + 1))
    fi
done

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
