/* SPDX-License-Identifier: MIT
 * backend/rpc_backend.c: Celery's rpc:// result backend. Nothing is stored:
 * each state of a task (STARTED, RETRY, SUCCESS, FAILURE, REVOKED) is sent
 * as a message to the queue the client named in the task's reply_to, with
 * the task's correlation id, over the child's own broker connection, and
 * confirmed by the broker before the task message is acked. Chords need a
 * backend that stores: Celery's client refuses them with rpc://.
 */
#include "common.h"
#include "backend/backend.h"
#include "broker/broker.h"
#include "protocol/result.h"
#include "protocol/serializer.h"
#include "util/buf.h"

static struct broker *broker_of(const struct backend *b)
{
    return b->impl;
}

static int rpc_open(struct backend *b, struct err *e)
{
    struct broker *br = broker_of(b);
    return br->ops->is_open(br) ? 0 : br->ops->open(br, e);
}

static bool rpc_is_open(const struct backend *b)
{
    const struct broker *br = broker_of(b);
    return br->ops->is_open(br);
}

/* Whatever m->redelivered says, a reply is sent: the client keeps the
 * latest state it receives, and a SUCCESS sent before is no longer ours
 * to keep. */
static int rpc_store(struct backend *b, const struct result_meta *m, unsigned flags,
                     struct err *e)
{
    UNUSED(flags); /* each reply is confirmed at once */
    if (!m->reply_to || !*m->reply_to)
        return 0; /* a client that asked for no reply (Celery skips these too) */
    enum serializer s = backend_serializer(b, m->arrived_in);
    struct buf body = BUF_INIT;
    result_reply_encode(&body, m, s);
    struct broker *br = broker_of(b);
    int rc = br->ops->reply(br, m->reply_to, m->correlation_id ? m->correlation_id : m->task_id,
                            serializer_content_type(s), body.data, body.len, e);
    buf_release(&body);
    return rc;
}

static bool rpc_has_pending(const struct backend *b)
{
    UNUSED(b);
    return false;
}

static int rpc_nothing(struct backend *b, struct err *e)
{
    UNUSED(b);
    UNUSED(e);
    return 0;
}

static int rpc_chord_size(struct backend *b, const char *group, size_t size, struct err *e)
{
    UNUSED(b);
    UNUSED(size);
    return err_set(e, E_PROTOCOL, "chord %s cannot join over rpc:// (Celery refuses chords "
                   "with the rpc backend): use a Redis result backend", group);
}

static int rpc_chord_part(struct backend *b, const char *group, int index, const json_t *part,
                          enum serializer s, json_t **parts, struct err *e)
{
    UNUSED(index);
    UNUSED(part);
    UNUSED(s);
    *parts = NULL;
    return rpc_chord_size(b, group, 0, e);
}

static void rpc_done(struct backend *b)
{
    UNUSED(b); /* the connection is the broker's */
}

static const struct backend_ops rpc_ops = {
    .name = "rpc",
    .open = rpc_open,
    .is_open = rpc_is_open,
    .store = rpc_store,
    .has_pending = rpc_has_pending,
    .confirm = rpc_nothing,
    .resend = rpc_nothing,
    .chord_size = rpc_chord_size,
    .chord_part = rpc_chord_part,
    .leave = rpc_done,
    .release = rpc_done,
};

void backend_rpc_ops_init(struct backend *b, const struct backend_config *cfg,
                          struct broker *broker)
{
    *b = (struct backend){.ops = &rpc_ops, .cfg = cfg, .impl = broker};
}
