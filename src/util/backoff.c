/* SPDX-License-Identifier: MIT
 * backoff.c: exponential backoff with "equal jitter" (see backoff.h).
 */
#include "common.h"
#include "util/backoff.h"
#include "util/time.h"

void backoff_init(struct backoff *b, int64_t base_ms, int64_t cap_ms)
{
    b->base_ms = base_ms > 0 ? base_ms : 1;
    b->cap_ms = cap_ms >= b->base_ms ? cap_ms : b->base_ms;
    b->attempt = 0;
    b->rng = ((uint64_t)getpid() << 32) ^ (uint64_t)time_mono_ms() ^ 0x9e3779b97f4a7c15ull;
    if (!b->rng)
        b->rng = 1;
}

static uint64_t xorshift64(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *s = x;
    return x;
}

int64_t backoff_next(struct backoff *b)
{
    int64_t d = b->base_ms;
    for (unsigned i = 0; i < b->attempt && d < b->cap_ms; i++)
        d = d > b->cap_ms / 2 ? b->cap_ms : d * 2;
    if (d > b->cap_ms)
        d = b->cap_ms;
    b->attempt++;
    int64_t half = d / 2;
    return half + (int64_t)(xorshift64(&b->rng) % (uint64_t)(d - half + 1));
}

uint64_t backoff_random(struct backoff *b)
{
    return xorshift64(&b->rng);
}

void backoff_reset(struct backoff *b)
{
    b->attempt = 0;
}
