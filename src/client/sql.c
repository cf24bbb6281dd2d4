/* SPDX-License-Identifier: MIT
 * client/sql.c: the client's sending to a sqla+ broker (kombu's SQL
 * transport) on a connection of its own, for libceleriac-client-sql. The
 * core client (client.c) reaches it through celeriac_client_sql_v0 only, so
 * that libceleriac-client itself needs neither libpq nor sqlite3.
 */
#include "common.h"
#include "broker/sql.h"
#include "client/client_internal.h"
#include "db/conn.h"

struct client_sql {
    struct db_config cfg;         /* owns url, sqlite_path, where */
    struct db_conn conn;          /* committed inserts of task messages */
};

static void sql_close(struct client_sql *s)
{
    if (!s)
        return;
    if (s->conn.cfg)
        db_conn_close(&s->conn, NULL);
    free(s->cfg.url);
    free(s->cfg.sqlite_path);
    free(s->cfg.where);
    free(s);
}

/* One connection, kombu's tables created if absent. */
static int sql_open(const char *url, struct client_sql **out, struct err *e)
{
    struct client_sql *s = xcalloc(1, sizeof(*s));
    s->cfg.connect_timeout_s = 5;
    s->cfg.busy_timeout_ms = 5000;
    int rc = sql_broker_url_parse(url, &s->cfg, e);
    if (!rc) {
        db_conn_init(&s->conn, &s->cfg, "celeriac client");
        s->conn.quiet = true;
        rc = db_conn_open(&s->conn, 1, NULL, e);
    }
    if (!rc)
        rc = client_sql_prepare(&s->conn, e);
    if (rc) {
        sql_close(s);
        return rc;
    }
    *out = s;
    return 0;
}

static int sql_publish(struct client_sql *s, const char *queue, const char *data, size_t len,
                       struct err *e)
{
    return client_sql_publish(&s->conn, false, queue, data, len, e);
}

__attribute__((visibility("default"))) const struct client_sql_ops *celeriac_client_sql_v0(void)
{
    static const struct client_sql_ops ops = {
        .open = sql_open,
        .publish = sql_publish,
        .close = sql_close,
    };
    return &ops;
}
