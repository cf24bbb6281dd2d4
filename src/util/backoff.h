/* SPDX-License-Identifier: MIT
 * backoff.h: exponential backoff with jitter for connection retries and respawns.
 */
#ifndef CELERIAC_BACKOFF_H
#define CELERIAC_BACKOFF_H

struct backoff {
    int64_t base_ms;    /* first delay before jitter */
    int64_t cap_ms;     /* no delay exceeds this */
    unsigned attempt;   /* completed attempts; 0 before the first retry */
    uint64_t rng;       /* xorshift state; seeded per process so children spread out */
};

/* Initialises with a seed taken from the pid and the clock. */
void backoff_init(struct backoff *b, int64_t base_ms, int64_t cap_ms);
/* Returns the next delay: a value drawn from [d/2, d] where d = min(cap, base * 2^attempt),
 * so the delays grow but two processes started together do not retry in step.
 * Increments attempt. */
int64_t backoff_next(struct backoff *b);
void backoff_reset(struct backoff *b);
/* A pseudo-random number from b's generator (for jitter elsewhere). */
uint64_t backoff_random(struct backoff *b);

#endif /* CELERIAC_BACKOFF_H */
