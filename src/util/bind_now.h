/* SPDX-License-Identifier: MIT
 * util/bind_now.h: makes the dynamic linker resolve every symbol of every
 * shared library once, in the master, before any child is forked.
 *
 * Why: glibc binds lazily. Each forked child then resolves the same symbols
 * again on first call (libpq into libssl, libssl into libcrypto, ...), and
 * each lookup reads the libraries' symbol and hash tables, pages the child
 * then counts as its own. Measured on W1: a child's RSS is 4.4 MB lazily
 * bound and 3.7 MB bound at start. Linking the executable with -z now binds
 * only the executable's own references; LD_BIND_NOW is the one switch that
 * covers the libraries too, and the dynamic linker reads it only at exec.
 */
#ifndef CELERIAC_BIND_NOW_H
#define CELERIAC_BIND_NOW_H

/* Call first thing in main, before argv or environ are touched. Unless
 * LD_BIND_NOW is already set (by the user, or by the previous round of this
 * call), sets it and execs this same binary with the same argv: same pid,
 * same arguments. After that exec it removes LD_BIND_NOW again, so programs
 * the tasks start do not inherit it. Does nothing under valgrind (an exec
 * would leave valgrind behind) or when the exec fails (the worker then runs
 * lazily bound, only larger). */
void bind_now_or_reexec(char **argv);

#endif /* CELERIAC_BIND_NOW_H */
