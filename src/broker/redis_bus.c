/* SPDX-License-Identifier: MIT
 * broker/redis_bus.c: remote control and events on Redis, as kombu lays them
 * out: requests arrive on the pub/sub channel "/<db>.celery.pidbox"; a reply
 * is LPUSHed to each list the binding set "_kombu.binding.<exchange>" names
 * for the request's routing key; events are PUBLISHed on
 * "/<db>.celeryev/<routing key>". Every message is a kombu envelope with a
 * base64 body.
 */
#include "common.h"
#include "broker/broker.h"
#include "broker/bus.h"
#include "broker/redis.h"
#include "protocol/message.h"
#include "util/buf.h"
#include "util/redis_link.h"
#include "util/uuid.h"

#include <poll.h>

struct redis_bus {
    const struct broker_config *cfg;   /* borrowed */
    const char *node;                  /* borrowed; NULL when riding */
    struct redis_link own_cmd;         /* replies, events, the alive key */
    struct redis_link sub;             /* SUBSCRIBEd to the pidbox channel */
    struct redis_link *cmd;            /* &own_cmd, or the host's link when riding */
};

static struct redis_bus *impl(const struct bus *b)
{
    return b->impl;
}

static int rb_open(struct bus *b, struct err *e)
{
    struct redis_bus *t = impl(b);
    if (!t->node)
        return err_set(e, -EINVAL, "a bus riding on a task connection cannot listen");
    redis_link_close(&t->sub, NULL);
    redis_link_close(&t->own_cmd, NULL);
    if (redis_link_open(&t->own_cmd, &t->cfg->url, e) || redis_link_open(&t->sub, &t->cfg->url, e))
        return E_CONN_LOST;
    /* Advertise the node as kombu does (informational) and listen. */
    struct buf member = BUF_INIT, channel = BUF_INIT;
    buf_addf(&member, "\x06\x16\x06\x16%s.celery.pidbox", t->node);
    buf_addf(&channel, "/%d.celery.pidbox", t->cfg->url.db);
    redisReply *r = redis_link_command(&t->own_cmd, e, "SADD _kombu.binding.celery.pidbox %b",
                                       member.data, member.len);
    if (r) {
        freeReplyObject(r);
        r = redis_link_command(&t->sub, e, "SUBSCRIBE %s", channel.data);
    }
    buf_release(&member);
    buf_release(&channel);
    if (!r)
        return E_CONN_LOST;
    freeReplyObject(r);
    return 0;
}

static bool rb_is_open(const struct bus *b)
{
    const struct redis_bus *t = impl(b);
    return redis_link_is_open(t->cmd) && (!t->node || redis_link_is_open(&t->sub));
}

static int rb_next(struct bus *b, int timeout_ms, struct buf *envelope, struct err *e)
{
    struct redis_bus *t = impl(b);
    redisContext *ctx = t->sub.ctx;
    if (!ctx)
        return err_set(e, E_CONN_LOST, "the pidbox subscription is closed");
    void *reply = NULL;
    if (redisGetReplyFromReader(ctx, &reply) != REDIS_OK)
        goto out_lost;
    if (!reply) {
        struct pollfd p = {.fd = ctx->fd, .events = POLLIN};
        if (poll(&p, 1, timeout_ms) <= 0)
            return 0;
        if (redisBufferRead(ctx) != REDIS_OK || redisGetReplyFromReader(ctx, &reply) != REDIS_OK)
            goto out_lost;
        if (!reply)
            return 0;
    }
    redisReply *r = reply;
    int got = r->type == REDIS_REPLY_ARRAY && r->elements == 3 &&
              r->element[0]->type == REDIS_REPLY_STRING && !strcmp(r->element[0]->str, "message") &&
              r->element[2]->type == REDIS_REPLY_STRING;
    if (got)
        buf_add(envelope, r->element[2]->str, r->element[2]->len);
    freeReplyObject(r);
    return got;

out_lost:
    err_set(e, E_CONN_LOST, "pidbox subscription lost: %s", ctx->errstr[0] ? ctx->errstr : "EOF");
    redis_link_close(&t->sub, e->msg);
    return E_CONN_LOST;
}

/* kombu's reply routing: the binding set of the exchange names the client's
 * list by routing key; no binding (client gone) = no reply. */
static int rb_reply(struct bus *b, const char *exchange, const char *routing_key,
                    const char *body, json_t *headers, struct err *e)
{
    struct redis_bus *t = impl(b);
    redisReply *r = redis_link_command(t->cmd, e, "SMEMBERS _kombu.binding.%s", exchange);
    if (!r)
        return E_CONN_LOST;
    struct buf env = BUF_INIT;
    message_envelope_encode(&env, body, strlen(body), NULL, headers, exchange, routing_key, NULL);
    int rc = 0;
    size_t rklen = strlen(routing_key);
    for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
        const char *m = r->element[i]->str;
        if (!m || strncmp(m, routing_key, rklen) || strncmp(m + rklen, "\x06\x16", 2))
            continue;
        const char *sep = strstr(m + rklen + 2, "\x06\x16");
        if (!sep)
            continue;
        redisReply *pr = redis_link_command(t->cmd, e, "LPUSH %s %b", sep + 2, env.data, env.len);
        if (!pr) {
            rc = E_CONN_LOST;
            break;
        }
        freeReplyObject(pr);
    }
    freeReplyObject(r);
    buf_release(&env);
    return rc;
}

static int rb_event(struct bus *b, const char *routing_key, const char *body, json_t *headers)
{
    struct redis_bus *t = impl(b);
    struct buf env = BUF_INIT, channel = BUF_INIT;
    message_envelope_encode(&env, body, strlen(body), NULL, headers, "celeryev", routing_key, NULL);
    buf_addf(&channel, "/%d.celeryev/%s", t->cfg->url.db, routing_key);
    const char *argv[] = {"PUBLISH", channel.data, env.data};
    size_t lens[] = {7, channel.len, env.len};
    int rc = redis_link_send_argv(t->cmd, 3, argv, lens);
    buf_release(&env);
    buf_release(&channel);
    return rc;
}

static int rb_flush(struct bus *b, struct err *e)
{
    return redis_link_drain(impl(b)->cmd, e);
}

static int rb_alive(struct bus *b, pid_t master, struct err *e)
{
    struct redis_bus *t = impl(b);
    if (!t->node)
        return 0;
    return broker_redis_advertise_alive(t->cmd, t->node, master, BROKER_ALIVE_TTL_S, e);
}

static void rb_close(struct bus *b, const char *reason)
{
    struct redis_bus *t = impl(b);
    redis_link_close(&t->sub, reason);
    redis_link_close(&t->own_cmd, reason);
}

static void rb_release(struct bus *b)
{
    rb_close(b, NULL);
    free(b->impl);
    b->impl = NULL;
}

static const struct bus_ops redis_bus_ops = {
    .open = rb_open, .is_open = rb_is_open, .next = rb_next, .reply = rb_reply,
    .event = rb_event, .flush = rb_flush, .alive = rb_alive, .close = rb_close,
    .release = rb_release, .transport = "redis",
};

int bus_redis_init(struct bus *b, const struct broker_config *cfg, const char *node,
                   struct redis_link *link)
{
    struct redis_bus *t = xcalloc(1, sizeof(*t));
    t->cfg = cfg;
    t->node = node;
    redis_link_init(&t->own_cmd, "control");
    redis_link_init(&t->sub, "control");
    t->cmd = link ? link : &t->own_cmd;
    b->ops = &redis_bus_ops;
    b->impl = t;
    return 0;
}
