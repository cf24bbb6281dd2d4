/* SPDX-License-Identifier: MIT
 * worker/task_retry.c: Celery's retry policy for a child's task: which
 * options apply (the task's own retry, an autoretry rule, a lost connection
 * of an idempotent task), the countdown, the new message and RETRY.
 */
#include "common.h"
#include "util/backoff.h"
#include "util/buf.h"
#include "util/time.h"
#include "worker/child_internal.h"

#include <math.h>

/* Celery's retry countdown: fixed, or base * 2^retries capped (backoff), or
 * drawn from [0, that] (jitter). */
static double retry_countdown(struct child *c, const struct message *m,
                              const struct celeriac_retry_options *o)
{
    double countdown = o->countdown > 0 ? o->countdown : 180;
    if (o->backoff) {
        double cap = o->backoff_max > 0 ? o->backoff_max : 600;
        countdown = countdown * pow(2.0, m->retries);
        if (countdown > cap)
            countdown = cap;
    }
    if (o->jitter) {
        struct backoff rnd;
        backoff_init(&rnd, 1, 1);
        countdown = countdown * (double)(backoff_random(&rnd) % 1000001) / 1e6;
    }
    UNUSED(c);
    return countdown;
}

const struct celeriac_retry_options *task_retry_pick(struct child *c, const struct message *m,
                                                     const struct celeriac_task_def *def, int rc)
{
    /* A lost connection is worth another go later. */
    static const struct celeriac_retry_options reconnect_retry = {
        .countdown = 1, .max_retries = 3, .backoff = true, .backoff_max = 30};
    if (rc == CELERIAC_RETRY)
        return &c->task.retry_options;
    if (rc == CELERIAC_OK)
        return NULL;
    const struct celeriac_autoretry *a =
        library_autoretry(&c->cfg->lib, m->task_name, c->task.exc_type);
    if (a) {
        int max = a->options.max_retries ? a->options.max_retries : 3;
        return max < 0 || m->retries < max ? &a->options : NULL;
    }
    if ((def->flags & CELERIAC_IDEMPOTENT) && !strcmp(c->task.exc_type, "OperationalError") &&
        m->retries < 3)
        return &reconnect_retry;
    return NULL;
}

/* Sends the retry message, stores RETRY and settles the original. Returns
 * false when the new message could not be sent (the task then fails). */
bool task_retry_send(struct child *c, const struct message *m,
                        const struct celeriac_retry_options *o)
{
    double countdown = retry_countdown(c, m, o);
    struct err e = {0};
    if (child_ensure_broker(c) || canvas_retry(&c->canvas, m, time_now() + countdown, &e)) {
        log_error("Task %s[%s]: the retry could not be sent: %s", m->task_name, m->task_id,
                  e.msg);
        return false;
    }
    log_info("Task %s[%s] retry: Retry in %gs: %s('%s')", m->task_name, m->task_id, countdown,
             c->task.exc_type, c->task.exc_message.data);
    struct buf tb = BUF_INIT;
    buf_addf(&tb, "celery.exceptions.Retry: Retry in %gs: %s('%s')\n", countdown,
             c->task.exc_type, c->task.exc_message.data);
    json_t *exc = message_exception(c->task.exc_type, NULL, c->task.exc_message.data);
    struct result_meta meta = {.status = "RETRY", .result = exc, .traceback = tb.data,
                               .redelivered = m->redelivered,
                               .task_id = m->task_id, .parent_id = m->parent_id,
                               .group_id = m->group, .arrived_in = m->serializer,
                               .reply_to = m->reply_to, .correlation_id = m->correlation_id};
    settle_store(c, &meta);
    if (events_task_enabled(&c->events)) {
        struct buf text = BUF_INIT;
        buf_addf(&text, "%s('%s')", c->task.exc_type, c->task.exc_message.data);
        json_t *f = json_pack("{s:s, s:s, s:s}", "uuid", m->task_id, "exception", text.data,
                              "traceback", tb.data);
        event_send(&c->events, "task-retried", f);
        buf_release(&text);
    }
    json_decref(exc);
    buf_release(&tb);
    return true;
}
