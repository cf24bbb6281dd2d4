/* SPDX-License-Identifier: MIT
 * worker/salvage.h: putting back a message a dead child popped and never
 * started (its slot's parcel, see scoreboard.h): by the child that replaces
 * it, or, when no replacement comes (stopping, pool shrunk), by a short-lived
 * salvage process, so the master still holds no connection.
 */
#ifndef CELERIAC_WORKER_SALVAGE_H
#define CELERIAC_WORKER_SALVAGE_H

#include "broker/redis.h"
#include "worker/config.h"
#include "worker/scoreboard.h"

/* Pushes the message in slot i's parcel back on its list (and drops any
 * unacked entry under the slot's lost_tag), then clears lost_parcel.
 * 0, or E_CONN_LOST / E_PROTOCOL. */
int parcel_return(struct broker_redis *b, struct scoreboard *sb, int i, struct err *e);

/* The salvage process: returns the parcel of every slot that has no process
 * and a lost_parcel, trying the broker for a few seconds, then _exit()s
 * with EXIT_OK when all went back, else EXIT_FAILED. Never returns. */
ATTR_NORETURN void salvage_main(const struct worker_config *cfg, struct scoreboard *sb);

#endif /* CELERIAC_WORKER_SALVAGE_H */
