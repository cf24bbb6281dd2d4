/* SPDX-License-Identifier: MIT
 * client/outbox.c: the transactional outbox (celeriac_send_pg,
 * celeriac_send_sqlite): a task message inserted into kombu's SQL transport
 * tables through the application's own connection, in whatever transaction
 * it has open, and never committed here, so the task exists exactly when
 * the application's data does. The statements are the SQL transport's
 * (broker/sql_store.h), on a handle this file borrows and never closes.
 * Part of libceleriac-client-sql, with sql.c; not in libceleriac-client.
 */
#include "common.h"
#include "celeriac_client.h"
#include "broker/sql_store.h"
#include "client/client_internal.h"
#include "util/buf.h"

#define API __attribute__((visibility("default")))

static void set_err(char *err, size_t errlen, const char *msg)
{
    if (err && errlen)
        snprintf(err, errlen, "%s", msg);
}

int client_sql_publish(struct db_conn *conn, bool borrowed, const char *queue, const char *data,
                       size_t len, struct err *e)
{
    struct sql_store s = {.ops = sql_store_ops_for(conn), .conn = conn, .borrowed = borrowed};
    int64_t queue_id = 0;
    if (strlen(queue) > SQL_QUEUE_NAME_MAX)
        return err_set(e, -EINVAL, "queue name longer than kombu's %d characters",
                       SQL_QUEUE_NAME_MAX);
    int rc = s.ops->queue_id(&s, queue, &queue_id, e);
    if (!rc)
        rc = s.ops->insert(&s, queue_id, data, len, e);
    free(s.impl); /* the dialect's state of this one store (SQLite's), as st_release frees it */
    return rc;
}

int client_sql_prepare(struct db_conn *conn, struct err *e)
{
    struct sql_store s = {.ops = sql_store_ops_for(conn), .conn = conn};
    int rc = s.ops->prepare(&s, e);
    free(s.impl); /* the dialect's state of this one store (SQLite's), as st_release frees it */
    return rc;
}

static int send_on(struct db_conn *conn, const char *name, const char *args_json,
                   const char *kwargs_json, const struct celeriac_send_options *o,
                   char id_out[37], char *err, size_t errlen)
{
    static const struct celeriac_send_options none;
    if (!o)
        o = &none;
    struct buf env = BUF_INIT;
    char id[37];
    if (client_task_envelope(&env, name, args_json, kwargs_json, o, id, err, errlen))
        return -1;
    struct err e = {0};
    int rc = client_sql_publish(conn, true, o->queue ? o->queue : "celery", env.data, env.len,
                                &e);
    buf_release(&env);
    if (rc) {
        set_err(err, errlen, e.msg);
        return -1;
    }
    memcpy(id_out, id, 37);
    return 0;
}

API int celeriac_send_pg(PGconn *pg, const char *name, const char *args_json,
                         const char *kwargs_json, const struct celeriac_send_options *options,
                         char id_out[37], char *err, size_t errlen)
{
    if (!pg) {
        set_err(err, errlen, "no PostgreSQL connection");
        return -1;
    }
    struct db_config cfg = {.kind = DB_POSTGRES, .where = (char *)"the application's connection"};
    struct db_conn conn = {.cfg = &cfg, .pg = pg, .owner = getpid()};
    return send_on(&conn, name, args_json, kwargs_json, options, id_out, err, errlen);
}

API int celeriac_send_sqlite(sqlite3 *db, const char *name, const char *args_json,
                             const char *kwargs_json, const struct celeriac_send_options *options,
                             char id_out[37], char *err, size_t errlen)
{
    if (!db) {
        set_err(err, errlen, "no SQLite connection");
        return -1;
    }
    struct db_config cfg = {.kind = DB_SQLITE, .where = (char *)"the application's connection"};
    struct db_conn conn = {.cfg = &cfg, .sqlite = db, .owner = getpid()};
    return send_on(&conn, name, args_json, kwargs_json, options, id_out, err, errlen);
}
