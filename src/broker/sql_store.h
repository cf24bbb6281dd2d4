/* SPDX-License-Identifier: MIT
 * broker/sql_store.h: kombu's SQLAlchemy transport tables (kombu_queue,
 * kombu_message) as a message store, one implementation per database
 * (sql_pg.c, sql_sqlite.c) behind a table of statements; sql_transport.c
 * makes a broker of it and never names a database.
 *
 * How celeriac marks its claims. kombu claims a row by setting visible =
 * false and bumping version (SQLAlchemy's optimistic lock), and never
 * touches it again: its ack does nothing in the database and its restore
 * inserts a new row. A row kombu claimed therefore stays invisible with a
 * positive version for ever. celeriac claims with a negative version
 * (-(v + 1)) and deletes the row on ack, so that:
 *   - invisible rows with a negative version are exactly the messages some
 *     celeriac process holds, and only those are ever given back by the
 *     visibility timeout (a Python worker's finished rows are left alone);
 *   - the version at claim names one claim: "id:version" is the delivery
 *     tag, and every settle is a compare-and-swap on it, so a process that
 *     lost its claim (given back by a sweep, claimed by another) cannot ack
 *     or restore the new holder's message;
 *   - a visible row with version >= 2 was given back by celeriac, hence
 *     delivered before (redelivered).
 * Giving back sets visible, a NULL timestamp and version -v + 1: the row
 * keeps its id and so its place at the front of kombu's ORDER BY timestamp,
 * id.
 *
 * Where the database has row locks that outlive a statement (PostgreSQL),
 * a row may also be taken by lock alone: an open transaction holds it,
 * unchanged, until the ack deletes it and commits (an early ack, at the
 * task's start), a claim as above replaces the lock (anything that waits),
 * or a rollback (or the death of the process) leaves it as it was. Its tag
 * is "id:+version", which no claim has.
 */
#ifndef CELERIAC_BROKER_SQL_STORE_H
#define CELERIAC_BROKER_SQL_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "db/conn.h"

/* kombu's VARCHAR(200) queue name. */
#define SQL_QUEUE_NAME_MAX 200

/* One claim: a row this process now holds. */
struct sql_claim {
    int64_t id;
    int version;                 /* the row's version after the claim (negative) */
    int64_t queue_id;
    bool redelivered;            /* given back by celeriac before: delivered already */
    char *payload;               /* owned (malloc'd), NUL-terminated */
    size_t len;
};

struct sql_store;

struct sql_store_ops {
    /* Creates kombu's tables if absent, as kombu does (plus celeriac's index
     * of ready rows and, on PostgreSQL, the NOTIFY trigger), on the open
     * connection. 0 or E_CONN_LOST / E_CONFIG. */
    int (*prepare)(struct sql_store *s, struct err *e);
    /* The id of queue name, the row created if absent, as kombu does on
     * publish and consume. */
    int (*queue_id)(struct sql_store *s, const char *name, int64_t *id, struct err *e);
    /* From now on fetch wakes up for new rows of these queues (PostgreSQL:
     * LISTEN). */
    int (*listen)(struct sql_store *s, const int64_t *queue_ids, size_t n, struct err *e);
    /* Claims the first ready row of any of the queues, in kombu's order,
     * stamping it with stamp (see sql_stamp). 1 with *c filled, 0 when none
     * is ready, or a negative code. */
    int (*claim)(struct sql_store *s, const int64_t *queue_ids, size_t n, const char *stamp,
                 struct sql_claim *c, struct err *e);
    /* The lock path, where the database has it (NULL otherwise): opens a
     * transaction and locks the first ready rows (up to max, of one queue:
     * the first of the queues that has any), without changing them. Their
     * count with c[] filled (each version the row's own, positive) and the
     * transaction left open, 0 when none is ready (the transaction ended),
     * or a negative code. A death of this process rolls the lock back: the
     * rows were never claimed. */
    int (*lock)(struct sql_store *s, const int64_t *queue_ids, size_t n, size_t max,
                struct sql_claim *c, struct err *e);
    /* Ends the transaction of a lock with the row deleted (stamp NULL: the
     * ack) or claimed as claim does, stamped stamp, its new version in
     * *version; committed in the same round trip. 0 or a negative code
     * (the transaction rolled back). */
    int (*settle_locked)(struct sql_store *s, int64_t id, const char *stamp, int *version,
                         struct err *e);
    /* settle_locked's ack (no stamp), then lock on queue_id alone in a new
     * transaction, in one round trip: the ack committed, then the count of
     * rows locked (up to max) with next[] filled and held by the open
     * transaction, or 0 (nothing ready: no transaction left open); < 0 when
     * the ack failed (as settle_locked) or the lock did (*acked then says
     * whether the ack committed). NULL where the dialect cannot. */
    int (*settle_locked_lock_next)(struct sql_store *s, int64_t id, int64_t queue_id,
                                   size_t max, struct sql_claim *next, int *acked,
                                   struct err *e);
    /* A transactional task's ack inside a batch (task_savepoint): deletes
     * the locked row in the open transaction, without committing, and sets
     * the savepoint for the next task. 0, or a negative code (the
     * transaction rolled back). NULL where the dialect cannot. */
    int (*settle_locked_in_batch)(struct sql_store *s, int64_t id, struct err *e);
    /* Claims row id as claim does, stamped stamp, if it is ready and no
     * transaction holds it locked: what a lock that ended with its
     * process left (the row is back in its queue, unchanged). 1 with its
     * new version in *version, 0 when it is gone or someone holds it, or
     * a negative code. NULL where there is no lock path. */
    int (*claim_row)(struct sql_store *s, int64_t id, const char *stamp, int *version,
                     struct err *e);
    /* Waits up to timeout_ms for something worth another claim. 0, or
     * E_CONN_LOST. */
    int (*wait)(struct sql_store *s, int timeout_ms, struct err *e);
    /* Deletes the claimed row (the ack). 1, 0 when the claim is no longer
     * ours, or a negative code. */
    int (*remove)(struct sql_store *s, int64_t id, int version, struct err *e);
    /* Gives the claimed row back to the front of its queue. 1, 0, or < 0. */
    int (*give_back)(struct sql_store *s, int64_t id, int version, struct err *e);
    /* The payload and queue of a row we claimed: 1, 0 when no longer ours. */
    int (*read)(struct sql_store *s, int64_t id, int version, char **payload,
                int64_t *queue_id, struct err *e);
    /* Replaces our claimed row by a new ready one with payload, at the back
     * of the same queue, in one transaction. 1, 0 when no longer ours, < 0. */
    int (*replace)(struct sql_store *s, int64_t id, int version, const char *payload,
                   struct err *e);
    /* Stamps the claims (ids[i], versions[i]) with stamp (now), so the
     * visibility timeout counts from now. */
    int (*touch)(struct sql_store *s, const int64_t *ids, const int *versions, size_t n,
                 const char *stamp, struct err *e);
    /* Gives back every celeriac claim stamped before `before`; *given gets
     * how many. */
    int (*give_back_expired)(struct sql_store *s, const char *before, int *given, struct err *e);
    /* Gives back the celeriac claims stamped exactly `stamp`: what a process
     * that died inside its claim statement may have claimed. *given gets
     * how many. */
    int (*give_back_stamped)(struct sql_store *s, const char *stamp, int *given, struct err *e);
    /* Inserts a ready row; committed when it returns 0 (unless a
     * transaction is open). */
    int (*insert)(struct sql_store *s, int64_t queue_id, const char *payload, size_t len,
                  struct err *e);
    /* Transactions (transactional tasks): begin (taking SQLite's write lock
     * at once), commit, roll back (best effort), and whether one is open. */
    int (*begin)(struct sql_store *s, struct err *e);
    int (*commit)(struct sql_store *s, struct err *e);
    void (*rollback)(struct sql_store *s);
    bool (*in_transaction)(struct sql_store *s);
    /* In a transaction that has not failed (statements still run in it). */
    bool (*transaction_usable)(struct sql_store *s);
    /* Undoes what ran since SQL_TASK_SAVEPOINT, keeping the transaction
     * (and its lock) open. 0, or < 0 when there is no such savepoint any
     * more (the task ended the transaction) or it failed. NULL where there
     * is no lock path. */
    int (*rollback_to_task)(struct sql_store *s, struct err *e);
};

struct sql_store {
    const struct sql_store_ops *ops;
    struct db_conn *conn;        /* the connection the statements run on */
    void *impl;                  /* the dialect's state, or NULL */
    bool borrowed;               /* the application's handle (the outbox): a failure
                                    never closes it */
    bool task_savepoint;         /* conn is also a task's: each lock also sets the
                                    savepoint SQL_TASK_SAVEPOINT, which a failed task
                                    run in the lock's transaction rolls back to */
};

/* The savepoint of task_savepoint. */
#define SQL_TASK_SAVEPOINT "celeriac_task"


/* The statements of the database c is open on. */
const struct sql_store_ops *sql_store_ops_for(const struct db_conn *c);

extern const struct sql_store_ops sql_pg_store_ops;
extern const struct sql_store_ops sql_sqlite_store_ops;

/* A claim's timestamp, which also names the claim before its statement has
 * answered: UTC (only celeriac reads the timestamps of its own claims),
 * SQLAlchemy's text form, milliseconds of `at` (Unix seconds) and then
 * three digits of `salt`, so two processes claiming in the same millisecond
 * differ (a collision would at worst give back another's claim: a
 * duplicate run, never a lost message). */
void sql_stamp(char out[32], double at, unsigned salt);

/* The delivery tag of a claim, "id:version", and back (false when s names
 * no celeriac claim). */
void sql_tag_format(char *out, size_t size, int64_t id, int version);
bool sql_tag_parse(const char *s, int64_t *id, int *version);

/* For the dialects: turns a failed statement into E_CONN_LOST when the
 * connection is gone (closing it), else E_PROTOCOL; the reason goes to e. */
int sql_store_failed(struct sql_store *s, const char *what, const char *reason, struct err *e);

#endif /* CELERIAC_BROKER_SQL_STORE_H */
