/* SPDX-License-Identifier: MIT
 * broker/sql_transport.c: kombu's SQL transport behind broker.h (see
 * broker/sql.h and sql_store.h). A claimed row is durable the moment it is
 * claimed, so tracking and protecting cost nothing; the delivery tag is
 * "id:version", which every settle compares. A child that dies holding rows
 * leaves their tags in its slot (popped, running, held) and its replacement
 * gives them back at once; any worker gives back celeriac claims older than
 * the visibility timeout (kombu never does: a crashed kombu consumer's rows
 * stay claimed for ever).
 */
#include "common.h"
#include "broker/bus.h"
#include "broker/sql.h"
#include "broker/sql_store.h"
#include "protocol/message.h"
#include "util/buf.h"
#include "util/log.h"
#include "util/time.h"
#include "worker/scoreboard.h"

#include <inttypes.h>
#include <strings.h>
#include <time.h>

/* How long one wait lasts at most before the queues are claimed from
 * again, should a wake-up have been missed (a row unlocked by a consumer
 * that rolled back sends no notification). */
#define RECLAIM_MS 1000

static const struct broker_ops sql_transport_ops;

struct known_queue {
    char *name;
    int64_t id;
};

struct sql_transport {
    struct db_conn conn;         /* the broker connection, this process's own */
    struct db_conn *shared;      /* or the task connection it runs on instead (borrowed;
                                    owner.task_db): opened, reopened and closed by the
                                    child; a transactional task runs inside the
                                    transaction of its message's lock */
    uint64_t shared_open;        /* shared->attempts when this transport last set up its
                                    statements and LISTEN there: another value means the
                                    child reopened it since */
    struct sql_store store;      /* on conn, or on shared */
    const struct broker_config *cfg;   /* borrowed */
    struct broker_owner owner;
    char **queues;               /* the set to consume, owned */
    size_t n_queues;
    int64_t *queue_ids;          /* theirs, once resolved on this connection */
    int64_t *order;              /* queue_ids in this turn's order */
    bool listening;              /* queue_ids resolved and listened to */
    size_t turn;                 /* the queue the next claim starts with */
    struct known_queue *known;   /* every queue id looked up on this connection */
    size_t n_known;
    int64_t next_sweep_ms;
    struct bus events;           /* no broadcast on this transport */
    /* The lock path (store.ops->lock): the delivery whose row this
     * connection's open transaction holds locked, unclaimed. It is deleted
     * and committed by the ack at task start (an early ack: one statement
     * and one commit per message instead of a claim, its commit, a delete
     * and its commit), claimed by whatever must outlast the transaction
     * (keep, protect), or rolled back. */
    bool locked;
    int64_t locked_id;
    bool lock_next;              /* take the next row by lock: the last one was acked
                                    at its start (a late-ack stream claims instead) */
    bool kept;                   /* the current delivery was kept or protected */
    /* Rows the open transaction holds locked for the next fetches,
     * hand[hand_at..hand_n): taken by a transactional task's ack
     * (BROKER_TAKE_NEXT) in its round trip, or with the lock of a batch.
     * The next fetches hand them over, unless the transaction holding them
     * ended meanwhile (then they are in their queue as they were). */
    struct sql_claim hand[SQL_BATCH_MAX];
    size_t hand_at, hand_n;
    /* A batch (BROKER_BATCH, --sql-batch): transactional tasks whose acks
     * the open transaction holds, uncommitted, their results held by the
     * child until owner.before_commit. */
    int batch_acked;
    bool batching;               /* the last ack was a batch's: locks take up to
                                    cfg->sql_batch rows */
    uint64_t txn_epoch;          /* lock transactions begun (sql_broker_txn_epoch) */
    int64_t txn_locked_ms;       /* when the current one took its rows (a batch's age) */
    /* The last lock of a dead process claimed by settle_lost (the death is
     * counted, then the message may be settled for good): its lock tag and
     * the claim's tag, which later settlements of the lock tag use. */
    char lost_lock[40], lost_claim[40];
};

/* What a delivery owns (struct delivery's owner). */
struct sql_owned {
    struct sql_claim claim;
    char tag[40];
};

static struct sql_transport *impl(const struct broker *b)
{
    return b->impl;
}

/* The connection the statements run on. */
static struct db_conn *conn_of(const struct sql_transport *t)
{
    return t->store.conn;
}

/* Open, and (shared) still the session this transport set up. */
static bool session_is_ours(const struct sql_transport *t)
{
    return db_conn_is_open(conn_of(t)) && (!t->shared || t->shared->attempts == t->shared_open);
}

static bool hand_has(const struct sql_transport *t)
{
    return t->hand_at < t->hand_n;
}

/* Whether the connection's open transaction is the broker's: a delivery's
 * lock, rows locked for the next fetches, or acks not yet committed. */
static bool txn_is_ours(const struct sql_transport *t)
{
    return t->locked || hand_has(t) || t->batch_acked;
}

/* The broker's transaction has ended (committed or rolled back): the rows
 * it held for the next fetches are in their queue again, as they were. */
static void txn_ended(struct sql_transport *t)
{
    for (size_t i = t->hand_at; i < t->hand_n; i++) {
        free(t->hand[i].payload);
        t->hand[i].payload = NULL;
    }
    t->hand_at = t->hand_n = 0;
    t->locked = false;
    t->batch_acked = 0;
    if (t->shared)
        t->shared->broker_txn = false;
}

/* Rolls the broker's transaction back (if the session is still ours to
 * end); a batch's acks are undone with it, and its tasks run again. */
static void rollback_txn(struct sql_transport *t)
{
    if (t->batch_acked)
        log_warning("%d transactional task(s) done in this transaction are rolled back with it "
                    "(their writes and acks): they run again", t->batch_acked);
    txn_ended(t);
    if (session_is_ours(t) && t->store.ops->in_transaction(&t->store))
        t->store.ops->rollback(&t->store);
}

/* Right before the broker's transaction commits: the results held for the
 * transactional tasks in it are stored first (owner.before_commit), so that
 * none is readable before its writes are. If they cannot be, the
 * transaction rolls back instead, and its tasks run again. */
static int results_before_commit(struct sql_transport *t, struct err *e)
{
    if (!t->shared || !t->owner.before_commit)
        return 0;
    int rc = t->owner.before_commit(t->owner.ctx, t->txn_epoch, e);
    if (rc)
        rollback_txn(t);
    return rc;
}

/* Ends the broker's transaction between two deliveries: acks it holds
 * uncommitted commit (their results stored first); rows locked for the
 * next fetches go back to their queue. */
static void end_txn(struct sql_transport *t)
{
    if (!txn_is_ours(t))
        return;
    if (t->batch_acked && !t->locked && session_is_ours(t) &&
        t->store.ops->transaction_usable(&t->store)) {
        struct err e = {0};
        int rc = results_before_commit(t, &e);
        if (!rc && !(rc = t->store.ops->commit(&t->store, &e))) {
            txn_ended(t);
            return;
        }
        log_warning("committing a batch of transactional tasks failed: %s", e.msg);
    }
    rollback_txn(t);
}

void sql_tag_format(char *out, size_t size, int64_t id, int version)
{
    snprintf(out, size, "%" PRId64 ":%d", id, version);
}

bool sql_tag_parse(const char *s, int64_t *id, int *version)
{
    if (!s)
        return false;
    char *end;
    errno = 0;
    long long i = strtoll(s, &end, 10);
    if (errno || end == s || *end != ':' || i <= 0)
        return false;
    const char *v = end + 1;
    long ver = strtol(v, &end, 10);
    if (errno || end == v || *end || ver >= 0 || ver < -40000)
        return false;
    *id = i;
    *version = (int)ver;
    return true;
}

/* A locked row's tag, "id:+version": no claim (sql_tag_parse refuses it),
 * so nothing settles it by tag once the lock has ended. */
static void lock_tag_format(char *out, size_t size, int64_t id, int version)
{
    snprintf(out, size, "%" PRId64 ":+%d", id, version);
}

static bool lock_tag_parse(const char *s, int64_t *id)
{
    if (!s)
        return false;
    char *end;
    errno = 0;
    long long i = strtoll(s, &end, 10);
    if (errno || end == s || i <= 0 || strncmp(end, ":+", 2))
        return false;
    *id = i;
    return true;
}

/* True when m's row is the one this connection holds locked. */
static bool holds_lock_of(const struct sql_transport *t, const struct message *m)
{
    int64_t id;
    return t->locked && session_is_ours(t) && lock_tag_parse(m->delivery_tag, &id) &&
           id == t->locked_id;
}

static void forget_queues(struct sql_transport *t)
{
    for (size_t i = 0; i < t->n_known; i++)
        free(t->known[i].name);
    free(t->known);
    t->known = NULL;
    t->n_known = 0;
    t->listening = false;
}

/* The queue's id on this connection, looked up (and created) once. */
static int queue_id(struct sql_transport *t, const char *name, int64_t *id, struct err *e)
{
    for (size_t i = 0; i < t->n_known; i++)
        if (!strcmp(t->known[i].name, name)) {
            *id = t->known[i].id;
            return 0;
        }
    if (strlen(name) > SQL_QUEUE_NAME_MAX)
        return err_set(e, -EINVAL, "queue name '%.40s...' is longer than kombu's %d characters",
                       name, SQL_QUEUE_NAME_MAX);
    int rc = t->store.ops->queue_id(&t->store, name, id, e);
    if (rc)
        return rc;
    t->known = xrealloc(t->known, (t->n_known + 1) * sizeof(*t->known));
    t->known[t->n_known++] = (struct known_queue){.name = xstrdup(name), .id = *id};
    return 0;
}

static const char *queue_name(const struct sql_transport *t, int64_t id)
{
    for (size_t i = 0; i < t->n_known; i++)
        if (t->known[i].id == id)
            return t->known[i].name;
    return "?";
}

static int listen_queues(struct sql_transport *t, struct err *e)
{
    if (t->listening)
        return 0;
    for (size_t i = 0; i < t->n_queues; i++) {
        int rc = queue_id(t, t->queues[i], &t->queue_ids[i], e);
        if (rc)
            return rc;
    }
    int rc = t->store.ops->listen(&t->store, t->queue_ids, t->n_queues, e);
    if (!rc)
        t->listening = true;
    return rc;
}

static int st_open(struct broker *b, struct err *e)
{
    struct sql_transport *t = impl(b);
    forget_queues(t);
    txn_ended(t); /* its transaction ended with the connection */
    int rc;
    if (t->shared) { /* the child's connection: set up again after a reopen */
        rc = db_conn_is_open(t->shared) ? 0 : db_conn_open(t->shared, 1, NULL, e);
    } else {
        db_conn_close(&t->conn, NULL);
        rc = db_conn_open(&t->conn, 1, NULL, e);
    }
    if (!rc)
        rc = t->store.ops->prepare(&t->store, e);
    if (!rc)
        rc = listen_queues(t, e);
    if (!rc && t->shared)
        t->shared_open = t->shared->attempts;
    if (rc && !t->shared)
        db_conn_close(&t->conn, NULL);
    return rc;
}

static bool st_is_open(const struct broker *b)
{
    return session_is_ours(impl(b));
}

static void free_queue_set(struct sql_transport *t)
{
    for (size_t i = 0; i < t->n_queues; i++)
        free(t->queues[i]);
    free(t->queues);
    free(t->queue_ids);
    free(t->order);
    t->order = NULL;
    t->queues = NULL;
    t->queue_ids = NULL;
    t->n_queues = 0;
}

static void st_consume(struct broker *b, char *const *queues, size_t n)
{
    struct sql_transport *t = impl(b);
    end_txn(t); /* rows taken from a queue that may no longer be consumed go back */
    free_queue_set(t);
    t->queues = xcalloc(n ? n : 1, sizeof(*t->queues));
    t->queue_ids = xcalloc(n ? n : 1, sizeof(*t->queue_ids));
    t->order = xcalloc(n ? n : 1, sizeof(*t->order));
    for (size_t i = 0; i < n; i++)
        t->queues[i] = xstrdup(queues[i]);
    t->n_queues = n;
    t->listening = false;
    t->turn = 0;
}

void sql_stamp(char out[32], double at, unsigned salt)
{
    time_t secs = (time_t)at;
    struct tm tm;
    gmtime_r(&secs, &tm);
    int ms = (int)((at - (double)secs) * 1000.0);
    if (ms < 0 || ms > 999)
        ms = 0;
    char day[24];
    strftime(day, sizeof(day), "%Y-%m-%d %H:%M:%S", &tm);
    snprintf(out, 32, "%s.%03d%03u", day, ms, salt % 1000);
}

/* This process's stamp for a claim made now: the slot index makes the
 * children of one worker differ, the master's pid two workers. */
static void claim_stamp(const struct sql_transport *t, char out[32])
{
    sql_stamp(out, time_now(), (unsigned)(t->owner.index * 37 + t->owner.master_pid));
}

/* One claim from the consumed queues, starting with this turn's queue (the
 * fair cycle kombu runs over its queues). The slot names the claim by its
 * stamp before the statement runs: a death while it runs (committed, the
 * answer never read) leaves the row to the slot's next process, not to the
 * visibility timeout; once answered, by its tag. */
static int claim_next(struct sql_transport *t, struct sql_claim *c, struct err *e)
{
    size_t n = t->n_queues;
    for (size_t i = 0; i < n; i++)
        t->order[i] = t->queue_ids[(t->turn + i) % n];
    char stamp[32];
    claim_stamp(t, stamp);
    char *slot_tag = t->owner.slot->popped_tag;
    snprintf(slot_tag, sizeof(t->owner.slot->popped_tag), "@%s", stamp);
    int rc = t->store.ops->claim(&t->store, t->order, n, stamp, c, e);
    if (rc > 0)
        sql_tag_format(slot_tag, sizeof(t->owner.slot->popped_tag), c->id, c->version);
    else
        slot_tag[0] = '\0';
    if (n)
        t->turn = (t->turn + 1) % n;
    return rc;
}

/* How many rows a lock takes: a batch's, in a stream of transactional
 * tasks from one queue (the only stream a batch can continue), else one. */
static size_t lock_size(const struct sql_transport *t)
{
    int k = t->batching && t->n_queues == 1 ? t->cfg->sql_batch : 1;
    return k < 1 ? 1 : k > SQL_BATCH_MAX ? SQL_BATCH_MAX : (size_t)k;
}

/* Rows locked in a new transaction (the lock path), turning through the
 * queues as claim_next does; the first into *c, the rest into the hand.
 * Nothing names them in the slot: a death rolls the lock back. */
static int lock_next(struct sql_transport *t, struct sql_claim *c, struct err *e)
{
    size_t n = t->n_queues;
    for (size_t i = 0; i < n; i++)
        t->order[i] = t->queue_ids[(t->turn + i) % n];
    int rc = t->store.ops->lock(&t->store, t->order, n, lock_size(t), t->hand, e);
    if (rc > 0) {
        *c = t->hand[0];
        t->hand[0].payload = NULL;
        t->hand_at = 1;
        t->hand_n = (size_t)rc;
        t->locked = true;
        t->locked_id = c->id;
        t->txn_epoch++;
        t->txn_locked_ms = time_mono_ms();
        rc = 1;
    }
    if (n)
        t->turn = (t->turn + 1) % n;
    return rc;
}

static int st_fetch(struct broker *b, double timeout_s, struct delivery *d, struct err *e)
{
    struct sql_transport *t = impl(b);
    memset(d, 0, sizeof(*d));
    int rc = listen_queues(t, e);
    int64_t deadline = time_mono_ms() + (int64_t)(timeout_s * 1000);
    struct sql_claim c = {0};
    bool by_lock = t->store.ops->lock && t->lock_next;
    if (!rc && hand_has(t) && session_is_ours(t) &&
        t->store.ops->transaction_usable(&t->store)) {
        c = t->hand[t->hand_at]; /* locked by the last ack, or with its batch */
        t->hand[t->hand_at++].payload = NULL;
        t->locked = true;
        t->locked_id = c.id;
        t->shared->broker_txn = false;
        by_lock = true;
        rc = 1;
    } else if (txn_is_ours(t)) {
        rollback_txn(t); /* the connection was lost or reopened meanwhile */
    }
    while (!rc) {
        rc = by_lock ? lock_next(t, &c, e) : claim_next(t, &c, e);
        if (rc)
            break;
        int64_t left = deadline - time_mono_ms();
        if (left <= 0)
            return 0;
        rc = t->store.ops->wait(&t->store, left < RECLAIM_MS ? (int)left : RECLAIM_MS, e);
    }
    if (rc < 0)
        return rc;
    struct sql_owned *o = xcalloc(1, sizeof(*o));
    o->claim = c;
    if (by_lock)
        lock_tag_format(o->tag, sizeof(o->tag), c.id, c.version);
    else
        sql_tag_format(o->tag, sizeof(o->tag), c.id, c.version);
    snprintf(d->queue, sizeof(d->queue), "%s", queue_name(t, c.queue_id));
    d->raw = o->claim.payload;
    d->len = o->claim.len;
    d->owner = o;
    return 0;
}

static void st_delivery_release(struct delivery *d)
{
    struct sql_owned *o = d->owner;
    if (o) {
        free(o->claim.payload);
        free(o);
    }
    d->owner = NULL;
    d->raw = NULL;
}

/* Whether an ack may lock the next row in its round trip: asked for (the
 * child fetches next, with nothing run in between), on the task's
 * connection, with one queue (the lock takes from one), and nothing due
 * that would run on that connection first: the visibility sweep, a recycle. */
static bool may_take_next(const struct sql_transport *t, unsigned flags)
{
    return (flags & BROKER_TAKE_NEXT) && t->shared && t->store.ops->settle_locked_lock_next &&
           t->store.ops->transaction_usable &&
           t->n_queues == 1 && t->listening && session_is_ours(t) &&
           time_mono_ms() < t->next_sweep_ms && !db_conn_recycle_due(t->shared);
}

/* Whether a transactional ack may leave its commit to a later ack: its
 * result is held (BROKER_BATCH), the transaction holds the next rows, and
 * the batch has room and is young enough. The last row of a batch commits
 * it; so does the first ack after --sql-batch-ms, so that a slow task holds
 * its batch's results, and the rows locked in hand (which other consumers
 * skip, or wait for), back by one task's run at most. */
static bool may_defer(struct sql_transport *t, unsigned flags)
{
    return (flags & BROKER_BATCH) && hand_has(t) && may_take_next(t, flags) &&
           t->store.ops->settle_locked_in_batch && t->batch_acked + 1 < t->cfg->sql_batch &&
           time_mono_ms() - t->txn_locked_ms < t->cfg->sql_batch_ms &&
           t->store.ops->transaction_usable(&t->store);
}

/* Deletes the locked row and commits: the ack of a locked delivery; with
 * may_take_next, the next rows are locked in the same round trip (one
 * round trip of three per transactional task); with may_defer, the commit
 * is left to the batch's last ack. */
static int remove_locked(struct sql_transport *t, unsigned flags, struct err *e)
{
    t->locked = false;
    t->batching = (flags & BROKER_BATCH) != 0;
    int rc;
    if (may_defer(t, flags)) {
        rc = t->store.ops->settle_locked_in_batch(&t->store, t->locked_id, e);
        if (rc) {
            rollback_txn(t);
            return rc;
        }
        t->batch_acked++;
        t->shared->broker_txn = true; /* the next fetch takes the transaction over */
        return 0;
    }
    if ((rc = results_before_commit(t, e)))
        return rc;
    bool take_next = may_take_next(t, flags);
    int64_t id = t->locked_id;
    txn_ended(t); /* the commit ends it, and with it the rest of the hand's locks */
    if (!take_next)
        return t->store.ops->settle_locked(&t->store, id, NULL, NULL, e);
    int acked = 0;
    rc = t->store.ops->settle_locked_lock_next(&t->store, id, t->queue_ids[0], lock_size(t),
                                               t->hand, &acked, e);
    if (rc < 0 && acked) {
        log_warning("taking the next message with the ack failed (%s); fetching it anew",
                    e->msg);
        return 0; /* the ack committed */
    }
    if (rc > 0) {
        t->hand_at = 0;
        t->hand_n = (size_t)rc;
        t->txn_epoch++;
        t->txn_locked_ms = time_mono_ms();
        t->shared->broker_txn = true;
    }
    return rc < 0 ? rc : 0;
}

/* Claims the locked row as claim_next would and commits, so that it
 * outlasts the transaction; the slot names the claim as claim_next does.
 * *tag gets the claim's tag. A claim that follows a lock means a late-ack
 * stream: the next rows are claimed directly. */
static int claim_locked(struct sql_transport *t, char *tag, size_t size, struct err *e)
{
    char stamp[32];
    claim_stamp(t, stamp);
    char *slot_tag = t->owner.slot->popped_tag;
    snprintf(slot_tag, sizeof(t->owner.slot->popped_tag), "@%s", stamp);
    int version = 0;
    int rc = results_before_commit(t, e);
    int64_t id = t->locked_id;
    txn_ended(t); /* the commit ends it */
    if (!rc)
        rc = t->store.ops->settle_locked(&t->store, id, stamp, &version, e);
    if (rc) {
        slot_tag[0] = '\0';
        return rc;
    }
    sql_tag_format(tag, size, id, version);
    snprintf(slot_tag, sizeof(t->owner.slot->popped_tag), "%s", tag);
    return 0;
}

bool sql_broker_holds_in_task_txn(const struct broker *b, const struct message *m)
{
    const struct sql_transport *t = b->ops == &sql_transport_ops ? impl(b) : NULL;
    return t && t->shared && holds_lock_of(t, m);
}

uint64_t sql_broker_txn_epoch(const struct broker *b)
{
    const struct sql_transport *t = b->ops == &sql_transport_ops ? impl(b) : NULL;
    return t && txn_is_ours(t) ? t->txn_epoch : 0;
}

static int st_drop(struct broker *b, struct delivery *d, struct err *e)
{
    struct sql_transport *t = impl(b);
    struct sql_owned *o = d->owner;
    if (!o)
        return 0;
    int64_t id;
    if (lock_tag_parse(o->tag, &id))
        return t->locked && id == t->locked_id ? remove_locked(t, 0, e) : 0;
    int rc = t->store.ops->remove(&t->store, o->claim.id, o->claim.version, e);
    return rc < 0 ? rc : 0;
}

/* The message's tag becomes the row's claim ("id:version"): the slot, the
 * held board and every settle name the row by it. */
static void st_track(struct broker *b, struct delivery *d, struct message *m)
{
    UNUSED(b);
    struct sql_owned *o = d->owner;
    json_t *props = json_object_get(m->envelope, "properties");
    if (!json_is_object(props)) {
        props = json_object();
        json_object_set_new(m->envelope, "properties", props);
    }
    json_object_set_new(props, "delivery_tag", json_string(o->tag));
    m->delivery_tag = json_string_value(json_object_get(props, "delivery_tag"));
    /* kombu's own restore marks the envelope itself */
    if (o->claim.redelivered || json_is_true(json_object_get(m->envelope, "redelivered")))
        m->redelivered = true;
    m->recorded = true;
}

/* m's envelope and tag now name its claim. */
static void retag(struct message *m, const char *tag)
{
    json_t *props = json_object_get(m->envelope, "properties");
    json_object_set_new(props, "delivery_tag", json_string(tag));
    m->delivery_tag = json_string_value(json_object_get(props, "delivery_tag"));
}

/* A locked row becomes a claim; a claimed row already outlives this
 * process (keepalive holds off the sweep). A lock that ended with its
 * connection leaves nothing to hold: the row is back in its queue. */
static int st_protect(struct broker *b, struct message *m, struct err *e)
{
    struct sql_transport *t = impl(b);
    t->kept = true;
    int64_t id;
    if (!lock_tag_parse(m->delivery_tag, &id))
        return 0;
    if (!holds_lock_of(t, m))
        return err_set(e, E_PROTOCOL, "message %s went back to its queue when the broker "
                       "connection closed", m->task_id ? m->task_id : "?");
    char tag[40];
    int rc = claim_locked(t, tag, sizeof(tag), e);
    if (!rc)
        retag(m, tag);
    return rc;
}

static int st_keep(struct broker *b, struct message *m, bool acks_late, struct err *e)
{
    UNUSED(acks_late); /* a lock must not be held while anything waits */
    return st_protect(b, m, e);
}

static bool st_holds(struct broker *b, const struct message *m)
{
    int64_t id;
    return !lock_tag_parse(m->delivery_tag, &id) || holds_lock_of(impl(b), m);
}

static int message_claim(const struct message *m, int64_t *id, int *version, struct err *e)
{
    if (!sql_tag_parse(m->delivery_tag, id, version))
        return err_set(e, E_PROTOCOL, "delivery tag '%.40s' names no claimed row",
                       m->delivery_tag ? m->delivery_tag : "");
    return 0;
}

static int st_ack(struct broker *b, struct message *m, unsigned flags, struct err *e)
{
    struct sql_transport *t = impl(b);
    int64_t id;
    int version;
    if (holds_lock_of(t, m))
        return remove_locked(t, flags, e);
    if (lock_tag_parse(m->delivery_tag, &id)) {
        log_warning("message %s (row %" PRId64 ") went back to its queue when the broker "
                    "connection closed, before its ack: it may run again",
                    m->task_id ? m->task_id : "?", id);
        return 0;
    }
    int rc = message_claim(m, &id, &version, e);
    if (!rc)
        rc = t->store.ops->remove(&t->store, id, version, e);
    if (rc == 0)
        log_warning("message %s (row %s) was no longer this process's to ack: given back by "
                    "the visibility timeout (--visibility-timeout), it may run again",
                    m->task_id ? m->task_id : "?", m->delivery_tag);
    return rc < 0 ? rc : 0;
}

static int st_requeue(struct broker *b, struct message *m, struct err *e)
{
    struct sql_transport *t = impl(b);
    int64_t id;
    int version;
    if (holds_lock_of(t, m)) {
        if (t->batch_acked) {
            /* in a batch: this task's writes undone, the earlier tasks'
             * committed; the row's lock ends with the commit, unchanged */
            int rc = t->store.ops->rollback_to_task(&t->store, e);
            if (!rc)
                rc = results_before_commit(t, e);
            if (!rc) {
                t->locked = false;
                rc = t->store.ops->commit(&t->store, e);
            }
            if (rc)
                rollback_txn(t);
            else
                txn_ended(t);
            return rc;
        }
        rollback_txn(t); /* unchanged, at the front of its queue */
        return db_conn_is_open(conn_of(t)) ? 0 : err_set(e, E_CONN_LOST, "rolling back a lock");
    }
    if (lock_tag_parse(m->delivery_tag, &id))
        return 0; /* the lock ended with its connection: back in its queue already */
    int rc = message_claim(m, &id, &version, e);
    if (!rc)
        rc = t->store.ops->give_back(&t->store, id, version, e);
    return rc < 0 ? rc : 0;
}

/* Every path acks, claims or gives back a locked row before it is done
 * with it; one that did not would hold a transaction open for ever. */
static void st_done(struct broker *b)
{
    struct sql_transport *t = impl(b);
    if (t->locked) {
        log_warning("row %" PRId64 " was left locked after its delivery; rolled back (it runs "
                    "again)", t->locked_id);
        rollback_txn(t);
    }
    /* What this delivery needed predicts the next: a stream of early-ack
     * tasks is taken by lock, one of late-ack tasks claimed at once. */
    t->lock_next = !t->kept;
    t->kept = false;
    t->owner.slot->popped_tag[0] = '\0';
}

static int st_keepalive(struct broker *b, struct message *const *held, size_t n, struct err *e)
{
    struct sql_transport *t = impl(b);
    if (txn_is_ours(t))
        return 0; /* not inside a delivery's transaction: the next call touches them */
    int64_t *ids = xcalloc(n ? n : 1, sizeof(*ids));
    int *versions = xcalloc(n ? n : 1, sizeof(*versions));
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (sql_tag_parse(held[i]->delivery_tag, &ids[k], &versions[k]))
            k++;
    char stamp[32];
    claim_stamp(t, stamp);
    int rc = t->store.ops->touch(&t->store, ids, versions, k, stamp, e);
    free(ids);
    free(versions);
    return rc;
}

static int st_flush(struct broker *b, struct err *e)
{
    UNUSED(b);
    UNUSED(e);
    return 0; /* every statement has committed when it returns */
}

/* Every child tries the sweep on its own schedule, spread by pid; giving
 * back is one compare-and-swap statement, so sweeps racing each other are
 * harmless. */
static void st_maintain(struct broker *b)
{
    struct sql_transport *t = impl(b);
    int64_t now = time_mono_ms();
    if (now < t->next_sweep_ms || !session_is_ours(t) || txn_is_ours(t))
        return;
    int64_t interval = (int64_t)t->owner.sweep_interval_s * 1000;
    t->next_sweep_ms = now + interval / 2 + (int64_t)(getpid() % 1000) * interval / 2000;
    struct err e = {0};
    int given = 0;
    char before[32];
    sql_stamp(before, time_now() - t->owner.visibility_timeout, 0);
    if (t->store.ops->give_back_expired(&t->store, before, &given, &e))
        log_warning("visibility sweep failed: %s", e.msg);
    else if (given)
        log_warning("gave back %d message(s) claimed more than %g s ago by processes that are "
                    "gone (or still running them)", given, t->owner.visibility_timeout);
}

/* tag: a claim's "id:version", or "@stamp" for a claim whose statement
 * never answered. */
static int give_back_tag(struct sql_transport *t, const char *tag, struct err *e)
{
    int64_t id;
    int version;
    if (tag[0] == '@') {
        int given = 0;
        int rc = t->store.ops->give_back_stamped(&t->store, tag + 1, &given, e);
        return rc < 0 ? rc : given ? BROKER_RESTORED : BROKER_NOT_HELD;
    }
    if (!sql_tag_parse(tag, &id, &version))
        return err_set(e, E_PROTOCOL, "'%.40s' names no claimed row", tag);
    int rc = t->store.ops->give_back(&t->store, id, version, e);
    return rc < 0 ? rc : rc ? BROKER_RESTORED : BROKER_NOT_HELD;
}

/* The ETA messages the previous process of this slot held go back to their
 * queues now, not after the visibility timeout. (What it had claimed and
 * not started, and the task it died running, come through settle_lost.) */
static int st_recover_slot(struct broker *b, struct err *e)
{
    struct sql_transport *t = impl(b);
    struct held_board *board = t->owner.held_board;
    int n = atomic_load(&board->n), restored = 0;
    for (int i = 0; i < n && i < HELD_BOARD_MAX; i++) {
        char *tag = board->e[i].tag;
        tag[sizeof(board->e[i].tag) - 1] = '\0';
        struct err ge = {0};
        int rc = give_back_tag(t, tag, &ge);
        if (rc == E_CONN_LOST) {
            if (e)
                *e = ge;
            return rc; /* compare-and-swap: giving back again is safe */
        }
        if (rc < 0)
            log_warning("held message %s not given back (%s); the visibility sweep will", tag,
                        ge.msg);
        restored += rc == BROKER_RESTORED;
    }
    atomic_store(&board->n, 0);
    if (restored)
        log_warning("restored %d ETA message(s) the previous child of this slot held", restored);
    return 0;
}

/* Back to the far end of its queue as a new row, counting the death in
 * the envelope (message_envelope_lost_count), as kombu's restore inserts
 * a new row; past max deaths, left for the caller to fail. */
static int requeue_lost(struct sql_transport *t, const char *token, int max, int *losses,
                        struct err *e)
{
    int64_t id, queue;
    int version;
    char *payload = NULL;
    if (!sql_tag_parse(token, &id, &version))
        return err_set(e, E_PROTOCOL, "'%.40s' names no claimed row", token);
    int rc = t->store.ops->read(&t->store, id, version, &payload, &queue, e);
    if (rc <= 0)
        return rc < 0 ? rc : BROKER_NOT_HELD;
    json_t *env = json_loads(payload, 0, NULL);
    free(payload);
    if (!json_is_object(env)) {
        json_decref(env);
        return err_set(e, E_PROTOCOL, "row %" PRId64 " is not a kombu envelope", id);
    }
    *losses = message_envelope_lost_count(env) + 1;
    if (*losses > (max < 0 ? 0 : max)) {
        json_decref(env);
        return BROKER_EXHAUSTED;
    }
    message_envelope_mark_lost(env, *losses);
    char *text = json_dumps(env, JSON_COMPACT);
    json_decref(env);
    rc = t->store.ops->replace(&t->store, id, version, text, e);
    free(text);
    return rc < 0 ? rc : rc ? BROKER_RESTORED : BROKER_NOT_HELD;
}

/* A lock a dead process held ended with its connection: its row is back
 * in its queue, unchanged, unless another process has taken it since.
 * Claimed now (if still there and free), it is settled as a claim is;
 * *tag gets the claim's tag. 1, 0 when it is gone or taken, or < 0. */
static int claim_unlocked(struct sql_transport *t, int64_t id, char *tag, size_t size,
                          struct err *e)
{
    if (!t->store.ops->claim_row)
        return 0;
    char stamp[32];
    claim_stamp(t, stamp);
    int version = 0;
    int rc = t->store.ops->claim_row(&t->store, id, stamp, &version, e);
    if (rc > 0)
        sql_tag_format(tag, size, id, version);
    return rc;
}

static int st_settle_lost(struct broker *b, const char *token, enum broker_lost how, int max,
                          int *losses, struct err *e)
{
    struct sql_transport *t = impl(b);
    int64_t id;
    int version;
    if (!strcmp(token, t->lost_lock)) {
        token = t->lost_claim;
    } else if (lock_tag_parse(token, &id)) {
        if (how == BROKER_LOST_RESTORE)
            return BROKER_RESTORED; /* rolled back with its process's connection */
        /* a transactional task's lock (the ack of an early-ack task came
         * before its start): counting the death, or settling it for good,
         * needs the row claimed */
        char claimed[40];
        int rc = claim_unlocked(t, id, claimed, sizeof(claimed), e);
        if (rc <= 0)
            return rc < 0 ? rc : how == BROKER_LOST_ACK ? 0 : BROKER_NOT_HELD;
        snprintf(t->lost_lock, sizeof(t->lost_lock), "%s", token);
        snprintf(t->lost_claim, sizeof(t->lost_claim), "%s", claimed);
        token = t->lost_claim;
    }
    switch (how) {
    case BROKER_LOST_RESTORE:
        return give_back_tag(t, token, e);
    case BROKER_LOST_REQUEUE:
        return requeue_lost(t, token, max, losses, e);
    case BROKER_LOST_ACK:
        if (!sql_tag_parse(token, &id, &version))
            return 0; /* nothing claimed: nothing to settle */
        return t->store.ops->remove(&t->store, id, version, e) < 0 ? E_CONN_LOST : 0;
    }
    return err_set(e, E_PROTOCOL, "unknown settlement of a lost message");
}

/* kombu's _put: the queue's row (created if absent), then the message row.
 * Committed when it returns: nothing is reported published that is not. */
static int st_publish(struct broker *b, const char *queue, int priority, const char *envelope,
                      size_t len, struct err *e)
{
    UNUSED(priority); /* stored in the envelope; kombu's SQL transport has no priorities */
    struct sql_transport *t = impl(b);
    int64_t id;
    int rc = queue_id(t, queue, &id, e);
    if (rc)
        return rc;
    char *text = xstrndup(envelope, len);
    rc = t->store.ops->insert(&t->store, id, text, len, e);
    free(text);
    return rc;
}

/* Celery's rpc:// reply on kombu's SQL transport: the default exchange
 * routes to the queue named reply_to, so the reply is a row of that queue
 * (created if absent, as kombu does), where the client's consumer polls. */
static int st_reply(struct broker *b, const char *reply_to, const char *correlation_id,
                    const char *content_type, const char *body, size_t len, struct err *e)
{
    struct sql_transport *t = impl(b);
    struct buf env = BUF_INIT;
    message_envelope_encode(&env, body, len, content_type, NULL, "", reply_to, correlation_id);
    int64_t id;
    int rc = queue_id(t, reply_to, &id, e);
    if (!rc)
        rc = t->store.ops->insert(&t->store, id, env.data, env.len, e);
    buf_release(&env);
    return rc;
}

static struct bus *st_bus(struct broker *b)
{
    return &impl(b)->events;
}

static void st_leave(struct broker *b)
{
    end_txn(impl(b));
    db_conn_close(&impl(b)->conn, NULL); /* a shared one is the child's to close */
}

static void st_release(struct broker *b)
{
    struct sql_transport *t = impl(b);
    if (!t)
        return;
    t->events.ops->release(&t->events);
    txn_ended(t); /* no I/O: the connection's close ends the transaction */
    db_conn_close(&t->conn, NULL);
    forget_queues(t);
    free_queue_set(t);
    free(t->store.impl);
    free(t);
    b->impl = NULL;
}

static const struct broker_ops sql_transport_ops = {
    .name = "sql",
    .caps = BROKER_CAP_RESTORE_BY_TAG,
    .open = st_open,
    .is_open = st_is_open,
    .consume = st_consume,
    .fetch = st_fetch,
    .delivery_release = st_delivery_release,
    .drop = st_drop,
    .track = st_track,
    .protect = st_protect,
    .keep = st_keep,
    .holds = st_holds,
    .ack = st_ack,
    .requeue = st_requeue,
    .done = st_done,
    .keepalive = st_keepalive,
    .flush = st_flush,
    .maintain = st_maintain,
    .recover_slot = st_recover_slot,
    .settle_lost = st_settle_lost,
    .publish = st_publish,
    .reply = st_reply,
    .bus = st_bus,
    .leave = st_leave,
    .release = st_release,
};

int broker_sql_transport_init(struct broker *b, const struct broker_config *cfg,
                              const struct broker_owner *owner)
{
    struct sql_transport *t = xcalloc(1, sizeof(*t));
    t->cfg = cfg;
    t->owner = *owner;
    t->store.ops = cfg->sql.kind == DB_SQLITE ? &sql_sqlite_store_ops : &sql_pg_store_ops;
    t->shared = cfg->sql.kind == DB_POSTGRES ? owner->task_db : NULL;
    t->store.conn = t->shared ? t->shared : &t->conn;
    t->store.task_savepoint = t->shared != NULL;
    t->lock_next = true;
    char app_name[64];
    snprintf(app_name, sizeof(app_name), "celeriac broker %d", owner->index);
    db_conn_init(&t->conn, &cfg->sql, app_name);
    t->conn.quiet = true; /* the worker reports broker failures, once per episode */
    st_consume(&(struct broker){.impl = t}, cfg->queues, cfg->n_queues);
    bus_null_init(&t->events);
    b->ops = &sql_transport_ops;
    b->impl = t;
    return 0;
}

static int parse_sqlite(const char *rest, struct db_config *db, struct err *e)
{
    /* SQLAlchemy: sqlite:///relative.db and sqlite:////abs/path.db; no
     * host; sqlite:// alone is an in-memory database, one per process. */
    if (strncmp(rest, "///", 3) || !rest[3])
        return err_set(e, -EINVAL, "an SQLite broker URL names a file: sqla+sqlite:///relative.db "
                       "or sqla+sqlite:////abs/path.db");
    const char *path = rest + 3;
    if (strchr(path, '?'))
        return err_set(e, -EINVAL, "SQLite broker URL options ('?...') are not supported");
    if (!strcmp(path, ":memory:"))
        return err_set(e, -EINVAL, "an in-memory SQLite broker would give each child its own "
                       "queue");
    db->kind = DB_SQLITE;
    db->sqlite_path = xstrdup(path);
    db->where = xstrdup(path);
    return 0;
}

int sql_broker_url_parse(const char *url, struct db_config *db, struct err *e)
{
    const char *rest = url + (strncasecmp(url, "sqla+", 5) ? 11 : 5);
    const char *scheme_end = strstr(rest, "://");
    if (!scheme_end)
        return err_set(e, -EINVAL, "an SQL broker URL is sqla+<SQLAlchemy URL>");
    size_t dialect_len = strcspn(rest, "+:");
    if (dialect_len == 6 && !strncasecmp(rest, "sqlite", 6))
        return parse_sqlite(scheme_end + 1, db, e); /* from the "///" on */
    if (!((dialect_len == 10 && !strncasecmp(rest, "postgresql", 10)) ||
          (dialect_len == 8 && !strncasecmp(rest, "postgres", 8))))
        return err_set(e, -EINVAL, "unsupported SQL broker dialect '%.*s' (want "
                       "sqla+postgresql:// or sqla+sqlite:///)",
                       (int)(dialect_len > 32 ? 32 : dialect_len), rest);
    /* postgresql+psycopg2://... names a Python driver: libpq takes the rest */
    struct buf uri = BUF_INIT;
    buf_addf(&uri, "postgresql://%s", scheme_end + 3);
    db->kind = DB_POSTGRES;
    db->url = buf_detach(&uri, NULL);
    return db_pg_describe(db->url, &db->where, e);
}
