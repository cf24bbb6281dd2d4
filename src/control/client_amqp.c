/* SPDX-License-Identifier: MIT
 * control/client_amqp.c: the remote-control client on RabbitMQ (spec 1.7):
 * declares the celery.pidbox fanout and reply.celery.pidbox direct
 * exchanges as a Celery client does, its reply queue "<oid>.reply.celery.pidbox"
 * (exclusive: RabbitMQ 4.3 refuses transient shared queues) bound with oid,
 * consumed without acks; requests are published confirmed.
 */
#include "common.h"
#include "control/client_internal.h"
#include "util/amqp_declare.h"
#include "util/amqp_link.h"
#include "util/amqp_msg.h"
#include "util/amqp_url.h"
#include "util/buf.h"

#include <jansson.h>

#define PUBLISH_CONFIRM_MS 10000
#define REPLY_QUEUE_TTL_MS 300000     /* control_queue_ttl */
#define REPLY_QUEUE_EXPIRES_MS 10000  /* control_queue_expires */

struct amqp_client {
    struct control_transport base;
    struct amqp_url url;
    struct amqp_link link;
    struct buf queue;           /* "<oid>.reply.celery.pidbox" */
};

static int ac_publish(struct control_transport *base, const char *envelope, struct err *e)
{
    struct amqp_client *t = (struct amqp_client *)base;
    json_t *env = json_loads(envelope, 0, NULL);
    struct amqp_msg_outgoing out;
    int rc = amqp_msg_from_envelope(&out, env, e);
    json_decref(env);
    if (!rc) {
        out.props.delivery_mode = 2; /* as kombu publishes requests (by exchange name) */
        rc = amqp_link_publish(&t->link, PIDBOX_EXCHANGE, "", false, &out.props, out.body,
                               PUBLISH_CONFIRM_MS, e);
    }
    amqp_msg_outgoing_release(&out);
    return rc;
}

static int ac_next(struct control_transport *base, int timeout_ms, struct buf *envelope,
                   struct err *e)
{
    struct amqp_client *t = (struct amqp_client *)base;
    struct amqp_link_delivery d;
    int rc = amqp_link_next(&t->link, timeout_ms, &d, e);
    if (rc == -EAGAIN)
        return 0;
    if (rc)
        return rc;
    struct err why = {0};
    rc = amqp_msg_to_envelope(envelope, &d.env, &why);
    amqp_link_delivery_release(&d);
    return rc ? 0 : 1; /* a reply we cannot represent is skipped */
}

static void ac_free(struct control_transport *base)
{
    struct amqp_client *t = (struct amqp_client *)base;
    struct err e = {0};
    if (amqp_link_can_use(&t->link, &e))
        amqp_declare_delete(&t->link, t->queue.data, &e);
    amqp_link_close(&t->link, NULL);
    amqp_url_release(&t->url);
    buf_release(&t->queue);
    free(t);
}

struct control_transport *control_client_amqp_open(const char *url, const char *oid,
                                                    struct err *e)
{
    struct amqp_client *t = xcalloc(1, sizeof(*t));
    t->base = (struct control_transport){.publish = ac_publish, .next = ac_next,
                                         .free = ac_free};
    amqp_link_init(&t->link, "broker");
    buf_init(&t->queue);
    buf_addf(&t->queue, "%s." PIDBOX_REPLY_EXCHANGE, oid);
    struct amqp_declare_queue q = {
        .name = t->queue.data,
        .exclusive = true,
        .auto_delete = true,
        .message_ttl_ms = REPLY_QUEUE_TTL_MS,
        .expires_ms = REPLY_QUEUE_EXPIRES_MS,
    };
    int rc = amqp_url_parse(&t->url, url, e);
    if (!rc)
        rc = amqp_link_open(&t->link, &t->url, e);
    if (!rc)
        rc = amqp_declare_exchange(&t->link, PIDBOX_EXCHANGE, "fanout", false, false, e);
    if (!rc)
        rc = amqp_declare_exchange(&t->link, PIDBOX_REPLY_EXCHANGE, "direct", false, false, e);
    if (!rc)
        rc = amqp_declare_queue(&t->link, &q, 0, NULL, e);
    if (!rc)
        rc = amqp_declare_bind(&t->link, t->queue.data, PIDBOX_REPLY_EXCHANGE, oid, e);
    if (!rc)
        rc = amqp_link_consume(&t->link, t->queue.data, true, e);
    if (rc) {
        ac_free(&t->base);
        return NULL;
    }
    return &t->base;
}
