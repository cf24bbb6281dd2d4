/* SPDX-License-Identifier: MIT
 * broker/sql_sqlite.c: kombu's tables in an SQLite file (see sql_store.h),
 * in WAL mode with a busy timeout (db/sqlite.c opens it so). Every write is
 * one statement, hence its own short transaction; a claim first looks for a
 * ready row without taking the write lock, so idle children polling an
 * empty queue never queue behind a busy one. There is no NOTIFY: wait polls
 * PRAGMA data_version (it changes when another connection commits), backing
 * off from 1 to 32 ms while nothing changes.
 */
#include "common.h"
#include "broker/sql_store.h"
#include "util/buf.h"
#include "util/log.h"
#include "util/time.h"

#include <sqlite3.h>
#include <time.h>

#define POLL_MIN_MS 1
#define POLL_MAX_MS 32

/* kombu's DDL as SQLAlchemy emits it for SQLite, made idempotent, and the
 * index of ready rows in claim order that celeriac adds. */
static const char schema_sql[] =
    "CREATE TABLE IF NOT EXISTS kombu_queue ("
    " id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, name VARCHAR(200), UNIQUE (name));"
    "CREATE TABLE IF NOT EXISTS kombu_message ("
    " id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, visible BOOLEAN, timestamp DATETIME,"
    " payload TEXT NOT NULL, version SMALLINT NOT NULL, queue_id INTEGER,"
    " CONSTRAINT \"FK_kombu_message_queue\" FOREIGN KEY(queue_id) REFERENCES kombu_queue (id));"
    "CREATE INDEX IF NOT EXISTS ix_kombu_message_visible ON kombu_message (visible);"
    "CREATE INDEX IF NOT EXISTS ix_kombu_message_timestamp_id ON kombu_message (timestamp, id);"
    "CREATE INDEX IF NOT EXISTS ix_kombu_message_timestamp ON kombu_message (timestamp);"
    "CREATE INDEX IF NOT EXISTS celeriac_kombu_message_ready"
    " ON kombu_message (queue_id, timestamp, id) WHERE visible != 0;";

#define KOMBU_COLUMNS "id,payload,queue_id,timestamp,version,visible"

struct sqlite_store {
    int64_t data_version;        /* at the last wait */
    int poll_ms;                 /* the next poll's sleep */
};

static sqlite3 *db(struct sql_store *s)
{
    return s->conn->sqlite;
}

static struct sqlite_store *state(struct sql_store *s)
{
    if (!s->impl)
        s->impl = xcalloc(1, sizeof(struct sqlite_store));
    return s->impl;
}

/* A file locked past the busy timeout, a full disk or a failed write is a
 * state of the file, not of the statement: E_REFUSED, so that an ack or a
 * give-back is asked again with backoff (settle_worth_retrying) instead of
 * being dropped, which left the row claimed until the visibility timeout
 * gave it back and the finished task ran again. */
static int failed(struct sql_store *s, const char *what, struct err *e)
{
    int code = sqlite3_errcode(db(s)) & 0xff;
    int rc = sql_store_failed(s, what, sqlite3_errmsg(db(s)), e);
    if (rc == E_PROTOCOL && (code == SQLITE_BUSY || code == SQLITE_LOCKED ||
                             code == SQLITE_FULL || code == SQLITE_IOERR)) {
        rc = E_REFUSED;
        if (e)
            e->code = rc; /* the message stands */
    }
    return rc;
}

/* Prepares sql and binds the int64 parameters ints[0..n) (1-based). NULL on
 * failure, with the reason in *rc and e. */
static sqlite3_stmt *prepare(struct sql_store *s, const char *what, const char *sql,
                             const int64_t *ints, int n, int *rc, struct err *e)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db(s), sql, -1, &st, NULL) != SQLITE_OK) {
        *rc = failed(s, what, e);
        sqlite3_finalize(st);
        return NULL;
    }
    for (int i = 0; i < n; i++)
        sqlite3_bind_int64(st, i + 1, ints[i]);
    *rc = 0;
    return st;
}

/* Runs a statement that changes rows: 1 when one did, 0 when none, < 0. */
static int run_change(struct sql_store *s, const char *what, const char *sql,
                      const int64_t *ints, int n, const char *text, struct err *e)
{
    int rc;
    sqlite3_stmt *st = prepare(s, what, sql, ints, n, &rc, e);
    if (!st)
        return rc;
    if (text)
        sqlite3_bind_text(st, n + 1, text, -1, SQLITE_STATIC);
    int step = sqlite3_step(st);
    sqlite3_finalize(st);
    if (step != SQLITE_DONE)
        return failed(s, what, e);
    return sqlite3_changes(db(s)) > 0;
}

static int sqlite_prepare(struct sql_store *s, struct err *e)
{
    char *errmsg = NULL;
    if (sqlite3_exec(db(s), schema_sql, NULL, NULL, &errmsg) != SQLITE_OK) {
        int rc = sql_store_failed(s, "creating kombu's tables", errmsg, e);
        sqlite3_free(errmsg);
        return rc;
    }
    int rc;
    sqlite3_stmt *st = prepare(s, "checking kombu's tables",
                               "SELECT group_concat(name, ',') FROM"
                               " (SELECT name FROM pragma_table_info('kombu_message')"
                               "  ORDER BY name)", NULL, 0, &rc, e);
    if (!st)
        return rc;
    char columns[256] = "";
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0))
        snprintf(columns, sizeof(columns), "%s", (const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    if (strcmp(columns, KOMBU_COLUMNS))
        return err_set(e, E_CONFIG, "broker database '%s': table kombu_message has the columns "
                       "(%s), not kombu's (%s)", s->conn->cfg->where, columns, KOMBU_COLUMNS);
    state(s)->poll_ms = POLL_MIN_MS;
    return 0;
}

static int sqlite_queue_id(struct sql_store *s, const char *name, int64_t *id, struct err *e)
{
    int rc = run_change(s, "adding a queue", "INSERT OR IGNORE INTO kombu_queue (name) VALUES (?1)",
                        NULL, 0, name, e);
    if (rc < 0)
        return rc;
    sqlite3_stmt *st = prepare(s, "looking up a queue",
                               "SELECT id FROM kombu_queue WHERE name = ?1", NULL, 0, &rc, e);
    if (!st)
        return rc;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    int step = sqlite3_step(st);
    if (step == SQLITE_ROW)
        *id = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    if (step != SQLITE_ROW)
        return step == SQLITE_DONE
                   ? err_set(e, E_PROTOCOL, "queue '%s' has no row in kombu_queue", name)
                   : failed(s, "looking up a queue", e);
    return 0;
}

static int sqlite_listen(struct sql_store *s, const int64_t *queue_ids, size_t n, struct err *e)
{
    UNUSED(s);
    UNUSED(queue_ids);
    UNUSED(n);
    UNUSED(e);
    return 0; /* polled: see sqlite_wait */
}

/* Whether queue_id has a ready row, read without the write lock (WAL
 * readers never wait for the writer). 1, 0 or < 0. */
static int has_ready(struct sql_store *s, int64_t queue_id, struct err *e)
{
    int rc;
    sqlite3_stmt *st = prepare(s, "looking for a message",
                               "SELECT 1 FROM kombu_message WHERE queue_id = ?1 AND visible != 0"
                               " LIMIT 1", &queue_id, 1, &rc, e);
    if (!st)
        return rc;
    int step = sqlite3_step(st);
    sqlite3_finalize(st);
    if (step == SQLITE_ROW)
        return 1;
    return step == SQLITE_DONE ? 0 : failed(s, "looking for a message", e);
}

static int claim_one(struct sql_store *s, int64_t queue_id, const char *stamp,
                     struct sql_claim *c, struct err *e)
{
    int rc;
    sqlite3_stmt *st = prepare(
        s, "claiming a message",
        "UPDATE kombu_message SET visible = 0, timestamp = ?2,"
        " version = -(abs(version) + 1)"
        " WHERE id = (SELECT id FROM kombu_message WHERE queue_id = ?1 AND visible != 0"
        "             ORDER BY timestamp, id LIMIT 1)"
        " RETURNING id, version, queue_id, payload", &queue_id, 1, &rc, e);
    if (!st)
        return rc;
    sqlite3_bind_text(st, 2, stamp, -1, SQLITE_STATIC);
    int step = sqlite3_step(st);
    if (step == SQLITE_ROW) {
        c->id = sqlite3_column_int64(st, 0);
        c->version = sqlite3_column_int(st, 1);
        c->queue_id = sqlite3_column_int64(st, 2);
        c->redelivered = c->version <= -3;
        const unsigned char *text = sqlite3_column_text(st, 3);
        c->len = (size_t)sqlite3_column_bytes(st, 3);
        c->payload = xmalloc(c->len + 1);
        if (c->len)
            memcpy(c->payload, text, c->len);
        c->payload[c->len] = '\0';
        step = sqlite3_step(st); /* runs the statement to its end: the commit */
    }
    sqlite3_finalize(st);
    if (step != SQLITE_DONE) {
        free(c->payload);
        c->payload = NULL;
        return failed(s, "claiming a message", e);
    }
    return c->payload != NULL;
}

static int sqlite_claim(struct sql_store *s, const int64_t *queue_ids, size_t n,
                        const char *stamp, struct sql_claim *c, struct err *e)
{
    c->payload = NULL;
    for (size_t i = 0; i < n; i++) {
        int rc = has_ready(s, queue_ids[i], e);
        if (rc > 0)
            rc = claim_one(s, queue_ids[i], stamp, c, e);
        if (rc) {
            if (rc > 0)
                state(s)->poll_ms = POLL_MIN_MS;
            return rc;
        }
    }
    return 0;
}

static int data_version(struct sql_store *s, int64_t *v, struct err *e)
{
    int rc;
    sqlite3_stmt *st = prepare(s, "polling", "PRAGMA data_version", NULL, 0, &rc, e);
    if (!st)
        return rc;
    int step = sqlite3_step(st);
    if (step == SQLITE_ROW)
        *v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return step == SQLITE_ROW ? 0 : failed(s, "polling", e);
}

static int sqlite_wait(struct sql_store *s, int timeout_ms, struct err *e)
{
    struct sqlite_store *st = state(s);
    int64_t start = time_mono_ms();
    for (;;) {
        int64_t v = 0;
        int rc = data_version(s, &v, e);
        if (rc)
            return rc;
        if (v != st->data_version) {
            st->data_version = v;
            return 0;
        }
        int64_t left = start + timeout_ms - time_mono_ms();
        if (left <= 0)
            return 0;
        int sleep_ms = st->poll_ms < left ? st->poll_ms : (int)left;
        nanosleep(&(struct timespec){.tv_sec = sleep_ms / 1000,
                                     .tv_nsec = (long)(sleep_ms % 1000) * 1000000},
                  NULL);
        if (st->poll_ms < POLL_MAX_MS)
            st->poll_ms *= 2;
    }
}

static int sqlite_remove(struct sql_store *s, int64_t id, int version, struct err *e)
{
    int64_t p[] = {id, version};
    return run_change(s, "acking a message",
                      "DELETE FROM kombu_message WHERE id = ?1 AND version = ?2", p, 2, NULL, e);
}

static int sqlite_give_back(struct sql_store *s, int64_t id, int version, struct err *e)
{
    int64_t p[] = {id, version};
    return run_change(s, "restoring a message",
                      "UPDATE kombu_message SET visible = 1, timestamp = NULL,"
                      " version = min(-version + 1, 32001)"
                      " WHERE id = ?1 AND version = ?2 AND visible = 0", p, 2, NULL, e);
}

static int sqlite_read(struct sql_store *s, int64_t id, int version, char **payload,
                       int64_t *queue_id, struct err *e)
{
    int64_t p[] = {id, version};
    int rc;
    sqlite3_stmt *st = prepare(s, "reading a message",
                               "SELECT payload, queue_id FROM kombu_message"
                               " WHERE id = ?1 AND version = ?2 AND visible = 0", p, 2, &rc, e);
    if (!st)
        return rc;
    int step = sqlite3_step(st);
    if (step == SQLITE_ROW) {
        const char *text = (const char *)sqlite3_column_text(st, 0);
        *payload = xstrdup(text ? text : "");
        *queue_id = sqlite3_column_int64(st, 1);
    }
    sqlite3_finalize(st);
    if (step == SQLITE_ROW)
        return 1;
    return step == SQLITE_DONE ? 0 : failed(s, "reading a message", e);
}

static int exec_simple(struct sql_store *s, const char *sql, struct err *e)
{
    if (sqlite3_exec(db(s), sql, NULL, NULL, NULL) != SQLITE_OK)
        return failed(s, sql, e);
    return 0;
}

static int sqlite_replace(struct sql_store *s, int64_t id, int version, const char *payload,
                          struct err *e)
{
    int rc = exec_simple(s, "BEGIN IMMEDIATE", e);
    if (rc)
        return rc;
    int64_t p[] = {id, version};
    rc = run_change(s, "requeueing a message",
                    "INSERT INTO kombu_message (visible, timestamp, payload, version, queue_id)"
                    " SELECT 1, NULL, ?3, 1, queue_id FROM kombu_message"
                    " WHERE id = ?1 AND version = ?2 AND visible = 0", p, 2, payload, e);
    if (rc > 0)
        rc = run_change(s, "requeueing a message",
                        "DELETE FROM kombu_message WHERE id = ?1 AND version = ?2", p, 2, NULL, e);
    if (rc < 0 || exec_simple(s, rc > 0 ? "COMMIT" : "ROLLBACK", e)) {
        sqlite3_exec(db(s), "ROLLBACK", NULL, NULL, NULL);
        return rc < 0 ? rc : failed(s, "requeueing a message", e);
    }
    return rc;
}

static int sqlite_touch(struct sql_store *s, const int64_t *ids, const int *versions, size_t n,
                        const char *stamp, struct err *e)
{
    for (size_t i = 0; i < n; i++) {
        int64_t p[] = {ids[i], versions[i]};
        int rc = run_change(s, "keeping a held message",
                            "UPDATE kombu_message SET timestamp = ?3"
                            " WHERE id = ?1 AND version = ?2 AND visible = 0", p, 2, stamp, e);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* Gives back the celeriac claims matching `where` (on the stamp ?1); the
 * stamps are text of one fixed form, so they compare as text. */
static int give_back_where(struct sql_store *s, const char *what, const char *where,
                           const char *stamp, int *given, struct err *e)
{
    char sql[512];
    snprintf(sql, sizeof(sql),
             "UPDATE kombu_message SET visible = 1, timestamp = NULL,"
             " version = min(-version + 1, 32001)"
             " WHERE visible = 0 AND version < 0 AND %s", where);
    int rc = run_change(s, what, sql, NULL, 0, stamp, e);
    if (rc < 0)
        return rc;
    *given = sqlite3_changes(db(s));
    return 0;
}

static int sqlite_give_back_expired(struct sql_store *s, const char *before, int *given,
                                    struct err *e)
{
    return give_back_where(s, "restoring messages past the visibility timeout",
                           "timestamp < ?1", before, given, e);
}

static int sqlite_give_back_stamped(struct sql_store *s, const char *stamp, int *given,
                                    struct err *e)
{
    return give_back_where(s, "restoring a claim", "timestamp = ?1", stamp, given, e);
}

static int sqlite_insert(struct sql_store *s, int64_t queue_id, const char *payload, size_t len,
                         struct err *e)
{
    UNUSED(len);
    int rc = run_change(s, "publishing a message",
                        "INSERT INTO kombu_message (visible, timestamp, payload, version, queue_id)"
                        " VALUES (1, NULL, ?2, 1, ?1)", &queue_id, 1, payload, e);
    return rc < 0 ? rc : 0;
}

static int sqlite_begin(struct sql_store *s, struct err *e)
{
    return exec_simple(s, "BEGIN IMMEDIATE", e);
}

static int sqlite_commit(struct sql_store *s, struct err *e)
{
    return exec_simple(s, "COMMIT", e);
}

static void sqlite_rollback(struct sql_store *s)
{
    sqlite3_exec(db(s), "ROLLBACK", NULL, NULL, NULL);
}

static bool sqlite_in_transaction(struct sql_store *s)
{
    return !sqlite3_get_autocommit(db(s));
}

const struct sql_store_ops sql_sqlite_store_ops = {
    .prepare = sqlite_prepare,
    .queue_id = sqlite_queue_id,
    .listen = sqlite_listen,
    .claim = sqlite_claim,
    .wait = sqlite_wait,
    .remove = sqlite_remove,
    .give_back = sqlite_give_back,
    .read = sqlite_read,
    .replace = sqlite_replace,
    .touch = sqlite_touch,
    .give_back_expired = sqlite_give_back_expired,
    .give_back_stamped = sqlite_give_back_stamped,
    .insert = sqlite_insert,
    .begin = sqlite_begin,
    .commit = sqlite_commit,
    .rollback = sqlite_rollback,
    .in_transaction = sqlite_in_transaction,
};
