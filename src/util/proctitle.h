/* SPDX-License-Identifier: MIT
 * proctitle.h: the process title `ps -o args` shows ("celeriac: worker child
 * 2 busy books.get_book_info[<id>]"), written over the memory of argv and
 * environ, as nginx and PostgreSQL do on Linux. Also hides the command line
 * (which may hold a URL with a password) from ps once a title is set.
 */
#ifndef CELERIAC_PROCTITLE_H
#define CELERIAC_PROCTITLE_H

/* Moves environ and every argv string to the heap so the contiguous area
 * they occupied can be overwritten; returns the new argv (argc entries and
 * a NULL; never freed: it lives as long as the process). Call once, first
 * thing in main, before anything keeps a pointer into argv or environ. */
char **proctitle_init(int argc, char **argv);
/* Sets the title, cut to the area's size (at least the length of the
 * original command line). No-op before proctitle_init. Not
 * async-signal-safe. Any process; a forked child sets its own copy. */
void proctitle_set(const char *fmt, ...) ATTR_PRINTF(1, 2);
/* The same with the title's parts given as strings, joined in order: for a
 * title set on every task, where parsing a format would cost more than the
 * rest of the bookkeeping. */
void proctitle_set_parts(const char *const *parts, size_t n);

#endif /* CELERIAC_PROCTITLE_H */
