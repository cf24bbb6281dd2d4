/* SPDX-License-Identifier: MIT
 * db/pg.c: the PostgreSQL driver (libpq): connect options, zero-round-trip
 * loss detection, ping, rollback of a transaction left open, and the
 * classification of libpq failures as "connection lost".
 */
#include "common.h"
#include "db/conn.h"
#include "db/driver.h"
#include "util/buf.h"
#include "util/log.h"

#include <libpq-fe.h>
#include <poll.h>

/* libpq's messages span lines ("...failed: Connection refused\n\tIs the server
 * running..."); a log record is one line. */
static void one_line(char *s)
{
    size_t n = strlen(s);
    while (n && (s[n - 1] == '\n' || s[n - 1] == ' '))
        s[--n] = '\0';
    for (char *p = s; *p; p++)
        if (*p == '\n' || *p == '\t' || *p == '\r')
            *p = ' ';
}

int db_pg_describe(const char *conninfo, char **where, struct err *e)
{
    char *errmsg = NULL;
    PQconninfoOption *opts = PQconninfoParse(conninfo, &errmsg);
    if (!opts) {
        if (errmsg) {
            one_line(errmsg);
            err_set(e, -EINVAL, "invalid PostgreSQL connection string: %s", errmsg);
            PQfreemem(errmsg);
        } else {
            err_set(e, -EINVAL, "invalid PostgreSQL connection string");
        }
        return -EINVAL;
    }
    const char *host = NULL, *port = NULL, *hostaddr = NULL, *dbname = NULL;
    for (PQconninfoOption *o = opts; o->keyword; o++) {
        if (!o->val || !*o->val)
            continue;
        if (!strcmp(o->keyword, "host"))
            host = o->val;
        else if (!strcmp(o->keyword, "hostaddr"))
            hostaddr = o->val;
        else if (!strcmp(o->keyword, "port"))
            port = o->val;
        else if (!strcmp(o->keyword, "dbname"))
            dbname = o->val;
    }
    struct buf b = BUF_INIT;
    buf_addf(&b, "%s:%s", host ? host : hostaddr ? hostaddr : "/var/run/postgresql",
             port ? port : "5432");
    if (dbname)
        buf_addf(&b, "/%s", dbname);
    *where = buf_detach(&b, NULL);
    PQconninfoFree(opts);
    return 0;
}

/* Server notices (and the FATAL that precedes a terminated session) go to
 * our log instead of libpq's default, a bare line on stderr. */
static void log_notice(void *arg, const char *message)
{
    const struct db_conn *c = arg;
    char msg[ERR_MSG_MAX];
    snprintf(msg, sizeof(msg), "%s", message);
    one_line(msg);
    log_warning("database '%s' says: %s", c->cfg->where, msg);
}

static int pg_open(struct db_conn *c, struct err *e)
{
    char timeout[16];
    snprintf(timeout, sizeof(timeout), "%d", c->cfg->connect_timeout_s);
    /* Our defaults come before dbname (which expands the user's string and
     * overrides them); application_name comes after, so it always names us.
     * gssencmode=disable: libpq's default "prefer" initialises Kerberos in
     * every child (about 1 MB resident and a slower connect) to negotiate an
     * encryption almost no server offers; a URL that asks for it still gets it. */
    const char *keys[] = {"connect_timeout", "keepalives", "keepalives_idle",
                          "keepalives_interval", "keepalives_count", "gssencmode", "dbname",
                          "application_name", NULL};
    const char *vals[] = {timeout, "1", "30", "10", "3", "disable", c->cfg->url, c->app_name,
                          NULL};
    PGconn *pg = PQconnectdbParams(keys, vals, 1);
    if (!pg)
        return err_set(e, E_CONN_LOST, "connect to '%s' failed: out of memory", c->cfg->where);
    if (PQstatus(pg) != CONNECTION_OK) {
        char msg[ERR_MSG_MAX];
        snprintf(msg, sizeof(msg), "%s", PQerrorMessage(pg));
        one_line(msg);
        err_set(e, E_CONN_LOST, "connect to '%s' failed: %s", c->cfg->where, msg);
        PQfinish(pg);
        return E_CONN_LOST;
    }
    PQsetNoticeProcessor(pg, log_notice, c);
    c->pg = pg;
    /* Made now: PQcancel is signal-safe, PQgetCancel is not. */
    c->pg_cancel = PQgetCancel(pg);
    return 0;
}

static void pg_close(struct db_conn *c)
{
    PGcancel *cancel = c->pg_cancel;
    c->pg_cancel = NULL;
    PQfreeCancel(cancel);
    PQfinish(c->pg);
    c->pg = NULL;
}

/* A server that ends our session while we are idle (restart, terminate)
 * leaves an error and EOF on the socket: readable data between tasks means
 * something happened, and PQconsumeInput turns it into CONNECTION_BAD. */
static bool pg_is_lost(struct db_conn *c)
{
    /* The FATAL message and the EOF may need separate reads: keep consuming
     * while the socket stays readable (bounded, in case of a notice storm). */
    for (int i = 0; i < 8 && PQstatus(c->pg) != CONNECTION_BAD; i++) {
        struct pollfd p = {.fd = PQsocket(c->pg), .events = POLLIN};
        if (p.fd < 0)
            return true;
        int n;
        while ((n = poll(&p, 1, 0)) < 0 && errno == EINTR)
            ;
        if (n <= 0)
            break;
        if (!PQconsumeInput(c->pg))
            return true;
        PGnotify *note;
        while ((note = PQnotifies(c->pg)))
            PQfreemem(note);
    }
    return PQstatus(c->pg) == CONNECTION_BAD;
}

/* SQLSTATEs that mean the session is gone even if the socket still looks open:
 * class 08 (connection exception), admin/crash shutdown, cannot connect now. */
static bool sqlstate_is_loss(const char *state)
{
    if (!state)
        return false;
    return !strncmp(state, "08", 2) || !strcmp(state, "57P01") || !strcmp(state, "57P02") ||
           !strcmp(state, "57P03");
}

static int run_simple(struct db_conn *c, const char *sql, struct err *e)
{
    PGresult *r = PQexec(c->pg, sql);
    ExecStatusType st = PQresultStatus(r);
    int rc = 0;
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK && st != PGRES_EMPTY_QUERY) {
        char msg[ERR_MSG_MAX];
        snprintf(msg, sizeof(msg), "%s", PQerrorMessage(c->pg));
        one_line(msg);
        bool lost = PQstatus(c->pg) == CONNECTION_BAD ||
                    sqlstate_is_loss(PQresultErrorField(r, PG_DIAG_SQLSTATE));
        rc = err_set(e, lost ? E_CONN_LOST : E_DB, "'%s' failed: %s", sql, msg);
    }
    PQclear(r);
    return rc;
}

static int pg_ping(struct db_conn *c, struct err *e)
{
    /* An empty query is a full round trip with no parse or plan. */
    return run_simple(c, "", e) ? E_CONN_LOST : 0;
}

static int pg_reset(struct db_conn *c, struct err *e)
{
    PGTransactionStatusType ts = PQtransactionStatus(c->pg);
    if (ts == PQTRANS_IDLE)
        return 0;
    if (ts == PQTRANS_ACTIVE || ts == PQTRANS_UNKNOWN)
        return err_set(e, E_CONN_LOST, "connection in an unknown state after a task");
    log_warning("a task left a transaction open on '%s'; rolled back", c->cfg->where);
    return run_simple(c, "ROLLBACK", e) ? E_CONN_LOST : 0;
}

static void pg_cancel(struct db_conn *c)
{
    char errbuf[256];
    if (c->pg_cancel)
        PQcancel(c->pg_cancel, errbuf, sizeof(errbuf));
}

const struct db_driver db_pg_driver = {
    .name = "postgresql",
    .open = pg_open,
    .close = pg_close,
    .is_lost = pg_is_lost,
    .ping = pg_ping,
    .reset = pg_reset,
    .cancel = pg_cancel,
};
