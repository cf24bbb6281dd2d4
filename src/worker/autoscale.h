/* SPDX-License-Identifier: MIT
 * worker/autoscale.h: --autoscale MAX,MIN, as Celery's autoscaler: grow the
 * pool under load, shrink it back when idle, through the pool target that
 * pool_grow / pool_shrink set. Decides from the scoreboard alone (the master
 * never sees the broker). Master only, except autoscale_parse (the CLI).
 */
#ifndef CELERIAC_WORKER_AUTOSCALE_H
#define CELERIAC_WORKER_AUTOSCALE_H

#include "worker/config.h"
#include "worker/scoreboard.h"

/* How often the pool is looked at (Celery's autoscaler: every second), and
 * in how many consecutive looks every child must be busy before it grows. */
#define AUTOSCALE_INTERVAL_MS 1000
#define AUTOSCALE_BUSY_LOOKS 2

struct autoscale {
    int max;                 /* 0: --autoscale not given, the module does nothing */
    int min;
    int64_t keepalive_ms;    /* idle this long after the pool was last full: shrink */
    int busy_looks;          /* consecutive looks with every child busy */
    int64_t next_look_ms;    /* monotonic */
    int64_t last_full_ms;    /* monotonic: the pool was last seen all busy (or grew) */
};

/* Parses "MAX,MIN" or "MAX" (MIN 1) into cfg->autoscale_max / _min, and
 * AUTOSCALE_KEEPALIVE (seconds, Celery's variable; default 30) from the
 * environment into cfg->autoscale_keepalive_ms. Returns 0, or E_CONFIG with
 * one line in e. */
int autoscale_parse(struct worker_config *cfg, const char *arg, struct err *e);

/* From cfg (off unless cfg->autoscale_max). */
void autoscale_init(struct autoscale *a, const struct worker_config *cfg);

/* Once per master loop: every AUTOSCALE_INTERVAL_MS, grows the pool target
 * by one when every child of the pool has been busy for AUTOSCALE_BUSY_LOOKS
 * looks (messages are then most likely waiting), up to max; shrinks it to
 * the busy count (at least min) once no look found the pool full for
 * keepalive_ms. Writes sb->shared->pool_target; the master's respawn_due
 * forks or retires (each child finishes its task first). */
void autoscale_tick(struct autoscale *a, struct scoreboard *sb);

#endif /* CELERIAC_WORKER_AUTOSCALE_H */
