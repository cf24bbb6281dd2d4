/* SPDX-License-Identifier: MIT
 * broker/broker.c: picking the transport (and the bus) a worker's --broker
 * URL names.
 */
#include "common.h"
#include "broker/amqp.h"
#include "broker/broker.h"
#include "broker/bus.h"
#include "broker/redis.h"
#include "broker/sql.h"

int broker_init(struct broker *b, const struct broker_config *cfg,
                const struct broker_owner *owner, struct err *e)
{
    /* the URL was checked by the CLI */
    switch (cfg->kind) {
    case BROKER_REDIS:
        return broker_redis_transport_init(b, cfg, owner);
    case BROKER_AMQP:
        return broker_amqp_transport_init(b, cfg, owner);
    case BROKER_SQL:
        return broker_sql_transport_init(b, cfg, owner);
    }
    return err_set(e, -EINVAL, "unknown broker transport %d", (int)cfg->kind);
}

int bus_init(struct bus *b, const struct broker_config *cfg, const char *node)
{
    switch (cfg->kind) {
    case BROKER_REDIS:
        return bus_redis_init(b, cfg, node, NULL);
    case BROKER_AMQP:
        return bus_amqp_init(b, cfg, node, NULL);
    case BROKER_SQL:
        bus_null_init(b);
        return 0;
    }
    return -EINVAL;
}
