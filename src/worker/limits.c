/* SPDX-License-Identifier: MIT
 * worker/limits.c: a child's soft and hard time limits (one ITIMER_REAL and
 * its SIGALRM handler) and the per-task rate limit shared by the children.
 */
#include "common.h"
#include "util/time.h"
#include "worker/child_internal.h"

#include <sys/time.h>

/* ---- time limits
 * One ITIMER_REAL per child: armed for the soft limit (then re-armed for the
 * rest of the hard limit) or for the hard limit. The handler only cancels the
 * running statement and sets flags; at the hard limit the child kills itself,
 * as Celery's pool kills a child, and its replacement reports the task. */

static struct child *timer_child;          /* the child the handler acts on */
static volatile sig_atomic_t timer_phase;  /* 1: soft pending, 2: hard pending */
static struct timeval timer_rest;          /* hard minus soft, for re-arming */

static void on_timer(int sig)
{
    UNUSED(sig);
    int saved = errno;
    struct child *c = timer_child;
    if (c && db_conn_is_open(&c->db)) {
        db_conn_cancel(&c->db);
        /* lock-free, so async-signal-safe */
        atomic_fetch_add(&c->sb->child_tally[c->index].cancels, 1);
    }
    if (timer_phase == 1) {
        task_soft_limit_hit = 1;
        if (timer_rest.tv_sec || timer_rest.tv_usec) {
            struct itimerval it = {.it_value = timer_rest};
            timer_phase = 2;
            setitimer(ITIMER_REAL, &it, NULL);
        } else {
            timer_phase = 0;
        }
    } else if (timer_phase == 2 && c) {
        atomic_store(&c->slot->hard_limit_hit, 1);
        kill(getpid(), SIGKILL);
    }
    errno = saved;
}

static struct timeval seconds_tv(double s)
{
    struct timeval tv = {.tv_sec = (time_t)s, .tv_usec = (suseconds_t)((s - (double)(time_t)s) * 1e6)};
    if (!tv.tv_sec && !tv.tv_usec)
        tv.tv_usec = 1;
    return tv;
}

void limits_install(struct child *c)
{
    timer_child = c;
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_timer;
    sigfillset(&sa.sa_mask);
    sigaction(SIGALRM, &sa, NULL);
}

void limits_arm(double soft, double hard)
{
    struct itimerval it = {{0, 0}, {0, 0}};
    timer_rest = (struct timeval){0, 0};
    if (soft > 0 && (hard <= 0 || soft < hard)) {
        it.it_value = seconds_tv(soft);
        if (hard > 0)
            timer_rest = seconds_tv(hard - soft);
        timer_phase = 1;
    } else if (hard > 0) {
        it.it_value = seconds_tv(hard);
        timer_phase = 2;
    } else {
        return;
    }
    setitimer(ITIMER_REAL, &it, NULL);
}

void limits_disarm(void)
{
    if (!timer_phase)
        return; /* nothing armed, or it already fired and ended */
    struct itimerval it = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &it, NULL);
    timer_phase = 0;
}

/* Rate limit (remote control `rate_limit`): a generic cell rate algorithm
 * over one shared timestamp per task, so all children of the worker together
 * start at most one run per interval, as Celery's per-worker limit. */
void limits_wait_for_rate(struct child *c, const struct celeriac_task_def *def)
{
    struct task_tuning *t = &c->sb->shared->tasks[child_task_index(c, def)];
    int64_t interval = atomic_load(&t->rate_interval_ns);
    if (!interval)
        return;
    int64_t now = time_mono_ms() * 1000000, next = atomic_load(&t->rate_next_ns), start;
    do {
        start = next > now ? next : now;
    } while (!atomic_compare_exchange_weak(&t->rate_next_ns, &next, start + interval));
    if (start > now)
        time_sleep_ms((start - now + 999999) / 1000000, NULL);
}

/* The task's time limits in seconds (0: none): the message's, else the
 * ones set at run time (control command), else the worker's flags. */
void limits_for_task(struct child *c, const struct message *m,
                        const struct celeriac_task_def *def, double *soft, double *hard)
{
    struct task_tuning *tune = &c->sb->shared->tasks[child_task_index(c, def)];
    int64_t tuned_hard = atomic_load(&tune->hard_limit_ms), tuned_soft = atomic_load(&tune->soft_limit_ms);
    *hard = m->time_limit > 0 ? m->time_limit
            : tuned_hard      ? (double)tuned_hard / 1000.0
                              : c->cfg->time_limit;
    *soft = m->soft_time_limit > 0 ? m->soft_time_limit
            : tuned_soft           ? (double)tuned_soft / 1000.0
                                   : c->cfg->soft_time_limit;
}
