/* SPDX-License-Identifier: MIT
 * worker/transaction.c: transactional tasks (CELERIAC_TRANSACTIONAL, see
 * broker/sql.h). The child opens a transaction on the task's connection
 * before the task runs; a success deletes the message's row in it and
 * commits, so the task's writes and its ack happen together or not at all;
 * a failure or a retry rolls the writes back and the message is settled as
 * any late-ack message. A death before the commit leaves the row claimed
 * and the writes undone: the slot's next process gives it back (counting
 * the death, as for reject_on_worker_lost) and it runs again.
 *
 * On PostgreSQL the broker runs on the task's connection
 * (worker_config.broker_shares_db), so the transaction that locked the
 * message (broker/sql_store.h, the lock path) is the task's: no claim, no
 * BEGIN of its own; a failure rolls back to the savepoint the lock set, and
 * the ack's DELETE and COMMIT commit the writes. A death, or a lost
 * connection, rolls everything back and leaves the row in its queue as it
 * was (the slot's next process claims it to count the death).
 */
#include "common.h"
#include "broker/sql.h"
#include "worker/child_internal.h"

bool transaction_wanted(const struct child *c, const struct celeriac_task_def *def)
{
    return c->cfg->transactional && (def->flags & CELERIAC_TRANSACTIONAL);
}

bool transaction_holds_delivery(const struct child *c, const struct message *m)
{
    return c->cfg->broker_shares_db && sql_broker_holds_in_task_txn(&c->broker, m);
}

int transaction_begin(struct child *c, const struct message *m)
{
    if (transaction_holds_delivery(c, m))
        return CELERIAC_OK; /* inside the lock's transaction, after its savepoint */
    struct err e = {0};
    if (!sql_txn_begin(&c->db, &e))
        return CELERIAC_OK;
    char text[ERR_MSG_MAX + 64];
    snprintf(text, sizeof(text), "could not begin the task's transaction: %s", e.msg);
    return celeriac_fail_db(&c->task, text);
}

bool transaction_may_batch(const struct child *c, const struct message *m, bool chord)
{
    return !chord && c->cfg->broker.sql_batch > 1 && transaction_holds_delivery(c, m) &&
           (!c->cfg->backend.enabled || c->backend.ops->hold);
}

/* Forgets the results held for a transaction that did not commit. */
static void forget_held(struct child *c)
{
    if (c->results_held)
        c->backend.ops->drop_held(&c->backend);
    c->results_held = 0;
}

bool transaction_hold_result(struct child *c, const struct result_meta *meta)
{
    uint64_t epoch = sql_broker_txn_epoch(&c->broker);
    if (c->results_held_epoch != epoch)
        forget_held(c);
    if (!c->cfg->backend.enabled)
        return true;
    struct err e = {0};
    if (c->backend.ops->hold(&c->backend, meta, &e))
        return false;
    c->results_held++;
    c->results_held_epoch = epoch;
    return true;
}

int transaction_before_commit(void *ctx, uint64_t epoch, struct err *e)
{
    struct child *c = ctx;
    if (!c->results_held)
        return 0;
    if (c->results_held_epoch != epoch) {
        forget_held(c);
        return 0;
    }
    int n = c->results_held;
    bool stored = settle_store_held(c, n);
    forget_held(c);
    if (!stored)
        return err_set(e, E_PROTOCOL, "the results of %d transactional task(s) could not be "
                       "stored before their commit", n);
    return 0;
}

enum transaction_end transaction_commit(struct child *c, struct message *m, bool batch)
{
    if (!sql_txn_is_open(&c->db)) {
        log_warning("task %s[%s] is transactional but ended the transaction itself: its "
                    "writes and its ack were not one commit", m->task_name, m->task_id);
        /* whatever its batch's earlier tasks held is decided now: stored */
        struct err e = {0};
        if (c->results_held && transaction_before_commit(c, c->results_held_epoch, &e))
            log_error("%s", e.msg);
        return TXN_ENDED_BY_TASK;
    }
    struct err e = {0};
    if (transaction_holds_delivery(c, m)) {
        /* the ack of the lock: the row's DELETE and the COMMIT (and the
         * next row's lock, in the same round trip, when nothing else runs
         * on this connection before the next fetch) */
        unsigned flags = child_fetches_next(c) ? BROKER_TAKE_NEXT : 0;
        if (batch && flags)
            flags |= BROKER_BATCH;
        if (!c->broker.ops->ack(&c->broker, m, flags, &e))
            return TXN_ACKED;
        log_error("task %s[%s]: committing its writes with its ack failed (%s); if the commit "
                  "was lost before it happened, the message runs again", m->task_name,
                  m->task_id, e.msg);
        return TXN_UNKNOWN;
    }
    int rc = sql_txn_commit_acking(&c->db, m->delivery_tag, &e);
    if (rc > 0)
        return TXN_ACKED;
    if (rc == 0) {
        log_warning("task %s[%s]: its message was no longer this process's (given back by "
                    "the visibility timeout?): its writes were rolled back, and whoever holds "
                    "it runs it", m->task_name, m->task_id);
        return TXN_NOT_OURS;
    }
    log_error("task %s[%s]: committing its writes with its ack failed (%s); if the commit "
              "was lost before it happened, the message runs again", m->task_name, m->task_id,
              e.msg);
    return TXN_UNKNOWN;
}

void transaction_rollback(struct child *c, const struct message *m)
{
    if (!transaction_holds_delivery(c, m)) {
        sql_txn_rollback(&c->db);
        return;
    }
    /* the lock must outlast the writes: its row is settled next */
    struct err e = {0};
    if (sql_txn_rollback_to_task(&c->db, &e))
        log_warning("task %s[%s]: its writes could not be rolled back apart from its message's "
                    "lock (%s)", m->task_name, m->task_id, e.msg);
}
