/* SPDX-License-Identifier: MIT
 * broker/amqp.h: RabbitMQ (AMQP 0-9-1) behind broker.h, over util/amqp_link:
 * each child its own connection and channel, consuming Celery's task queues
 * with per-consumer prefetch, acking and rejecting by delivery tag, and
 * publishing with publisher confirms. Child processes only.
 */
#ifndef CELERIAC_BROKER_AMQP_H
#define CELERIAC_BROKER_AMQP_H

#include "broker/broker.h"

struct amqp_link;

/* Sets b up over cfg (cfg->kind BROKER_AMQP; borrowed, outlives b) for
 * owner (nothing opened). 0. */
int broker_amqp_transport_init(struct broker *b, const struct broker_config *cfg,
                               const struct broker_owner *owner);

/* Publishes a task envelope (kombu's JSON shape) to queue on l as Celery's
 * client does: default exchange, routing key queue, persistent unless the
 * envelope says otherwise, mandatory and confirmed; a queue that does not
 * exist is declared as a Celery worker declares it and the publish made
 * again. 0; E_CONN_LOST (also when no confirm came: the link is closed and
 * the caller publishes again); E_REFUSED (nacked); E_PROTOCOL; -EINVAL. */
int broker_amqp_publish_task(struct amqp_link *l, const char *queue, int priority,
                             const char *envelope, size_t len, struct err *e);

#endif /* CELERIAC_BROKER_AMQP_H */
