/* SPDX-License-Identifier: MIT
 * broker/redis_transport.c: Redis behind broker.h. A child's delivery is
 * tracked in kombu's unacked hash (recorded) or, until its task is known to
 * ack early, in the child's hand (broker/redis.h), which a later process of the slot
 * empties back into the queue if this one dies first; the slot in shared
 * memory says which (popped_tag, hand_settled). Maintenance is kombu's
 * visibility sweep plus the sweep of dead workers' hands.
 */
#include "common.h"
#include "broker/broker.h"
#include "broker/bus.h"
#include "broker/redis.h"
#include "protocol/message.h"
#include "util/time.h"
#include "worker/salvage.h"
#include "worker/scoreboard.h"

struct redis_transport {
    struct broker_redis r;
    struct broker_owner owner;
    bool hand_full;              /* the hand holds the delivery being handled */
    bool kept;                   /* the delivery being handled acks late (keep) */
    uint64_t hand_hash;          /* ... whose bytes hash to this */
    int64_t next_sweep_ms;       /* monotonic time of the next maintenance */
    struct bus events;           /* riding on r.link */
};

static struct redis_transport *impl(const struct broker *b)
{
    return b->impl;
}

static int rt_open(struct broker *b, struct err *e)
{
    return broker_redis_open(&impl(b)->r, e);
}

static bool rt_is_open(const struct broker *b)
{
    return redis_link_is_open(&impl(b)->r.link);
}

static void rt_consume(struct broker *b, char *const *queues, size_t n)
{
    broker_redis_set_queues(&impl(b)->r, queues, n);
}

static int rt_fetch(struct broker *b, double timeout_s, struct delivery *d, struct err *e)
{
    struct redis_transport *t = impl(b);
    int rc = broker_redis_fetch(&t->r, timeout_s, d, e);
    if (rc || !d->raw)
        return rc;
    t->hand_full = t->r.hand != NULL && !d->recorded.tag;
    if (t->hand_full)
        t->hand_hash = broker_redis_hand_hash(d->raw, d->len);
    return 0;
}

static int rt_drop(struct broker *b, struct delivery *d, struct err *e)
{
    if (!d->recorded.tag)
        return 0; /* in the hand: done() forgets it */
    return broker_redis_ack(&impl(b)->r, d->recorded.tag, e);
}

/* The slot names the recorded tag: a death from here on leaves the message
 * to the next process of the slot to restore by it. */
static void note_popped(struct redis_transport *t, const char *tag)
{
    snprintf(t->owner.slot->popped_tag, sizeof(t->owner.slot->popped_tag), "%s", tag);
}

static void rt_track(struct broker *b, struct delivery *d, struct message *m)
{
    struct redis_transport *t = impl(b);
    struct err e = {0};
    if (d->recorded.tag && (strcmp(d->recorded.tag, m->delivery_tag) ||
                            strcmp(d->recorded.exchange, m->exchange) ||
                            strcmp(d->recorded.routing_key, m->routing_key))) {
        /* The pop's patterns were fooled (nested keys of the same names):
         * drop that record and write the right one below. */
        log_warning("message %s: unacked record corrected (tag %.40s)",
                    m->task_id ? m->task_id : "?", m->delivery_tag);
        if (broker_redis_ack(&t->r, d->recorded.tag, &e))
            log_warning("removing the wrong unacked record %.40s: %s", d->recorded.tag, e.msg);
        d->recorded.tag = NULL;
    }
    m->recorded = d->recorded.tag != NULL;
    if (!m->recorded && !t->hand_full) {
        /* Not recorded by the pop (it could not be tracked): record it as
         * kombu would. */
        char *env = message_envelope_json(m);
        if (broker_redis_record(&t->r, m->delivery_tag, env, m->exchange, m->routing_key, &e))
            log_warning("recording delivery %s as unacked failed: %s", m->delivery_tag, e.msg);
        else
            m->recorded = true;
        free(env);
    }
    if (m->recorded)
        note_popped(t, m->delivery_tag);
}

/* Before a delivery may be held for long: record it in unacked as kombu
 * does, where the visibility sweep of any worker finds it (the same
 * transaction empties the hand). */
static int rt_protect(struct broker *b, struct message *m, struct err *e)
{
    struct redis_transport *t = impl(b);
    if (m->recorded)
        return 0;
    char *env = message_envelope_json(m);
    int rc = broker_redis_record(&t->r, m->delivery_tag, env, m->exchange, m->routing_key, e);
    free(env);
    if (rc)
        return rc;
    m->recorded = true;
    t->hand_full = false;
    note_popped(t, m->delivery_tag);
    return 0;
}

/* A late-ack task's message leaves the hand for kombu's record before the
 * task starts; the next pop records at once (record_next). One waiting for
 * a rate limit stays in the hand, where a death leaves it to the slot's
 * next process. */
static int rt_keep(struct broker *b, struct message *m, bool acks_late, struct err *e)
{
    if (!acks_late)
        return 0;
    impl(b)->kept = true;
    return rt_protect(b, m, e);
}

/* The hand's message started or was settled: from now on a later process of
 * this slot must not put it back (it is emptied with our next pop). */
static void release_hand(struct redis_transport *t)
{
    if (!t->hand_full)
        return;
    t->hand_full = false;
    atomic_store(&t->owner.slot->hand_settled, t->hand_hash);
    broker_redis_hand_settled(&t->r, t->hand_hash);
}

/* An unrecorded delivery needs no ack at all: it is in the hand. */
static int rt_ack(struct broker *b, struct message *m, unsigned flags, struct err *e)
{
    struct redis_transport *t = impl(b);
    if (!m->recorded) {
        release_hand(t);
        return 0;
    }
    if (flags & BROKER_NOWAIT)
        return broker_redis_ack_send(&t->r, m->delivery_tag, e);
    return broker_redis_ack(&t->r, m->delivery_tag, e);
}

static int rt_requeue(struct broker *b, struct message *m, struct err *e)
{
    struct redis_transport *t = impl(b);
    if (m->recorded) {
        int rc = broker_redis_restore(&t->r, m->delivery_tag, false, e);
        return rc < 0 ? rc : 0;
    }
    if (!t->hand_full)
        return err_set(e, E_PROTOCOL, "the message is no longer in the hand");
    int rc = broker_redis_hand_return(&t->r, 0, NULL, e);
    if (rc < 0)
        return rc;
    t->hand_full = false;
    return 0;
}

static void rt_done(struct broker *b)
{
    struct redis_transport *t = impl(b);
    release_hand(t);
    t->owner.slot->popped_tag[0] = '\0';
    t->r.record_next = t->kept;
    t->kept = false;
}

/* A held message's unacked score is its delivery time; kept fresh so the
 * visibility sweep does not hand it to another worker while it is held. */
static int rt_keepalive(struct broker *b, struct message *const *held, size_t n, struct err *e)
{
    const char **tags = xcalloc(n, sizeof(*tags));
    for (size_t i = 0; i < n; i++)
        tags[i] = held[i]->delivery_tag;
    int rc = broker_redis_touch(&impl(b)->r, tags, n, e);
    free(tags);
    return rc;
}

static int rt_flush(struct broker *b, struct err *e)
{
    return broker_redis_confirm(&impl(b)->r, e);
}

/* The alive key's expiry when a child refreshes it: children refresh it
 * only on their sweep schedule (the control process every few seconds),
 * so it must outlast a sweep interval or two. */
static int alive_ttl_s(const struct broker_owner *o)
{
    int ttl = 3 * o->sweep_interval_s;
    return ttl > BROKER_ALIVE_TTL_S ? ttl : BROKER_ALIVE_TTL_S;
}

/* Every child tries the sweep on its own schedule; kombu's mutex makes sure
 * only one process in the fleet (Python or C) sweeps at a time. The first
 * call runs before the child's first pop, so the worker is advertised alive
 * before any of its hands can hold a message. Children refresh the alive key
 * too, not only the control process: with --without-remote-control there is
 * none, and a busy child does not refresh it, hence the longer expiry. */
static void rt_maintain(struct broker *b)
{
    struct redis_transport *t = impl(b);
    const struct broker_owner *o = &t->owner;
    int64_t now = time_mono_ms();
    if (now < t->next_sweep_ms)
        return;
    int64_t interval = (int64_t)o->sweep_interval_s * 1000;
    t->next_sweep_ms = now + interval / 2 + (int64_t)(getpid() % 1000) * interval / 2000;
    struct err e = {0};
    /* The master pid the hands are named by (taken at start): after the
     * master's death getppid() would name another process. */
    if (broker_redis_advertise_alive(&t->r.link, o->node, o->master_pid, alive_ttl_s(o), &e) ==
        E_PROTOCOL)
        log_warning("advertising this worker alive failed: %s", e.msg);
    if (broker_redis_sweep(&t->r, o->visibility_timeout, &e) < 0)
        log_warning("visibility sweep failed: %s", e.msg);
    if (broker_redis_sweep_hands(&t->r, o->visibility_timeout, interval, &e) < 0)
        log_warning("sweep of dead workers' hands failed: %s", e.msg);
}

/* The ETA messages the previous child of this slot held go back to their
 * queues now (compare-and-swap: one already acked is left alone), not after
 * the visibility timeout; then the message left in the hand by an earlier
 * process of this slot (a dead child, or a whole worker of this name) that
 * never started it. */
static int rt_recover_slot(struct broker *b, struct err *e)
{
    struct redis_transport *t = impl(b);
    struct slot *slot = t->owner.slot;
    int restored = 0;
    if (atomic_load(&t->owner.held_board->n) > 0) {
        int rc = held_board_restore(&t->r, t->owner.held_board, &restored, e);
        if (restored)
            log_warning("restored %d ETA message(s) the previous child of this slot held",
                        restored);
        if (rc)
            return rc;
    }
    uint64_t settled = atomic_load(&slot->lost_hand_settled);
    if (settled)
        broker_redis_hand_settled(&t->r, settled); /* so a reconnect does not deliver it */
    int rc = hand_salvage(&t->r, settled, e);
    if (rc >= 0)
        rc = hand_adopt_orphans(&t->r, t->owner.node, t->owner.master_pid, t->owner.index, e);
    return rc < 0 ? rc : 0;
}

static int rt_settle_lost(struct broker *b, const char *token, enum broker_lost how, int max,
                          int *losses, struct err *e)
{
    struct redis_transport *t = impl(b);
    switch (how) {
    case BROKER_LOST_RESTORE:
        return broker_redis_restore(&t->r, token, false, e);
    case BROKER_LOST_REQUEUE:
        return broker_redis_requeue_lost(&t->r, token, max, losses, e);
    case BROKER_LOST_ACK:
        return broker_redis_ack(&t->r, token, e);
    }
    return err_set(e, E_PROTOCOL, "unknown settlement of a lost message");
}

static int rt_publish(struct broker *b, const char *queue, int priority, const char *envelope,
                      size_t len, struct err *e)
{
    return broker_redis_publish(&impl(b)->r, queue, priority, envelope, len, e);
}

/* Empties a settled hand, and reads the replies of what was sent without
 * waiting; a connection that died in between gets one reconnect, which sends
 * those commands again. */
static void rt_leave(struct broker *b)
{
    struct redis_transport *t = impl(b);
    release_hand(t);
    if (!redis_link_is_open(&t->r.link))
        return;
    struct err e = {0};
    if (broker_redis_hand_clear(&t->r, &e))
        log_warning("emptying the hand: %s; the next child of this slot will", e.msg);
    if (redis_link_is_open(&t->r.link) && broker_redis_confirm(&t->r, &e))
        broker_redis_open(&t->r, &e);
}

static void rt_release(struct broker *b)
{
    struct redis_transport *t = impl(b);
    if (!t)
        return;
    t->events.ops->release(&t->events);
    broker_redis_release(&t->r, NULL);
    free(t);
    b->impl = NULL;
}

static int rt_reply(struct broker *b, const char *reply_to, const char *correlation_id,
                    const char *content_type, const char *body, size_t len, struct err *e)
{
    UNUSED(b);
    UNUSED(reply_to);
    UNUSED(correlation_id);
    UNUSED(content_type);
    UNUSED(body);
    UNUSED(len);
    return err_set(e, -ENOTSUP, "rpc:// results need an amqp:// broker");
}

static struct bus *rt_bus(struct broker *b)
{
    return &impl(b)->events;
}

static const struct broker_ops redis_transport_ops = {
    .name = "redis",
    .caps = BROKER_CAP_RESTORE_BY_TAG,
    .open = rt_open,
    .is_open = rt_is_open,
    .consume = rt_consume,
    .fetch = rt_fetch,
    .delivery_release = broker_redis_delivery_release,
    .drop = rt_drop,
    .track = rt_track,
    .protect = rt_protect,
    .keep = rt_keep,
    .ack = rt_ack,
    .requeue = rt_requeue,
    .done = rt_done,
    .keepalive = rt_keepalive,
    .flush = rt_flush,
    .maintain = rt_maintain,
    .recover_slot = rt_recover_slot,
    .settle_lost = rt_settle_lost,
    .publish = rt_publish,
    .reply = rt_reply,
    .bus = rt_bus,
    .leave = rt_leave,
    .release = rt_release,
};

int broker_redis_transport_init(struct broker *b, const struct broker_config *cfg,
                                const struct broker_owner *owner)
{
    struct redis_transport *t = xcalloc(1, sizeof(*t));
    t->owner = *owner;
    broker_redis_init(&t->r, cfg);
    if (!cfg->record_unacked)
        broker_redis_set_hand(&t->r, owner->node, owner->master_pid, owner->index);
    bus_redis_init(&t->events, cfg, NULL, &t->r.link);
    b->ops = &redis_transport_ops;
    b->impl = t;
    return 0;
}
