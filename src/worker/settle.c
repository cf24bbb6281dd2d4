/* SPDX-License-Identifier: MIT
 * worker/settle.c: what a child owes the broker and the result backend for a
 * delivery: acks (sent with or without waiting), stored results, the
 * delivery in hand and its record in kombu's unacked hash. Every step backs
 * off on a lost connection or a refusal, so the child pulls nothing new
 * meanwhile.
 */
#include "common.h"
#include "util/buf.h"
#include "util/strcopy.h"
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

/* One attempt of a broker step. */
typedef int broker_step_fn(struct child *c, void *arg, struct err *e);

/* Runs step until it succeeds, reopening the connection and backing off while
 * it is lost or the broker refuses. Ends on an error asking again will not
 * fix, when the connection cannot be reopened while stopping, and, with
 * stop_ends, at any failure while stopping (the caller says what is left
 * behind). Returns the last code, 0 on success. */
static int with_retry(struct child *c, const char *what, const char *id, broker_step_fn *step,
                      void *arg, bool stop_ends, struct err *e)
{
    struct retry r;
    bool failed = false; /* r is set up at the first failure: none on the task path */
    int rc;
    for (;;) {
        if ((rc = child_ensure_broker(c)))
            return err_set(e, rc, "stopping");
        rc = step(c, arg, e);
        if (!rc || !settle_worth_retrying(c, rc) || (stop_ends && child_should_stop(c)))
            break;
        if (!failed)
            retry_init(&r, 100, 5000, "%s of %s", what, id);
        failed = true;
        retry_wait(&r, LOG_WARNING, e, &sig_stop);
    }
    if (failed && !rc)
        retry_succeeded(&r);
    return rc;
}

static int ack_step(struct child *c, void *m, struct err *e)
{
    return c->broker.ops->ack(&c->broker, m, 0, e);
}

/* Acks m, reconnecting as often as needed: an ack lost to a broker restart
 * would leave the message to be redelivered after the visibility timeout. */
void settle_ack(struct child *c, struct message *m)
{
    struct err e = {0};
    int rc = with_retry(c, "ack", m->delivery_tag, ack_step, m, false, &e);
    if (rc && rc != E_CONN_LOST)
        log_error("ack of %s failed: %s%s", m->delivery_tag, e.msg,
                  rc == E_REFUSED ? "; left unacked for redelivery" : "");
}

static int drop_step(struct child *c, void *d, struct err *e)
{
    return c->broker.ops->drop(&c->broker, d, e);
}

void settle_drop(struct child *c, struct delivery *d)
{
    struct err e = {0};
    int rc = with_retry(c, "removing an undecodable message", d->queue, drop_step, d, false, &e);
    if (rc && rc != E_CONN_LOST)
        log_error("removing an undecodable message from '%s' failed: %s", d->queue, e.msg);
}

struct lost_step_args {
    enum broker_lost how;
    int *losses;
};

static int lost_step(struct child *c, void *arg, struct err *e)
{
    struct lost_step_args *a = arg;
    return c->broker.ops->settle_lost(&c->broker, c->slot->lost_tag, a->how,
                                      c->cfg->max_worker_lost_requeues, a->losses, e);
}

int settle_lost(struct child *c, enum broker_lost how, int *losses, struct err *e)
{
    int ignored = 0;
    struct lost_step_args a = {.how = how, .losses = losses ? losses : &ignored};
    int rc = with_retry(c, "settling the message a lost child held", c->slot->lost_tag,
                        lost_step, &a, false, e);
    if (rc < 0 && rc != E_CONN_LOST && how == BROKER_LOST_ACK)
        log_error("ack of %s failed: %s", c->slot->lost_tag, e->msg);
    return rc;
}

/* The slot names the result sent without waiting until the backend has
 * answered for it (see struct slot's unconfirmed_task_id). */
static void name_unconfirmed(struct child *c, const struct result_meta *m)
{
    struct slot *s = c->slot;
    str_copy(s->unconfirmed_task_name, sizeof(s->unconfirmed_task_name),
             m->task_name ? m->task_name : "");
    str_copy(s->unconfirmed_task_id, sizeof(s->unconfirmed_task_id), m->task_id ? m->task_id : "");
}

void settle_forget_confirmed(struct child *c)
{
    if (!c->backend.ops->has_pending(&c->backend))
        c->slot->unconfirmed_task_id[0] = '\0';
}

/* Stores m; false when it could not be stored (stopping while Redis
 * refuses writes, or an error reply that retrying cannot fix). */
/* One attempt at storing: a result (m), or every held one (m NULL). */
static int store_once(struct child *c, const struct result_meta *m, struct err *e)
{
    return m ? c->backend.ops->store(&c->backend, m, 0, e)
             : c->backend.ops->flush_held(&c->backend, e);
}

/* Runs store_once until it succeeds, reconnecting and backing off while the
 * backend is lost or refuses; what names the store in the log. */
static bool store_with_retry(struct child *c, const struct result_meta *m, const char *what)
{
    struct retry r;
    bool failed = false; /* r is set up at the first failure: none on the task path */
    for (;;) {
        if (child_ensure_backend(c))
            return false;
        struct err e = {0};
        int rc = store_once(c, m, &e);
        if (!rc) {
            settle_forget_confirmed(c); /* the one before was confirmed first */
            if (failed)
                retry_succeeded(&r);
            return true;
        }
        if (!settle_worth_retrying(c, rc)) {
            log_error("%s not stored: %s", what, e.msg);
            return false;
        }
        if (!failed)
            retry_init(&r, 100, 5000, "storing the %s", what);
        failed = true;
        retry_wait(&r, LOG_WARNING, &e, &sig_stop);
    }
}

bool settle_store(struct child *c, const struct result_meta *m)
{
    if (!c->cfg->backend.enabled)
        return true;
    char what[128];
    snprintf(what, sizeof(what), "result of %s", m->task_id);
    return store_with_retry(c, m, what);
}

bool settle_store_held(struct child *c, int n)
{
    char what[64];
    snprintf(what, sizeof(what), "results of %d transactional task(s)", n);
    return store_with_retry(c, NULL, what);
}

/* The reply of a result sent without waiting: read it; after a lost
 * connection reopen, which sends that result again; while Redis refuses it,
 * send it again with backoff (the child pulls nothing meanwhile). */
void settle_confirm_results(struct child *c)
{
    if (!c->backend.ops->has_pending(&c->backend) || !c->backend.ops->is_open(&c->backend))
        return;
    struct err e = {0};
    int rc = c->backend.ops->confirm(&c->backend, &e);
    settle_forget_confirmed(c);
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
        rc = c->backend.ops->resend(&c->backend, &e);
    }
    settle_forget_confirmed(c);
    retry_succeeded(&r);
}

static int protect_step(struct child *c, void *m, struct err *e)
{
    return c->broker.ops->protect(&c->broker, m, e);
}

/* Before a delivery may be held for long (ETA, a database outage): held
 * where any worker's recovery finds it (on Redis, in kombu's unacked hash;
 * the same transaction empties the hand). While stopping it is left where
 * it is (the hand still has it). */
/* The slot names the delivery it describes by its tag: a tag that changed
 * (a claim that replaced a lock) is written there too. */
static bool hold_step_done(struct child *c, struct message *m, const char *before, int rc,
                           const struct err *e)
{
    if (!rc && strcmp(before, m->delivery_tag) &&
        !strncmp(c->slot->delivery_tag, before, sizeof(c->slot->delivery_tag)))
        snprintf(c->slot->delivery_tag, sizeof(c->slot->delivery_tag), "%s", m->delivery_tag);
    if (rc == E_PROTOCOL)
        log_info("%s; not held here", e->msg);
    return rc != E_PROTOCOL;
}

bool settle_protect(struct child *c, struct message *m)
{
    struct err e = {0};
    char before[sizeof(c->slot->delivery_tag)];
    snprintf(before, sizeof(before), "%s", m->delivery_tag ? m->delivery_tag : "");
    int rc = with_retry(c, "recording delivery", m->delivery_tag, protect_step, m, true, &e);
    return hold_step_done(c, m, before, rc, &e);
}

struct keep_args {
    struct message *m;
    bool acks_late;
};

static int keep_step(struct child *c, void *arg, struct err *e)
{
    struct keep_args *a = arg;
    return c->broker.ops->keep(&c->broker, a->m, a->acks_late, e);
}

bool settle_keep(struct child *c, struct message *m, bool acks_late)
{
    if (!c->broker.ops->keep)
        return true;
    struct err e = {0};
    char before[sizeof(c->slot->delivery_tag)];
    snprintf(before, sizeof(before), "%s", m->delivery_tag ? m->delivery_tag : "");
    struct keep_args a = {.m = m, .acks_late = acks_late};
    int rc = with_retry(c, "keeping delivery", m->delivery_tag, keep_step, &a, true, &e);
    return hold_step_done(c, m, before, rc, &e);
}

/* The ack at task start (early) or after the confirmed result (late): sent
 * without waiting (the reply is read with the next pop, and the ack is sent
 * again after a reconnect), so it costs no round trip; a delivery in the
 * hand needs no ack at all. */
/* NEEDSWORK(#14): under Redis Sentinel, a result confirmed by a master that
 * dies before replicating it, followed by this ack reaching the new master,
 * leaves the task acked without a result; storing again when
 * redis_sentinel_moves() changed between the store and the ack would close
 * that window. */
void settle_ack_async(struct child *c, struct message *m)
{
    struct err e = {0};
    if (c->broker.ops->ack(&c->broker, m, BROKER_NOWAIT, &e) == 0)
        return;
    settle_ack(c, m);
}

/* Puts a delivery that will not run now back on its queue. */
int settle_give_back(struct child *c, struct message *m, struct err *e)
{
    return c->broker.ops->requeue(&c->broker, m, e);
}

/* A result sent without waiting: once written to the socket it reaches Redis
 * even if this process dies, and its reply is checked before the next store.
 * Only for early-ack tasks: a late ack must follow a confirmed store. */
bool settle_store_sent(struct child *c, const struct result_meta *m)
{
    if (!c->cfg->backend.enabled)
        return true;
    struct err e = {0};
    if (child_ensure_backend(c) == 0 &&
        c->backend.ops->store(&c->backend, m, BACKEND_NOWAIT, &e) == 0) {
        if (c->backend.ops->has_pending(&c->backend))
            name_unconfirmed(c, m); /* a backend that waited has nothing to name */
        return true;
    }
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
                               .parent_id = m->parent_id, .group_id = m->group,
                               .arrived_in = m->serializer,
                               .reply_to = m->reply_to, .correlation_id = m->correlation_id};
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
    /* ContentDisallowed and DecodeError are kombu's classes: a client
     * rebuilds the exception from exc_module, and `except
     * kombu.exceptions.ContentDisallowed` catches only that module's class. */
    const char *module = !strcmp(exc_type, "ContentDisallowed") || !strcmp(exc_type, "DecodeError")
                             ? "kombu.exceptions"
                             : "celery.exceptions";
    if (m->task_id && *m->task_id)
        settle_store_exception(c, m, "FAILURE", exc_type, module, text);
}

void settle_revoked(struct child *c, struct message *m, bool expired)
{
    const char *why = expired ? "expired" : "revoked";
    log_info("Discarding %s task %s[%s]", why, m->task_name, m->task_id);
    struct task_tally *t = tally_task_named(c, m->task_name);
    if (t)
        atomic_fetch_add(&t->revoked, 1);
    settle_store_exception(c, m, "REVOKED", "TaskRevokedError", "celery.exceptions", why);
    events_task(&c->events, "task-revoked", m,
                json_pack("{s:b, s:n, s:b}", "terminated", 0, "signum", "expired", expired));
    settle_ack(c, m);
}
