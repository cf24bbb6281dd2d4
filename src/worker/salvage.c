/* SPDX-License-Identifier: MIT
 * worker/salvage.c: settling what dead children left when no replacement
 * will: their tasks, held messages and hands (see salvage.h).
 */
#include "common.h"
#include "util/backoff.h"
#include "util/log.h"
#include "util/proctitle.h"
#include "util/time.h"
#include "protocol/message.h"
#include "worker/salvage.h"

#include <signal.h>
#include <sys/prctl.h>

int hand_salvage(struct broker_redis *b, uint64_t settled, struct err *e)
{
    char list[264];
    int rc = broker_redis_hand_return(b, settled, list, e);
    if (rc == 1)
        log_warning("a message popped from '%s' by a process that died before starting it was "
                    "put back (%s)", list, b->hand);
    return rc;
}

struct orphans {
    char **keys;
    size_t n;
    pid_t self_master;
};

static void collect_orphan(const char *key, void *arg)
{
    struct orphans *o = arg;
    /* celeriac.hand.<node>.<pid>.<slot>: the pid is the second field from the end. */
    const char *end = strrchr(key, '.');
    const char *start = end;
    while (start && start > key && start[-1] != '.')
        start--;
    if (!end || !start || start == end)
        return;
    long pid = strtol(start, NULL, 10);
    if (pid <= 0 || pid == (long)o->self_master)
        return;
    if (kill((pid_t)pid, 0) == 0 || errno != ESRCH)
        return; /* alive (or not ours to signal): another worker's hand */
    o->keys = xrealloc(o->keys, (o->n + 1) * sizeof(*o->keys));
    o->keys[o->n++] = xstrdup(key);
}

int hand_adopt_orphans(struct broker_redis *b, const char *node, pid_t self_master, int slot,
                       struct err *e)
{
    struct orphans o = {.self_master = self_master};
    int rc = broker_redis_scan_hands(b, node, slot, collect_orphan, &o, e);
    char *own = b->hand;
    bool own_release = b->hand_release;
    for (size_t i = 0; i < o.n; i++) {
        if (!rc) {
            b->hand = o.keys[i];
            b->hand_release = false;
            int got = hand_salvage(b, 0, e);
            if (got < 0)
                rc = got;
            else if (!got) /* empty or gone: nothing to take over */
                log_debug("hand %s of a gone worker was empty", o.keys[i]);
        }
        free(o.keys[i]);
    }
    b->hand = own;
    b->hand_release = own_release;
    free(o.keys);
    return rc;
}

struct salvage {
    const struct worker_config *cfg;
    struct scoreboard *sb;
    struct broker_redis broker;
    struct backend_redis backend;   /* opened only when a result must be stored */
};

/* FAILURE WorkerLostError for an early-acked task whose child was killed,
 * in the JSON a replacement child stores (redelivered: a SUCCESS it stored
 * just before dying is kept). 0, or E_CONN_LOST. */
static int store_worker_lost(struct salvage *sv, struct slot *s, struct err *e)
{
    if (!sv->cfg->backend.enabled || !s->lost_task_id[0])
        return 0;
    if (!redis_link_is_open(&sv->backend.link) && backend_redis_open(&sv->backend, e))
        return E_CONN_LOST;
    struct result_meta meta;
    char text[128];
    salvage_worker_lost_meta(s, &meta, text, sizeof(text));
    int rc = backend_redis_store(&sv->backend, &meta, e);
    salvage_worker_lost_done(s, &meta, text, rc);
    return rc;
}

void salvage_log_restored(const struct slot *s, int reason)
{
    if (reason == LOST_UNSTARTED)
        log_warning("message %s: its child was stopped before starting it; restored to its "
                    "queue", s->lost_tag);
    else
        log_warning("Task %s[%s]: its process was stopped before it finished; restored to "
                    "its queue (%s)", s->lost_task_name, s->lost_task_id, s->lost_tag);
}

void salvage_worker_lost_meta(struct slot *s, struct result_meta *meta, char *text,
                              size_t size)
{
    int sig = atomic_load(&s->lost_signal);
    snprintf(text, size, "Worker exited prematurely: signal %d (%s).", sig,
             sig ? strsignal(sig) : "exit");
    *meta = (struct result_meta){
        .status = "FAILURE", .task_id = s->lost_task_id, .task_name = s->lost_task_name,
        .redelivered = true,
        .result = message_exception("WorkerLostError", "billiard.exceptions", text)};
}

bool salvage_unconfirmed_meta(struct slot *s, struct result_meta *meta)
{
    s->lost_unconfirmed_task_id[sizeof(s->lost_unconfirmed_task_id) - 1] = '\0';
    s->lost_unconfirmed_task_name[sizeof(s->lost_unconfirmed_task_name) - 1] = '\0';
    if (!s->lost_unconfirmed_task_id[0])
        return false;
    s->lost_task_id[sizeof(s->lost_task_id) - 1] = '\0';
    if (atomic_load(&s->lost_reason) != LOST_NONE &&
        !strcmp(s->lost_task_id, s->lost_unconfirmed_task_id)) {
        s->lost_unconfirmed_task_id[0] = '\0'; /* settled as the lost task */
        return false;
    }
    log_warning("Task %s[%s]: its process died before the result backend confirmed its "
                "result; storing WorkerLostError unless the result arrived",
                s->lost_unconfirmed_task_name, s->lost_unconfirmed_task_id);
    *meta = (struct result_meta){
        .status = "FAILURE", .task_id = s->lost_unconfirmed_task_id,
        .task_name = s->lost_unconfirmed_task_name, .redelivered = true,
        .result = message_exception("WorkerLostError", "billiard.exceptions",
                                    UNCONFIRMED_LOST_TEXT)};
    return true;
}

void salvage_unconfirmed_done(struct slot *s, struct result_meta *meta, int rc)
{
    if (!rc)
        s->lost_unconfirmed_task_id[0] = '\0';
    json_decref((json_t *)meta->result);
}

/* A result the dead child sent without reading the reply. 0, or E_CONN_LOST. */
static int store_unconfirmed(struct salvage *sv, struct slot *s, struct err *e)
{
    struct result_meta meta;
    if (!sv->cfg->backend.enabled || !salvage_unconfirmed_meta(s, &meta))
        return 0;
    int rc = redis_link_is_open(&sv->backend.link) ? 0 : backend_redis_open(&sv->backend, e);
    if (!rc)
        rc = backend_redis_store(&sv->backend, &meta, e);
    salvage_unconfirmed_done(s, &meta, rc);
    return rc;
}

void salvage_worker_lost_done(struct slot *s, struct result_meta *meta, const char *text,
                              int rc)
{
    if (!rc)
        log_error("Task %s[%s] raised WorkerLostError: %s", s->lost_task_name, s->lost_task_id,
                  text);
    json_decref((json_t *)meta->result);
}

/* What a dead child ran when no replacement will settle it (a cold
 * shutdown killed it, or it died while the worker was stopping or the pool
 * shrinking): a late-ack message goes back to its queue, as kombu restores a
 * closing channel's unacked messages; an early-acked task would stay PENDING
 * forever, so it is stored as WorkerLostError, as a replacement child does.
 * 0 when settled (or nothing can be done), or E_CONN_LOST to try again. */
static int settle_lost(struct salvage *sv, struct slot *s)
{
    int reason = atomic_load(&s->lost_reason);
    struct err e = {0};
    int rc = 0;
    s->lost_tag[sizeof(s->lost_tag) - 1] = s->lost_task_id[sizeof(s->lost_task_id) - 1] = '\0';
    s->lost_task_name[sizeof(s->lost_task_name) - 1] = '\0';
    if (reason == LOST_UNSTARTED || (reason == LOST_CRASH && atomic_load(&s->lost_acks_late))) {
        rc = broker_redis_restore(&sv->broker, s->lost_tag, false, &e);
        if (rc == BROKER_RESTORED)
            salvage_log_restored(s, reason);
    } else if (reason == LOST_CRASH) {
        rc = store_worker_lost(sv, s, &e);
    } else if (reason != LOST_NONE) {
        log_warning("Task %s[%s]: left unsettled by a child that was stopped; a late-ack "
                    "message is restored by the visibility sweep", s->lost_task_name,
                    s->lost_task_id);
    }
    if (rc < 0 && rc != E_CONN_LOST) {
        log_error("salvage: settling %s: %s", s->lost_task_id, e.msg);
        rc = 0; /* not a connection problem: retrying would not help */
    } else if (rc < 0) {
        log_error("salvage: %s", e.msg);
        return rc;
    }
    atomic_store(&s->lost_reason, LOST_NONE);
    return 0;
}

int held_board_restore(struct broker_redis *b, struct held_board *board, int *restored,
                       struct err *e)
{
    int n = atomic_load(&board->n);
    *restored = 0;
    for (int i = 0; i < n && i < HELD_BOARD_MAX; i++) {
        char *tag = board->e[i].tag;
        tag[sizeof(board->e[i].tag) - 1] = '\0';
        struct err re = {0};
        int rc = broker_redis_restore(b, tag, false, &re);
        if (rc == E_CONN_LOST) {
            if (e)
                *e = re;
            return rc; /* the restores done are compare-and-swap: redoing them is safe */
        }
        if (rc < 0)
            log_warning("held message %s not restored (%s); the visibility sweep will", tag,
                        re.msg);
        *restored += rc == BROKER_RESTORED;
    }
    atomic_store(&board->n, 0);
    return 0;
}

/* The ETA messages a dead child held: back to their queues now. */
static int restore_held_of(struct salvage *sv, struct held_board *board)
{
    int restored;
    struct err e = {0};
    int rc = held_board_restore(&sv->broker, board, &restored, &e);
    if (rc) {
        log_error("salvage: %s", e.msg);
        return rc;
    }
    if (restored)
        log_warning("restored %d ETA message(s) held by a stopped child", restored);
    return 0;
}

/* Everything slot i's dead child left: its task, its held messages, its
 * hand. 0, or E_CONN_LOST when the salvage must try again. */
static int salvage_slot(struct salvage *sv, int i)
{
    struct slot *s = &sv->sb->slots[i];
    struct err ue = {0};
    int rc = store_unconfirmed(sv, s, &ue);
    if (rc == E_CONN_LOST) {
        log_error("salvage: %s", ue.msg);
        return rc;
    } else if (rc) {
        log_error("salvage: storing WorkerLostError for %s: %s", s->lost_unconfirmed_task_id,
                  ue.msg);
    }
    rc = settle_lost(sv, s);
    if (!rc)
        rc = restore_held_of(sv, &sv->sb->held[i]);
    if (!rc && !sv->cfg->broker.record_unacked) {
        broker_redis_set_hand(&sv->broker, sv->cfg->node_name, getppid(), i);
        struct err e = {0};
        rc = hand_salvage(&sv->broker, atomic_load(&s->lost_hand_settled), &e);
        if (rc < 0)
            log_error("salvage: %s", e.msg);
        rc = rc == E_CONN_LOST ? rc : 0;
    }
    if (!rc)
        atomic_store(&s->hand_check, 0);
    return rc;
}

void salvage_main(const struct worker_config *cfg, struct scoreboard *sb)
{
    log_set_process("Salvage");
    prctl(PR_SET_NAME, "celeriac:salvage", 0, 0, 0);
    proctitle_set("celeriac: salvage");
    if (cfg->broker.kind != BROKER_REDIS)
        salvage_transport_main(cfg, sb);
    struct salvage sv = {.cfg = cfg, .sb = sb};
    broker_redis_init(&sv.broker, &cfg->broker);
    backend_redis_init(&sv.backend, &cfg->backend);
    struct backoff bo;
    backoff_init(&bo, 100, 2000);
    int64_t give_up = time_mono_ms() + SALVAGE_PATIENCE_MS;
    int left;
    do {
        left = 0;
        struct err e = {0};
        if (!redis_link_is_open(&sv.broker.link) && broker_redis_open(&sv.broker, &e)) {
            left = 1;
            log_error("salvage: %s", e.msg);
        }
        for (int i = 0; i < (int)sb->n && redis_link_is_open(&sv.broker.link); i++) {
            struct slot *s = &sb->slots[i];
            if (!atomic_load(&s->pid) && atomic_load(&s->hand_check))
                left += salvage_slot(&sv, i) == E_CONN_LOST;
        }
        if (left && time_mono_ms() < give_up)
            time_sleep_ms(backoff_next(&bo), NULL);
    } while (left && time_mono_ms() < give_up);
    if (left)
        log_critical("salvage: the broker stayed unreachable; what %d dead children left is "
                     "left in Redis for the next start of %s or the visibility sweep", left,
                     cfg->node_name);
    broker_redis_release(&sv.broker, NULL);
    backend_redis_release(&sv.backend, NULL);
    _exit(left ? EXIT_FAILED : EXIT_OK);
}
