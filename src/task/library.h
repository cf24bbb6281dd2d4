/* SPDX-License-Identifier: MIT
 * task/library.h: loading a task library (dlopen, ABI check) and the
 * registry of its tasks. Loaded in the master before any fork, and again on
 * reload; children inherit the mapping current when they are forked.
 */
#ifndef CELERIAC_TASK_LIBRARY_H
#define CELERIAC_TASK_LIBRARY_H

#include "celeriac.h"

struct library {
    void *handle;                              /* dlopen handle, NULL when not loaded */
    char *path;                                /* owned, as given */
    const struct celeriac_library *desc;       /* borrowed from the library */
    size_t n_tasks;
    int fd;                                    /* while handle is set: the memfd it was loaded
                                                  from (library_load_fresh), -1 when loaded
                                                  from its path */
};

/* Loads path with RTLD_NOW | RTLD_LOCAL, calls celeriac_library_init and
 * validates the result (ABI version, non-empty unique task names). Returns 0,
 * or E_CONFIG with one line saying what is wrong in e (dlerror() included). */
int library_load(struct library *lib, const char *path, struct err *e);
/* The same, from a private in-memory copy of the file (a memfd, open while
 * the library is loaded): dlopen returns the handle it already has for a
 * file it loaded (same name, or same device and inode), so loading a
 * changed file at the same path again would give the old code. For
 * reload. Master only. */
int library_load_fresh(struct library *lib, const char *path, struct err *e);
/* Unloads lib (NULL handle allowed) and leaves it zeroed, fd -1. */
void library_unload(struct library *lib);
/* The task named name, or NULL. Linear in the number of tasks for small
 * tables; names are compared exactly as Celery does. */
const struct celeriac_task_def *library_find(const struct library *lib, const char *name);

/* The autoretry entry that applies to task failing with exc_type, or NULL.
 * Always NULL for libraries built for ABI 1. */
const struct celeriac_autoretry *library_autoretry(const struct library *lib, const char *task,
                                                  const char *exc_type);

#endif /* CELERIAC_TASK_LIBRARY_H */
