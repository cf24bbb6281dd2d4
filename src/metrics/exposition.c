/* SPDX-License-Identifier: MIT
 * metrics/exposition.c: the text exposition of the scoreboard (see
 * exposition.h). Counters are read with relaxed atomics: a scrape is a
 * snapshot of hints, each value monotonic on its own; a histogram's _count
 * is the sum of its buckets, so the two always agree.
 */
#include "common.h"
#include "metrics/exposition.h"

#include <stddef.h>

static void family(struct buf *out, const char *name, const char *type, const char *help)
{
    buf_addf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

void exposition_label_value(struct buf *out, const char *s)
{
    buf_addch(out, '"');
    for (; *s; s++) {
        if (*s == '\\' || *s == '"')
            buf_addch(out, '\\');
        if (*s == '\n')
            buf_adds(out, "\\n");
        else
            buf_addch(out, *s);
    }
    buf_addch(out, '"');
}

/* name{name="task",hostname="node" (no closing brace: le may follow) */
static void task_labels(struct buf *out, const char *metric, const struct exposition *x,
                        size_t task)
{
    buf_addf(out, "%s{name=", metric);
    exposition_label_value(out, x->task_names[task]);
    buf_adds(out, ",hostname=");
    exposition_label_value(out, x->hostname);
}

static uint64_t load_at(const struct task_tally *t, size_t offset)
{
    return atomic_load_explicit((_Atomic uint64_t *)((char *)t + offset),
                                memory_order_relaxed);
}

static const struct {
    const char *name;
    const char *help;
    size_t offset;
} task_counters[] = {
    {"celery_task_received_total", "Tasks received by the worker.",
     offsetof(struct task_tally, received)},
    {"celery_task_started_total", "Tasks started.", offsetof(struct task_tally, started)},
    {"celery_task_succeeded_total", "Tasks that succeeded.",
     offsetof(struct task_tally, succeeded)},
    {"celery_task_failed_total", "Tasks that failed.", offsetof(struct task_tally, failed)},
    {"celery_task_retried_total", "Tasks that asked for a retry (a retry message sent).",
     offsetof(struct task_tally, retried)},
    {"celery_task_revoked_total", "Tasks discarded as revoked or expired.",
     offsetof(struct task_tally, revoked)},
};

static void render_task_counters(struct buf *out, const struct exposition *x)
{
    for (size_t f = 0; f < sizeof(task_counters) / sizeof(task_counters[0]); f++) {
        family(out, task_counters[f].name, "counter", task_counters[f].help);
        for (size_t i = 0; i < x->n_tasks; i++) {
            task_labels(out, task_counters[f].name, x, i);
            buf_addf(out, "} %" PRIu64 "\n",
                     load_at(&x->sb->task_tally[i], task_counters[f].offset));
        }
    }
}

/* A bucket bound as prometheus_client writes it: "0.005", "1.0", "60.0". */
static void le_value(struct buf *out, double le)
{
    char num[32];
    snprintf(num, sizeof(num), "%g", le);
    buf_addf(out, "%s%s", num, strpbrk(num, ".e") ? "" : ".0");
}

static void render_runtime(struct buf *out, const struct exposition *x)
{
    const char *name = "celery_task_runtime_seconds";
    family(out, name, "histogram", "Task runtime of succeeded and failed tasks.");
    for (size_t i = 0; i < x->n_tasks; i++) {
        const struct task_tally *t = &x->sb->task_tally[i];
        uint64_t cum = 0;
        for (size_t b = 0; b <= TALLY_BUCKETS; b++) {
            cum += atomic_load_explicit(&t->bucket[b], memory_order_relaxed);
            task_labels(out, "celery_task_runtime_seconds_bucket", x, i);
            buf_adds(out, ",le=\"");
            if (b < TALLY_BUCKETS)
                le_value(out, tally_bucket_le[b]);
            else
                buf_adds(out, "+Inf");
            buf_addf(out, "\"} %" PRIu64 "\n", cum);
        }
        task_labels(out, "celery_task_runtime_seconds_sum", x, i);
        buf_addf(out, "} %.6f\n", (double)atomic_load(&t->runtime_us) / 1e6);
        task_labels(out, "celery_task_runtime_seconds_count", x, i);
        buf_addf(out, "} %" PRIu64 "\n", cum);
    }
}

static void render_worker(struct buf *out, const struct exposition *x)
{
    int active = 0;
    for (size_t i = 0; i < x->sb->n; i++) {
        const struct slot *s = &x->sb->slots[i];
        active += atomic_load(&s->pid) && atomic_load(&s->state) == CHILD_BUSY;
    }
    family(out, "celery_worker_up", "gauge", "1 while the worker's master process lives.");
    buf_adds(out, "celery_worker_up{hostname=");
    exposition_label_value(out, x->hostname);
    buf_adds(out, "} 1\n");
    family(out, "celery_worker_tasks_active", "gauge", "Tasks running now.");
    buf_adds(out, "celery_worker_tasks_active{hostname=");
    exposition_label_value(out, x->hostname);
    buf_addf(out, "} %d\n", active);
    const struct budget_board *b = &x->sb->shared->budget;
    if (!atomic_load(&b->checked))
        return;
    static const struct {
        const char *name;
        const char *help;
        size_t offset;
    } budget[] = {
        {"celeriac_db_connections_fleet", "celeriac sessions on the database server at the last "
         "count (every worker's, this one's included once counted).",
         offsetof(struct budget_board, fleet)},
        {"celeriac_db_connections_planned", "Database connections this worker opens at most.",
         offsetof(struct budget_board, planned)},
        {"celeriac_db_connections_available", "The database server's max_connections minus "
         "its reserved slots.", offsetof(struct budget_board, available)},
        {"celeriac_db_max_connections", "The database server's max_connections.",
         offsetof(struct budget_board, max_connections)},
    };
    for (size_t f = 0; f < sizeof(budget) / sizeof(budget[0]); f++) {
        family(out, budget[f].name, "gauge", budget[f].help);
        buf_addf(out, "%s{hostname=", budget[f].name);
        exposition_label_value(out, x->hostname);
        const _Atomic int *v = (const _Atomic int *)((const char *)b + budget[f].offset);
        buf_addf(out, "} %d\n", atomic_load(v));
    }
}

/* ---- per child slot */

typedef void child_value_fn(struct buf *out, const struct exposition *x, size_t i);

static void db_up(struct buf *out, const struct exposition *x, size_t i)
{
    const struct slot *s = &x->sb->slots[i];
    buf_addf(out, "%d", atomic_load(&s->pid) && atomic_load(&s->db_state) == DBS_UP);
}

static void db_age(struct buf *out, const struct exposition *x, size_t i)
{
    const struct slot *s = &x->sb->slots[i];
    int64_t opened = atomic_load(&s->db_opened_ms);
    bool up = atomic_load(&s->pid) && atomic_load(&s->db_state) == DBS_UP && opened;
    buf_addf(out, "%.3f", up && x->now_ms > opened ? (double)(x->now_ms - opened) / 1000.0 : 0.0);
}

static void reconnects(struct buf *out, const struct exposition *x, size_t i)
{
    buf_addf(out, "%" PRIu64, atomic_load(&x->sb->child_tally[i].reconnects));
}

static void attempts(struct buf *out, const struct exposition *x, size_t i)
{
    buf_addf(out, "%" PRIu64, atomic_load(&x->sb->child_tally[i].connect_attempts));
}

static void db_wait(struct buf *out, const struct exposition *x, size_t i)
{
    buf_addf(out, "%.3f", (double)atomic_load(&x->sb->child_tally[i].db_wait_ms) / 1000.0);
}

static void cancels(struct buf *out, const struct exposition *x, size_t i)
{
    buf_addf(out, "%" PRIu64, atomic_load(&x->sb->child_tally[i].cancels));
}

static void held(struct buf *out, const struct exposition *x, size_t i)
{
    const struct slot *s = &x->sb->slots[i];
    buf_addf(out, "%d", atomic_load(&s->pid) ? atomic_load(&s->scheduled) : 0);
}

static void rss(struct buf *out, const struct exposition *x, size_t i)
{
    pid_t pid = atomic_load(&x->sb->slots[i].pid);
    buf_addf(out, "%" PRIu64, pid && x->rss ? x->rss(pid) : 0);
}

static void restarts(struct buf *out, const struct exposition *x, size_t i)
{
    uint64_t starts = atomic_load(&x->sb->child_tally[i].starts);
    buf_addf(out, "%" PRIu64, starts ? starts - 1 : 0);
}

static const struct {
    const char *name;
    const char *type;
    const char *help;
    child_value_fn *value;
} child_families[] = {
    {"celeriac_db_connection_up", "gauge", "1 while the child's database connection is open.",
     db_up},
    {"celeriac_db_connection_age_seconds", "gauge",
     "Age of the child's open database connection (0 when down).", db_age},
    {"celeriac_db_reconnects_total", "counter", "Database re-opens after a lost connection.",
     reconnects},
    {"celeriac_db_connect_attempts_total", "counter",
     "Database connect attempts, failed or not.", attempts},
    {"celeriac_db_wait_seconds_total", "counter",
     "Time spent connecting to the database, outages included.", db_wait},
    {"celeriac_db_statements_cancelled_total", "counter",
     "Statements cancelled by a task time limit.", cancels},
    {"celeriac_messages_held", "gauge", "ETA/countdown messages the child holds unacked.", held},
    {"celeriac_child_rss_bytes", "gauge", "Resident memory of the child process.", rss},
    {"celeriac_child_restarts_total", "counter", "Processes started in the slot after its first.",
     restarts},
};

static bool child_shown(const struct exposition *x, size_t i)
{
    return (int)i < atomic_load(&x->sb->shared->pool_target) ||
           atomic_load(&x->sb->child_tally[i].starts) > 0;
}

static void render_children(struct buf *out, const struct exposition *x)
{
    for (size_t f = 0; f < sizeof(child_families) / sizeof(child_families[0]); f++) {
        family(out, child_families[f].name, child_families[f].type, child_families[f].help);
        for (size_t i = 0; i < x->sb->n; i++) {
            if (!child_shown(x, i))
                continue;
            buf_addf(out, "%s{hostname=", child_families[f].name);
            exposition_label_value(out, x->hostname);
            buf_addf(out, ",child=\"%zu\"} ", i);
            child_families[f].value(out, x, i);
            buf_addch(out, '\n');
        }
    }
}

void exposition_render(struct buf *out, const struct exposition *x)
{
    render_task_counters(out, x);
    render_runtime(out, x);
    render_worker(out, x);
    render_children(out, x);
}
