/* SPDX-License-Identifier: MIT
 * celeriac_client.h: sending Celery tasks from C and reading their results,
 * as Python's `app.send_task(...)` and `AsyncResult.get()` do. A message sent
 * here is run by any Celery worker (Python or celeriac) consuming the queue.
 *
 * Two libraries, one header:
 * - libceleriac-client (`pkg-config --cflags --libs celeriac-client`;
 *   `--static` for libceleriac-client.a): celeriac_client_new (and
 *   celeriac_client_new_with_transport_options), celeriac_client_free,
 *   celeriac_send and celeriac_wait on Redis and RabbitMQ. It needs neither
 *   libpq nor sqlite3.
 * - libceleriac-client-sql (`pkg-config --cflags --libs celeriac-client-sql`,
 *   which brings libceleriac-client, libpq and sqlite3 with it): the outbox
 *   functions celeriac_send_pg and celeriac_send_sqlite, and sending to a
 *   sqla+ broker (kombu's SQL transport) with celeriac_client_new. Without
 *   it linked in, celeriac_client_new on a sqla+ URL fails with "sqla+ broker
 *   needs the client's SQL part: link libceleriac-client-sql (pkg-config
 *   --libs celeriac-client-sql)". Link it; a dlopen() of it after start is
 *   not seen.
 * In the tree: build/libceleriac-client.a (+ build/libceleriac-client-sql.a),
 * or build/libceleriac.a with `pkg-config --libs hiredis jansson librabbitmq
 * msgpack openssl libpq sqlite3`. A client is used by one thread at a time;
 * create one per thread or process (never share one across fork).
 */
#ifndef CELERIAC_CLIENT_H
#define CELERIAC_CLIENT_H

#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

struct celeriac_client;

/* Options of one send. Zero-initialise and set what you need. */
struct celeriac_send_options {
    const char *queue;        /* routing key / queue; NULL = "celery" */
    const char *task_id;      /* NULL = a fresh UUID4 */
    double countdown;         /* seconds from now before it may run; 0 = now */
    double eta;               /* absolute Unix time; overrides countdown when > 0 */
    double expires;           /* seconds from now after which it is not run; 0 = never */
    int priority;             /* 0..9; on Redis 0 is served first */
    double time_limit;        /* hard limit in seconds; 0 = the worker's */
    double soft_time_limit;   /* soft limit in seconds; 0 = the worker's */
    bool ignore_result;       /* ask the worker not to store the result */
    bool subscribe;           /* subscribe to the result before sending, for celeriac_wait */
};

/* Connects to the broker (and the result backend, Redis, when backend_url is
 * not NULL). Returns NULL with a one-line reason in err (errlen bytes) on
 * failure. The broker is redis://, amqp:// or, with libceleriac-client-sql
 * linked in, sqla+postgresql:// or sqla+sqlite:///; a sentinel:// broker or
 * result backend needs celeriac_client_new_with_transport_options (below)
 * for its master_name. libceleriac-client. */
struct celeriac_client *celeriac_client_new(const char *broker_url, const char *backend_url,
                                            char *err, size_t errlen);
/* As celeriac_client_new, with kombu's broker_transport_options and Celery's
 * result_backend_transport_options for a Redis broker and result backend,
 * each a NULL-terminated array of "KEY=VALUE" strings (NULL = none; all
 * borrowed, read during the call only), the keys and values the worker's
 * --broker-transport-option and --result-backend-transport-option take:
 *   master_name=NAME           the master the sentinels name; required with a
 *                              sentinel://h1:26379;sentinel://h2:26379 URL
 *                              and refused with any other
 *   socket_timeout=SECONDS     how long a server may stay silent (default 30)
 *   socket_connect_timeout=SECONDS  TCP connect limit (default 5)
 * An unknown key, a bad value, or an option for an amqp:// or sqla+ broker
 * (or for no result backend) fails with a line naming it in err, as does a
 * sentinel:// URL without master_name. Example:
 *   const char *const opts[] = {"master_name=mymaster", NULL};
 *   c = celeriac_client_new_with_transport_options(
 *       "sentinel://10.0.0.1:26379;sentinel://10.0.0.2:26379", NULL, opts, NULL,
 *       err, sizeof(err));
 * libceleriac-client. */
struct celeriac_client *celeriac_client_new_with_transport_options(
    const char *broker_url, const char *backend_url, const char *const *broker_options,
    const char *const *backend_options, char *err, size_t errlen);
/* Closes the connections and frees the client. NULL-safe. libceleriac-client. */
void celeriac_client_free(struct celeriac_client *client);

/* Sends task `name` with positional args (a JSON array text, NULL = []) and
 * keyword args (a JSON object text, NULL = {}). Writes the task id (36
 * characters and a NUL) to id_out. Returns 0, or -1 with the reason in err.
 * libceleriac-client. */
int celeriac_send(struct celeriac_client *client, const char *name, const char *args_json,
                  const char *kwargs_json, const struct celeriac_send_options *options,
                  char id_out[37], char *err, size_t errlen);

/* Waits up to timeout seconds for the task's result (SUCCESS, FAILURE or
 * REVOKED). On 0, *meta_json holds the stored meta as JSON (status, result,
 * traceback, task_id, ...), also when a worker stored it as msgpack
 * (--result-serializer); the caller frees it with free(). Returns -1 with
 * the reason in err on timeout or error. libceleriac-client. */
int celeriac_wait(struct celeriac_client *client, const char *task_id, double timeout,
                  char **meta_json, char *err, size_t errlen);

/* ---- the transactional outbox: libceleriac-client-sql ----------------------
 * With kombu's SQL transport as the broker (sqla+postgresql://,
 * sqla+sqlite:///), a task can be enqueued inside the application's own
 * transaction: the message is inserted into kombu's tables through the
 * application's connection and not committed here, so it exists exactly
 * when the transaction that wrote the application's data commits (and a
 * rollback takes it back). On PostgreSQL the worker is woken at the commit.
 * The tables must exist already (any worker or Python app on that database
 * creates them). Same arguments and results as celeriac_send, with
 * options->subscribe ignored. From Python or SQL on PostgreSQL:
 * SELECT celeriac_enqueue('queue', 'task.name', '[args]', '{kwargs}').
 * Both are in libceleriac-client-sql (`pkg-config celeriac-client-sql`),
 * not in libceleriac-client. The handle is borrowed: never closed here. */
typedef struct pg_conn PGconn;
typedef struct sqlite3 sqlite3;

int celeriac_send_pg(PGconn *conn, const char *name, const char *args_json,
                     const char *kwargs_json, const struct celeriac_send_options *options,
                     char id_out[37], char *err, size_t errlen);
int celeriac_send_sqlite(sqlite3 *db, const char *name, const char *args_json,
                         const char *kwargs_json, const struct celeriac_send_options *options,
                         char id_out[37], char *err, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif /* CELERIAC_CLIENT_H */
