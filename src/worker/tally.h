/* SPDX-License-Identifier: MIT
 * worker/tally.h: counters for the metrics process, in the scoreboard's
 * mapping beside the slots: per child slot and per registered task. Kept
 * apart from the slots so the master's reset of a slot for a new child
 * leaves them: they only grow for the worker's life. Written by children
 * (and by the control process for nothing), read by the metrics process.
 * All fields are atomics; nothing here takes a lock.
 */
#ifndef CELERIAC_WORKER_TALLY_H
#define CELERIAC_WORKER_TALLY_H

#include <stdatomic.h>

/* Upper bounds (seconds) of the task runtime histogram: prometheus_client's
 * defaults, then 30 and 60 for the database tasks celeriac runs. +Inf is
 * implied after the last. */
#define TALLY_BUCKETS 16
extern const double tally_bucket_le[TALLY_BUCKETS];

/* One child slot, across every process that has lived in it. */
struct child_tally {
    _Atomic uint64_t starts;            /* processes started in the slot (restarts + 1) */
    _Atomic uint64_t reconnects;        /* database re-opens after a loss */
    _Atomic uint64_t connect_attempts;  /* database connect attempts, failed or not */
    _Atomic uint64_t db_wait_ms;        /* time spent connecting (outages included) */
    _Atomic uint64_t cancels;           /* statements cancelled by a time limit */
};

/* One registered task (by its index in the library), summed over children. */
struct task_tally {
    _Atomic uint64_t received;          /* messages decoded for it (retries again) */
    _Atomic uint64_t started;
    _Atomic uint64_t succeeded;
    _Atomic uint64_t failed;
    _Atomic uint64_t retried;           /* retry messages sent */
    _Atomic uint64_t revoked;           /* discarded revoked or expired */
    _Atomic uint64_t runtime_us;        /* sum of the runtimes of succeeded + failed */
    _Atomic uint64_t bucket[TALLY_BUCKETS + 1]; /* not cumulative; the last is +Inf */
};

/* Adds one runtime of secs to t's histogram. Any process. */
void tally_observe(struct task_tally *t, double secs);

#endif /* CELERIAC_WORKER_TALLY_H */
