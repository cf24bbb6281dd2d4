#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_deb.sh: `make deb` builds a .deb (debhelper, in a copy of the tree,
# into $TEST_TMP) that holds the binary, headers, client libraries (the core
# without libpq or sqlite3, and its SQL part), .pc files,
# man pages, the systemd unit (not enabled) and /etc/default/celeriac, and
# creates the celeriac user in postinst. Unpacked into a throwaway root (never
# installed on this machine), its binary runs as the unit would, ExecStart
# with the /etc/default environment, and runs a task on a throwaway Redis.
. "$(dirname "$0")/../integration/services.sh"
unset MAKEFLAGS MFLAGS MAKELEVEL # the package is built as from a shell

DEBB=$TEST_TMP/debbuild
ROOT=$TEST_TMP/root
t0=$SECONDS
if ! out=$(make -C "$CELERIAC_ROOT" --no-print-directory -s BUILD="$DEBB" deb 2>&1); then
    not_ok "make deb" "$out"
    tap_done
fi
deb=$(ls "$DEBB"/celeriac_*.deb 2>/dev/null | head -1)
if [[ -f $deb ]]; then
    ok "make deb builds $(basename "$deb") ($((SECONDS - t0)) s)"
else
    not_ok "make deb builds a .deb" "$out"
    tap_done
fi

contents=$(dpkg-deb -c "$deb" | awk '{print $6}' | sed 's|^\./|/|')
missing=()
for f in /usr/bin/celeriac /usr/include/celeriac.h /usr/include/celeriac_client.h \
    /usr/lib/x86_64-linux-gnu/libceleriac-client.a /usr/lib/x86_64-linux-gnu/libceleriac-client.so.0.1.0 \
    /usr/lib/x86_64-linux-gnu/libceleriac-client.so /usr/lib/x86_64-linux-gnu/pkgconfig/celeriac.pc \
    /usr/lib/x86_64-linux-gnu/libceleriac-client-sql.a \
    /usr/lib/x86_64-linux-gnu/libceleriac-client-sql.so.0.1.0 \
    /usr/lib/x86_64-linux-gnu/libceleriac-client-sql.so \
    /usr/lib/x86_64-linux-gnu/pkgconfig/celeriac-client-sql.pc \
    /usr/lib/x86_64-linux-gnu/pkgconfig/celeriac-client.pc /usr/share/man/man1/celeriac.1.gz \
    /usr/share/man/man7/celeriac-tasks.7.gz /etc/default/celeriac /lib/systemd/system/celeriac.service; do
    [[ $f == *x86_64-linux-gnu* ]] && f=${f//x86_64-linux-gnu/$(dpkg-architecture -qDEB_HOST_MULTIARCH)}
    grep -qxF "$f" <<<"$contents" || missing+=("$f")
done
expect_eq "dpkg-deb -c: binary, headers, client libraries, .pc, man pages, unit, /etc/default" \
    "" "${missing[*]}" "$contents"
version=$(dpkg-deb -f "$deb" Version)
expect_eq "the package version is the binary's" "$version" \
    "$(sed -n 's/^#define CELERIAC_VERSION "\(.*\)"/\1/p' "$CELERIAC_ROOT/include/celeriac.h")"
scripts=$TEST_TMP/control
dpkg-deb -e "$deb" "$scripts"
# dh_installsystemd --no-enable guards its enable with "debian-installed" (only
# an operator's earlier enable is kept); --no-start emits no start.
if grep -q 'adduser --system' "$scripts/postinst" && grep -q ' celeriac$' "$scripts/postinst" &&
    grep -q "debian-installed 'celeriac.service'" "$scripts/postinst" &&
    ! grep -qE 'deb-systemd-invoke|systemctl' "$scripts/postinst"; then
    ok "postinst creates the celeriac system user and neither enables nor starts the unit"
else
    not_ok "postinst creates the celeriac system user and neither enables nor starts the unit" \
        "$(cat "$scripts/postinst")"
fi
grep -qx '/etc/default/celeriac' "$scripts/conffiles" 2>/dev/null &&
    ok "/etc/default/celeriac is a conffile" ||
    not_ok "/etc/default/celeriac is a conffile" "$(cat "$scripts/conffiles" 2>&1)"

# ---- run it as the unit would, from a throwaway root --------------------------------
dpkg-deb -x "$deb" "$ROOT"
unit=$ROOT/lib/systemd/system/celeriac.service
exec_start=$(sed -n 's/^ExecStart=//p' "$unit" | head -1)
envfile=$(sed -n 's/^EnvironmentFile=-\{0,1\}//p' "$unit" | head -1)
expect_eq "the unit reads /etc/default/celeriac and runs /usr/bin/celeriac worker" \
    "/etc/default/celeriac /usr/bin/celeriac worker" "$envfile ${exec_start%% \$*}"

# a task library built against the package's headers with pkg-config alone
LIBDIR_REL=$(dpkg-architecture -qDEB_HOST_MULTIARCH)
core_needed=$(readelf -d "$ROOT/usr/lib/$LIBDIR_REL/libceleriac-client.so.0.1.0" 2>/dev/null |
    sed -n 's/.*NEEDED.*\[\(.*\)\]/\1/p' | tr '\n' ' ')
if [[ $core_needed == *libhiredis* && $core_needed != *libpq* && $core_needed != *libsqlite3* ]]; then
    ok "the packaged libceleriac-client.so needs neither libpq nor libsqlite3"
else
    not_ok "the packaged libceleriac-client.so needs neither libpq nor libsqlite3" "NEEDED: $core_needed"
fi
TASKLIB=$TEST_TMP/libops.so
# shellcheck disable=SC2046
check "a task library builds against the package with pkg-config alone" \
    cc -std=c11 -Wall -Wextra -Werror -fPIC -shared -o "$TASKLIB" "$CELERIAC_ROOT/tests/ops/install_tasks.c" \
    $(PKG_CONFIG_PATH=$ROOT/usr/lib/$LIBDIR_REL/pkgconfig PKG_CONFIG_SYSROOT_DIR=$ROOT \
        pkg-config --cflags --libs celeriac)

start_redis
# the operator's settings, in the package's /etc/default/celeriac
{
    echo "CELERIAC_APP=$TASKLIB"
    echo "CELERIAC_BROKER_URL=$REDIS_URL"
    echo "CELERIAC_RESULT_BACKEND=$REDIS_URL"
    echo "CELERIAC_CONCURRENCY=2"
    echo "CELERIAC_OPTS=-n deb@localhost --without-heartbeat"
} >>"$ROOT$envfile"
# systemd's EnvironmentFile: KEY=value lines, the last one wins; $VAR in
# ExecStart is split into words.
env_args=()
while IFS= read -r line; do
    [[ $line =~ ^[A-Z_][A-Z0-9_]*= ]] && env_args+=("$line")
done <"$ROOT$envfile"
opts=$(env -i "${env_args[@]}" sh -c 'printf %s "$CELERIAC_OPTS"')
read -r -a argv <<<"${exec_start//\$CELERIAC_OPTS/$opts}"
argv[0]=$ROOT${argv[0]}
WORKER_LOG=$TEST_TMP/worker-deb.log
WORKER_LOGS+=("$WORKER_LOG")
env -i PATH=/usr/bin:/bin "${env_args[@]}" "${argv[@]}" </dev/null >"$WORKER_LOG" 2>&1 &
WORKER_PID=$!
_svc_record_pid "$WORKER_PID" worker
if wait_children 2 20; then
    ok "ExecStart with the /etc/default environment starts 2 children"
else
    not_ok "ExecStart with the /etc/default environment starts 2 children" "$(worker_log_tail)"
fi
expect_eq "the packaged celeriac call --wait: ops.add 20 22 -> 42" "42" \
    "$("$ROOT/usr/bin/celeriac" call ops.add 20 22 --wait -b "$REDIS_URL" --result-backend "$REDIS_URL" 2>&1)" \
    "$(worker_log_tail)"
stop_worker TERM 30
expect_eq "the packaged worker exits 0 on SIGTERM" 0 "$WORKER_RC" "$(worker_log_tail)"
tap_done
