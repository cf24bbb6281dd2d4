/* SPDX-License-Identifier: MIT
 * worker/child.c: the life of one worker child: open its own broker, result
 * backend and database connections after fork, then fetch, decode, run,
 * store and acknowledge until told to stop, then close everything through one
 * exit path. Settling of bad messages follows spec §5.1.
 */
#include "common.h"
#include "control/events.h"
#include "protocol/message.h"
#include "task/context.h"
#include "util/backoff.h"
#include "util/buf.h"
#include "util/retry.h"
#include "util/time.h"
#include "worker/canvas.h"
#include "worker/child.h"
#include "worker/salvage.h"
#include "worker/signals.h"

#include <math.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/time.h>

/* Seconds a BRPOP waits: bounds how long a stop request or a lost master
 * goes unnoticed by an idle child. */
#define FETCH_TIMEOUT_S 1


struct child {
    const struct worker_config *cfg;
    struct scoreboard *sb;
    struct event_sender events;
    struct canvas canvas;
    struct slot *slot;
    int index;
    int deathwatch_fd;              /* read end; EOF = master gone */
    struct broker_redis broker;
    struct backend_redis backend;
    struct db_conn db;
    struct celeriac_process proc;
    struct celeriac_task task;
    int64_t next_sweep_ms;          /* monotonic time of the next visibility sweep */
    struct held {                   /* ETA messages held unacked until due */
        struct message m;
        const struct celeriac_task_def *def;
    } *held;                        /* any number: grown as needed */
    size_t n_held;
    size_t held_cap;
    int64_t next_refresh_ms;        /* next refresh of the held messages' unacked scores */
    bool hand_full;                 /* the hand holds the delivery being handled */
    uint64_t hand_hash;             /* ... whose bytes hash to this */
    struct message *current;        /* the delivery being handled, if any */
    struct retry fetch_retry;       /* the fetch's failures, across loop turns */
    uint64_t queues_gen;            /* generation of the queue set the broker consumes */
};

/* ---- time limits
 * One ITIMER_REAL per child: armed for the soft limit (then re-armed for the
 * rest of the hard limit) or for the hard limit. The handler only cancels the
 * running statement and sets flags; at the hard limit the child kills itself,
 * as Celery's pool kills a child, and its replacement reports the task. */

static struct child *timer_child;          /* the child the handler acts on */
static volatile sig_atomic_t timer_phase;  /* 1: soft pending, 2: hard pending */
static struct timeval timer_rest;          /* hard minus soft, for re-arming */

static void on_timer(int sig)
{
    UNUSED(sig);
    int saved = errno;
    struct child *c = timer_child;
    if (c)
        db_conn_cancel(&c->db);
    if (timer_phase == 1) {
        task_soft_limit_hit = 1;
        if (timer_rest.tv_sec || timer_rest.tv_usec) {
            struct itimerval it = {.it_value = timer_rest};
            timer_phase = 2;
            setitimer(ITIMER_REAL, &it, NULL);
        } else {
            timer_phase = 0;
        }
    } else if (timer_phase == 2 && c) {
        atomic_store(&c->slot->hard_limit_hit, 1);
        kill(getpid(), SIGKILL);
    }
    errno = saved;
}

static struct timeval seconds_tv(double s)
{
    struct timeval tv = {.tv_sec = (time_t)s, .tv_usec = (suseconds_t)((s - (double)(time_t)s) * 1e6)};
    if (!tv.tv_sec && !tv.tv_usec)
        tv.tv_usec = 1;
    return tv;
}

static void arm_limits(double soft, double hard)
{
    struct itimerval it = {{0, 0}, {0, 0}};
    timer_rest = (struct timeval){0, 0};
    if (soft > 0 && (hard <= 0 || soft < hard)) {
        it.it_value = seconds_tv(soft);
        if (hard > 0)
            timer_rest = seconds_tv(hard - soft);
        timer_phase = 1;
    } else if (hard > 0) {
        it.it_value = seconds_tv(hard);
        timer_phase = 2;
    } else {
        return;
    }
    setitimer(ITIMER_REAL, &it, NULL);
}

static void disarm_limits(void)
{
    if (!timer_phase)
        return; /* nothing armed, or it already fired and ended */
    struct itimerval it = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &it, NULL);
    timer_phase = 0;
}

/* ---- library hooks around the database connection */

static int hook_db_open(void *arg)
{
    struct child *c = arg;
    atomic_store(&c->slot->db_state, DBS_UP);
    atomic_store(&c->slot->db_opened_ms, c->db.opened_ms);
    const struct celeriac_library *lib = c->cfg->lib.desc;
    if (lib->db_connected && lib->db_connected(&c->proc)) {
        log_error("library hook db_connected failed");
        return -1;
    }
    return 0;
}

static void record_delivery(struct child *c, struct message *m);

static int hook_db_close(void *arg)
{
    struct child *c = arg;
    atomic_store(&c->slot->db_state, DBS_DOWN);
    /* Reconnecting may take an outage's length: a delivery not yet started
     * is recorded in unacked first (a task running now has been acked). */
    if (c->current && !c->current->recorded && c->hand_full)
        record_delivery(c, c->current);
    const struct celeriac_library *lib = c->cfg->lib.desc;
    if (lib->db_closing)
        lib->db_closing(&c->proc);
    return 0;
}

/* ---- connections */

static bool master_gone(struct child *c)
{
    struct pollfd p = {.fd = c->deathwatch_fd, .events = POLLIN};
    return poll(&p, 1, 0) > 0; /* only EOF or HUP can arrive: the master never writes */
}

static bool should_stop(struct child *c)
{
    if (sig_stop)
        return true;
    if (master_gone(c)) {
        log_warning("master process is gone; stopping");
        sig_stop = 1;
        return true;
    }
    return false;
}

/* Opens a Redis link, retrying with backoff until it works or we must stop. */
static int open_with_backoff(struct child *c, int (*open)(void *, struct err *), void *target,
                             const char *what)
{
    struct retry r;
    retry_init(&r, 200, 10000, "connecting to the %s", what);
    for (;;) {
        struct err e = {0};
        if (!open(target, &e)) {
            retry_succeeded(&r);
            return 0;
        }
        if (should_stop(c))
            return E_CONN_LOST;
        retry_wait(&r, LOG_ERROR, &e, &sig_stop);
    }
}

static int open_broker(void *b, struct err *e)
{
    return broker_redis_open(b, e);
}

static int open_backend(void *b, struct err *e)
{
    return backend_redis_open(b, e);
}

static int ensure_broker(struct child *c)
{
    if (redis_link_is_open(&c->broker.link))
        return 0;
    atomic_store(&c->slot->state, CHILD_CONNECTING);
    return open_with_backoff(c, open_broker, &c->broker, "broker");
}

static int ensure_backend(struct child *c)
{
    if (!c->cfg->backend.enabled || redis_link_is_open(&c->backend.link))
        return 0;
    atomic_store(&c->slot->state, CHILD_CONNECTING);
    return open_with_backoff(c, open_backend, &c->backend, "result backend");
}

/* ---- settling */

/* What a settling step does after a failure: a lost connection is reopened
 * and a refusal (Redis over maxmemory, a read-only replica) waited out, both
 * with backoff, so the child pulls nothing new meanwhile; any other error
 * reply will not go away by asking again. While stopping, a refusal ends the
 * wait (the caller says what is left behind). */
static bool worth_retrying(struct child *c, int rc)
{
    if (rc == E_CONN_LOST)
        return true;
    return rc == E_REFUSED && !should_stop(c);
}

/* Acks tag, reconnecting as often as needed: an ack lost to a broker restart
 * would leave the message to be redelivered after the visibility timeout. */
static void ack(struct child *c, const char *tag)
{
    struct retry r;
    retry_init(&r, 100, 5000, "ack of %s", tag);
    for (;;) {
        if (ensure_broker(c))
            return;
        struct err e = {0};
        int rc = broker_redis_ack(&c->broker, tag, &e);
        if (!rc) {
            retry_succeeded(&r);
            return;
        }
        if (!worth_retrying(c, rc)) {
            log_error("ack of %s failed: %s%s", tag, e.msg,
                      rc == E_REFUSED ? "; left unacked for redelivery" : "");
            return;
        }
        retry_wait(&r, LOG_WARNING, &e, &sig_stop);
    }
}

/* Stores m; false when it could not be stored (stopping while Redis
 * refuses writes, or an error reply that retrying cannot fix). */
static bool store(struct child *c, const struct result_meta *m)
{
    if (!c->cfg->backend.enabled)
        return true;
    struct retry r;
    bool failed = false; /* r is set up at the first failure: none on the task path */
    for (;;) {
        if (ensure_backend(c))
            return false;
        struct err e = {0};
        int rc = backend_redis_store(&c->backend, m, &e);
        if (!rc) {
            if (failed)
                retry_succeeded(&r);
            return true;
        }
        if (!worth_retrying(c, rc)) {
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
static void confirm_results(struct child *c)
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
        if (!worth_retrying(c, rc)) {
            log_error("a result sent earlier was not stored: %s", e.msg);
            return;
        }
        retry_wait(&r, LOG_WARNING, &e, &sig_stop);
        if (ensure_backend(c))
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
static void release_hand(struct child *c)
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
static void record_delivery(struct child *c, struct message *m)
{
    if (m->recorded)
        return;
    char *env = message_envelope_json(m);
    struct retry r;
    retry_init(&r, 100, 5000, "recording delivery %s as unacked", m->delivery_tag);
    for (;;) {
        struct err e = {0};
        if (ensure_broker(c))
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
        if (should_stop(c) || !worth_retrying(c, rc))
            break; /* the hand still has it */
        retry_wait(&r, LOG_WARNING, &e, &sig_stop);
    }
    free(env);
}

/* Done with a delivery that will not run (bad, revoked, expired): ack it if
 * it was recorded, forget it otherwise. */
static void settle_delivery(struct child *c, struct message *m)
{
    if (m->recorded)
        ack(c, m->delivery_tag);
    else
        release_hand(c);
}

/* The ack at task start (early) or after the confirmed result (late): sent
 * without waiting (the reply is read with the next pop, and the ack is sent
 * again after a reconnect), so it costs no round trip; an unrecorded
 * delivery needs no ack at all. */
static void ack_async(struct child *c, struct message *m)
{
    if (!m->recorded) {
        release_hand(c);
        return;
    }
    struct err e = {0};
    if (ensure_broker(c) == 0 && broker_redis_ack_send(&c->broker, m->delivery_tag, &e) == 0)
        return;
    ack(c, m->delivery_tag);
}

/* Puts a delivery that will not run now back on its queue. */
static int give_back(struct child *c, struct message *m, struct err *e)
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
static bool store_sent(struct child *c, const struct result_meta *m)
{
    if (!c->cfg->backend.enabled)
        return true;
    struct err e = {0};
    if (ensure_backend(c) == 0 && backend_redis_store_send(&c->backend, m, &e) == 0)
        return true;
    return store(c, m);
}

/* Stores an exception result; false when it could not be stored. */
static bool store_exception_as(struct child *c, const struct message *m, const char *status,
                               const char *exc_type, const char *exc_module, const char *text,
                               bool confirmed)
{
    json_t *exc = message_exception(exc_type, exc_module, text);
    struct result_meta meta = {.status = status, .result = exc, .task_id = m->task_id,
                               .task_name = m->task_name, .redelivered = m->redelivered,
                               .parent_id = m->parent_id, .group_id = m->group,
                               .arrived_in = m->serializer};
    bool stored = confirmed ? store(c, &meta) : store_sent(c, &meta);
    json_decref(exc);
    return stored;
}

static void store_exception(struct child *c, const struct message *m, const char *status,
                            const char *exc_type, const char *exc_module, const char *text)
{
    store_exception_as(c, m, status, exc_type, exc_module, text, true);
}

/* Stores a FAILURE for a message that could not run, when its id is known. */
static void store_invalid(struct child *c, const struct message *m, const char *exc_type,
                          const char *text)
{
    if (m->task_id && *m->task_id)
        store_exception(c, m, "FAILURE", exc_type, "celery.exceptions", text);
}

/* ---- running one message */

/* An idempotent task that loses its connection is re-run after reconnecting,
 * at most this many times (a server restart can take more than one). */
#define IDEMPOTENT_RERUNS 3

/* Runs the task, re-running an idempotent one after a lost connection has
 * been re-established. Returns CELERIAC_OK or CELERIAC_FAILED. */
static int run_task(struct child *c, const struct message *m, const struct celeriac_task_def *def)
{
    for (int attempt = 0;; attempt++) {
        task_context_begin(&c->task, m);
        int rc = task_context_run(&c->task, def);
        if (rc == CELERIAC_OK || !c->task.db_failure || !db_conn_check_lost(&c->db))
            return rc;
        /* The connection died under the task. */
        atomic_store(&c->slot->db_state, DBS_DOWN);
        bool retry = (def->flags & CELERIAC_IDEMPOTENT) && attempt < IDEMPOTENT_RERUNS;
        log_warning("task %s[%s]: database connection lost (%s)%s", m->task_name, m->task_id,
                    c->task.exc_message.data, retry ? "; re-running after reconnect" : "");
        struct err e = {0};
        if (db_conn_ready(&c->db, 0, &sig_stop, &e) || !retry) {
            struct buf text = BUF_INIT;
            buf_addf(&text, "database connection lost: %s", c->task.exc_message.data);
            snprintf(c->task.exc_type, sizeof(c->task.exc_type), "OperationalError");
            buf_reset(&c->task.exc_message);
            buf_add(&c->task.exc_message, text.data, text.len);
            buf_release(&text);
            return CELERIAC_FAILED;
        }
    }
}

/* ---- retries */

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

/* Sends the retry message, stores RETRY and settles the original. Returns
 * false when the new message could not be sent (the task then fails). */
static bool retry_later(struct child *c, const struct message *m,
                        const struct celeriac_retry_options *o)
{
    double countdown = retry_countdown(c, m, o);
    struct err e = {0};
    if (ensure_broker(c) || canvas_retry(&c->canvas, m, time_now() + countdown, &e)) {
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
                               .group_id = m->group, .arrived_in = m->serializer};
    store(c, &meta);
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

/* ---- events, revocation, rate limits */

static void task_event(struct child *c, const char *type, const struct message *m, json_t *fields)
{
    if (!events_task_enabled(&c->events)) {
        json_decref(fields);
        return;
    }
    json_object_set_new(fields, "uuid", json_string(m->task_id));
    event_send(&c->events, type, fields);
}

/* task-received carries the request as Celery's does (args as text). */
static void received_event(struct child *c, const struct message *m)
{
    if (!events_task_enabled(&c->events))
        return;
    char *args = json_dumps(m->args, JSON_COMPACT | JSON_ENCODE_ANY);
    char *kwargs = json_dumps(m->kwargs, JSON_COMPACT);
    struct buf eta = BUF_INIT, expires = BUF_INIT;
    if (m->eta > 0)
        time_format_iso(&eta, m->eta, true);
    if (m->expires > 0)
        time_format_iso(&expires, m->expires, true);
    /* Celery sends the sender's repr (argsrepr); a C client's JSON otherwise. */
    json_t *f = json_pack("{s:s, s:s, s:s, s:s?, s:s?, s:i, s:s?, s:s?}", "name", m->task_name,
                          "args", m->argsrepr ? m->argsrepr : args ? args : "[]", "kwargs",
                          m->kwargsrepr ? m->kwargsrepr : kwargs ? kwargs : "{}", "root_id",
                          m->root_id, "parent_id", m->parent_id, "retries", m->retries, "eta",
                          eta.len ? eta.data : NULL, "expires", expires.len ? expires.data : NULL);
    free(args);
    free(kwargs);
    buf_release(&eta);
    buf_release(&expires);
    task_event(c, "task-received", m, f);
}

static int task_index_of(const struct child *c, const struct celeriac_task_def *def)
{
    return (int)(def - c->cfg->lib.desc->tasks);
}

/* Rate limit (remote control `rate_limit`): a generic cell rate algorithm
 * over one shared timestamp per task, so all children of the worker together
 * start at most one run per interval, as Celery's per-worker limit. */
static void wait_for_rate(struct child *c, const struct celeriac_task_def *def)
{
    struct task_tuning *t = &c->sb->shared->tasks[task_index_of(c, def)];
    int64_t interval = atomic_load(&t->rate_interval_ns);
    if (!interval)
        return;
    int64_t now = time_mono_ms() * 1000000, next = atomic_load(&t->rate_next_ns), start;
    do {
        start = next > now ? next : now;
    } while (!atomic_compare_exchange_weak(&t->rate_next_ns, &next, start + interval));
    if (start > now)
        time_sleep_ms((start - now + 999999) / 1000000, NULL);
}

/* The task's time limits in seconds (0: none): the message's, else the
 * ones set at run time (control command), else the worker's flags. */
static void task_limits(struct child *c, const struct message *m,
                        const struct celeriac_task_def *def, double *soft, double *hard)
{
    struct task_tuning *tune = &c->sb->shared->tasks[task_index_of(c, def)];
    int64_t tuned_hard = atomic_load(&tune->hard_limit_ms), tuned_soft = atomic_load(&tune->soft_limit_ms);
    *hard = m->time_limit > 0 ? m->time_limit
            : tuned_hard      ? (double)tuned_hard / 1000.0
                              : c->cfg->time_limit;
    *soft = m->soft_time_limit > 0 ? m->soft_time_limit
            : tuned_soft           ? (double)tuned_soft / 1000.0
                                   : c->cfg->soft_time_limit;
}

/* Describes m in this child's slot for remote control (inspect reserved,
 * then active, and query_task) and for the master. */
static void slot_describe(struct child *c, const struct message *m)
{
    char *args = json_dumps(m->args, JSON_COMPACT | JSON_ENCODE_ANY);
    char *kwargs = json_dumps(m->kwargs, JSON_COMPACT);
    snprintf(c->slot->argsrepr, sizeof(c->slot->argsrepr), "%s", args ? args : "[]");
    snprintf(c->slot->kwargsrepr, sizeof(c->slot->kwargsrepr), "%s", kwargs ? kwargs : "{}");
    free(args);
    free(kwargs);
    snprintf(c->slot->argsrepr_text, sizeof(c->slot->argsrepr_text), "%s",
             m->argsrepr ? m->argsrepr : c->slot->argsrepr);
    snprintf(c->slot->kwargsrepr_text, sizeof(c->slot->kwargsrepr_text), "%s",
             m->kwargsrepr ? m->kwargsrepr : c->slot->kwargsrepr);
    snprintf(c->slot->routing_key, sizeof(c->slot->routing_key), "%s", m->routing_key);
    snprintf(c->slot->task_id, sizeof(c->slot->task_id), "%s", m->task_id);
    snprintf(c->slot->task_name, sizeof(c->slot->task_name), "%s", m->task_name);
    snprintf(c->slot->delivery_tag, sizeof(c->slot->delivery_tag), "%s", m->delivery_tag);
}

/* Runs m, described in the slot by slot_describe. */
static void execute(struct child *c, struct message *m, const struct celeriac_task_def *def)
{
    bool acks_late = c->cfg->acks_late || (def->flags & CELERIAC_ACKS_LATE);
    bool ignore_result = m->ignore_result || (def->flags & CELERIAC_IGNORE_RESULT);
    struct task_tuning *tune = &c->sb->shared->tasks[task_index_of(c, def)];
    double soft, hard;
    task_limits(c, m, def, &soft, &hard);
    atomic_fetch_add(&tune->total, 1);
    c->slot->time_start = time_now();
    atomic_store(&c->slot->acks_late, acks_late);
    atomic_store(&c->slot->time_limit_ms, (int64_t)(hard * 1000));
    int64_t t0 = time_mono_ms();
    atomic_store(&c->slot->task_started_ms, t0);
    atomic_store(&c->slot->state, CHILD_BUSY);
    atomic_store(&c->slot->reserved, 0);
    /* Acked when execution starts, as Celery, and only once the slot says
     * so: a death from here on is a lost running task, never a lost message. */
    if (!acks_late)
        ack_async(c, m);

    task_event(c, "task-started", m, json_object());
    arm_limits(soft, hard);
    int rc = run_task(c, m, def);
    disarm_limits();
    if (task_soft_limit_hit) {
        /* The statement was cancelled mid-flight: make sure the connection
         * is clean (rolled back, pinged) before another task sees it. */
        c->db.last_used_ms = 0;
        if (rc != CELERIAC_OK && strcmp(c->task.exc_type, "SoftTimeLimitExceeded")) {
            snprintf(c->task.exc_type, sizeof(c->task.exc_type), "SoftTimeLimitExceeded");
            buf_reset(&c->task.exc_message);
            buf_addf(&c->task.exc_message, "SoftTimeLimitExceeded(%g)", soft);
        }
    }
    int64_t t1 = time_mono_ms();
    if (c->db.last_used_ms)
        c->db.last_used_ms = t1;
    double secs = (double)(t1 - t0) / 1000.0;

    const struct celeriac_retry_options *retry = NULL;
    static const struct celeriac_retry_options reconnect_retry = {
        .countdown = 1, .max_retries = 3, .backoff = true, .backoff_max = 30};
    if (rc == CELERIAC_RETRY) {
        retry = &c->task.retry_options;
    } else if (rc != CELERIAC_OK) {
        const struct celeriac_autoretry *a =
            library_autoretry(&c->cfg->lib, m->task_name, c->task.exc_type);
        int max = a ? (a->options.max_retries ? a->options.max_retries : 3) : 0;
        if (a && (max < 0 || m->retries < max))
            retry = &a->options;
        else if (!a && (def->flags & CELERIAC_IDEMPOTENT) &&
                 !strcmp(c->task.exc_type, "OperationalError") && m->retries < 3)
            retry = &reconnect_retry; /* a lost connection is worth another go later */
    }
    bool stored = true;
    if (retry && retry_later(c, m, retry)) {
        rc = CELERIAC_RETRY;
    } else if (rc == CELERIAC_RETRY) {
        rc = CELERIAC_FAILED; /* the retry could not be sent: fail as Celery's Reject */
    }

    if (rc == CELERIAC_RETRY) {
        /* settled by retry_later */
    } else if (rc == CELERIAC_OK) {
        log_debug("Task %s[%s] succeeded in %.4fs", m->task_name, m->task_id, secs);
        struct err e = {0};
        json_t *children = json_array();
        if (canvas_on_success(&c->canvas, m, c->task.result, children, &e))
            log_error("task %s: sending its callbacks failed: %s", m->task_id, e.msg);
        if (events_task_enabled(&c->events)) {
            char *r = json_dumps(c->task.result ? c->task.result : json_null(),
                                 JSON_COMPACT | JSON_ENCODE_ANY);
            task_event(c, "task-succeeded", m,
                       json_pack("{s:s, s:f}", "result", r ? r : "null", "runtime", secs));
            free(r);
        }
        bool chord = m->group && m->embed && json_is_object(json_object_get(m->embed, "chord"));
        if (!ignore_result) {
            struct result_meta meta = {.status = "SUCCESS", .result = c->task.result,
                                       .redelivered = m->redelivered, .children = children,
                                       .task_id = m->task_id, .parent_id = m->parent_id,
                                       .group_id = m->group, .arrived_in = m->serializer};
            stored = acks_late || chord ? store(c, &meta) : store_sent(c, &meta);
        }
        json_decref(children);
        if (chord && canvas_chord_part(&c->canvas, m, "SUCCESS", c->task.result, &e))
            log_error("task %s: chord join failed: %s", m->task_id, e.msg);
    } else {
        log_error("Task %s[%s] raised unexpected: %s('%s')", m->task_name, m->task_id,
                  c->task.exc_type, c->task.exc_message.data);
        if (events_task_enabled(&c->events)) {
            struct buf exc = BUF_INIT, tb = BUF_INIT;
            buf_addf(&exc, "%s('%s')", c->task.exc_type, c->task.exc_message.data);
            json_t *d = message_exception(c->task.exc_type, NULL, c->task.exc_message.data);
            message_traceback(&tb, d, m->task_name, m->task_id);
            json_decref(d);
            task_event(c, "task-failed", m,
                       json_pack("{s:s, s:s}", "exception", exc.data, "traceback", tb.data));
            buf_release(&exc);
            buf_release(&tb);
        }
        /* Errors are stored even with ignore_result in the message, as Celery
         * 5.2 does; a task that ignores results ignores its errors too. */
        bool chord = m->group && m->embed && json_is_object(json_object_get(m->embed, "chord"));
        const char *module = strcmp(c->task.exc_type, "SoftTimeLimitExceeded")
                                 ? NULL
                                 : "billiard.exceptions";
        if (!(def->flags & CELERIAC_IGNORE_RESULT))
            stored = store_exception_as(c, m, "FAILURE", c->task.exc_type, module,
                                        c->task.exc_message.data, acks_late || chord);
        struct err e = {0};
        if (canvas_on_failure(&c->canvas, m, &e))
            log_error("task %s: sending its errbacks failed: %s", m->task_id, e.msg);
        if (chord) {
            json_t *exc = message_exception(c->task.exc_type, module, c->task.exc_message.data);
            if (canvas_chord_part(&c->canvas, m, "FAILURE", exc, &e))
                log_error("task %s: chord join failed: %s", m->task_id, e.msg);
            json_decref(exc);
        }
    }
    if (acks_late && stored)
        ack_async(c, m); /* after the result was confirmed stored */
    else if (acks_late)
        log_warning("task %s[%s]: its result is not stored; the message stays unacked and will "
                    "be delivered again", m->task_name, m->task_id);
    c->db.uses++;
    /* A transaction the task left open must not hold locks until the next
     * task arrives: roll it back now. */
    struct err re = {0};
    if (db_conn_is_open(&c->db) && db_conn_clean(&c->db, &re))
        log_warning("database connection after task %s: %s", m->task_id, re.msg);
    atomic_store(&c->slot->task_started_ms, 0);
    atomic_store(&c->slot->time_limit_ms, 0);
    atomic_fetch_add(&c->slot->tasks_done, 1);
    atomic_store(&c->slot->state, CHILD_IDLE);
}

/* Runs a message that passed every check of its receipt: revoked? still
 * not expired? rate limit, a live connection, then the task. */
static void run_accepted(struct child *c, struct message *m, const struct celeriac_task_def *def)
{
    struct err e = {0};
    if (scoreboard_is_revoked(c->sb, m->task_id)) {
        log_info("Discarding revoked task %s[%s]", m->task_name, m->task_id);
        store_exception(c, m, "REVOKED", "TaskRevokedError", "celery.exceptions", "revoked");
        task_event(c, "task-revoked", m,
                   json_pack("{s:b, s:n, s:b}", "terminated", 0, "signum", "expired", 0));
        settle_delivery(c, m);
        return;
    }
    if (m->expires > 0 && time_now() > m->expires) { /* checked again: it may have waited */
        log_info("Discarding expired task %s[%s]", m->task_name, m->task_id);
        store_exception(c, m, "REVOKED", "TaskRevokedError", "celery.exceptions", "expired");
        task_event(c, "task-revoked", m,
                   json_pack("{s:b, s:n, s:b}", "terminated", 0, "signum", "expired", 1));
        settle_delivery(c, m);
        return;
    }
    /* Received and not started (a rate limit, a database to wait for):
     * Celery's "reserved". */
    slot_describe(c, m);
    atomic_store(&c->slot->reserved, 1);
    wait_for_rate(c, def);
    if (c->cfg->db.kind != DB_NONE) {
        /* A reconnect can take as long as an outage: make the message
         * durable first (a loss found by db_conn_ready records it from the
         * close hook). */
        if (!db_conn_is_open(&c->db))
            record_delivery(c, m);
        /* The connection may have died while we waited for this message;
         * a poll() finds out without a round trip. A health check that
         * round-trips waits no longer than the task's hard limit would
         * (its timer is not armed yet): a server that does not answer in
         * time counts as lost and the task runs on a new connection. */
        double soft, hard;
        task_limits(c, m, def, &soft, &hard);
        int64_t hard_ms = hard > 0 ? (int64_t)(hard * 1000) : 0;
        if (hard > 0 && hard_ms < 1)
            hard_ms = 1;
        if (db_conn_ready(&c->db, hard_ms, &sig_stop, &e)) {
            log_info("task %s[%s] not started: stopping while reconnecting", m->task_name,
                     m->task_id);
            if (give_back(c, m, &e))
                log_warning("task %s[%s] not put back (%s)", m->task_name, m->task_id, e.msg);
            atomic_store(&c->slot->reserved, 0);
            return;
        }
        atomic_store(&c->slot->reconnects, c->db.reconnects);
    }
    execute(c, m, def);
}

/* ---- ETA / countdown: held unacked while other messages run */

/* Describes held message i on this child's board (if it has room). */
static void board_fill(struct child *c, size_t i)
{
    if (i >= HELD_BOARD_MAX)
        return;
    struct held_entry *b = &c->sb->held[c->index].e[i];
    const struct message *m = &c->held[i].m;
    char *args = json_dumps(m->args, JSON_COMPACT | JSON_ENCODE_ANY);
    char *kwargs = json_dumps(m->kwargs, JSON_COMPACT);
    snprintf(b->tag, sizeof(b->tag), "%s", m->delivery_tag);
    snprintf(b->task_id, sizeof(b->task_id), "%s", m->task_id);
    snprintf(b->task_name, sizeof(b->task_name), "%s", m->task_name);
    snprintf(b->routing_key, sizeof(b->routing_key), "%s", m->routing_key);
    snprintf(b->argsrepr, sizeof(b->argsrepr), "%s", args ? args : "[]");
    snprintf(b->kwargsrepr, sizeof(b->kwargsrepr), "%s", kwargs ? kwargs : "{}");
    b->eta = m->eta;
    b->priority = m->priority;
    b->redelivered = m->redelivered;
    free(args);
    free(kwargs);
}

static void board_count(struct child *c)
{
    size_t n = c->n_held < HELD_BOARD_MAX ? c->n_held : HELD_BOARD_MAX;
    atomic_store(&c->sb->held[c->index].n, (int)n);
    atomic_store(&c->slot->scheduled, (int)c->n_held);
}

/* Takes m (its ownership moves) into the held list: there is no limit but
 * memory, so ordinary tasks behind any number of ETA messages keep flowing. */
static void hold(struct child *c, struct message *m, const struct celeriac_task_def *def)
{
    if (c->n_held == c->held_cap) {
        c->held_cap = c->held_cap ? c->held_cap * 2 : 16;
        c->held = xrealloc(c->held, c->held_cap * sizeof(*c->held));
    }
    struct held *h = &c->held[c->n_held++];
    h->m = *m;
    h->def = def;
    message_init(m);
    board_fill(c, c->n_held - 1);
    board_count(c);
    log_debug("task %s[%s] scheduled for later", h->m.task_name, h->m.task_id);
}

/* Seconds until the earliest held message is due (a large number if none). */
static double next_due(const struct child *c)
{
    double best = 1e9, now = time_now();
    for (size_t i = 0; i < c->n_held; i++)
        if (c->held[i].m.eta - now < best)
            best = c->held[i].m.eta - now;
    return best;
}

static void run_due(struct child *c)
{
    for (size_t i = 0; i < c->n_held && !sig_stop;) {
        if (c->held[i].m.eta > time_now()) {
            i++;
            continue;
        }
        struct held h = c->held[i];
        c->held[i] = c->held[--c->n_held];
        if (i < c->n_held)
            board_fill(c, i); /* the last one moved here */
        board_count(c);
        run_accepted(c, &h.m, h.def);
        message_release(&h.m);
    }
}

/* A held message's unacked score is its delivery time; keep it fresh so the
 * visibility sweep does not hand it to another worker while we hold it. */
static void refresh_held(struct child *c)
{
    int64_t now = time_mono_ms();
    int64_t every = (int64_t)(c->cfg->visibility_timeout * 1000) / 4;
    if (!c->n_held || now < c->next_refresh_ms)
        return;
    c->next_refresh_ms = now + (every > 1000 ? every : 1000);
    const char **tags = xcalloc(c->n_held, sizeof(*tags));
    for (size_t i = 0; i < c->n_held; i++)
        tags[i] = c->held[i].m.delivery_tag;
    struct err e = {0};
    if (broker_redis_touch(&c->broker, tags, c->n_held, &e))
        log_warning("refreshing %zu held messages in unacked: %s", c->n_held, e.msg);
    free(tags);
}

/* Stopping: every held message goes back to its queue now. */
static void restore_held(struct child *c)
{
    for (size_t i = 0; i < c->n_held; i++) {
        struct err e = {0};
        struct message *m = &c->held[i].m;
        if (redis_link_is_open(&c->broker.link) &&
            broker_redis_restore(&c->broker, m->delivery_tag, false, &e) >= 0)
            log_info("task %s[%s] not due before shutdown; restored to its queue", m->task_name,
                     m->task_id);
        else
            log_warning("task %s[%s] left unacked for the visibility sweep", m->task_name,
                        m->task_id);
        message_release(m);
    }
    c->n_held = 0;
    board_count(c);
    free(c->held);
    c->held = NULL;
    c->held_cap = 0;
}

/* A message over --max-message-size is not decoded; when its task id can
 * be read cheaply, a FAILURE is stored under it so its client does not wait
 * for ever. */
static void drop_oversized(struct child *c, const struct delivery *d)
{
    char id[64];
    bool known = message_peek_id(d->raw, d->len, id, sizeof(id));
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
    store_invalid(c, &m, "InvalidTaskError", text);
}

static void handle(struct child *c, struct delivery *d)
{
    struct message m;
    struct err e = {0};
    enum message_settle settle;
    message_init(&m);
    c->hand_full = c->broker.hand != NULL;
    if (c->hand_full)
        c->hand_hash = broker_redis_hand_hash(d->raw, d->len);
    if (d->len > c->cfg->broker.max_message) {
        drop_oversized(c, d);
        goto out_settle;
    }
    if (message_decode_envelope(&m, d->raw, d->len, d->queue, &settle, &e)) {
        log_error("dropped a message from queue '%s': %s", d->queue, e.msg);
        goto out_settle;
    }
    if (m.repaired)
        log_warning("message %s from queue '%s' lacked properties.delivery_tag or delivery_info "
                    "(a Python worker would have died on it); repaired", m.task_id ? m.task_id : "(no id)",
                    d->queue);
    if (d->recorded_tag && (strcmp(d->recorded_tag, m.delivery_tag) ||
                            strcmp(d->recorded_exchange, m.exchange) ||
                            strcmp(d->recorded_routing_key, m.routing_key))) {
        /* The pop's patterns were fooled (nested keys of the same names):
         * drop that record and write the right one below. */
        log_warning("message %s: unacked record corrected (tag %.40s)", m.task_id ? m.task_id : "?",
                    m.delivery_tag);
        ack(c, d->recorded_tag);
        d->recorded_tag = NULL;
    }
    m.recorded = d->recorded_tag != NULL;
    if (!m.recorded && !c->hand_full) {
        /* Not recorded by the pop (it could not be tracked): record it as
         * kombu would. */
        char *env = message_envelope_json(&m);
        if (ensure_broker(c) == 0 &&
            broker_redis_record(&c->broker, m.delivery_tag, env, m.exchange, m.routing_key, &e))
            log_warning("recording delivery %s as unacked failed: %s", m.delivery_tag, e.msg);
        else
            m.recorded = true;
        free(env);
    }
    /* From here until it is settled or started, a death of this child leaves
     * the message to its replacement to put back: from unacked by this tag
     * (see settle_lost_task), or from the hand. */
    if (m.recorded)
        snprintf(c->slot->popped_tag, sizeof(c->slot->popped_tag), "%s", m.delivery_tag);
    c->current = &m;
    if (message_decode_task(&m, &settle, &e)) {
        log_error("%s message %s from queue '%s': %s",
                  settle == SETTLE_ACK ? "acked undecodable" : "rejected invalid",
                  m.task_id ? m.task_id : "(no id)", d->queue, e.msg);
        const char *exc = strstr(e.msg, "content disallowed") ? "ContentDisallowed"
                          : settle == SETTLE_ACK                ? "DecodeError"
                                                                : "InvalidTaskError";
        store_invalid(c, &m, exc, e.msg);
        settle_delivery(c, &m);
        goto out;
    }
    const struct celeriac_task_def *def = library_find(&c->cfg->lib, m.task_name);
    if (!def) {
        log_error("Received unregistered task of type '%s' (id %s); rejected", m.task_name,
                  m.task_id);
        store_exception(c, &m, "FAILURE", "NotRegistered", "celery.exceptions", m.task_name);
        settle_delivery(c, &m);
        goto out;
    }
    if (m.expires > 0 && time_now() > m.expires) {
        log_info("Discarding expired task %s[%s]", m.task_name, m.task_id);
        store_exception(c, &m, "REVOKED", "TaskRevokedError", "celery.exceptions", "expired");
        task_event(c, "task-revoked", &m,
                   json_pack("{s:b, s:n, s:b}", "terminated", 0, "signum", "expired", 1));
        settle_delivery(c, &m);
        goto out;
    }
    received_event(c, &m);
    if (m.eta > time_now()) {
        record_delivery(c, &m); /* held for later: it must outlive this worker */
        hold(c, &m, def);
        goto out; /* scheduled: the held list owns it now */
    }
    run_accepted(c, &m, def);
    goto out;

out_settle:
    if (d->recorded_tag)
        ack(c, d->recorded_tag);
out:
    release_hand(c);
    c->current = NULL;
    c->slot->popped_tag[0] = '\0';
    message_release(&m);
}

/* ---- what the previous process in this slot left behind */

/* The lost task m fails with WorkerLostError, as Celery reports it; a
 * late-ack message is then acked. */
static void fail_lost(struct child *c, struct message *m, bool late)
{
    char text[128];
    int sig = atomic_load(&c->slot->lost_signal);
    snprintf(text, sizeof(text), "Worker exited prematurely: signal %d (%s).", sig,
             sig ? strsignal(sig) : "exit");
    log_error("Task %s[%s] raised WorkerLostError: %s", m->task_name, m->task_id, text);
    store_exception(c, m, "FAILURE", "WorkerLostError", "billiard.exceptions", text);
    if (late)
        ack(c, c->slot->lost_tag);
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
    int rc = ensure_broker(c) ? E_CONN_LOST
                              : broker_redis_requeue_lost(&c->broker, c->slot->lost_tag, max,
                                                          &losses, &e);
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
static void settle_lost_task(struct child *c)
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
    if (reason == LOST_UNSTARTED) {
        log_warning("message %s: its child died before starting it; restored to its queue",
                    s->lost_tag);
        if (ensure_broker(c) || broker_redis_restore(&c->broker, s->lost_tag, false, &e) < 0)
            log_error("restore of %s failed: %s; the visibility sweep will", s->lost_tag, e.msg);
    } else if (reason == LOST_REVOKED) {
        log_info("Task %s[%s] terminated by revoke", m.task_name, m.task_id);
        store_exception(c, &m, "REVOKED", "TaskRevokedError", "celery.exceptions", "terminated");
        task_event(c, "task-revoked", &m,
                   json_pack("{s:b, s:i, s:b}", "terminated", 1, "signum",
                             atomic_load(&s->lost_signal), "expired", 0));
        ack(c, s->lost_tag);
    } else if (reason == LOST_TIME_LIMIT) {
        log_error("Task %s[%s]: hard time limit (%gs) exceeded; its process was killed",
                  m.task_name, m.task_id, s->lost_time_limit);
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
        store(c, &meta);
        json_decref(exc);
        ack(c, s->lost_tag);
    } else if (late && c->cfg->reject_on_worker_lost) {
        requeue_lost(c, &m);
    } else {
        fail_lost(c, &m, late);
    }
    atomic_store(&s->lost_reason, LOST_NONE);
}

/* The ETA messages the previous child of this slot held: back to their
 * queues now (compare-and-swap: one already acked is left alone), not after
 * the visibility timeout. */
static void restore_left_held(struct child *c)
{
    struct held_board *board = &c->sb->held[c->index];
    int restored = 0;
    while (atomic_load(&board->n) > 0) {
        struct err e = {0};
        if (ensure_broker(c))
            return; /* stopping: the board stays for the next child */
        if (held_board_restore(&c->broker, board, &restored, &e) == 0)
            break;
    }
    if (restored)
        log_warning("restored %d ETA message(s) the previous child of this slot held", restored);
}

/* A message in our hand now was popped by an earlier process of this slot
 * (a dead child, or a whole worker of this name) that never started it. */
static void empty_hand_left(struct child *c)
{
    struct retry r;
    retry_init(&r, 200, 10000, "putting back the message left in this slot's hand");
    for (;;) {
        struct err e = {0};
        if (ensure_broker(c))
            return; /* stopping: the next child of this slot will */
        int rc = hand_salvage(&c->broker, atomic_load(&c->slot->lost_hand_settled), &e);
        if (rc >= 0)
            rc = hand_adopt_orphans(&c->broker, c->cfg->node_name, getppid(), c->index, &e);
        if (rc >= 0) {
            retry_succeeded(&r);
            return;
        }
        if (!worth_retrying(c, rc)) {
            log_warning("putting back the message left in this slot's hand: %s", e.msg);
            return;
        }
        retry_wait(&r, LOG_WARNING, &e, &sig_stop);
    }
}

/* The alive key's expiry when a child refreshes it: children refresh it
 * only on their sweep schedule (the control process every few seconds),
 * so it must outlast a sweep interval or two. */
static int child_alive_ttl_s(const struct worker_config *cfg)
{
    int ttl = 3 * cfg->sweep_interval_s;
    return ttl > BROKER_ALIVE_TTL_S ? ttl : BROKER_ALIVE_TTL_S;
}

/* Every child tries the sweep on its own schedule; kombu's mutex makes sure
 * only one process in the fleet (Python or C) sweeps at a time. The first
 * call runs before the child's first pop, so the worker is advertised alive
 * before any of its hands can hold a message. Children refresh the alive key
 * too, not only the control process: with --without-remote-control there is
 * none, and a busy child does not refresh it, hence the longer expiry. */
static void maybe_sweep(struct child *c)
{
    int64_t now = time_mono_ms();
    if (now < c->next_sweep_ms)
        return;
    int64_t interval = (int64_t)c->cfg->sweep_interval_s * 1000;
    c->next_sweep_ms = now + interval / 2 + (int64_t)(getpid() % 1000) * interval / 2000;
    struct err e = {0};
    /* The master pid the hands are named by (events.master_pid, taken at
     * start): after the master's death getppid() would name another process. */
    if (broker_redis_advertise_alive(&c->broker.link, c->cfg->node_name, c->events.master_pid,
                                     child_alive_ttl_s(c->cfg), &e) == E_PROTOCOL)
        log_warning("advertising this worker alive failed: %s", e.msg);
    if (broker_redis_sweep(&c->broker, c->cfg->visibility_timeout, &e) < 0)
        log_warning("visibility sweep failed: %s", e.msg);
    if (broker_redis_sweep_hands(&c->broker, c->cfg->visibility_timeout, interval, &e) < 0)
        log_warning("sweep of dead workers' hands failed: %s", e.msg);
}

/* Remote control changed the queues (add_consumer, cancel_consumer):
 * consume the new set from the next fetch on. */
static void follow_queues(struct child *c)
{
    if (scoreboard_queues_gen(c->sb) == c->queues_gen)
        return;
    char **names;
    size_t n;
    c->queues_gen = scoreboard_queues_read(c->sb, &names, &n);
    broker_redis_set_queues(&c->broker, names, n);
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
}

/* --max-tasks-per-child and --max-memory-per-child: true when this child
 * should retire after the task it just finished. */
static bool should_retire(struct child *c)
{
    uint64_t done = atomic_load(&c->slot->tasks_done);
    if (c->cfg->max_tasks_per_child && done >= c->cfg->max_tasks_per_child) {
        log_info("retiring after %" PRIu64 " tasks (--max-tasks-per-child)", done);
        return true;
    }
    if (c->cfg->max_memory_per_child) {
        FILE *f = fopen("/proc/self/statm", "re");
        unsigned long size = 0, resident = 0;
        if (f && fscanf(f, "%lu %lu", &size, &resident) == 2) {
            uint64_t kib = (uint64_t)resident * (uint64_t)sysconf(_SC_PAGESIZE) / 1024;
            if (kib > c->cfg->max_memory_per_child) {
                log_info("retiring at %" PRIu64 " KiB resident (--max-memory-per-child %" PRIu64
                         ")", kib, c->cfg->max_memory_per_child);
                fclose(f);
                return true;
            }
        }
        if (f)
            fclose(f);
    }
    return false;
}

/* ---- life */

ATTR_NORETURN static void leave(struct child *c, int code)
{
    atomic_store(&c->slot->state, CHILD_STOPPING);
    restore_held(c);
    release_hand(c);
    struct err he = {0};
    if (redis_link_is_open(&c->broker.link) && broker_redis_hand_clear(&c->broker, &he))
        log_warning("emptying the hand: %s; the next child of this slot will", he.msg);
    const struct celeriac_library *lib = c->cfg->lib.desc;
    if (code != EXIT_CANNOT_SERVE && lib->process_shutdown)
        lib->process_shutdown(&c->proc);
    /* Read the replies of what was sent without waiting; a connection that
     * died in between gets one reconnect, which sends those commands again. */
    struct err e = {0};
    if (redis_link_is_open(&c->broker.link) && broker_redis_confirm(&c->broker, &e))
        broker_redis_open(&c->broker, &e);
    if (redis_link_is_open(&c->backend.link) && backend_redis_confirm(&c->backend, &e))
        backend_redis_open(&c->backend, &e);
    db_conn_close(&c->db, "worker child exiting");
    broker_redis_release(&c->broker, NULL);
    backend_redis_release(&c->backend, NULL);
    task_context_release(&c->task);
    atomic_store(&c->slot->db_state, DBS_NONE);
    atomic_store(&c->slot->state, CHILD_EMPTY);
    /* _exit: the master's atexit work and stdio buffers are not ours. */
    _exit(code);
}

/* Gives up at start: the master does not replace a child that cannot serve
 * until the worker serves. A capacity probe (the master retrying such a
 * slot) fails quietly: the master reports the shortage once. */
ATTR_NORETURN static void give_up(struct child *c, const char *why)
{
    if (atomic_load(&c->slot->probe))
        log_debug("cannot serve yet: %s", why);
    else
        log_critical("cannot serve: %s", why);
    leave(c, EXIT_CANNOT_SERVE);
}

void child_main(const struct worker_config *cfg, struct scoreboard *sb, struct slot *slot,
                int index, int deathwatch_fd)
{
    struct child c;
    memset(&c, 0, sizeof(c));
    c.cfg = cfg;
    c.sb = sb;
    c.canvas = (struct canvas){.broker = &c.broker, .backend = &c.backend};
    c.events = (struct event_sender){.link = &c.broker.link, .sb = sb, .hostname = cfg->node_name,
                                     .db = cfg->broker.url.db, .master_pid = getppid()};
    c.slot = slot;
    c.index = index;
    c.deathwatch_fd = deathwatch_fd;
    retry_init(&c.fetch_retry, 100, 5000, "fetching from the broker");

    char name[32];
    snprintf(name, sizeof(name), "ForkPoolWorker-%d", index + 1);
    log_set_process(name);
    snprintf(name, sizeof(name), "celeriac:child%d", index);
    prctl(PR_SET_NAME, name, 0, 0, 0);
    /* Backup for the death-watch pipe while blocked in a long task. */
    prctl(PR_SET_PDEATHSIG, SIGTERM, 0, 0, 0);

    atomic_store(&slot->state, CHILD_STARTING);
    atomic_store(&slot->db_state, cfg->db.kind == DB_NONE ? DBS_NONE : DBS_DOWN);
    broker_redis_init(&c.broker, &cfg->broker);
    if (!cfg->broker.record_unacked)
        broker_redis_set_hand(&c.broker, cfg->node_name, getppid(), index);
    backend_redis_init(&c.backend, &cfg->backend);
    c.proc.index = index;
    c.proc.db = &c.db;
    task_context_init(&c.task, &c.proc);

    char app_name[64];
    snprintf(app_name, sizeof(app_name), "celeriac child %d pid %d %s", index, (int)getpid(),
             cfg->node_name);
    db_conn_init(&c.db, &cfg->db, app_name);
    c.db.on_open = hook_db_open;
    c.db.on_close = hook_db_close;
    c.db.hook_arg = &c;

    if (cfg->db.kind != DB_NONE) {
        atomic_store(&slot->state, CHILD_CONNECTING);
        struct err e = {0};
        /* At the worker's start an unreachable database is a configuration
         * problem: give up after the configured attempts. A replacement for a
         * child that served waits the outage out (retrying with backoff). A
         * probe tries once: the master retries the slot with its backoff. */
        int attempts = atomic_load(&slot->probe)        ? 1
                       : atomic_load(&slot->outage_mode) ? 0
                                                         : cfg->db.attempts;
        c.db.quiet = atomic_load(&slot->probe);
        if (db_conn_open(&c.db, attempts, &sig_stop, &e)) {
            if (sig_stop)
                leave(&c, EXIT_OK);
            give_up(&c, e.msg);
        }
        log_info("database connection to '%s' opened by pid %d (after fork, application_name "
                 "'%s')", cfg->db.where, (int)getpid(), app_name);
    }
    if (cfg->lib.desc->process_init && cfg->lib.desc->process_init(&c.proc))
        give_up(&c, "the task library's process_init hook failed");
    if (ensure_broker(&c) || ensure_backend(&c))
        leave(&c, EXIT_OK);
    timer_child = &c;
    signals_child_terminate_on(&slot->revoke_terminate);
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_timer;
    sigfillset(&sa.sa_mask);
    sigaction(SIGALRM, &sa, NULL);
    settle_lost_task(&c);
    restore_left_held(&c);
    uint64_t settled = atomic_load(&slot->lost_hand_settled);
    if (settled)
        broker_redis_hand_settled(&c.broker, settled); /* so a reconnect does not deliver it */
    empty_hand_left(&c);
    atomic_store(&slot->state, CHILD_IDLE);
    log_debug("child %d ready", index);

    unsigned long loops = 0;
    while (!(loops++ % 64 ? sig_stop : should_stop(&c))) {
        /* The death-watch poll runs every 64 messages and whenever the queue
         * is idle; PR_SET_PDEATHSIG covers a busy child in between. */
        if (cfg->db.kind != DB_NONE && !db_conn_is_open(&c.db)) {
            /* Down: do not pull tasks it would only fail (an open handle is
             * checked right before each task instead). */
            struct err e = {0};
            if (db_conn_ready(&c.db, 0, &sig_stop, &e))
                break; /* only fails when stopping */
            atomic_store(&slot->reconnects, c.db.reconnects);
        }
        if (ensure_broker(&c))
            break;
        maybe_sweep(&c);
        follow_queues(&c);
        run_due(&c);
        refresh_held(&c);
        if (sig_stop)
            break;
        struct delivery d;
        struct err e = {0};
        double due = next_due(&c);
        int rc = broker_redis_fetch(&c.broker, due < FETCH_TIMEOUT_S ? (due > 0.05 ? due : 0.05)
                                                                     : FETCH_TIMEOUT_S,
                                    &d, &e);
        if (rc) {
            /* Backs off on every class of failure: a connection that opens
             * and dies at once must not turn this loop into a spin. */
            retry_wait(&c.fetch_retry, rc == E_CONN_LOST ? LOG_WARNING : LOG_ERROR, &e,
                       &sig_stop);
            continue;
        }
        retry_succeeded(&c.fetch_retry);
        bool ran = d.reply != NULL;
        confirm_results(&c); /* its reply has arrived by now: no wait */
        if (!ran)
            loops = 0; /* idle: check the master next time round */
        if (ran)
            handle(&c, &d);
        delivery_release(&d);
        if (ran && should_retire(&c))
            leave(&c, EXIT_RECYCLED);
    }
    leave(&c, EXIT_OK);
}
