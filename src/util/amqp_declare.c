/* SPDX-License-Identifier: MIT
 * amqp_declare.c: exchange, queue and binding declares on an amqp_link, and
 * Celery's topology built from them (see amqp_declare.h for what Python
 * declares and why these flags).
 */
#include "common.h"
#include "util/amqp_declare.h"
#include "util/amqp_link.h"
#include "util/buf.h"

/* One integer queue argument, as py-amqp sends it (32 bits). */
static void i32_arg(amqp_table_entry_t *entry, const char *key, int32_t value)
{
    entry->key = amqp_cstring_bytes(key);
    entry->value.kind = AMQP_FIELD_KIND_I32;
    entry->value.value.i32 = value;
}

/* Arguments of q as a table in entries (room for 4). */
static amqp_table_t queue_args(const struct amqp_declare_queue *q, amqp_table_entry_t *entries)
{
    int n = 0;
    if (q->max_priority)
        i32_arg(&entries[n++], "x-max-priority", q->max_priority);
    if (q->queue_type) {
        entries[n].key = amqp_cstring_bytes("x-queue-type");
        entries[n].value.kind = AMQP_FIELD_KIND_UTF8;
        entries[n++].value.value.bytes = amqp_cstring_bytes(q->queue_type);
    }
    if (q->message_ttl_ms)
        i32_arg(&entries[n++], "x-message-ttl", q->message_ttl_ms);
    if (q->expires_ms)
        i32_arg(&entries[n++], "x-expires", q->expires_ms);
    amqp_table_t t = {.num_entries = n, .entries = n ? entries : NULL};
    return t;
}

int amqp_declare_exchange(struct amqp_link *l, const char *name, const char *type,
                               bool durable, bool auto_delete, struct err *e)
{
    if (!amqp_link_can_use(l, e))
        return E_CONN_LOST;
    amqp_exchange_declare(l->conn, l->channel, amqp_cstring_bytes(name), amqp_cstring_bytes(type),
                          0, durable, auto_delete, 0, amqp_empty_table);
    char what[320];
    snprintf(what, sizeof(what), "declare exchange '%s'", name);
    return amqp_link_check(l, amqp_get_rpc_reply(l->conn), what, e);
}

int amqp_declare_exists(struct amqp_link *l, const char *name, uint32_t *messages,
                           uint32_t *consumers, struct err *e)
{
    if (!amqp_link_can_use(l, e))
        return E_CONN_LOST;
    amqp_queue_declare_ok_t *ok = amqp_queue_declare(l->conn, l->channel, amqp_cstring_bytes(name),
                                                     1, 0, 0, 0, amqp_empty_table);
    char what[320];
    snprintf(what, sizeof(what), "passive declare of queue '%s'", name);
    int rc = amqp_link_check(l, amqp_get_rpc_reply(l->conn), what, e);
    if (rc == E_PROTOCOL && l->reply_code == AMQP_NOT_FOUND)
        return err_set(e, -ENOENT, "queue '%s' does not exist on %s", name, l->where);
    if (!rc && ok) {
        if (messages)
            *messages = ok->message_count;
        if (consumers)
            *consumers = ok->consumer_count;
    }
    return rc;
}

int amqp_declare_queue(struct amqp_link *l, const struct amqp_declare_queue *q,
                            enum amqp_declare_flags flags, bool *existed, struct err *e)
{
    if (existed)
        *existed = false;
    if (flags & AMQP_DECLARE_ADOPT) {
        int rc = amqp_declare_exists(l, q->name, NULL, NULL, e);
        if (!rc && existed)
            *existed = true;
        if (rc != -ENOENT)
            return rc;
    }
    if (!amqp_link_can_use(l, e))
        return E_CONN_LOST;
    amqp_table_entry_t entries[4];
    amqp_queue_declare(l->conn, l->channel, amqp_cstring_bytes(q->name), 0, q->durable,
                       q->exclusive, q->auto_delete, queue_args(q, entries));
    char what[320];
    snprintf(what, sizeof(what), "declare queue '%s'", q->name);
    return amqp_link_check(l, amqp_get_rpc_reply(l->conn), what, e);
}

int amqp_declare_delete(struct amqp_link *l, const char *name, struct err *e)
{
    if (!amqp_link_can_use(l, e))
        return E_CONN_LOST;
    amqp_queue_delete(l->conn, l->channel, amqp_cstring_bytes(name), 0, 0);
    char what[320];
    snprintf(what, sizeof(what), "delete queue '%s'", name);
    return amqp_link_check(l, amqp_get_rpc_reply(l->conn), what, e);
}

int amqp_declare_bind(struct amqp_link *l, const char *queue, const char *exchange,
                   const char *routing_key, struct err *e)
{
    if (!amqp_link_can_use(l, e))
        return E_CONN_LOST;
    amqp_queue_bind(l->conn, l->channel, amqp_cstring_bytes(queue), amqp_cstring_bytes(exchange),
                    amqp_cstring_bytes(routing_key), amqp_empty_table);
    char what[600];
    snprintf(what, sizeof(what), "bind queue '%s' to exchange '%s' with key '%s'", queue,
             exchange, routing_key);
    return amqp_link_check(l, amqp_get_rpc_reply(l->conn), what, e);
}


int amqp_declare_task_queue(struct amqp_link *l, const char *name, int max_priority,
                            const char *queue_type, enum amqp_declare_flags flags,
                            struct err *e)
{
    struct amqp_declare_queue q = {
        .name = name,
        .durable = true,
        .max_priority = max_priority,
        .queue_type = queue_type,
    };
    if (flags & AMQP_DECLARE_ADOPT) {
        /* An existing queue is used with the exchange and bindings it has:
         * clients publish to it through the default exchange, and declaring
         * an exchange `name` that someone made of another type or
         * durability would fail (406) on every attempt and leave the queue
         * unserved. */
        int rc = amqp_declare_exists(l, name, NULL, NULL, e);
        if (rc != -ENOENT)
            return rc;
        flags &= ~AMQP_DECLARE_ADOPT; /* known to be missing: no second passive declare */
    }
    int rc = amqp_declare_exchange(l, name, "direct", true, false, e);
    if (!rc)
        rc = amqp_declare_queue(l, &q, flags, NULL, e);
    if (!rc)
        rc = amqp_declare_bind(l, name, name, name, e);
    return rc;
}

/* control_queue_ttl and control_queue_expires of Celery 5.2, in ms */
#define PIDBOX_QUEUE_TTL_MS 300000
#define PIDBOX_QUEUE_EXPIRES_MS 10000

int amqp_declare_pidbox(struct amqp_link *l, const char *nodename, struct buf *queue_out,
                        struct err *e)
{
    struct buf name = BUF_INIT;
    buf_addf(&name, "%s.celery.pidbox", nodename);
    struct amqp_declare_queue q = {
        .name = name.data,
        .auto_delete = true,
        .message_ttl_ms = PIDBOX_QUEUE_TTL_MS,
        .expires_ms = PIDBOX_QUEUE_EXPIRES_MS,
    };
    int rc = amqp_declare_exchange(l, "celery.pidbox", "fanout", false, false, e);
    if (!rc)
        rc = amqp_declare_exchange(l, "reply.celery.pidbox", "direct", false, false, e);
    if (!rc)
        rc = amqp_declare_queue(l, &q, 0, NULL, e);
    if (!rc)
        rc = amqp_declare_bind(l, name.data, "celery.pidbox", "", e);
    if (!rc && queue_out)
        buf_add(queue_out, name.data, name.len);
    buf_release(&name);
    return rc;
}

int amqp_declare_events(struct amqp_link *l, struct err *e)
{
    return amqp_declare_exchange(l, "celeryev", "topic", true, false, e);
}
