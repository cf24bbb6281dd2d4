/* SPDX-License-Identifier: MIT
 * util/pidfile.h: the worker master's pid file (--pidfile), and reading one
 * back (`celeriac reload`). No locking: one worker per file, as Celery's.
 */
#ifndef CELERIAC_UTIL_PIDFILE_H
#define CELERIAC_UTIL_PIDFILE_H

#include "common.h"

/* Writes this process's pid to path. Refuses (E_CONFIG, one line in e)
 * when path names a live celeriac process; a stale file is replaced.
 * Master only, before the first fork. */
int pidfile_write(const char *path, struct err *e);
/* Removes path if it still holds this process's pid. NULL allowed. */
void pidfile_remove(const char *path);
/* The pid in path, or 0 with one line in e. */
pid_t pidfile_read(const char *path, struct err *e);
/* True if pid is alive and its name (comm) starts with "celeriac": a pid file
 * outliving its worker must not make us signal an unrelated process. */
bool pidfile_is_celeriac(pid_t pid);

#endif /* CELERIAC_UTIL_PIDFILE_H */
