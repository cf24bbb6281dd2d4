/* SPDX-License-Identifier: MIT
 * broker/amqp_transport.c: RabbitMQ behind broker.h (see broker/amqp.h). The
 * server keeps every unacked delivery of a channel and requeues it when the
 * channel or connection closes, so nothing is written to track, protect or
 * recover a message, and there is no sweep: a dead child's messages come
 * back by themselves. Delivery tags die with their channel; this file keeps
 * the tags of the open channel and never acks a dead one on a new channel.
 * A child's events ride on its connection (amqp_bus.c).
 */
#include "common.h"
#include "broker/amqp.h"
#include "broker/bus.h"
#include "protocol/message.h"
#include "util/amqp_declare.h"
#include "util/amqp_link.h"
#include "util/amqp_msg.h"
#include "util/buf.h"
#include "util/log.h"
#include "util/strcopy.h"

#include <inttypes.h>

/* TCP keepalive on connections without AMQP heartbeats (see open_url):
 * a peer that vanished is noticed after about idle + interval * count s. */
#define KEEPALIVE_IDLE_S 60
#define KEEPALIVE_INTERVAL_S 10
#define KEEPALIVE_COUNT 6

struct unsettled {               /* a delivery of the open channel not yet settled */
    uint64_t tag;
    bool held;                   /* held for its ETA (protected) */
};

struct amqp_transport {
    struct amqp_link link;
    const struct broker_config *cfg;   /* borrowed */
    char **queues;               /* the set to consume, owned */
    size_t n_queues;
    bool subscribe;              /* (re)create the consumers before the next fetch */
    bool declared;               /* the queues were declared on this connection */
    amqp_connection_state_t conn;      /* the connection and channel the tags below */
    amqp_channel_t channel;            /* belong to */
    struct unsettled *tags;
    size_t n_tags, cap_tags;
    struct bus events;           /* riding on link */
};

/* What a delivery owns (struct delivery's owner). */
struct amqp_owned {
    json_t *envelope;
    amqp_bytes_t body; /* taken from the delivery: the decoder reads it as is */
    uint64_t tag;
};

static struct amqp_transport *impl(const struct broker *b)
{
    return b->impl;
}

/* The link's channel changed (reconnect, or the server closed the channel):
 * every tag we held died with the old one, and the server requeued those
 * messages; consumers must be created again. */
static void follow_channel(struct amqp_transport *t)
{
    if (t->link.conn == t->conn && t->link.channel == t->channel)
        return;
    t->conn = t->link.conn;
    t->channel = t->link.channel;
    t->n_tags = 0;
    t->subscribe = true;
    if (!t->conn)
        t->declared = false;
}

static struct unsettled *find_tag(struct amqp_transport *t, uint64_t tag)
{
    for (size_t i = 0; i < t->n_tags; i++)
        if (t->tags[i].tag == tag)
            return &t->tags[i];
    return NULL;
}

static void forget_tag(struct amqp_transport *t, struct unsettled *u)
{
    *u = t->tags[--t->n_tags];
}

static void remember_tag(struct amqp_transport *t, uint64_t tag)
{
    if (t->n_tags == t->cap_tags) {
        t->cap_tags = t->cap_tags ? t->cap_tags * 2 : 8;
        t->tags = xrealloc(t->tags, t->cap_tags * sizeof(*t->tags));
    }
    t->tags[t->n_tags++] = (struct unsettled){.tag = tag};
}

/* The AMQP delivery tag a decoded message carries (properties.delivery_tag,
 * written by amqp_msg_envelope_bodiless from the delivery itself). */
static bool parse_tag(const char *s, uint64_t *tag)
{
    if (!s || !*s)
        return false;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || s[0] == '-')
        return false;
    *tag = v;
    return true;
}

/* Heartbeats: rabbitmq-c services them only inside library calls, and a
 * child runs its task between two such calls for as long as the task
 * takes. With heartbeats on, a task longer than two heartbeat intervals
 * would have the server close the child's connection and requeue the
 * late-ack message still running: a duplicate run. So a child asks for no
 * heartbeats (the server accepts 0) unless the URL names heartbeat=N
 * explicitly, and relies on TCP keepalive to notice a vanished server (a
 * server that closes cleanly is noticed at the next read anyway). */
static int open_url(struct amqp_transport *t, struct err *e)
{
    struct amqp_url u = t->cfg->amqp; /* shallow: only the heartbeat differs */
    if (!u.heartbeat_given)
        u.heartbeat = 0;
    int rc = amqp_link_open(&t->link, &u, e);
    if (rc)
        return rc;
    if (!t->link.heartbeat) {
        int krc = amqp_link_keepalive(&t->link, KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S,
                                      KEEPALIVE_COUNT);
        if (krc)
            log_warning("TCP keepalive on %s: %s", t->link.where, strerror(-krc));
    }
    return 0;
}

/* Declares the queues as a Python worker does (an existing queue is adopted
 * as it is: quorum, x-max-priority, ...), sets the prefetch and consumes
 * each. Prefetch is per consumer (global=false): RabbitMQ refuses global
 * QoS on quorum queues (540 NOT_IMPLEMENTED), and a per-consumer count
 * counts only the unacked deliveries of that consumer tag. Celery raises
 * its channel-wide prefetch by one for each ETA message it holds, so held
 * messages do not stop the flow; here the consumers are re-created after a
 * message is held, and the new consumer does not count what the old one
 * delivered: the same effect. */
static int subscribe(struct amqp_transport *t, struct err *e)
{
    if (!t->subscribe)
        return 0;
    int rc = amqp_link_cancel_all(&t->link, e);
    for (size_t i = 0; !rc && !t->declared && i < t->n_queues; i++)
        rc = amqp_declare_task_queue(&t->link, t->queues[i], t->cfg->queue_max_priority,
                                     t->cfg->queue_type, AMQP_DECLARE_ADOPT, e);
    if (!rc)
        t->declared = true;
    if (!rc)
        rc = amqp_link_qos(&t->link, (uint16_t)t->cfg->prefetch, e);
    for (size_t i = 0; !rc && i < t->n_queues; i++)
        rc = amqp_link_consume(&t->link, t->queues[i], false, e);
    follow_channel(t);
    if (!rc)
        t->subscribe = false;
    return rc;
}

static int at_open(struct broker *b, struct err *e)
{
    struct amqp_transport *t = impl(b);
    t->conn = NULL; /* whatever came before is dead, even if malloc reuses the address */
    t->n_tags = 0;
    int rc = open_url(t, e);
    t->declared = false;
    follow_channel(t);
    t->subscribe = true;
    if (!rc)
        rc = subscribe(t, e);
    return rc;
}

static bool at_is_open(const struct broker *b)
{
    return amqp_link_is_open(&impl(b)->link);
}

static void free_queues(struct amqp_transport *t)
{
    for (size_t i = 0; i < t->n_queues; i++)
        free(t->queues[i]);
    free(t->queues);
    t->queues = NULL;
    t->n_queues = 0;
}

static void at_consume(struct broker *b, char *const *queues, size_t n)
{
    struct amqp_transport *t = impl(b);
    free_queues(t);
    t->queues = xcalloc(n ? n : 1, sizeof(*t->queues));
    for (size_t i = 0; i < n; i++)
        t->queues[i] = xstrdup(queues[i]);
    t->n_queues = n;
    t->subscribe = true;
    t->declared = false;
}

/* The queue a delivery came from: its consumer's, else its routing key. */
static void delivery_queue(const struct amqp_transport *t, const amqp_envelope_t *env,
                           char *out, size_t size)
{
    for (size_t i = 0; i < t->link.nconsumers; i++) {
        const char *tag = t->link.consumers[i].tag;
        if (strlen(tag) == env->consumer_tag.len &&
            !memcmp(tag, env->consumer_tag.bytes, env->consumer_tag.len)) {
            str_copy(out, size, t->link.consumers[i].queue);
            return;
        }
    }
    snprintf(out, size, "%.*s", (int)env->routing_key.len, (const char *)env->routing_key.bytes);
}

static int at_fetch(struct broker *b, double timeout_s, struct delivery *d, struct err *e)
{
    struct amqp_transport *t = impl(b);
    memset(d, 0, sizeof(*d));
    int rc = subscribe(t, e);
    if (rc)
        return rc;
    struct amqp_link_delivery ad;
    rc = amqp_link_next(&t->link, (int)(timeout_s * 1000), &ad, e);
    follow_channel(t);
    if (rc == -EAGAIN)
        return 0;
    if (rc == -ECANCELED) {
        /* The queue was deleted (or its node went away): declare it again
         * and consume it, rather than sit idle on it. */
        log_warning("%s; declaring and consuming it again", e ? e->msg : "consumer cancelled");
        t->subscribe = true;
        t->declared = false;
        return 0;
    }
    if (rc)
        return rc;
    struct amqp_owned *o = xcalloc(1, sizeof(*o));
    o->tag = ad.env.delivery_tag;
    delivery_queue(t, &ad.env, d->queue, sizeof(d->queue));
    struct err ce = {0};
    if (!(o->envelope = amqp_msg_envelope_bodiless(&ad.env, &ce))) {
        /* Headers JSON cannot carry: rejected, as Celery rejects what it
         * cannot decode. */
        log_error("rejected a message from queue '%s': %s", d->queue, ce.msg);
        rc = amqp_link_reject(&t->link, ad.env.channel, o->tag, false, e);
        follow_channel(t);
        amqp_link_delivery_release(&ad);
        free(o);
        d->queue[0] = '\0';
        return rc == -ESTALE ? 0 : rc;
    }
    d->len = ad.env.message.body.len;
    o->body = ad.env.message.body;
    ad.env.message.body = amqp_empty_bytes;
    d->body = o->body.len ? o->body.bytes : "";
    amqp_link_delivery_release(&ad);
    remember_tag(t, o->tag);
    d->envelope = o->envelope;
    d->owner = o;
    return 0;
}

static void at_delivery_release(struct delivery *d)
{
    struct amqp_owned *o = d->owner;
    if (o) {
        json_decref(o->envelope);
        amqp_bytes_free(o->body);
        free(o);
    }
    d->owner = NULL;
    d->envelope = NULL;
    d->body = NULL;
}

/* Settles tag on the open channel: ack, or reject (requeue or not). A tag
 * of a channel that has closed since is no longer ours: the server put the
 * message back when the channel closed, so there is nothing left to do. */
enum settle_how { SETTLE_HOW_ACK, SETTLE_HOW_REQUEUE, SETTLE_HOW_DROP };

static int settle_tag(struct amqp_transport *t, uint64_t tag, enum settle_how how,
                      struct err *e)
{
    follow_channel(t);
    struct unsettled *u = find_tag(t, tag);
    if (!u) {
        log_info("delivery %" PRIu64 " was on a channel that has closed since: the server "
                 "has requeued it", tag);
        return 0;
    }
    int rc = how == SETTLE_HOW_ACK ? amqp_link_ack(&t->link, t->channel, tag, e)
                                   : amqp_link_reject(&t->link, t->channel, tag,
                                                      how == SETTLE_HOW_REQUEUE, e);
    if (!rc)
        forget_tag(t, u);
    follow_channel(t);
    return rc == -ESTALE ? 0 : rc;
}

static int at_drop(struct broker *b, struct delivery *d, struct err *e)
{
    struct amqp_owned *o = d->owner;
    if (!o)
        return 0;
    return settle_tag(impl(b), o->tag, SETTLE_HOW_DROP, e);
}

static int message_tag(const struct message *m, uint64_t *tag, struct err *e)
{
    if (!parse_tag(m->delivery_tag, tag))
        return err_set(e, E_PROTOCOL, "delivery tag '%.40s' is not an AMQP tag",
                       m->delivery_tag ? m->delivery_tag : "");
    return 0;
}

/* The channel holds the unacked delivery: settled by an ack or a reject. */
static void at_track(struct broker *b, struct delivery *d, struct message *m)
{
    UNUSED(b);
    UNUSED(d);
    m->recorded = true;
}

/* Held for its ETA: already safe (the server requeues it if this process
 * dies); the consumers are re-created so it does not block the flow (see
 * subscribe). */
static int at_protect(struct broker *b, struct message *m, struct err *e)
{
    struct amqp_transport *t = impl(b);
    uint64_t tag = 0;
    if (message_tag(m, &tag, e))
        return 0;
    struct unsettled *u = find_tag(t, tag);
    if (u && !u->held) {
        u->held = true;
        t->subscribe = true;
    }
    return 0;
}

/* A tag of the open channel; tags of a channel that closed were forgotten
 * with it (follow_channel), and the server requeued their messages. */
static bool at_holds(struct broker *b, const struct message *m)
{
    struct amqp_transport *t = impl(b);
    uint64_t tag = 0;
    follow_channel(t);
    return parse_tag(m->delivery_tag, &tag) && find_tag(t, tag);
}

/* basic.ack never waits for a reply in AMQP: BROKER_NOWAIT is the case. */
static int at_ack(struct broker *b, struct message *m, unsigned flags, struct err *e)
{
    UNUSED(flags);
    uint64_t tag = 0;
    int rc = message_tag(m, &tag, e);
    return rc ? rc : settle_tag(impl(b), tag, SETTLE_HOW_ACK, e);
}

static int at_requeue(struct broker *b, struct message *m, struct err *e)
{
    uint64_t tag = 0;
    int rc = message_tag(m, &tag, e);
    return rc ? rc : settle_tag(impl(b), tag, SETTLE_HOW_REQUEUE, e);
}

static void at_done(struct broker *b)
{
    UNUSED(b);
}

static int at_keepalive(struct broker *b, struct message *const *held, size_t n, struct err *e)
{
    UNUSED(b);
    UNUSED(held);
    UNUSED(n);
    UNUSED(e);
    return 0; /* the channel holds them as long as it lives */
}

static int at_flush(struct broker *b, struct err *e)
{
    UNUSED(b);
    UNUSED(e);
    return 0; /* acks have no reply; publishes are confirmed before they return */
}

static void at_maintain(struct broker *b)
{
    UNUSED(b); /* no visibility timeout on AMQP: nothing to sweep */
}

static int at_recover_slot(struct broker *b, struct err *e)
{
    UNUSED(b);
    UNUSED(e);
    return 0; /* the server requeued what a dead child held when its connection closed */
}

/* The lost child's tags died with its channel: the server requeued its
 * unacked messages then, and nothing can settle them from here. */
static int at_settle_lost(struct broker *b, const char *token, enum broker_lost how, int max,
                          int *losses, struct err *e)
{
    UNUSED(b);
    UNUSED(token);
    UNUSED(max);
    UNUSED(losses);
    UNUSED(e);
    return how == BROKER_LOST_ACK ? 0 : BROKER_NOT_HELD;
}

/* One publish of a task envelope as Celery does it: to the default
 * exchange with the queue's name as routing key, or to the exchange its
 * delivery_info names (a retry of a message that came through one) with
 * its routing key; persistent, mandatory (so a queue that does not exist
 * yet is noticed), and confirmed. Priority 0 is sent as no priority, as a
 * Python worker sends a message without one (RabbitMQ reads both as 0). */
static int publish_once(struct amqp_link *l, const char *queue, int priority, const json_t *env,
                        bool *via_exchange, struct err *e)
{
    struct amqp_msg_outgoing out;
    int rc = amqp_msg_from_envelope(&out, env, e);
    if (!rc) {
        if (priority > 0 && !(out.props._flags & AMQP_BASIC_PRIORITY_FLAG)) {
            out.props._flags |= AMQP_BASIC_PRIORITY_FLAG;
            out.props.priority = (uint8_t)priority;
        }
        if (!out.props.priority)
            out.props._flags &= ~AMQP_BASIC_PRIORITY_FLAG;
        *via_exchange = out.exchange[0] != '\0';
        rc = amqp_link_publish(l, out.exchange, *via_exchange ? out.routing_key : queue, true,
                               &out.props, out.body, AMQP_LINK_RPC_TIMEOUT_MS, e);
    }
    amqp_msg_outgoing_release(&out);
    return rc;
}

int broker_amqp_publish_task(struct amqp_link *l, const char *queue, int priority,
                             const char *envelope, size_t len, struct err *e)
{
    json_error_t jerr;
    json_t *env = json_loadb(envelope, len, 0, &jerr);
    if (!env)
        return err_set(e, -EINVAL, "envelope to publish is not JSON: %s", jerr.text);
    bool via_exchange = false;
    int rc = publish_once(l, queue, priority, env, &via_exchange, e);
    if (rc == -ENOENT && !via_exchange) {
        /* No such queue yet: declare it as a Python client would, then
         * publish again. (Through a named exchange, no queue is bound for
         * the key: an error, where Python's unconfirmed publish would lose
         * the message without a word.) Not a passive declare first: the
         * queue is known to be missing, and the 404 that would answer it
         * closes the channel, which puts back every delivery this child
         * holds (ETA messages it would still run: twice). */
        rc = amqp_declare_task_queue(l, queue, 0, NULL, 0, e);
        if (!rc)
            rc = publish_once(l, queue, priority, env, &via_exchange, e);
    }
    if (rc == -ETIMEDOUT) {
        /* Its fate is unknown: start over on a new connection (the caller
         * publishes again; a duplicate is better than a loss). */
        amqp_link_close(l, e ? e->msg : "no publisher confirm");
        rc = E_CONN_LOST;
    }
    json_decref(env);
    return rc;
}

static int at_publish(struct broker *b, const char *queue, int priority, const char *envelope,
                      size_t len, struct err *e)
{
    struct amqp_transport *t = impl(b);
    int rc = broker_amqp_publish_task(&t->link, queue, priority, envelope, len, e);
    follow_channel(t);
    return rc;
}

static void at_leave(struct broker *b)
{
    struct amqp_transport *t = impl(b);
    amqp_link_close(&t->link, NULL);
    follow_channel(t);
}

static int at_reply(struct broker *b, const char *reply_to, const char *correlation_id,
                    const char *content_type, const char *body, size_t len, struct err *e)
{
    struct amqp_transport *t = impl(b);
    bool json = !strcmp(content_type, "application/json");
    amqp_basic_properties_t props = {
        ._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_CONTENT_ENCODING_FLAG |
                  AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_CORRELATION_ID_FLAG,
        .content_type = amqp_cstring_bytes(content_type),
        .content_encoding = amqp_cstring_bytes(json ? "utf-8" : "binary"),
        .delivery_mode = 1, /* Celery's result_persistent is off by default */
        .correlation_id = amqp_cstring_bytes(correlation_id),
    };
    /* Not mandatory: a client that left took its auto-delete queue along,
     * and Celery drops such a reply too. */
    int rc = amqp_link_publish(&t->link, "", reply_to, false, &props,
                               (amqp_bytes_t){.len = len, .bytes = (void *)body},
                               AMQP_LINK_RPC_TIMEOUT_MS, e);
    if (rc == -ETIMEDOUT) {
        amqp_link_close(&t->link, e ? e->msg : "no publisher confirm");
        rc = E_CONN_LOST;
    }
    follow_channel(t);
    return rc;
}

static struct bus *at_bus(struct broker *b)
{
    return &impl(b)->events;
}

static void at_release(struct broker *b)
{
    struct amqp_transport *t = impl(b);
    if (!t)
        return;
    t->events.ops->release(&t->events);
    amqp_link_close(&t->link, NULL);
    free_queues(t);
    free(t->tags);
    free(t);
    b->impl = NULL;
}

static const struct broker_ops amqp_transport_ops = {
    .name = "amqp",
    .caps = 0,
    .open = at_open,
    .is_open = at_is_open,
    .consume = at_consume,
    .fetch = at_fetch,
    .delivery_release = at_delivery_release,
    .drop = at_drop,
    .track = at_track,
    .protect = at_protect,
    .ack = at_ack,
    .requeue = at_requeue,
    .done = at_done,
    .holds = at_holds,
    .keepalive = at_keepalive,
    .flush = at_flush,
    .maintain = at_maintain,
    .recover_slot = at_recover_slot,
    .settle_lost = at_settle_lost,
    .publish = at_publish,
    .reply = at_reply,
    .bus = at_bus,
    .leave = at_leave,
    .release = at_release,
};

int broker_amqp_transport_init(struct broker *b, const struct broker_config *cfg,
                               const struct broker_owner *owner)
{
    UNUSED(owner);
    struct amqp_transport *t = xcalloc(1, sizeof(*t));
    amqp_link_init(&t->link, "broker");
    t->cfg = cfg;
    at_consume(&(struct broker){.impl = t}, cfg->queues, cfg->n_queues);
    bus_amqp_init(&t->events, cfg, NULL, &t->link);
    b->ops = &amqp_transport_ops;
    b->impl = t;
    return 0;
}
