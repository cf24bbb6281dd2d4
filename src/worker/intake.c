/* SPDX-License-Identifier: MIT
 * worker/intake.c: one fetched delivery: size and envelope checks, its record
 * as unacked, decoding and validation (spec §5.1 says how a bad one is
 * settled), then run now, hold for its ETA, or discard.
 */
#include "common.h"
#include "util/time.h"
#include "worker/child_internal.h"

/* A message over --max-message-size is not decoded; when its task id can
 * be read cheaply, a FAILURE is stored under it so its client does not wait
 * for ever. */
static void drop_oversized(struct child *c, const struct delivery *d)
{
    char id[64];
    bool known;
    if (d->envelope) {
        const char *tid = json_string_value(json_object_get(json_object_get(d->envelope,
                                                                            "headers"), "id"));
        known = tid && snprintf(id, sizeof(id), "%s", tid) < (int)sizeof(id);
    } else {
        known = message_peek_id(d->raw, d->len, id, sizeof(id));
    }
    log_error("dropped a message of %zu bytes from queue '%s'%s%s: larger than the %zu byte "
              "limit", d->len, d->queue, known ? " for task " : "", known ? id : "",
              c->cfg->broker.max_message);
    if (!known)
        return;
    struct message m;
    message_init(&m);
    m.task_id = id;
    char text[160];
    snprintf(text, sizeof(text), "message of %zu bytes exceeds the worker's limit of %zu bytes "
             "(--max-message-size)", d->len, c->cfg->broker.max_message);
    settle_store_invalid(c, &m, "InvalidTaskError", text);
}

/* Decodes and validates a tracked message, then runs it, holds it for its
 * ETA, or settles it. Takes m's contents when it is held. */
static void route(struct child *c, struct message *m, const char *queue)
{
    struct err e = {0};
    enum message_settle settle;
    if (message_decode_task(m, &settle, &e)) {
        log_error("%s message %s from queue '%s': %s",
                  settle == SETTLE_ACK ? "acked undecodable" : "rejected invalid",
                  m->task_id ? m->task_id : "(no id)", queue, e.msg);
        const char *exc = strstr(e.msg, "content disallowed") ? "ContentDisallowed"
                          : settle == SETTLE_ACK                ? "DecodeError"
                                                                : "InvalidTaskError";
        settle_store_invalid(c, m, exc, e.msg);
        settle_ack(c, m);
        return;
    }
    const struct celeriac_task_def *def = library_find(&c->cfg->lib, m->task_name);
    if (!def) {
        log_error("Received unregistered task of type '%s' (id %s); rejected", m->task_name,
                  m->task_id);
        settle_store_exception(c, m, "FAILURE", "NotRegistered", "celery.exceptions",
                               m->task_name);
        settle_ack(c, m);
        return;
    }
    atomic_fetch_add(&tally_task(c, def)->received, 1);
    if (m->expires > 0 && time_now() > m->expires) {
        settle_revoked(c, m, true);
        return;
    }
    events_task_received(&c->events, m);
    if (m->eta > time_now()) {
        /* held for later: it must outlive this worker */
        if (settle_protect(c, m))
            held_add(c, m, def); /* scheduled: the held list owns it now */
        return;
    }
    execute_accepted(c, m, def);
}

void intake_handle(struct child *c, struct delivery *d)
{
    struct message m;
    struct err e = {0};
    enum message_settle settle;
    message_init(&m);
    if (d->len > c->cfg->broker.max_message) {
        drop_oversized(c, d);
        goto out_settle;
    }
    int rc = d->envelope ? message_adopt_envelope(&m, json_incref(d->envelope), d->queue,
                                                  &settle, &e)
                         : message_decode_envelope(&m, d->raw, d->len, d->queue, &settle, &e);
    if (d->envelope && d->body) {
        m.raw_body = d->body;
        m.raw_body_len = d->len;
    }
    if (rc) {
        log_error("dropped a message from queue '%s': %s", d->queue, e.msg);
        goto out_settle;
    }
    if (m.repaired)
        log_warning("message %s from queue '%s' lacked properties.delivery_tag or delivery_info "
                    "(a Python worker would have died on it); repaired",
                    m.task_id ? m.task_id : "(no id)", d->queue);
    /* From here until it is settled or started, a death of this child
     * leaves the message to be put back (see recover_lost_task). */
    c->broker.ops->track(&c->broker, d, &m);
    c->current = &m;
    log_task_set(m.task_id, m.task_name);
    if (!recover_redelivered(c, &m))
        route(c, &m, d->queue);
    goto out;

out_settle:
    settle_drop(c, d);
out:
    c->broker.ops->done(&c->broker);
    c->current = NULL;
    log_task_clear();
    message_release(&m);
}
