/* SPDX-License-Identifier: MIT
 * control/process.h: the control process, a sibling of the worker children
 * that owns the worker's remote-control and event connections, so the master
 * keeps holding no connection at all.
 */
#ifndef CELERIAC_CONTROL_PROCESS_H
#define CELERIAC_CONTROL_PROCESS_H

struct worker_config;
struct scoreboard;

/* Answers `celery inspect` / `celery control` on the pidbox channel, sends
 * worker-online, a worker-heartbeat every 2 s and worker-offline, until it is
 * stopped (TERM) or the master dies. _exit()s; never returns. */
ATTR_NORETURN void control_main(const struct worker_config *cfg, struct scoreboard *sb,
                                int deathwatch_fd);

#endif /* CELERIAC_CONTROL_PROCESS_H */
