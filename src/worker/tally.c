/* SPDX-License-Identifier: MIT
 * worker/tally.c: the runtime histogram's buckets (see tally.h), and the
 * child's side of the counting (see child_internal.h).
 */
#include "common.h"
#include "worker/child_internal.h"
#include "worker/tally.h"

const double tally_bucket_le[TALLY_BUCKETS] = {
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 30.0, 60.0,
};

void tally_observe(struct task_tally *t, double secs)
{
    if (!(secs >= 0))
        secs = 0;
    size_t i = 0;
    while (i < TALLY_BUCKETS && secs > tally_bucket_le[i])
        i++;
    atomic_fetch_add(&t->bucket[i], 1);
    atomic_fetch_add(&t->runtime_us, (uint64_t)(secs * 1e6 + 0.5));
}

struct task_tally *tally_task(struct child *c, const struct celeriac_task_def *def)
{
    return &c->sb->task_tally[child_task_index(c, def)];
}

struct task_tally *tally_task_named(struct child *c, const char *name)
{
    const struct celeriac_task_def *def = name ? library_find(&c->cfg->lib, name) : NULL;
    return def ? tally_task(c, def) : NULL;
}

void tally_db(struct child *c)
{
    struct child_tally *t = &c->sb->child_tally[c->index];
    if (c->db.reconnects > c->tallied.reconnects)
        atomic_fetch_add(&t->reconnects, c->db.reconnects - c->tallied.reconnects);
    if (c->db.attempts > c->tallied.attempts)
        atomic_fetch_add(&t->connect_attempts, c->db.attempts - c->tallied.attempts);
    if (c->db.wait_ms > c->tallied.wait_ms)
        atomic_fetch_add(&t->db_wait_ms, (uint64_t)(c->db.wait_ms - c->tallied.wait_ms));
    c->tallied.reconnects = c->db.reconnects;
    c->tallied.attempts = c->db.attempts;
    c->tallied.wait_ms = c->db.wait_ms;
}
