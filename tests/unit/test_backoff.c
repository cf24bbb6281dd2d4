/* SPDX-License-Identifier: MIT
 * test_backoff.c: exponential backoff with jitter (util/backoff.c).
 */
#include "common.h"
#include "util/backoff.h"

#include "harness.h"

/* The ceiling d of attempt n for base and cap: min(cap, base * 2^n). */
static int64_t ceiling(int64_t base, int64_t cap, unsigned n)
{
    int64_t d = base;
    for (unsigned i = 0; i < n && d < cap; i++)
        d = d > INT64_MAX / 2 ? INT64_MAX : d * 2;
    return d < cap ? d : cap;
}

static void check_bounds(struct backoff *b, int64_t base, int64_t cap, unsigned attempts)
{
    for (unsigned n = 0; n < attempts; n++) {
        int64_t d = ceiling(base, cap, n);
        int64_t got = backoff_next(b);
        if (got < d / 2 || got > d)
            FAIL("attempt %u (base %" PRId64 ", cap %" PRId64 "): delay %" PRId64
                 " outside [%" PRId64 ", %" PRId64 "]",
                 n, base, cap, got, d / 2, d);
    }
}

TEST(first_delay_within_half_to_base)
{
    for (uint64_t seed = 1; seed < 200; seed++) {
        struct backoff b;
        backoff_init(&b, 100, 10000);
        b.rng = seed * 0x9e3779b97f4a7c15ull;
        ASSERT_EQ_INT(b.attempt, 0);
        int64_t d = backoff_next(&b);
        ASSERT_GE_INT(d, 50);
        ASSERT_LE_INT(d, 100);
        ASSERT_EQ_INT(b.attempt, 1);
    }
}

TEST(delays_within_bounds_every_attempt)
{
    for (uint64_t seed = 1; seed < 100; seed++) {
        struct backoff b;
        backoff_init(&b, 100, 30000);
        b.rng = seed * 0x2545f4914f6cdd1dull;
        check_bounds(&b, 100, 30000, 40);
    }
}

TEST(odd_base_bounds)
{
    struct backoff b;
    backoff_init(&b, 7, 1001);
    check_bounds(&b, 7, 1001, 30);
    backoff_init(&b, 1, 1);
    for (int i = 0; i < 50; i++) {
        int64_t d = backoff_next(&b);
        ASSERT_GE_INT(d, 0);
        ASSERT_LE_INT(d, 1);
    }
}

/* The ceiling doubles: the mean over many seeds of attempt n+1 is about twice n's. */
TEST(delays_grow)
{
    double mean[6] = {0};
    const int runs = 400;
    for (int r = 0; r < runs; r++) {
        struct backoff b;
        backoff_init(&b, 1000, 1000000);
        b.rng = (uint64_t)(r + 1) * 0x9e3779b97f4a7c15ull;
        for (int n = 0; n < 6; n++)
            mean[n] += (double)backoff_next(&b) / runs;
    }
    for (int n = 0; n + 1 < 6; n++) {
        double ratio = mean[n + 1] / mean[n];
        if (ratio < 1.7 || ratio > 2.3)
            FAIL("mean delay of attempt %d is %.1f, of attempt %d is %.1f: ratio %.2f not ~2",
                 n, mean[n], n + 1, mean[n + 1], ratio);
    }
    /* Equal jitter: the mean of [d/2, d] is about 3d/4. */
    ASSERT_NEAR(mean[0], 750, 40);
}

TEST(cap_holds)
{
    struct backoff b;
    backoff_init(&b, 100, 1500);
    int64_t max = 0;
    for (int i = 0; i < 200; i++) {
        int64_t d = backoff_next(&b);
        ASSERT_LE_INT(d, 1500);
        if (i >= 5)
            ASSERT_GE_INT(d, 750);
        if (d > max)
            max = d;
    }
    /* Jitter still spreads delays once capped. */
    ASSERT_GT_INT(max, 1125);
}

TEST(cap_below_base_is_base)
{
    struct backoff b;
    backoff_init(&b, 500, 10);
    for (int i = 0; i < 20; i++) {
        int64_t d = backoff_next(&b);
        ASSERT_GE_INT(d, 250);
        ASSERT_LE_INT(d, 500);
    }
}

TEST(nonpositive_base_still_positive_bound)
{
    struct backoff b;
    backoff_init(&b, 0, 100);
    for (int i = 0; i < 30; i++) {
        int64_t d = backoff_next(&b);
        ASSERT_GE_INT(d, 0);
        ASSERT_LE_INT(d, 100);
    }
    backoff_init(&b, -5, 100);
    for (int i = 0; i < 30; i++) {
        int64_t d = backoff_next(&b);
        ASSERT_GE_INT(d, 0);
        ASSERT_LE_INT(d, 100);
    }
}

/* Many attempts against a huge cap: the doubling must not overflow. */
TEST(many_attempts_do_not_overflow)
{
    struct backoff b;
    backoff_init(&b, 1, INT64_MAX);
    int64_t prev_ceiling = 0;
    for (unsigned n = 0; n < 200; n++) {
        int64_t d = backoff_next(&b);
        int64_t c = ceiling(1, INT64_MAX, n);
        if (d < c / 2 || d > c)
            FAIL("attempt %u: delay %" PRId64 " outside [%" PRId64 ", %" PRId64 "]", n, d,
                 c / 2, c);
        ASSERT_GE_INT(c, prev_ceiling);
        prev_ceiling = c;
    }
}

TEST(reset_starts_over)
{
    struct backoff b;
    backoff_init(&b, 100, 100000);
    for (int i = 0; i < 8; i++)
        backoff_next(&b);
    ASSERT_EQ_INT(b.attempt, 8);
    int64_t late = backoff_next(&b);
    ASSERT_GE_INT(late, 100 * 256 / 2);
    backoff_reset(&b);
    ASSERT_EQ_INT(b.attempt, 0);
    int64_t d = backoff_next(&b);
    ASSERT_GE_INT(d, 50);
    ASSERT_LE_INT(d, 100);
    d = backoff_next(&b);
    ASSERT_GE_INT(d, 100);
    ASSERT_LE_INT(d, 200);
}

static void sequence(uint64_t seed, int64_t *out, int n)
{
    struct backoff b;
    backoff_init(&b, 1000, 1000);
    b.rng = seed;
    for (int i = 0; i < n; i++)
        out[i] = backoff_next(&b);
}

/* Two processes with different seeds do not retry in step. */
TEST(different_seeds_spread)
{
    enum { N = 64 };
    int64_t a[N], b[N];
    sequence(1, a, N);
    sequence(2, b, N);
    int same = 0;
    for (int i = 0; i < N; i++)
        same += a[i] == b[i];
    /* 501 possible values: a handful of coincidences at most. */
    ASSERT_LE_INT(same, 4);

    /* Seeds as children forked in the same millisecond get them: only the pid differs. */
    int64_t c[N], d[N];
    sequence((uint64_t)4242 << 32 ^ 0x9e3779b97f4a7c15ull, c, N);
    sequence((uint64_t)4243 << 32 ^ 0x9e3779b97f4a7c15ull, d, N);
    same = 0;
    for (int i = 0; i < N; i++)
        same += c[i] == d[i];
    ASSERT_LE_INT(same, 4);
    ASSERT_NE_INT(c[0], d[0]);
}

/* One seed covers the whole jitter range [d/2, d], not a corner of it. */
TEST(jitter_covers_range)
{
    struct backoff b;
    backoff_init(&b, 1000, 1000);
    int64_t lo = INT64_MAX, hi = 0;
    int buckets[5] = {0};
    for (int i = 0; i < 5000; i++) {
        int64_t d = backoff_next(&b);
        ASSERT_GE_INT(d, 500);
        ASSERT_LE_INT(d, 1000);
        lo = d < lo ? d : lo;
        hi = d > hi ? d : hi;
        buckets[d == 1000 ? 4 : (d - 500) / 100]++;
    }
    ASSERT_LE_INT(lo, 510);
    ASSERT_GE_INT(hi, 990);
    for (int i = 0; i < 5; i++)
        ASSERT_GE_INT(buckets[i], 700);
}

TEST(init_seeds_nonzero)
{
    struct backoff b;
    backoff_init(&b, 10, 20);
    ASSERT_NE_INT(b.rng, 0);
    ASSERT_EQ_INT(b.base_ms, 10);
    ASSERT_EQ_INT(b.cap_ms, 20);
}

RUN_TESTS()
