/* SPDX-License-Identifier: MIT
 * sdnotify.h: systemd's readiness protocol (sd_notify(3)): one datagram of
 * "KEY=VALUE\n" lines to the AF_UNIX socket named by $NOTIFY_SOCKET. Our
 * own few lines rather than libsystemd: the protocol is documented and
 * stable, and the worker then builds and runs the same without systemd.
 * Everything here is a no-op when $NOTIFY_SOCKET is unset.
 */
#ifndef CELERIAC_SDNOTIFY_H
#define CELERIAC_SDNOTIFY_H

/* True when $NOTIFY_SOCKET names a socket (a path or "@abstract"). */
bool sdnotify_enabled(void);
/* Sends state (e.g. "READY=1\nSTATUS=..."); returns 0, -errno, or 0 when
 * not enabled. Not async-signal-safe. Any process, but systemd accepts
 * only the main pid by default (NotifyAccess=main): the master. */
int sdnotify_send(const char *state);
/* $WATCHDOG_USEC in microseconds when it is set for this process
 * ($WATCHDOG_PID absent or ours), else 0. */
uint64_t sdnotify_watchdog_usec(void);

#endif /* CELERIAC_SDNOTIFY_H */
