/* SPDX-License-Identifier: MIT
 * amqp_declare.h: exchanges, queues and bindings on an amqp_link, and the
 * topology a Celery 5.2 worker declares on RabbitMQ, with the same flags and
 * arguments, so that declaring after Python (or before it) never fails with
 * 406 PRECONDITION_FAILED. What Python declares (kombu 5.2.4, observed on
 * RabbitMQ 3.10.8):
 *
 *   task queue Q      queue Q durable, not auto-delete, not exclusive, no
 *                     arguments unless configured: x-max-priority (int 'I')
 *                     with task_queue_max_priority or Queue(max_priority=),
 *                     x-queue-type "quorum" with queue_arguments (Celery 5.5
 *                     task_default_queue_type); exchange Q direct durable;
 *                     binding Q -> Q with key Q. Clients publish to the
 *                     default exchange "" with routing key Q, so a delivery
 *                     shows exchange "" (never assume exchange Q).
 *   priorities        RabbitMQ serves the HIGHER priority first (0..255,
 *                     capped at x-max-priority; Celery uses 0..9); the
 *                     opposite of kombu's Redis emulation, where 0 is first.
 *                     Only classic queues with x-max-priority honour it;
 *                     quorum queues on 3.x ignore priorities.
 *   pidbox            exchange "celery.pidbox" fanout, not durable, not
 *                     auto-delete; queue "<node>.celery.pidbox" not durable,
 *                     auto-delete, x-message-ttl 300000 and x-expires 10000
 *                     (control_queue_ttl / control_queue_expires, as 'I'),
 *                     bound with key ""; consumed no-ack. Replies go to the
 *                     direct exchange "reply.celery.pidbox" (not durable)
 *                     with the request's reply_to.routing_key, delivery_mode 1.
 *   events            exchange "celeryev" topic, durable, not auto-delete;
 *                     events are published with delivery_mode 1; receivers
 *                     declare "celeryev.<uuid>" auto-delete, x-message-ttl
 *                     5000, x-expires 60000, bound with "#".
 *
 * Every function returns 0 or a code of amqp_link_check (E_PROTOCOL: the
 * server closed the channel, the link opened a new one). Owner process only.
 */
#ifndef CELERIAC_AMQP_DECLARE_H
#define CELERIAC_AMQP_DECLARE_H

struct amqp_link;
struct buf;

/* Declares an exchange (type "direct", "fanout", "topic", "headers");
 * E_PROTOCOL when it exists with other flags. */
int amqp_declare_exchange(struct amqp_link *l, const char *name, const char *type, bool durable,
                          bool auto_delete, struct err *e);

/* A queue as declared; 0 / NULL fields are left out of the arguments. */
struct amqp_declare_queue {
    const char *name;
    bool durable;
    bool exclusive;
    bool auto_delete;
    int max_priority;          /* x-max-priority (classic queues), 0 = none */
    const char *queue_type;    /* x-queue-type: "classic", "quorum", NULL = server default */
    int message_ttl_ms;        /* x-message-ttl, 0 = none */
    int expires_ms;            /* x-expires, 0 = none */
};

enum amqp_declare_flags {
    /* Use an existing queue of that name as it is, whatever its type and
     * arguments (a quorum queue someone else made): a passive declare first,
     * the real declare only when the queue does not exist. AMQP cannot report
     * an existing queue's arguments; this is how to avoid 406 on them. */
    AMQP_DECLARE_ADOPT = 1 << 0,
};

/* Declares q with integer arguments as signed 32-bit 'I', as py-amqp sends
 * them. *existed (may be NULL) says whether ADOPT found the queue. E_PROTOCOL
 * when the queue exists with other arguments or type (406; the message names
 * the argument, e.g. "inequivalent arg 'x-max-priority'"). */
int amqp_declare_queue(struct amqp_link *l, const struct amqp_declare_queue *q,
                       enum amqp_declare_flags flags, bool *existed, struct err *e);
/* Passive declare: 0 with the counts (either may be NULL) when the queue
 * exists, -ENOENT when it does not (the channel is recovered). */
int amqp_declare_exists(struct amqp_link *l, const char *name, uint32_t *messages,
                        uint32_t *consumers, struct err *e);
int amqp_declare_delete(struct amqp_link *l, const char *name, struct err *e);
int amqp_declare_bind(struct amqp_link *l, const char *queue, const char *exchange,
                      const char *routing_key, struct err *e);

/* Celery's task queue: exchange `name` (direct, durable), queue `name`
 * (durable; x-max-priority when max_priority > 0; x-queue-type when
 * queue_type is not NULL), binding with key `name`. With ADOPT an existing
 * queue is used as it is, with whatever exchange and bindings it has
 * (nothing is declared then). */
int amqp_declare_task_queue(struct amqp_link *l, const char *name, int max_priority,
                            const char *queue_type, enum amqp_declare_flags flags,
                            struct err *e);
/* The remote-control side of node `nodename` (e.g. "w1@host"): celery.pidbox
 * and reply.celery.pidbox exchanges, the node's queue, its binding. The queue
 * name is appended to queue_out when not NULL. */
int amqp_declare_pidbox(struct amqp_link *l, const char *nodename, struct buf *queue_out,
                        struct err *e);
/* The celeryev topic exchange events are published to. */
int amqp_declare_events(struct amqp_link *l, struct err *e);

#endif /* CELERIAC_AMQP_DECLARE_H */
