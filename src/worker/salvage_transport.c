/* SPDX-License-Identifier: MIT
 * worker/salvage_transport.c: the salvage process on a transport other than
 * Redis, through broker.h and backend.h alone. A dead child of a slot no
 * replacement will take (a cold shutdown, a shrinking pool) leaves the task
 * it was running, the message it had claimed and not started, and the ETA
 * messages it held; this settles them as that replacement would have.
 *
 * On the SQL transport the claims would otherwise stay invisible until some
 * worker's visibility sweep; on AMQP the server requeued the dead child's
 * deliveries when its connection closed, so only an early-acked task is left:
 * it gets its WorkerLostError, which would otherwise never be stored.
 */
#include "common.h"
#include "backend/backend.h"
#include "broker/broker.h"
#include "util/backoff.h"
#include "util/log.h"
#include "util/time.h"
#include "protocol/message.h"
#include "worker/salvage.h"

#include <string.h>

struct transport_salvage {
    const struct worker_config *cfg;
    struct scoreboard *sb;
    int index;                   /* the slot being settled */
    struct broker broker;        /* as the slot's own child would hold it */
    bool broker_wanted;          /* opened: something to restore, or rpc:// results */
    struct backend backend;      /* opened only when a result must be stored */
    bool backend_open;
};

static int open_slot(struct transport_salvage *ts, struct err *e)
{
    const struct worker_config *cfg = ts->cfg;
    struct broker_owner owner = {.node = cfg->node_name, .master_pid = getppid(),
                                 .index = ts->index, .slot = &ts->sb->slots[ts->index],
                                 .held_board = &ts->sb->held[ts->index],
                                 .sweep_interval_s = cfg->sweep_interval_s,
                                 .visibility_timeout = cfg->visibility_timeout};
    if (broker_init(&ts->broker, &cfg->broker, &owner, e))
        return -EINVAL;
    backend_init(&ts->backend, &cfg->backend, &ts->broker);
    /* Without restore by tag (AMQP) the broker is wanted only by rpc://. */
    ts->broker_wanted = broker_has(&ts->broker, BROKER_CAP_RESTORE_BY_TAG) ||
                        (cfg->backend.enabled && cfg->backend.kind == BACKEND_RPC);
    return ts->broker_wanted ? ts->broker.ops->open(&ts->broker, e) : 0;
}

static void close_slot(struct transport_salvage *ts)
{
    ts->backend.ops->release(&ts->backend);
    ts->broker.ops->release(&ts->broker);
    ts->backend_open = false;
}

/* FAILURE WorkerLostError for an early-acked task whose child was killed,
 * as its replacement would store it (redelivered: a SUCCESS stored just
 * before the death is kept). 0, or a negative code. */
static int store_worker_lost(struct transport_salvage *ts, struct slot *s, struct err *e)
{
    if (!ts->cfg->backend.enabled || !s->lost_task_id[0])
        return 0;
    if (!ts->backend_open) {
        int rc = ts->backend.ops->open(&ts->backend, e);
        if (rc)
            return rc;
        ts->backend_open = true;
    }
    struct result_meta meta;
    char text[128];
    salvage_worker_lost_meta(s, &meta, text, sizeof(text));
    int rc = ts->backend.ops->store(&ts->backend, &meta, 0, e);
    salvage_worker_lost_done(s, &meta, text, rc);
    return rc;
}

/* A result the dead child sent without reading the reply. 0, or a
 * negative code. */
static int store_unconfirmed(struct transport_salvage *ts, struct slot *s, struct err *e)
{
    struct result_meta meta;
    if (!ts->cfg->backend.enabled || !salvage_unconfirmed_meta(s, &meta))
        return 0;
    int rc = 0;
    if (!ts->backend_open && !(rc = ts->backend.ops->open(&ts->backend, e)))
        ts->backend_open = true;
    if (!rc)
        rc = ts->backend.ops->store(&ts->backend, &meta, 0, e);
    salvage_unconfirmed_done(s, &meta, rc);
    return rc;
}

/* The task (or claimed message) the slot's dead child left. */
static int settle_lost_task(struct transport_salvage *ts, struct slot *s, struct err *e)
{
    int reason = atomic_load(&s->lost_reason);
    bool by_tag = broker_has(&ts->broker, BROKER_CAP_RESTORE_BY_TAG);
    bool late = atomic_load(&s->lost_acks_late);
    s->lost_tag[sizeof(s->lost_tag) - 1] = s->lost_task_id[sizeof(s->lost_task_id) - 1] = '\0';
    s->lost_task_name[sizeof(s->lost_task_name) - 1] = '\0';
    int rc = 0;
    if (by_tag && (reason == LOST_UNSTARTED || (reason == LOST_CRASH && late))) {
        rc = ts->broker.ops->settle_lost(&ts->broker, s->lost_tag, BROKER_LOST_RESTORE, 0, NULL,
                                         e);
        if (rc == BROKER_RESTORED)
            salvage_log_restored(s, reason);
    } else if (reason == LOST_CRASH && !late) {
        rc = store_worker_lost(ts, s, e);
    } else if (reason != LOST_NONE && by_tag) {
        log_warning("Task %s[%s]: left unsettled by a child that was stopped; a late-ack "
                    "message is restored by the visibility sweep", s->lost_task_name,
                    s->lost_task_id);
    } /* else the server requeued what the closed connection held */
    if (rc < 0)
        return rc;
    atomic_store(&s->lost_reason, LOST_NONE);
    return 0;
}

/* Everything slot i's dead child left. 0, or a negative code with e set. */
static int salvage_slot(struct transport_salvage *ts, int i, struct err *e)
{
    ts->index = i;
    struct slot *s = &ts->sb->slots[i];
    int rc = open_slot(ts, e);
    if (rc == -EINVAL)
        return rc; /* nothing set up */
    if (!rc)
        rc = store_unconfirmed(ts, s, e);
    if (!rc)
        rc = settle_lost_task(ts, s, e);
    if (!rc && ts->broker_wanted)
        rc = ts->broker.ops->recover_slot(&ts->broker, e);
    if (!rc && ts->backend_open)
        ts->backend.ops->leave(&ts->backend);
    close_slot(ts);
    if (rc >= 0)
        atomic_store(&s->hand_check, 0);
    return rc < 0 ? rc : 0;
}

void salvage_transport_main(const struct worker_config *cfg, struct scoreboard *sb)
{
    struct transport_salvage ts = {.cfg = cfg, .sb = sb};
    struct backoff bo;
    backoff_init(&bo, 100, 2000);
    int64_t give_up = time_mono_ms() + SALVAGE_PATIENCE_MS;
    int left;
    bool reported = false;       /* one line per run, not per attempt */
    do {
        left = 0;
        for (int i = 0; i < (int)sb->n; i++) {
            struct slot *s = &sb->slots[i];
            if (atomic_load(&s->pid) || !atomic_load(&s->hand_check))
                continue;
            struct err e = {0};
            int rc = salvage_slot(&ts, i, &e);
            if (rc == -EINVAL || rc == E_PROTOCOL) {
                log_error("salvage: child %d: %s", i, e.msg);
                atomic_store(&s->hand_check, 0); /* retrying would not help */
            } else if (rc) {
                if (!reported)
                    log_error("salvage: child %d: %s; retrying for %d s", i, e.msg,
                              SALVAGE_PATIENCE_MS / 1000);
                reported = true;
                left++;
            }
        }
        if (left && time_mono_ms() < give_up)
            time_sleep_ms(backoff_next(&bo), NULL);
    } while (left && time_mono_ms() < give_up);
    if (left)
        log_critical("salvage: the broker stayed unreachable; what %d dead children left is "
                     "restored by the visibility sweep of the next worker", left);
    _exit(left ? EXIT_FAILED : EXIT_OK);
}
