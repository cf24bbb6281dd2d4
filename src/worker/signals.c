/* SPDX-License-Identifier: MIT
 * worker/signals.c: async-signal-safe handlers (flag + one byte to a pipe)
 * and their installation in the master and in children.
 */
#include "common.h"
#include "worker/signals.h"

#include <fcntl.h>

volatile sig_atomic_t sig_stop;
volatile sig_atomic_t sig_cold;
volatile sig_atomic_t sig_child;
volatile sig_atomic_t sig_status;
volatile sig_atomic_t sig_resize;
volatile sig_atomic_t sig_hup;
volatile sig_atomic_t sig_reopen;

static int wake_pipe[2] = {-1, -1};

static void wake(void)
{
    int saved = errno;
    if (wake_pipe[1] >= 0)
        (void)!write(wake_pipe[1], "x", 1);
    errno = saved;
}

static void on_stop(int sig)
{
    UNUSED(sig);
    if (sig_stop)
        sig_cold = 1;
    sig_stop = 1;
    wake();
}

/* A child's TERM/INT: a warm stop, unless remote control asked to terminate
 * the running task with this signal (revoke --terminate): then the child
 * dies by it, as a Celery pool process does. */
static _Atomic int *terminate_flag;

static void on_child_stop(int sig)
{
    if (terminate_flag && atomic_load(terminate_flag)) {
        signal(sig, SIG_DFL);
        raise(sig); /* delivered when this handler returns */
        return;
    }
    on_stop(sig);
}

void signals_child_terminate_on(_Atomic int *flag)
{
    terminate_flag = flag;
}

static void on_quit(int sig)
{
    UNUSED(sig);
    sig_stop = 1;
    sig_cold = 1;
    wake();
}

static void on_child(int sig)
{
    UNUSED(sig);
    sig_child = 1;
    wake();
}

static void on_status(int sig)
{
    UNUSED(sig);
    sig_status = 1;
    wake();
}

/* USR2: the control process's "pool_target changed", and logrotate's
 * "reopen the log file"; both are cheap to act on when only one was meant. */
static void on_resize(int sig)
{
    UNUSED(sig);
    sig_resize = 1;
    sig_reopen = 1;
    wake();
}

/* HUP: Celery re-executes itself; we cannot yet, and the default action
 * (terminate, with no log line) is the worst answer, so the master notes it. */
static void on_hup(int sig)
{
    UNUSED(sig);
    sig_hup = 1;
    wake();
}

static int install(int sig, void (*fn)(int))
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = fn;
    sigfillset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    return sigaction(sig, &sa, NULL) ? -errno : 0;
}

int signals_master_install(void)
{
    if (pipe2(wake_pipe, O_NONBLOCK | O_CLOEXEC))
        return -errno;
    int rc = 0;
    rc = rc ? rc : install(SIGTERM, on_stop);
    rc = rc ? rc : install(SIGINT, on_stop);
    rc = rc ? rc : install(SIGQUIT, on_quit);
    rc = rc ? rc : install(SIGCHLD, on_child);
    rc = rc ? rc : install(SIGUSR1, on_status);
    rc = rc ? rc : install(SIGUSR2, on_resize);
    rc = rc ? rc : install(SIGHUP, on_hup);
    rc = rc ? rc : install(SIGPIPE, SIG_IGN);
    return rc;
}

int signals_wake_fd(void)
{
    return wake_pipe[0];
}

void signals_drain(void)
{
    char b[64];
    while (read(wake_pipe[0], b, sizeof(b)) > 0)
        ;
}

void signals_child_install(void)
{
    if (wake_pipe[0] >= 0)
        close(wake_pipe[0]);
    if (wake_pipe[1] >= 0)
        close(wake_pipe[1]);
    wake_pipe[0] = wake_pipe[1] = -1;
    sig_stop = sig_cold = sig_child = sig_status = sig_resize = sig_hup = sig_reopen = 0;
    for (int s = 1; s < NSIG; s++) {
        if (s == SIGKILL || s == SIGSTOP)
            continue;
        signal(s, SIG_DFL);
    }
    /* Not SA_RESTART here: a TERM should interrupt a blocking sleep. */
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_child_stop;
    sigfillset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    /* A hangup sent to the whole process group (a closed terminal) must not
     * kill children mid-task: the master decides what HUP means. */
    signal(SIGHUP, SIG_IGN);
    /* USR2 sent to every process of the unit (systemctl kill -s USR2) must
     * not kill children: the master reopens the log for all of them. */
    signal(SIGUSR2, SIG_IGN);
}

void signals_block_all(sigset_t *old)
{
    sigset_t all;
    sigfillset(&all);
    sigprocmask(SIG_SETMASK, &all, old);
}

void signals_restore(const sigset_t *old)
{
    sigprocmask(SIG_SETMASK, old, NULL);
}
