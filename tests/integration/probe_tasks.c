/* SPDX-License-Identifier: MIT
 * probe_tasks.c: a task library for the integration tests, built by them at
 * run time the way a user's library is built (include/celeriac.h alone). Its
 * tasks report which process ran them and what its database handle looks like;
 * none is flagged idempotent, so a lost connection must be found *before* a
 * task runs for that task to succeed.
 */
#define _POSIX_C_SOURCE 200809L

#include <celeriac.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>
#include <sqlite3.h>

static void sleep_seconds(double s)
{
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

/* probe.pg(seconds=0): {"pid": <child pid>, "backend": <pg_backend_pid()>}
 * after a server-side pg_sleep(seconds). Not idempotent. */
static int probe_pg(struct celeriac_task *task)
{
    double seconds = 0;
    if (celeriac_has_arg(task, 0, "seconds") &&
        celeriac_arg_double(task, 0, "seconds", &seconds) != CELERIAC_OK)
        return CELERIAC_FAILED;
    PGconn *pg = celeriac_pg(task);
    if (!pg)
        return celeriac_fail(task, "RuntimeError", "no PostgreSQL connection");
    char arg[32];
    snprintf(arg, sizeof(arg), "%g", seconds);
    const char *params[1] = {arg};
    PGresult *res = PQexecParams(pg, "SELECT pg_backend_pid(), pg_sleep($1::float8)", 1, NULL,
                                 params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        char msg[256];
        snprintf(msg, sizeof(msg), "%s", PQerrorMessage(pg));
        msg[strcspn(msg, "\n")] = '\0';
        PQclear(res);
        return celeriac_fail_db(task, msg);
    }
    char json[96];
    snprintf(json, sizeof(json), "{\"pid\": %ld, \"backend\": %s}", (long)getpid(),
             PQgetvalue(res, 0, 0));
    PQclear(res);
    return celeriac_return_json(task, json);
}

static int64_t pragma_int(sqlite3 *db, const char *sql, char *text, size_t textlen)
{
    sqlite3_stmt *st = NULL;
    int64_t v = -1;
    if (text)
        text[0] = '\0';
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW) {
        v = sqlite3_column_int64(st, 0);
        if (text)
            snprintf(text, textlen, "%s", (const char *)sqlite3_column_text(st, 0));
    }
    sqlite3_finalize(st);
    return v;
}

/* probe.sqlite(seconds=0): {"pid", "journal_mode", "busy_timeout", "handle", "file"}
 * of the child's handle, after sleeping `seconds`. */
static int probe_sqlite(struct celeriac_task *task)
{
    double seconds = 0;
    if (celeriac_has_arg(task, 0, "seconds") &&
        celeriac_arg_double(task, 0, "seconds", &seconds) != CELERIAC_OK)
        return CELERIAC_FAILED;
    sleep_seconds(seconds);
    sqlite3 *db = celeriac_sqlite(task);
    if (!db)
        return celeriac_fail(task, "RuntimeError", "no SQLite handle");
    char mode[32], json[512];
    pragma_int(db, "PRAGMA journal_mode", mode, sizeof(mode));
    int64_t busy = pragma_int(db, "PRAGMA busy_timeout", NULL, 0);
    const char *file = sqlite3_db_filename(db, "main");
    snprintf(json, sizeof(json), "{\"pid\": %ld, \"journal_mode\": \"%s\", \"busy_timeout\": %" PRId64
             ", \"handle\": \"%p\", \"file\": \"%s\"}",
             (long)getpid(), mode, busy, (void *)db, file ? file : "");
    return celeriac_return_json(task, json);
}

/* probe.pid(seconds=0): {"pid": <child pid>} after sleeping `seconds`. */
static int probe_pid(struct celeriac_task *task)
{
    double seconds = 0;
    if (celeriac_has_arg(task, 0, "seconds") &&
        celeriac_arg_double(task, 0, "seconds", &seconds) != CELERIAC_OK)
        return CELERIAC_FAILED;
    sleep_seconds(seconds);
    char json[64];
    snprintf(json, sizeof(json), "{\"pid\": %ld}", (long)getpid());
    return celeriac_return_json(task, json);
}

/* probe.env(name): the value of environment variable `name` in the child
 * (what a program the task starts would inherit), or null when unset. */
static int probe_env(struct celeriac_task *task)
{
    const char *name = NULL;
    if (celeriac_arg_str(task, 0, "name", &name, NULL) != CELERIAC_OK)
        return CELERIAC_FAILED;
    const char *value = getenv(name);
    if (!value)
        return celeriac_return_json(task, "null");
    char json[256];
    int n = snprintf(json, sizeof(json), "\"%s\"", value);
    if (n < 0 || (size_t)n >= sizeof(json) || strpbrk(value, "\"\\"))
        return celeriac_return_json(task, "\"(unprintable)\"");
    return celeriac_return_json(task, json);
}

static const struct celeriac_task_def probe_tasks[] = {
    {"probe.env", probe_env, 0},
    {"probe.pg", probe_pg, 0},
    {"probe.sqlite", probe_sqlite, 0},
    {"probe.pid", probe_pid, 0},
    {NULL, NULL, 0},
};

static const struct celeriac_library probe_library = {
    .abi_version = CELERIAC_ABI_VERSION,
    .name = "probe",
    .tasks = probe_tasks,
};

const struct celeriac_library *celeriac_library_init(int host_abi)
{
    (void)host_abi;
    return &probe_library;
}
