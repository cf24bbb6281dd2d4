#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_install.sh: `make install DESTDIR=... PREFIX=/usr` writes the expected
# files; a task library and a sender build against that install with nothing
# but pkg-config (PKG_CONFIG_PATH and PKG_CONFIG_SYSROOT_DIR into DESTDIR);
# the installed worker runs the task library's tasks on a throwaway Redis,
# sent by the installed client library (shared and static); the core client
# (celeriac-client) needs neither libpq nor sqlite3, and a sqla+ broker
# without the SQL part fails naming celeriac-client-sql; an outbox program
# built with celeriac-client-sql alone enqueues into a sqla+sqlite broker in
# its own transaction (and a sender sends there), which the installed worker
# runs; both man pages
# render without warnings and name every command and flag of --help;
# `make uninstall` removes every file; an unwritable DESTDIR fails in one line.
. "$(dirname "$0")/../integration/services.sh"

DEST=$TEST_TMP/dest
OPS_DIR=$CELERIAC_ROOT/tests/ops
run_make() { make -C "$CELERIAC_ROOT" --no-print-directory -s BUILD="$BUILD" "$@"; }

# ---- install ------------------------------------------------------------------
if ! out=$(run_make install DESTDIR="$DEST" PREFIX=/usr 2>&1); then
    not_ok "make install DESTDIR=\$TMP PREFIX=/usr" "$out"
    tap_done
fi
ok "make install DESTDIR=\$TMP PREFIX=/usr"

want="./usr/bin/celeriac
./usr/include/celeriac.h
./usr/include/celeriac_client.h
./usr/lib/libceleriac-client-sql.a
./usr/lib/libceleriac-client-sql.so
./usr/lib/libceleriac-client-sql.so.0
./usr/lib/libceleriac-client-sql.so.0.1.0
./usr/lib/libceleriac-client.a
./usr/lib/libceleriac-client.so
./usr/lib/libceleriac-client.so.0
./usr/lib/libceleriac-client.so.0.1.0
./usr/lib/pkgconfig/celeriac-client-sql.pc
./usr/lib/pkgconfig/celeriac-client.pc
./usr/lib/pkgconfig/celeriac.pc
./usr/share/man/man1/celeriac.1
./usr/share/man/man7/celeriac-tasks.7"
expect_eq "install writes the binary, headers, client libraries, .pc files, man pages" \
    "$want" "$(cd "$DEST" && find . \( -type f -o -type l \) | LC_ALL=C sort)"
expect_eq "the client .so: soname libceleriac-client.so.0, exports only celeriac_*" \
    "libceleriac-client.so.0 0" \
    "$(readelf -d "$DEST/usr/lib/libceleriac-client.so.0.1.0" | sed -n 's/.*soname: \[\(.*\)\]/\1/p') $(
        nm -D --defined-only "$DEST/usr/lib/libceleriac-client.so.0.1.0" | awk '$3 !~ /^celeriac_/' | wc -l)"
expect_eq "the client SQL .so: soname libceleriac-client-sql.so.0, exports only celeriac_*" \
    "libceleriac-client-sql.so.0 0" \
    "$(readelf -d "$DEST/usr/lib/libceleriac-client-sql.so.0.1.0" | sed -n 's/.*soname: \[\(.*\)\]/\1/p') $(
        nm -D --defined-only "$DEST/usr/lib/libceleriac-client-sql.so.0.1.0" | awk '$3 !~ /^celeriac_/' | wc -l)"
core_needed=$(readelf -d "$DEST/usr/lib/libceleriac-client.so.0.1.0" | sed -n 's/.*NEEDED.*\[\(.*\)\]/\1/p' | tr '\n' ' ')
if [[ $core_needed == *libhiredis* && $core_needed != *libpq* && $core_needed != *libsqlite3* ]]; then
    ok "the core client .so has no DT_NEEDED on libpq or libsqlite3"
else
    not_ok "the core client .so has no DT_NEEDED on libpq or libsqlite3" "NEEDED: $core_needed"
fi
expect_eq "the core client archive refers to no libpq or sqlite3 symbol" "" \
    "$(nm -u "$DEST/usr/lib/libceleriac-client.a" | grep -E ' (PQ|sqlite3_)')"
sql_needed=$(readelf -d "$DEST/usr/lib/libceleriac-client-sql.so.0.1.0" | sed -n 's/.*NEEDED.*\[\(.*\)\]/\1/p' | tr '\n' ' ')
if [[ $sql_needed == *libpq.so* && $sql_needed == *libsqlite3.so* ]]; then
    ok "the client SQL .so needs libpq and libsqlite3"
else
    not_ok "the client SQL .so needs libpq and libsqlite3" "NEEDED: $sql_needed"
fi

# ---- build against the install with pkg-config alone --------------------------
export PKG_CONFIG_PATH=$DEST/usr/lib/pkgconfig PKG_CONFIG_SYSROOT_DIR=$DEST
SAN=()
# a sanitizer build's client library needs the sanitizer runtimes at link time
nm "$DEST/usr/lib/libceleriac-client.a" 2>/dev/null | grep -q ' U __asan_' &&
    SAN=("-fsanitize=address,undefined")
TASKLIB=$TEST_TMP/libops.so
# shellcheck disable=SC2046
check "a task library builds with cc -shared -fPIC \$(pkg-config --cflags --libs celeriac) only" \
    cc -std=c11 -Wall -Wextra -Werror -fPIC -shared -o "$TASKLIB" "$OPS_DIR/install_tasks.c" \
    $(pkg-config --cflags --libs celeriac)
SENDER=$TEST_TMP/sender
# shellcheck disable=SC2046
check "a sender builds with \$(pkg-config --cflags --libs celeriac-client) only" \
    cc -std=c11 -Wall -Wextra -Werror "${SAN[@]}" -o "$SENDER" "$CELERIAC_ROOT/tests/parity/c_client.c" \
    $(pkg-config --cflags --libs celeriac-client)
needed=$(readelf -d "$SENDER" 2>/dev/null | sed -n 's/.*NEEDED.*\[\(.*\)\]/\1/p' | tr '\n' ' ')
if [[ $needed == *libceleriac-client.so.0* && $needed != *libpq* && $needed != *libsqlite3* ]]; then
    ok "the shared sender needs libceleriac-client.so.0, not libpq or sqlite3"
else
    not_ok "the shared sender needs libceleriac-client.so.0, not libpq or sqlite3" "NEEDED: $needed"
fi
SENDER_STATIC=$TEST_TMP/sender-static
# shellcheck disable=SC2046
check "a sender links libceleriac-client.a with \$(pkg-config --static --libs celeriac-client)" \
    cc -std=c11 -Wall -Wextra -Werror "${SAN[@]}" -o "$SENDER_STATIC" \
    "$CELERIAC_ROOT/tests/parity/c_client.c" $(pkg-config --cflags celeriac-client) \
    $(pkg-config --static --libs celeriac-client | sed 's/-lceleriac-client/-l:libceleriac-client.a/')
expect_eq "the static sender needs no libceleriac-client.so" "" \
    "$(readelf -d "$SENDER_STATIC" 2>/dev/null | grep -o 'libceleriac-client[^]]*')"
static_needed=$(readelf -d "$SENDER_STATIC" 2>/dev/null | sed -n 's/.*NEEDED.*\[\(.*\)\]/\1/p' | tr '\n' ' ')
if [[ $static_needed != *libpq* && $static_needed != *libsqlite3* ]]; then
    ok "the static sender needs neither libpq nor sqlite3"
else
    not_ok "the static sender needs neither libpq nor sqlite3" "NEEDED: $static_needed"
fi
for flags in --libs "--static --libs"; do
    # shellcheck disable=SC2086
    libs=$(pkg-config $flags celeriac-client)
    if [[ " $libs " == *" -lceleriac-client "* && $libs != *-lpq* && $libs != *-lsqlite3* ]]; then
        ok "pkg-config $flags celeriac-client names neither -lpq nor -lsqlite3"
    else
        not_ok "pkg-config $flags celeriac-client names neither -lpq nor -lsqlite3" "$libs"
    fi
done

# the core alone, and the core with its SQL part: one sender that uses nothing
# of the SQL part; --as-needed so the check holds whatever the toolchain's default
SEND_CORE=$TEST_TMP/send-core
# shellcheck disable=SC2046
check "a sender builds with \$(pkg-config --cflags --libs celeriac-client) (no SQL part)" \
    cc -std=c11 -Wall -Wextra -Werror "${SAN[@]}" -o "$SEND_CORE" "$OPS_DIR/install_sender.c" \
    $(pkg-config --cflags --libs celeriac-client)
SEND_SQL=$TEST_TMP/send-sql
# shellcheck disable=SC2046
check "the same sender builds -Wl,--as-needed with \$(pkg-config --cflags --libs celeriac-client-sql)" \
    cc -std=c11 -Wall -Wextra -Werror "${SAN[@]}" -o "$SEND_SQL" "$OPS_DIR/install_sender.c" \
    -Wl,--as-needed $(pkg-config --cflags --libs celeriac-client-sql)
expect_eq "... and keeps libceleriac-client-sql.so.0 as a DT_NEEDED" "libceleriac-client-sql.so.0" \
    "$(readelf -d "$SEND_SQL" 2>/dev/null | grep -o 'libceleriac-client-sql[^]]*')"
SEND_SQL_STATIC=$TEST_TMP/send-sql-static
# shellcheck disable=SC2046
check "the same sender links libceleriac-client-sql.a with \$(pkg-config --static --libs celeriac-client-sql)" \
    cc -std=c11 -Wall -Wextra -Werror "${SAN[@]}" -o "$SEND_SQL_STATIC" "$OPS_DIR/install_sender.c" \
    $(pkg-config --cflags celeriac-client-sql) $(pkg-config --static --libs celeriac-client-sql |
        sed 's/-lceleriac-client-sql /-l:libceleriac-client-sql.a /; s/-lceleriac-client /-l:libceleriac-client.a /')
expect_eq "the static SQL sender needs no libceleriac-client*.so" "" \
    "$(readelf -d "$SEND_SQL_STATIC" 2>/dev/null | grep -o 'libceleriac-client[^]]*')"
OUTBOX=$TEST_TMP/outbox
# shellcheck disable=SC2046
check "an outbox program builds with \$(pkg-config --cflags --libs celeriac-client-sql) only" \
    cc -std=c11 -Wall -Wextra -Werror "${SAN[@]}" -o "$OUTBOX" "$OPS_DIR/install_outbox.c" \
    $(pkg-config --cflags --libs celeriac-client-sql)
unset PKG_CONFIG_PATH PKG_CONFIG_SYSROOT_DIR

# ---- a sqla+ broker without the SQL part: one clear error ----------------------------------
APP_DB=$TEST_TMP/app.db
SQLA="sqla+sqlite:///$APP_DB"
err=$(LD_LIBRARY_PATH=$DEST/usr/lib "$SEND_CORE" "$SQLA" ops.add '[1, 2]' 2>&1)
rc=$?
want="celeriac_client_new: sqla+ broker needs the client's SQL part: link libceleriac-client-sql (pkg-config --libs celeriac-client-sql)"
if ((rc == 1)) && [[ $err == "$want" ]] && [[ ! -e $APP_DB ]]; then
    ok "core-only sender on sqla+sqlite: exit 1, one line naming celeriac-client-sql, no file"
else
    not_ok "core-only sender on sqla+sqlite: exit 1, one line naming celeriac-client-sql, no file" \
        "exit $rc" "$err" "$(ls -l "$APP_DB" 2>&1)"
fi

# ---- the installed worker runs the library's tasks -----------------------------
start_redis
CELERIAC_BIN=$DEST/usr/bin/celeriac
start_worker -A "$TASKLIB" -c 2 -b "$REDIS_URL" --result-backend "$REDIS_URL" -n ops@localhost
if wait_children 2 20; then
    ok "the installed celeriac starts 2 children with the task library"
else
    not_ok "the installed celeriac starts 2 children with the task library" "$(worker_log_tail)"
fi
meta=$(LD_LIBRARY_PATH=$DEST/usr/lib "$SENDER" "$REDIS_URL" "$REDIS_URL" ops.add '[40, 2]' 2>"$TEST_TMP/s1.err")
expect_eq "shared sender: ops.add(40, 2) -> SUCCESS 42" "SUCCESS 42" \
    "$(jget status <<<"$meta") $(jget result <<<"$meta")" "$meta" "$(cat "$TEST_TMP/s1.err")" "$(worker_log_tail)"
meta=$("$SENDER_STATIC" "$REDIS_URL" "$REDIS_URL" ops.hello '["deb"]' 2>"$TEST_TMP/s2.err")
expect_eq "static sender: ops.hello('deb') -> SUCCESS hello deb" "SUCCESS hello deb" \
    "$(jget status <<<"$meta") $(jget result <<<"$meta")" "$meta" "$(cat "$TEST_TMP/s2.err")"
expect_eq "installed celeriac call --wait: ops.add 1 2 -> 3" "3" \
    "$("$CELERIAC_BIN" call ops.add 1 2 --wait -b "$REDIS_URL" --result-backend "$REDIS_URL" 2>&1)"
stop_worker TERM 30
expect_eq "the installed worker exits 0 on SIGTERM" 0 "$WORKER_RC" "$(worker_log_tail)"

# ---- the SQL part: outbox and sqla+ sending on SQLite, run by the installed worker ----------
start_worker -A "$TASKLIB" -c 1 -b "$SQLA" --result-backend "$REDIS_URL" -n opsql@localhost
if wait_children 1 20 && wait_for 10 sqlite3 "$APP_DB" "SELECT 1 FROM kombu_message LIMIT 0"; then
    ok "the installed celeriac starts on sqla+sqlite and creates kombu's tables"
else
    not_ok "the installed celeriac starts on sqla+sqlite and creates kombu's tables" "$(worker_log_tail)"
fi
result() { "$CELERIAC_BIN" result "$1" -b "$REDIS_URL" --result-backend "$REDIS_URL" --wait --timeout 20 2>&1; }
id=$(LD_LIBRARY_PATH=$DEST/usr/lib "$OUTBOX" "$APP_DB" 41 commit 2>"$TEST_TMP/o1.err")
expect_eq "outbox, committed: ops.add(41, 1) runs -> 42" 42 "$(result "$id")" \
    "id $id" "$(cat "$TEST_TMP/o1.err")" "$(worker_log_tail)"
id=$(LD_LIBRARY_PATH=$DEST/usr/lib "$OUTBOX" "$APP_DB" 7 rollback 2>"$TEST_TMP/o2.err")
[[ -n $id ]] || not_ok "outbox, rolled back: the program ran" "$(cat "$TEST_TMP/o2.err")"
sleep 1
expect_eq "outbox, rolled back: neither the order nor the message exists" "0|0" \
    "$(sqlite3 "$APP_DB" "SELECT (SELECT count(*) FROM orders WHERE n = 7),
                                 (SELECT count(*) FROM kombu_message)")"
id=$(LD_LIBRARY_PATH=$DEST/usr/lib "$SEND_SQL" "$SQLA" ops.add '[20, 3]' 2>"$TEST_TMP/o3.err")
expect_eq "shared SQL sender on sqla+sqlite: ops.add(20, 3) -> 23" 23 "$(result "$id")" \
    "id $id" "$(cat "$TEST_TMP/o3.err")" "$(worker_log_tail)"
id=$("$SEND_SQL_STATIC" "$SQLA" ops.hello '["sql"]' 2>"$TEST_TMP/o4.err")
expect_eq "static SQL sender on sqla+sqlite: ops.hello('sql') -> hello sql" '"hello sql"' \
    "$(result "$id")" "id $id" "$(cat "$TEST_TMP/o4.err")" "$(worker_log_tail)"
stop_worker TERM 30
expect_eq "the installed worker on sqla+sqlite exits 0 on SIGTERM" 0 "$WORKER_RC" "$(worker_log_tail)"
check_worker_logs_clean

# ---- man pages ---------------------------------------------------------------------
for page in man1/celeriac.1 man7/celeriac-tasks.7; do
    expect_eq "man -l --warnings $page: no warning" "" \
        "$(MANWIDTH=80 man -l --warnings "$DEST/usr/share/man/$page" 2>&1 >/dev/null)"
done
rendered=$(LC_ALL=C MANWIDTH=250 man -l "$DEST/usr/share/man/man1/celeriac.1" 2>/dev/null | col -b)
cmds=$("$CELERIAC_BIN" --help | sed -n '/^commands:/,/^$/p' | awk 'NF && $1 != "commands:" {print $1}')
missing=()
for cmd in $cmds; do
    grep -qw -- "$cmd" <<<"$rendered" || missing+=("command $cmd")
    for flag in $("$CELERIAC_BIN" "$cmd" --help 2>&1 | grep -oE -- '(^|[ ,])--?[A-Za-z][A-Za-z-]*' |
        sed 's/^[ ,]*//' | sort -u); do
        grep -qE -- "(^|[^A-Za-z-])$flag([^A-Za-z-]|\$)" <<<"$rendered" || missing+=("$cmd $flag")
    done
done
expect_eq "celeriac(1) names every command and every flag of --help" "" "${missing[*]}"

# ---- uninstall, and a DESTDIR without write access ------------------------------------
out=$(run_make uninstall DESTDIR="$DEST" PREFIX=/usr 2>&1)
expect_eq "make uninstall removes every file install wrote" "" \
    "$(cd "$DEST" && find . \( -type f -o -type l \))" "$out"
err=$(run_make install DESTDIR=/proc/nope PREFIX=/usr 2>&1 >/dev/null)
rc=$?
if ((rc != 0)) && [[ $(wc -l <<<"$err") == 1 && $err == *"cannot write to '/proc/nope/usr/bin'"* ]]; then
    ok "make install DESTDIR=/proc/nope: one line, exit $rc"
else
    not_ok "make install DESTDIR=/proc/nope: one line and a non-zero status" "exit $rc" "$err"
fi
tap_done
