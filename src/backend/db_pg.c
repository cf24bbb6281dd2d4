/* SPDX-License-Identifier: MIT
 * backend/db_pg.c: the PostgreSQL dialect of the database result backend
 * (libpq directly: the db driver only opens, checks and closes handles).
 * The DDL is what SQLAlchemy 1.4's create_all emits for Celery 5.2's models.
 */
#include "common.h"
#include "backend/db.h"
#include "util/buf.h"

#include <libpq-fe.h>

/* Sequences before tables, as create_all orders them; both tables, since
 * Celery creates the group table too. The advisory lock makes children that
 * start together create them once; IF NOT EXISTS leaves a Python-made
 * schema as it is. */
static const char create_sql[] =
    "BEGIN;"
    "SET LOCAL client_min_messages = warning;" /* no "already exists, skipping" notices */
    "SELECT pg_advisory_xact_lock(hashtext('celeriac: celery result tables'));"
    "CREATE SEQUENCE IF NOT EXISTS task_id_sequence;"
    "CREATE SEQUENCE IF NOT EXISTS taskset_id_sequence;"
    "CREATE TABLE IF NOT EXISTS celery_taskmeta ("
    " id INTEGER NOT NULL, task_id VARCHAR(155), status VARCHAR(50), result BYTEA,"
    " date_done TIMESTAMP WITHOUT TIME ZONE, traceback TEXT, name VARCHAR(155), args BYTEA,"
    " kwargs BYTEA, worker VARCHAR(155), retries INTEGER, queue VARCHAR(155),"
    " PRIMARY KEY (id), UNIQUE (task_id));"
    "CREATE TABLE IF NOT EXISTS celery_tasksetmeta ("
    " id INTEGER NOT NULL, taskset_id VARCHAR(155), result BYTEA,"
    " date_done TIMESTAMP WITHOUT TIME ZONE, PRIMARY KEY (id), UNIQUE (taskset_id));"
    "COMMIT;";

/* Celery loads the row by task_id, then updates it or inserts one (id from
 * task_id_sequence, as SQLAlchemy asks for it); one upsert does the same
 * atomically. Every column is set, the extended ones to NULL, as
 * _update_result does without result_extended. $6: keep a stored SUCCESS. */
static const char upsert_sql[] =
    "INSERT INTO celery_taskmeta (id, task_id, status, result, date_done, traceback,"
    " name, args, kwargs, worker, retries, queue)"
    " VALUES (nextval('task_id_sequence'), $1, $2, $3, $4, $5,"
    " NULL, NULL, NULL, NULL, NULL, NULL)"
    " ON CONFLICT (task_id) DO UPDATE SET status = EXCLUDED.status,"
    " result = EXCLUDED.result, date_done = EXCLUDED.date_done,"
    " traceback = EXCLUDED.traceback, name = NULL, args = NULL, kwargs = NULL,"
    " worker = NULL, retries = NULL, queue = NULL"
    " WHERE NOT $6 OR celery_taskmeta.status IS DISTINCT FROM 'SUCCESS'";

enum { OID_BOOL = 16, OID_BYTEA = 17, OID_TEXT = 25, OID_TIMESTAMP = 1114 };

/* Failures that pass: serialization, deadlock, lock timeout, a cancelled
 * statement, a read-only standby, out of disk or memory (class 53), and a
 * table dropped under us (created again before the next try). */
static bool sqlstate_is_transient(const char *state)
{
    static const char *const states[] = {"40001", "40P01", "55P03", "57014", "25006", "42P01"};
    if (!state)
        return false;
    for (size_t i = 0; i < ARRAY_SIZE(states); i++)
        if (!strcmp(state, states[i]))
            return true;
    return !strncmp(state, "53", 2);
}

/* 0 for a good result r (NULL allowed), else the error class, e filled with
 * "<what> on '<where>' failed: <server text>". Does not clear r. */
static int check_result(struct backend_db *b, PGconn *pg, PGresult *r, const char *what,
                        struct err *e)
{
    ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK)
        return 0;
    const char *state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    char msg[ERR_MSG_MAX];
    snprintf(msg, sizeof(msg), "%s", r ? PQresultErrorMessage(r) : PQerrorMessage(pg));
    for (char *p = msg; *p; p++) /* libpq's text spans lines; a log record is one */
        if (*p == '\n' || *p == '\t')
            *p = ' ';
    size_t n = strlen(msg);
    while (n && msg[n - 1] == ' ')
        msg[--n] = '\0';
    bool lost = PQstatus(pg) == CONNECTION_BAD || db_pg_sqlstate_is_loss(state);
    int code = lost ? E_CONN_LOST : sqlstate_is_transient(state) ? E_REFUSED : E_DB;
    err_set(e, code, "%s on '%s' failed: %s", what, b->conn.cfg->where, msg);
    if (state && !strcmp(state, "42P01"))
        b->tables_ready = false;
    return lost ? backend_db_lost(b, e) : code;
}

static PGconn *live_pg(struct backend_db *b, struct err *e)
{
    PGconn *pg = db_conn_pg(&b->conn);
    if (!pg)
        err_set(e, E_CONN_LOST, "result database '%s' is not connected", b->conn.cfg->where);
    return pg;
}

static int pg_create_tables(struct backend_db *b, struct err *e)
{
    PGconn *pg = live_pg(b, e);
    if (!pg)
        return E_CONN_LOST;
    PGresult *r = PQexec(pg, create_sql);
    int rc = check_result(b, pg, r, "creating celery_taskmeta", e);
    PQclear(r);
    if (rc && rc != E_CONN_LOST && PQtransactionStatus(pg) != PQTRANS_IDLE)
        PQclear(PQexec(pg, "ROLLBACK")); /* the error left the transaction open */
    return rc;
}

static int pg_upsert(struct backend_db *b, const struct db_result_row *row, struct err *e)
{
    if (row->result && row->result->len > INT32_MAX)
        return err_set(e, E_PROTOCOL, "result of %s is too large to store (%zu bytes)",
                       row->task_id, row->result->len);
    PGconn *pg = live_pg(b, e);
    if (!pg)
        return E_CONN_LOST;
    const Oid types[] = {OID_TEXT, OID_TEXT, OID_BYTEA, OID_TIMESTAMP, OID_TEXT, OID_BOOL};
    const char *values[] = {row->task_id, row->status, row->result ? row->result->data : NULL,
                            row->date_done,
                            row->traceback, row->keep_success ? "t" : "f"};
    int lengths[] = {0, 0, row->result ? (int)row->result->len : 0, 0, 0, 0};
    int formats[] = {0, 0, 1, 0, 0, 0}; /* the pickle goes as binary bytea */
    PGresult *r = PQexecParams(pg, upsert_sql, 6, types, values, lengths, formats, 0);
    int rc = check_result(b, pg, r, "storing a result", e);
    PQclear(r);
    return rc;
}

const struct backend_db_dialect backend_db_pg = {
    .name = "postgresql",
    .create_tables = pg_create_tables,
    .upsert = pg_upsert,
};
