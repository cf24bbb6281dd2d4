/* SPDX-License-Identifier: MIT
 * retry.c: backoff plus once-per-episode logging (see retry.h).
 */
#include "common.h"
#include "util/retry.h"
#include "util/time.h"

void retry_init(struct retry *r, int64_t base_ms, int64_t cap_ms, const char *what, ...)
{
    memset(r, 0, sizeof(*r));
    backoff_init(&r->bo, base_ms, cap_ms);
    va_list ap;
    va_start(ap, what);
    vsnprintf(r->what, sizeof(r->what), what, ap);
    va_end(ap);
}

/* Two failures have the same cause when code and the message's first words
 * (before any tag, id or count) agree. */
static bool same_cause(const struct retry *r, const struct err *e)
{
    size_t n = strcspn(e->msg, ":;(");
    if (n >= sizeof(r->last_msg))
        n = sizeof(r->last_msg) - 1;
    return r->last_code == e->code && !strncmp(r->last_msg, e->msg, n) && r->last_msg[n] == '\0';
}

int64_t retry_failed(struct retry *r, enum log_level level, const struct err *e)
{
    static const struct err unknown = {.code = -1, .msg = "unknown error"};
    if (!e)
        e = &unknown;
    int64_t now = time_mono_ms(), delay = backoff_next(&r->bo);
    bool first = r->failures++ == 0;
    bool changed = !first && !same_cause(r, e);
    if (first) {
        r->since_ms = now;
        log_write(level, "%s failed: %s; retrying in %" PRId64 " ms (further failures are "
                  "counted, not logged)", r->what, e->msg, delay);
    } else if (changed || now >= r->next_remind_ms) {
        log_write(level, "%s still failing after %" PRIu64 " attempts over %.0f s: %s; next "
                  "attempt in %" PRId64 " ms", r->what, r->failures, (double)(now - r->since_ms) / 1000.0,
                  e->msg, delay);
    }
    if (first || changed || now >= r->next_remind_ms)
        r->next_remind_ms = now + RETRY_REMIND_MS;
    r->last_code = e->code;
    size_t n = strcspn(e->msg, ":;(");
    if (n >= sizeof(r->last_msg))
        n = sizeof(r->last_msg) - 1;
    memcpy(r->last_msg, e->msg, n);
    r->last_msg[n] = '\0';
    return delay;
}

void retry_succeeded(struct retry *r)
{
    if (r->failures) {
        log_info("%s works again after %" PRIu64 " failed attempt%s over %.1f s", r->what,
                 r->failures, r->failures == 1 ? "" : "s",
                 (double)(time_mono_ms() - r->since_ms) / 1000.0);
        r->failures = 0;
    }
    backoff_reset(&r->bo);
}

void retry_wait(struct retry *r, enum log_level level, const struct err *e,
                volatile const int *stop)
{
    time_sleep_ms(retry_failed(r, level, e), stop);
}
