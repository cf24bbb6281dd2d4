/* SPDX-License-Identifier: MIT
 * backend/db.h: Celery's database result backend inside celeriac: the row a
 * result becomes in celery_taskmeta, and what each SQL dialect (db_pg.c,
 * db_sqlite.c) does with it. Only db_backend.c and the dialects include this.
 * Child processes only.
 */
#ifndef CELERIAC_BACKEND_DB_H
#define CELERIAC_BACKEND_DB_H

#include "db/conn.h"

struct buf;
struct backend_db;

/* One celery_taskmeta row as Celery's DatabaseBackend._update_result writes
 * it. The extended columns (name, args, kwargs, worker, retries, queue) are
 * always NULL: Celery sets them only with result_extended, which celeriac
 * does not implement. */
struct db_result_row {
    const char *task_id;
    const char *status;
    const struct buf *result;  /* the pickled result (PickleType), or NULL for None,
                                  which PickleType stores as SQL NULL */
    const char *date_done;     /* "YYYY-MM-DD HH:MM:SS.ffffff" naive UTC, or NULL */
    const char *traceback;     /* or NULL */
    bool keep_success;         /* a stored SUCCESS is left as it is */
};

struct backend_db_dialect {
    const char *name;
    /* Creates the sequences and tables that are missing, as SQLAlchemy's
     * create_all does for Celery's models. 0, E_CONN_LOST, E_REFUSED (busy,
     * try again) or E_DB. */
    int (*create_tables)(struct backend_db *b, struct err *e);
    /* Inserts the row or updates the one with its task_id in one statement.
     * 0 (also when a stored SUCCESS was kept), E_CONN_LOST (the connection
     * is closed), E_REFUSED (try again: busy, full, table gone) or E_DB. */
    int (*upsert)(struct backend_db *b, const struct db_result_row *row, struct err *e);
};

extern const struct backend_db_dialect backend_db_pg;
extern const struct backend_db_dialect backend_db_sqlite;

struct backend_db {
    struct db_conn conn;                       /* the child's own result connection */
    const struct backend_db_dialect *dialect;  /* picked by conn's kind */
    bool tables_ready;                         /* create_tables ran on this connection */
};

/* A dialect found the connection gone (the reason already in e): closes it
 * through db/conn.c's one close path, so the worker's retry reopens it.
 * Returns E_CONN_LOST. */
int backend_db_lost(struct backend_db *b, struct err *e);

#endif /* CELERIAC_BACKEND_DB_H */
