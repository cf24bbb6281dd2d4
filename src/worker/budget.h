/* SPDX-License-Identifier: MIT
 * worker/budget.h: the database connection budget. Before its first child,
 * the worker (in a short-lived process of the master's) compares the
 * connections it will open with the room the PostgreSQL server has left,
 * counting what other celeriac workers hold; child 0 counts again now and
 * then. SQLite and a worker without PostgreSQL:
 * nothing to do.
 */
#ifndef CELERIAC_WORKER_BUDGET_H
#define CELERIAC_WORKER_BUDGET_H

#include "worker/config.h"
#include "worker/scoreboard.h"

/* How often child 0 counts the server's sessions again, while idle; the
 * first count waits a little for its siblings to connect. */
#define BUDGET_RECOUNT_MS 30000
#define BUDGET_FIRST_RECOUNT_MS 2000

/* The connections the worker opens at most to the PostgreSQL server it
 * checks (the --db one, else the SQL broker's, else the result database's):
 * one per child for each of those on that server (an SQL broker that runs on
 * the task connection counts once), times the most children
 * it may run (-c, or the --autoscale maximum). Sets *server to that
 * server's settings (borrowed from cfg), or NULL and returns 0 when no
 * PostgreSQL is configured. */
int budget_planned(const struct worker_config *cfg, const struct db_config **server);

/* In a short-lived process the master forks before its first child
 * (spawn_budget_check), so the master itself never connects:
 * opens one short-lived connection, counts, closes it, writes the numbers
 * to sb->shared->budget, and logs one line: info within the budget, a
 * warning with the numbers over it. Under DB_BUDGET_STRICT an overrun (or a
 * server already full) is refused with one line on stderr: returns
 * EXIT_USAGE. Otherwise, and when the server cannot be reached (the children
 * report that), returns 0. */
int budget_check(const struct worker_config *cfg, struct scoreboard *sb);

/* Child 0, on its own open connection c, between tasks: counts again once
 * BUDGET_RECOUNT_MS has passed since *next_ms (monotonic; 0 = now) and
 * updates the board. A failed count is logged at debug level only: a lost
 * connection is found by the next task's check. */
void budget_recount(const struct worker_config *cfg, struct db_conn *c, struct scoreboard *sb,
                    int64_t *next_ms);

#endif /* CELERIAC_WORKER_BUDGET_H */
