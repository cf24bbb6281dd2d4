/* SPDX-License-Identifier: MIT
 * worker/reload.h: reloading the task library without losing work (SIGHUP,
 * `celeriac reload`). The master loads the library again, checks it, and
 * replaces the children one at a time; this module decides, the master acts
 * (it owns the pid table and the signals). Master only.
 */
#ifndef CELERIAC_WORKER_RELOAD_H
#define CELERIAC_WORKER_RELOAD_H

#include "worker/config.h"
#include "worker/scoreboard.h"

/* Tasks a reload may add to a running worker's table: the scoreboard's
 * per-task tuning is indexed by a task's position in the library, and old
 * and new children share it while the children are replaced. */
#define RELOAD_TASKS_HEADROOM 64

struct reload {
    unsigned gen;            /* generation of cfg->lib: 0 at start, +1 per accepted reload */
    unsigned *slot_gen;      /* n entries: the generation each slot's child was forked with */
    size_t n;
    bool active;             /* children of an older generation remain */
    int waiting;             /* slot retired for the reload whose new child is not up, or -1 */
    int64_t started_ms;      /* monotonic start of the current reload */
    int64_t waiting_ms;      /* monotonic time the waited-for slot was retired */
    bool slow_logged;        /* "still waiting" said for the waited-for slot */
};

/* Tuning entries the scoreboard needs for a library of n_tasks tasks. */
size_t reload_task_capacity(size_t n_tasks);

/* n slots (the scoreboard's capacity), all of generation 0. */
void reload_init(struct reload *r, size_t n);
void reload_release(struct reload *r);

/* SIGHUP: loads cfg->app_path again from a private copy, checks it (ABI,
 * celeriac_library_init, task table against the running one, capacity
 * tuning entries) and on success replaces cfg->lib, so that every child
 * forked from now on runs the new code; running children keep theirs until
 * reload_next retires them. Returns true when the new library replaced the
 * old one (the caller replaces its other forked processes too), false when
 * it was refused: one line logged with the reason, nothing changed. */
bool reload_begin(struct reload *r, struct worker_config *cfg, size_t capacity);

/* The master forked a child into slot i with the current cfg->lib. */
void reload_child_forked(struct reload *r, int i);

/* Once per master loop while a reload is active: the slot whose child is
 * to finish its task and stop now (the caller sends it SIGTERM and replaces
 * it at once when it exits), or -1. One slot at a time: the next is retired
 * only once the previous slot's new child is up (database connected, ready
 * for tasks). Idle children are retired first. Slots at or past target are
 * the pool's, not the reload's. */
int reload_next(struct reload *r, const struct scoreboard *sb, int target);

/* True while children of an older library remain (the master polls faster). */
bool reload_is_active(const struct reload *r);

#endif /* CELERIAC_WORKER_RELOAD_H */
