/* SPDX-License-Identifier: MIT
 * worker/child.h: the entry point of a worker child process.
 */
#ifndef CELERIAC_WORKER_CHILD_H
#define CELERIAC_WORKER_CHILD_H

#include "worker/config.h"
#include "worker/scoreboard.h"

/* Runs child `index` in the current (freshly forked) process: opens its
 * database, broker and backend connections, serves until stopped, closes
 * them and _exit()s with EXIT_OK or EXIT_CANNOT_SERVE. deathwatch_fd is the
 * read end of a pipe only the master writes to: EOF means the master died.
 * Never returns. Child only. */
ATTR_NORETURN void child_main(const struct worker_config *cfg, struct scoreboard *sb,
                              struct slot *slot, int index, int deathwatch_fd);

#endif /* CELERIAC_WORKER_CHILD_H */
