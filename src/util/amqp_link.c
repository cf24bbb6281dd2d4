/* SPDX-License-Identifier: MIT
 * amqp_link.c: a rabbitmq-c connection with one channel: open, the one error
 * mapping, QoS, consume, ack/reject and the frame dispatch behind next and publish
 * confirms (see amqp_link.h). Declares and Celery's topology live in
 * amqp_declare.c, message conversion in amqp_msg.c.
 */
#include "common.h"
#include "util/amqp_link.h"
#include "util/amqp_tls.h"
#include "util/amqp_url.h"
#include "util/buf.h"
#include "util/log.h"
#include "util/self.h"
#include "util/time.h"

#include <amqp_tcp_socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/time.h>

struct amqp_link_pending {
    amqp_envelope_t env;
    struct amqp_link_pending *next;
};

void amqp_link_init(struct amqp_link *l, const char *role)
{
    memset(l, 0, sizeof(*l));
    l->role = role;
}

bool amqp_link_is_open(const struct amqp_link *l)
{
    return l->conn != NULL;
}

static struct timeval tv_ms(int ms)
{
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    return tv;
}

void amqp_link_delivery_release(struct amqp_link_delivery *d)
{
    if (d)
        amqp_destroy_envelope(&d->env);
}

static void drop_pending(struct amqp_link *l)
{
    while (l->pending) {
        struct amqp_link_pending *p = l->pending;
        l->pending = p->next;
        amqp_destroy_envelope(&p->env);
        free(p);
    }
    l->pending_tail = NULL;
}

/* Forgets everything that belonged to the channel. */
static void channel_gone(struct amqp_link *l)
{
    for (size_t i = 0; i < l->nconsumers; i++) {
        free(l->consumers[i].tag);
        free(l->consumers[i].queue);
    }
    free(l->consumers);
    l->consumers = NULL;
    l->nconsumers = 0;
    free(l->cancelled);
    l->cancelled = NULL;
    drop_pending(l);
    l->channel = 0;
    l->confirming = false;
    l->publish_seq = 0;
}

void amqp_link_close(struct amqp_link *l, const char *reason)
{
    if (!l->conn)
        return;
    if (reason)
        log_warning("%s connection to %s closed after %.1f s: %s", l->role, l->where,
                    (double)(time_mono_ms() - l->connected_ms) / 1000.0, reason);
    channel_gone(l);
    if (l->owner != self_pid()) {
        /* A forked copy: never speak on the parent's socket. TLS teardown
         * would send close_notify, so then only our descriptor goes. */
        if (l->tls)
            close(amqp_get_sockfd(l->conn));
        else
            amqp_destroy_connection(l->conn);
    } else {
        amqp_connection_close(l->conn, AMQP_REPLY_SUCCESS);
        amqp_destroy_connection(l->conn);
    }
    l->conn = NULL;
}

/* Closes without the connection.close handshake (the socket is dead or the
 * server already closed it). The loss of a connection that never worked is
 * only a debug line: the caller's retry reports that episode once, where a
 * server that takes each connection and drops it at once (a frame over
 * frame_max, a channel it refuses) would otherwise get a line per attempt. */
static void drop(struct amqp_link *l, const char *reason)
{
    if (!l->conn)
        return;
    if (!l->opening)
        log_write(l->worked ? LOG_WARNING : LOG_DEBUG, "%s connection to %s lost after %.1f s: %s",
                  l->role, l->where, (double)(time_mono_ms() - l->connected_ms) / 1000.0,
                  reason);
    channel_gone(l);
    if (l->owner == self_pid() || !l->tls)
        amqp_destroy_connection(l->conn);
    else
        close(amqp_get_sockfd(l->conn));
    l->conn = NULL;
}

bool amqp_link_can_use(struct amqp_link *l, struct err *e)
{
    if (!l->conn)
        return err_set(e, E_CONN_LOST, "%s connection is not open", l->role), false;
    if (l->owner != self_pid())
        return err_set(e, E_CONN_LOST, "%s connection opened by pid %d used from pid %d",
                       l->role, (int)l->owner, (int)self_pid()), false;
    if (!l->channel)
        return err_set(e, E_CONN_LOST, "%s connection to %s has no open channel", l->role,
                       l->where), false;
    return true;
}

static int open_channel(struct amqp_link *l, struct err *e)
{
    amqp_channel_t ch = (amqp_channel_t)(l->last_channel + 1);
    if (ch == 0 || (amqp_get_channel_max(l->conn) && ch > amqp_get_channel_max(l->conn)))
        ch = 1; /* wrapped: numbers of closed channels are free again */
    l->last_channel = ch;
    amqp_channel_open(l->conn, ch);
    amqp_rpc_reply_t r = amqp_get_rpc_reply(l->conn);
    if (r.reply_type != AMQP_RESPONSE_NORMAL)
        return amqp_link_check(l, r, "channel.open", e);
    l->channel = ch;
    return 0;
}

/* The server closed the channel: acknowledge, forget it, open a new one. */
static int server_channel_close(struct amqp_link *l, const amqp_channel_close_t *m,
                                const char *what, struct err *e)
{
    l->reply_code = m->reply_code;
    err_set(e, E_PROTOCOL, "%s on %s failed: %d %.*s", what, l->where, m->reply_code,
            (int)m->reply_text.len, (const char *)m->reply_text.bytes);
    amqp_channel_close_ok_t ok = {0};
    amqp_channel_t ch = l->channel;
    channel_gone(l);
    if (amqp_send_method(l->conn, ch, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok) < 0) {
        drop(l, "channel.close-ok could not be sent");
        return e ? (e->code = E_CONN_LOST) : E_CONN_LOST;
    }
    struct err oe = {0};
    if (open_channel(l, &oe)) {
        if (e)
            *e = oe;
        return oe.code;
    }
    return E_PROTOCOL;
}

static int server_connection_close(struct amqp_link *l, const amqp_connection_close_t *m,
                                   const char *what, struct err *e)
{
    l->reply_code = m->reply_code;
    /* ACCESS_REFUSED (wrong user or password) and NOT_ALLOWED (no such vhost,
     * no permission) are configuration, not a passing outage. */
    int code = m->reply_code == AMQP_ACCESS_REFUSED || m->reply_code == AMQP_NOT_ALLOWED
                   ? E_CONFIG
                   : E_CONN_LOST;
    err_set(e, code, "%s on %s failed: %d %.*s", what, l->where, m->reply_code,
            (int)m->reply_text.len, (const char *)m->reply_text.bytes);
    amqp_connection_close_ok_t ok = {0};
    amqp_send_method(l->conn, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
    drop(l, e ? e->msg : "closed by the server");
    return code;
}

/* What a library status means, in why (size n). A plain connection that
 * the server drops during the handshake is likely aimed at a TLS port: the
 * message says so. Returns true when the server's TLS certificate failed
 * verification (configuration, not an outage). */
static bool describe_status(struct amqp_link *l, const struct amqp_url *u, int status, char *why,
                            size_t n)
{
    if (l->tls)
        return amqp_tls_describe(status, &l->tls_check, u, l->opening, why, n);
    if (l->opening && (status == AMQP_STATUS_SOCKET_ERROR ||
                       status == AMQP_STATUS_CONNECTION_CLOSED ||
                       status == AMQP_STATUS_BAD_AMQP_DATA))
        snprintf(why, n, "%s (if that port is TLS, use amqps://)", amqp_error_string2(status));
    else if (status == AMQP_STATUS_BAD_AMQP_DATA && l->conn)
        /* rabbitmq-c says the same for a frame over frame_max as for garbage */
        snprintf(why, n, "%s (a malformed frame, or one larger than frame_max %d)",
                 amqp_error_string2(status), amqp_get_frame_max(l->conn));
    else
        snprintf(why, n, "%s", amqp_error_string2(status));
    return false;
}

int amqp_link_check(struct amqp_link *l, amqp_rpc_reply_t r, const char *what, struct err *e)
{
    char why[240];
    switch (r.reply_type) {
    case AMQP_RESPONSE_NORMAL:
        return 0;
    case AMQP_RESPONSE_SERVER_EXCEPTION:
        if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD)
            return server_channel_close(l, r.reply.decoded, what, e);
        if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD)
            return server_connection_close(l, r.reply.decoded, what, e);
        snprintf(why, sizeof(why), "unexpected server method 0x%08x", (unsigned)r.reply.id);
        break;
    case AMQP_RESPONSE_LIBRARY_EXCEPTION:
        describe_status(l, NULL, r.library_error, why, sizeof(why));
        break;
    case AMQP_RESPONSE_NONE:
    default:
        snprintf(why, sizeof(why), "no reply from the library");
        break;
    }
    err_set(e, E_CONN_LOST, "%s on %s failed: %s", what, l->where, why);
    drop(l, why);
    return E_CONN_LOST;
}

/* A library status (negative) of an asynchronous method: the socket is gone. */
static int status_lost(struct amqp_link *l, int status, const char *what, struct err *e)
{
    amqp_rpc_reply_t r = {.reply_type = AMQP_RESPONSE_LIBRARY_EXCEPTION, .library_error = status};
    return amqp_link_check(l, r, what, e);
}

static amqp_socket_t *new_socket(struct amqp_link *l, const struct amqp_url *u, struct err *e)
{
    if (u->tls)
        return amqp_tls_socket_new(l->conn, u, l->where, &l->tls_check, e);
    amqp_socket_t *s = amqp_tcp_socket_new(l->conn);
    if (!s)
        err_set(e, E_CONN_LOST, "connect to %s failed: out of memory", l->where);
    return s;
}

/* Client properties: a product name for `rabbitmqctl list_connections`, and
 * the capabilities that make the server tell us about a cancelled consumer
 * and close with 403 on a failed login instead of just hanging up. */
static amqp_rpc_reply_t login(struct amqp_link *l, const struct amqp_url *u)
{
    amqp_table_entry_t caps[] = {
        {.key = amqp_cstring_bytes("consumer_cancel_notify"),
         .value = {.kind = AMQP_FIELD_KIND_BOOLEAN, .value.boolean = 1}},
        {.key = amqp_cstring_bytes("authentication_failure_close"),
         .value = {.kind = AMQP_FIELD_KIND_BOOLEAN, .value.boolean = 1}},
        {.key = amqp_cstring_bytes("publisher_confirms"),
         .value = {.kind = AMQP_FIELD_KIND_BOOLEAN, .value.boolean = 1}},
    };
    amqp_table_entry_t props[] = {
        {.key = amqp_cstring_bytes("product"),
         .value = {.kind = AMQP_FIELD_KIND_UTF8, .value.bytes = amqp_cstring_bytes("celeriac")}},
        {.key = amqp_cstring_bytes("capabilities"),
         .value = {.kind = AMQP_FIELD_KIND_TABLE,
                   .value.table = {.num_entries = (int)ARRAY_SIZE(caps), .entries = caps}}},
    };
    amqp_table_t t = {.num_entries = (int)ARRAY_SIZE(props), .entries = props};
    return amqp_login_with_properties(l->conn, u->vhost, 0, u->frame_max, u->heartbeat, &t,
                                      AMQP_SASL_METHOD_PLAIN, u->user, u->password);
}

int amqp_link_open(struct amqp_link *l, const struct amqp_url *u, struct err *e)
{
    amqp_link_close(l, NULL);
    struct buf w = BUF_INIT;
    amqp_url_describe(&w, u);
    snprintf(l->where, sizeof(l->where), "%s", w.data);
    buf_release(&w);
    l->reply_code = 0;
    l->last_channel = 0;
    l->worked = false;
    l->tls = u->tls;
    l->owner = self_pid();
    l->connected_ms = time_mono_ms();
    if (!(l->conn = amqp_new_connection()))
        return err_set(e, E_CONN_LOST, "connect to %s failed: out of memory", l->where);
    amqp_socket_t *s = new_socket(l, u, e);
    struct timeval ct = tv_ms(u->connect_timeout_ms), rt = tv_ms(AMQP_LINK_RPC_TIMEOUT_MS);
    int st = s ? amqp_socket_open_noblock(s, u->host, u->port, &ct) : AMQP_STATUS_OK;
    if (s && l->tls)
        amqp_tls_handshake_done(s);
    if (!s || st != AMQP_STATUS_OK) {
        char why[240];
        if (s && describe_status(l, u, st, why, sizeof(why)))
            err_set(e, E_CONFIG, "connect to %s failed: %s", l->where, why);
        else if (s)
            err_set(e, E_CONN_LOST, "connect to %s failed: %s", l->where, why);
        amqp_destroy_connection(l->conn);
        l->conn = NULL;
        return e ? e->code : E_CONN_LOST;
    }
    amqp_set_handshake_timeout(l->conn, &ct);
    amqp_set_rpc_timeout(l->conn, &rt);
    l->opening = true;
    int rc = amqp_link_check(l, login(l, u), "login", e);
    if (!rc) {
        l->heartbeat = amqp_get_heartbeat(l->conn);
        rc = open_channel(l, e);
    }
    l->opening = false;
    return rc;
}

int amqp_link_qos(struct amqp_link *l, uint16_t prefetch, struct err *e)
{
    if (!amqp_link_can_use(l, e))
        return E_CONN_LOST;
    amqp_basic_qos(l->conn, l->channel, 0, prefetch, 0);
    return amqp_link_check(l, amqp_get_rpc_reply(l->conn), "basic.qos", e);
}

int amqp_link_consume(struct amqp_link *l, const char *queue, bool no_ack, struct err *e)
{
    if (!amqp_link_can_use(l, e))
        return E_CONN_LOST;
    amqp_basic_consume_ok_t *ok = amqp_basic_consume(l->conn, l->channel, amqp_cstring_bytes(queue),
                                                     amqp_empty_bytes, 0, no_ack, 0,
                                                     amqp_empty_table);
    char what[320];
    snprintf(what, sizeof(what), "consume from queue '%s'", queue);
    int rc = amqp_link_check(l, amqp_get_rpc_reply(l->conn), what, e);
    if (rc)
        return rc;
    l->consumers = xrealloc(l->consumers, (l->nconsumers + 1) * sizeof(*l->consumers));
    l->consumers[l->nconsumers].tag = xstrndup(ok->consumer_tag.bytes, ok->consumer_tag.len);
    l->consumers[l->nconsumers].queue = xstrdup(queue);
    l->nconsumers++;
    return 0;
}

int amqp_link_cancel_all(struct amqp_link *l, struct err *e)
{
    if (!amqp_link_can_use(l, e))
        return E_CONN_LOST;
    while (l->nconsumers) {
        struct amqp_link_consumer *k = &l->consumers[l->nconsumers - 1];
        /* rabbitmq-c queues the deliveries that arrive before cancel-ok */
        amqp_basic_cancel(l->conn, l->channel, amqp_cstring_bytes(k->tag));
        int rc = amqp_link_check(l, amqp_get_rpc_reply(l->conn), "basic.cancel", e);
        if (rc)
            return rc; /* a closed channel took its consumers with it */
        free(k->tag);
        free(k->queue);
        l->nconsumers--;
    }
    return 0;
}

int amqp_link_keepalive(struct amqp_link *l, int idle_s, int interval_s, int count)
{
    if (!l->conn)
        return -ENOTCONN;
    int fd = amqp_get_sockfd(l->conn), on = 1;
    if (fd < 0)
        return -EBADF;
    if (setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof(on)) ||
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle_s, sizeof(idle_s)) ||
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval_s, sizeof(interval_s)) ||
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof(count)))
        return -errno;
    return 0;
}

int amqp_link_ack(struct amqp_link *l, amqp_channel_t ch, uint64_t tag, struct err *e)
{
    if (!amqp_link_can_use(l, e))
        return E_CONN_LOST;
    if (ch != l->channel)
        return err_set(e, -ESTALE, "ack of delivery %" PRIu64 " of closed channel %u", tag, ch);
    int st = amqp_basic_ack(l->conn, ch, tag, 0);
    return st ? status_lost(l, st, "basic.ack", e) : 0;
}

int amqp_link_reject(struct amqp_link *l, amqp_channel_t ch, uint64_t tag, bool requeue,
                     struct err *e)
{
    if (!amqp_link_can_use(l, e))
        return E_CONN_LOST;
    if (ch != l->channel)
        return err_set(e, -ESTALE, "reject of delivery %" PRIu64 " of closed channel %u", tag, ch);
    int st = amqp_basic_reject(l->conn, ch, tag, requeue);
    return st ? status_lost(l, st, "basic.reject", e) : 0;
}


/* What one incoming method frame was, for next() and publish(). */
enum event_kind {
    EV_OTHER,      /* ignored (a late confirm, cancel-ok, ...) */
    EV_DELIVERY,   /* env filled */
    EV_ACK,        /* publisher confirm: tag, multiple */
    EV_NACK,
    EV_RETURN,     /* a mandatory publish came back: code, text */
    EV_CANCEL,     /* the server cancelled a consumer: l->cancelled names its queue */
};

struct event {
    enum event_kind kind;
    uint64_t tag;
    bool multiple;
    int code;
    char text[160];
};

/* The largest body a real RabbitMQ sends: its max_message_size cannot be
 * set above 512 MiB. A header frame announcing more is hostile or corrupt;
 * rabbitmq-c's amqp_read_message would allocate whatever it says. */
#define AMQP_LINK_MAX_BODY ((uint64_t)512 * 1024 * 1024)

/* Page size of a delivery's pool (see read_content). */
#define DELIVERY_POOL_PAGE 1000

/* Copies what the pool of the connection's frame owns into msg's pool:
 * every flagged bytes field and the headers table. */
static int clone_properties(const amqp_basic_properties_t *src, amqp_message_t *msg)
{
    amqp_basic_properties_t *dst = &msg->properties;
    *dst = *src;
    amqp_bytes_t *const fields[] = {
        &dst->content_type, &dst->content_encoding, &dst->correlation_id, &dst->reply_to,
        &dst->expiration,   &dst->message_id,       &dst->type,           &dst->user_id,
        &dst->app_id,       &dst->cluster_id,
    };
    const amqp_flags_t flags[] = {
        AMQP_BASIC_CONTENT_TYPE_FLAG, AMQP_BASIC_CONTENT_ENCODING_FLAG,
        AMQP_BASIC_CORRELATION_ID_FLAG, AMQP_BASIC_REPLY_TO_FLAG, AMQP_BASIC_EXPIRATION_FLAG,
        AMQP_BASIC_MESSAGE_ID_FLAG, AMQP_BASIC_TYPE_FLAG, AMQP_BASIC_USER_ID_FLAG,
        AMQP_BASIC_APP_ID_FLAG, AMQP_BASIC_CLUSTER_ID_FLAG,
    };
    for (size_t i = 0; i < sizeof(flags) / sizeof(flags[0]); i++) {
        amqp_bytes_t *b = fields[i];
        if (!(src->_flags & flags[i]) || !b->len)
            continue;
        void *copy = amqp_pool_alloc(&msg->pool, b->len);
        if (!copy)
            return AMQP_STATUS_NO_MEMORY;
        memcpy(copy, b->bytes, b->len);
        b->bytes = copy;
    }
    if (src->_flags & AMQP_BASIC_HEADERS_FLAG)
        return amqp_table_clone(&src->headers, &dst->headers, &msg->pool);
    return AMQP_STATUS_OK;
}

/* The content of a delivery on channel ch: the header frame, then the body
 * frames, which are read into one buffer of the announced size, or, past
 * max_keep, read and discarded (*discarded set). As
 * amqp_read_message, with the allocation bounded. rabbitmq-c reads every
 * frame into the channel's pool and keeps it until the pool is recycled, so
 * the pool is recycled after each frame is copied: else a discarded body
 * would still take its whole size in frames (and a kept one twice), and a
 * body announced as 2^62 bytes that trickles in would grow without bound.
 * The frame that announced the delivery lives in that pool too. */
static int read_content(struct amqp_link *l, amqp_channel_t ch, uint64_t max_keep,
                        const char *what, amqp_message_t *msg, uint64_t *discarded,
                        struct err *e)
{
    amqp_frame_t f;
    memset(msg, 0, sizeof(*msg));
    *discarded = 0;
    int st = amqp_simple_wait_frame(l->conn, &f);
    if (st != AMQP_STATUS_OK)
        return status_lost(l, st, what, e);
    if (f.frame_type == AMQP_FRAME_METHOD) {
        amqp_rpc_reply_t r = {.reply_type = AMQP_RESPONSE_SERVER_EXCEPTION, .reply = f.payload.method};
        return amqp_link_check(l, r, what, e);
    }
    if (f.frame_type != AMQP_FRAME_HEADER || f.channel != ch)
        return status_lost(l, AMQP_STATUS_UNEXPECTED_STATE, what, e);
    /* Pages under 1 KiB: glibc serves them from its per-thread cache, while
     * every request of 1 KiB or more first consolidates the freed small
     * chunks, a cost paid on every delivery. Celery's headers take two or
     * three such pages; a larger value gets a block of its own. */
    init_amqp_pool(&msg->pool, DELIVERY_POOL_PAGE);
    uint64_t size = f.payload.properties.body_size;
    st = clone_properties(f.payload.properties.decoded, msg);
    if (st != AMQP_STATUS_OK)
        goto out_lost;
    amqp_maybe_release_buffers_on_channel(l->conn, ch);
    bool keep = size <= max_keep;
    if (keep && size) {
        msg->body = amqp_bytes_malloc((size_t)size);
        if (!msg->body.bytes) {
            st = AMQP_STATUS_NO_MEMORY;
            goto out_lost;
        }
    }
    for (uint64_t got = 0; got < size;) {
        if ((st = amqp_simple_wait_frame(l->conn, &f)) != AMQP_STATUS_OK)
            goto out_lost;
        if (f.frame_type != AMQP_FRAME_BODY || f.channel != ch ||
            f.payload.body_fragment.len > size - got) {
            st = AMQP_STATUS_BAD_AMQP_DATA;
            goto out_lost;
        }
        if (keep)
            memcpy((char *)msg->body.bytes + got, f.payload.body_fragment.bytes,
                   f.payload.body_fragment.len);
        got += f.payload.body_fragment.len;
        amqp_maybe_release_buffers_on_channel(l->conn, ch);
    }
    if (!keep)
        *discarded = size;
    return 0;

out_lost:
    amqp_destroy_message(msg);
    memset(msg, 0, sizeof(*msg));
    return status_lost(l, st, what, e);
}

/* basic.deliver: the delivery fields, then the content frames. ev->kind
 * becomes EV_OTHER when the delivery was rejected unread. */
static int read_delivery(struct amqp_link *l, const amqp_frame_t *f, amqp_envelope_t *env,
                         struct event *ev, struct err *e)
{
    const amqp_basic_deliver_t *d = f->payload.method.decoded;
    memset(env, 0, sizeof(*env));
    env->channel = f->channel;
    env->delivery_tag = d->delivery_tag;
    env->redelivered = d->redelivered;
    env->consumer_tag = amqp_bytes_malloc_dup(d->consumer_tag);
    env->exchange = amqp_bytes_malloc_dup(d->exchange);
    env->routing_key = amqp_bytes_malloc_dup(d->routing_key);
    uint64_t discarded;
    int rc = read_content(l, f->channel, AMQP_LINK_MAX_BODY, "read delivery", &env->message,
                          &discarded, e);
    if (!rc && discarded) {
        const amqp_basic_properties_t *p = &env->message.properties;
        bool id = (p->_flags & AMQP_BASIC_CORRELATION_ID_FLAG) && p->correlation_id.len;
        log_error("rejected a message of %" PRIu64 " bytes from %s%s%.*s: larger than any "
                  "RabbitMQ sends", discarded, l->where, id ? " for task " : "",
                  id ? (int)p->correlation_id.len : 0,
                  id ? (const char *)p->correlation_id.bytes : "");
        rc = amqp_link_reject(l, f->channel, env->delivery_tag, false, e); /* d is gone */
        ev->kind = EV_OTHER; /* nothing to deliver */
    }
    if (rc || ev->kind != EV_DELIVERY) {
        amqp_destroy_envelope(env);
        memset(env, 0, sizeof(*env));
    }
    return rc;
}

static void consumer_cancelled(struct amqp_link *l, const amqp_basic_cancel_t *c)
{
    for (size_t i = 0; i < l->nconsumers; i++) {
        struct amqp_link_consumer *k = &l->consumers[i];
        if (strlen(k->tag) != c->consumer_tag.len ||
            memcmp(k->tag, c->consumer_tag.bytes, c->consumer_tag.len))
            continue;
        free(l->cancelled);
        l->cancelled = k->queue;
        free(k->tag);
        l->consumers[i] = l->consumers[--l->nconsumers];
        break;
    }
    if (!c->nowait) {
        amqp_basic_cancel_ok_t ok = {.consumer_tag = c->consumer_tag};
        amqp_send_method(l->conn, l->channel, AMQP_BASIC_CANCEL_OK_METHOD, &ok);
    }
}

/* Reads the content that follows a method on channel ch and throws it
 * away, whatever size it announces. Not amqp_read_message: that allocates
 * the announced size first (2^62 from a hostile server). */
static int skip_content(struct amqp_link *l, amqp_channel_t ch, const char *what, struct err *e)
{
    amqp_message_t msg;
    uint64_t discarded;
    int rc = read_content(l, ch, 0, what, &msg, &discarded, e);
    if (!rc)
        amqp_destroy_message(&msg);
    return rc;
}

/* A basic.return: keeps its reply and discards the returned content. */
static int returned(struct amqp_link *l, const amqp_frame_t *f, struct event *ev, struct err *e)
{
    const amqp_basic_return_t *m = f->payload.method.decoded;
    ev->code = m->reply_code;
    snprintf(ev->text, sizeof(ev->text), "%.*s", (int)m->reply_text.len,
             (const char *)m->reply_text.bytes);
    return skip_content(l, f->channel, "read returned message", e);
}

/* A frame of a channel that has closed since: rabbitmq-c queues what
 * arrives during an RPC (a passive declare the server answers by closing
 * the channel), so deliveries, returns and confirms of the old channel can
 * come out after the link moved to a new one. The server requeued those
 * deliveries when the channel closed, and their tags and confirm numbers
 * mean something else on the new channel (an ack of one closes it with 406
 * "unknown delivery tag"): skipped, content and all. */
static int skip_stale(struct amqp_link *l, const amqp_frame_t *f, struct err *e)
{
    if (f->frame_type != AMQP_FRAME_METHOD || (f->payload.method.id != AMQP_BASIC_DELIVER_METHOD &&
                                               f->payload.method.id != AMQP_BASIC_RETURN_METHOD))
        return 0;
    return skip_content(l, f->channel, "read a message of a closed channel", e);
}

/* Waits until deadline for one method frame and classifies it into ev.
 * -EAGAIN when the time passed; a code from amqp_link_check on a close. */
static int wait_event(struct amqp_link *l, int64_t deadline, amqp_envelope_t *env,
                      struct event *ev, struct err *e)
{
    int64_t left = deadline - time_mono_ms();
    struct timeval tv = tv_ms(left > 0 ? (int)left : 0);
    amqp_frame_t f;
    memset(ev, 0, sizeof(*ev));
    int st = amqp_simple_wait_frame_noblock(l->conn, &f, &tv);
    if (st == AMQP_STATUS_TIMEOUT)
        return -EAGAIN;
    if (st != AMQP_STATUS_OK)
        return status_lost(l, st, "wait for the broker", e);
    if (f.channel && f.channel != l->channel)
        return skip_stale(l, &f, e);
    if (f.frame_type != AMQP_FRAME_METHOD)
        return status_lost(l, AMQP_STATUS_BAD_AMQP_DATA, "wait for the broker", e);
    amqp_rpc_reply_t r = {.reply_type = AMQP_RESPONSE_SERVER_EXCEPTION, .reply = f.payload.method};
    const amqp_basic_ack_t *ack = f.payload.method.decoded;
    const amqp_basic_nack_t *nack = f.payload.method.decoded;
    switch (f.payload.method.id) {
    case AMQP_BASIC_DELIVER_METHOD:
        ev->kind = EV_DELIVERY;
        return read_delivery(l, &f, env, ev, e);
    case AMQP_BASIC_ACK_METHOD:
        *ev = (struct event){.kind = EV_ACK, .tag = ack->delivery_tag, .multiple = ack->multiple};
        return 0;
    case AMQP_BASIC_NACK_METHOD:
        *ev = (struct event){.kind = EV_NACK, .tag = nack->delivery_tag, .multiple = nack->multiple};
        return 0;
    case AMQP_BASIC_RETURN_METHOD:
        ev->kind = EV_RETURN;
        return returned(l, &f, ev, e);
    case AMQP_BASIC_CANCEL_METHOD:
        ev->kind = EV_CANCEL;
        consumer_cancelled(l, f.payload.method.decoded);
        return 0;
    case AMQP_CHANNEL_CLOSE_METHOD:
        return amqp_link_check(l, r, "consume", e);
    case AMQP_CONNECTION_CLOSE_METHOD:
        return amqp_link_check(l, r, "connection", e);
    }
    return 0;
}

/* Reports a cancellation noticed earlier (possibly while publishing). */
static int report_cancel(struct amqp_link *l, struct err *e)
{
    err_set(e, -ECANCELED, "consumer of queue '%s' on %s cancelled by the server "
            "(queue deleted or moved)", l->cancelled ? l->cancelled : "?", l->where);
    free(l->cancelled);
    l->cancelled = NULL;
    return -ECANCELED;
}

int amqp_link_next(struct amqp_link *l, int timeout_ms, struct amqp_link_delivery *d,
                   struct err *e)
{
    memset(d, 0, sizeof(*d));
    if (!amqp_link_can_use(l, e))
        return E_CONN_LOST;
    if (l->cancelled)
        return report_cancel(l, e);
    if (l->pending) {
        struct amqp_link_pending *p = l->pending;
        if (!(l->pending = p->next))
            l->pending_tail = NULL;
        d->env = p->env;
        free(p);
        return 0;
    }
    amqp_maybe_release_buffers(l->conn);
    int64_t deadline = time_mono_ms() + (timeout_ms > 0 ? timeout_ms : 0);
    for (;;) {
        struct event ev;
        int rc = wait_event(l, deadline, &d->env, &ev, e);
        if (rc == -EAGAIN)
            l->worked = true;
        if (rc)
            return rc == -EAGAIN ? err_set(e, -EAGAIN, "no delivery within %d ms", timeout_ms)
                                 : rc;
        if (ev.kind == EV_DELIVERY) {
            l->worked = true;
            return 0;
        }
        if (ev.kind == EV_CANCEL && l->cancelled)
            return report_cancel(l, e);
    }
}

static int confirm_select(struct amqp_link *l, struct err *e)
{
    amqp_confirm_select(l->conn, l->channel);
    int rc = amqp_link_check(l, amqp_get_rpc_reply(l->conn), "confirm.select", e);
    if (!rc) {
        l->confirming = true;
        l->publish_seq = 0;
    }
    return rc;
}

/* Waits for the confirm of publish number seq; deliveries are queued. */
static int await_confirm(struct amqp_link *l, uint64_t seq, int64_t deadline, const char *what,
                         struct err *e)
{
    struct event ret = {0};
    for (;;) {
        struct amqp_link_pending *p = xcalloc(1, sizeof(*p));
        struct event ev;
        int rc = wait_event(l, deadline, &p->env, &ev, e);
        if (!rc && ev.kind == EV_DELIVERY) {
            *(l->pending ? &l->pending_tail->next : &l->pending) = p;
            l->pending_tail = p;
            continue;
        }
        free(p);
        if (rc == -EAGAIN)
            return err_set(e, -ETIMEDOUT, "%s on %s: no confirm in time", what, l->where);
        if (rc)
            return rc;
        if (ev.kind == EV_RETURN)
            ret = ev;
        if ((ev.kind != EV_ACK && ev.kind != EV_NACK) || ev.tag < seq)
            continue;
        if (ev.kind == EV_NACK)
            return err_set(e, E_REFUSED, "%s on %s: the broker nacked it", what, l->where);
        l->worked = true;
        if (ret.kind == EV_RETURN)
            return err_set(e, -ENOENT, "%s on %s returned: %d %s", what, l->where, ret.code,
                           ret.text);
        return 0;
    }
}

/* Writes one basic.publish; on a confirming channel it is numbered, since
 * the broker confirms it whether or not anyone waits. */
static int send_publish(struct amqp_link *l, const char *exchange, const char *routing_key,
                        bool mandatory, const amqp_basic_properties_t *props, amqp_bytes_t body,
                        const char *what, struct err *e)
{
    amqp_maybe_release_buffers(l->conn);
    int st = amqp_basic_publish(l->conn, l->channel, amqp_cstring_bytes(exchange),
                                amqp_cstring_bytes(routing_key), mandatory, 0, props, body);
    if (st < 0)
        return status_lost(l, st, what, e);
    if (l->confirming)
        l->publish_seq++;
    return 0;
}

int amqp_link_publish(struct amqp_link *l, const char *exchange, const char *routing_key,
                      bool mandatory, const amqp_basic_properties_t *props, amqp_bytes_t body,
                      int timeout_ms, struct err *e)
{
    if (!amqp_link_can_use(l, e))
        return E_CONN_LOST;
    if (!l->confirming && confirm_select(l, e))
        return e ? e->code : E_CONN_LOST;
    char what[600];
    snprintf(what, sizeof(what), "publish to exchange '%s' with key '%s'", exchange, routing_key);
    int rc = send_publish(l, exchange, routing_key, mandatory, props, body, what, e);
    if (rc)
        return rc;
    return await_confirm(l, l->publish_seq, time_mono_ms() + (timeout_ms > 0 ? timeout_ms : 0),
                         what, e);
}

int amqp_link_publish_nowait(struct amqp_link *l, const char *exchange, const char *routing_key,
                             const amqp_basic_properties_t *props, amqp_bytes_t body,
                             struct err *e)
{
    if (!amqp_link_can_use(l, e))
        return E_CONN_LOST;
    /* await_confirm of a later publish skips this one's confirm */
    return send_publish(l, exchange, routing_key, false, props, body, "publish an event", e);
}
