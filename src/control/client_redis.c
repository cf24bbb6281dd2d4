/* SPDX-License-Identifier: MIT
 * control/client_redis.c: the remote-control client on Redis, as kombu does
 * it (spec 1.6): the reply queue is a list named in the binding set
 * "_kombu.binding.reply.celery.pidbox"; a request is PUBLISHed on
 * "/<db>.celery.pidbox"; replies are BRPOPped from the list.
 */
#include "common.h"
#include "control/client_internal.h"
#include "util/buf.h"
#include "util/redis_link.h"
#include "util/url.h"

struct redis_client {
    struct control_transport base;
    struct redis_url url;
    struct redis_link link;
    struct buf member;          /* our member of the reply exchange's binding set */
    struct buf queue;           /* "<oid>.reply.celery.pidbox" */
};

static int rc_publish(struct control_transport *base, const char *envelope, struct err *e)
{
    struct redis_client *t = (struct redis_client *)base;
    struct buf channel = BUF_INIT;
    buf_addf(&channel, "/%d." PIDBOX_EXCHANGE, t->url.db);
    redisReply *r = redis_link_command(&t->link, e, "PUBLISH %s %s", channel.data, envelope);
    buf_release(&channel);
    if (!r)
        return E_CONN_LOST;
    int rc = r->type == REDIS_REPLY_ERROR ? redis_link_reply_error(e, "PUBLISH", r->str) : 0;
    freeReplyObject(r);
    return rc;
}

static int rc_next(struct control_transport *base, int timeout_ms, struct buf *envelope,
                   struct err *e)
{
    struct redis_client *t = (struct redis_client *)base;
    /* BRPOP takes seconds, fractions since Redis 6 (the worker needs 6.2
     * for LMOVE already); 0 would wait for ever */
    double s = timeout_ms / 1000.0;
    if (s < 0.01)
        s = 0.01;
    char tmo[32];
    snprintf(tmo, sizeof(tmo), "%.3f", s);
    const char *argv[] = {"BRPOP", t->queue.data, tmo};
    redisReply *r = redis_link_blocking_argv(&t->link, s, e, 3, argv, NULL);
    if (!r)
        return E_CONN_LOST;
    int rc = 0;
    if (r->type == REDIS_REPLY_ERROR) {
        rc = redis_link_reply_error(e, "BRPOP", r->str);
    } else if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
               r->element[1]->type == REDIS_REPLY_STRING) {
        buf_add(envelope, r->element[1]->str, r->element[1]->len);
        rc = 1;
    }
    freeReplyObject(r);
    return rc;
}

static void rc_free(struct control_transport *base)
{
    struct redis_client *t = (struct redis_client *)base;
    if (redis_link_is_open(&t->link)) {
        struct err e = {0};
        redisReply *r = redis_link_command(&t->link, &e, "SREM _kombu.binding.%s %b",
                                           PIDBOX_REPLY_EXCHANGE, t->member.data, t->member.len);
        if (r) {
            freeReplyObject(r);
            r = redis_link_command(&t->link, &e, "DEL %s", t->queue.data);
        }
        if (r)
            freeReplyObject(r);
    }
    redis_link_close(&t->link, NULL);
    redis_url_release(&t->url);
    buf_release(&t->member);
    buf_release(&t->queue);
    free(t);
}

struct control_transport *control_client_redis_open(const char *url,
                                                    const struct redis_transport_options *options,
                                                    const char *oid, struct err *e)
{
    struct redis_client *t = xcalloc(1, sizeof(*t));
    t->base = (struct control_transport){.publish = rc_publish, .next = rc_next,
                                         .free = rc_free};
    redis_link_init(&t->link, "broker");
    buf_init(&t->member);
    buf_init(&t->queue);
    buf_addf(&t->queue, "%s." PIDBOX_REPLY_EXCHANGE, oid);
    buf_addf(&t->member, "%s\x06\x16\x06\x16%s", oid, t->queue.data);
    if (redis_url_parse(&t->url, url, e) ||
        redis_transport_options_apply(options, &t->url, "broker", e) ||
        redis_link_open(&t->link, &t->url, e))
        goto out_free;
    redisReply *r = redis_link_command(&t->link, e, "SADD _kombu.binding.%s %b",
                                       PIDBOX_REPLY_EXCHANGE, t->member.data, t->member.len);
    if (!r)
        goto out_free;
    if (r->type == REDIS_REPLY_ERROR) {
        redis_link_reply_error(e, "SADD", r->str);
        freeReplyObject(r);
        goto out_free;
    }
    freeReplyObject(r);
    return &t->base;

out_free:
    rc_free(&t->base);
    return NULL;
}
