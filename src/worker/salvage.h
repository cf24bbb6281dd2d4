/* SPDX-License-Identifier: MIT
 * worker/salvage.h: what a dead child leaves when no child will start in its
 * slot again (the worker is stopping, the pool shrank): the task it was
 * running, the ETA messages it held, and a message it popped into its hand
 * (broker/redis.h) and never started. A new child settles these itself; a
 * short-lived salvage process does when none comes, so the master still
 * holds no connection.
 */
#ifndef CELERIAC_WORKER_SALVAGE_H
#define CELERIAC_WORKER_SALVAGE_H

#include "backend/redis.h"
#include "broker/redis.h"
#include "worker/config.h"
#include "worker/scoreboard.h"

/* Puts back what the hand b points at holds unless it hashes to settled
 * (broker_redis_hand_return), logging it. 1 when a message went back, 0 when
 * none did, or E_CONN_LOST / E_PROTOCOL. */
int hand_salvage(struct broker_redis *b, uint64_t settled, struct err *e);

struct held_board;
/* Puts the ETA messages a gone child described on its board back on their
 * queues (compare-and-swap: one acked meanwhile is left alone) and empties
 * the board; *restored counts those put back. 0, or E_CONN_LOST (the board
 * is kept: call again after reconnecting). Child or salvage process. */
int held_board_restore(struct broker_redis *b, struct held_board *board, int *restored,
                       struct err *e);

/* Takes over the hands of slot `slot` left by workers named node that are
 * gone (a whole worker SIGKILLed): their messages go back to their queues,
 * run again even if they had started (the shared memory that told started
 * from unstarted died with that worker). A hand whose owner pid is alive on
 * this host is another worker's and is left alone. 0 or E_CONN_LOST. */
int hand_adopt_orphans(struct broker_redis *b, const char *node, pid_t self_master, int slot,
                       struct err *e);

/* The salvage process: for every slot with no process and hand_check set,
 * settles what its dead child left when no replacement will (the task it
 * was killed running: a late-ack message restored to its queue, an early-ack
 * one stored as WorkerLostError; the ETA messages it held; the message in
 * its hand), trying the broker for a few seconds, then _exit()s with EXIT_OK
 * when all were done, else EXIT_FAILED. Never returns. */
ATTR_NORETURN void salvage_main(const struct worker_config *cfg, struct scoreboard *sb);

/* salvage_main on any other transport, through broker.h and backend.h
 * (salvage_transport.c): the task, the claimed message and the held ETA
 * messages; Redis's hands have no counterpart there. Never returns. */
ATTR_NORETURN void salvage_transport_main(const struct worker_config *cfg,
                                          struct scoreboard *sb);

/* The line for the task or message of slot s (lost for `reason`) that a
 * salvage put back on its queue. */
void salvage_log_restored(const struct slot *s, int reason);

/* The FAILURE WorkerLostError stored for an early-acked task the dead
 * child of slot s was running (redelivered: a SUCCESS it stored just
 * before dying is kept); then, once the caller stored it (rc 0) or not,
 * the log line and the meta's result freed. text (size bytes) holds the
 * message in between. */
void salvage_worker_lost_meta(struct slot *s, struct result_meta *meta, char *text,
                              size_t size);
void salvage_worker_lost_done(struct slot *s, struct result_meta *meta, const char *text,
                              int rc);

/* The WorkerLostError stored for a result a dead child sent without
 * reading the reply, which the result backend may never have got
 * (recover_unconfirmed_result; a SUCCESS that did arrive is kept). */
#define UNCONFIRMED_LOST_TEXT \
    "Worker exited prematurely: its process died before its result was confirmed stored."

/* That result of slot s's dead child, when one is due (none, or it is the
 * task settled as lost, which says more: false). Fills meta (redelivered,
 * so a SUCCESS that arrived is kept) and logs why; then, once the caller
 * stored it (rc 0) or not, the name cleared on success and the meta's
 * result freed. Call before the lost task is settled. */
bool salvage_unconfirmed_meta(struct slot *s, struct result_meta *meta);
void salvage_unconfirmed_done(struct slot *s, struct result_meta *meta, int rc);

/* The salvage process gives up on an unreachable broker after this long:
 * it runs while the worker stops, which must not hang. */
#define SALVAGE_PATIENCE_MS 10000

#endif /* CELERIAC_WORKER_SALVAGE_H */
