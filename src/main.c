/* SPDX-License-Identifier: MIT
 * main.c: argv to subcommand dispatch, --help and --version; nothing else.
 */
#include "common.h"
#include "celeriac.h"
#include "cli/cli.h"
#include "util/bind_now.h"
#include "util/proctitle.h"
#include "worker/config.h"

static const char main_usage[] =
    "usage: celeriac <command> [options]\n"
    "\n"
    "A Celery-compatible task worker in C: every worker process owns its database\n"
    "connection.\n"
    "\n"
    "commands:\n"
    "  worker     run a prefork worker (celeriac worker --help)\n"
    "  call       send a task by name, optionally wait for its result\n"
    "  result     print a task's result\n"
    "  reload     load a running worker's task library again (celeriac reload --help)\n"
    "  status     what each child of a worker on this host is doing (local scoreboard)\n"
    "  inspect    ask workers over the broker, as `celery inspect` (ping, stats, active...)\n"
    "  control    steer workers over the broker, as `celery control` (revoke, rate_limit...)\n"
    "\n"
    "  -h, --help      this help\n"
    "  -V, --version   print the version\n";

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "celeriac: no command given (see --help)\n");
        return EXIT_USAGE;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) {
        fputs(main_usage, stdout);
        return EXIT_OK;
    }
    if (!strcmp(cmd, "-V") || !strcmp(cmd, "--version") || !strcmp(cmd, "version")) {
        printf("celeriac %s (task ABI %d)\n", CELERIAC_VERSION, CELERIAC_ABI_VERSION);
        return EXIT_OK;
    }
    if (!strcmp(cmd, "worker")) {
        /* Children are forked, so the master binds every library first. */
        bind_now_or_reexec(argv);
        /* Only the worker sets titles; its argv strings move to the heap. */
        argv = proctitle_init(argc, argv);
        return cli_worker(argc - 1, argv + 1);
    }
    if (!strcmp(cmd, "call"))
        return cli_call(argc - 1, argv + 1);
    if (!strcmp(cmd, "result"))
        return cli_result(argc - 1, argv + 1);
    if (!strcmp(cmd, "reload"))
        return cli_reload(argc - 1, argv + 1);
    if (!strcmp(cmd, "status"))
        return cli_status(argc - 1, argv + 1);
    if (!strcmp(cmd, "inspect"))
        return cli_inspect(argc - 1, argv + 1);
    if (!strcmp(cmd, "control"))
        return cli_control(argc - 1, argv + 1);
    fprintf(stderr, "celeriac: unknown command '%s' (see --help)\n", cmd);
    return EXIT_USAGE;
}
