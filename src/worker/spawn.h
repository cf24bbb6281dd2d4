/* SPDX-License-Identifier: MIT
 * worker/spawn.h: the only place the master forks.
 */
#ifndef CELERIAC_WORKER_SPAWN_H
#define CELERIAC_WORKER_SPAWN_H

#include "worker/config.h"
#include "worker/scoreboard.h"

/* Forks child `index` with all signals blocked across the fork; in the child
 * resets signal handling, closes the master-only fds (wake pipe, death-watch
 * write end) and runs child_main. Returns the child's pid, or -errno.
 * Master only. */
pid_t spawn_child(const struct worker_config *cfg, struct scoreboard *sb, int index,
                  const int deathwatch[2]);

/* Forks the control process the same way. Returns its pid, or -errno. */
pid_t spawn_control(const struct worker_config *cfg, struct scoreboard *sb,
                    const int deathwatch[2]);

/* Forks the metrics process (metrics/process.h) the same way. Returns its
 * pid, or -errno. */
pid_t spawn_metrics(const struct worker_config *cfg, struct scoreboard *sb,
                    const int deathwatch[2]);

/* Runs the connection budget check (worker/budget.h) in a short-lived
 * process, so that the master never holds a connection, and waits for it:
 * its exit status (EXIT_USAGE: strict refused), 0 when it could not run. */
int spawn_budget_check(const struct worker_config *cfg, struct scoreboard *sb,
                       const int deathwatch[2]);

/* Forks the salvage process (worker/salvage.h). Returns its pid, or -errno. */
pid_t spawn_salvage(const struct worker_config *cfg, struct scoreboard *sb,
                    const int deathwatch[2]);

#endif /* CELERIAC_WORKER_SPAWN_H */
