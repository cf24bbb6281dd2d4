#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_cli.sh: the command line. --help/--version exit 0; every bad flag, URL
# or library exits 2 with exactly one line on stderr saying what is wrong, and
# never echoes a password. No service is needed: configuration is checked
# before anything is contacted (the broker URL points at a closed port).
. "$(dirname "$0")/services.sh"

CLOSED=$(free_port)
NOBROKER="redis://127.0.0.1:$CLOSED/0"
VERSION=$(sed -n 's/^#define CELERIAC_VERSION "\(.*\)"/\1/p' "$CELERIAC_ROOT/include/celeriac.h")

if [[ ! -x $CELERIAC_BIN ]]; then
    not_ok "celeriac binary exists" "missing: $CELERIAC_BIN (run make)"
    tap_done
fi

# run_cli OUT_PREFIX ARGS...: runs the binary with a 20 s limit; stdout, stderr
# and exit status land in $OUT_PREFIX.{out,err,rc}. CLI_ENV: extra VAR=value.
CLI_ENV=()
run_cli() {
    local p=$1
    shift
    env "${CLI_ENV[@]}" timeout -k 5 20 "$CELERIAC_BIN" "$@" </dev/null >"$p.out" 2>"$p.err"
    echo $? >"$p.rc"
}

# usage_error NAME WANT_IN_MESSAGE ARGS...: exit 2, one line on stderr that
# contains WANT_IN_MESSAGE (case-insensitive; empty = anything).
usage_error() {
    local name=$1 want=$2
    shift 2
    local p=$TEST_TMP/case-$RANDOM
    run_cli "$p" "$@"
    local rc lines
    rc=$(cat "$p.rc")
    lines=$(grep -c '' "$p.err")
    local detail=("command: celeriac $*" "exit: $rc" "stderr ($lines lines):" "$(head -20 "$p.err")")
    if [[ $rc != 2 ]]; then
        not_ok "$name: exit 2" "${detail[@]}"
    elif [[ $lines != 1 || ! -s $p.err ]]; then
        not_ok "$name: exactly one line on stderr" "${detail[@]}"
    elif [[ -n $want ]] && ! grep -qiF -- "$want" "$p.err"; then
        not_ok "$name: message names '$want'" "${detail[@]}"
    else
        ok "$name: exit 2 with one line ($(head -c 120 "$p.err"))"
    fi
}

# ---- help and version ----
p=$TEST_TMP/help
run_cli "$p" --help
if [[ $(cat "$p.rc") == 0 ]] && grep -qi worker "$p.out" "$p.err"; then
    ok "--help exits 0 and mentions the worker subcommand"
else
    not_ok "--help exits 0 and mentions the worker subcommand" "exit $(cat "$p.rc")" "$(head -5 "$p.out" "$p.err")"
fi

run_cli "$p" worker --help
if [[ $(cat "$p.rc") == 0 ]] && grep -q -- '--db' "$p.out" "$p.err" && grep -q -- '-A' "$p.out" "$p.err"; then
    ok "worker --help exits 0 and lists -A and --db"
else
    not_ok "worker --help exits 0 and lists -A and --db" "exit $(cat "$p.rc")" "$(head -5 "$p.out" "$p.err")"
fi

run_cli "$p" --version
if [[ $(cat "$p.rc") == 0 ]] && grep -qF "$VERSION" "$p.out" "$p.err"; then
    ok "--version exits 0 and prints $VERSION"
else
    not_ok "--version exits 0 and prints $VERSION" "exit $(cat "$p.rc")" "$(head -5 "$p.out" "$p.err")"
fi

# ---- bad flags and values ----
usage_error "unknown flag" "--no-such-flag" worker -A "$BOOKS_LIB" -b "$NOBROKER" --no-such-flag
usage_error "unknown subcommand" "frobnicate" frobnicate
usage_error "missing -A" "" worker -b "$NOBROKER"
usage_error "-c not a number" "abc" worker -A "$BOOKS_LIB" -b "$NOBROKER" -c abc
usage_error "-c negative" "" worker -A "$BOOKS_LIB" -b "$NOBROKER" -c -1
usage_error "bad log level" "nope" worker -A "$BOOKS_LIB" -b "$NOBROKER" -l nope
usage_error "flag missing its value" "" worker -A "$BOOKS_LIB" -b

# ---- bad URLs ----
usage_error "bad broker URL scheme" "foo" worker -A "$BOOKS_LIB" -b foo://x
usage_error "bad broker port" "" worker -A "$BOOKS_LIB" -b redis://127.0.0.1:notaport/0
usage_error "bad broker db number" "" worker -A "$BOOKS_LIB" -b redis://127.0.0.1:6379/abc
usage_error "bad result backend URL" "foo" worker -A "$BOOKS_LIB" -b "$NOBROKER" --result-backend foo://x
usage_error "bad --db URL scheme" "foo" worker -A "$BOOKS_LIB" -b "$NOBROKER" --db foo://x
usage_error "empty sqlite path" "" worker -A "$BOOKS_LIB" -b "$NOBROKER" --db sqlite://
CLI_ENV=(CELERIAC_BROKER_URL=foo://x)
usage_error "bad broker URL from CELERIAC_BROKER_URL" "foo" worker -A "$BOOKS_LIB"
CLI_ENV=(CELERIAC_BROKER_URL="$NOBROKER" CELERIAC_DB_URL=foo://y)
usage_error "bad database URL from CELERIAC_DB_URL" "foo" worker -A "$BOOKS_LIB"
CLI_ENV=(CELERIAC_BROKER_URL="$NOBROKER" CELERIAC_RESULT_BACKEND=foo://z)
usage_error "bad result backend URL from CELERIAC_RESULT_BACKEND" "foo" worker -A "$BOOKS_LIB"
CLI_ENV=()

# ---- bad libraries ----
usage_error "-A nonexistent library" "/nonexistent.so" worker -A /nonexistent.so -b "$NOBROKER"
usage_error "-A /etc/passwd (not a shared object)" "/etc/passwd" worker -A /etc/passwd -b "$NOBROKER"

# A shared object without celeriac_library_init, and one built for another ABI.
cat >"$TEST_TMP/noinit.c" <<'EOF'
int not_a_task_library(void) { return 1; }
EOF
cat >"$TEST_TMP/badabi.c" <<'EOF'
#include <celeriac.h>
static const struct celeriac_task_def tasks[] = {{ "x.y", 0, 0 }, { 0, 0, 0 }};
static const struct celeriac_library lib = { .abi_version = 999, .name = "badabi", .tasks = tasks };
const struct celeriac_library *celeriac_library_init(int host_abi) { (void)host_abi; return &lib; }
EOF
if cc -fPIC -shared -o "$TEST_TMP/noinit.so" "$TEST_TMP/noinit.c" 2>"$TEST_TMP/cc.err" &&
    cc -fPIC -shared -I"$CELERIAC_ROOT/include" -o "$TEST_TMP/badabi.so" "$TEST_TMP/badabi.c" 2>>"$TEST_TMP/cc.err"; then
    usage_error "library without celeriac_library_init" "celeriac_library_init" \
        worker -A "$TEST_TMP/noinit.so" -b "$NOBROKER"
    usage_error "library built for ABI 999" "999" worker -A "$TEST_TMP/badabi.so" -b "$NOBROKER"
else
    not_ok "compile the test libraries" "$(cat "$TEST_TMP/cc.err")"
fi

# ---- passwords never echoed ----
p=$TEST_TMP/pw
run_cli "$p" worker -A "$BOOKS_LIB" -b "redis://:Sup3rS3cretBroker@127.0.0.1:notaport/0"
if grep -q Sup3rS3cretBroker "$p.out" "$p.err"; then
    not_ok "a bad broker URL's error hides its password" "$(cat "$p.err")"
else
    ok "a bad broker URL's error hides its password (exit $(cat "$p.rc"))"
fi
run_cli "$p" worker -A "$BOOKS_LIB" -b "$NOBROKER" --db "foo://user:Sup3rS3cretDb@host/x"
if grep -q Sup3rS3cretDb "$p.out" "$p.err"; then
    not_ok "a bad --db URL's error hides its password" "$(cat "$p.err")"
else
    ok "a bad --db URL's error hides its password (exit $(cat "$p.rc"))"
fi

tap_done
