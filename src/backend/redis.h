/* SPDX-License-Identifier: MIT
 * backend/redis.h: Celery's Redis result backend, as Python's AsyncResult
 * reads it: celery-task-meta-<id> written with SETEX and PUBLISHed in the same
 * atomic step, never overwriting a stored SUCCESS. Child processes only.
 */
#ifndef CELERIAC_BACKEND_REDIS_H
#define CELERIAC_BACKEND_REDIS_H

#include <jansson.h>

#include "protocol/serializer.h"
#include "util/redis_link.h"
#include "util/url.h"

struct buf;

/* --result-serializer: what result meta and chord parts are written in. */
enum result_serializer {
    RESULT_SERIALIZER_JSON = 0,    /* Celery's default result_serializer */
    RESULT_SERIALIZER_MSGPACK,     /* as Celery with result_serializer='msgpack' */
    RESULT_SERIALIZER_AUTO,        /* in kind: the serializer the task arrived in */
};

struct backend_config {
    bool enabled;              /* false: results are not stored (no --result-backend) */
    struct redis_url url;      /* parsed --result-backend URL */
    int expires_s;             /* SETEX ttl; 0 = keep for ever (plain SET) */
    enum result_serializer serializer;
};

struct backend_redis {
    struct redis_link link;
    const struct backend_config *cfg;   /* borrowed */
    struct buf *scratch;                /* meta JSON of the last store (kept until confirmed) */
    struct buf *key;                    /* its key */
    bool unconfirmed;                   /* the last store was sent, its reply not yet read */
    bool check_existing;                /* the last store keeps a stored SUCCESS (script) */
    bool refused;                       /* the last store was refused (E_REFUSED): it is
                                           sent again before any other */
    int replies;                        /* replies the last store's commands give */
};

/* What a stored result says. */
struct result_meta {
    const char *status;        /* "SUCCESS", "FAILURE", "RETRY", "REVOKED", "STARTED" */
    json_t *result;            /* borrowed: the value, or an exception dict */
    const char *traceback;     /* text, or NULL: a FAILURE gets one made from result */
    const char *task_name;     /* for that traceback only (not stored as a key); may be NULL */
    const char *task_id;
    const char *parent_id;     /* NULL = omitted */
    const char *group_id;      /* NULL = omitted */
    bool redelivered;          /* the message may have run before: never overwrite SUCCESS */
    json_t *children;          /* borrowed: result tuples of the tasks it sent (callbacks,
                                  the next chain step) as Celery stores them, or NULL */
    enum serializer arrived_in; /* the task message's serializer (JSON when unknown), for
                                  RESULT_SERIALIZER_AUTO */
};

void backend_redis_init(struct backend_redis *b, const struct backend_config *cfg);
void backend_redis_release(struct backend_redis *b, const char *reason);
/* Connects (no retry). Returns 0 or E_CONN_LOST. A disabled backend opens nothing. */
int backend_redis_open(struct backend_redis *b, struct err *e);

/* What cfg writes a result in for a task that arrived in `arrived_in`. */
enum serializer backend_redis_serializer(const struct backend_config *cfg,
                                         enum serializer arrived_in);

/* Appends the meta Celery stores (spec §6.2) to out, in Python's key order,
 * encoded with s (msgpack output holds NUL bytes: use out->len). */
void result_meta_encode(struct buf *out, const struct result_meta *m, enum serializer s);

/* Stores m: GET-check, SETEX and PUBLISH in one atomic script. Returns 0 (also
 * when an existing SUCCESS was kept), E_CONN_LOST, E_REFUSED (retry later) or
 * E_PROTOCOL. */
int backend_redis_store(struct backend_redis *b, const struct result_meta *m, struct err *e);
/* The same store, sent without waiting for its reply; the reply is checked
 * before the next store, and if the connection dies first the store is sent
 * again after the next backend_redis_open (a stored SUCCESS is never
 * overwritten, so repeating it is safe). Returns 0 or E_CONN_LOST. */
int backend_redis_store_send(struct backend_redis *b, const struct result_meta *m, struct err *e);
/* Reads the reply of a sent store. 0, E_CONN_LOST, or E_REFUSED (Redis
 * refused it for now: b->refused is set and backend_redis_resend retries it). */
int backend_redis_confirm(struct backend_redis *b, struct err *e);
/* Sends the refused last store again and waits for it. 0 (also when nothing
 * was refused), E_CONN_LOST or E_REFUSED. */
int backend_redis_resend(struct backend_redis *b, struct err *e);

#endif /* CELERIAC_BACKEND_REDIS_H */
