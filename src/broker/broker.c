/* SPDX-License-Identifier: MIT
 * broker/broker.c: picking the transport a worker's --broker URL names.
 */
#include "common.h"
#include "broker/broker.h"
#include "broker/redis.h"

int broker_init(struct broker *b, const struct broker_config *cfg,
                const struct broker_owner *owner, struct err *e)
{
    UNUSED(e); /* Redis is the one transport so far; the URL was checked by the CLI */
    return broker_redis_transport_init(b, cfg, owner);
}
