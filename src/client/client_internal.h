/* SPDX-License-Identifier: MIT
 * client/client_internal.h: what the C client's files share: the core
 * (client.c, envelope.c) and the SQL part (sql.c, outbox.c, envelope.c).
 */
#ifndef CELERIAC_CLIENT_INTERNAL_H
#define CELERIAC_CLIENT_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>

#include "celeriac_client.h"

struct buf;

/* The task message (kombu's JSON envelope) a send of `name` with these
 * arguments and options publishes; its task id goes to id. 0, or -1 with
 * the reason in err (arguments that are not JSON of the right shape). */
int client_task_envelope(struct buf *env, const char *name, const char *args_json,
                         const char *kwargs_json, const struct celeriac_send_options *o,
                         char id[37], char *err, size_t errlen);

struct db_conn;
struct err;
struct redis_transport_options;

/* celeriac_client_new_with_transport_options with the options parsed
 * (borrowed, not NULL; util/url.h) and the reason's code in e: -EINVAL for
 * a bad URL or an option that does not fit it (a usage error), else what
 * the connection said. `celeriac call` and `celeriac result` open their
 * client here, so their flags are named in its messages. */
struct celeriac_client *client_new(const char *broker_url, const char *backend_url,
                                   const struct redis_transport_options *broker_options,
                                   const struct redis_transport_options *backend_options,
                                   struct err *e);

/* ---- the SQL part (libceleriac-client-sql) -------------------------------
 * The core client (client.c, libceleriac-client) links neither libpq nor
 * sqlite3. Sending to a sqla+ broker goes through the table below, which
 * only the SQL part (sql.c, with outbox.c) defines; the core refers to it
 * weakly, so it is NULL unless that part is linked in: the static archive
 * is pulled in by `-Wl,--undefined=celeriac_client_sql_v0` in
 * celeriac-client-sql.pc, the shared library is then a DT_NEEDED of the
 * program and binds the reference when the program starts. The worker
 * binary links both. The name carries the table's version: a new field
 * means a new name, so a core never reads a table older than it. */
struct client_sql;

struct client_sql_ops {
    /* Connects to the sqla+ broker url and creates kombu's tables if absent.
     * 0 with *out (freed with close), or < 0 with the reason in e. */
    int (*open)(const char *url, struct client_sql **out, struct err *e);
    /* Inserts the task message (data, len) into queue, committed. 0 or < 0. */
    int (*publish)(struct client_sql *s, const char *queue, const char *data, size_t len,
                   struct err *e);
    /* Closes the connection and frees s. NULL-safe. */
    void (*close)(struct client_sql *s);
};

/* The SQL part's table (static, never freed). Defined (exported, default
 * visibility) by client/sql.c only; client.c declares it again, weak, so
 * that its address is NULL without the SQL part. A function rather than the
 * table itself: no copy relocation, no sanitizer symbol beside it. */
const struct client_sql_ops *celeriac_client_sql_v0(void);

/* Inserts the task message (data, len) into queue of kombu's SQL transport on conn
 * (committed at once unless a transaction is open there); a borrowed
 * connection (the application's) is never closed on failure. 0 or < 0.
 * SQL part only. */
int client_sql_publish(struct db_conn *conn, bool borrowed, const char *queue, const char *data,
                       size_t len, struct err *e);
/* Creates kombu's tables on conn if absent, as a worker does. SQL part only. */
int client_sql_prepare(struct db_conn *conn, struct err *e);

#endif /* CELERIAC_CLIENT_INTERNAL_H */
