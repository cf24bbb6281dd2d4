/* SPDX-License-Identifier: MIT
 * metrics/listen.c: parsing --metrics ADDR:PORT and opening its listening
 * socket (see listen.h). The HTTP side is libmicrohttpd's.
 */
#include "common.h"
#include "metrics/listen.h"

#include <fcntl.h>
#include <netdb.h>
#include <sys/socket.h>

int metrics_listen_parse(const char *spec, char *host, size_t host_len, char *port,
                         size_t port_len, struct err *e)
{
    const char *colon = strrchr(spec, ':');
    if (!colon)
        return err_set(e, -EINVAL, "--metrics '%s': want ADDR:PORT", spec);
    const char *h = spec;
    size_t hlen = (size_t)(colon - spec);
    bool bracketed = hlen >= 2 && h[0] == '[' && h[hlen - 1] == ']';
    if (bracketed) {
        h++;
        hlen -= 2;
    }
    char *end;
    errno = 0;
    long p = strtol(colon + 1, &end, 10);
    if (!colon[1] || *end || errno || p < 1 || p > 65535)
        return err_set(e, -EINVAL, "--metrics '%s': port must be 1-65535", spec);
    if (hlen >= host_len || (!bracketed && memchr(h, ':', hlen)))
        return err_set(e, -EINVAL, "--metrics '%s': want ADDR:PORT ([ADDR]:PORT for IPv6)",
                       spec);
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    snprintf(port, port_len, "%ld", p);
    return 0;
}

/* socket, SO_REUSEADDR, bind, listen on one resolved address. */
static int listen_on(const struct addrinfo *ai, struct err *e)
{
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK,
                    ai->ai_protocol);
    if (fd < 0) {
        int saved = errno;
        return err_set(e, -saved, "socket: %s", strerror(saved));
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    const char *what = "bind";
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
        what = "listen";
        if (listen(fd, 64) == 0)
            return fd;
    }
    int saved = errno;
    close(fd);
    return err_set(e, -saved, "%s: %s", what, strerror(saved));
}

int metrics_listen_open(const char *spec, struct err *e)
{
    char host[256], port[8];
    int rc = metrics_listen_parse(spec, host, sizeof(host), port, sizeof(port), e);
    if (rc)
        return rc;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    int gai = getaddrinfo(host[0] ? host : NULL, port, &hints, &res);
    if (gai)
        return err_set(e, -EADDRNOTAVAIL, "resolve '%s': %s", host, gai_strerror(gai));
    rc = -EADDRNOTAVAIL;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        rc = listen_on(ai, e);
        if (rc >= 0)
            break;
    }
    freeaddrinfo(res);
    return rc;
}
