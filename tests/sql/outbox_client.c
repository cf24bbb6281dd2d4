/* SPDX-License-Identifier: MIT
 * outbox_client.c: an application that writes its own row and enqueues a
 * task in the same transaction (celeriac_send_pg / celeriac_send_sqlite), then
 * commits or rolls back, for tests/sql/test_sql_outbox.sh.
 *
 *   outbox_client pg CONNINFO commit|rollback ORDER
 *   outbox_client sqlite PATH commit|rollback ORDER
 * Inserts ORDER into orders(name), sends tasks.add(ORDER, 1) and prints the
 * task id; exits 1 on any failure.
 */
#include <celeriac_client.h>

#include <libpq-fe.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int pg_exec(PGconn *pg, const char *sql, const char *param)
{
    PGresult *r = PQexecParams(pg, sql, param ? 1 : 0, NULL, param ? &param : NULL, NULL, NULL, 0);
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    if (!ok)
        fprintf(stderr, "%s: %s", sql, PQerrorMessage(pg));
    PQclear(r);
    return ok ? 0 : -1;
}

static int run_pg(const char *conninfo, const char *how, const char *order, char args[64])
{
    PGconn *pg = PQconnectdb(conninfo);
    if (PQstatus(pg) != CONNECTION_OK) {
        fprintf(stderr, "connect: %s", PQerrorMessage(pg));
        return 1;
    }
    char id[37], err[256];
    if (pg_exec(pg, "BEGIN", NULL) ||
        pg_exec(pg, "INSERT INTO orders (name) VALUES ($1)", order) ||
        celeriac_send_pg(pg, "tasks.add", args, NULL, NULL, id, err, sizeof(err)) ||
        pg_exec(pg, strcmp(how, "commit") ? "ROLLBACK" : "COMMIT", NULL)) {
        fprintf(stderr, "outbox on PostgreSQL failed: %s\n", err);
        PQfinish(pg);
        return 1;
    }
    printf("%s\n", id);
    PQfinish(pg);
    return 0;
}

static int run_sqlite(const char *path, const char *how, const char *order, char args[64])
{
    sqlite3 *db = NULL;
    if (sqlite3_open(path, &db) != SQLITE_OK)
        return 1;
    sqlite3_busy_timeout(db, 5000);
    char sql[256], id[37], err[256] = "";
    snprintf(sql, sizeof(sql), "BEGIN IMMEDIATE; INSERT INTO orders (name) VALUES ('%s');", order);
    if (sqlite3_exec(db, sql, NULL, NULL, NULL) != SQLITE_OK ||
        celeriac_send_sqlite(db, "tasks.add", args, NULL, NULL, id, err, sizeof(err)) ||
        sqlite3_exec(db, strcmp(how, "commit") ? "ROLLBACK" : "COMMIT", NULL, NULL, NULL) !=
            SQLITE_OK) {
        fprintf(stderr, "outbox on SQLite failed: %s %s\n", err, sqlite3_errmsg(db));
        sqlite3_close(db);
        return 1;
    }
    printf("%s\n", id);
    sqlite3_close(db);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 5)
        return 2;
    char args[64];
    snprintf(args, sizeof(args), "[%d, 1]", atoi(argv[4]));
    return !strcmp(argv[1], "pg") ? run_pg(argv[2], argv[3], argv[4], args)
                                  : run_sqlite(argv[2], argv[3], argv[4], args);
}
