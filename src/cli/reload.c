/* SPDX-License-Identifier: MIT
 * cli/reload.c: `celeriac reload`: SIGHUP to a running worker's master,
 * found by its pid file (--pidfile, as the worker was started with) or
 * given as --pid. The reload's outcome is in the worker's log.
 */
#include "common.h"
#include "cli/cli.h"
#include "util/pidfile.h"
#include "worker/config.h"

#include <getopt.h>
#include <signal.h>

static const char reload_usage[] =
    "usage: celeriac reload (--pidfile PATH | --pid PID)\n"
    "\n"
    "Asks a running worker to load its task library again (SIGHUP to its master):\n"
    "it checks the new library and replaces the children one at a time, each after\n"
    "its current task. A library that does not load is refused in the worker's log\n"
    "and the children keep serving.\n"
    "\n"
    "      --pidfile PATH   the worker's --pidfile\n"
    "      --pid PID        the worker's master pid\n"
    "  -h, --help           this help\n"
    "\n"
    "Exit status: 0 signal sent, 1 no such worker, 2 bad usage.\n";

int cli_reload(int argc, char **argv)
{
    static const struct option options[] = {
        {"pidfile", required_argument, NULL, 'p'},
        {"pid", required_argument, NULL, 'P'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *pidfile = NULL, *pid_arg = NULL;
    int opt;
    optind = 1;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, ":h", options, NULL)) != -1) {
        switch (opt) {
        case 'p':
            pidfile = optarg;
            break;
        case 'P':
            pid_arg = optarg;
            break;
        case 'h':
            fputs(reload_usage, stdout);
            return EXIT_OK;
        default:
            fprintf(stderr, "celeriac reload: %s '%s' (see --help)\n",
                    opt == ':' ? "option needs a value:" : "unknown option", argv[optind - 1]);
            return EXIT_USAGE;
        }
    }
    if (optind < argc || !pidfile == !pid_arg) {
        fprintf(stderr, "celeriac reload: give --pidfile PATH or --pid PID (see --help)\n");
        return EXIT_USAGE;
    }
    pid_t pid;
    if (pidfile) {
        struct err e = {0};
        if (!(pid = pidfile_read(pidfile, &e))) {
            fprintf(stderr, "celeriac reload: %s\n", e.msg);
            return EXIT_FAILED;
        }
    } else {
        char *end;
        long v = strtol(pid_arg, &end, 10);
        if (*end || v <= 0 || v > INT32_MAX) {
            fprintf(stderr, "celeriac reload: --pid wants a process id, got '%s'\n", pid_arg);
            return EXIT_USAGE;
        }
        pid = (pid_t)v;
    }
    if (!pidfile_is_celeriac(pid)) {
        fprintf(stderr, "celeriac reload: process %d is not a running celeriac worker\n", (int)pid);
        return EXIT_FAILED;
    }
    if (kill(pid, SIGHUP)) {
        fprintf(stderr, "celeriac reload: signal to pid %d failed: %s\n", (int)pid,
                strerror(errno));
        return EXIT_FAILED;
    }
    printf("reload asked of the worker with master pid %d (see its log)\n", (int)pid);
    return EXIT_OK;
}
