/* SPDX-License-Identifier: MIT
 * broker/bus.h: the broadcast side of a broker, what remote control and
 * events need: listen to this node's pidbox, take requests, reply to the
 * client that asked, publish events. Redis: pub/sub channels and kombu's
 * binding sets (redis_bus.c); RabbitMQ: the celery.pidbox fanout and
 * celeryev topic exchanges (amqp_bus.c).
 *
 * A bus either owns its connection (the control process: bus_init, then
 * open) or rides on the task connection of a child's broker (events only:
 * broker_bus()); a riding bus cannot open, listen or reply.
 */
#ifndef CELERIAC_BROKER_BUS_H
#define CELERIAC_BROKER_BUS_H

#include <jansson.h>
#include <sys/types.h>

struct amqp_link;
struct broker_config;
struct buf;
struct redis_link;

struct bus;

struct bus_ops {
    /* Connects and listens to the node's pidbox (declaring what the broker
     * needs declared, as a Python worker does). 0, E_CONN_LOST, E_CONFIG
     * (credentials, vhost) or E_PROTOCOL. */
    int (*open)(struct bus *b, struct err *e);
    bool (*is_open)(const struct bus *b);
    /* Waits up to timeout_ms for one pidbox request; 1 with its kombu
     * envelope (JSON text, base64 body) appended to envelope; 0 on timeout;
     * E_CONN_LOST (closed: open again). */
    int (*next)(struct bus *b, int timeout_ms, struct buf *envelope, struct err *e);
    /* Sends a reply (body: JSON text; headers borrowed) to the client's
     * reply_to exchange and routing key; nothing when the client is gone.
     * Waits until the broker has it. 0 or E_CONN_LOST. */
    int (*reply)(struct bus *b, const char *exchange, const char *routing_key, const char *body,
                 json_t *headers, struct err *e);
    /* Publishes an event (body: JSON text; headers borrowed) with its
     * routing key ("task.succeeded"), without waiting: events are
     * transient, as Celery's. 0 or E_CONN_LOST. */
    int (*event)(struct bus *b, const char *routing_key, const char *body, json_t *headers);
    /* Waits for what event() sent. 0 or E_CONN_LOST / E_PROTOCOL. */
    int (*flush)(struct bus *b, struct err *e);
    /* Says the worker whose master is `master` is alive, where the broker
     * needs that said (Redis: see BROKER_ALIVE_TTL_S). 0, E_PROTOCOL or
     * E_CONN_LOST. */
    int (*alive)(struct bus *b, pid_t master, struct err *e);
    /* Closes the connection (logging why when reason is not NULL); a riding
     * bus leaves its host's connection alone. */
    void (*close)(struct bus *b, const char *reason);
    void (*release)(struct bus *b);
    const char *transport;       /* as `inspect stats` names it: "redis", "amqp" */
};

struct bus {
    const struct bus_ops *ops;
    void *impl;
};

/* Sets up an owning bus for node over cfg (borrowed; both outlive b).
 * Nothing is opened. 0. */
int bus_init(struct bus *b, const struct broker_config *cfg, const char *node);

/* The bus of each broker, owning (node set) or riding on a link (node NULL,
 * link set: a struct redis_link / struct amqp_link of a child's broker). */
int bus_redis_init(struct bus *b, const struct broker_config *cfg, const char *node,
                   struct redis_link *link);
int bus_amqp_init(struct bus *b, const struct broker_config *cfg, const char *node,
                  struct amqp_link *link);

/* The bus of a transport without broadcast (kombu's SQL transport, where
 * Celery disables remote control and events too): it cannot open, and
 * events sent on it are dropped. */
void bus_null_init(struct bus *b);

#endif /* CELERIAC_BROKER_BUS_H */
