/* SPDX-License-Identifier: MIT
 * backend/db_backend.c: Celery's database result backend (db+postgresql://,
 * db+sqlite:///) behind backend.h: the URL, the child's own connection (a
 * second db_conn beside the tasks' one), and the celery_taskmeta row a result
 * becomes. The SQL is in db_pg.c and db_sqlite.c. Chords are not joined here:
 * Celery joins them on this backend with the celery.chord_unlock task.
 */
#include "common.h"
#include "backend/backend.h"
#include "backend/db.h"
#include "protocol/pickle.h"
#include "util/buf.h"
#include "util/log.h"
#include "util/self.h"
#include "util/time.h"

/* The dialect name of a db+ URL, up to its driver ("+psycopg2") or "://". */
static int parse_dialect(const char *url, const char **rest, size_t *name_len, struct err *e)
{
    const char *name = url + 3, *sep = strstr(name, "://");
    if (!sep)
        return err_set(e, -EINVAL, "'db+' URL without '://' (want db+postgresql://... or "
                                   "db+sqlite:///path)");
    *name_len = strcspn(name, "+:");
    *rest = sep + 3;
    return 0;
}

static int parse_sqlite(struct db_config *db, const char *rest, struct err *e)
{
    /* SQLAlchemy: sqlite:///rel.db and sqlite:////abs.db; nothing after the
     * third slash is an in-memory database, private to each child. */
    if (*rest != '/' || !rest[1] || !strcmp(rest + 1, ":memory:"))
        return err_set(e, -EINVAL, "db+sqlite:// needs a file: db+sqlite:///relative.db or "
                                   "db+sqlite:////absolute/path.db (an in-memory database would "
                                   "be private to each child)");
    if (strchr(rest, '?'))
        return err_set(e, -EINVAL, "db+sqlite:///... takes no query parameters");
    db->kind = DB_SQLITE;
    db->sqlite_path = xstrdup(rest + 1);
    db->url = xstrdup(rest + 1);
    db->where = xstrdup(rest + 1);
    return 0;
}

int backend_db_parse_url(struct db_config *db, const char *url, struct err *e)
{
    const char *rest = NULL;
    size_t n = 0;
    int rc = parse_dialect(url, &rest, &n, e);
    if (rc)
        return rc;
    const char *name = url + 3;
    if (n == 6 && !strncasecmp(name, "sqlite", n))
        return parse_sqlite(db, rest, e);
    if (n != 10 || strncasecmp(name, "postgresql", n))
        return err_set(e, -EINVAL, "unsupported database dialect '%.*s' in a db+ URL (want "
                       "db+postgresql://... or db+sqlite:///path)", (int)(n > 32 ? 32 : n), name);
    /* libpq reads the rest as its own URI once the driver name is gone */
    struct buf uri = BUF_INIT;
    buf_addf(&uri, "postgresql://%s", rest);
    db->kind = DB_POSTGRES;
    db->url = buf_detach(&uri, NULL);
    return db_pg_describe(db->url, &db->where, e);
}

static struct backend_db *impl(const struct backend *b)
{
    return b->impl;
}

int backend_db_lost(struct backend_db *b, struct err *e)
{
    db_conn_close(&b->conn, e ? e->msg : "result database connection lost");
    b->tables_ready = false;
    return E_CONN_LOST;
}

static int ensure_tables(struct backend_db *d, struct err *e)
{
    if (d->tables_ready)
        return 0;
    int rc = d->dialect->create_tables(d, e);
    d->tables_ready = rc == 0;
    return rc;
}

static int db_open(struct backend *b, struct err *e)
{
    struct backend_db *d = impl(b);
    if (!db_conn_is_open(&d->conn)) {
        d->tables_ready = false;
        int rc = db_conn_open(&d->conn, 1, NULL, e);
        if (rc)
            return rc;
    }
    return ensure_tables(d, e);
}

static bool db_is_open(const struct backend *b)
{
    return db_conn_is_open(&impl(b)->conn) && impl(b)->tables_ready;
}

/* date_done as SQLAlchemy writes a naive UTC datetime.utcnow() on SQLite
 * (and PostgreSQL reads into timestamp without time zone). */
static void format_date_done(struct buf *out)
{
    time_format_iso(out, time_now(), false);
    char *t = strchr(out->data, 'T');
    if (t)
        *t = ' ';
}

/* The row of m, as Celery's _update_result sets every column: the result
 * pickled (an exception state's exception dict with its args as a tuple; a
 * None result is NULL, as PickleType binds None),
 * date_done for ready states only, the traceback if any. */
static int db_store(struct backend *b, const struct result_meta *m, unsigned flags,
                    struct err *e)
{
    UNUSED(flags); /* every store waits for its commit: nothing is outstanding */
    struct backend_db *d = impl(b);
    int rc = ensure_tables(d, e);
    if (rc)
        return rc;
    struct buf pickled = BUF_INIT, tb = BUF_INIT, done = BUF_INIT;
    unsigned how = result_state_is_exception(m->status) ? PICKLE_EXCEPTION : 0;
    struct err pe = {0};
    if (pickle_dump(&pickled, m->result, how, &pe)) {
        rc = err_set(e, E_PROTOCOL, "result of %s cannot be pickled: %s", m->task_id, pe.msg);
        goto out_release;
    }
    bool has_tb = result_meta_traceback(&tb, m);
    if (result_state_is_ready(m->status))
        format_date_done(&done);
    struct db_result_row row = {
        .task_id = m->task_id, .status = m->status,
        .result = !m->result || json_is_null(m->result) ? NULL : &pickled,
        .date_done = done.len ? done.data : NULL, .traceback = has_tb ? tb.data : NULL,
        .keep_success = m->redelivered,
    };
    rc = d->dialect->upsert(d, &row, e);
out_release:
    buf_release(&pickled);
    buf_release(&tb);
    buf_release(&done);
    return rc;
}

static bool db_has_pending(const struct backend *b)
{
    UNUSED(b);
    return false;
}

static int db_nothing(struct backend *b, struct err *e)
{
    UNUSED(b);
    UNUSED(e);
    return 0;
}

/* Celery 5.2 has no native chord join on this backend: the client sends
 * celery.chord_unlock, which polls the members' rows, and celeriac does not
 * run it. Said at once, in the log of every member, rather than a chord
 * body that never comes. */
static int db_chord_size(struct backend *b, const char *group, size_t size, struct err *e)
{
    UNUSED(b);
    UNUSED(size);
    return err_set(e, E_PROTOCOL, "chord %s cannot join on the database result backend "
                   "(Celery joins those with celery.chord_unlock, which celeriac does not run): "
                   "use a Redis result backend for chords", group);
}

static int db_chord_part(struct backend *b, const char *group, int index, const json_t *part,
                         enum serializer s, json_t **parts, struct err *e)
{
    UNUSED(index);
    UNUSED(part);
    UNUSED(s);
    *parts = NULL;
    return db_chord_size(b, group, 0, e);
}

static void db_leave(struct backend *b)
{
    UNUSED(b); /* every store was committed before it returned */
}

static void db_release(struct backend *b)
{
    struct backend_db *d = impl(b);
    if (!d)
        return;
    db_conn_close(&d->conn, NULL);
    free(d);
    b->impl = NULL;
}

static const struct backend_ops db_backend_ops = {
    .name = "database",
    .open = db_open,
    .is_open = db_is_open,
    .store = db_store,
    .has_pending = db_has_pending,
    .confirm = db_nothing,
    .resend = db_nothing,
    .chord_size = db_chord_size,
    .chord_part = db_chord_part,
    .leave = db_leave,
    .release = db_release,
};

void backend_db_ops_init(struct backend *b, const struct backend_config *cfg)
{
    struct backend_db *d = xcalloc(1, sizeof(*d));
    char app_name[64];
    snprintf(app_name, sizeof(app_name), "celeriac results pid %d", (int)self_pid());
    db_conn_init(&d->conn, &cfg->db, app_name);
    d->conn.quiet = true; /* the worker's retry logs a failed open */
    d->dialect = cfg->db.kind == DB_SQLITE ? &backend_db_sqlite : &backend_db_pg;
    *b = (struct backend){.ops = &db_backend_ops, .cfg = cfg, .impl = d};
}
