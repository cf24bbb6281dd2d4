/* SPDX-License-Identifier: MIT
 * task/context.h: the state behind the public task API (celeriac.h): one
 * task's arguments, result or exception, scratch arena, and the process it
 * runs in. Child processes only.
 */
#ifndef CELERIAC_TASK_CONTEXT_H
#define CELERIAC_TASK_CONTEXT_H

#include <jansson.h>
#include <signal.h>

#include "celeriac.h"
#include "util/buf.h"

struct db_conn;
struct message;

struct celeriac_process {
    int index;                  /* child index */
    struct db_conn *db;         /* the child's connection (kind may be DB_NONE) */
    void *user_data;            /* celeriac_set_process_data */
};

struct arena_chunk;

struct celeriac_task {
    struct celeriac_process *proc;   /* borrowed */
    const struct message *msg;       /* borrowed: args, kwargs, id, name */
    json_t *result;                  /* owned; NULL = null */
    bool failed;                     /* celeriac_fail was called */
    bool db_failure;                 /* ... through celeriac_fail_db */
    char exc_type[64];
    struct buf exc_message;
    bool retry;                      /* celeriac_retry asked for a retry */
    struct celeriac_retry_options retry_options;
    struct arena_chunk *chunks;      /* scratch memory, freed at task end */
};

/* Set by the child's soft-limit timer handler; cleared when a task begins. */
extern volatile sig_atomic_t task_soft_limit_hit;

void task_context_init(struct celeriac_task *t, struct celeriac_process *proc);
/* Frees everything, including the arena's retained chunk. */
void task_context_release(struct celeriac_task *t);
/* Prepares t for msg; clears the previous task's result, exception and arena. */
void task_context_begin(struct celeriac_task *t, const struct message *msg);
/* Runs def->fn and normalises its outcome: returns CELERIAC_OK or
 * CELERIAC_FAILED with exc_type/exc_message set. */
int task_context_run(struct celeriac_task *t, const struct celeriac_task_def *def);

#endif /* CELERIAC_TASK_CONTEXT_H */
