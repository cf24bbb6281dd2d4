/* SPDX-License-Identifier: MIT
 * worker/settle.c: what a child owes the broker and the result backend for a
 * delivery: acks (sent with or without waiting), stored results, the
 * delivery in hand and its record in kombu's unacked hash. Every step backs
 * off on a lost connection or a refusal, so the child pulls nothing new
 * meanwhile.
 */
#include "common.h"
#include "util/buf.h"
#include "worker/child_internal.h"
#include "worker/signals.h"

/* What a settling step does after a failure: a lost connection is reopened
 * and a refusal (Redis over maxmemory, a read-only replica) waited out, both
 * with backoff, so the child pulls nothing new meanwhile; any other error
 * reply will not go away by asking again. While stopping, a refusal ends the
 * wait (the caller says what is left behind). */
bool settle_worth_retrying(struct child *c, int rc)
{
    if (rc == E_CONN_LOST)
        return true;
    return rc == E_REFUSED && !child_should_stop(c);
}

/* Acks tag, reconnecting as often as needed: an ack lost to a broker restart
 * would leave the message to be redelivered after the visibility timeout. */
void settle_ack(struct child *c, const char *tag)
{
    struct retry r;
    retry_init(&r, 100, 5000, "ack of %s", tag);
    for (;;) {
        if (child_ensure_broker(c))
            return;
        struct err e = {0};
        int rc = broker_redis_ack(&c->broker, tag, &e);
        if (!rc) {
            retry_succeeded(&r);
            return;
        }
        if (!settle_worth_retrying(c, rc)) {
            log_error("ack of %s failed: %s%s", tag, e.msg,
                      rc == E_REFUSED ? "; left unacked for redelivery" : "");
            return;
        }
        retry_wait(&r, LOG_WARNING, &e, &sig_stop);
    }
}

/* Stores m; false when it could not be stored (stopping while Redis
 * refuses writes, or an error reply that retrying cannot fix). */
bool settle_store(struct child *c, const struct result_meta *m)
{
    if (!c->cfg->backend.enabled)
        return true;
    struct retry r;
    bool failed = false; /* r is set up at the first failure: none on the task path */
    for (;;) {
        if (child_ensure_backend(c))
            return false;
        struct err e = {0};
        int rc = backend_redis_store(&c->backend, m, &e);
        if (!rc) {
            if (failed)
                retry_succeeded(&r);
            return true;
        }
        if (!settle_worth_retrying(c, rc)) {
            log_error("result of %s not stored: %s", m->task_id, e.msg);
            return false;
        }
        if (!failed)
            retry_init(&r, 100, 5000, "storing the result of %s", m->task_id);
        failed = true;
        retry_wait(&r, LOG_WARNING, &e, &sig_stop);
    }
}

/* The reply of a result sent without waiting: read it; after a lost
 * connection reopen, which sends that result again; while Redis refuses it,
 * send it again with backoff (the child pulls nothing meanwhile). */
void settle_confirm_results(struct child *c)
{
    if ((!c->backend.unconfirmed && !c->backend.refused) || !redis_link_is_open(&c->backend.link))
        return;
    struct err e = {0};
    int rc = backend_redis_confirm(&c->backend, &e);
    if (!rc)
        return;
    struct retry r;
    retry_init(&r, 100, 5000, "storing a result sent earlier");
    while (rc) {
        if (!settle_worth_retrying(c, rc)) {
            log_error("a result sent earlier was not stored: %s", e.msg);
            return;
        }
        retry_wait(&r, LOG_WARNING, &e, &sig_stop);
        if (child_ensure_backend(c))
            return;
        rc = backend_redis_resend(&c->backend, &e);
    }
    retry_succeeded(&r);
}

/* ---- the delivery in hand: in kombu's unacked hash (recorded), or, when
 * every task acks early, in this child's hand (broker/redis.h), which a
 * later child of this slot empties back into the queue if we die first. */

/* The hand's message started or was settled: from now on a later child of
 * this slot must not put it back (it is emptied with our next pop). */
void settle_release_hand(struct child *c)
{
    if (!c->hand_full)
        return;
    c->hand_full = false;
    atomic_store(&c->slot->hand_settled, c->hand_hash);
    broker_redis_hand_settled(&c->broker, c->hand_hash);
}

/* Before a delivery may be held for long (ETA, a database outage): record
 * it in unacked as kombu does, where the visibility sweep of any worker finds
 * it (the same transaction empties the hand). */
void settle_record(struct child *c, struct message *m)
{
    if (m->recorded)
        return;
    char *env = message_envelope_json(m);
    struct retry r;
    retry_init(&r, 100, 5000, "recording delivery %s as unacked", m->delivery_tag);
    for (;;) {
        struct err e = {0};
        if (child_ensure_broker(c))
            break; /* stopping: the hand still has it */
        int rc = broker_redis_record(&c->broker, m->delivery_tag, env, m->exchange,
                                     m->routing_key, &e);
        if (rc == 0) {
            retry_succeeded(&r);
            m->recorded = true;
            c->hand_full = false;
            snprintf(c->slot->popped_tag, sizeof(c->slot->popped_tag), "%s", m->delivery_tag);
            break;
        }
        if (child_should_stop(c) || !settle_worth_retrying(c, rc))
            break; /* the hand still has it */
        retry_wait(&r, LOG_WARNING, &e, &sig_stop);
    }
    free(env);
}

/* Done with a delivery that will not run (bad, revoked, expired): ack it if
 * it was recorded, forget it otherwise. */
void settle_discard(struct child *c, struct message *m)
{
    if (m->recorded)
        settle_ack(c, m->delivery_tag);
    else
        settle_release_hand(c);
}

/* The ack at task start (early) or after the confirmed result (late): sent
 * without waiting (the reply is read with the next pop, and the ack is sent
 * again after a reconnect), so it costs no round trip; an unrecorded
 * delivery needs no ack at all. */
void settle_ack_async(struct child *c, struct message *m)
{
    if (!m->recorded) {
        settle_release_hand(c);
        return;
    }
    struct err e = {0};
    if (child_ensure_broker(c) == 0 && broker_redis_ack_send(&c->broker, m->delivery_tag, &e) == 0)
        return;
    settle_ack(c, m->delivery_tag);
}

/* Puts a delivery that will not run now back on its queue. */
int settle_give_back(struct child *c, struct message *m, struct err *e)
{
    if (m->recorded)
        return broker_redis_restore(&c->broker, m->delivery_tag, false, e) < 0 ? -1 : 0;
    if (!c->hand_full)
        return err_set(e, E_PROTOCOL, "the message is no longer in the hand");
    int rc = broker_redis_hand_return(&c->broker, 0, NULL, e);
    if (rc < 0)
        return rc;
    c->hand_full = false;
    return 0;
}

/* A result sent without waiting: once written to the socket it reaches Redis
 * even if this process dies, and its reply is checked before the next store.
 * Only for early-ack tasks: a late ack must follow a confirmed store. */
bool settle_store_sent(struct child *c, const struct result_meta *m)
{
    if (!c->cfg->backend.enabled)
        return true;
    struct err e = {0};
    if (child_ensure_backend(c) == 0 && backend_redis_store_send(&c->backend, m, &e) == 0)
        return true;
    return settle_store(c, m);
}

/* Stores an exception result; false when it could not be stored. */
bool settle_store_exception_as(struct child *c, const struct message *m, const char *status,
                               const char *exc_type, const char *exc_module, const char *text,
                               bool confirmed)
{
    json_t *exc = message_exception(exc_type, exc_module, text);
    struct result_meta meta = {.status = status, .result = exc, .task_id = m->task_id,
                               .task_name = m->task_name, .redelivered = m->redelivered,
                               .parent_id = m->parent_id, .group_id = m->group};
    bool stored = confirmed ? settle_store(c, &meta) : settle_store_sent(c, &meta);
    json_decref(exc);
    return stored;
}

void settle_store_exception(struct child *c, const struct message *m, const char *status,
                            const char *exc_type, const char *exc_module, const char *text)
{
    settle_store_exception_as(c, m, status, exc_type, exc_module, text, true);
}

/* Stores a FAILURE for a message that could not run, when its id is known. */
void settle_store_invalid(struct child *c, const struct message *m, const char *exc_type,
                          const char *text)
{
    if (m->task_id && *m->task_id)
        settle_store_exception(c, m, "FAILURE", exc_type, "celery.exceptions", text);
}

void settle_revoked(struct child *c, struct message *m, bool expired)
{
    const char *why = expired ? "expired" : "revoked";
    log_info("Discarding %s task %s[%s]", why, m->task_name, m->task_id);
    settle_store_exception(c, m, "REVOKED", "TaskRevokedError", "celery.exceptions", why);
    events_task(&c->events, "task-revoked", m,
                json_pack("{s:b, s:n, s:b}", "terminated", 0, "signum", "expired", expired));
    settle_discard(c, m);
}
