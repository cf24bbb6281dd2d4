/* SPDX-License-Identifier: MIT
 * retry.h: one failing operation retried with backoff and logged once per
 * episode: the first failure (with the next attempt time), a reminder while
 * it lasts, a line when the cause changes, and one line when it clears,
 * with the count. A worker must neither spin nor fill a disk on an error
 * path, whatever the failure.
 */
#ifndef CELERIAC_RETRY_H
#define CELERIAC_RETRY_H

#include "util/backoff.h"
#include "util/log.h"

/* A still-failing episode is reported again after this long. */
#define RETRY_REMIND_MS 300000

struct retry {
    struct backoff bo;
    char what[96];           /* names the operation in the log: "ack of <tag>" */
    uint64_t failures;       /* failed attempts in the current episode; 0 = none open */
    int64_t since_ms;        /* monotonic start of the episode */
    int64_t next_remind_ms;  /* when a still-failing episode is logged again */
    int last_code;           /* error code of the last failure */
    char last_msg[64];       /* start of the last message: a new cause is logged */
};

/* Initialises r for the operation named by the printf-style what. */
void retry_init(struct retry *r, int64_t base_ms, int64_t cap_ms, const char *what, ...)
    ATTR_PRINTF(4, 5);
/* Records a failed attempt (cause in e) and returns the delay in ms before
 * the next one. Logs at level only the first failure of an episode, a
 * changed cause, and a reminder every RETRY_REMIND_MS, each with the count
 * and the delay. */
int64_t retry_failed(struct retry *r, enum log_level level, const struct err *e);
/* Records a success: if an episode was open, logs once that it cleared
 * (count and duration) and resets the backoff. */
void retry_succeeded(struct retry *r);
/* retry_failed, then sleeps the delay (cut short when *stop becomes set). */
void retry_wait(struct retry *r, enum log_level level, const struct err *e,
                volatile const int *stop);

#endif /* CELERIAC_RETRY_H */
