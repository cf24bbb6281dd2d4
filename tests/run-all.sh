#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# run-all.sh: runs every suite `make test` promises and ends with exactly one
# line "N passed, N failed" (non-zero exit if anything failed).
#
#   unit         $BUILD/tests/test_*          (one binary = one file)
#   integration  tests/integration/test_*.sh  (real worker, Redis, PostgreSQL)
#   interop      tests/interop/test_*.sh|py   (Debian's Python Celery against celeriac)
#   other        tests/<suite>/test_*.sh|py   (every other folder but unit and fuzz)
#
# Each file runs as its own process under a timeout. Files print TAP-like
# "ok - name" / "not ok - name" lines and each such line is one case; a unit
# binary without them counts through its "N passed, N failed" line, or as one
# case by its exit status. A file that exits non-zero without reporting a
# failed case counts one failed case more, so a crash never passes.
#
# Environment: TEST_FILTER=substring (of the file path) runs a subset;
# BUILD=dir (default build) where the binaries are; TEST_TIMEOUT=seconds per
# file (default 300); TEST_VERBOSE=0 shows only failures' output.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
BUILD=${BUILD:-build}
export BUILD
FILTER=${TEST_FILTER:-}
TIMEOUT=${TEST_TIMEOUT:-300}
VERBOSE=${TEST_VERBOSE:-1}
# Most files spend their time waiting on a worker, so two run side by side by
# default (on two cores or more); TEST_JOBS=1 runs them one at a time.
JOBS=${TEST_JOBS:-$(($(nproc) >= 2 ? 2 : 1))}

RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/celeriac-run.XXXXXX")
trap 'rm -rf "$RUN_DIR"' EXIT

passed=0
failed=0
failed_names=()

files=()
for f in "$BUILD"/tests/test_*; do
    [[ -f $f && -x $f ]] && files+=("$f")
done
# integration and interop first, then any other suite folder (reliability, ...)
for d in tests/integration tests/interop tests/*/; do
    d=${d%/}
    case "$d" in tests/unit | tests/fuzz) continue ;; esac
    for f in "$d"/test_*.sh "$d"/test_*.py; do
        [[ -f $f ]] || continue
        [[ " ${files[*]} " == *" $f "* ]] && continue
        files+=("$f")
    done
done

# Stops what a killed test file left behind: the pids services.sh recorded,
# only while they still are the processes it started.
reap_leftovers() { # pidsfile
    local pid kind cmd
    [[ -f $1 ]] || return 0
    while read -r pid kind; do
        [[ -n $pid && -r /proc/$pid/cmdline ]] || continue
        cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)
        case "$kind" in
        redis) [[ $cmd == *redis-server* ]] || continue ;;
        postgres) [[ $cmd == *postgres* ]] || continue ;;
        worker) [[ $cmd == *celeriac* ]] || continue ;;
        *) [[ $cmd == *"$kind"* ]] || continue ;;
        esac
        echo "  (stopping leftover $kind pid $pid)"
        if [[ $kind == postgres ]]; then kill -QUIT "$pid"; else kill -KILL "$pid"; fi 2>/dev/null
    done <"$1"
}

# run_file IDX FILE: runs one file under its timeout, in the background when
# files run side by side. Leaves its output in $RUN_DIR/IDX.out and
# "STATUS SECONDS" in $RUN_DIR/IDX.done. With one job and TEST_VERBOSE=1 the
# output also streams as it comes.
run_file() {
    local idx=$1 f=$2 out=$RUN_DIR/$1.out pids=$RUN_DIR/$1.pids rc
    local -a cmd
    case "$f" in
    *.sh) cmd=(bash "$f") ;;
    *.py) cmd=(/usr/bin/python3 "$f") ;;
    *) cmd=("$f") ;;
    esac
    : >"$pids"
    local t0=$SECONDS
    if ((VERBOSE && JOBS == 1)); then
        echo "== $f"
        CELERIAC_PIDS_FILE=$pids timeout -k 15 "$TIMEOUT" "${cmd[@]}" </dev/null 2>&1 |
            tee "$out" | sed -u 's/^/    /'
        rc=${PIPESTATUS[0]}
    else
        CELERIAC_PIDS_FILE=$pids timeout -k 15 "$TIMEOUT" "${cmd[@]}" </dev/null >"$out" 2>&1
        rc=$?
    fi
    reap_leftovers "$pids" >>"$out"
    echo "$rc $((SECONDS - t0))" >"$RUN_DIR/$idx.done"
}

# tally_file IDX FILE: counts a finished file's cases (in this shell, so the
# totals add up) and prints its output unless it already streamed.
tally_file() {
    local idx=$1 f=$2 out=$RUN_DIR/$1.out rc secs
    read -r rc secs <"$RUN_DIR/$idx.done"
    local p f_failed names
    p=$(grep -cE '^ok( [0-9]+)? - ' "$out")
    f_failed=$(grep -cE '^not ok( [0-9]+)? - ' "$out")
    if ((p + f_failed == 0)); then
        # No TAP lines: a unit binary's own "N passed, N failed" line, or its exit status.
        local line
        line=$(grep -E '^[[:space:]]*([A-Za-z]+: )?[0-9]+ passed, [0-9]+ failed' "$out" | tail -1)
        if [[ -n $line ]]; then
            p=$(sed -E 's/^[^0-9]*([0-9]+) passed.*/\1/' <<<"$line")
            f_failed=$(sed -E 's/.* ([0-9]+) failed.*/\1/' <<<"$line")
        elif ((rc == 0)); then
            p=1
        fi
    fi
    while IFS= read -r names; do
        failed_names+=("$f: ${names#*- }")
    done < <(grep -E '^not ok( [0-9]+)? - ' "$out")
    if ((rc != 0 && f_failed == 0)); then
        f_failed=1
        if ((rc == 124 || rc == 137)); then
            failed_names+=("$f: timed out after ${TIMEOUT}s")
        else
            failed_names+=("$f: exited with status $rc")
        fi
    fi
    if ((JOBS > 1 || !VERBOSE)); then
        ((JOBS > 1)) && echo "== $f"
        if ((VERBOSE || f_failed > 0)); then
            sed 's/^/    /' "$out"
        fi
    fi
    echo "   $f: $p ok, $f_failed not ok, exit $rc, ${secs}s"
    passed=$((passed + p))
    failed=$((failed + f_failed))
}

# A file whose checks time things to the second or load both cores says so
# with a line "# run-all: alone"; it runs with no other file beside it.
runs_alone() { # file
    [[ $1 == *.sh || $1 == *.py ]] && grep -q '^# run-all: alone' "$1"
}

declare -A running=() # idx -> file
collect_finished() {
    local idx
    for idx in "${!running[@]}"; do
        if [[ -f $RUN_DIR/$idx.done ]]; then
            wait "${running_pid[$idx]}" 2>/dev/null
            tally_file "$idx" "${running[$idx]}"
            unset "running[$idx]" "running_pid[$idx]"
        fi
    done
}
declare -A running_pid=()
wait_for_slots() { # how many may still run
    while collect_finished; ((${#running[@]} > $1)); do
        # a file's .done may land just after its job was reaped: then poll
        wait -n 2>/dev/null || sleep 0.2
    done
}

ran=0
for f in "${files[@]}"; do
    if [[ -n $FILTER && $f != *"$FILTER"* ]]; then
        continue
    fi
    ran=$((ran + 1))
    alone=0
    runs_alone "$f" && alone=1
    if ((alone)); then wait_for_slots 0; else wait_for_slots $((JOBS - 1)); fi
    run_file "$ran" "$f" &
    running[$ran]=$f
    running_pid[$ran]=$!
    if ((alone)); then wait_for_slots 0; fi
done
wait_for_slots 0

if ((ran == 0)); then
    echo "no test file matched${FILTER:+ TEST_FILTER='$FILTER'}"
    failed=$((failed + 1))
fi
if ((${#failed_names[@]})); then
    echo "failed:"
    printf '  %s\n' "${failed_names[@]}"
fi
echo "$passed passed, $failed failed"
((failed == 0))
