/* SPDX-License-Identifier: MIT
 * install_outbox.c: `install_outbox DB_FILE N commit|rollback` is an
 * application with its own SQLite handle on DB_FILE (also the sqla+sqlite
 * broker's file): in one transaction it inserts order N into its table and
 * enqueues ops.add(N, 1) with celeriac_send_sqlite, then commits or rolls
 * back; prints the task id. Built by test_install.sh with
 * `pkg-config --cflags --libs celeriac-client-sql` alone.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <celeriac_client.h>
#include <sqlite3.h>

static int exec(sqlite3 *db, const char *sql)
{
    char *msg = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        fprintf(stderr, "%s: %s\n", sql, msg ? msg : "?");
        sqlite3_free(msg);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    char err[256] = "", id[37], sql[128], args[64];
    sqlite3 *db = NULL;
    if (argc != 4) {
        fprintf(stderr, "usage: %s DB_FILE N commit|rollback\n", argv[0]);
        return 2;
    }
    if (sqlite3_open(argv[1], &db) != SQLITE_OK) {
        fprintf(stderr, "open %s: %s\n", argv[1], sqlite3_errmsg(db));
        sqlite3_close(db);
        return 1;
    }
    sqlite3_busy_timeout(db, 5000);
    snprintf(sql, sizeof(sql), "INSERT INTO orders VALUES (%d)", atoi(argv[2]));
    snprintf(args, sizeof(args), "[%d, 1]", atoi(argv[2]));
    int rc = exec(db, "CREATE TABLE IF NOT EXISTS orders (n integer)") ||
             exec(db, "BEGIN IMMEDIATE") || exec(db, sql);
    if (!rc && celeriac_send_sqlite(db, "ops.add", args, NULL, NULL, id, err, sizeof(err))) {
        fprintf(stderr, "celeriac_send_sqlite: %s\n", err);
        rc = -1;
    }
    if (!rc)
        rc = exec(db, strcmp(argv[3], "commit") ? "ROLLBACK" : "COMMIT");
    if (!rc)
        printf("%s\n", id);
    sqlite3_close(db);
    return rc ? 1 : 0;
}
