/* SPDX-License-Identifier: MIT
 * db/conn.c: lifecycle of a child's database connection: open with retry and
 * backoff, health check before tasks, reconnect after loss, ownership by pid,
 * and the single close path (see conn.h). Client-library details live in
 * pg.c and sqlite.c.
 */
#include "common.h"
#include "db/conn.h"
#include "db/driver.h"
#include "util/backoff.h"
#include "util/log.h"
#include "util/self.h"
#include "util/time.h"

static const struct db_driver *driver_for(const struct db_conn *c)
{
    switch (c->cfg->kind) {
    case DB_POSTGRES:
        return &db_pg_driver;
    case DB_SQLITE:
        return &db_sqlite_driver;
    case DB_NONE:
        break;
    }
    return NULL;
}

void db_conn_init(struct db_conn *c, const struct db_config *cfg, const char *app_name)
{
    memset(c, 0, sizeof(*c));
    c->cfg = cfg;
    c->pooled = cfg->pooled;
    snprintf(c->app_name, sizeof(c->app_name), "%s", app_name);
}

bool db_conn_is_open(const struct db_conn *c)
{
    return c->pg || c->sqlite;
}

const char *db_conn_where(const struct db_conn *c)
{
    return c->at[0] ? c->at : c->cfg->where;
}

void db_conn_close(struct db_conn *c, const char *reason)
{
    const struct db_driver *d = driver_for(c);
    if (!d || !db_conn_is_open(c))
        return;
    if (c->owner == self_pid() && c->on_close)
        c->on_close(c->hook_arg);
    d->close(c);
    c->broker_txn = false; /* its transaction ended with it */
    if (reason)
        log_info("database connection to '%s' closed after %.1f s: %s", db_conn_where(c),
                 (double)(time_mono_ms() - c->opened_ms) / 1000.0, reason);
    c->at[0] = '\0';
}

/* One attempt: open, then let the library prepare its statements. */
static int open_once(struct db_conn *c, const struct db_driver *d, struct err *e)
{
    int rc = d->open(c, e);
    if (rc)
        return rc;
    c->owner = self_pid();
    c->opened_ms = c->last_used_ms = time_mono_ms();
    c->uses = 0;
    /* Recycle between 80% and 100% of the limits, so connections opened
     * together (a fleet restarting) do not all reconnect together. */
    struct backoff jitter;
    backoff_init(&jitter, 1000, 1000);
    int64_t pct = 800 + (int64_t)(backoff_random(&jitter) % 201); /* per mille */
    c->recycle_at_ms = c->cfg->max_age_ms ? c->opened_ms + c->cfg->max_age_ms * pct / 1000 : 0;
    c->recycle_after = c->cfg->max_uses ? c->cfg->max_uses * (uint64_t)pct / 1000 : 0;
    if (c->cfg->max_uses && !c->recycle_after)
        c->recycle_after = 1;
    if (c->on_open && c->on_open(c->hook_arg)) {
        err_set(e, E_CONN_LOST, "connect to '%s' failed: the library's db_connected hook failed",
                c->cfg->where);
        db_conn_close(c, NULL);
        return E_CONN_LOST;
    }
    return 0;
}

/* How long a health check or rollback may wait for the server: as long as
 * a connect may take, and never longer than limit_ms when that is set. */
static int64_t check_timeout_ms(const struct db_conn *c, int64_t limit_ms)
{
    int64_t t = (int64_t)(c->cfg->connect_timeout_s > 0 ? c->cfg->connect_timeout_s : 5) * 1000;
    return limit_ms > 0 && limit_ms < t ? limit_ms : t;
}

/* An outage is one episode: its first failure is logged with the retry
 * delay, the attempts after it only at debug level, and its end (connected
 * or given up) with the count and how long it lasted. */
int db_conn_open(struct db_conn *c, int attempts, volatile sig_atomic_t *stop, struct err *e)
{
    const struct db_driver *d = driver_for(c);
    if (!d)
        return 0;
    struct backoff bo;
    backoff_init(&bo, c->cfg->backoff_base_ms, c->cfg->backoff_cap_ms);
    int64_t t0 = time_mono_ms(), counted = t0;
    bool full = false; /* the episode began with "too many clients" (SQLSTATE 53300) */
    for (int attempt = 1;; attempt++) {
        c->attempts++;
        int rc = open_once(c, d, e);
        int64_t now = time_mono_ms();
        c->wait_ms += now - counted;
        counted = now;
        double took = (double)(now - t0) / 1000.0;
        if (!rc) {
            if (attempt > 1 && full)
                log_info("database '%s' has a free connection slot again after %d refused "
                         "attempt%s in %.1f s (too many clients)", db_conn_where(c), attempt - 1,
                         attempt == 2 ? "" : "s", took);
            else if (attempt > 1)
                log_info("database '%s' reachable again after %d failed attempt%s in %.1f s",
                         db_conn_where(c), attempt - 1, attempt == 2 ? "" : "s", took);
            return 0;
        }
        if (attempt == 1)
            full = c->cfg->kind == DB_POSTGRES && e && db_pg_message_is_full(e->msg);
        bool last = (attempts > 0 && attempt >= attempts) || (stop && *stop);
        if (last) {
            if (attempts > 0 && full)
                log_write(c->quiet ? LOG_DEBUG : LOG_ERROR,
                          "database '%s' still full after %d attempt%s in %.1f s (too many "
                          "clients): %s", c->cfg->where, attempt, attempt == 1 ? "" : "s", took,
                          e ? e->msg : "");
            else if (attempts > 0)
                log_write(c->quiet ? LOG_DEBUG : LOG_ERROR,
                          "database unreachable after %d attempt%s in %.1f s: %s", attempt,
                          attempt == 1 ? "" : "s", took, e ? e->msg : "");
            else if (attempt > 1)
                log_info("stopped retrying database '%s' after %d failed attempts in %.1f s",
                         c->cfg->where, attempt, took);
            return rc;
        }
        if (c->on_retry)
            c->on_retry(c->hook_arg);
        int64_t delay = backoff_next(&bo);
        if (attempt == 1 && full)
            log_warning("database '%s' is full: it refuses new connections (too many clients, "
                        "SQLSTATE 53300)%s; waiting for a free slot, retrying in %" PRId64 " ms "
                        "with backoff and jitter; further refusals are counted: %s",
                        c->cfg->where, attempts > 0 ? " (attempt 1)" : "", delay,
                        e ? e->msg : "");
        else if (attempt == 1 && attempts > 0)
            log_warning("%s (attempt 1/%d); retrying in %" PRId64 " ms, with backoff; "
                        "further failures are counted", e ? e->msg : "", attempts, delay);
        else if (attempt == 1)
            log_warning("%s; retrying in %" PRId64 " ms, with backoff until it answers; "
                        "further failures are counted", e ? e->msg : "", delay);
        else
            log_debug("%s (attempt %d); retrying in %" PRId64 " ms", e ? e->msg : "", attempt,
                      delay);
        time_sleep_ms(delay, (volatile const int *)stop);
        c->wait_ms += time_mono_ms() - counted;
        counted = time_mono_ms();
    }
}

static bool owned(struct db_conn *c)
{
    if (c->owner == self_pid())
        return true;
    log_error("database connection opened by pid %d refused to pid %d", (int)c->owner,
              (int)self_pid());
    return false;
}

int db_conn_clean(struct db_conn *c, struct err *e)
{
    const struct db_driver *d = driver_for(c);
    if (!d || !db_conn_is_open(c) || c->owner != self_pid() || c->broker_txn)
        return 0;
    int rc = d->reset(c, check_timeout_ms(c, 0), e);
    if (rc)
        db_conn_close(c, e ? e->msg : "rollback failed");
    return rc;
}

bool db_conn_check_lost(struct db_conn *c)
{
    const struct db_driver *d = driver_for(c);
    c->lost_why = "connection lost";
    if (!d || !db_conn_is_open(c))
        return d != NULL;
    if (d->is_lost(c)) {
        db_conn_close(c, c->lost_why);
        return true;
    }
    const char *what = d->read_only(c);
    if (!what)
        return false;
    /* A standby (or a fenced old primary) answers reads and refuses every
     * write (SQLSTATE 25006): a new session, which libpq opens only on a
     * read-write server, is the way out, exactly as after a loss. */
    c->lost_why = !strncmp(what, "a standby", 9) ? "connection on a standby (read-only server)"
                                                  : "connection on a read-only server";
    log_warning("database '%s' is %s and read-write is wanted; reconnecting to find the primary",
                db_conn_where(c), what);
    db_conn_close(c, c->lost_why);
    return true;
}

bool db_conn_recycle_due(const struct db_conn *c)
{
    return (c->recycle_at_ms && time_mono_ms() >= c->recycle_at_ms) ||
           (c->recycle_after && c->uses >= c->recycle_after);
}

int db_conn_ready(struct db_conn *c, int64_t limit_ms, volatile sig_atomic_t *stop,
                  struct err *e)
{
    const struct db_driver *d = driver_for(c);
    if (!d || (c->broker_txn && db_conn_is_open(c)))
        return 0; /* just used; the next fetch takes the transaction over */
    int64_t timeout = check_timeout_ms(c, limit_ms);
    const char *why = NULL;
    char reason[ERR_MSG_MAX + 32];
    if (db_conn_is_open(c) && !owned(c)) {
        /* Inherited across fork: drop our copy without touching the socket's
         * session, which belongs to the other process. */
        c->pg = NULL;
        c->sqlite = NULL;
        c->at[0] = '\0';
        why = "inherited from another process";
    } else if (db_conn_is_open(c) && d->is_lost(c)) {
        why = "lost while idle";
    } else if (db_conn_is_open(c) && db_conn_recycle_due(c)) {
        /* Planned: close quietly and open a new one, not a "loss". */
        db_conn_close(c, c->recycle_after && c->uses >= c->recycle_after ? "recycled (task count)"
                                                                         : "recycled (age)");
        return db_conn_open(c, 0, stop, e);
    } else if (db_conn_is_open(c) && c->cfg->idle_check_ms > 0 &&
               time_mono_ms() - c->last_used_ms > c->cfg->idle_check_ms) {
        struct err pe = {0};
        if (d->ping(c, timeout, &pe)) {
            snprintf(reason, sizeof(reason), "health check failed: %s", pe.msg);
            why = reason;
        } else {
            /* Proven just now: an idle child that checks before every
             * fetch (a connection the broker shares) pings once per
             * idle_check_ms, not once per fetch. */
            c->last_used_ms = time_mono_ms();
        }
    }
    if (!why && db_conn_is_open(c)) {
        struct err re = {0};
        if (d->reset(c, timeout, &re) == 0)
            return 0;
        snprintf(reason, sizeof(reason), "%s", re.msg);
        why = reason;
    }
    if (why) {
        log_warning("database connection to '%s' unusable (%s); reconnecting", db_conn_where(c),
                    why);
        db_conn_close(c, why);
    }
    int rc = db_conn_open(c, 0, stop, e);
    if (!rc) {
        c->reconnects++;
        log_info("database connection to '%s' re-established (reconnect #%u)", db_conn_where(c),
                 c->reconnects);
    }
    return rc;
}

void db_conn_cancel(struct db_conn *c)
{
    const struct db_driver *d = driver_for(c);
    if (d && db_conn_is_open(c))
        d->cancel(c);
}

PGconn *db_conn_pg(struct db_conn *c)
{
    if (!c->pg || !owned(c))
        return NULL;
    return c->pg;
}

sqlite3 *db_conn_sqlite(struct db_conn *c)
{
    if (!c->sqlite || !owned(c))
        return NULL;
    return c->sqlite;
}
