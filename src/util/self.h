/* SPDX-License-Identifier: MIT
 * util/self.h: this process's pid, cached. Ownership checks ask for it on
 * every command; glibc's getpid() is a system call each time.
 */
#ifndef CELERIAC_SELF_H
#define CELERIAC_SELF_H

/* The calling process's pid. Correct in a child only after self_pid_reset(),
 * which spawn_child() calls first thing after fork. */
pid_t self_pid(void);
/* Forgets the cached pid (after fork). Async-signal-safe. */
void self_pid_reset(void);

#endif /* CELERIAC_SELF_H */
