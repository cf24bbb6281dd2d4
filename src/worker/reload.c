/* SPDX-License-Identifier: MIT
 * worker/reload.c: the reload of the task library (see reload.h): load and
 * check the new library, then the order in which children are replaced.
 * It does not signal or fork: the master does, through its pid table.
 */
#include "common.h"
#include "util/log.h"
#include "util/time.h"
#include "worker/reload.h"

/* A new child that is not up after this long is reported (once). */
#define RELOAD_SLOW_MS 60000

size_t reload_task_capacity(size_t n_tasks)
{
    return n_tasks + RELOAD_TASKS_HEADROOM;
}

void reload_init(struct reload *r, size_t n)
{
    memset(r, 0, sizeof(*r));
    r->slot_gen = xcalloc(n ? n : 1, sizeof(*r->slot_gen));
    r->n = n;
    r->waiting = -1;
}

void reload_release(struct reload *r)
{
    free(r->slot_gen);
    memset(r, 0, sizeof(*r));
    r->waiting = -1;
}

/* Whether the new library can replace the running one in this worker:
 * every running task keeps its position (old and new children index the
 * shared per-task tuning by it while both run), new tasks only at the end
 * and within the scoreboard's room, and no late-ack task where the worker
 * started without kombu's unacked record (Redis: it is chosen at start from
 * the library's flags). Returns 0 or E_CONFIG with the reason in e. */
static int check_compatible(const struct worker_config *cfg, const struct library *fresh,
                            size_t capacity, struct err *e)
{
    const struct library *old = &cfg->lib;
    for (size_t i = 0; i < old->n_tasks; i++) {
        const char *was = old->desc->tasks[i].name;
        if (i >= fresh->n_tasks || strcmp(fresh->desc->tasks[i].name, was))
            return err_set(e, E_CONFIG,
                           "task '%.96s' (position %zu) is %s in the new library; a running "
                           "worker can only add tasks at the end of the table: restart it",
                           was, i + 1, library_find(fresh, was) ? "moved" : "missing");
    }
    if (fresh->n_tasks > capacity)
        return err_set(e, E_CONFIG,
                       "the new library has %zu tasks, this worker has room for %zu (%d more "
                       "than it started with): restart it",
                       fresh->n_tasks, capacity, RELOAD_TASKS_HEADROOM);
    return 0;
}

bool reload_begin(struct reload *r, struct worker_config *cfg, size_t capacity)
{
    struct library fresh;
    struct err e = {0};
    if (library_load_fresh(&fresh, cfg->app_path, &e) ||
        check_compatible(cfg, &fresh, capacity, &e)) {
        library_unload(&fresh);
        log_error("reload refused: %s; the children keep running the library loaded before",
                  e.msg);
        return false;
    }
    library_unload(&cfg->lib);
    cfg->lib = fresh;
    r->gen++;
    r->active = true;
    r->started_ms = time_mono_ms();
    log_warning("reload: task library '%s' loaded again (%zu tasks); replacing the children "
                "one at a time, each after its current task",
                cfg->lib.path, cfg->lib.n_tasks);
    return true;
}

void reload_child_forked(struct reload *r, int i)
{
    if (i >= 0 && (size_t)i < r->n)
        r->slot_gen[i] = r->gen;
}

bool reload_is_active(const struct reload *r)
{
    return r->active;
}

static bool slot_is_up(const struct reload *r, const struct scoreboard *sb, int i)
{
    const struct slot *s = &sb->slots[i];
    int state = atomic_load(&s->state);
    return r->slot_gen[i] == r->gen && atomic_load(&s->pid) &&
           (state == CHILD_IDLE || state == CHILD_BUSY);
}

/* True while the slot retired last has no new child up yet. */
static bool still_waiting(struct reload *r, const struct scoreboard *sb, int target)
{
    int i = r->waiting;
    if (i < 0)
        return false;
    if (i >= target || slot_is_up(r, sb, i)) {
        r->waiting = -1;
        return false;
    }
    if (!r->slow_logged && time_mono_ms() - r->waiting_ms > RELOAD_SLOW_MS) {
        log_warning("reload: child %d is not up %d s after it was retired; waiting for it before "
                    "replacing the next",
                    i, RELOAD_SLOW_MS / 1000);
        r->slow_logged = true;
    }
    return true;
}

int reload_next(struct reload *r, const struct scoreboard *sb, int target)
{
    if (!r->active || still_waiting(r, sb, target))
        return -1;
    int pick = -1;
    for (int i = 0; i < target && (size_t)i < r->n && (size_t)i < sb->n; i++) {
        if (!atomic_load(&sb->slots[i].pid) || r->slot_gen[i] == r->gen)
            continue; /* an empty slot is forked with the new library anyway */
        if (atomic_load(&sb->slots[i].state) == CHILD_IDLE) {
            pick = i;
            break;
        }
        if (pick < 0)
            pick = i;
    }
    if (pick < 0) {
        r->active = false;
        log_warning("reload: done in %.1f s; every child runs the new library",
                    (double)(time_mono_ms() - r->started_ms) / 1000.0);
        return -1;
    }
    r->waiting = pick;
    r->waiting_ms = time_mono_ms();
    r->slow_logged = false;
    log_info("reload: child %d (pid %d) finishes its current task and stops; its replacement "
             "runs the new library",
             pick, atomic_load(&sb->slots[pick].pid));
    return pick;
}
