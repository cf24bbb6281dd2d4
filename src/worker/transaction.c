/* SPDX-License-Identifier: MIT
 * worker/transaction.c: transactional tasks (CELERIAC_TRANSACTIONAL, see
 * broker/sql.h). The child opens a transaction on the task's connection
 * before the task runs; a success deletes the message's row in it and
 * commits, so the task's writes and its ack happen together or not at all;
 * a failure or a retry rolls the writes back and the message is settled as
 * any late-ack message. A death before the commit leaves the row claimed
 * and the writes undone: the slot's next process gives it back (counting
 * the death, as for reject_on_worker_lost) and it runs again.
 */
#include "common.h"
#include "broker/sql.h"
#include "worker/child_internal.h"

bool transaction_wanted(const struct child *c, const struct celeriac_task_def *def)
{
    return c->cfg->transactional && (def->flags & CELERIAC_TRANSACTIONAL);
}

int transaction_begin(struct child *c)
{
    struct err e = {0};
    if (!sql_txn_begin(&c->db, &e))
        return CELERIAC_OK;
    char text[ERR_MSG_MAX + 64];
    snprintf(text, sizeof(text), "could not begin the task's transaction: %s", e.msg);
    return celeriac_fail_db(&c->task, text);
}

enum transaction_end transaction_commit(struct child *c, const struct message *m)
{
    if (!sql_txn_is_open(&c->db)) {
        log_warning("task %s[%s] is transactional but ended the transaction itself: its "
                    "writes and its ack were not one commit", m->task_name, m->task_id);
        return TXN_ENDED_BY_TASK;
    }
    struct err e = {0};
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

void transaction_rollback(struct child *c)
{
    sql_txn_rollback(&c->db);
}
