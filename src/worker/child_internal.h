/* SPDX-License-Identifier: MIT
 * worker/child_internal.h: the state of one worker child and the functions
 * its parts share. Only the files of the child include it:
 *   child.c       its life: connections after fork, the loop, the one exit
 *   intake.c      a delivery: decode, validate, route to run / hold / settle
 *   execute.c     running an accepted message and storing its outcome
 *   task_retry.c  Celery's retry policy and the retry message
 *   settle.c      acks, results, the delivery in hand (with backoff)
 *   held.c        ETA / countdown messages held unacked until due
 *   limits.c      soft and hard time limits, rate limits
 *   recover.c     what the previous process of this slot left behind
 *   transaction.c a transactional task's writes and ack in one commit
 *   tally.c       counters for the metrics process
 */
#ifndef CELERIAC_WORKER_CHILD_INTERNAL_H
#define CELERIAC_WORKER_CHILD_INTERNAL_H

#include "backend/backend.h"
#include "broker/broker.h"
#include "control/events.h"
#include "protocol/message.h"
#include "task/context.h"
#include "util/retry.h"
#include "worker/canvas.h"
#include "worker/child.h"

struct held {                       /* an ETA message held unacked until due */
    struct message m;
    const struct celeriac_task_def *def;
};

struct child {
    const struct worker_config *cfg;
    struct scoreboard *sb;
    struct event_sender events;
    struct canvas canvas;
    struct slot *slot;
    int index;
    int deathwatch_fd;              /* read end; EOF = master gone */
    struct broker broker;
    struct backend backend;
    struct db_conn db;
    struct celeriac_process proc;
    struct celeriac_task task;
    struct held *held;              /* any number: grown as needed */
    size_t n_held;
    size_t held_cap;
    int64_t next_refresh_ms;        /* next refresh of the held messages' unacked scores */
    struct message *current;        /* the delivery being handled, if any */
    struct retry fetch_retry;       /* the fetch's failures, across loop turns */
    int64_t budget_next_ms;         /* child 0: when to count the server's sessions again
                                       (worker/budget.h); monotonic, 0 = at once */
    uint64_t queues_gen;            /* generation of the queue set the broker consumes */
    int results_held;               /* results of a batch held for its commit (BROKER_BATCH) */
    uint64_t results_held_epoch;    /* the lock transaction they belong to */
    struct {                        /* db counters already added to the slot's tally */
        unsigned reconnects;
        uint64_t attempts;
        int64_t wait_ms;
    } tallied;
};

/* Position of def in the library's task table (the scoreboard's index). */
static inline int child_task_index(const struct child *c, const struct celeriac_task_def *def)
{
    return (int)(def - c->cfg->lib.desc->tasks);
}

/* child.c */
/* True once asked to stop or when the master is gone. */
bool child_should_stop(struct child *c);
/* Sets this child's process title: "celeriac: worker child N <state>", and
 * " <task name>[<id>]" when m is given. Child only. */
void child_title(struct child *c, const char *state, const struct message *m);
/* Open the broker / result backend connection unless open, retrying with
 * backoff. 0, or E_CONN_LOST when stopping. */
int child_ensure_broker(struct child *c);
int child_ensure_backend(struct child *c);

/* intake.c: everything about one fetched delivery; settles it or hands it on. */
void intake_handle(struct child *c, struct delivery *d);

/* execute.c: runs a message that passed its receipt checks (revoked and
 * expiry are checked again: it may have waited), and settles it. */
void execute_accepted(struct child *c, struct message *m, const struct celeriac_task_def *def);

/* task_retry.c */
/* The retry options that apply to a run that ended with rc (CELERIAC_RETRY,
 * a failure with an autoretry rule, a lost connection of an idempotent
 * task), or NULL. */
const struct celeriac_retry_options *task_retry_pick(struct child *c, const struct message *m,
                                                     const struct celeriac_task_def *def, int rc);
/* Sends the retry message and stores RETRY. False when the message could
 * not be sent (the task then fails). */
bool task_retry_send(struct child *c, const struct message *m,
                     const struct celeriac_retry_options *o);

/* settle.c: each call retries with backoff while the connection is lost or
 * the server refuses (the child pulls nothing new meanwhile). */
bool settle_worth_retrying(struct child *c, int rc);
/* m is settled for good (acked; in the hand: forgotten). */
void settle_ack(struct child *c, struct message *m);
/* The same, sent without waiting for the reply. */
void settle_ack_async(struct child *c, struct message *m);
/* A delivery that will never be decoded: removed for good. */
void settle_drop(struct child *c, struct delivery *d);
/* m must outlive a long wait: made findable by any worker's recovery.
 * False when m is no longer this process's (back in its queue with a
 * closed connection): it must not be held or run here. */
bool settle_protect(struct child *c, struct message *m);
/* m's task runs with a late ack, or waits: what holds m must not depend on
 * this process keeping anything open (broker_ops.keep). False as
 * settle_protect. */
bool settle_keep(struct child *c, struct message *m, bool acks_late);
/* Settles the message the previous process of the slot left (its token). */
int settle_lost(struct child *c, enum broker_lost how, int *losses, struct err *e);
bool settle_store(struct child *c, const struct result_meta *m);
/* Stores the n results the backend holds (backend_ops.hold), retrying with
 * backoff as settle_store does; false when they could not be stored. */
bool settle_store_held(struct child *c, int n);
bool settle_store_sent(struct child *c, const struct result_meta *m);
/* Clears the slot's name of a result sent without waiting once the
 * backend has nothing unconfirmed. */
void settle_forget_confirmed(struct child *c);
void settle_confirm_results(struct child *c);
int settle_give_back(struct child *c, struct message *m, struct err *e);
bool settle_store_exception_as(struct child *c, const struct message *m, const char *status,
                               const char *exc_type, const char *exc_module, const char *text,
                               bool confirmed);
void settle_store_exception(struct child *c, const struct message *m, const char *status,
                            const char *exc_type, const char *exc_module, const char *text);
/* Discards a revoked or expired message as Celery does: REVOKED stored,
 * task-revoked sent, the delivery settled. */
void settle_revoked(struct child *c, struct message *m, bool expired);
void settle_store_invalid(struct child *c, const struct message *m, const char *exc_type,
                          const char *text);

/* Whether the child's next step after the task running now is its next
 * fetch: it is not stopping or retiring after the task, and holds no ETA
 * message that could come due first. */
bool child_fetches_next(const struct child *c);

/* held.c */
void held_add(struct child *c, struct message *m, const struct celeriac_task_def *def);
double held_next_due(const struct child *c);
void held_run_due(struct child *c);
void held_refresh(struct child *c);
void held_restore(struct child *c);

/* limits.c */
/* Installs the SIGALRM handler that acts on c's running task. */
void limits_install(struct child *c);
void limits_arm(double soft, double hard);
void limits_disarm(void);
void limits_for_task(struct child *c, const struct message *m,
                     const struct celeriac_task_def *def, double *soft, double *hard);
void limits_wait_for_rate(struct child *c, const struct celeriac_task_def *def);

/* recover.c */
void recover_lost_task(struct child *c);
/* The result the previous process of the slot sent and never saw confirmed:
 * WorkerLostError unless it arrived. */
void recover_unconfirmed_result(struct child *c);
/* What earlier processes of this slot held and never started, back on its
 * queue (with backoff until done or stopping). */
void recover_slot(struct child *c);

/* transaction.c */
/* def runs in one transaction with its ack: it is CELERIAC_TRANSACTIONAL
 * and the broker is in the task's database. */
bool transaction_wanted(const struct child *c, const struct celeriac_task_def *def);
/* True when m's row is held locked by the transaction open on the task's
 * connection (the SQL broker runs on it): no health check may roll that
 * back before the task starts, and a transactional task runs inside it. */
bool transaction_holds_delivery(const struct child *c, const struct message *m);
/* Opens m's transaction on the task's connection (or joins its lock's):
 * CELERIAC_OK, or CELERIAC_FAILED recorded as a database failure of the
 * task. */
int transaction_begin(struct child *c, const struct message *m);
enum transaction_end {
    TXN_ACKED,                   /* the writes and the ack committed together */
    TXN_ENDED_BY_TASK,           /* the task committed or rolled back itself */
    TXN_NOT_OURS,                /* the claim was lost: rolled back, someone else runs it */
    TXN_UNKNOWN,                 /* the commit failed: it may or may not have happened */
};
/* Whether m's result may wait for its batch's commit (--sql-batch): a
 * transactional task in its message's lock, with a result backend that can
 * hold results (or no result to store), and not a chord member (its part
 * is counted in Redis at once, which no rollback would undo). */
bool transaction_may_batch(const struct child *c, const struct message *m, bool chord);
/* Holds meta until the commit of the transaction m's lock is in (see
 * transaction_before_commit). False when it could not be held (store it
 * now instead). */
bool transaction_hold_result(struct child *c, const struct result_meta *meta);
/* broker_owner.before_commit: stores the results held for the transaction
 * of `epoch`, confirmed (with backoff while the backend is down); results
 * held for an earlier transaction are forgotten (it rolled back, and its
 * tasks run again). 0, or an error: the transaction must roll back. */
int transaction_before_commit(void *ctx, uint64_t epoch, struct err *e);
/* After a success: deletes m's row and commits (logging what went wrong);
 * with batch (its result held), the commit may be left to a later task of
 * the same transaction. */
enum transaction_end transaction_commit(struct child *c, struct message *m, bool batch);
/* After a failure or a retry: the task's writes are undone (m's lock, if
 * the transaction holds one, is kept). */
void transaction_rollback(struct child *c, const struct message *m);
/* A redelivered message that is the late-ack task of a child of this worker
 * that died (noted by the master; brokers without restore by tag): settled
 * as Celery settles a lost task (acked: its outcome is stored; or
 * WorkerLostError past --max-worker-lost-requeues). True when it was
 * settled; false: run it. */
bool recover_redelivered(struct child *c, struct message *m);

/* tally.c: the shared counters of the task def / the task named name
 * (NULL when no registered task has that name). */
struct task_tally *tally_task(struct child *c, const struct celeriac_task_def *def);
struct task_tally *tally_task_named(struct child *c, const char *name);
/* Adds to the slot's tally what the database connection counted since the
 * last call (reconnects, connect attempts, time spent connecting). */
void tally_db(struct child *c);

#endif /* CELERIAC_WORKER_CHILD_INTERNAL_H */
