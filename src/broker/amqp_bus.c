/* SPDX-License-Identifier: MIT
 * broker/amqp_bus.c: remote control and events on RabbitMQ, with the
 * topology a Celery 5.2 worker declares (util/amqp_declare.h): requests
 * arrive through the celery.pidbox fanout exchange on the queue
 * "<node>.celery.pidbox", consumed without acks; replies go to the direct
 * exchange reply.celery.pidbox with the request's routing key, confirmed;
 * events go to the celeryev topic exchange, transient and unconfirmed.
 */
#include "common.h"
#include "broker/broker.h"
#include "broker/bus.h"
#include "util/amqp_declare.h"
#include "util/amqp_link.h"
#include "util/amqp_msg.h"
#include "util/buf.h"
#include "util/log.h"

/* How long a reply may wait for the broker's confirm. */
#define REPLY_CONFIRM_MS 10000

struct amqp_bus {
    const struct broker_config *cfg;   /* borrowed */
    const char *node;                  /* borrowed; NULL when riding */
    struct amqp_link own;              /* the control process's connection */
    struct amqp_link *link;            /* &own, or the host's link when riding */
    amqp_connection_state_t declared_on; /* the connection (and its connect time) */
    int64_t declared_at_ms;              /* celeryev was declared on */
};

static struct amqp_bus *impl(const struct bus *b)
{
    return b->impl;
}

static int ab_open(struct bus *b, struct err *e)
{
    struct amqp_bus *t = impl(b);
    if (!t->node)
        return err_set(e, -EINVAL, "a bus riding on a task connection cannot listen");
    amqp_link_close(&t->own, NULL);
    struct buf queue = BUF_INIT;
    int rc = amqp_link_open(&t->own, &t->cfg->amqp, e);
    if (!rc)
        rc = amqp_declare_pidbox(&t->own, t->node, &queue, e);
    if (!rc)
        rc = amqp_declare_events(&t->own, e);
    if (!rc)
        rc = amqp_link_consume(&t->own, queue.data, true, e);
    buf_release(&queue);
    if (rc) {
        amqp_link_close(&t->own, NULL);
        return rc == E_CONFIG ? E_CONFIG : E_CONN_LOST;
    }
    t->declared_on = t->own.conn;
    t->declared_at_ms = t->own.connected_ms;
    return 0;
}

static bool ab_is_open(const struct bus *b)
{
    return amqp_link_is_open(impl(b)->link);
}

static int ab_next(struct bus *b, int timeout_ms, struct buf *envelope, struct err *e)
{
    struct amqp_bus *t = impl(b);
    struct amqp_link_delivery d;
    int rc = amqp_link_next(&t->own, timeout_ms, &d, e);
    if (rc == -EAGAIN)
        return 0;
    if (rc) {
        /* A closed channel or a cancelled consumer leaves the pidbox
         * unheard: start over with a fresh connection and declarations. */
        amqp_link_close(&t->own, e->msg);
        return E_CONN_LOST;
    }
    struct err why = {0};
    rc = amqp_msg_to_envelope(envelope, &d.env, &why);
    amqp_link_delivery_release(&d);
    if (rc) {
        log_warning("ignored a remote-control message: %s", why.msg);
        return 0;
    }
    return 1;
}

/* The properties of a control reply or an event: JSON, transient. */
static int props_init(amqp_basic_properties_t *p, amqp_pool_t *pool, json_t *headers,
                      struct err *e)
{
    memset(p, 0, sizeof(*p));
    p->_flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_CONTENT_ENCODING_FLAG |
                AMQP_BASIC_DELIVERY_MODE_FLAG;
    p->content_type = amqp_cstring_bytes("application/json");
    p->content_encoding = amqp_cstring_bytes("utf-8");
    p->delivery_mode = 1;
    if (!headers)
        return 0;
    p->_flags |= AMQP_BASIC_HEADERS_FLAG;
    return amqp_msg_table_from_json(&p->headers, headers, pool, e);
}

static int ab_reply(struct bus *b, const char *exchange, const char *routing_key,
                    const char *body, json_t *headers, struct err *e)
{
    struct amqp_bus *t = impl(b);
    amqp_pool_t pool;
    init_amqp_pool(&pool, 1024);
    amqp_basic_properties_t props;
    int rc = props_init(&props, &pool, headers, e);
    if (!rc)
        rc = amqp_link_publish(t->link, exchange, routing_key, false, &props,
                               amqp_cstring_bytes(body), REPLY_CONFIRM_MS, e);
    empty_amqp_pool(&pool);
    if (rc == -ETIMEDOUT || rc == E_PROTOCOL) {
        /* No confirm, or the channel closed under us (the exchange was
         * deleted): start over on a fresh connection. */
        amqp_link_close(t->link, e->msg);
        rc = E_CONN_LOST;
    }
    return rc == E_REFUSED ? 0 : rc; /* nacked: the client asks again */
}

static int ab_event(struct bus *b, const char *routing_key, const char *body, json_t *headers)
{
    struct amqp_bus *t = impl(b);
    struct err e = {0};
    if (!amqp_link_can_use(t->link, &e))
        return E_CONN_LOST;
    if (t->declared_on != t->link->conn || t->declared_at_ms != t->link->connected_ms) {
        /* A child's task connection has not declared celeryev: publishing
         * to an exchange that does not exist would close its channel. */
        if (amqp_declare_events(t->link, &e))
            return E_CONN_LOST;
        t->declared_on = t->link->conn;
        t->declared_at_ms = t->link->connected_ms;
    }
    amqp_pool_t pool;
    init_amqp_pool(&pool, 1024);
    amqp_basic_properties_t props;
    int rc = props_init(&props, &pool, headers, &e);
    if (!rc)
        rc = amqp_link_publish_nowait(t->link, "celeryev", routing_key, &props,
                                      amqp_cstring_bytes(body), &e);
    empty_amqp_pool(&pool);
    return rc;
}

static int ab_flush(struct bus *b, struct err *e)
{
    UNUSED(b);
    UNUSED(e);
    return 0; /* each publish was written to the socket when made */
}

static int ab_alive(struct bus *b, pid_t master, struct err *e)
{
    UNUSED(b);
    UNUSED(master);
    UNUSED(e);
    return 0; /* the server tracks its consumers' connections itself */
}

static void ab_close(struct bus *b, const char *reason)
{
    amqp_link_close(&impl(b)->own, reason);
}

static void ab_release(struct bus *b)
{
    ab_close(b, NULL);
    free(b->impl);
    b->impl = NULL;
}

static const struct bus_ops amqp_bus_ops = {
    .open = ab_open, .is_open = ab_is_open, .next = ab_next, .reply = ab_reply,
    .event = ab_event, .flush = ab_flush, .alive = ab_alive, .close = ab_close,
    .release = ab_release, .transport = "amqp",
};

int bus_amqp_init(struct bus *b, const struct broker_config *cfg, const char *node,
                  struct amqp_link *link)
{
    struct amqp_bus *t = xcalloc(1, sizeof(*t));
    t->cfg = cfg;
    t->node = node;
    amqp_link_init(&t->own, "control");
    t->link = link ? link : &t->own;
    b->ops = &amqp_bus_ops;
    b->impl = t;
    return 0;
}
