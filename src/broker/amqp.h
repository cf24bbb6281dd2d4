/* SPDX-License-Identifier: MIT
 * broker/amqp.h: RabbitMQ (AMQP 0-9-1) behind broker.h, over util/amqp_link:
 * each child its own connection and channel, consuming Celery's task queues
 * with per-consumer prefetch, acking and rejecting by delivery tag, and
 * publishing with publisher confirms. Child processes only.
 */
#ifndef CELERIAC_BROKER_AMQP_H
#define CELERIAC_BROKER_AMQP_H

#include "broker/broker.h"

/* Sets b up over cfg (cfg->kind BROKER_AMQP; borrowed, outlives b) for
 * owner (nothing opened). 0. */
int broker_amqp_transport_init(struct broker *b, const struct broker_config *cfg,
                               const struct broker_owner *owner);

#endif /* CELERIAC_BROKER_AMQP_H */
