/* SPDX-License-Identifier: MIT
 * time.c: clocks and ISO-8601 formatting and parsing for eta, expires and date_done.
 */
#include "common.h"
#include "util/buf.h"
#include "util/time.h"

#include <ctype.h>
#include <time.h>

int64_t time_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

double time_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)(ts.tv_nsec / 1000) / 1e6;
}

void time_sleep_ms(int64_t ms, volatile const int *stop)
{
    if (ms <= 0)
        return;
    struct timespec req = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000};
    while (nanosleep(&req, &req) < 0 && errno == EINTR)
        if (stop && *stop)
            return;
}

/* Writes v (0 <= v < 10^width) as exactly width decimal digits. */
static char *put_digits(char *p, long v, int width)
{
    for (int i = width - 1; i >= 0; i--) {
        p[i] = (char)('0' + v % 10);
        v /= 10;
    }
    return p + width;
}

void time_format_iso(struct buf *out, double t, bool with_offset)
{
    time_t secs = (time_t)t;
    long usec = (long)((t - (double)secs) * 1e6 + 0.5);
    if (usec >= 1000000) {
        secs++;
        usec -= 1000000;
    }
    struct tm tm;
    gmtime_r(&secs, &tm);
    int year = tm.tm_year + 1900;
    if (year < 0 || year > 9999) {
        buf_addf(out, "%04d-%02d-%02dT%02d:%02d:%02d.%06ld%s", year, tm.tm_mon + 1, tm.tm_mday,
                 tm.tm_hour, tm.tm_min, tm.tm_sec, usec, with_offset ? "+00:00" : "");
        return;
    }
    /* Every stored result carries one of these: written digit by digit, as
     * printf's format parsing costs more than the rest of the result's encoding. */
    char s[sizeof("YYYY-MM-DDTHH:MM:SS.ffffff+00:00")];
    char *p = s;
    p = put_digits(p, year, 4);
    *p++ = '-';
    p = put_digits(p, tm.tm_mon + 1, 2);
    *p++ = '-';
    p = put_digits(p, tm.tm_mday, 2);
    *p++ = 'T';
    p = put_digits(p, tm.tm_hour, 2);
    *p++ = ':';
    p = put_digits(p, tm.tm_min, 2);
    *p++ = ':';
    p = put_digits(p, tm.tm_sec, 2);
    *p++ = '.';
    p = put_digits(p, usec, 6);
    if (with_offset) {
        memcpy(p, "+00:00", 6);
        p += 6;
    }
    buf_add(out, s, (size_t)(p - s));
}

static int read_digits(const char **p, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (!isdigit((unsigned char)**p))
            return -EINVAL;
        v = v * 10 + (**p - '0');
        (*p)++;
    }
    *out = v;
    return 0;
}

int time_parse_iso(const char *s, double *out)
{
    const char *p = s;
    int year, mon, day, hour = 0, min = 0, sec = 0;
    if (read_digits(&p, 4, &year) || *p++ != '-' || read_digits(&p, 2, &mon) || *p++ != '-' ||
        read_digits(&p, 2, &day))
        return -EINVAL;
    double frac = 0;
    if (*p == 'T' || *p == ' ') {
        p++;
        if (read_digits(&p, 2, &hour) || *p++ != ':' || read_digits(&p, 2, &min))
            return -EINVAL;
        if (*p == ':') {
            p++;
            if (read_digits(&p, 2, &sec))
                return -EINVAL;
            if (*p == '.' || *p == ',') {
                p++;
                double scale = 0.1;
                int digits = 0;
                while (isdigit((unsigned char)*p)) {
                    if (++digits > 9)
                        return -EINVAL;
                    frac += (*p - '0') * scale;
                    scale /= 10;
                    p++;
                }
                if (!digits)
                    return -EINVAL;
            }
        }
    }
    int offset = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int sign = *p++ == '-' ? -1 : 1, oh, om = 0;
        if (read_digits(&p, 2, &oh))
            return -EINVAL;
        if (*p == ':')
            p++;
        if (*p && read_digits(&p, 2, &om))
            return -EINVAL;
        if (oh > 23 || om > 59)
            return -EINVAL;
        offset = sign * (oh * 3600 + om * 60);
    }
    if (*p)
        return -EINVAL;
    static const int days_in[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (mon < 1 || mon > 12 || day < 1 || hour > 23 || min > 59 || sec > 60)
        return -EINVAL;
    bool leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    if (day > days_in[mon - 1] + (mon == 2 && leap))
        return -EINVAL;
    struct tm tm = {.tm_year = year - 1900, .tm_mon = mon - 1, .tm_mday = day,
                    .tm_hour = hour, .tm_min = min, .tm_sec = sec};
    time_t t = timegm(&tm);
    *out = (double)t - offset + frac;
    return 0;
}
