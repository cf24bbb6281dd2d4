/* SPDX-License-Identifier: MIT
 * common.h: first include of every .c file. Feature macros, the system headers
 * nearly every module needs, allocation that aborts, and struct err.
 */
#ifndef CELERIAC_COMMON_H
#define CELERIAC_COMMON_H

#define _GNU_SOURCE 1 /* pipe2, accept4, prctl, memmem, strcasestr: Linux is our only target */

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define UNUSED(x) ((void)(x))

#define ATTR_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))
#define ATTR_NORETURN __attribute__((noreturn))

/* Error detail for the caller: a code and a fixed-size message, so error
 * paths never allocate. Every function taking one accepts NULL. */
#define ERR_MSG_MAX 256
struct err {
    int code;               /* 0, -errno or a negative CELERIAC_E* value */
    char msg[ERR_MSG_MAX];  /* lower case, action first, cause last */
};

/* Fills e (if not NULL) and returns code, so callers can `return err_set(...)`. */
int err_set(struct err *e, int code, const char *fmt, ...) ATTR_PRINTF(3, 4);

/* Allocation that aborts with the requested size on failure. Sizes that come
 * from the network are checked against limits before they reach these. */
void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);

/* Internal error codes (negative, beyond errno's range). */
enum {
    E_PROTOCOL = -1000,   /* a message broke the wire protocol */
    E_CONN_LOST = -1001,  /* a connection-level failure: the handle is dead */
    E_TASK_FAILED = -1002,/* a task raised an exception */
    E_CONFIG = -1003,     /* bad flag, URL or library */
    E_TOO_BIG = -1004,    /* input larger than its limit */
    E_DB = -1005,         /* a statement failed but the connection is alive */
    E_REFUSED = -1006,    /* the server is up but refuses the command for now (Redis:
                             maxmemory, read-only replica, cannot persist, loading):
                             keep the connection, retry later */
};

#include "util/banned.h"

#endif /* CELERIAC_COMMON_H */
