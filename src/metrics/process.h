/* SPDX-License-Identifier: MIT
 * metrics/process.h: the metrics process, a sibling of the worker children
 * that serves GET /metrics (Prometheus) from the scoreboard. It opens no
 * broker or database connection, so the master stays connection-free.
 */
#ifndef CELERIAC_METRICS_PROCESS_H
#define CELERIAC_METRICS_PROCESS_H

struct worker_config;
struct scoreboard;

/* Listens on cfg->metrics (retrying with backoff while the address is
 * taken, logging once per episode) and answers scrapes from sb until it is
 * stopped (TERM) or the master dies. _exit()s; never returns. */
ATTR_NORETURN void metrics_main(const struct worker_config *cfg, struct scoreboard *sb,
                                int deathwatch_fd);

#endif /* CELERIAC_METRICS_PROCESS_H */
