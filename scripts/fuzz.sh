#!/bin/sh
# SPDX-License-Identifier: MIT
# fuzz.sh: builds tests/fuzz/fuzz_message.c with libFuzzer, ASan and UBSan
# (clang), then fuzzes the message decoder for a bounded time starting from
# tests/fuzz/corpus. Exits non-zero on a crash, leak, sanitizer report or
# broken contract; the input that did it is saved under build/fuzz/.
#
# Usage: scripts/fuzz.sh               fuzz for FUZZ_SECONDS (default 60)
#        scripts/fuzz.sh FILE...       run the target once on each FILE (reproduce)
# Environment: CLANG (default clang, else clang-14), FUZZ_SECONDS, FUZZ_MAX_LEN
# (default 65536), FUZZ_BUILD (default build/fuzz), FUZZ_FLAGS (extra libFuzzer flags).
set -eu

cd "$(dirname "$0")/.."

out=${FUZZ_BUILD:-build/fuzz}
seconds=${FUZZ_SECONDS:-60}
max_len=${FUZZ_MAX_LEN:-65536}

if [ -n "${CLANG:-}" ]; then
    cc=$CLANG
elif command -v clang >/dev/null 2>&1; then
    cc=clang
elif command -v clang-14 >/dev/null 2>&1; then
    cc=clang-14
else
    echo "fuzz.sh: clang not found (apt-get install clang libclang-rt-14-dev)" >&2
    exit 2
fi

# The libraries the Makefile links (PKGS): src/util links rabbitmq-c too.
pkgs=$(sed -n 's/^PKGS *:= *//p' Makefile)
if ! pkg_cflags=$(pkg-config --cflags $pkgs) || ! pkg_libs=$(pkg-config --libs $pkgs); then
    echo "fuzz.sh: pkg-config cannot find $pkgs (run make deps)" >&2
    exit 2
fi

# The decoder and the utilities it uses; nothing that opens a connection runs.
srcs="tests/fuzz/fuzz_message.c $(ls src/protocol/*.c src/util/*.c)"

mkdir -p "$out/corpus"
bin=$out/fuzz_message
echo "fuzz.sh: building $bin with $cc"
# shellcheck disable=SC2086 # flag lists are meant to split
"$cc" -std=c11 -g -O1 -fno-omit-frame-pointer \
    -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
    -Wall -Wextra -Werror -Wno-unused-command-line-argument \
    -Isrc -Iinclude $pkg_cflags -o "$bin" $srcs $pkg_libs -ldl -lm

export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:detect_stack_use_after_return=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"

if [ $# -gt 0 ]; then
    exec "$bin" -runs=1 "$@"
fi

dict=
[ -f tests/fuzz/message.dict ] && dict=-dict=tests/fuzz/message.dict

echo "fuzz.sh: fuzzing for ${seconds}s (new inputs in $out/corpus)"
# New inputs go to the scratch corpus (first directory); the seeds are read only.
status=0
# shellcheck disable=SC2086
"$bin" -max_total_time="$seconds" -max_len="$max_len" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$out/" $dict ${FUZZ_FLAGS:-} \
    "$out/corpus" tests/fuzz/corpus || status=$?
echo "fuzz.sh: fuzz_message exited $status"
exit $status
