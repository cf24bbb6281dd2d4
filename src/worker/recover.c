/* SPDX-License-Identifier: MIT
 * worker/recover.c: what the previous process of this slot left behind: the
 * task it died running (WorkerLostError, TimeLimitExceeded, REVOKED, or back
 * on its queue) and the message left in its hand; and, where the broker
 * itself requeues a dead child's delivery (AMQP), that delivery when it comes
 * back to any child of this worker.
 */
#include "common.h"
#include "worker/child_internal.h"
#include "worker/salvage.h"
#include "worker/signals.h"

#include <math.h>
#include <time.h>

/* How long a redelivered message waits for the master to reap a sibling
 * still shown running it, before it runs regardless. */
#define REAP_WAIT_MS 3000

/* The outcome of a task whose process was killed is counted by the child
 * that stores it (metrics: celery_task_failed_total / _revoked_total). */
static void count_lost(struct child *c, const char *name, bool revoked)
{
    struct task_tally *t = tally_task_named(c, name);
    if (t)
        atomic_fetch_add(revoked ? &t->revoked : &t->failed, 1);
}

/* The lost task m fails with WorkerLostError, as Celery reports it; a
 * late-ack message is then acked. */
static void fail_lost(struct child *c, struct message *m, bool late)
{
    char text[128];
    int sig = atomic_load(&c->slot->lost_signal);
    snprintf(text, sizeof(text), "Worker exited prematurely: signal %d (%s).", sig,
             sig ? strsignal(sig) : "exit");
    log_error("Task %s[%s] raised WorkerLostError: %s", m->task_name, m->task_id, text);
    count_lost(c, m->task_name, false);
    settle_store_exception(c, m, "FAILURE", "WorkerLostError", "billiard.exceptions", text);
    struct err e = {0};
    if (late)
        settle_lost(c, BROKER_LOST_ACK, NULL, &e);
}

/* Late ack with reject_on_worker_lost: the lost task m goes back to the far
 * end of its queue, unless its message has already been requeued
 * --max-worker-lost-requeues times after killing its child: a poison task
 * would otherwise crash a child after child for ever, so it fails with
 * WorkerLostError instead. */
static void requeue_lost(struct child *c, struct message *m)
{
    struct err e = {0};
    int losses = 0, sig = atomic_load(&c->slot->lost_signal);
    int max = c->cfg->max_worker_lost_requeues;
    if (!broker_has(&c->broker, BROKER_CAP_RESTORE_BY_TAG)) {
        /* The broker requeued it when the process's connection closed; the
         * child it comes back to counts the deaths (recover_redelivered). */
        int reason = LOST_NONE;
        if (!scoreboard_lost_find(c->sb, m->task_id, &reason, &losses))
            losses = 1;
        log_error("Task %s[%s]: its process died (signal %d); the broker requeued its "
                  "message (acks_late, reject_on_worker_lost; death %d of at most %d)",
                  m->task_name, m->task_id, sig, losses, max + 1);
        return;
    }
    int rc = child_ensure_broker(c)
                 ? E_CONN_LOST
                 : c->broker.ops->settle_lost(&c->broker, c->slot->lost_tag, BROKER_LOST_REQUEUE,
                                              max, &losses, &e);
    if (rc < 0) {
        log_error("requeue of %s failed: %s", m->task_id, e.msg);
    } else if (rc == BROKER_RESTORED) {
        log_error("Task %s[%s]: its process died (signal %d); requeued (acks_late, "
                  "reject_on_worker_lost; death %d of at most %d)",
                  m->task_name, m->task_id, sig, losses, max + 1);
    } else if (rc == BROKER_EXHAUSTED) {
        log_error("Task %s[%s]: its process died (signal %d) in each of its %d runs; not "
                  "requeued again (--max-worker-lost-requeues %d): storing WorkerLostError "
                  "and acking the message", m->task_name, m->task_id, sig, losses, max);
        fail_lost(c, m, true);
    } else {
        log_warning("Task %s[%s]: its process died (signal %d) after settling it; nothing "
                    "to requeue", m->task_name, m->task_id, sig);
    }
}

/* Settles the task the previous process in our slot died running, as Celery
 * reports a lost worker: TimeLimitExceeded after a hard limit, otherwise
 * WorkerLostError, or, for a late-ack task with reject_on_worker_lost, back on
 * its queue with no result stored. */
void recover_lost_task(struct child *c)
{
    struct slot *s = c->slot;
    int reason = atomic_load(&s->lost_reason);
    if (reason == LOST_NONE)
        return;
    struct message m;
    message_init(&m);
    m.task_id = s->lost_task_id;
    m.task_name = s->lost_task_name;
    m.redelivered = true; /* it may have stored SUCCESS just before dying: keep that */
    bool late = atomic_load(&s->lost_acks_late);
    struct err e = {0};
    bool by_tag = broker_has(&c->broker, BROKER_CAP_RESTORE_BY_TAG);
    if (reason == LOST_UNSTARTED && !by_tag) {
        log_warning("message %s: its child died before starting it; the broker requeued it "
                    "when the child's connection closed", s->lost_tag);
    } else if (reason == LOST_UNSTARTED) {
        log_warning("message %s: its child died before starting it; restored to its queue",
                    s->lost_tag);
        if (child_ensure_broker(c) ||
            c->broker.ops->settle_lost(&c->broker, s->lost_tag, BROKER_LOST_RESTORE, 0, NULL,
                                       &e) < 0)
            log_error("restore of %s failed: %s; the visibility sweep will", s->lost_tag, e.msg);
    } else if (reason == LOST_REVOKED) {
        log_info("Task %s[%s] terminated by revoke", m.task_name, m.task_id);
        count_lost(c, m.task_name, true);
        settle_store_exception(c, &m, "REVOKED", "TaskRevokedError", "celery.exceptions", "terminated");
        events_task(&c->events, "task-revoked", &m,
                   json_pack("{s:b, s:i, s:b}", "terminated", 1, "signum",
                             atomic_load(&s->lost_signal), "expired", 0));
        settle_lost(c, BROKER_LOST_ACK, NULL, &e);
    } else if (reason == LOST_TIME_LIMIT) {
        log_error("Task %s[%s]: hard time limit (%gs) exceeded; its process was killed",
                  m.task_name, m.task_id, s->lost_time_limit);
        count_lost(c, m.task_name, false);
        /* Celery stores the limit as sent: 2, not 2.0, for a whole number. */
        double limit = s->lost_time_limit;
        json_t *limit_json = limit == floor(limit) ? json_integer((json_int_t)limit)
                                                   : json_real(limit);
        json_t *exc = json_pack("{s:s, s:[o], s:s}", "exc_type", "TimeLimitExceeded",
                                "exc_message", limit_json, "exc_module",
                                "billiard.exceptions");
        /* It may have stored SUCCESS before dying: keep that. */
        struct result_meta meta = {.status = "FAILURE", .result = exc, .task_id = m.task_id,
                                   .task_name = m.task_name, .redelivered = true,
                                   .arrived_in = m.serializer};
        settle_store(c, &meta);
        json_decref(exc);
        settle_lost(c, BROKER_LOST_ACK, NULL, &e);
    } else if (late && c->cfg->reject_on_worker_lost) {
        requeue_lost(c, &m);
    } else {
        /* Without restore by tag the broker requeued a late-ack message;
         * the child it comes back to acks it (recover_redelivered). */
        fail_lost(c, &m, late && by_tag);
    }
    atomic_store(&s->lost_reason, LOST_NONE);
}

/* Waits (bounded) while another child of this worker is shown running id:
 * a sibling that just died is still BUSY until the master reaps it and
 * notes the death. */
static void wait_for_reaping(struct child *c, const char *id)
{
    for (int waited = 0; waited < REAP_WAIT_MS && !child_should_stop(c); waited += 10) {
        bool shown = false;
        for (size_t i = 0; i < c->sb->n && !shown; i++) {
            struct slot *s = &c->sb->slots[i];
            shown = (int)i != c->index && atomic_load(&s->state) == CHILD_BUSY &&
                    !strncmp(s->task_id, id, sizeof(s->task_id));
        }
        if (!shown)
            return;
        nanosleep(&(struct timespec){.tv_nsec = 10 * 1000000}, NULL);
    }
}

bool recover_redelivered(struct child *c, struct message *m)
{
    if (!m->redelivered || !m->task_id || broker_has(&c->broker, BROKER_CAP_RESTORE_BY_TAG))
        return false;
    wait_for_reaping(c, m->task_id);
    int reason, deaths;
    if (!scoreboard_lost_find(c->sb, m->task_id, &reason, &deaths))
        return false; /* not ours to know: a connection lost elsewhere */
    /* decoded from the headers only later (route): read the name now */
    const char *name = json_string_value(
        json_object_get(json_object_get(m->envelope, "headers"), "task"));
    if (!name)
        name = "?";
    if (reason == LOST_CRASH && c->cfg->reject_on_worker_lost) {
        int max = c->cfg->max_worker_lost_requeues;
        if (deaths <= max) {
            log_warning("Task %s[%s]: back after its process died (death %d of at most %d); "
                        "running it again", name, m->task_id, deaths, max + 1);
            return false;
        }
        char text[160];
        snprintf(text, sizeof(text), "Worker exited prematurely: the task's process died in "
                 "each of its %d runs.", deaths);
        log_error("Task %s[%s]: its process died in each of its %d runs; not run again "
                  "(--max-worker-lost-requeues %d): storing WorkerLostError and acking the "
                  "message", name, m->task_id, deaths, max);
        count_lost(c, name, false);
        settle_store_exception(c, m, "FAILURE", "WorkerLostError", "billiard.exceptions", text);
    } else {
        log_warning("Task %s[%s]: back after its process died; its outcome (%s) is stored by "
                    "that process's replacement: acked without running it again", name,
                    m->task_id, reason == LOST_TIME_LIMIT ? "TimeLimitExceeded"
                                : reason == LOST_REVOKED  ? "REVOKED"
                                                          : "WorkerLostError");
    }
    settle_ack(c, m);
    return true;
}

/* The previous process of this slot died with a result sent without
 * waiting and not yet confirmed (an early-ack task's: its message is gone).
 * Had the backend got it, it holds SUCCESS, which the store below keeps;
 * if the backend lost it (it restarted before reading it), the client gets
 * WorkerLostError, as from Celery when a child dies before its result is
 * stored, instead of waiting for ever. */
void recover_unconfirmed_result(struct child *c)
{
    struct slot *s = c->slot;
    if (!s->lost_unconfirmed_task_id[0])
        return;
    s->lost_unconfirmed_task_id[sizeof(s->lost_unconfirmed_task_id) - 1] = '\0';
    s->lost_unconfirmed_task_name[sizeof(s->lost_unconfirmed_task_name) - 1] = '\0';
    bool settled_as_lost = atomic_load(&s->lost_reason) != LOST_NONE &&
                           !strcmp(s->lost_task_id, s->lost_unconfirmed_task_id);
    if (!settled_as_lost) {
        struct message m;
        message_init(&m);
        m.task_id = s->lost_unconfirmed_task_id;
        m.task_name = s->lost_unconfirmed_task_name;
        m.redelivered = true; /* a SUCCESS that arrived is kept */
        log_warning("Task %s[%s]: its process died before the result backend confirmed its "
                    "result; storing WorkerLostError unless the result arrived", m.task_name,
                    m.task_id);
        settle_store_exception(c, &m, "FAILURE", "WorkerLostError", "billiard.exceptions",
                               UNCONFIRMED_LOST_TEXT);
    }
    s->lost_unconfirmed_task_id[0] = '\0';
}

void recover_slot(struct child *c)
{
    struct retry r;
    retry_init(&r, 200, 10000, "putting back what earlier processes of this slot held");
    for (;;) {
        struct err e = {0};
        if (child_ensure_broker(c))
            return; /* stopping: the next child of this slot will */
        int rc = c->broker.ops->recover_slot(&c->broker, &e);
        if (rc >= 0) {
            retry_succeeded(&r);
            return;
        }
        if (!settle_worth_retrying(c, rc)) {
            log_warning("putting back what earlier processes of this slot held: %s", e.msg);
            return;
        }
        retry_wait(&r, LOG_WARNING, &e, &sig_stop);
    }
}
