/* SPDX-License-Identifier: MIT
 * worker/service.h: the master's side of systemd's Type=notify: READY=1
 * once every wanted child has its database connection, STATUS= with
 * children up / database state / tasks done, WATCHDOG=1 from the master's
 * loop, RELOADING=1 and STOPPING=1. Reads the scoreboard only; sends
 * through util/sdnotify.h, so all of it is a no-op without $NOTIFY_SOCKET.
 */
#ifndef CELERIAC_WORKER_SERVICE_H
#define CELERIAC_WORKER_SERVICE_H

#include "worker/scoreboard.h"

struct service {
    bool enabled;              /* $NOTIFY_SOCKET is set */
    bool ready_sent;           /* READY=1 sent since the start or the last RELOADING=1 */
    bool stopping_sent;
    int64_t watchdog_ms;       /* between two WATCHDOG=1: half of $WATCHDOG_USEC; 0 = none */
    int64_t next_watchdog_ms;  /* monotonic */
    int64_t next_status_ms;    /* monotonic: STATUS= at most this often unless children change */
    int last_up;               /* children up in the last STATUS= */
    char last_status[160];
    size_t n;                  /* slots followed */
    int *seen_pid;             /* per slot: the child whose tasks_done is in seen_done */
    uint64_t *seen_done;
    uint64_t done_before;      /* tasks done by children that have since left */
};

/* Reads $NOTIFY_SOCKET and $WATCHDOG_USEC; follows n slots. Master, after
 * the scoreboard is made. */
void service_init(struct service *s, size_t n);
void service_release(struct service *s);
/* Once per loop of the master: READY=1 when every one of the first target
 * slots has a child that is idle or busy and whose database is not down;
 * STATUS= when it changed (at most every 2 s, at once when the number of
 * children up changes); WATCHDOG=1 when due. */
void service_tick(struct service *s, const struct scoreboard *sb, int target);
/* timeout_ms, shortened so the loop wakes for the next WATCHDOG=1. */
int service_timeout(const struct service *s, int timeout_ms);
/* STOPPING=1 with a STATUS= saying why (once). Master. */
void service_stopping(struct service *s, const char *why);
/* A reload starts: RELOADING=1 (with MONOTONIC_USEC, which systemd 253's
 * Type=notify-reload wants); READY=1 is sent again by service_tick once
 * every child has its database connection. Master; for the reload code. */
void service_reloading(struct service *s);

#endif /* CELERIAC_WORKER_SERVICE_H */
