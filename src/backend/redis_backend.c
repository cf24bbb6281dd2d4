/* SPDX-License-Identifier: MIT
 * backend/redis_backend.c: Redis behind backend.h: the stores of redis.c,
 * and the chord join in the layout of Celery's Redis backend
 * (celery-taskset-meta-<group>.j sorted set of parts, .s the header size, .t
 * the members added later), so Python and C members of one chord join.
 */
#include "common.h"
#include "backend/backend.h"
#include "backend/redis.h"
#include "util/buf.h"
#include "util/log.h"

#define CHORD_KEY_PREFIX "celery-taskset-meta-"

static struct backend_redis *impl(const struct backend *b)
{
    return b->impl;
}

static int rb_open(struct backend *b, struct err *e)
{
    return backend_redis_open(impl(b), e);
}

static bool rb_is_open(const struct backend *b)
{
    return redis_link_is_open(&impl(b)->link);
}

static int rb_store(struct backend *b, const struct result_meta *m, unsigned flags,
                    struct err *e)
{
    if (flags & BACKEND_NOWAIT)
        return backend_redis_store_send(impl(b), m, e);
    return backend_redis_store(impl(b), m, e);
}

static bool rb_has_pending(const struct backend *b)
{
    return impl(b)->unconfirmed || impl(b)->refused;
}

static int rb_confirm(struct backend *b, struct err *e)
{
    return backend_redis_confirm(impl(b), e);
}

static int rb_resend(struct backend *b, struct err *e)
{
    return backend_redis_resend(impl(b), e);
}

static int rb_hold(struct backend *b, const struct result_meta *m, struct err *e)
{
    UNUSED(e);
    return backend_redis_hold(impl(b), m);
}

static int rb_flush_held(struct backend *b, struct err *e)
{
    return backend_redis_flush_held(impl(b), e);
}

static void rb_drop_held(struct backend *b)
{
    backend_redis_drop_held(impl(b));
}

static int expires_s(const struct backend *b)
{
    return b->cfg->expires_s ? b->cfg->expires_s : 86400;
}

static int rb_chord_size(struct backend *b, const char *group, size_t size, struct err *e)
{
    struct buf key = BUF_INIT;
    buf_addf(&key, CHORD_KEY_PREFIX "%s.s", group);
    /* hiredis formats only %s and %b reliably: numbers go as text */
    char ttl[16], count[24];
    snprintf(ttl, sizeof(ttl), "%d", expires_s(b));
    snprintf(count, sizeof(count), "%zu", size);
    redisReply *r = redis_link_command(&impl(b)->link, e, "SETEX %s %s %s", key.data, ttl,
                                       count);
    buf_release(&key);
    if (!r)
        return E_CONN_LOST;
    int rc = r->type == REDIS_REPLY_ERROR ? redis_link_reply_error(e, "chord size", r->str) : 0;
    freeReplyObject(r);
    return rc;
}

/* Every part of a complete chord, in header order; parts are in JSON or
 * msgpack, whichever each member's worker wrote. Deletes the join. */
static int collect_parts(struct redis_link *l, const struct buf *j, const struct buf *t,
                         const struct buf *s, json_t **parts, struct err *e)
{
    redisReply *r = redis_link_command(l, e, "ZRANGE %s 0 -1", j->data);
    if (!r)
        return E_CONN_LOST;
    *parts = json_array();
    for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
        redisReply *p = r->element[i];
        json_t *part = p->type == REDIS_REPLY_STRING
                           ? serializer_load_sniffed(p->str, p->len, NULL, NULL)
                           : NULL;
        if (json_is_array(part) && json_array_size(part) >= 4)
            json_array_append(*parts, part);
        json_decref(part);
    }
    freeReplyObject(r);
    redisReply *d = redis_link_command(l, e, "DEL %s %s %s", j->data, t->data, s->data);
    if (d)
        freeReplyObject(d);
    return 0;
}

/* ZADD the part and read the count, the extra members and the size in one
 * transaction; the member that makes the count whole joins. */
static int rb_chord_part(struct backend *b, const char *group, int index, const json_t *part,
                         enum serializer ser, json_t **parts, struct err *e)
{
    *parts = NULL;
    int rc = backend_redis_confirm(impl(b), e);
    if (rc)
        return rc;
    struct redis_link *l = &impl(b)->link;
    struct buf bytes = BUF_INIT, j = BUF_INIT, t = BUF_INIT, s = BUF_INIT;
    serializer_dump(&bytes, ser, part);
    buf_addf(&j, CHORD_KEY_PREFIX "%s.j", group);
    buf_addf(&t, CHORD_KEY_PREFIX "%s.t", group);
    buf_addf(&s, CHORD_KEY_PREFIX "%s.s", group);
    char score[32], ttl[16];
    if (index >= 0)
        snprintf(score, sizeof(score), "%d", index);
    else
        snprintf(score, sizeof(score), "+inf");
    snprintf(ttl, sizeof(ttl), "%d", expires_s(b));
    const char *cmds[][4] = {
        {"MULTI"}, {"ZADD", j.data, score, bytes.data}, {"ZCOUNT", j.data, "-inf", "+inf"},
        {"GET", t.data}, {"GET", s.data}, {"EXPIRE", j.data, ttl}, {"EXPIRE", t.data, ttl},
        {"EXPIRE", s.data, ttl}, {"EXEC"},
    };
    static const int argcs[] = {1, 4, 4, 2, 2, 3, 3, 3, 1};
    size_t zadd_lens[] = {4, j.len, strlen(score), bytes.len}; /* msgpack holds NULs */
    for (size_t i = 0; i < ARRAY_SIZE(argcs) && !rc; i++)
        rc = redis_link_append_argv(l, argcs[i], cmds[i], i == 1 ? zadd_lens : NULL);
    redisReply *exec = NULL;
    for (size_t i = 0; i < ARRAY_SIZE(argcs) && !rc; i++) {
        redisReply *r = redis_link_read(l, e);
        if (!r)
            rc = E_CONN_LOST;
        else if (i == ARRAY_SIZE(argcs) - 1)
            exec = r;
        else
            freeReplyObject(r);
    }
    if (!rc && exec && exec->type == REDIS_REPLY_ARRAY && exec->elements == 7) {
        long long count = exec->element[1]->integer;
        redisReply *rt = exec->element[2], *rs = exec->element[3];
        long long total = rs->type == REDIS_REPLY_STRING ? atoll(rs->str) : -1;
        long long extra = rt->type == REDIS_REPLY_STRING ? atoll(rt->str) : 0;
        if (total >= 0 && count == total + extra)
            rc = collect_parts(l, &j, &t, &s, parts, e);
        else if (total < 0)
            log_debug("chord %s: no size stored under %s yet; not joined by this member", group,
                      s.data);
    }
    if (exec)
        freeReplyObject(exec);
    buf_release(&bytes);
    buf_release(&j);
    buf_release(&t);
    buf_release(&s);
    return rc;
}

/* A store whose reply is outstanding gets one reconnect, which sends it
 * again (a stored SUCCESS is never overwritten, so repeating it is safe). */
static void rb_leave(struct backend *b)
{
    struct err e = {0};
    if (redis_link_is_open(&impl(b)->link) && backend_redis_confirm(impl(b), &e))
        backend_redis_open(impl(b), &e);
}

static void rb_release(struct backend *b)
{
    if (!b->impl)
        return;
    backend_redis_release(impl(b), NULL);
    free(b->impl);
    b->impl = NULL;
}

static const struct backend_ops redis_backend_ops = {
    .name = "redis",
    .open = rb_open,
    .is_open = rb_is_open,
    .store = rb_store,
    .has_pending = rb_has_pending,
    .confirm = rb_confirm,
    .resend = rb_resend,
    .hold = rb_hold,
    .flush_held = rb_flush_held,
    .drop_held = rb_drop_held,
    .chord_size = rb_chord_size,
    .chord_part = rb_chord_part,
    .leave = rb_leave,
    .release = rb_release,
};

void backend_redis_ops_init(struct backend *b, const struct backend_config *cfg)
{
    struct backend_redis *r = xcalloc(1, sizeof(*r));
    backend_redis_init(r, cfg);
    b->ops = &redis_backend_ops;
    b->cfg = cfg;
    b->impl = r;
}
