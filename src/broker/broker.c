/* SPDX-License-Identifier: MIT
 * broker/broker.c: picking the transport a worker's --broker URL names.
 */
#include "common.h"
#include "broker/amqp.h"
#include "broker/broker.h"
#include "broker/redis.h"

int broker_init(struct broker *b, const struct broker_config *cfg,
                const struct broker_owner *owner, struct err *e)
{
    /* the URL was checked by the CLI */
    switch (cfg->kind) {
    case BROKER_REDIS:
        return broker_redis_transport_init(b, cfg, owner);
    case BROKER_AMQP:
        return broker_amqp_transport_init(b, cfg, owner);
    }
    return err_set(e, -EINVAL, "unknown broker transport %d", (int)cfg->kind);
}
