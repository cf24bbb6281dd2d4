/* SPDX-License-Identifier: MIT
 * client/client_internal.h: what the C client's files share.
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

/* Inserts the task message env into queue of kombu's SQL transport on conn
 * (committed at once unless a transaction is open there); a borrowed
 * connection (the application's) is never closed on failure. 0 or < 0. */
int client_sql_publish(struct db_conn *conn, bool borrowed, const char *queue,
                       const struct buf *env, struct err *e);
/* Creates kombu's tables on conn if absent, as a worker does. */
int client_sql_prepare(struct db_conn *conn, struct err *e);

#endif /* CELERIAC_CLIENT_INTERNAL_H */
