/* SPDX-License-Identifier: MIT
 * backend/db_sqlite.c: the SQLite dialect of the database result backend
 * (sqlite3 directly: the db driver only opens, checks and closes handles).
 * The DDL is SQLAlchemy 1.4's text for Celery 5.2's models, byte for byte,
 * so `.schema` is the same whoever created the tables.
 */
#include "common.h"
#include "backend/db.h"
#include "util/buf.h"

#include <sqlite3.h>

/* BEGIN IMMEDIATE: children that start together create the tables once. */
static const char create_sql[] =
    "BEGIN IMMEDIATE;"
    "CREATE TABLE IF NOT EXISTS celery_taskmeta (\n"
    "\tid INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, \n"
    "\ttask_id VARCHAR(155), \n"
    "\tstatus VARCHAR(50), \n"
    "\tresult BLOB, \n"
    "\tdate_done DATETIME, \n"
    "\ttraceback TEXT, \n"
    "\tname VARCHAR(155), \n"
    "\targs BLOB, \n"
    "\tkwargs BLOB, \n"
    "\tworker VARCHAR(155), \n"
    "\tretries INTEGER, \n"
    "\tqueue VARCHAR(155), \n"
    "\tUNIQUE (task_id)\n"
    ");"
    "CREATE TABLE IF NOT EXISTS celery_tasksetmeta (\n"
    "\tid INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, \n"
    "\ttaskset_id VARCHAR(155), \n"
    "\tresult BLOB, \n"
    "\tdate_done DATETIME, \n"
    "\tUNIQUE (taskset_id)\n"
    ");"
    "COMMIT;";

/* As db_pg.c's: Celery's load-then-update-or-insert as one upsert; the id
 * comes from AUTOINCREMENT. ?6: keep a stored SUCCESS. */
static const char upsert_sql[] =
    "INSERT INTO celery_taskmeta (task_id, status, result, date_done, traceback,"
    " name, args, kwargs, worker, retries, queue)"
    " VALUES (?1, ?2, ?3, ?4, ?5, NULL, NULL, NULL, NULL, NULL, NULL)"
    " ON CONFLICT (task_id) DO UPDATE SET status = excluded.status,"
    " result = excluded.result, date_done = excluded.date_done,"
    " traceback = excluded.traceback, name = NULL, args = NULL, kwargs = NULL,"
    " worker = NULL, retries = NULL, queue = NULL"
    " WHERE NOT ?6 OR celery_taskmeta.status IS NOT 'SUCCESS'";

/* Busy beyond the busy timeout, a full disk, a table dropped under us (made
 * again before the next try): try again. A file that broke or went away:
 * reopen. The rest is an error asking again will not fix. */
static int classify(struct backend_db *b, sqlite3 *db, int rc, const char *what, struct err *e)
{
    const char *msg = sqlite3_errmsg(db);
    int primary = rc & 0xff;
    bool gone = !strncmp(msg, "no such table", 13);
    int code = E_DB;
    if (primary == SQLITE_BUSY || primary == SQLITE_LOCKED || primary == SQLITE_FULL || gone)
        code = E_REFUSED;
    else if (primary == SQLITE_IOERR || primary == SQLITE_CORRUPT || primary == SQLITE_NOTADB ||
             primary == SQLITE_CANTOPEN || primary == SQLITE_READONLY)
        code = E_CONN_LOST;
    err_set(e, code, "%s on '%s' failed: %s", what, b->conn.cfg->where, msg);
    if (gone)
        b->tables_ready = false;
    if (!sqlite3_get_autocommit(db))
        sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    return code == E_CONN_LOST ? backend_db_lost(b, e) : code;
}

static sqlite3 *live_sqlite(struct backend_db *b, struct err *e)
{
    sqlite3 *db = db_conn_sqlite(&b->conn);
    if (!db)
        err_set(e, E_CONN_LOST, "result database '%s' is not open", b->conn.cfg->where);
    return db;
}

static int sqlite_create_tables(struct backend_db *b, struct err *e)
{
    sqlite3 *db = live_sqlite(b, e);
    if (!db)
        return E_CONN_LOST;
    int rc = sqlite3_exec(db, create_sql, NULL, NULL, NULL);
    return rc == SQLITE_OK ? 0 : classify(b, db, rc, "creating celery_taskmeta", e);
}

static int bind_row(sqlite3_stmt *st, const struct db_result_row *row)
{
    int rc = sqlite3_bind_text(st, 1, row->task_id, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_text(st, 2, row->status, -1, SQLITE_STATIC);
    if (rc == SQLITE_OK)
        rc = row->result ? sqlite3_bind_blob64(st, 3, row->result->data, row->result->len,
                                               SQLITE_STATIC)
                         : sqlite3_bind_null(st, 3);
    if (rc == SQLITE_OK)
        rc = row->date_done ? sqlite3_bind_text(st, 4, row->date_done, -1, SQLITE_STATIC)
                            : sqlite3_bind_null(st, 4);
    if (rc == SQLITE_OK)
        rc = row->traceback ? sqlite3_bind_text(st, 5, row->traceback, -1, SQLITE_STATIC)
                            : sqlite3_bind_null(st, 5);
    if (rc == SQLITE_OK)
        rc = sqlite3_bind_int(st, 6, row->keep_success);
    return rc;
}

static int sqlite_upsert(struct backend_db *b, const struct db_result_row *row, struct err *e)
{
    sqlite3 *db = live_sqlite(b, e);
    if (!db)
        return E_CONN_LOST;
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, upsert_sql, -1, &st, NULL);
    if (rc == SQLITE_OK)
        rc = bind_row(st, row);
    if (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_DONE)
        rc = SQLITE_OK;
    int out = 0;
    if (rc != SQLITE_OK) /* a close in classify waits for st (sqlite3_close_v2) */
        out = classify(b, db, rc, "storing a result", e);
    sqlite3_finalize(st);
    return out;
}

const struct backend_db_dialect backend_db_sqlite = {
    .name = "sqlite",
    .create_tables = sqlite_create_tables,
    .upsert = sqlite_upsert,
};
