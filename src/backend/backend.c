/* SPDX-License-Identifier: MIT
 * backend/backend.c: picking the result backend --result-backend names, and
 * the backend of a worker that stores no results.
 */
#include "common.h"
#include "backend/backend.h"
#include "backend/redis.h"

static int none_open(struct backend *b, struct err *e)
{
    UNUSED(b);
    UNUSED(e);
    return 0;
}

static bool none_is_open(const struct backend *b)
{
    UNUSED(b);
    return true;
}

static int none_store(struct backend *b, const struct result_meta *m, unsigned flags,
                      struct err *e)
{
    UNUSED(b);
    UNUSED(m);
    UNUSED(flags);
    UNUSED(e);
    return 0;
}

static bool none_has_pending(const struct backend *b)
{
    UNUSED(b);
    return false;
}

static int none_chord_size(struct backend *b, const char *group, size_t size, struct err *e)
{
    UNUSED(b);
    UNUSED(size);
    return err_set(e, E_PROTOCOL, "chord %s needs a result backend", group);
}

static int none_chord_part(struct backend *b, const char *group, int index, const json_t *part,
                           enum serializer s, json_t **parts, struct err *e)
{
    UNUSED(b);
    UNUSED(index);
    UNUSED(part);
    UNUSED(s);
    *parts = NULL;
    return err_set(e, E_PROTOCOL, "chord %s needs a result backend to join", group);
}

static void none_done(struct backend *b)
{
    UNUSED(b);
}

/* No --result-backend: nothing is stored, nothing can fail. */
static const struct backend_ops none_ops = {
    .name = "none",
    .open = none_open,
    .is_open = none_is_open,
    .store = none_store,
    .has_pending = none_has_pending,
    .confirm = none_open,
    .resend = none_open,
    .chord_size = none_chord_size,
    .chord_part = none_chord_part,
    .leave = none_done,
    .release = none_done,
};

void backend_init(struct backend *b, const struct backend_config *cfg, struct broker *broker)
{
    if (!cfg->enabled) {
        *b = (struct backend){.ops = &none_ops, .cfg = cfg};
        return;
    }
    if (cfg->kind == BACKEND_RPC) {
        backend_rpc_ops_init(b, cfg, broker);
        return;
    }
    if (cfg->kind == BACKEND_DB) {
        backend_db_ops_init(b, cfg);
        return;
    }
    backend_redis_ops_init(b, cfg);
}

enum serializer backend_serializer(const struct backend *b, enum serializer arrived_in)
{
    return result_serializer_pick(b->cfg->serializer, arrived_in);
}
