/* SPDX-License-Identifier: MIT
 * test_time.c: ISO-8601 parsing and formatting for eta, expires and date_done
 * (util/time.c), against the forms of spec celery-redis.md §3.5.
 */
#include "common.h"
#include "util/buf.h"
#include "util/time.h"

#include "harness.h"

/* 2026-11-25T11:43:53.574058+00:00, the captured eta of spec §7.3. */
#define T_CAPTURED 1795607033.574058
/* 2026-11-25T00:00:00+00:00 */
#define T_MIDNIGHT 1795564800.0

static double parse_ok(const char *s)
{
    double t = -1;
    int rc = time_parse_iso(s, &t);
    if (rc)
        FAIL("time_parse_iso('%s') returned %d, want 0", s, rc);
    return t;
}

static void parse_bad(const char *s)
{
    double t = 12345.0;
    int rc = time_parse_iso(s, &t);
    if (rc != -EINVAL)
        FAIL("time_parse_iso('%s') returned %d (t = %.6f), want -EINVAL", s, rc, t);
}

TEST(parse_python_isoformat)
{
    ASSERT_NEAR(parse_ok("2026-11-25T11:43:53.574058+00:00"), T_CAPTURED, 1e-6);
}

TEST(parse_z_suffix)
{
    ASSERT_NEAR(parse_ok("2026-11-25T11:43:53.574058Z"), T_CAPTURED, 1e-6);
    ASSERT_NEAR(parse_ok("2026-11-25T11:42:55Z"), T_MIDNIGHT + 11 * 3600 + 42 * 60 + 55, 1e-6);
}

TEST(parse_offset_without_colon)
{
    ASSERT_NEAR(parse_ok("2026-11-25T11:43:53.574058+0000"), T_CAPTURED, 1e-6);
    ASSERT_NEAR(parse_ok("2026-11-25T13:43:53.574058+0200"), T_CAPTURED, 1e-6);
}

TEST(parse_negative_and_positive_offsets)
{
    /* 06:13:53 at -05:30 is 11:43:53 UTC. */
    ASSERT_NEAR(parse_ok("2026-11-25T06:13:53.574058-05:30"), T_CAPTURED, 1e-6);
    ASSERT_NEAR(parse_ok("2026-11-25T17:13:53.574058+05:30"), T_CAPTURED, 1e-6);
    ASSERT_NEAR(parse_ok("2026-11-25T06:13:53.574058-0530"), T_CAPTURED, 1e-6);
    /* An offset that crosses midnight. */
    ASSERT_NEAR(parse_ok("2026-11-24T23:00:00-01:00"), T_MIDNIGHT, 1e-6);
    ASSERT_NEAR(parse_ok("2026-11-25T00:00:00-00:00"), T_MIDNIGHT, 1e-6);
}

TEST(parse_no_offset_is_utc)
{
    ASSERT_NEAR(parse_ok("2026-11-25T11:43:53.574058"), T_CAPTURED, 1e-6);
    ASSERT_NEAR(parse_ok("2026-11-25T00:00:00"), T_MIDNIGHT, 1e-6);
}

TEST(parse_no_fraction)
{
    ASSERT_NEAR(parse_ok("2026-11-25T11:43:53+00:00"), T_CAPTURED - 0.574058, 1e-6);
    ASSERT_NEAR(parse_ok("2026-11-25T11:43:53"), T_CAPTURED - 0.574058, 1e-6);
}

TEST(parse_fraction_digits_1_to_9)
{
    const double base = T_CAPTURED - 0.574058;
    /* A fraction is a fraction of a second (".5" is 500 ms), not celery 5.2's microseconds. */
    ASSERT_NEAR(parse_ok("2026-11-25T11:43:53.5+00:00"), base + 0.5, 1e-6);
    ASSERT_NEAR(parse_ok("2026-11-25T11:43:53.57Z"), base + 0.57, 1e-6);
    ASSERT_NEAR(parse_ok("2026-11-25T11:43:53.574Z"), base + 0.574, 1e-6);
    ASSERT_NEAR(parse_ok("2026-11-25T11:43:53.5740Z"), base + 0.574, 1e-6);
    ASSERT_NEAR(parse_ok("2026-11-25T11:43:53.57405Z"), base + 0.57405, 1e-6);
    ASSERT_NEAR(parse_ok("2026-11-25T11:43:53.574058Z"), base + 0.574058, 1e-6);
    ASSERT_NEAR(parse_ok("2026-11-25T11:43:53.5740581Z"), base + 0.5740581, 1e-6);
    ASSERT_NEAR(parse_ok("2026-11-25T11:43:53.57405812Z"), base + 0.57405812, 1e-6);
    ASSERT_NEAR(parse_ok("2026-11-25T11:43:53.574058123Z"), base + 0.574058123, 1e-6);
    ASSERT_NEAR(parse_ok("2026-11-25T11:43:53.999999999Z"), base + 0.999999999, 1e-6);
    ASSERT_NEAR(parse_ok("2026-11-25T11:43:53.000001Z"), base + 0.000001, 1e-7);
}

TEST(parse_zero_fraction_digits_rejected)
{
    parse_bad("2026-11-25T11:43:53.Z");
    parse_bad("2026-11-25T11:43:53.");
    parse_bad("2026-11-25T11:43:53.+00:00");
}

TEST(parse_ten_fraction_digits_rejected)
{
    parse_bad("2026-11-25T11:43:53.5740581234Z");
}

TEST(parse_space_separator)
{
    ASSERT_NEAR(parse_ok("2026-11-25 11:43:53.574058+00:00"), T_CAPTURED, 1e-6);
    ASSERT_NEAR(parse_ok("2026-11-25 11:43:53.574058"), T_CAPTURED, 1e-6);
}

TEST(parse_date_only)
{
    ASSERT_NEAR(parse_ok("2026-11-25"), T_MIDNIGHT, 1e-6);
    ASSERT_NEAR(parse_ok("1970-01-01"), 0.0, 1e-9);
    ASSERT_NEAR(parse_ok("2020-01-01"), 1577836800.0, 1e-6);
}

TEST(parse_epoch_and_leap_day)
{
    ASSERT_NEAR(parse_ok("1970-01-01T00:00:00Z"), 0.0, 1e-9);
    ASSERT_NEAR(parse_ok("2024-02-29T12:00:00Z"), 1709208000.0, 1e-6);
    ASSERT_NEAR(parse_ok("2038-01-19T03:14:08Z"), 2147483648.0, 1e-6);
}

TEST(parse_invalid_inputs)
{
    parse_bad("");
    parse_bad("garbage");
    parse_bad("null");
    parse_bad("2026");
    parse_bad("2026-11");
    parse_bad("26-11-25");
    parse_bad("2026/11/25");
    parse_bad("2026-11-25T");
    parse_bad("2026-11-25T11");
    parse_bad("2026-11-25T11:4");
    parse_bad("2026-11-25X11:43:53");
    parse_bad("2026-11-25t11:43:53Q");
    parse_bad("2026-11-25T11:43:5");
    parse_bad("2026-11-25T11:43:53Zjunk");
    parse_bad("2026-11-25T11:43:53 ");
    parse_bad(" 2026-11-25T11:43:53");
    parse_bad("2026-11-25T11:43:53+");
    parse_bad("2026-11-25T11:43:53+5");
    parse_bad("2026-11-25T11:43:53+05:3");
    parse_bad("2026-11-25T11:43:53+05:30:00");
    parse_bad("2026-11-25T11:43:53+0530x");
    parse_bad("2026-11-25T11:43:53+ab:cd");
    parse_bad("2026-11-25T11:43:53.57a058Z");
    parse_bad("+2026-11-25T11:43:53");
}

TEST(parse_out_of_range_fields)
{
    parse_bad("2026-13-01T00:00:00");
    parse_bad("2026-00-10T00:00:00");
    parse_bad("2026-11-00T00:00:00");
    parse_bad("2026-11-32T00:00:00");
    parse_bad("2026-11-25T24:00:00");
    parse_bad("2026-11-25T11:60:00");
    parse_bad("2026-11-25T11:43:61");
    parse_bad("2026-11-25T11:43:53+24:00");
    parse_bad("2026-11-25T11:43:53+05:60");
}

/* Python's datetime refuses days a month does not have; so must we. */
TEST(parse_impossible_calendar_dates)
{
    parse_bad("2026-02-30T00:00:00");
    parse_bad("2026-02-29T00:00:00");
    parse_bad("2026-04-31T00:00:00Z");
    parse_bad("2100-02-29");
}

TEST(parse_leaves_out_alone_on_error)
{
    double t = 42.0;
    ASSERT_EQ_INT(time_parse_iso("2026-11-25T11:43:53+99:00", &t), -EINVAL);
    ASSERT_NEAR(t, 42.0, 0);
}

static void format(struct buf *b, double t, bool with_offset)
{
    buf_reset(b);
    time_format_iso(b, t, with_offset);
}

TEST(format_with_offset)
{
    struct buf b = BUF_INIT;
    format(&b, T_CAPTURED, true);
    ASSERT_EQ_STR(b.data, "2026-11-25T11:43:53.574058+00:00");
    format(&b, 0, true);
    ASSERT_EQ_STR(b.data, "1970-01-01T00:00:00.000000+00:00");
    format(&b, T_MIDNIGHT, true);
    ASSERT_EQ_STR(b.data, "2026-11-25T00:00:00.000000+00:00");
    buf_release(&b);
}

TEST(format_naive_for_date_done)
{
    struct buf b = BUF_INIT;
    format(&b, 1795606884.940008, false);
    ASSERT_EQ_STR(b.data, "2026-11-25T11:41:24.940008");
    buf_release(&b);
}

TEST(format_always_six_fraction_digits)
{
    struct buf b = BUF_INIT;
    double base = T_MIDNIGHT;
    const double fr[] = {0.0, 0.5, 0.05, 0.000001, 0.123456, 0.999999};
    const char *want[] = {".000000", ".500000", ".050000", ".000001", ".123456", ".999999"};
    for (size_t i = 0; i < ARRAY_SIZE(fr); i++) {
        format(&b, base + fr[i], true);
        ASSERT_EQ_SIZE(b.len, strlen("2026-11-25T00:00:00.000000+00:00"));
        ASSERT_EQ_MEM(b.data + 19, 7, want[i], 7);
        ASSERT_EQ_STR(b.data + 26, "+00:00");
    }
    buf_release(&b);
}

TEST(format_rounds_into_next_second)
{
    struct buf b = BUF_INIT;
    format(&b, T_MIDNIGHT + 59.9999996, true);
    ASSERT_EQ_STR(b.data, "2026-11-25T00:01:00.000000+00:00");
    buf_release(&b);
}

TEST(format_appends)
{
    struct buf b = BUF_INIT;
    buf_adds(&b, "eta=");
    time_format_iso(&b, 0, false);
    ASSERT_EQ_STR(b.data, "eta=1970-01-01T00:00:00.000000");
    buf_release(&b);
}

/* Past 9999 the year takes five digits, as Python's would not: the slow path
 * keeps printf's form rather than writing a wrong date. */
TEST(format_year_past_9999)
{
    struct buf b = BUF_INIT;
    format(&b, 253402300799.5, true);
    ASSERT_EQ_STR(b.data, "9999-12-31T23:59:59.500000+00:00");
    format(&b, 253402300800.25, false);
    ASSERT_EQ_STR(b.data, "10000-01-01T00:00:00.250000");
    buf_release(&b);
}

TEST(format_parse_round_trip)
{
    struct buf b = BUF_INIT;
    const double ts[] = {0.0, 1.5, 946684799.999999, 1577836800.0, T_CAPTURED,
                         1795606920.354051, 2147483647.25, 4102444800.000001};
    for (size_t i = 0; i < ARRAY_SIZE(ts); i++) {
        for (int off = 0; off < 2; off++) {
            format(&b, ts[i], off);
            double back = -1;
            if (time_parse_iso(b.data, &back))
                FAIL("time_parse_iso rejected time_format_iso's '%s'", b.data);
            ASSERT_NEAR(back, ts[i], 1.5e-6);
        }
    }
    /* And the other way: parsing then formatting Python's text gives it back. */
    const char *texts[] = {"2026-11-25T11:43:53.574058+00:00", "2026-11-25T11:42:00.354051+00:00",
                           "2020-01-01T00:00:00.000000+00:00"};
    for (size_t i = 0; i < ARRAY_SIZE(texts); i++) {
        format(&b, parse_ok(texts[i]), true);
        ASSERT_EQ_STR(b.data, texts[i]);
    }
    buf_release(&b);
}

TEST(clocks_are_sane)
{
    double now = time_now();
    ASSERT_TRUE(now > 1.7e9);
    int64_t a = time_mono_ms();
    int64_t b = time_mono_ms();
    ASSERT_GE_INT(b, a);
    time_sleep_ms(0, NULL);
    time_sleep_ms(-5, NULL);
}

RUN_TESTS()
