/* SPDX-License-Identifier: MIT
 * metrics/exposition.h: the scoreboard rendered in Prometheus's text
 * exposition format 0.0.4, named as celery-exporter names Celery's metrics
 * (celery_*), plus what only celeriac knows (celeriac_*, per child slot).
 * Reads shared memory only; no I/O but what the rss callback does.
 */
#ifndef CELERIAC_METRICS_EXPOSITION_H
#define CELERIAC_METRICS_EXPOSITION_H

#include "util/buf.h"
#include "worker/scoreboard.h"

/* The Content-Type of what exposition_render writes. */
#define EXPOSITION_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

struct exposition {
    const struct scoreboard *sb;    /* borrowed: the worker's scoreboard */
    const char *hostname;           /* the node name, label hostname */
    const char *const *task_names;  /* borrowed: n_tasks names, label name */
    size_t n_tasks;                 /* the library's tasks, at most sb->n_tasks (the table
                                       has room for those a reload may add) */
    int64_t now_ms;                 /* monotonic time of the scrape */
    uint64_t (*rss)(pid_t pid);     /* resident bytes of pid, 0 when unknown */
};

/* Appends every metric family to out: HELP and TYPE once each, then one
 * sample per task or per child slot (slots below the pool target and any
 * slot that has had a process). Either process; never fails. */
void exposition_render(struct buf *out, const struct exposition *x);

/* Appends s to out as a label value: backslash, double quote and newline
 * escaped as the format wants. */
void exposition_label_value(struct buf *out, const char *s);

#endif /* CELERIAC_METRICS_EXPOSITION_H */
