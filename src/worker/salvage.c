/* SPDX-License-Identifier: MIT
 * worker/salvage.c: returning unstarted messages of dead children (see
 * salvage.h).
 */
#include "common.h"
#include "util/backoff.h"
#include "util/log.h"
#include "util/time.h"
#include "worker/salvage.h"
#include "worker/signals.h"

#include <sys/prctl.h>

/* The salvage process gives up on an unreachable broker after this long:
 * it runs while the worker stops, which must not hang. */
#define SALVAGE_PATIENCE_MS 10000

int parcel_return(struct broker_redis *b, struct scoreboard *sb, int i, struct err *e)
{
    struct slot *s = &sb->slots[i];
    const struct parcel *p = &sb->parcels[i];
    if (p->len > sizeof(p->body) || !memchr(p->list, '\0', sizeof(p->list))) {
        atomic_store(&s->lost_parcel, 0);
        return err_set(e, E_PROTOCOL, "slot %d's parcel is corrupt (%u bytes); dropped", i,
                       (unsigned)p->len);
    }
    int rc = broker_redis_return(b, p->list, p->body, p->len, s->lost_tag, e);
    if (!rc) {
        log_warning("a message popped from '%s' by a child that died before starting it was "
                    "put back (%u bytes, tag %.40s)", p->list, (unsigned)p->len,
                    s->lost_tag[0] ? s->lost_tag : "unknown");
        atomic_store(&s->lost_parcel, 0);
    }
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
            if (atomic_load(&sb->slots[i].pid) || !atomic_load(&sb->slots[i].lost_parcel))
                continue;
            struct err re = {0};
            int rc = parcel_return(&b, sb, i, &re);
            if (rc)
                log_error("salvage: %s", re.msg);
            if (rc == E_CONN_LOST)
                left++;
        }
        if (left && time_mono_ms() < give_up)
            time_sleep_ms(backoff_next(&bo), NULL);
    } while (left && time_mono_ms() < give_up);
    for (int i = 0; left && i < (int)sb->n; i++)
        if (!atomic_load(&sb->slots[i].pid) && atomic_load(&sb->slots[i].lost_parcel))
            log_critical("a message popped from '%s' by a dead child could not be put back: "
                         "the broker stayed unreachable", sb->parcels[i].list);
    broker_redis_release(&b, NULL);
    _exit(left ? EXIT_FAILED : EXIT_OK);
}
