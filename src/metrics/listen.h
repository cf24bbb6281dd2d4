/* SPDX-License-Identifier: MIT
 * metrics/listen.h: the --metrics ADDR:PORT argument and its listening
 * socket.
 */
#ifndef CELERIAC_METRICS_LISTEN_H
#define CELERIAC_METRICS_LISTEN_H

#include <stddef.h>

/* Splits spec ("127.0.0.1:9808", "[::1]:9808", "localhost:9808",
 * ":9808" for every address) into host (empty: any) and port (1-65535).
 * Returns 0, or -EINVAL with the reason in e. Any process. */
int metrics_listen_parse(const char *spec, char *host, size_t host_len, char *port,
                         size_t port_len, struct err *e);

/* A non-blocking, close-on-exec TCP socket listening on spec. Returns the
 * fd (the caller closes it), or -errno with "bind: <cause>" (or the failing
 * call) in e. Any process. */
int metrics_listen_open(const char *spec, struct err *e);

#endif /* CELERIAC_METRICS_LISTEN_H */
