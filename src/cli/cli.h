/* SPDX-License-Identifier: MIT
 * cli/cli.h: one entry point per subcommand; each returns the exit code.
 */
#ifndef CELERIAC_CLI_H
#define CELERIAC_CLI_H

/* `celeriac worker ...`: argv[0] is "worker". */
int cli_worker(int argc, char **argv);
/* `celeriac call NAME [ARGS...]` and `celeriac result ID`. */
int cli_call(int argc, char **argv);
int cli_result(int argc, char **argv);
/* `celeriac reload (--pidfile PATH | --pid PID)`: SIGHUP to a worker's master. */
int cli_reload(int argc, char **argv);
/* `celeriac status`: the local scoreboard of running workers. */
int cli_status(int argc, char **argv);
/* `celeriac inspect CMD` and `celeriac control CMD`: remote control over
 * the broker, as `celery inspect` / `celery control`. */
int cli_inspect(int argc, char **argv);
int cli_control(int argc, char **argv);

#endif /* CELERIAC_CLI_H */
