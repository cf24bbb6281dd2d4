/* SPDX-License-Identifier: MIT
 * broker/broker.h: what a worker child needs from a message broker, one
 * transport per file behind a table of operations (redis_transport.c today),
 * as db/driver.h is for databases. The child's code (worker/) never names a
 * transport: it fetches deliveries, has them tracked until settled, acks,
 * requeues and publishes through these calls, and tests a capability where
 * brokers differ.
 *
 * Every operation makes one attempt and returns 0 or a negative code:
 * E_CONN_LOST (the connection is gone: reopen, with backoff, and try again),
 * E_REFUSED (the server refuses for now: wait it out), or another code that
 * asking again will not fix. Retry and backoff policy is the worker's.
 */
#ifndef CELERIAC_BROKER_BROKER_H
#define CELERIAC_BROKER_BROKER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <jansson.h>

#include "db/conn.h"
#include "util/amqp_url.h"
#include "util/url.h"

/* The transports a --broker URL can name. */
enum broker_kind {
    BROKER_REDIS,                /* redis://, redis+socket://, unix:// */
    BROKER_AMQP,                 /* amqp://, amqps://, pyamqp:// (RabbitMQ) */
    BROKER_SQL,                  /* sqla+postgresql://, sqla+sqlite:/// (kombu's tables) */
};

struct broker_config {
    enum broker_kind kind;       /* picked by the URL's scheme */
    struct redis_url url;        /* parsed --broker URL (BROKER_REDIS) */
    struct amqp_url amqp;        /* parsed --broker URL (BROKER_AMQP) */
    struct db_config sql;        /* the broker database (BROKER_SQL) */
    char **queues;               /* queue names to consume, in order */
    size_t n_queues;
    size_t max_message;          /* envelopes larger than this are dropped unread */
    int queue_max_priority;      /* AMQP: x-max-priority of queues we declare; 0 = none */
    const char *queue_type;      /* AMQP: x-queue-type of queues we declare ("quorum",
                                    "classic"; static); NULL = the server's default */
    int prefetch;                /* AMQP: unacked deliveries per consumer (basic.qos), 0 =
                                    unlimited; Celery's worker_prefetch_multiplier */
    bool record_unacked;         /* Redis: pop and record in kombu's unacked hash in one
                                    step (some task acks late); false: pop into the
                                    child's hand (see broker_redis_set_hand) */
    int sql_batch;               /* SQL on PostgreSQL: transactional tasks per transaction
                                    at most (--sql-batch, 1..SQL_BATCH_MAX); 1: one each */
    int sql_batch_ms;            /* ... and no task joins a batch open longer than this
                                    (--sql-batch-ms): bounds how long a result and the
                                    rows in hand wait for the batch's commit */
};

struct held_board;
struct message;
struct slot;

/* What differs between brokers, as the worker must know it. */
enum broker_caps {
    /* A message a dead process held can be put back by another process, by
     * its tag (Redis: kombu's unacked hash). Without it the server returns
     * it when the holder's connection closes (AMQP). */
    BROKER_CAP_RESTORE_BY_TAG = 1 << 0,
};

/* One fetched message, before it is decoded. */
struct delivery {
    const char *raw;             /* the envelope as the decoder reads it, or NULL */
    json_t *envelope;            /* or already as JSON, when the transport built it from
                                    what it received (AMQP) rather than print and parse it */
    size_t len;                  /* raw's length; with envelope, the body's */
    const char *body;            /* with envelope: the body as received, when the envelope
                                    has none (AMQP sends it as bytes: no base64 round trip) */
    char queue[256];             /* queue it came from */
    void *owner;                 /* the transport's: owns raw and envelope */
    struct {                     /* Redis: what the pop already wrote to unacked */
        const char *tag, *exchange, *routing_key;
    } recorded;
};

/* Whether a fetch returned a message (raw and envelope both NULL: none came). */
static inline bool delivery_came(const struct delivery *d)
{
    return d->raw || d->envelope;
}

/* Who is consuming: a child's place in its worker, which the transport
 * uses to leave what it holds findable by the next process of the slot. */
struct broker_owner {
    const char *node;            /* worker node name */
    pid_t master_pid;            /* the worker's main process */
    int index;                   /* child slot number */
    struct slot *slot;           /* the slot in shared memory */
    struct held_board *held_board; /* the ETA messages the slot's last process held */
    int sweep_interval_s;        /* how often maintenance may run */
    double visibility_timeout;   /* seconds before an unacked message is redelivered */
    struct db_conn *task_db;     /* the child's task connection (borrowed), when the SQL
                                    broker runs on it instead of a connection of its own
                                    (worker_config.broker_shares_db); NULL otherwise */
    /* With task_db: called right before the transport commits a transaction
     * in which transactional tasks ran, with that transaction's epoch (see
     * sql_broker_txn_epoch). The child stores the results it held back for
     * them (BROKER_BATCH) and returns 0 once they are confirmed; otherwise
     * the transaction is rolled back instead and its tasks run again. NULL:
     * no result is ever held. */
    int (*before_commit)(void *ctx, uint64_t epoch, struct err *e);
    void *ctx;                   /* before_commit's */
};

/* How a message the previous process of a slot left is settled. */
enum broker_lost {
    BROKER_LOST_RESTORE,         /* never started: back to the front of its queue */
    BROKER_LOST_REQUEUE,         /* died running (reject_on_worker_lost): to the back,
                                    counting the death */
    BROKER_LOST_ACK,             /* its outcome is stored: settle it for good */
};

/* Results of a restore or requeue. */
enum { BROKER_NOT_HELD = 0, BROKER_RESTORED = 1, BROKER_EXHAUSTED = 2 };

enum broker_ack_flags {
    BROKER_NOWAIT = 1 << 0,      /* send without waiting; broker_flush confirms */
    BROKER_TAKE_NEXT = 1 << 1,   /* the caller fetches next, with nothing run in between:
                                    the transport may take the next message in the ack's
                                    round trip (the SQL transport's transactional ack) */
    BROKER_BATCH = 1 << 2,       /* with TAKE_NEXT: m's result is held until before_commit,
                                    so the transport may leave the commit to a later ack
                                    of the same transaction (a batch of transactional
                                    tasks, see --sql-batch) */
};

struct broker;
struct bus;

struct broker_ops {
    const char *name;
    unsigned caps;               /* enum broker_caps */
    /* Connects (no retry). */
    int (*open)(struct broker *b, struct err *e);
    bool (*is_open)(const struct broker *b);
    /* Consume queues[0..n) from the next fetch on. No I/O. */
    void (*consume)(struct broker *b, char *const *queues, size_t n);
    /* Waits up to timeout_s for the next message; see delivery_came. */
    int (*fetch)(struct broker *b, double timeout_s, struct delivery *d, struct err *e);
    void (*delivery_release)(struct delivery *d);
    /* A delivery that will never be decoded: removed for good. */
    int (*drop)(struct broker *b, struct delivery *d, struct err *e);
    /* Its envelope is decoded into m (tag, exchange, routing key): from now
     * until m is settled, a death of this process leaves it to be put back. */
    void (*track)(struct broker *b, struct delivery *d, struct message *m);
    /* m must outlive a long wait (an ETA, a database outage): held where
     * any worker's recovery finds it. 0 when it already is. */
    int (*protect)(struct broker *b, struct message *m, struct err *e);
    /* m's task is about to run with its ack after it (acks_late: late ack,
     * a transactional task) or to wait for a rate limit: what holds m must
     * no longer depend on anything this process keeps open meanwhile (SQL:
     * a row locked by an open transaction becomes a claim), and a late ack
     * needs m where the broker's own redelivery finds it (Redis: recorded
     * in kombu's unacked, out of the child's hand). m's tag may change.
     * NULL: nothing to do. */
    int (*keep)(struct broker *b, struct message *m, bool acks_late, struct err *e);
    /* m is settled for good: acked, or rejected without requeue. */
    int (*ack)(struct broker *b, struct message *m, unsigned flags, struct err *e);
    /* m goes back to the front of its queue, marked redelivered. */
    int (*requeue)(struct broker *b, struct message *m, struct err *e);
    /* This process is done with the delivery (run, held, or settled). */
    void (*done)(struct broker *b);
    /* False when m's delivery is no longer this process's to settle: its
     * channel or connection closed and the server put it back in its queue
     * (AMQP), so a held ETA message must not run here too, as Celery
     * clears its ETA timer on a connection loss. NULL: always (Redis: the
     * unacked hash keeps it across reconnects). */
    bool (*holds)(struct broker *b, const struct message *m);
    /* Keeps n held messages from being redelivered meanwhile. */
    int (*keepalive)(struct broker *b, struct message *const *held, size_t n, struct err *e);
    /* Confirms what was sent without waiting. */
    int (*flush)(struct broker *b, struct err *e);
    /* Periodic upkeep (redelivery of what dead workers held), on the
     * transport's own schedule: cheap to call every loop. */
    void (*maintain)(struct broker *b);
    /* Puts back what an earlier process of this slot held and never started. */
    int (*recover_slot)(struct broker *b, struct err *e);
    /* Settles the message (by its token from the slot) the previous process
     * of this slot died holding. *losses: deaths counted for a requeue. */
    int (*settle_lost)(struct broker *b, const char *token, enum broker_lost how, int max,
                       int *losses, struct err *e);
    /* Publishes a task envelope to queue, confirmed before it returns. */
    int (*publish)(struct broker *b, const char *queue, int priority, const char *envelope,
                   size_t len, struct err *e);
    /* Sends a task's result to the client's reply queue as Celery's rpc://
     * backend does: the default exchange with routing key reply_to, the
     * correlation id, transient; confirmed before it returns. A reply queue
     * that is gone (the client left) is not an error. -ENOTSUP on a
     * transport without it. */
    int (*reply)(struct broker *b, const char *reply_to, const char *correlation_id,
                 const char *content_type, const char *body, size_t len, struct err *e);
    /* The bus riding on this connection, for the child's events (owned by
     * b; see bus.h). */
    struct bus *(*bus)(struct broker *b);
    /* Leaving: settles what can be settled, then closes (no retry). */
    void (*leave)(struct broker *b);
    /* Frees everything (closes without further I/O). */
    void (*release)(struct broker *b);
};

struct broker {
    const struct broker_ops *ops;
    void *impl;                  /* the transport's state */
};

/* Sets b up for the transport cfg names (nothing opened). 0 or -EINVAL. */
int broker_init(struct broker *b, const struct broker_config *cfg,
                const struct broker_owner *owner, struct err *e);

static inline bool broker_has(const struct broker *b, enum broker_caps cap)
{
    return (b->ops->caps & cap) != 0;
}

#endif /* CELERIAC_BROKER_BROKER_H */
