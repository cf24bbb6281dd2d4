/* SPDX-License-Identifier: MIT
 * backend/backend.h: what a worker child needs from a result backend, one
 * backend per file behind a table of operations (Redis, rpc://, a database), as
 * broker/broker.h is for brokers. Every operation makes one attempt and
 * returns 0 or E_CONN_LOST / E_REFUSED / another negative code; retry and
 * backoff are the worker's.
 */
#ifndef CELERIAC_BACKEND_BACKEND_H
#define CELERIAC_BACKEND_BACKEND_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "db/conn.h"
#include "protocol/result.h"
#include "util/url.h"

struct backend;
struct broker;

enum backend_kind {
    BACKEND_REDIS,             /* redis:// (the default) */
    BACKEND_RPC,               /* rpc://: replies to the client's queue on the broker */
    BACKEND_DB,                /* db+postgresql://, db+sqlite:///: Celery's database backend */
};

struct backend_config {
    bool enabled;              /* false: results are not stored (no --result-backend) */
    enum backend_kind kind;
    struct redis_url url;      /* parsed --result-backend URL (BACKEND_REDIS) */
    struct db_config db;       /* the result database (BACKEND_DB): kind, url, path, where,
                                  connect and busy timeouts; released by worker_config */
    int expires_s;             /* SETEX ttl; 0 = keep for ever (plain SET) */
    enum result_serializer serializer;
};

enum backend_store_flags {
    BACKEND_NOWAIT = 1 << 0,     /* sent without waiting; backend confirm reads the reply */
};

struct backend_ops {
    const char *name;
    /* Connects (no retry). */
    int (*open)(struct backend *b, struct err *e);
    bool (*is_open)(const struct backend *b);
    /* Stores m (never overwriting a stored SUCCESS when m->redelivered). */
    int (*store)(struct backend *b, const struct result_meta *m, unsigned flags, struct err *e);
    /* A store sent without waiting, or refused for now, is outstanding. */
    bool (*has_pending)(const struct backend *b);
    /* Reads the reply of a store sent without waiting. E_REFUSED: the
     * backend refused it for now; resend sends it again. */
    int (*confirm)(struct backend *b, struct err *e);
    int (*resend)(struct backend *b, struct err *e);
    /* Holds m's store in this process, nothing sent, until flush_held sends
     * every held store and confirms them (0; on an error all stay held, and
     * sending them again is safe) or drop_held forgets them: the results of
     * a batch of transactional tasks, stored right before its commit. NULL
     * where a backend cannot hold (then nothing is batched). */
    int (*hold)(struct backend *b, const struct result_meta *m, struct err *e);
    int (*flush_held)(struct backend *b, struct err *e);
    void (*drop_held)(struct backend *b);
    /* A chord of `size` header members joins under group. */
    int (*chord_size)(struct backend *b, const char *group, size_t size, struct err *e);
    /* Adds a member's part [1, task id, state, result] at index (-1:
     * unknown). When it completes the chord, *parts gets every part in header
     * order (a new reference) and the join is cleared; otherwise NULL. */
    int (*chord_part)(struct backend *b, const char *group, int index, const json_t *part,
                      enum serializer s, json_t **parts, struct err *e);
    /* Leaving: confirms what is outstanding (one reconnect, which resends). */
    void (*leave)(struct backend *b);
    /* Frees everything (closes without further I/O). */
    void (*release)(struct backend *b);
};

struct backend {
    const struct backend_ops *ops;
    const struct backend_config *cfg;  /* borrowed: enabled, expiry, serializer */
    void *impl;                  /* the backend's state */
};

/* Sets b up for the backend cfg names (nothing opened; a disabled backend
 * stores nothing and is always open); rpc:// replies through broker
 * (borrowed, outlives b). */
void backend_init(struct backend *b, const struct backend_config *cfg, struct broker *broker);
/* The rpc:// backend over broker (rpc_backend.c). */
void backend_rpc_ops_init(struct backend *b, const struct backend_config *cfg,
                          struct broker *broker);

/* Celery's database backend (db_backend.c) over cfg->db. */
void backend_db_ops_init(struct backend *b, const struct backend_config *cfg);
/* Fills db from a db+postgresql://... or db+sqlite:///... URL with
 * SQLAlchemy's meaning (db+sqlite:///rel.db relative, db+sqlite:////abs.db
 * absolute); db's strings are owned (worker_config_release frees them). Returns 0
 * or -EINVAL with a one-line, password-free reason in e. Master only. */
int backend_db_parse_url(struct db_config *db, const char *url, struct err *e);

/* What a result of a task that arrived in `arrived_in` is written in. */
enum serializer backend_serializer(const struct backend *b, enum serializer arrived_in);

#endif /* CELERIAC_BACKEND_BACKEND_H */
