/* SPDX-License-Identifier: MIT
 * worker/salvage.c: returning unstarted messages left in dead children's
 * hands (see salvage.h).
 */
#include "common.h"
#include "util/backoff.h"
#include "util/log.h"
#include "util/time.h"
#include "worker/salvage.h"

#include <signal.h>
#include <sys/prctl.h>

/* The salvage process gives up on an unreachable broker after this long:
 * it runs while the worker stops, which must not hang. */
#define SALVAGE_PATIENCE_MS 10000

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

void salvage_main(const struct worker_config *cfg, struct scoreboard *sb)
{
    log_set_process("Salvage");
    prctl(PR_SET_NAME, "celeriac:salvage", 0, 0, 0);
    struct broker_redis b;
    broker_redis_init(&b, &cfg->broker);
    struct backoff bo;
    backoff_init(&bo, 100, 2000);
    int64_t give_up = time_mono_ms() + SALVAGE_PATIENCE_MS;
    int left;
    do {
        left = 0;
        struct err e = {0};
        if (!redis_link_is_open(&b.link) && broker_redis_open(&b, &e)) {
            left = 1;
            log_error("salvage: %s", e.msg);
        }
        for (int i = 0; i < (int)sb->n && redis_link_is_open(&b.link); i++) {
            struct slot *s = &sb->slots[i];
            if (atomic_load(&s->pid) || !atomic_load(&s->hand_check))
                continue;
            broker_redis_set_hand(&b, cfg->node_name, getppid(), i);
            struct err re = {0};
            int rc = hand_salvage(&b, atomic_load(&s->lost_hand_settled), &re);
            if (rc >= 0) {
                atomic_store(&s->hand_check, 0);
            } else {
                log_error("salvage: %s", re.msg);
                left += rc == E_CONN_LOST;
            }
        }
        if (left && time_mono_ms() < give_up)
            time_sleep_ms(backoff_next(&bo), NULL);
    } while (left && time_mono_ms() < give_up);
    if (left)
        log_critical("salvage: the broker stayed unreachable; the hands of %d dead children "
                     "are left in Redis for the next start of %s", left, cfg->node_name);
    broker_redis_release(&b, NULL);
    _exit(left ? EXIT_FAILED : EXIT_OK);
}
