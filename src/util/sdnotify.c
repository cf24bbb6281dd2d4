/* SPDX-License-Identifier: MIT
 * sdnotify.c: sd_notify's datagram protocol (see sdnotify.h), without
 * libsystemd: no file-descriptor passing, no credentials beyond the kernel's.
 */
#include "common.h"
#include "util/sdnotify.h"

#include <sys/socket.h>
#include <sys/un.h>

/* Fills addr from $NOTIFY_SOCKET; returns its length, or 0 if unusable. */
static socklen_t notify_addr(struct sockaddr_un *addr)
{
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || (path[0] != '/' && path[0] != '@') || !path[1])
        return 0;
    size_t len = strlen(path);
    if (len >= sizeof(addr->sun_path))
        return 0;
    memset(addr, 0, sizeof(*addr));
    addr->sun_family = AF_UNIX;
    memcpy(addr->sun_path, path, len);
    if (path[0] == '@')
        addr->sun_path[0] = '\0'; /* abstract namespace: not NUL-terminated */
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + (path[0] == '/'));
}

bool sdnotify_enabled(void)
{
    struct sockaddr_un addr;
    return notify_addr(&addr) != 0;
}

int sdnotify_send(const char *state)
{
    struct sockaddr_un addr;
    socklen_t alen = notify_addr(&addr);
    if (!alen)
        return 0;
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    ssize_t w;
    do
        w = sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&addr, alen);
    while (w < 0 && errno == EINTR);
    int rc = w < 0 ? -errno : 0;
    close(fd);
    return rc;
}

uint64_t sdnotify_watchdog_usec(void)
{
    const char *usec = getenv("WATCHDOG_USEC"), *pid = getenv("WATCHDOG_PID");
    if (!usec || !*usec)
        return 0;
    if (pid && *pid && strtol(pid, NULL, 10) != (long)getpid())
        return 0;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(usec, &end, 10);
    return errno || *end || !v ? 0 : (uint64_t)v;
}
