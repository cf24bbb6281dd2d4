/* SPDX-License-Identifier: MIT
 * worker/autoscale.c: the --autoscale policy (see autoscale.h). Celery's
 * autoscaler counts the requests its consumer has reserved; celeriac's
 * children fetch for themselves, so "every child busy, look after look"
 * stands in for "messages wait". It forks and stops nothing itself.
 */
#include "common.h"
#include "util/log.h"
#include "util/time.h"
#include "worker/autoscale.h"

#define AUTOSCALE_MAX_CHILDREN 4096 /* as --max-concurrency */

static bool parse_int(const char *s, char **end, long lo, long hi, long *out)
{
    errno = 0;
    long v = strtol(s, end, 10);
    if (errno || *end == s || v < lo || v > hi)
        return false;
    *out = v;
    return true;
}

int autoscale_parse(struct worker_config *cfg, const char *arg, struct err *e)
{
    char *end;
    long max, min = 1;
    if (!parse_int(arg, &end, 1, AUTOSCALE_MAX_CHILDREN, &max) ||
        (*end == ',' && !parse_int(end + 1, &end, 1, AUTOSCALE_MAX_CHILDREN, &min)) || *end)
        return err_set(e, E_CONFIG, "--autoscale wants MAX,MIN (1..%d children), got '%s'",
                       AUTOSCALE_MAX_CHILDREN, arg);
    if (min > max)
        return err_set(e, E_CONFIG, "--autoscale %s: MIN is larger than MAX", arg);
    cfg->autoscale_max = (int)max;
    cfg->autoscale_min = (int)min;
    cfg->autoscale_keepalive_ms = 30000;
    const char *v = getenv("AUTOSCALE_KEEPALIVE");
    if (v && *v) {
        double s = strtod(v, &end);
        if (*end || !(s >= 0) || s > 86400 * 365)
            return err_set(e, E_CONFIG, "AUTOSCALE_KEEPALIVE wants seconds, got '%s'", v);
        cfg->autoscale_keepalive_ms = (int64_t)(s * 1000);
    }
    return 0;
}

void autoscale_init(struct autoscale *a, const struct worker_config *cfg)
{
    memset(a, 0, sizeof(*a));
    a->max = cfg->autoscale_max;
    a->min = cfg->autoscale_min;
    a->keepalive_ms = cfg->autoscale_keepalive_ms;
    a->last_full_ms = time_mono_ms();
}

void autoscale_tick(struct autoscale *a, struct scoreboard *sb)
{
    int64_t now = time_mono_ms();
    if (!a->max || now < a->next_look_ms)
        return;
    a->next_look_ms = now + AUTOSCALE_INTERVAL_MS;
    int target = atomic_load(&sb->shared->pool_target);
    int busy = 0, up = 0;
    for (int i = 0; i < target && (size_t)i < sb->n; i++) {
        int state = atomic_load(&sb->slots[i].state);
        up += state == CHILD_IDLE || state == CHILD_BUSY;
        busy += state == CHILD_BUSY;
    }
    if (up == target && busy == target) {
        a->last_full_ms = now;
        if (++a->busy_looks >= AUTOSCALE_BUSY_LOOKS && target < a->max && (size_t)target < sb->n) {
            a->busy_looks = 0;
            atomic_store(&sb->shared->pool_target, target + 1);
            log_info("autoscale: every child busy; growing the pool to %d", target + 1);
        }
        return;
    }
    a->busy_looks = 0;
    int want = busy > a->min ? busy : a->min;
    if (want < target && now - a->last_full_ms >= a->keepalive_ms) {
        atomic_store(&sb->shared->pool_target, want);
        log_info("autoscale: idle for %.0f s; shrinking the pool to %d",
                 (double)(now - a->last_full_ms) / 1000.0, want);
        a->last_full_ms = now; /* the next shrink waits a keepalive again */
    }
}
