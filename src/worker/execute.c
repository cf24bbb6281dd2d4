/* SPDX-License-Identifier: MIT
 * worker/execute.c: running one accepted message: the last checks (revoked,
 * expired, rate limit, a live database connection), the task under its time
 * limits, then its outcome: result, callbacks, chord part, retry, ack.
 */
#include "common.h"
#include "util/buf.h"
#include "util/strcopy.h"
#include "util/time.h"
#include "worker/child_internal.h"
#include "worker/signals.h"

/* An idempotent task that loses its connection is re-run after reconnecting,
 * at most this many times (a server restart can take more than one). */
#define IDEMPOTENT_RERUNS 3

/* Runs the task (in its transaction when it is transactional), re-running
 * an idempotent one after a lost connection has been re-established; a
 * transactional one too, as the lost transaction took its writes along.
 * Returns CELERIAC_OK or CELERIAC_FAILED. */
static int run_task(struct child *c, const struct message *m, const struct celeriac_task_def *def,
                    bool txn)
{
    /* In its message's lock: a lost connection took the lock along, and
     * the message is back in its queue for whoever takes it next. */
    bool in_lock = txn && transaction_holds_delivery(c, m);
    for (int attempt = 0;; attempt++) {
        task_context_begin(&c->task, m);
        int rc = txn ? transaction_begin(c, m) : CELERIAC_OK;
        if (rc == CELERIAC_OK)
            rc = task_context_run(&c->task, def);
        if (rc == CELERIAC_OK || !c->task.db_failure)
            return rc;
        bool pooler = !c->db.pooled && db_pg_message_is_pooled(c->task.exc_message.data);
        if (!pooler && !db_conn_check_lost(&c->db))
            return rc;
        bool retry = ((def->flags & CELERIAC_IDEMPOTENT) || txn) && !in_lock &&
                     attempt < IDEMPOTENT_RERUNS;
        if (pooler) {
            /* The statement failed before it ran; from now on this child
             * asks the library not to prepare (db_connected runs again). */
            log_warning("database '%s' lost a prepared statement between transactions (%s): a "
                        "transaction pooler such as PgBouncer is in front of it; this child "
                        "now runs as with --db-pooler transaction (pass that flag to say so at "
                        "start); task %s[%s] %s", c->db.cfg->where, c->task.exc_message.data,
                        m->task_name, m->task_id, retry ? "re-runs after reconnect" : "fails");
            c->db.pooled = true;
            db_conn_close(&c->db, "prepared statements do not survive a transaction pooler");
        } else {
            log_warning("task %s[%s]: database %s (%s)%s", m->task_name, m->task_id,
                        c->db.lost_why, c->task.exc_message.data,
                        retry ? "; re-running after reconnect" : "");
        }
        /* The connection died under the task, is on a standby, or was closed above. */
        atomic_store(&c->slot->db_state, DBS_DOWN);
        struct err e = {0};
        if (db_conn_ready(&c->db, 0, &sig_stop, &e) || !retry) {
            struct buf text = BUF_INIT;
            if (pooler)
                buf_addf(&text, "prepared statement lost behind a transaction pooler (run with "
                         "--db-pooler transaction): %s", c->task.exc_message.data);
            else
                buf_addf(&text, "database %s: %s", c->db.lost_why, c->task.exc_message.data);
            snprintf(c->task.exc_type, sizeof(c->task.exc_type), "OperationalError");
            buf_reset(&c->task.exc_message);
            buf_add(&c->task.exc_message, text.data, text.len);
            buf_release(&text);
            return CELERIAC_FAILED;
        }
    }
}

/* v as compact JSON into dst (size bytes), truncated; empty when v is absent.
 * Straight into the slot when it fits, which is nearly always. */
static void dump_repr(char *dst, size_t size, const json_t *v, size_t flags, const char *empty)
{
    size_t need = v ? json_dumpb(v, dst, size - 1, flags) : 0;
    if (need && need < size) {
        dst[need] = '\0';
        return;
    }
    char *text = v ? json_dumps(v, flags) : NULL;
    str_copy(dst, size, text ? text : empty);
    free(text);
}

/* Describes m in this child's slot for remote control (inspect reserved,
 * then active, and query_task) and for the master. */
static void slot_describe(struct child *c, const struct message *m)
{
    struct slot *s = c->slot;
    dump_repr(s->argsrepr, sizeof(s->argsrepr), m->args, JSON_COMPACT | JSON_ENCODE_ANY, "[]");
    dump_repr(s->kwargsrepr, sizeof(s->kwargsrepr), m->kwargs, JSON_COMPACT, "{}");
    str_copy(s->argsrepr_text, sizeof(s->argsrepr_text), m->argsrepr ? m->argsrepr : s->argsrepr);
    str_copy(s->kwargsrepr_text, sizeof(s->kwargsrepr_text),
             m->kwargsrepr ? m->kwargsrepr : s->kwargsrepr);
    str_copy(s->routing_key, sizeof(s->routing_key), m->routing_key ? m->routing_key : "");
    str_copy(s->task_id, sizeof(s->task_id), m->task_id ? m->task_id : "");
    str_copy(s->task_name, sizeof(s->task_name), m->task_name ? m->task_name : "");
    str_copy(s->delivery_tag, sizeof(s->delivery_tag), m->delivery_tag ? m->delivery_tag : "");
}

/* Whether m is a member of a chord (its outcome is counted in the join). */
static bool chord_member(const struct message *m)
{
    return m->group && m->embed && json_is_object(json_object_get(m->embed, "chord"));
}

/* The task succeeded: callbacks, the event, the result (held for its
 * batch's commit with *batch, which says false if it could not be), the
 * chord part. False when the result could not be stored. */
static bool on_success(struct child *c, const struct message *m, bool acks_late,
                       bool ignore_result, double secs, bool *batch)
{
    log_debug("Task %s[%s] succeeded in %.4fs", m->task_name, m->task_id, secs);
    struct err e = {0};
    bool stored = true;
    json_t *children = json_array();
    if (canvas_on_success(&c->canvas, m, c->task.result, children, &e))
        log_error("task %s: sending its callbacks failed: %s", m->task_id, e.msg);
    if (events_task_enabled(&c->events)) {
        char *r = json_dumps(c->task.result ? c->task.result : json_null(),
                             JSON_COMPACT | JSON_ENCODE_ANY);
        events_task(&c->events, "task-succeeded", m,
                    json_pack("{s:s, s:f}", "result", r ? r : "null", "runtime", secs));
        free(r);
    }
    bool chord = chord_member(m);
    if (*batch && !ignore_result && !transaction_hold_result(c, &(struct result_meta){
            .status = "SUCCESS", .result = c->task.result, .redelivered = m->redelivered,
            .children = children, .task_id = m->task_id, .parent_id = m->parent_id,
            .group_id = m->group, .arrived_in = m->serializer, .reply_to = m->reply_to,
            .correlation_id = m->correlation_id}))
        *batch = false;
    if (!ignore_result && !*batch) {
        struct result_meta meta = {.status = "SUCCESS", .result = c->task.result,
                                   .redelivered = m->redelivered, .children = children,
                                   .task_id = m->task_id, .parent_id = m->parent_id,
                                   .group_id = m->group, .arrived_in = m->serializer,
                                   .reply_to = m->reply_to, .correlation_id = m->correlation_id};
        stored = acks_late || chord ? settle_store(c, &meta) : settle_store_sent(c, &meta);
    }
    json_decref(children);
    if (chord && canvas_chord_part(&c->canvas, m, "SUCCESS", c->task.result, &e))
        log_error("task %s: chord join failed: %s", m->task_id, e.msg);
    return stored;
}

/* The task failed: the event, the FAILURE, errbacks, the chord part. False
 * when the result could not be stored. */
static bool on_failure(struct child *c, const struct message *m,
                       const struct celeriac_task_def *def, bool acks_late)
{
    log_error("Task %s[%s] raised unexpected: %s('%s')", m->task_name, m->task_id,
              c->task.exc_type, c->task.exc_message.data);
    if (events_task_enabled(&c->events)) {
        struct buf exc = BUF_INIT, tb = BUF_INIT;
        buf_addf(&exc, "%s('%s')", c->task.exc_type, c->task.exc_message.data);
        json_t *d = message_exception(c->task.exc_type, NULL, c->task.exc_message.data);
        message_traceback(&tb, d, m->task_name, m->task_id);
        json_decref(d);
        events_task(&c->events, "task-failed", m,
                    json_pack("{s:s, s:s}", "exception", exc.data, "traceback", tb.data));
        buf_release(&exc);
        buf_release(&tb);
    }
    /* Errors are stored even with ignore_result in the message, as Celery
     * 5.2 does; a task that ignores results ignores its errors too. */
    bool stored = true;
    bool chord = chord_member(m);
    const char *module = strcmp(c->task.exc_type, "SoftTimeLimitExceeded")
                             ? NULL
                             : "billiard.exceptions";
    if (!(def->flags & CELERIAC_IGNORE_RESULT))
        stored = settle_store_exception_as(c, m, "FAILURE", c->task.exc_type, module,
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
    return stored;
}

/* Runs the task under its time limits; a soft limit that cancelled the
 * statement is reported as SoftTimeLimitExceeded. */
static int run_limited(struct child *c, const struct message *m,
                       const struct celeriac_task_def *def, bool txn, double soft, double hard)
{
    limits_arm(soft, hard);
    int rc = run_task(c, m, def, txn);
    limits_disarm();
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
    return rc;
}

/* After the outcome: a task's open transaction rolled back now (it must not
 * hold locks until the next task arrives), the slot idle again. */
static void finish(struct child *c, const struct message *m)
{
    c->db.uses++;
    struct err re = {0};
    if (db_conn_is_open(&c->db) && db_conn_clean(&c->db, &re))
        log_warning("database connection after task %s: %s", m->task_id, re.msg);
    atomic_store(&c->slot->task_started_ms, 0);
    atomic_store(&c->slot->time_limit_ms, 0);
    atomic_fetch_add(&c->slot->tasks_done, 1);
    tally_db(c);
    atomic_store(&c->slot->state, CHILD_IDLE);
    child_title(c, "idle", NULL);
}

/* A transactional task whose result could not be stored: its writes are
 * undone and its message runs again soon, not after the visibility timeout. */
static void give_back_uncommitted(struct child *c, struct message *m)
{
    transaction_rollback(c, m);
    struct err e = {0};
    if (settle_give_back(c, m, &e))
        log_warning("task %s[%s] not given back (%s); the visibility sweep will", m->task_name,
                    m->task_id, e.msg);
}

/* Commits a transactional task's writes with its ack. True when the
 * message still needs the ordinary late ack (the task ended the
 * transaction itself); a commit that may not have happened gives the
 * message back (if it did, the row is gone and nothing runs again). */
static bool settle_transaction(struct child *c, struct message *m, bool batch)
{
    enum transaction_end end = transaction_commit(c, m, batch);
    if (end == TXN_UNKNOWN)
        give_back_uncommitted(c, m); /* rolls back nothing: the transaction has ended */
    return end == TXN_ENDED_BY_TASK;
}

/* Whether def's message is acked after its task (a transactional task's
 * ack is its commit). */
static bool task_acks_late(const struct child *c, const struct celeriac_task_def *def)
{
    return transaction_wanted(c, def) || c->cfg->acks_late || (def->flags & CELERIAC_ACKS_LATE);
}

/* Runs m, described in the slot by slot_describe. */
static void execute(struct child *c, struct message *m, const struct celeriac_task_def *def)
{
    bool txn = transaction_wanted(c, def);
    bool acks_late = task_acks_late(c, def);
    bool ignore_result = m->ignore_result || (def->flags & CELERIAC_IGNORE_RESULT);
    struct task_tuning *tune = &c->sb->shared->tasks[child_task_index(c, def)];
    double soft, hard;
    limits_for_task(c, m, def, &soft, &hard);
    atomic_fetch_add(&tune->total, 1);
    struct task_tally *tally = tally_task(c, def);
    atomic_fetch_add(&tally->started, 1);
    c->slot->time_start = time_now();
    atomic_store(&c->slot->acks_late, acks_late);
    atomic_store(&c->slot->time_limit_ms, (int64_t)(hard * 1000));
    int64_t t0 = time_mono_ms();
    atomic_store(&c->slot->task_started_ms, t0);
    atomic_store(&c->slot->state, CHILD_BUSY);
    child_title(c, "busy", m);
    atomic_store(&c->slot->reserved, 0);
    /* Acked when execution starts, as Celery, and only once the slot says
     * so: a death from here on is a lost running task, never a lost message. */
    if (!acks_late)
        settle_ack_async(c, m);

    events_task(&c->events, "task-started", m, json_object());
    bool in_lock = txn && transaction_holds_delivery(c, m);
    int rc = run_limited(c, m, def, txn, soft, hard);
    int64_t t1 = time_mono_ms();
    if (c->db.last_used_ms)
        c->db.last_used_ms = t1;
    if (in_lock && !transaction_holds_delivery(c, m)) {
        log_warning("task %s[%s]: its transaction ended with the database connection: its "
                    "writes were undone and its message is back in its queue, to run again",
                    m->task_name, m->task_id);
        finish(c, m);
        return;
    }

    if (txn && rc != CELERIAC_OK)
        transaction_rollback(c, m); /* before the failure or the retry is reported */
    const struct celeriac_retry_options *retry = task_retry_pick(c, m, def, rc);
    bool stored = true;
    /* its result held until its batch commits (--sql-batch) */
    bool batch = txn && rc == CELERIAC_OK && transaction_may_batch(c, m, chord_member(m));
    if (retry && task_retry_send(c, m, retry)) {
        atomic_fetch_add(&tally->retried, 1); /* settled by the retry */
    } else if (rc == CELERIAC_OK) {
        atomic_fetch_add(&tally->succeeded, 1);
        tally_observe(tally, (double)(t1 - t0) / 1000.0);
        /* A transactional task's result is stored before its commit, so no
         * death leaves a committed task without one; it overwrites what an
         * earlier run stored, as that run's writes were rolled back. */
        if (txn)
            m->redelivered = false;
        stored = on_success(c, m, acks_late, ignore_result, (double)(t1 - t0) / 1000.0, &batch);
    } else { /* a failure, or a retry that could not be sent (as Celery's Reject) */
        atomic_fetch_add(&tally->failed, 1);
        tally_observe(tally, (double)(t1 - t0) / 1000.0);
        stored = on_failure(c, m, def, acks_late);
    }
    if (txn && rc == CELERIAC_OK && stored && !settle_transaction(c, m, batch))
        acks_late = false; /* acked by the commit, or not this process's to ack */
    else if (txn && rc == CELERIAC_OK && !stored)
        give_back_uncommitted(c, m);
    if (acks_late && stored)
        settle_ack_async(c, m); /* after the result was confirmed stored */
    else if (acks_late)
        log_warning("task %s[%s]: its result is not stored; the message stays unacked and will "
                    "be delivered again", m->task_name, m->task_id);
    finish(c, m);
}

/* Runs a message that passed every check of its receipt: revoked? still
 * not expired? rate limit, a live connection, then the task. */
void execute_accepted(struct child *c, struct message *m, const struct celeriac_task_def *def)
{
    struct err e = {0};
    log_task_set(m->task_id, m->task_name); /* a held task runs outside intake_handle */
    if (scoreboard_is_revoked(c->sb, m->task_id)) {
        settle_revoked(c, m, false);
        return;
    }
    if (m->expires > 0 && time_now() > m->expires) { /* checked again: it may have waited */
        settle_revoked(c, m, true);
        return;
    }
    /* Its ack comes after the task, or a rate limit makes it wait: its
     * claim must stand on its own meanwhile (on the SQL transport a row
     * taken by lock is claimed now). */
    struct task_tuning *tune = &c->sb->shared->tasks[child_task_index(c, def)];
    bool rate_limited = atomic_load(&tune->rate_interval_ns) != 0;
    /* A transactional task in its message's lock (the broker on the task's
     * connection) keeps the lock: the transaction is the task's. */
    bool joins_lock = !rate_limited && transaction_wanted(c, def) &&
                      transaction_holds_delivery(c, m);
    bool late = task_acks_late(c, def) && !joins_lock;
    if ((late || rate_limited) && !settle_keep(c, m, late))
        return;
    /* Received and not started (a rate limit, a database to wait for):
     * Celery's "reserved". */
    slot_describe(c, m);
    atomic_store(&c->slot->reserved, 1);
    limits_wait_for_rate(c, def);
    /* A lock held on the task's connection: the statement that took it has
     * just checked that connection, and its health check would roll the
     * lock back (serve() checks the shared connection before each fetch). */
    if (c->cfg->db.kind != DB_NONE && !transaction_holds_delivery(c, m)) {
        /* A reconnect can take as long as an outage: make the message
         * durable first (a loss found by db_conn_ready records it from the
         * close hook). */
        if (!db_conn_is_open(&c->db) && !settle_protect(c, m)) {
            atomic_store(&c->slot->reserved, 0);
            return;
        }
        /* The connection may have died while we waited for this message;
         * a poll() finds out without a round trip. A health check that
         * round-trips waits no longer than the task's hard limit would
         * (its timer is not armed yet): a server that does not answer in
         * time counts as lost and the task runs on a new connection. */
        double soft, hard;
        limits_for_task(c, m, def, &soft, &hard);
        int64_t hard_ms = hard > 0 ? (int64_t)(hard * 1000) : 0;
        if (hard > 0 && hard_ms < 1)
            hard_ms = 1;
        if (db_conn_ready(&c->db, hard_ms, &sig_stop, &e)) {
            log_info("task %s[%s] not started: stopping while reconnecting", m->task_name,
                     m->task_id);
            if (settle_give_back(c, m, &e))
                log_warning("task %s[%s] not put back (%s)", m->task_name, m->task_id, e.msg);
            atomic_store(&c->slot->reserved, 0);
            return;
        }
        atomic_store(&c->slot->reconnects, c->db.reconnects);
        tally_db(c);
    }
    /* A broker connection lost while the database was awaited may have
     * put m back in its queue (AMQP, an SQL lock): another process runs it. */
    if (c->broker.ops->holds && !c->broker.ops->holds(&c->broker, m)) {
        log_info("task %s[%s] not started: its message went back to its queue with the broker "
                 "connection", m->task_name, m->task_id);
        atomic_store(&c->slot->reserved, 0);
        return;
    }
    execute(c, m, def);
}
