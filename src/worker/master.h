/* SPDX-License-Identifier: MIT
 * worker/master.h: the supervising process.
 */
#ifndef CELERIAC_WORKER_MASTER_H
#define CELERIAC_WORKER_MASTER_H

#include "worker/config.h"

/* Forks cfg->concurrency children and supervises them until a stop signal
 * (warm: TERM/INT; cold: QUIT or a second TERM/INT) or until no child can
 * serve. Holds no broker or database connection at any time. Returns the
 * process exit code (enum exit_code). Master only. */
int master_run(struct worker_config *cfg);

#endif /* CELERIAC_WORKER_MASTER_H */
