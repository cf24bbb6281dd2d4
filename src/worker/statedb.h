/* SPDX-License-Identifier: MIT
 * worker/statedb.h: --statedb, Celery's persistent worker state: the revoked
 * task ids, kept in a text file (one "unix-time id" per line) so that a
 * restarted worker still refuses them for the rest of their three hours.
 */
#ifndef CELERIAC_WORKER_STATEDB_H
#define CELERIAC_WORKER_STATEDB_H

struct scoreboard;

/* Master, before the first fork: loads the ids of path (missing file: none)
 * that have not expired into sb, and rewrites the file with just those, so
 * it never grows past one worker life of revokes. Returns the number loaded,
 * or a negative errno with e filled (the worker refuses to start: a state
 * file it cannot use is a configuration error). */
int statedb_load(const char *path, struct scoreboard *sb, struct err *e);

/* Control process: records one revoke. Errors are logged once per episode;
 * the revoke itself stands in memory either way. */
void statedb_append(const char *path, const char *id, double when);

#endif /* CELERIAC_WORKER_STATEDB_H */
