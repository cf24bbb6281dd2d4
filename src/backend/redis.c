/* SPDX-License-Identifier: MIT
 * backend/redis.c: storing task results in Celery's Redis layout (see redis.h).
 */
#include "common.h"
#include "util/buf.h"
#include "backend/redis.h"
#include "protocol/message.h"
#include "protocol/pyjson.h"
#include "util/log.h"
#include "util/time.h"

#define TASK_KEY_PREFIX "celery-task-meta-"

/* KEYS[1]: result key; ARGV: meta, ttl. The stored meta may be JSON or
 * msgpack (--result-serializer changed, or auto). Celery's rule: a stored SUCCESS is
 * never overwritten (a redelivered task must not turn it into FAILURE). Python
 * does GET, then MULTI SETEX PUBLISH EXEC; one script is the same, atomically. */
static struct redis_script store_script = {
    .body =
    "local cur = redis.call('GET', KEYS[1])\n"
    "if cur then\n"
    "  local ok, m = pcall(cjson.decode, cur)\n"
    "  if not ok then ok, m = pcall(cmsgpack.unpack, cur) end\n"
    "  if ok and type(m) == 'table' and m['status'] == 'SUCCESS' then return 0 end\n"
    "end\n"
    "if tonumber(ARGV[2]) > 0 then\n"
    "  redis.call('SETEX', KEYS[1], ARGV[2], ARGV[1])\n"
    "else\n"
    "  redis.call('SET', KEYS[1], ARGV[1])\n"
    "end\n"
    "redis.call('PUBLISH', KEYS[1], ARGV[1])\n"
    "return 1\n",
};

void backend_redis_init(struct backend_redis *b, const struct backend_config *cfg)
{
    memset(b, 0, sizeof(*b));
    static struct redis_script *const scripts[] = {&store_script, NULL};
    redis_link_init(&b->link, "result backend");
    b->link.scripts = scripts;
    b->cfg = cfg;
    b->scratch = xmalloc(sizeof(*b->scratch));
    buf_init(b->scratch);
    b->key = xmalloc(sizeof(*b->key));
    buf_init(b->key);
}

/* One result held for a batch's commit (backend_redis_hold). */
struct held_result {
    struct buf key, meta;
    bool check_existing;
};

void backend_redis_drop_held(struct backend_redis *b)
{
    for (size_t i = 0; i < b->n_held; i++) {
        buf_release(&b->held[i].key);
        buf_release(&b->held[i].meta);
    }
    b->n_held = 0;
}

void backend_redis_release(struct backend_redis *b, const char *reason)
{
    redis_link_close(&b->link, reason);
    backend_redis_drop_held(b);
    free(b->held);
    b->held = NULL;
    b->cap_held = 0;
    if (b->scratch) {
        buf_release(b->scratch);
        free(b->scratch);
        b->scratch = NULL;
    }
    if (b->key) {
        buf_release(b->key);
        free(b->key);
        b->key = NULL;
    }
}

/* Appends the store of meta under key; *replies gets how many replies it
 * gives. A first delivery cannot find a SUCCESS already stored under its
 * id, so it goes as the plain MULTI SETEX PUBLISH EXEC Celery's writes end
 * with; only a redelivered message (check_existing) pays for the checking
 * script. */
static int append_store_of(struct backend_redis *b, const struct buf *key, const struct buf *meta,
                           bool check_existing, int *replies)
{
    char ttl[16];
    snprintf(ttl, sizeof(ttl), "%d", b->cfg->expires_s);
    if (check_existing || b->cfg->expires_s <= 0) {
        const char *args[] = {key->data, meta->data, ttl};
        size_t lens[] = {key->len, meta->len, strlen(ttl)};
        *replies = 1;
        return redis_link_append_script(&b->link, &store_script, 3, args, lens, 1);
    }
    const char *multi[] = {"MULTI"}, *exec[] = {"EXEC"};
    const char *setex[] = {"SETEX", key->data, ttl, meta->data};
    size_t setex_lens[] = {5, key->len, strlen(ttl), meta->len};
    const char *publish[] = {"PUBLISH", key->data, meta->data};
    size_t publish_lens[] = {7, key->len, meta->len};
    *replies = 4;
    int rc = redis_link_append_argv(&b->link, 1, multi, NULL);
    rc = rc ? rc : redis_link_append_argv(&b->link, 4, setex, setex_lens);
    rc = rc ? rc : redis_link_append_argv(&b->link, 3, publish, publish_lens);
    return rc ? rc : redis_link_append_argv(&b->link, 1, exec, NULL);
}

/* Appends the store of the meta in b->scratch under b->key. */
static int append_store(struct backend_redis *b)
{
    return append_store_of(b, b->key, b->scratch, b->check_existing, &b->replies);
}

/* Reads the `replies` replies of one store under key. */
static int read_replies(struct backend_redis *b, int replies, const char *key, struct err *e)
{
    int rc = 0;
    for (int i = 0; i < replies; i++) {
        redisReply *r = redis_link_read(&b->link, e);
        if (!r)
            return E_CONN_LOST;
        if (r->type == REDIS_REPLY_ERROR && !rc)
            rc = redis_link_reply_error(e, "storing a result", r->str);
        else if (r->type == REDIS_REPLY_INTEGER && r->integer == 0 && replies == 1)
            log_debug("'%s' already holds a SUCCESS result; kept it", key);
        else if (i == replies - 1 && replies > 1 && r->type != REDIS_REPLY_ARRAY && !rc)
            rc = err_set(e, E_PROTOCOL, "storing result under '%s' failed: transaction aborted",
                         key);
        freeReplyObject(r);
    }
    return rc;
}

static int read_store_reply(struct backend_redis *b, struct err *e)
{
    return read_replies(b, b->replies, b->key->data, e);
}

int backend_redis_confirm(struct backend_redis *b, struct err *e)
{
    if (!b->unconfirmed)
        return 0;
    int rc = read_store_reply(b, e);
    if (rc == E_CONN_LOST)
        return rc;
    b->unconfirmed = false;
    if (rc == E_REFUSED) {
        b->refused = true; /* key and meta stay in b->key and b->scratch */
        return rc;
    }
    if (rc)
        log_error("%s", e ? e->msg : "storing a result failed");
    return 0;
}

int backend_redis_resend(struct backend_redis *b, struct err *e)
{
    if (!b->refused)
        return 0;
    if (append_store(b))
        return err_set(e, E_CONN_LOST, "result backend connection is not usable");
    int rc = read_store_reply(b, e);
    if (rc == E_CONN_LOST || rc == E_REFUSED)
        return rc;
    b->refused = false;
    if (rc)
        log_error("%s", e ? e->msg : "storing a result failed");
    return 0;
}

int backend_redis_open(struct backend_redis *b, struct err *e)
{
    if (!b->cfg->enabled)
        return 0;
    int rc = redis_link_open(&b->link, &b->cfg->url, e);
    if (rc || !b->unconfirmed)
        return rc;
    /* The last store's reply never came: it may not have run. Again. */
    rc = append_store(b) ? E_CONN_LOST : read_store_reply(b, e);
    if (rc != E_CONN_LOST)
        b->unconfirmed = false;
    if (rc == E_REFUSED)
        b->refused = true; /* connected; the store is retried by backend_redis_resend */
    return rc == E_CONN_LOST ? rc : 0;
}

/* Confirms the previous store, then prepares key and meta for m. */
static int prepare_store(struct backend_redis *b, const struct result_meta *m, struct err *e)
{
    int rc = backend_redis_confirm(b, e);
    if (!rc)
        rc = backend_redis_resend(b, e);
    if (rc)
        return rc;
    buf_reset(b->scratch);
    result_meta_encode(b->scratch, m, result_serializer_pick(b->cfg->serializer, m->arrived_in));
    buf_reset(b->key);
    buf_addf(b->key, TASK_KEY_PREFIX "%s", m->task_id);
    b->check_existing = m->redelivered;
    return 0;
}

/* Queues the store of m; it stays "unconfirmed" until its reply is read. */
static int queue_store(struct backend_redis *b, const struct result_meta *m, struct err *e)
{
    int rc = prepare_store(b, m, e);
    if (rc)
        return rc;
    if (append_store(b))
        return err_set(e, E_CONN_LOST, "result backend connection is not usable");
    b->unconfirmed = true;
    return 0;
}

int backend_redis_store(struct backend_redis *b, const struct result_meta *m, struct err *e)
{
    if (!b->cfg->enabled)
        return 0;
    int rc = queue_store(b, m, e);
    if (rc)
        return rc;
    rc = read_store_reply(b, e);
    if (rc != E_CONN_LOST)
        b->unconfirmed = false;
    return rc;
}

int backend_redis_hold(struct backend_redis *b, const struct result_meta *m)
{
    if (!b->cfg->enabled)
        return 0;
    if (b->n_held == b->cap_held) {
        b->cap_held = b->cap_held ? b->cap_held * 2 : 8;
        b->held = xrealloc(b->held, b->cap_held * sizeof(*b->held));
    }
    struct held_result *h = &b->held[b->n_held++];
    buf_init(&h->key);
    buf_init(&h->meta);
    result_meta_encode(&h->meta, m, result_serializer_pick(b->cfg->serializer, m->arrived_in));
    buf_addf(&h->key, TASK_KEY_PREFIX "%s", m->task_id);
    h->check_existing = m->redelivered;
    return 0;
}

int backend_redis_flush_held(struct backend_redis *b, struct err *e)
{
    if (!b->n_held)
        return 0;
    int rc = backend_redis_confirm(b, e);
    if (!rc)
        rc = backend_redis_resend(b, e);
    if (rc)
        return rc;
    int *replies = xcalloc(b->n_held, sizeof(*replies));
    for (size_t i = 0; i < b->n_held && !rc; i++)
        if (append_store_of(b, &b->held[i].key, &b->held[i].meta, b->held[i].check_existing,
                            &replies[i]))
            rc = err_set(e, E_CONN_LOST, "result backend connection is not usable");
    /* every reply is read, so that the connection stays in step; the first
     * failure is the answer (a stored SUCCESS is never overwritten, so the
     * caller may send them all again) */
    bool sent = !rc;
    for (size_t i = 0; i < b->n_held && sent; i++) {
        struct err one = {0};
        int r = read_replies(b, replies[i], b->held[i].key.data, &one);
        if (r && !rc) {
            rc = r;
            if (e)
                *e = one;
        }
        if (r == E_CONN_LOST)
            break;
    }
    free(replies);
    if (!rc)
        backend_redis_drop_held(b);
    return rc;
}

int backend_redis_store_send(struct backend_redis *b, const struct result_meta *m, struct err *e)
{
    if (!b->cfg->enabled)
        return 0;
    int rc = queue_store(b, m, e);
    return rc ? rc : redis_link_flush(&b->link, e);
}
