/* SPDX-License-Identifier: MIT
 * protocol/result.h: the result meta Celery stores for a task (spec §6.2), in
 * the key order and encodings Python writes, whatever backend stores it.
 */
#ifndef CELERIAC_PROTOCOL_RESULT_H
#define CELERIAC_PROTOCOL_RESULT_H

#include <jansson.h>

#include "protocol/serializer.h"

struct buf;

/* --result-serializer: what result meta and chord parts are written in. */
enum result_serializer {
    RESULT_SERIALIZER_JSON = 0,    /* Celery's default result_serializer */
    RESULT_SERIALIZER_MSGPACK,     /* as Celery with result_serializer='msgpack' */
    RESULT_SERIALIZER_AUTO,        /* in kind: the serializer the task arrived in */
};

/* What a result written for a task that arrived in `arrived_in` is encoded in. */
enum serializer result_serializer_pick(enum result_serializer choice, enum serializer arrived_in);

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
    const char *reply_to;      /* rpc://: the client's queue (NULL: nobody to tell) */
    const char *correlation_id; /* rpc://: the reply's correlation id (NULL: the task id) */
};

/* Celery's READY_STATES (SUCCESS, FAILURE, REVOKED): the result is final and
 * date_done is set. */
bool result_state_is_ready(const char *status);
/* Celery's EXCEPTION_STATES (FAILURE, RETRY, REVOKED): the result is an
 * exception dict. */
bool result_state_is_exception(const char *status);

/* Appends the traceback Celery stores with m: m->traceback, or for a FAILURE
 * without one, one made from the exception in m->result. False (nothing
 * appended) when m has none. */
bool result_meta_traceback(struct buf *out, const struct result_meta *m);

/* Appends the meta Celery stores to out, in Python's key order, encoded with
 * s (msgpack output holds NUL bytes: use out->len). */
void result_meta_encode(struct buf *out, const struct result_meta *m, enum serializer s);

/* Appends the reply Celery's rpc:// backend sends to the client's queue:
 * {task_id, status, result, traceback, children}, encoded with s. */
void result_reply_encode(struct buf *out, const struct result_meta *m, enum serializer s);

#endif /* CELERIAC_PROTOCOL_RESULT_H */
