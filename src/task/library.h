/* SPDX-License-Identifier: MIT
 * task/library.h: loading a task library (dlopen, ABI check) and the
 * registry of its tasks. Loaded once in the master before any fork; children
 * inherit the mapping.
 */
#ifndef CELERIAC_TASK_LIBRARY_H
#define CELERIAC_TASK_LIBRARY_H

#include "celeriac.h"

struct library {
    void *handle;                              /* dlopen handle, NULL when not loaded */
    char *path;                                /* owned, as given */
    const struct celeriac_library *desc;       /* borrowed from the library */
    size_t n_tasks;
};

/* Loads path with RTLD_NOW | RTLD_LOCAL, calls celeriac_library_init and
 * validates the result (ABI version, non-empty unique task names). Returns 0,
 * or E_CONFIG with one line saying what is wrong in e (dlerror() included). */
int library_load(struct library *lib, const char *path, struct err *e);
void library_unload(struct library *lib);
/* The task named name, or NULL. Linear in the number of tasks for small
 * tables; names are compared exactly as Celery does. */
const struct celeriac_task_def *library_find(const struct library *lib, const char *name);

/* The autoretry entry that applies to task failing with exc_type, or NULL.
 * Always NULL for libraries built for ABI 1. */
const struct celeriac_autoretry *library_autoretry(const struct library *lib, const char *task,
                                                  const char *exc_type);

#endif /* CELERIAC_TASK_LIBRARY_H */
