/* SPDX-License-Identifier: MIT
 * db/sqlite.c: the SQLite driver: one handle per child, WAL journal, busy
 * timeout, and rollback of a transaction a task left open. A local file
 * cannot be "lost" the way a socket can, so is_lost only checks the handle.
 */
#include "common.h"
#include "db/conn.h"
#include "db/driver.h"
#include "util/time.h"

#include <sqlite3.h>

static int exec_sql(struct db_conn *c, const char *sql, struct err *e)
{
    char *msg = NULL;
    if (sqlite3_exec(c->sqlite, sql, NULL, NULL, &msg) == SQLITE_OK)
        return 0;
    err_set(e, E_DB, "'%s' on '%s' failed: %s", sql, c->cfg->where,
            msg ? msg : sqlite3_errmsg(c->sqlite));
    sqlite3_free(msg);
    return E_DB;
}

/* Turning a new file to WAL takes a lock the busy handler does not wait for,
 * so children opening one new file together would fail; they retry within
 * the busy timeout instead. */
static int set_wal(struct db_conn *c, struct err *e)
{
    int64_t deadline = time_mono_ms() + c->cfg->busy_timeout_ms;
    const char *sql = "PRAGMA journal_mode=WAL";
    int rc;
    while ((rc = sqlite3_exec(c->sqlite, sql, NULL, NULL, NULL)) != SQLITE_OK &&
           (rc & 0xff) == SQLITE_BUSY && time_mono_ms() < deadline)
        time_sleep_ms(10, NULL);
    if (rc == SQLITE_OK)
        return 0;
    return err_set(e, E_DB, "'%s' on '%s' failed: %s", sql, c->cfg->where,
                   sqlite3_errmsg(c->sqlite));
}

static int sqlite_open(struct db_conn *c, struct err *e)
{
    sqlite3 *db = NULL;
    /* NOMUTEX: one thread per child uses the handle; no locking needed. */
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;
    int rc = sqlite3_open_v2(c->cfg->sqlite_path, &db, flags, NULL);
    if (rc != SQLITE_OK) {
        err_set(e, E_CONN_LOST, "open '%s' failed: %s", c->cfg->where,
                db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
        sqlite3_close(db);
        return E_CONN_LOST;
    }
    c->sqlite = db;
    sqlite3_busy_timeout(db, c->cfg->busy_timeout_ms);
    /* WAL lets readers and a writer in different children proceed together;
     * NORMAL sync is durable across crashes of a process in WAL mode. The
     * journal_mode pragma also proves the file is a readable database. */
    struct err pe = {0};
    if (set_wal(c, &pe) ||
        exec_sql(c, "PRAGMA synchronous=NORMAL", &pe)) {
        err_set(e, E_CONN_LOST, "open '%s' failed: %s", c->cfg->where, pe.msg);
        sqlite3_close(db);
        c->sqlite = NULL;
        return E_CONN_LOST;
    }
    return 0;
}

static void sqlite_close(struct db_conn *c)
{
    /* _v2: statements a library failed to finalize keep the handle alive
     * until they are, instead of making the close fail. */
    sqlite3_close_v2(c->sqlite);
    c->sqlite = NULL;
}

/* A SQLite file has no standby. */
static const char *sqlite_read_only(struct db_conn *c)
{
    UNUSED(c);
    return NULL;
}

static bool sqlite_is_lost(struct db_conn *c)
{
    return c->sqlite == NULL;
}

/* SQLite has no peer to wait for: its statements are bounded by the busy
 * timeout, so the deadlines below are not needed. */
static int sqlite_ping(struct db_conn *c, int64_t timeout_ms, struct err *e)
{
    UNUSED(timeout_ms);
    return exec_sql(c, "SELECT 1", e) ? E_CONN_LOST : 0;
}

static int sqlite_reset(struct db_conn *c, int64_t timeout_ms, struct err *e)
{
    UNUSED(timeout_ms);
    if (sqlite3_get_autocommit(c->sqlite))
        return 0;
    return exec_sql(c, "ROLLBACK", e) ? E_CONN_LOST : 0;
}

static void sqlite_cancel(struct db_conn *c)
{
    /* Only sets a flag the running statement checks. */
    sqlite3_interrupt(c->sqlite);
}

const struct db_driver db_sqlite_driver = {
    .name = "sqlite",
    .open = sqlite_open,
    .close = sqlite_close,
    .is_lost = sqlite_is_lost,
    .read_only = sqlite_read_only,
    .ping = sqlite_ping,
    .reset = sqlite_reset,
    .cancel = sqlite_cancel,
};
