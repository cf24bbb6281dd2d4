/* SPDX-License-Identifier: MIT
 * control/client.c: a pidbox request as kombu's Mailbox._publish makes it,
 * and the collection of its replies as Mailbox._collect does (see
 * control/client.h). The transports are client_redis.c and client_amqp.c.
 */
#include "common.h"
#include "broker/sql.h"
#include "control/client.h"
#include "control/client_internal.h"
#include "protocol/message.h"
#include "util/amqp_url.h"
#include "util/base64.h"
#include "util/buf.h"
#include "util/time.h"
#include "util/url.h"
#include "util/uuid.h"

/* Replies larger than this are skipped unread (a stats reply is a few KB). */
#define REPLY_MAX (16u << 20)

struct control_client {
    struct control_transport *t;
    char oid[UUID_STR_LEN];     /* names the reply queue, as kombu's oid */
    uint64_t clock;             /* Lamport clock, merged with the replies' */
};

struct control_client *control_client_open(const char *url,
                                           const struct redis_transport_options *options,
                                           struct err *e)
{
    struct redis_transport_options none;
    redis_transport_options_init(&none, "broker_transport_options");
    if (!options)
        options = &none;
    if (sql_broker_url_is_sql(url)) {
        err_set(e, -ENOTSUP, "remote control needs a broker with broadcast (Redis or RabbitMQ); "
                             "kombu's SQL transport has none");
        return NULL;
    }
    bool on_amqp = amqp_url_is_amqp(url);
    if (on_amqp && redis_transport_options_refuse(options, "broker", e))
        return NULL;
    struct control_client *c = xcalloc(1, sizeof(*c));
    uuid_generate(c->oid);
    c->t = on_amqp ? control_client_amqp_open(url, c->oid, e)
                   : control_client_redis_open(url, options, c->oid, e);
    if (!c->t) {
        free(c);
        return NULL;
    }
    return c;
}

void control_client_free(struct control_client *c)
{
    if (!c)
        return;
    c->t->free(c->t);
    free(c);
}

/* The request's envelope: body {method, arguments, destination, pattern,
 * matcher[, ticket, reply_to]}, headers {clock, expires}. */
static void request_envelope(struct control_client *c, const struct control_request *r,
                             const char *ticket, struct buf *out)
{
    json_t *dest = json_null();
    if (r->n_destination) {
        dest = json_array();
        for (size_t i = 0; i < r->n_destination; i++)
            json_array_append_new(dest, json_string(r->destination[i]));
    }
    json_t *args = r->arguments ? json_incref(r->arguments) : json_object();
    json_t *body = json_pack("{s:s, s:o, s:o, s:n, s:n}", "method", r->method, "arguments", args,
                             "destination", dest, "pattern", "matcher");
    if (r->reply) {
        json_object_set_new(body, "ticket", json_string(ticket));
        json_object_set_new(body, "reply_to", json_pack("{s:s, s:s}", "exchange",
                                                        PIDBOX_REPLY_EXCHANGE, "routing_key",
                                                        c->oid));
    }
    c->clock++;
    json_t *headers = json_pack("{s:I, s:f}", "clock", (json_int_t)c->clock, "expires",
                                r->reply ? time_now() + r->timeout_s : 0.0);
    char *text = json_dumps(body, JSON_COMPACT);
    message_envelope_encode(out, text, strlen(text), NULL, headers, PIDBOX_EXCHANGE, "", NULL);
    free(text);
    json_decref(body);
    json_decref(headers);
}

/* The reply in an envelope when it carries our ticket and is not expired:
 * a new {node: result} object, or NULL. */
static json_t *reply_of(struct control_client *c, const char *env_text, size_t len,
                        const char *ticket)
{
    json_t *env = json_loadb(env_text, len, 0, NULL), *out = NULL;
    json_t *headers = json_object_get(env, "headers");
    const char *b64 = json_string_value(json_object_get(env, "body"));
    const char *their = json_string_value(json_object_get(headers, "ticket"));
    json_t *clock = json_object_get(headers, "clock");
    if (json_is_integer(clock) && (uint64_t)json_integer_value(clock) > c->clock)
        c->clock = (uint64_t)json_integer_value(clock);
    c->clock++;
    double expires = json_number_value(json_object_get(headers, "expires"));
    if (!b64 || !their || strcmp(their, ticket) || (expires && expires < time_now()))
        goto out;
    struct buf body = BUF_INIT;
    const char *enc = json_string_value(
        json_object_get(json_object_get(env, "properties"), "body_encoding"));
    if (enc && !strcmp(enc, "base64")) {
        if (!base64_decode(&body, b64, strlen(b64)))
            out = json_loadb(body.data, body.len, JSON_DECODE_ANY, NULL);
    } else {
        out = json_loads(b64, JSON_DECODE_ANY, NULL);
    }
    buf_release(&body);
    if (out && (!json_is_object(out) || json_object_size(out) != 1)) {
        json_decref(out);
        out = NULL;
    }
out:
    json_decref(env);
    return out;
}

int control_client_broadcast(struct control_client *c, const struct control_request *r,
                             json_t **replies, struct err *e)
{
    char ticket[UUID_STR_LEN];
    uuid_generate(ticket);
    *replies = NULL;
    struct buf env = BUF_INIT;
    request_envelope(c, r, ticket, &env);
    int rc = c->t->publish(c->t, env.data, e);
    json_t *out = json_array();
    int wait_ms = (int)(r->timeout_s * 1000.0 + 0.5);
    while (!rc && r->reply) {
        if (r->n_destination && json_array_size(out) >= r->n_destination)
            break;
        int64_t until = time_mono_ms() + wait_ms;
        int got = 0;
        /* one wait of timeout_s for the next reply with our ticket */
        for (int64_t left = wait_ms; left > 0 && !got; left = until - time_mono_ms()) {
            buf_reset(&env);
            got = c->t->next(c->t, (int)left, &env, e);
            if (got < 0) {
                rc = got;
                break;
            }
            if (got && env.len > REPLY_MAX)
                got = 0;
            json_t *one = got ? reply_of(c, env.data, env.len, ticket) : NULL;
            if (one)
                json_array_append_new(out, one);
            else
                got = 0;
        }
        if (!got)
            break;
    }
    buf_release(&env);
    if (rc) {
        json_decref(out);
        return rc;
    }
    *replies = out;
    return 0;
}
