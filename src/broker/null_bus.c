/* SPDX-License-Identifier: MIT
 * broker/null_bus.c: the bus of a transport that has no broadcast (see
 * bus.h). kombu's SQL transport has no fanout: a Python worker on it
 * answers no remote control and sends no events, and neither does celeriac.
 */
#include "common.h"
#include "broker/bus.h"

static int nb_open(struct bus *b, struct err *e)
{
    UNUSED(b);
    return err_set(e, E_CONFIG, "this broker has no broadcast: no remote control or events");
}

static bool nb_is_open(const struct bus *b)
{
    UNUSED(b);
    return false;
}

static int nb_next(struct bus *b, int timeout_ms, struct buf *envelope, struct err *e)
{
    UNUSED(b);
    UNUSED(timeout_ms);
    UNUSED(envelope);
    return err_set(e, E_CONFIG, "this broker has no broadcast");
}

static int nb_reply(struct bus *b, const char *exchange, const char *routing_key,
                    const char *body, json_t *headers, struct err *e)
{
    UNUSED(b);
    UNUSED(exchange);
    UNUSED(routing_key);
    UNUSED(body);
    UNUSED(headers);
    return err_set(e, E_CONFIG, "this broker has no broadcast");
}

static int nb_event(struct bus *b, const char *routing_key, const char *body, json_t *headers)
{
    UNUSED(b);
    UNUSED(routing_key);
    UNUSED(body);
    UNUSED(headers);
    return 0; /* dropped, as kombu drops events on a transport without fanout */
}

static int nb_flush(struct bus *b, struct err *e)
{
    UNUSED(b);
    UNUSED(e);
    return 0;
}

static int nb_alive(struct bus *b, pid_t master, struct err *e)
{
    UNUSED(b);
    UNUSED(master);
    UNUSED(e);
    return 0;
}

static void nb_close(struct bus *b, const char *reason)
{
    UNUSED(b);
    UNUSED(reason);
}

static void nb_release(struct bus *b)
{
    UNUSED(b);
}

static const struct bus_ops null_bus_ops = {
    .open = nb_open,
    .is_open = nb_is_open,
    .next = nb_next,
    .reply = nb_reply,
    .event = nb_event,
    .flush = nb_flush,
    .alive = nb_alive,
    .close = nb_close,
    .release = nb_release,
    .transport = "sql",
};

void bus_null_init(struct bus *b)
{
    b->ops = &null_bus_ops;
    b->impl = NULL;
}
