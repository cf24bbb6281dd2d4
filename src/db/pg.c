/* SPDX-License-Identifier: MIT
 * db/pg.c: the PostgreSQL driver (libpq): connect options, zero-round-trip
 * loss detection, ping and rollback bounded by a deadline, and the
 * classification of libpq failures as "connection lost".
 */
#include "common.h"
#include "db/conn.h"
#include "db/driver.h"
#include "util/buf.h"
#include "util/log.h"
#include "util/time.h"

#include <libpq-fe.h>
#include <limits.h>
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
    /* A multi-host URL gives comma lists: "h1:p1,h2:p2"; one port (or none)
     * applies to every host, as in libpq. */
    struct buf b = BUF_INIT;
    const char *h = host ? host : hostaddr ? hostaddr : "/var/run/postgresql";
    const char *p = port ? port : "5432";
    bool one_port = !strchr(p, ',');
    for (;;) {
        size_t hn = strcspn(h, ","), pn = strcspn(p, ",");
        /* an empty entry is libpq's default */
        buf_addf(&b, "%s%.*s:%.*s", b.len ? "," : "", hn ? (int)hn : 19,
                 hn ? h : "/var/run/postgresql", pn ? (int)pn : 4, pn ? p : "5432");
        if (!h[hn])
            break;
        h += hn + 1;
        if (!one_port && p[pn])
            p += pn + 1;
    }
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
    log_warning("database '%s' says: %s", db_conn_where(c), msg);
}

/* libpq's refusals of a server for target_session_attrs (read-write:
 * "session is read-only"; primary: "server is in hot standby mode"). */
static bool message_is_standby(const char *msg)
{
    return strstr(msg, "session is read-only") || strstr(msg, "server is in hot standby mode");
}

/* Whether the open handle was asked to be read-write: the user's
 * target_session_attrs, or our default. */
static bool wants_read_write(PGconn *pg)
{
    bool rw = true;
    PQconninfoOption *opts = PQconninfo(pg);
    for (PQconninfoOption *o = opts; o && o->keyword; o++)
        if (!strcmp(o->keyword, "target_session_attrs") && o->val && *o->val)
            rw = !strcmp(o->val, "read-write") || !strcmp(o->val, "primary");
    PQconninfoFree(opts);
    return rw;
}

static int pg_open(struct db_conn *c, struct err *e)
{
    char timeout[16];
    snprintf(timeout, sizeof(timeout), "%d", c->cfg->connect_timeout_s);
    /* Our defaults come before dbname (which expands the user's string and
     * overrides them); application_name comes after, so it always names us.
     * Keepalives and tcp_user_timeout find a peer that vanished (black-holed
     * network, dead host) in about 30 s, idle or sending, instead of TCP's
     * ~15 minutes of retransmissions; libpq ignores them on unix sockets.
     * gssencmode=disable: libpq's default "prefer" initialises Kerberos in
     * every child (about 1 MB resident and a slower connect) to negotiate an
     * encryption almost no server offers; a URL that asks for it still gets it.
     * target_session_attrs=read-write: tasks write, so a standby (of a
     * multi-host URL, or the only host) is refused at connect and libpq
     * tries the next host; a URL (or PGTARGETSESSIONATTRS: an empty value
     * lets libpq's environment default apply) may say "any" for a worker
     * that only reads. */
    const char *tsa = getenv("PGTARGETSESSIONATTRS") ? "" : "read-write";
    const char *keys[] = {"connect_timeout", "keepalives", "keepalives_idle",
                          "keepalives_interval", "keepalives_count", "tcp_user_timeout",
                          "gssencmode", "target_session_attrs", "dbname", "application_name",
                          NULL};
    const char *vals[] = {timeout, "1", "15", "5", "3", "30000", "disable", tsa, c->cfg->url,
                          c->app_name, NULL};
    PGconn *pg = PQconnectdbParams(keys, vals, 1);
    if (!pg)
        return err_set(e, E_CONN_LOST, "connect to '%s' failed: out of memory", c->cfg->where);
    if (PQstatus(pg) != CONNECTION_OK) {
        char msg[ERR_MSG_MAX];
        snprintf(msg, sizeof(msg), "%s", PQerrorMessage(pg));
        one_line(msg);
        if (message_is_standby(msg) && !strchr(c->cfg->where, ','))
            err_set(e, E_CONN_LOST, "database '%s' is a standby (read-only) and read-write "
                    "is wanted (target_session_attrs): %s", c->cfg->where, msg);
        else if (message_is_standby(msg))
            err_set(e, E_CONN_LOST, "no read-write primary among '%s' (each host is a standby "
                    "or unreachable): %s", c->cfg->where, msg);
        else /* PgBouncer refuses a startup parameter it does not pass on (say
              * options=-c ... in the URL): name the pooler's setting for it. */
            err_set(e, E_CONN_LOST, "connect to '%s' failed: %s%s", c->cfg->where, msg,
                    strstr(msg, "unsupported startup parameter")
                        ? " (a pooler's refusal: drop it from --db or see "
                          "ignore_startup_parameters)"
                        : "");
        PQfinish(pg);
        return E_CONN_LOST;
    }
    PQsetNoticeProcessor(pg, log_notice, c);
    c->pg = pg;
    c->want_rw = wants_read_write(pg);
    const char *h = PQhost(pg), *p = PQport(pg);
    snprintf(c->at, sizeof(c->at), "%s:%s", h && *h ? h : "?", p && *p ? p : "5432");
    /* Made now: PQcancel is signal-safe, PQgetCancel is not. */
    c->pg_cancel = PQgetCancel(pg);
    return 0;
}

static void pg_close(struct db_conn *c)
{
    PGcancel *cancel = c->pg_cancel;
    c->pg_cancel = NULL;
    PQfreeCancel(cancel);
    /* PQfinish sends a Terminate message: to a peer that stopped reading it
     * must not wait for room in the socket buffer. */
    PQsetnonblocking(c->pg, 1);
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
 * class 08 (connection exception), admin/crash shutdown, cannot connect now;
 * and 25006, a write refused by a read-only server (see conn.h). */
bool db_pg_sqlstate_is_loss(const char *state)
{
    if (!state)
        return false;
    return !strncmp(state, "08", 2) || !strcmp(state, "57P01") || !strcmp(state, "57P02") ||
           !strcmp(state, "57P03") || !strcmp(state, "25006");
}

/* PostgreSQL 14+ reports in_hot_standby and default_transaction_read_only
 * to the client and again whenever they change (a promotion, a primary
 * fenced by its operator): what libpq's target_session_attrs=read-write
 * checks at connect, seen here with no round trip. An older server reports
 * neither; libpq then checks at connect only.
 * NEEDSWORK(#14): there (and behind a pooler that does not pass these
 * parameters on) a task's 25006 is stored as DatabaseError and the session
 * kept; the task's SQLSTATE never reaches us through celeriac_fail_db. */
static const char *pg_read_only(struct db_conn *c)
{
    if (!c->want_rw)
        return NULL;
    pg_is_lost(c); /* reads a ParameterStatus that arrived while idle */
    const char *hs = PQparameterStatus(c->pg, "in_hot_standby");
    const char *ro = PQparameterStatus(c->pg, "default_transaction_read_only");
    if (hs && !strcmp(hs, "on"))
        return "a standby (read-only)";
    if (ro && !strcmp(ro, "on"))
        return "read-only (default_transaction_read_only = on: a fenced primary?)";
    return NULL;
}

/* Waits until c's socket is ready for events, or deadline_ms (monotonic)
 * passes. Returns 1 ready, 0 timed out, or -errno. */
static int wait_socket(struct db_conn *c, short events, int64_t deadline_ms)
{
    for (;;) {
        int64_t left = deadline_ms - time_mono_ms();
        if (left <= 0)
            return 0;
        struct pollfd p = {.fd = PQsocket(c->pg), .events = events};
        if (p.fd < 0)
            return -EBADF;
        int n = poll(&p, 1, left > INT_MAX ? INT_MAX : (int)left);
        if (n > 0)
            return 1;
        if (n == 0)
            return 0;
        if (errno != EINTR)
            return -errno;
    }
}

/* Sends sql and reads its results, giving up after timeout_ms: a backend
 * that stopped (SIGSTOP, swap storm) or a network that drops packets makes
 * PQexec wait for ever, as the kernel keeps the socket open. Any failure to
 * get the answer in time is E_CONN_LOST: the handle is then in an unknown
 * state and the caller closes it. With keep, the first result with rows is
 * handed to the caller there (caller frees with PQclear, on every return). */
static int run_bounded(struct db_conn *c, const char *sql, int64_t timeout_ms, PGresult **keep,
                       struct err *e)
{
    PGconn *pg = c->pg;
    /* the empty query is a ping; a long statement is not quoted whole */
    const char *what = !*sql ? "ping" : strlen(sql) > 40 ? "query" : sql;
    int64_t deadline = time_mono_ms() + timeout_ms;
    char msg[ERR_MSG_MAX];
    int rc = 0, ready = 0;
    if (PQsetnonblocking(pg, 1) || !PQsendQuery(pg, sql))
        goto out_libpq_error;
    int flushed;
    while ((flushed = PQflush(pg)) == 1) {
        if ((ready = wait_socket(c, POLLOUT | POLLIN, deadline)) <= 0)
            goto out_no_answer;
        if (!PQconsumeInput(pg))
            goto out_libpq_error;
    }
    if (flushed < 0)
        goto out_libpq_error;
    for (;;) {
        while (PQisBusy(pg)) {
            if ((ready = wait_socket(c, POLLIN, deadline)) <= 0)
                goto out_no_answer;
            if (!PQconsumeInput(pg))
                goto out_libpq_error;
        }
        PGresult *r = PQgetResult(pg);
        if (!r)
            break;
        ExecStatusType st = PQresultStatus(r);
        if (!rc && st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK && st != PGRES_EMPTY_QUERY) {
            snprintf(msg, sizeof(msg), "%s", PQresultErrorMessage(r));
            one_line(msg);
            bool lost = PQstatus(pg) == CONNECTION_BAD ||
                        db_pg_sqlstate_is_loss(PQresultErrorField(r, PG_DIAG_SQLSTATE));
            rc = err_set(e, lost ? E_CONN_LOST : E_DB, "'%s' failed: %s", what, msg);
        }
        if (keep && !*keep && st == PGRES_TUPLES_OK) {
            *keep = r;
            continue;
        }
        PQclear(r);
    }
    PQsetnonblocking(pg, 0); /* tasks get the handle in libpq's default mode */
    return rc;

out_no_answer:
    if (ready < 0)
        return err_set(e, E_CONN_LOST, "'%s' failed: poll: %s", what, strerror(-ready));
    return err_set(e, E_CONN_LOST, "'%s' failed: no answer within %" PRId64 " ms", what,
                   timeout_ms);
out_libpq_error:
    snprintf(msg, sizeof(msg), "%s", PQerrorMessage(pg));
    one_line(msg);
    return err_set(e, E_CONN_LOST, "'%s' failed: %s", what, msg);
}

static int pg_ping(struct db_conn *c, int64_t timeout_ms, struct err *e)
{
    /* An empty query is a full round trip with no parse or plan. */
    return run_bounded(c, "", timeout_ms, NULL, e) ? E_CONN_LOST : 0;
}

static int pg_reset(struct db_conn *c, int64_t timeout_ms, struct err *e)
{
    PGTransactionStatusType ts = PQtransactionStatus(c->pg);
    if (ts == PQTRANS_IDLE)
        return 0;
    if (ts == PQTRANS_ACTIVE || ts == PQTRANS_UNKNOWN)
        return err_set(e, E_CONN_LOST, "connection in an unknown state after a task");
    log_warning("a task left a transaction open on '%s'; rolled back", c->cfg->where);
    return run_bounded(c, "ROLLBACK", timeout_ms, NULL, e) ? E_CONN_LOST : 0;
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
    .read_only = pg_read_only,
    .ping = pg_ping,
    .reset = pg_reset,
    .cancel = pg_cancel,
};

/* PostgreSQL's connect failures carry no SQLSTATE through libpq: the server's
 * text is the only sign of 53300 ("sorry, too many clients already", "too
 * many connections for role ...", "remaining connection slots are reserved
 * ..."). */
bool db_pg_message_is_full(const char *msg)
{
    return msg && (strstr(msg, "too many clients") || strstr(msg, "too many connections") ||
                   strstr(msg, "connection slots are reserved"));
}

bool db_pg_message_is_pooled(const char *msg)
{
    return msg && strstr(msg, "prepared statement \"") &&
           (strstr(msg, "\" does not exist") || strstr(msg, "\" already exists"));
}

int db_pg_census(struct db_conn *c, int64_t timeout_ms, struct db_census *out, struct err *e)
{
    /* current_setting(name, true) is NULL where the setting does not exist
     * (reserved_connections came with PostgreSQL 16). application_name is
     * visible in every row to every role; backend_type is not (NULL for
     * another role's session), so a NULL with a user counts as a client. */
    static const char sql[] =
        "SELECT current_setting('max_connections')::int,"
        " current_setting('superuser_reserved_connections')::int"
        " + coalesce(current_setting('reserved_connections', true)::int, 0),"
        " count(*) FILTER (WHERE application_name LIKE 'celeriac %'),"
        " count(*) FILTER (WHERE application_name IS NULL"
        "                  OR application_name NOT LIKE 'celeriac %')"
        " FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
        " AND (backend_type = 'client backend' OR (backend_type IS NULL AND usesysid IS NOT NULL))";
    if (!db_conn_pg(c))
        return err_set(e, E_CONN_LOST, "connection census on '%s' failed: not connected",
                       c->cfg->where);
    PGresult *r = NULL;
    struct err qe = {0};
    int rc = run_bounded(c, sql, timeout_ms, &r, &qe);
    if (rc) {
        err_set(e, rc, "connection census on '%s' failed: %s", c->cfg->where, qe.msg);
        goto out_clear;
    }
    if (!r || PQntuples(r) != 1 || PQnfields(r) != 4) {
        rc = err_set(e, E_DB, "connection census on '%s' failed: unexpected answer",
                     c->cfg->where);
        goto out_clear;
    }
    out->max_connections = atoi(PQgetvalue(r, 0, 0));
    out->reserved = atoi(PQgetvalue(r, 0, 1));
    out->celeriac = atoi(PQgetvalue(r, 0, 2));
    out->others = atoi(PQgetvalue(r, 0, 3));
out_clear:
    PQclear(r);
    return rc;
}
