#!/bin/sh
# SPDX-License-Identifier: MIT
# seed.sh: creates the books table (if missing) and fills books 1..N in a
# PostgreSQL or SQLite database, using the schema-*.sql and seed-*.sql beside it.
#   seed.sh sqlite   /path/to/books.db        [N]
#   seed.sh postgres 'postgresql://...|conninfo' [N]
# N defaults to 10000. Existing rows are left as they are.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
usage="usage: seed.sh sqlite PATH [N] | seed.sh postgres CONNINFO [N]"

if [ $# -lt 2 ] || [ $# -gt 3 ]; then
    echo "$usage" >&2
    exit 2
fi
kind=$1
target=$2
n=${3:-10000}
case $n in
    ''|*[!0-9]*) echo "seed.sh: N must be a non-negative integer, got '$n'" >&2; exit 2 ;;
esac

case $kind in
sqlite)
    if ! command -v sqlite3 >/dev/null; then
        echo "seed.sh: sqlite3 not found (apt-get install sqlite3)" >&2
        exit 1
    fi
    # The schema's journal_mode pragma echoes "wal"; nothing else is printed.
    sqlite3 -batch -bail "$target" < "$here/schema-sqlite.sql" >/dev/null
    sqlite3 -batch -bail -cmd ".parameter set @n $n" "$target" < "$here/seed-sqlite.sql"
    ;;
postgres|postgresql)
    if ! command -v psql >/dev/null; then
        echo "seed.sh: psql not found (apt-get install postgresql-client)" >&2
        exit 1
    fi
    # Quiet the "already exists, skipping" notice of a second run.
    PGOPTIONS="${PGOPTIONS:-} -c client_min_messages=warning"
    export PGOPTIONS
    psql -X -q -v ON_ERROR_STOP=1 -d "$target" -f "$here/schema-postgres.sql"
    psql -X -q -v ON_ERROR_STOP=1 -v n="$n" -d "$target" -f "$here/seed-postgres.sql"
    ;;
*)
    echo "$usage" >&2
    exit 2
    ;;
esac
