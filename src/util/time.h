/* SPDX-License-Identifier: MIT
 * time.h: clocks and Celery's ISO-8601 timestamps.
 */
#ifndef CELERIAC_TIME_H
#define CELERIAC_TIME_H

struct buf;

/* Milliseconds on CLOCK_MONOTONIC: for intervals, timeouts and ages. */
int64_t time_mono_ms(void);
/* Unix time in seconds with microseconds: for unacked scores and ETAs. */
double time_now(void);
/* Sleeps ms milliseconds, resuming after signals unless *stop becomes non-zero. */
void time_sleep_ms(int64_t ms, volatile const int *stop);

/* Appends t (Unix seconds) as "YYYY-MM-DDTHH:MM:SS.ffffff+00:00" (with_offset)
 * or the naive UTC form Celery 5.2 writes in date_done (without). */
void time_format_iso(struct buf *out, double t, bool with_offset);

/* Parses Celery's ETA/expires forms: 'Z', +HH:MM, +HHMM, no offset (UTC),
 * optional 1-9 fraction digits, 'T' or ' ' separator. Returns 0 or -EINVAL. */
int time_parse_iso(const char *s, double *out);

#endif /* CELERIAC_TIME_H */
