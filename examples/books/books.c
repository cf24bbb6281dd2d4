/* SPDX-License-Identifier: MIT
 * books.c: the seed task library (tasks.add, books.get_book_info and the small
 * tasks the test suites drive), built the way a user's library would be: against
 * include/celeriac.h alone plus the database clients it calls.
 * It keeps no connection of its own; per process it caches only prepared statements,
 * and none behind a transaction pooler (celeriac_db_pooled).
 */
#define _POSIX_C_SOURCE 200809L /* nanosleep */

#include <celeriac.h>

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>
#include <sqlite3.h>

/* The name the PostgreSQL statement is prepared under on each connection. */
#define PG_GET_BOOK_STMT "books_get_book_info"

/* One statement does the whole task. Reading the title, setting fetched_at and
 * returning the title as one UPDATE ... RETURNING makes it a single implicit
 * transaction: atomic (no window between the read and the write, so no
 * SELECT ... FOR UPDATE or explicit BEGIN/COMMIT), and on PostgreSQL one network
 * round trip per task instead of four (BEGIN, SELECT, UPDATE, COMMIT). An unknown
 * id updates no row and returns none. */
#define PG_GET_BOOK_SQL "UPDATE books SET fetched_at = now() WHERE id = $1 RETURNING title"
/* Same statement for SQLite (3.35+ has RETURNING). fetched_at is stored as an
 * ISO-8601 UTC text with milliseconds, which SQLite's date functions read. */
#define SQLITE_GET_BOOK_SQL                                                                   \
    "UPDATE books SET fetched_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = ?1 " \
    "RETURNING title"

/* Per-process statement cache. A plain static is per process here: the master
 * only calls celeriac_library_init(), which touches none of it, so every child
 * starts from the zeroes it inherits at fork and fills its own copy. The hooks
 * cannot read celeriac_process_data() (it takes a task), hence no heap struct. */
struct books_cache {
    PGconn *pg_prepared_on;    /* connection PG_GET_BOOK_STMT exists on, or NULL */
    sqlite3 *sqlite_db;        /* handle sqlite_get_book belongs to, or NULL */
    sqlite3_stmt *sqlite_get_book; /* prepared SQLITE_GET_BOOK_SQL, or NULL */
};

static struct books_cache cache;

/* Copies the first line of a libpq or SQLite message into task scratch, so
 * the stored exc_message is one clean line (libpq adds "\n" and hint lines). */
static const char *task_msg(struct celeriac_task *task, const char *msg)
{
    size_t len;
    char *copy;

    if (!msg || !*msg)
        msg = "unknown database error";
    len = strcspn(msg, "\r\n");
    while (len > 0 && msg[len - 1] == ' ')
        len--;
    copy = celeriac_alloc(task, len + 1);
    memcpy(copy, msg, len);
    copy[len] = '\0';
    return copy;
}

/* The message of a failed libpq call: the server's primary message when there
 * is one (no "ERROR:" prefix, no LINE/caret context), else libpq's own. */
static const char *pg_msg(struct celeriac_task *task, PGconn *conn, const PGresult *res)
{
    const char *primary = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;

    if (primary)
        return task_msg(task, primary);
    if (res && *PQresultErrorMessage(res))
        return task_msg(task, PQresultErrorMessage(res));
    return task_msg(task, PQerrorMessage(conn));
}

/* When the soft time limit passes, the worker cancels the running statement;
 * the task then reports the limit rather than the cancellation's error. */
static int soft_limit_failure(struct celeriac_task *task)
{
    return celeriac_fail(task, "SoftTimeLimitExceeded", "soft time limit exceeded");
}

/* ---- tasks.add ---------------------------------------------------------*/

/* x + y on int64; Python's ints do not overflow, ours do, so an overflow is
 * reported rather than wrapped. */
static int task_add(struct celeriac_task *task)
{
    int64_t x, y;

    if (celeriac_arg_int(task, 0, "x", &x) != CELERIAC_OK ||
        celeriac_arg_int(task, 1, "y", &y) != CELERIAC_OK)
        return CELERIAC_FAILED;
    if ((y > 0 && x > INT64_MAX - y) || (y < 0 && x < INT64_MIN - y))
        return celeriac_fail(task, "OverflowError",
                             "%" PRId64 " + %" PRId64 " does not fit in int64", x, y);
    celeriac_return_int(task, x + y);
    return CELERIAC_OK;
}

/* ---- tasks.sleep, tasks.fail, tasks.echo -------------------------------*/

/* Sleeps `seconds` and returns them; the test suites use it to hold a child
 * busy across a shutdown or a time limit. A signal handler interrupting the
 * sleep does not shorten it (as Python's time.sleep since PEP 475): a warm
 * shutdown must let the task finish. */
static int task_sleep(struct celeriac_task *task)
{
    double seconds;
    struct timespec left, rem;

    if (celeriac_arg_double(task, 0, "seconds", &seconds) != CELERIAC_OK)
        return CELERIAC_FAILED;
    if (isnan(seconds) || seconds < 0)
        return celeriac_fail(task, "ValueError", "sleep length must be non-negative");
    if (seconds > 1e9)
        return celeriac_fail(task, "OverflowError", "sleep length is too large");
    left.tv_sec = (time_t)seconds;
    left.tv_nsec = (long)((seconds - (double)left.tv_sec) * 1e9);
    if (left.tv_nsec > 999999999L)
        left.tv_nsec = 999999999L;
    while (nanosleep(&left, &rem) != 0) {
        if (errno != EINTR)
            return celeriac_fail(task, "OSError", "nanosleep failed: %s", strerror(errno));
        /* The soft time limit's timer signal is one of the interruptions; as
         * in Celery, it ends the task with SoftTimeLimitExceeded. */
        if (celeriac_soft_time_limit_exceeded(task))
            return soft_limit_failure(task);
        left = rem;
    }
    celeriac_return_double(task, seconds);
    return CELERIAC_OK;
}

/* Always fails with ValueError(message): a known FAILURE for the tests. */
static int task_fail(struct celeriac_task *task)
{
    const char *message;

    if (celeriac_arg_str(task, 0, "message", &message, NULL) != CELERIAC_OK)
        return CELERIAC_FAILED;
    return celeriac_fail(task, "ValueError", "%s", message);
}

/* Returns its argument unchanged: round-trips any JSON value through the
 * decoder and the result encoder. */
static int task_echo(struct celeriac_task *task)
{
    const char *json;

    if (celeriac_arg_json(task, 0, "x", &json) != CELERIAC_OK)
        return CELERIAC_FAILED;
    return celeriac_return_json(task, json);
}

/* ---- books.get_book_info: PostgreSQL -----------------------------------*/

/* Prepares PG_GET_BOOK_STMT on conn. Returns 0, or -1 with *res_out holding
 * the failed result (caller PQclears; may be NULL when libpq had no result). */
static int pg_prepare(PGconn *conn, PGresult **res_out)
{
    PGresult *res = PQprepare(conn, PG_GET_BOOK_STMT, PG_GET_BOOK_SQL, 1, NULL);

    if (res && PQresultStatus(res) == PGRES_COMMAND_OK) {
        PQclear(res);
        cache.pg_prepared_on = conn;
        *res_out = NULL;
        return 0;
    }
    *res_out = res;
    return -1;
}

/* True if res failed because the prepared statement is gone (SQLSTATE 26000,
 * e.g. after DISCARD ALL from a pooler): worth one re-prepare and retry. */
static bool pg_is_missing_statement(const PGresult *res)
{
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;

    return state && strcmp(state, "26000") == 0;
}

static int pg_get_book(struct celeriac_task *task, PGconn *conn, int64_t id)
{
    char idtext[24];
    const char *params[1] = { idtext };
    PGresult *res = NULL;
    int ret;

    snprintf(idtext, sizeof(idtext), "%" PRId64, id);
    /* Behind a transaction pooler the next transaction may run on another
     * server session, which never saw our PREPARE: parse and run in one
     * exchange (the unnamed statement lives only within it). */
    if (celeriac_db_pooled(task)) {
        res = PQexecParams(conn, PG_GET_BOOK_SQL, 1, NULL, params, NULL, NULL, 0);
        goto out_result;
    }
    /* Normally prepared by the db_connected hook; prepared here only if that
     * failed for a reason other than the connection (e.g. the table did not
     * exist yet), so such a task reports the real error. */
    if (cache.pg_prepared_on != conn && pg_prepare(conn, &res) != 0)
        goto out_db_error;

    res = PQexecPrepared(conn, PG_GET_BOOK_STMT, 1, params, NULL, NULL, 0);
    if (pg_is_missing_statement(res)) {
        PQclear(res);
        if (pg_prepare(conn, &res) != 0)
            goto out_db_error;
        res = PQexecPrepared(conn, PG_GET_BOOK_STMT, 1, params, NULL, NULL, 0);
    }
out_result:
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK)
        goto out_db_error;

    ret = CELERIAC_OK;
    if (PQntuples(res) == 0)
        ret = celeriac_fail(task, "LookupError", "book %lld not found", (long long)id);
    else if (PQgetisnull(res, 0, 0))
        celeriac_return_null(task);
    else
        celeriac_return_str(task, PQgetvalue(res, 0, 0), (size_t)PQgetlength(res, 0, 0));
    PQclear(res);
    return ret;

out_db_error:
    if (celeriac_soft_time_limit_exceeded(task))
        ret = soft_limit_failure(task);
    else
        ret = celeriac_fail_db(task, pg_msg(task, conn, res));
    PQclear(res);
    return ret;
}

/* ---- books.get_book_info: SQLite ---------------------------------------*/

static void sqlite_finalize_cache(void)
{
    sqlite3_finalize(cache.sqlite_get_book);
    cache.sqlite_get_book = NULL;
    cache.sqlite_db = NULL;
}

/* Prepares the cached statement on db. Returns SQLITE_OK or SQLite's code
 * (the message is then in sqlite3_errmsg(db)). */
static int sqlite_prepare(sqlite3 *db)
{
    sqlite3_stmt *stmt = NULL;
    int rc;

    rc = sqlite3_prepare_v3(db, SQLITE_GET_BOOK_SQL, -1, SQLITE_PREPARE_PERSISTENT, &stmt, NULL);
    if (rc != SQLITE_OK) {
        sqlite3_finalize(stmt);
        return rc;
    }
    sqlite_finalize_cache();
    cache.sqlite_get_book = stmt;
    cache.sqlite_db = db;
    return SQLITE_OK;
}

static int sqlite_get_book(struct celeriac_task *task, sqlite3 *db, int64_t id)
{
    sqlite3_stmt *stmt;
    const char *title = NULL;
    bool found = false;
    int rc, ret;

    /* As for PostgreSQL: prepared by db_connected unless that failed. */
    if (cache.sqlite_db != db && sqlite_prepare(db) != SQLITE_OK)
        return celeriac_fail_db(task, task_msg(task, sqlite3_errmsg(db)));
    stmt = cache.sqlite_get_book;

    sqlite3_bind_int64(stmt, 1, id);
    /* Lock waits happen inside step, bounded by the busy timeout the worker
     * set on the handle; SQLITE_BUSY here means that timeout ran out. */
    rc = sqlite3_step(stmt);
    if (rc == SQLITE_ROW) {
        found = true;
        if (sqlite3_column_type(stmt, 0) != SQLITE_NULL) {
            const unsigned char *text = sqlite3_column_text(stmt, 0);
            size_t len = (size_t)sqlite3_column_bytes(stmt, 0);
            char *copy = celeriac_alloc(task, len + 1);

            /* The column's text dies at the next step or reset: copy it. */
            memcpy(copy, text, len);
            copy[len] = '\0';
            title = copy;
        }
        /* Stepping to the end finishes the statement and with it the implicit
         * transaction, so the update is committed before we report success. */
        rc = sqlite3_step(stmt);
    }
    if (rc != SQLITE_DONE) {
        if (celeriac_soft_time_limit_exceeded(task))
            ret = soft_limit_failure(task);
        else
            ret = celeriac_fail_db(task, task_msg(task, sqlite3_errmsg(db)));
        goto out_reset;
    }
    ret = CELERIAC_OK;
    if (!found)
        ret = celeriac_fail(task, "LookupError", "book %lld not found", (long long)id);
    else if (!title)
        celeriac_return_null(task);
    else
        celeriac_return_str(task, title, (size_t)-1);

out_reset:
    /* Resetting also ends a half-run statement's transaction after an error. */
    sqlite3_reset(stmt);
    sqlite3_clear_bindings(stmt);
    return ret;
}

/* Reads the title of book `book_id`, sets its fetched_at to now, returns the
 * title (or null): in one transaction on whichever database the worker runs. */
static int task_get_book_info(struct celeriac_task *task)
{
    int64_t id;
    PGconn *pg;
    sqlite3 *lite;

    if (celeriac_arg_int(task, 0, "book_id", &id) != CELERIAC_OK)
        return CELERIAC_FAILED;
    pg = celeriac_pg(task);
    if (pg)
        return pg_get_book(task, pg, id);
    lite = celeriac_sqlite(task);
    if (lite)
        return sqlite_get_book(task, lite, id);
    return celeriac_fail(task, "RuntimeError", "no database configured");
}

/* ---- hooks ---------------------------------------------------------------*/

/* Prepares the statements on a fresh connection (they do not survive a
 * reconnect), unless a transaction pooler is in front of it. Only a dead connection is reported as failure: a prepare that
 * fails on a live one (say the books table is missing) must not stop tasks
 * that need no table, like tasks.add, so get_book_info retries it and reports
 * the error itself. */
static int hook_db_connected(struct celeriac_process *proc)
{
    PGconn *pg = celeriac_process_pg(proc);
    sqlite3 *lite = celeriac_process_sqlite(proc);

    cache.pg_prepared_on = NULL;
    if (pg && !celeriac_process_db_pooled(proc)) {
        PGresult *res;

        if (pg_prepare(pg, &res) != 0) {
            PQclear(res);
            return PQstatus(pg) == CONNECTION_OK ? 0 : -1;
        }
    }
    if (lite && cache.sqlite_db != lite)
        sqlite_prepare(lite);
    return 0;
}

/* Finalizes the cached SQLite statement while its handle is still open; an
 * unfinalized statement would keep sqlite3_close() from closing the file. */
static int hook_db_closing(struct celeriac_process *proc)
{
    (void)proc;
    sqlite_finalize_cache();
    cache.pg_prepared_on = NULL;
    return 0;
}

/* ---- tasks.flaky, tasks.unsteady: retries -----------------------------*/

/* Asks for a retry (KeyError, as Celery's docs example) until it has been
 * retried `times` times, then returns how many retries it took. */
static int task_flaky(struct celeriac_task *task)
{
    int64_t times;
    if (celeriac_arg_int(task, 0, "times", &times) != CELERIAC_OK)
        return CELERIAC_FAILED;
    int retries = celeriac_task_retries(task);
    if (retries < times) {
        struct celeriac_retry_options retry = {.countdown = 0.1, .max_retries = 5};
        return celeriac_retry(task, &retry, "KeyError", "again");
    }
    celeriac_return_int(task, retries);
    return CELERIAC_OK;
}

/* Fails with TimeoutError until it has been retried `times` times; the
 * retrying is declared in the library's autoretry table, not in the code. */
static int task_unsteady(struct celeriac_task *task)
{
    int64_t times;
    if (celeriac_arg_int(task, 0, "times", &times) != CELERIAC_OK)
        return CELERIAC_FAILED;
    int retries = celeriac_task_retries(task);
    if (retries < times)
        return celeriac_fail(task, "TimeoutError", "not yet (%d)", retries);
    celeriac_return_int(task, retries);
    return CELERIAC_OK;
}

static const struct celeriac_autoretry books_autoretry[] = {
    { "tasks.unsteady", "TimeoutError", { .countdown = 0.1, .max_retries = 3 } },
    { NULL, NULL, { 0, 0, false, 0, false } },
};

static const struct celeriac_task_def books_tasks[] = {
    { "tasks.add", task_add, 0 },
    { "tasks.sleep", task_sleep, 0 },
    { "tasks.fail", task_fail, 0 },
    { "tasks.echo", task_echo, 0 },
    { "tasks.flaky", task_flaky, 0 },
    { "tasks.unsteady", task_unsteady, 0 },
    /* Idempotent: running it twice only moves fetched_at again, so after a
     * lost connection the worker may re-run it instead of failing it. */
    { "books.get_book_info", task_get_book_info, CELERIAC_IDEMPOTENT },
    /* The same task, transactional: with the broker in the books database
     * (sqla+postgresql:// naming the --db database) its UPDATE and the DELETE
     * of its message commit together; on any other broker it runs acks-late.
     * `make bench` measures it beside the plain one. */
    { "books.get_book_info_txn", task_get_book_info, CELERIAC_TRANSACTIONAL },
    { NULL, NULL, 0 },
};

static const struct celeriac_library books_library = {
    .abi_version = CELERIAC_ABI_VERSION,
    .name = "books",
    .tasks = books_tasks,
    .process_init = NULL,
    .process_shutdown = NULL,
    .db_connected = hook_db_connected,
    .db_closing = hook_db_closing,
    .autoretry = books_autoretry,
};

/* Called once in the master before any fork: no I/O, nothing opened. The ABI
 * check is the host's (it compares abi_version and names both numbers), so
 * the description is returned whatever host_abi is. */
const struct celeriac_library *celeriac_library_init(int host_abi)
{
    (void)host_abi;
    return &books_library;
}
