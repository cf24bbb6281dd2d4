/* SPDX-License-Identifier: MIT
 * client/client.c: the C client (celeriac_client.h): publish a task message
 * as Celery's client does (spec §10.1), to Redis or RabbitMQ, and wait for
 * its result in Redis as AsyncResult.get() does (subscribe, then read the
 * key, then listen). To a sqla+ broker it sends through the SQL part
 * (client/sql.c, libceleriac-client-sql) when that is linked in; this file
 * itself never touches libpq or sqlite3.
 */
#include "common.h"
#include "celeriac.h"
#include "celeriac_client.h"
#include "client/client_internal.h"
#include "broker/amqp.h"
#include "broker/sql.h"
#include "protocol/message.h"
#include "protocol/pyjson.h"
#include "protocol/serializer.h"
#include "util/amqp_link.h"
#include "util/amqp_url.h"
#include "util/buf.h"
#include "util/redis_link.h"
#include "util/time.h"
#include "util/url.h"

#include <poll.h>

#define API __attribute__((visibility("default")))

/* Weak: NULL when libceleriac-client-sql is not linked in (client_internal.h). */
const struct client_sql_ops *celeriac_client_sql_v0(void) __attribute__((weak));

struct celeriac_client {
    bool on_amqp;                 /* the broker is RabbitMQ */
    struct client_sql *sql;       /* kombu's SQL transport: the SQL part's connection */
    const struct client_sql_ops *sql_ops; /* the SQL part, set with sql */
    struct amqp_url amqp_url;
    struct amqp_link amqp;        /* confirmed publishes of task messages */
    struct redis_url broker_url;
    struct redis_url backend_url;
    bool has_backend;
    struct redis_link broker;     /* LPUSH of task messages */
    struct redis_link backend;    /* GET of results */
    struct redis_link sub;        /* SUBSCRIBE to result channels */
};

static void set_err(char *err, size_t errlen, const char *msg)
{
    if (err && errlen)
        snprintf(err, errlen, "%s", msg);
}

API void celeriac_client_free(struct celeriac_client *c)
{
    if (!c)
        return;
    redis_link_close(&c->broker, NULL);
    amqp_link_close(&c->amqp, NULL);
    amqp_url_release(&c->amqp_url);
    redis_link_close(&c->backend, NULL);
    redis_link_close(&c->sub, NULL);
    redis_url_release(&c->broker_url);
    redis_url_release(&c->backend_url);
    if (c->sql)
        c->sql_ops->close(c->sql);
    free(c);
}

/* kombu's SQL transport, through the SQL part when it is linked in; the
 * message names what to link, never the URL (it may hold a password). */
static int open_sql(struct celeriac_client *c, const char *broker_url, struct err *e)
{
    if (!celeriac_client_sql_v0)
        return err_set(e, -ENOTSUP,
                       "sqla+ broker needs the client's SQL part: link libceleriac-client-sql "
                       "(pkg-config --libs celeriac-client-sql)");
    c->sql_ops = celeriac_client_sql_v0();
    return c->sql_ops->open(broker_url, &c->sql, e);
}

struct celeriac_client *client_new(const char *broker_url, const char *backend_url,
                                   const struct redis_transport_options *broker_options,
                                   const struct redis_transport_options *backend_options,
                                   struct err *e)
{
    struct celeriac_client *c = xcalloc(1, sizeof(*c));
    redis_link_init(&c->broker, "broker");
    redis_link_init(&c->backend, "result backend");
    redis_link_init(&c->sub, "result backend");
    amqp_link_init(&c->amqp, "broker");
    if (!broker_url)
        broker_url = "redis://localhost:6379/0";
    c->on_amqp = amqp_url_is_amqp(broker_url);
    bool on_sql = sql_broker_url_is_sql(broker_url);
    /* every URL and option is checked before anything connects, so a usage
     * error is told as one whatever the network does */
    if (on_sql || c->on_amqp ? redis_transport_options_refuse(broker_options, "broker", e)
                             : redis_url_parse(&c->broker_url, broker_url, e) ||
                                   redis_transport_options_apply(broker_options, &c->broker_url,
                                                                 "broker", e))
        goto out_fail;
    if (c->on_amqp && amqp_url_parse(&c->amqp_url, broker_url, e))
        goto out_fail;
    if (backend_url ? redis_url_parse(&c->backend_url, backend_url, e) ||
                          redis_transport_options_apply(backend_options, &c->backend_url,
                                                        "result backend", e)
                    : redis_transport_options_refuse(backend_options, "result backend", e))
        goto out_fail;
    if (on_sql ? open_sql(c, broker_url, e)
        : c->on_amqp ? amqp_link_open(&c->amqp, &c->amqp_url, e)
                     : redis_link_open(&c->broker, &c->broker_url, e))
        goto out_fail;
    if (backend_url) {
        if (redis_link_open(&c->backend, &c->backend_url, e) ||
            redis_link_open(&c->sub, &c->backend_url, e))
            goto out_fail;
        c->has_backend = true;
    }
    return c;

out_fail:
    celeriac_client_free(c);
    return NULL;
}

/* A NULL-terminated list of "KEY=VALUE" strings into o. 0 or -EINVAL. */
static int take_option_list(struct redis_transport_options *o, const char *const *list,
                            struct err *e)
{
    for (; list && *list; list++)
        if (redis_transport_options_set(o, *list, e))
            return -EINVAL;
    return 0;
}

API struct celeriac_client *celeriac_client_new_with_transport_options(
    const char *broker_url, const char *backend_url, const char *const *broker_options,
    const char *const *backend_options, char *err, size_t errlen)
{
    struct redis_transport_options broker, backend;
    redis_transport_options_init(&broker, "broker_transport_options");
    redis_transport_options_init(&backend, "result_backend_transport_options");
    struct err e = {0};
    struct celeriac_client *c = NULL;
    if (!take_option_list(&broker, broker_options, &e) &&
        !take_option_list(&backend, backend_options, &e))
        c = client_new(broker_url, backend_url, &broker, &backend, &e);
    if (!c)
        set_err(err, errlen, e.msg);
    redis_transport_options_release(&broker);
    redis_transport_options_release(&backend);
    return c;
}

API struct celeriac_client *celeriac_client_new(const char *broker_url, const char *backend_url,
                                                char *err, size_t errlen)
{
    return celeriac_client_new_with_transport_options(broker_url, backend_url, NULL, NULL, err,
                                                      errlen);
}

static int subscribe(struct celeriac_client *c, const char *id, struct err *e)
{
    redisReply *r = redis_link_command(&c->sub, e, "SUBSCRIBE celery-task-meta-%s", id);
    if (!r)
        return E_CONN_LOST;
    freeReplyObject(r);
    return 0;
}

API int celeriac_send(struct celeriac_client *c, const char *name, const char *args_json,
                      const char *kwargs_json, const struct celeriac_send_options *o,
                      char id_out[37], char *err, size_t errlen)
{
    static const struct celeriac_send_options none;
    if (!o)
        o = &none;
    struct buf env = BUF_INIT, list = BUF_INIT, member = BUF_INIT;
    char id[37];
    if (client_task_envelope(&env, name, args_json, kwargs_json, o, id, err, errlen))
        return -1;
    struct task_send t = {.priority = o->priority < 0 ? 0 : o->priority > 9 ? 9 : o->priority};
    struct err e = {0};
    int rc = 0;
    if (o->subscribe && c->has_backend && subscribe(c, id, &e))
        goto out_fail;
    const char *queue = o->queue ? o->queue : "celery";
    if (c->sql) {
        if (c->sql_ops->publish(c->sql, queue, env.data, env.len, &e))
            goto out_fail;
        memcpy(id_out, id, 37);
        goto out;
    }
    if (c->on_amqp) {
        /* RabbitMQ serves the higher priority first, as Celery sends it */
        if (broker_amqp_publish_task(&c->amqp, queue, t.priority, env.data, env.len, &e))
            goto out_fail;
        memcpy(id_out, id, 37);
        goto out;
    }
    message_priority_list(&list, queue, t.priority);
    buf_addf(&member, "%s\x06\x16\x06\x16%s", queue, queue);
    redisReply *r = redis_link_command(&c->broker, &e, "SADD _kombu.binding.%s %b", queue,
                                       member.data, member.len);
    if (!r)
        goto out_fail;
    freeReplyObject(r);
    r = redis_link_command(&c->broker, &e, "LPUSH %b %b", list.data, list.len, env.data, env.len);
    if (!r)
        goto out_fail;
    if (r->type == REDIS_REPLY_ERROR)
        err_set(&e, E_PROTOCOL, "LPUSH failed: %s", r->str);
    rc = r->type == REDIS_REPLY_ERROR ? -1 : 0;
    freeReplyObject(r);
    if (rc)
        goto out_fail;
    memcpy(id_out, id, 37);
    goto out;

out_fail:
    set_err(err, errlen, e.msg);
    rc = -1;
out:
    buf_release(&env);
    buf_release(&list);
    buf_release(&member);
    return rc;
}

/* True when meta (stored as JSON or msgpack: a worker's --result-serializer
 * decides) is a ready state; then *out takes it as JSON text. */
static bool take_if_ready(const char *data, size_t len, char **out)
{
    enum serializer found;
    json_t *m = serializer_load_sniffed(data, len, &found, NULL);
    const char *st = json_string_value(json_object_get(m, "status"));
    bool ready = st && (!strcmp(st, "SUCCESS") || !strcmp(st, "FAILURE") || !strcmp(st, "REVOKED"));
    if (ready)
        *out = found == SERIALIZER_JSON ? xstrndup(data, len) : pyjson_dumps(m, 0);
    json_decref(m);
    return ready && *out;
}

API int celeriac_wait(struct celeriac_client *c, const char *id, double timeout, char **meta_json,
                      char *err, size_t errlen)
{
    struct err e = {0};
    *meta_json = NULL;
    if (!c->has_backend) {
        set_err(err, errlen, "no result backend configured");
        return -1;
    }
    /* Subscribe (if celeriac_send did not), then read: a result stored in
     * between is caught by one or the other. */
    if (subscribe(c, id, &e))
        goto out_fail;
    redisReply *r = redis_link_command(&c->backend, &e, "GET celery-task-meta-%s", id);
    if (!r)
        goto out_fail;
    bool ready = r->type == REDIS_REPLY_STRING && take_if_ready(r->str, r->len, meta_json);
    freeReplyObject(r);
    double deadline = time_now() + timeout;
    while (!ready) {
        double left = deadline - time_now();
        if (left <= 0) {
            set_err(err, errlen, "timed out waiting for the result");
            goto out_unsub;
        }
        void *reply = NULL;
        if (redisGetReplyFromReader(c->sub.ctx, &reply) != REDIS_OK)
            goto out_lost;
        if (!reply) {
            struct pollfd p = {.fd = c->sub.ctx->fd, .events = POLLIN};
            if (poll(&p, 1, (int)(left * 1000) + 1) <= 0)
                continue;
            if (redisBufferRead(c->sub.ctx) != REDIS_OK)
                goto out_lost;
            continue;
        }
        redisReply *m = reply;
        /* Only a message on this task's channel: a subscribed connection may
         * still deliver messages of tasks waited for earlier. */
        if (m->type == REDIS_REPLY_ARRAY && m->elements == 3 &&
            m->element[1]->type == REDIS_REPLY_STRING &&
            m->element[2]->type == REDIS_REPLY_STRING && !strncmp(m->element[1]->str,
                                                                 "celery-task-meta-", 17) &&
            !strcmp(m->element[1]->str + 17, id))
            ready = take_if_ready(m->element[2]->str, m->element[2]->len, meta_json);
        freeReplyObject(m);
    }
out_unsub:
    r = redis_link_command(&c->sub, &e, "UNSUBSCRIBE celery-task-meta-%s", id);
    if (r)
        freeReplyObject(r);
    return ready ? 0 : -1;

out_lost:
    err_set(&e, E_CONN_LOST, "result connection lost");
out_fail:
    set_err(err, errlen, e.msg);
    return -1;
}
