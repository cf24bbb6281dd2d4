/* SPDX-License-Identifier: MIT
 * backend/redis.h: Celery's Redis result backend, as Python's AsyncResult
 * reads it: celery-task-meta-<id> written with SETEX and PUBLISHed in the same
 * atomic step, never overwriting a stored SUCCESS. Child processes only.
 */
#ifndef CELERIAC_BACKEND_REDIS_H
#define CELERIAC_BACKEND_REDIS_H

#include <jansson.h>

#include "backend/backend.h"
#include "protocol/result.h"
#include "util/redis_link.h"
#include "util/url.h"

struct buf;


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
    struct held_result *held;           /* stores held for a batch's commit */
    size_t n_held, cap_held;
};


void backend_redis_init(struct backend_redis *b, const struct backend_config *cfg);
void backend_redis_release(struct backend_redis *b, const char *reason);
/* Connects (no retry). Returns 0 or E_CONN_LOST. A disabled backend opens nothing. */
int backend_redis_open(struct backend_redis *b, struct err *e);

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

/* Holds m's store in this process (encoded, nothing sent) until
 * backend_redis_flush_held. 0. */
int backend_redis_hold(struct backend_redis *b, const struct result_meta *m);
/* Sends every held store in one pipeline and reads every reply: 0 once all
 * are stored (then none is held), or E_CONN_LOST, E_REFUSED, E_PROTOCOL
 * with all still held (sending them again is safe). */
int backend_redis_flush_held(struct backend_redis *b, struct err *e);
/* Forgets the held stores unsent. */
void backend_redis_drop_held(struct backend_redis *b);

struct backend;
/* Redis behind backend.h (redis_backend.c): sets b up over cfg. */
void backend_redis_ops_init(struct backend *b, const struct backend_config *cfg);

#endif /* CELERIAC_BACKEND_REDIS_H */
