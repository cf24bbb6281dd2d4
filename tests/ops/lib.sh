# SPDX-License-Identifier: MIT
# lib.sh: sourced by tests/ops/*.sh (reload, autoscale). Everything in
# tests/reliability/lib.sh (services.sh, TAP lines, log helpers), plus the
# versioned task library (ops_tasks.c) and ops.py.
. "$(dirname "${BASH_SOURCE[0]}")/../reliability/lib.sh"
OPS_DIR=$CELERIAC_ROOT/tests/ops

# build_ops_lib NAME [CFLAGS...]: compiles ops_tasks.c into $TEST_TMP/NAME.so
# as a user builds a library; prints the path.
build_ops_lib() {
    local name=$1 out=$TEST_TMP/$1.so
    shift
    # shellcheck disable=SC2046
    if ! cc -std=c11 -Wall -Wextra -Werror -O1 -g -fPIC -shared -I"$CELERIAC_ROOT/include" \
        "$@" $(pkg-config --cflags libpq) -o "$out" "$OPS_DIR/ops_tasks.c" \
        $(pkg-config --libs libpq) 2>"$TEST_TMP/$name-cc.log"; then
        not_ok "build the task library $name" "$(cat "$TEST_TMP/$name-cc.log")"
        return 1
    fi
    echo "$out"
}

# install_lib SRC DEST: replaces DEST as a deployment should, by rename.
install_lib() {
    cp "$1" "$2.new" && mv -f "$2.new" "$2"
}

ops() { REDIS_URL=$REDIS_URL "$PY" "$OPS_DIR/ops.py" "$@"; }

# the result value of one task ("v1", "v2"), or its status when not a success
result_of() {
    local m
    m=$(meta_of "$1" "${2:-20}")
    if [[ $(jget status <<<"$m") == SUCCESS ]]; then jget result <<<"$m"; else jget status <<<"$m"; fi
}
