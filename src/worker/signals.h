/* SPDX-License-Identifier: MIT
 * worker/signals.h: signal flags and the master's wake pipe. Handlers only
 * set a flag and write a byte; all work happens in the loops that read them.
 */
#ifndef CELERIAC_WORKER_SIGNALS_H
#define CELERIAC_WORKER_SIGNALS_H

#include <signal.h>
#include <stdatomic.h>

/* Set by handlers; read and cleared by the owning loop. */
extern volatile sig_atomic_t sig_stop;     /* TERM/INT: 1 = warm, 2+ = cold */
extern volatile sig_atomic_t sig_cold;     /* QUIT, or a second TERM/INT */
extern volatile sig_atomic_t sig_child;    /* SIGCHLD arrived (master) */
extern volatile sig_atomic_t sig_status;   /* SIGUSR1: log the scoreboard (master) */
extern volatile sig_atomic_t sig_resize;   /* SIGUSR2: pool_target changed (master) */
extern volatile sig_atomic_t sig_hup;      /* SIGHUP: reload asked for, not supported (master) */
extern volatile sig_atomic_t sig_reopen;   /* SIGUSR2: reopen the --logfile (master) */

/* Master: creates the non-blocking, close-on-exec wake pipe and installs
 * handlers for TERM, INT, QUIT, CHLD, USR1, USR2, HUP; ignores PIPE. Returns 0 or -errno. */
int signals_master_install(void);
/* The read end of the wake pipe (poll it), drained by signals_drain(). */
int signals_wake_fd(void);
void signals_drain(void);
/* Child: closes the master's wake pipe, resets every handler, installs the
 * child's (TERM/INT: finish the task and stop; QUIT: default, die now;
 * HUP, USR2: ignored). Also used by the control and salvage processes. */
void signals_child_install(void);
/* Child: once *flag is set (by the control process, before it signals us),
 * TERM and INT end the process by that signal instead of a warm stop.
 * Async-signal-safe to read; flag lives in the scoreboard. */
void signals_child_terminate_on(_Atomic int *flag);
/* Blocks all signals, saving the old mask in old (for spawn). */
void signals_block_all(sigset_t *old);
void signals_restore(const sigset_t *old);

#endif /* CELERIAC_WORKER_SIGNALS_H */
