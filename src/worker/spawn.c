/* SPDX-License-Identifier: MIT
 * worker/spawn.c: fork with a clean signal state on both sides (see spawn.h).
 */
#include "common.h"
#include "util/self.h"
#include "control/process.h"
#include "metrics/process.h"
#include "util/log.h"
#include "worker/child.h"
#include "worker/salvage.h"
#include "worker/signals.h"
#include "worker/spawn.h"
#include "worker/budget.h"

#include <sys/prctl.h>
#include <sys/wait.h>

/* Forks with every signal blocked so the child starts with default
 * handlers and no pending master work; runs `run` in the child. */
static pid_t fork_clean(const int deathwatch[2], void (*run)(void *), void *arg)
{
    sigset_t old;
    signals_block_all(&old);
    /* Flush so the child does not inherit and re-emit buffered output. */
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        int saved = errno;
        signals_restore(&old);
        return -saved;
    }
    if (pid == 0) {
        self_pid_reset();
        signals_child_install();
        close(deathwatch[1]);
        signals_restore(&old);
        run(arg);
        _exit(EXIT_FAILED); /* run never returns */
    }
    signals_restore(&old);
    return pid;
}

struct spawn_args {
    const struct worker_config *cfg;
    struct scoreboard *sb;
    int index;
    int deathwatch_fd;
};

static void run_child(void *arg)
{
    struct spawn_args *a = arg;
    child_main(a->cfg, a->sb, &a->sb->slots[a->index], a->index, a->deathwatch_fd);
}

static void run_control(void *arg)
{
    struct spawn_args *a = arg;
    control_main(a->cfg, a->sb, a->deathwatch_fd);
}

pid_t spawn_child(const struct worker_config *cfg, struct scoreboard *sb, int index,
                  const int deathwatch[2])
{
    struct spawn_args a = {cfg, sb, index, deathwatch[0]};
    return fork_clean(deathwatch, run_child, &a);
}

pid_t spawn_control(const struct worker_config *cfg, struct scoreboard *sb,
                    const int deathwatch[2])
{
    struct spawn_args a = {cfg, sb, -1, deathwatch[0]};
    return fork_clean(deathwatch, run_control, &a);
}

static void run_salvage(void *arg)
{
    struct spawn_args *a = arg;
    salvage_main(a->cfg, a->sb);
}

pid_t spawn_salvage(const struct worker_config *cfg, struct scoreboard *sb,
                    const int deathwatch[2])
{
    struct spawn_args a = {cfg, sb, -1, deathwatch[0]};
    return fork_clean(deathwatch, run_salvage, &a);
}

static void run_budget_check(void *arg)
{
    struct spawn_args *a = arg;
    log_set_process("MainProcess"); /* its one line is the master's to say */
    prctl(PR_SET_NAME, "celeriac:budget", 0, 0, 0); /* not a pool child to ps */
    _exit(budget_check(a->cfg, a->sb));
}

int spawn_budget_check(const struct worker_config *cfg, struct scoreboard *sb,
                       const int deathwatch[2])
{
    struct spawn_args a = {cfg, sb, -1, deathwatch[0]};
    pid_t pid = fork_clean(deathwatch, run_budget_check, &a);
    if (pid < 0)
        return 0; /* no check: the children report what they meet */
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 0;
}

static void run_metrics(void *arg)
{
    struct spawn_args *a = arg;
    metrics_main(a->cfg, a->sb, a->deathwatch_fd);
}

pid_t spawn_metrics(const struct worker_config *cfg, struct scoreboard *sb,
                    const int deathwatch[2])
{
    struct spawn_args a = {cfg, sb, -1, deathwatch[0]};
    return fork_clean(deathwatch, run_metrics, &a);
}
