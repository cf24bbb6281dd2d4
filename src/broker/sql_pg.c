/* SPDX-License-Identifier: MIT
 * broker/sql_pg.c: kombu's tables on PostgreSQL (see sql_store.h). Claims
 * take the first ready row with FOR UPDATE SKIP LOCKED, so children never
 * queue behind each other's claim (kombu's plain FOR UPDATE serialises every
 * consumer on the head row); a trigger NOTIFYs a channel per queue when a row
 * becomes ready, and idle children LISTEN, so a Python publisher wakes them
 * as well as a C one.
 */
#include "common.h"
#include "broker/sql_store.h"
#include "util/buf.h"
#include "util/log.h"

#include <inttypes.h>
#include <libpq-fe.h>
#include <poll.h>

/* The outbox for any language (celeriac_client.h): SELECT
 * celeriac_enqueue('celery', 'tasks.add', '[2, 3]', '{}') inserts the
 * protocol-2 message Celery's client would send, in the caller's
 * transaction, and returns the task id. */
#define ENQUEUE_SQL                                                                           \
    "CREATE OR REPLACE FUNCTION celeriac_enqueue(queue text, task text, args json DEFAULT"    \
    " '[]', kwargs json DEFAULT '{}') RETURNS uuid LANGUAGE plpgsql AS $f$"                  \
    "DECLARE task_id uuid := gen_random_uuid(); q integer; body text;"                       \
    "BEGIN"                                                                                   \
    " INSERT INTO kombu_queue (id, name) VALUES (nextval('queue_id_sequence'), queue)"        \
    "  ON CONFLICT (name) DO NOTHING;"                                                        \
    " SELECT kombu_queue.id INTO q FROM kombu_queue WHERE kombu_queue.name = queue;"          \
    " body := json_build_array(args, kwargs, json_build_object('callbacks', NULL,"            \
    "  'errbacks', NULL, 'chain', NULL, 'chord', NULL))::text;"                               \
    " INSERT INTO kombu_message (id, visible, timestamp, payload, version, queue_id)"          \
    "  VALUES (nextval('message_id_sequence'), true, NULL, json_build_object("                \
    "  'body', translate(encode(convert_to(body, 'UTF8'), 'base64'), E'\\n', ''),"             \
    "  'content-encoding', 'utf-8', 'content-type', 'application/json',"                      \
    "  'headers', json_build_object('lang', 'sql', 'task', task, 'id', task_id,"              \
    "   'shadow', NULL, 'eta', NULL, 'expires', NULL, 'group', NULL, 'group_index', NULL,"    \
    "   'retries', 0, 'timelimit', json_build_array(NULL, NULL), 'root_id', task_id,"         \
    "   'parent_id', NULL, 'argsrepr', args::text, 'kwargsrepr', kwargs::text,"               \
    "   'origin', 'celeriac_enqueue@' || current_database(), 'ignore_result', false),"        \
    "  'properties', json_build_object('correlation_id', task_id, 'reply_to', '',"            \
    "   'delivery_mode', 2, 'delivery_info', json_build_object('exchange', '',"               \
    "   'routing_key', queue), 'priority', 0, 'body_encoding', 'base64',"                     \
    "   'delivery_tag', gen_random_uuid()))::text, 1, q);"                                    \
    " RETURN task_id;"                                                                        \
    "END$f$;"

/* The DDL SQLAlchemy emits for kombu's models on PostgreSQL (ids come from
 * sequences the inserter calls, no server default), each statement made
 * idempotent; then what celeriac adds: an index of ready rows in claim order,
 * and the trigger behind LISTEN. An advisory lock keeps the children of a
 * starting fleet from creating the same objects at once. */
static const char schema_sql[] =
    "BEGIN;"
    "SET LOCAL client_min_messages = warning;"
    "SELECT pg_advisory_xact_lock(7361626565720001);"
    "CREATE SEQUENCE IF NOT EXISTS queue_id_sequence;"
    "CREATE TABLE IF NOT EXISTS kombu_queue ("
    " id INTEGER NOT NULL, name VARCHAR(200), PRIMARY KEY (id), UNIQUE (name));"
    "CREATE SEQUENCE IF NOT EXISTS message_id_sequence;"
    "CREATE TABLE IF NOT EXISTS kombu_message ("
    " id INTEGER NOT NULL, visible BOOLEAN, timestamp TIMESTAMP WITHOUT TIME ZONE,"
    " payload TEXT NOT NULL, version SMALLINT NOT NULL, queue_id INTEGER, PRIMARY KEY (id),"
    " CONSTRAINT \"FK_kombu_message_queue\" FOREIGN KEY(queue_id) REFERENCES kombu_queue (id));"
    "CREATE INDEX IF NOT EXISTS ix_kombu_message_visible ON kombu_message (visible);"
    "CREATE INDEX IF NOT EXISTS ix_kombu_message_timestamp_id ON kombu_message (timestamp, id);"
    "CREATE INDEX IF NOT EXISTS ix_kombu_message_timestamp ON kombu_message (timestamp);"
    "CREATE INDEX IF NOT EXISTS celeriac_kombu_message_ready"
    " ON kombu_message (queue_id, timestamp, id) WHERE visible;"
    "CREATE OR REPLACE FUNCTION celeriac_kombu_notify() RETURNS trigger LANGUAGE plpgsql AS"
    " $$BEGIN PERFORM pg_notify('celeriac_q' || NEW.queue_id, ''); RETURN NULL; END$$;"
    ENQUEUE_SQL
    "DO $$BEGIN"
    " IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'celeriac_kombu_notify'"
    "   AND tgrelid = 'kombu_message'::regclass) THEN"
    "  CREATE TRIGGER celeriac_kombu_notify AFTER INSERT OR UPDATE OF visible"
    "   ON kombu_message FOR EACH ROW WHEN (NEW.visible)"
    "   EXECUTE FUNCTION celeriac_kombu_notify();"
    " END IF; END$$;"
    "COMMIT;";

/* One query answers whether schema_sql has run here already, and what
 * columns kombu_message has: the common case takes no lock at all. */
static const char schema_check_sql[] =
    "SELECT (SELECT string_agg(column_name::text, ',' ORDER BY column_name)"
    "          FROM information_schema.columns WHERE table_name = 'kombu_message'"
    "          AND table_schema = current_schema()),"
    "       to_regclass('celeriac_kombu_message_ready') IS NOT NULL"
    "       AND to_regprocedure('celeriac_enqueue(text,text,json,json)') IS NOT NULL"
    "       AND EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'celeriac_kombu_notify')";

#define KOMBU_COLUMNS "id,payload,queue_id,timestamp,version,visible"

static PGconn *pg(struct sql_store *s)
{
    return s->conn->pg;
}

int sql_store_failed(struct sql_store *s, const char *what, const char *reason, struct err *e)
{
    char msg[ERR_MSG_MAX];
    snprintf(msg, sizeof(msg), "%s", reason ? reason : "no reason given");
    for (char *p = msg; *p; p++)
        if (*p == '\n' || *p == '\t')
            *p = ' ';
    size_t n = strlen(msg);
    while (n && msg[n - 1] == ' ')
        msg[--n] = '\0';
    if (!s->borrowed && db_conn_check_lost(s->conn))
        return err_set(e, E_CONN_LOST, "broker database '%s': %s: %s", s->conn->cfg->where, what,
                       msg);
    return err_set(e, E_PROTOCOL, "broker database '%s': %s: %s", s->conn->cfg->where, what, msg);
}

/* The statements run once or more per message, prepared once per
 * connection (named celeriac_sql_<i>) instead of being parsed and planned
 * at every call: that was about a third of PostgreSQL's CPU per message. */
enum pg_stmt {
    STMT_CLAIM,
    STMT_REMOVE,
    STMT_GIVE_BACK,
    STMT_INSERT,
    STMT_LOCK,
    STMT_LOCK_ONE,
    STMT_REMOVE_LOCKED,
    STMT_CLAIM_LOCKED,
    STMT_CLAIM_ROW,
    STMT_COUNT
};

static const char *const stmt_sql[STMT_COUNT] = {
    /* kombu's order (timestamp, id) within one queue at a time: with one
     * queue id the ready index is read in order and LIMIT 1 stops at once;
     * the caller turns through its queues as kombu's fair cycle does. */
    [STMT_CLAIM] = "UPDATE kombu_message SET visible = false, timestamp = $2::timestamp,"
                   "  version = -(abs(version) + 1)"
                   " WHERE id = (SELECT id FROM kombu_message WHERE queue_id = $1 AND visible"
                   "             ORDER BY timestamp, id LIMIT 1 FOR UPDATE SKIP LOCKED)"
                   " RETURNING id, version, queue_id, payload",
    [STMT_REMOVE] = "DELETE FROM kombu_message WHERE id = $1 AND version = $2",
    [STMT_GIVE_BACK] = "UPDATE kombu_message SET visible = true, timestamp = NULL,"
                       " version = least(-version + 1, 32001)"
                       " WHERE id = $1 AND version = $2 AND NOT visible",
    [STMT_INSERT] = "INSERT INTO kombu_message (id, visible, timestamp, payload, version,"
                    " queue_id) VALUES (nextval('message_id_sequence'), true, NULL, $1, 1, $2)",
    /* The lock path (pg_lock): the row is held by this transaction's lock
     * alone, then deleted (the ack) or claimed as above, and committed. */
    [STMT_LOCK] = "SELECT id, version, queue_id, payload FROM kombu_message"
                  " WHERE queue_id = $1 AND visible ORDER BY timestamp, id LIMIT $2"
                  " FOR UPDATE SKIP LOCKED",
    /* The same for one row, with LIMIT written out: under LIMIT $2 the
     * generic plan's estimate (a tenth of the table) never beats a custom
     * plan's, so PostgreSQL planned the lock again at every execution,
     * 47-76 us a message on the early-ack path (bench/SQL-PROFILE.md). */
    [STMT_LOCK_ONE] = "SELECT id, version, queue_id, payload FROM kombu_message"
                      " WHERE queue_id = $1 AND visible ORDER BY timestamp, id LIMIT 1"
                      " FOR UPDATE SKIP LOCKED",
    [STMT_REMOVE_LOCKED] = "DELETE FROM kombu_message WHERE id = $1",
    [STMT_CLAIM_LOCKED] = "UPDATE kombu_message SET visible = false, timestamp = $2::timestamp,"
                          "  version = -(abs(version) + 1)"
                          " WHERE id = $1 RETURNING version",
    [STMT_CLAIM_ROW] = "UPDATE kombu_message SET visible = false, timestamp = $2::timestamp,"
                       "  version = -(abs(version) + 1)"
                       " WHERE id = (SELECT id FROM kombu_message WHERE id = $1 AND visible"
                       "             FOR UPDATE SKIP LOCKED)"
                       " RETURNING version",
};

/* Which connections of this process have the statements, by handle and
 * server process (a handle reopened at the same address is another
 * backend). A process holds two connections at most that run them (its
 * broker connection, and its task connection for transactional acks). */
#define PREPARED_CONNS 4
static struct prepared_on {
    const PGconn *conn;
    int backend_pid;
    unsigned stmts;              /* bit i: stmt_sql[i] is prepared there */
} prepared[PREPARED_CONNS];
static unsigned prepared_next;   /* the entry replaced next */

static struct prepared_on *prepared_entry(PGconn *conn, bool add)
{
    int pid = PQbackendPID(conn);
    for (size_t i = 0; i < PREPARED_CONNS; i++)
        if (prepared[i].conn == conn && prepared[i].backend_pid == pid)
            return &prepared[i];
    if (!add)
        return NULL;
    struct prepared_on *p = &prepared[prepared_next++ % PREPARED_CONNS];
    *p = (struct prepared_on){.conn = conn, .backend_pid = pid};
    return p;
}

/* True when statement i is prepared on the store's connection, preparing
 * it now if not. Never on a borrowed handle (the application's: its
 * statement names are its own); false when preparing failed, and the
 * caller then runs the text as before, which reports the real error. */
static bool stmt_ready(struct sql_store *s, enum pg_stmt i, int n)
{
    if (s->borrowed)
        return false;
    struct prepared_on *p = prepared_entry(pg(s), true);
    if (p->stmts & (1u << i))
        return true;
    char name[32];
    snprintf(name, sizeof(name), "celeriac_sql_%d", (int)i);
    PGresult *r = PQprepare(pg(s), name, stmt_sql[i], n, NULL);
    bool ok = r && PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    if (ok)
        p->stmts |= 1u << i;
    return ok;
}

/* SQLSTATE 26000: the statement is gone (DEALLOCATE, DISCARD ALL, a
 * pooler handing over another server connection). */
static bool is_missing_statement(const PGresult *r)
{
    const char *state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    return state && !strcmp(state, "26000");
}

/* Runs statement i, prepared when it can be. A statement found gone is
 * prepared again and run once more, unless a transaction is open (the
 * error has aborted it: the caller's failure path rolls back). */
static PGresult *exec_stmt(struct sql_store *s, enum pg_stmt i, int n, const char *const *params)
{
    if (!stmt_ready(s, i, n))
        return PQexecParams(pg(s), stmt_sql[i], n, NULL, params, NULL, NULL, 0);
    char name[32];
    snprintf(name, sizeof(name), "celeriac_sql_%d", (int)i);
    PGresult *r = PQexecPrepared(pg(s), name, n, params, NULL, NULL, 0);
    if (!is_missing_statement(r))
        return r;
    struct prepared_on *p = prepared_entry(pg(s), false);
    if (p)
        p->stmts = 0;
    if (PQtransactionStatus(pg(s)) != PQTRANS_IDLE || !stmt_ready(s, i, n))
        return r;
    PQclear(r);
    return PQexecPrepared(pg(s), name, n, params, NULL, NULL, 0);
}

/* The result of r when its status is `want`, else NULL with the failure
 * in *rc and e (r cleared). */
static PGresult *expect(struct sql_store *s, PGresult *r, const char *what, ExecStatusType want,
                        int *rc, struct err *e)
{
    if (r && PQresultStatus(r) == want) {
        *rc = 0;
        return r;
    }
    char reason[ERR_MSG_MAX];
    snprintf(reason, sizeof(reason), "%s",
             r ? PQresultErrorMessage(r) : PQerrorMessage(pg(s)));
    PQclear(r);
    *rc = sql_store_failed(s, what, reason, e);
    return NULL;
}

/* Runs sql with text parameters; the result when its status is `want`,
 * else NULL with the failure in *rc and e. */
static PGresult *run(struct sql_store *s, const char *what, const char *sql, int n,
                     const char *const *params, ExecStatusType want, int *rc, struct err *e)
{
    return expect(s, PQexecParams(pg(s), sql, n, NULL, params, NULL, NULL, 0), what, want, rc, e);
}

/* Runs statement i (see exec_stmt); as run. */
static PGresult *run_stmt(struct sql_store *s, const char *what, enum pg_stmt i, int n,
                          const char *const *params, ExecStatusType want, int *rc, struct err *e)
{
    return expect(s, exec_stmt(s, i, n, params), what, want, rc, e);
}

/* One command of a pipeline: SQL without parameters, or statement stmt. */
struct pg_command {
    const char *sql;             /* or NULL: */
    enum pg_stmt stmt;
    int n;
    const char *const *params;
};

/* Sends cmds[0..n) in one round trip (libpq's pipeline mode, one sync
 * point) and reads every answer: results[k] gets command k's (the caller
 * clears them), NULL when it failed or was skipped after an earlier
 * failure, whose reason goes to reason. False when the pipeline could not
 * be used at all (nothing was sent). */
static bool run_commands(struct sql_store *s, const struct pg_command *cmds, int n,
                         PGresult **results, char *reason, size_t size)
{
    PGconn *conn = pg(s);
    for (int k = 0; k < n; k++)
        if (!cmds[k].sql && !stmt_ready(s, cmds[k].stmt, cmds[k].n))
            return false;
    if (!PQenterPipelineMode(conn))
        return false;
    bool sent = true;
    for (int k = 0; k < n && sent; k++) {
        char name[32];
        snprintf(name, sizeof(name), "celeriac_sql_%d", (int)cmds[k].stmt);
        sent = cmds[k].sql ? PQsendQueryParams(conn, cmds[k].sql, 0, NULL, NULL, NULL, NULL, 0)
                           : PQsendQueryPrepared(conn, name, cmds[k].n, cmds[k].params, NULL,
                                                 NULL, 0);
    }
    sent = sent && PQpipelineSync(conn);
    reason[0] = '\0';
    for (int k = 0; k < n; k++) {
        results[k] = NULL;
        PGresult *r;
        bool first = true;
        while (sent && (r = PQgetResult(conn)) != NULL) {
            ExecStatusType st = PQresultStatus(r);
            bool good = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
            if (!good && !reason[0])
                snprintf(reason, size, "%s", st == PGRES_PIPELINE_ABORTED
                                                 ? "an earlier command failed"
                                                 : PQresultErrorMessage(r));
            if (first && good)
                results[k] = r;
            else
                PQclear(r);
            first = false;
        }
        if (sent && first && !reason[0])
            snprintf(reason, size, "%s", PQerrorMessage(conn));
    }
    for (int guard = 0; sent && guard < 8; guard++) {
        PGresult *r = PQgetResult(conn);
        if (!r && PQstatus(conn) == CONNECTION_BAD)
            break;
        bool sync = r && PQresultStatus(r) == PGRES_PIPELINE_SYNC;
        PQclear(r);
        if (sync)
            break;
    }
    if (!PQexitPipelineMode(conn) && !reason[0])
        snprintf(reason, size, "%s", PQerrorMessage(conn));
    if (!sent && !reason[0])
        snprintf(reason, size, "%s", PQerrorMessage(conn));
    return true;
}

/* Sends `before` (a command without parameters, or NULL), statement i and
 * `after` (likewise) in one round trip (libpq's pipeline mode), and returns
 * statement i's result as run_stmt does. The commands around it must
 * succeed too: an `after` of "COMMIT" that answers ROLLBACK is a failure.
 * Without a prepared statement, the three run one after the other. */
static PGresult *run_pipelined(struct sql_store *s, const char *what, const char *before,
                               enum pg_stmt i, int n, const char *const *params,
                               const char *after, ExecStatusType want, int *rc, struct err *e)
{
    struct pg_command cmds[3];
    int k = 0;
    if (before)
        cmds[k++] = (struct pg_command){.sql = before};
    int main_at = k;
    cmds[k++] = (struct pg_command){.stmt = i, .n = n, .params = params};
    if (after)
        cmds[k++] = (struct pg_command){.sql = after};
    PGresult *res[3];
    char reason[ERR_MSG_MAX];
    if (!run_commands(s, cmds, k, res, reason, sizeof(reason))) {
        /* no pipeline here: one after the other */
        if (before) {
            PGresult *b = run(s, what, before, 0, NULL, PGRES_COMMAND_OK, rc, e);
            if (!b)
                return NULL;
            PQclear(b);
        }
        PGresult *r = run_stmt(s, what, i, n, params, want, rc, e);
        if (r && after) {
            PGresult *a = run(s, what, after, 0, NULL, PGRES_COMMAND_OK, rc, e);
            bool committed = a && (strcmp(after, "COMMIT") || !strcmp(PQcmdStatus(a), "COMMIT"));
            PQclear(a);
            if (!committed) {
                PQclear(r);
                if (a)
                    *rc = err_set(e, E_PROTOCOL, "the transaction had failed: the server "
                                  "rolled it back");
                return NULL;
            }
        }
        return r;
    }
    PGresult *main = res[main_at];
    if (!reason[0] && main && PQresultStatus(main) != want)
        snprintf(reason, sizeof(reason), "unexpected answer: %s",
                 PQresStatus(PQresultStatus(main)));
    if (!reason[0] && after && !strcmp(after, "COMMIT") && res[k - 1] &&
        strcmp(PQcmdStatus(res[k - 1]), "COMMIT"))
        snprintf(reason, sizeof(reason), "the transaction had failed: the server rolled it back");
    for (int j = 0; j < k; j++)
        if (j != main_at)
            PQclear(res[j]);
    if (reason[0] || !main) {
        PQclear(main);
        if (!reason[0])
            snprintf(reason, sizeof(reason), "no answer");
        *rc = sql_store_failed(s, what, reason, e);
        return NULL;
    }
    *rc = 0;
    return main;
}

/* 1 when the statement r answers changed a row, 0 when none, < 0. */
static int changed_rows(PGresult *r, int rc)
{
    if (!r)
        return rc;
    int changed = atoi(PQcmdTuples(r)) > 0;
    PQclear(r);
    return changed;
}

/* Runs a statement that changes rows; 1 when one did, 0 when none, < 0. */
static int run_change(struct sql_store *s, const char *what, const char *sql, int n,
                      const char *const *params, struct err *e)
{
    int rc;
    PGresult *r = run(s, what, sql, n, params, PGRES_COMMAND_OK, &rc, e);
    return changed_rows(r, rc);
}

/* The same for statement i. */
static int run_stmt_change(struct sql_store *s, const char *what, enum pg_stmt i, int n,
                           const char *const *params, struct err *e)
{
    int rc;
    PGresult *r = run_stmt(s, what, i, n, params, PGRES_COMMAND_OK, &rc, e);
    return changed_rows(r, rc);
}

static int pg_prepare(struct sql_store *s, struct err *e)
{
    int rc;
    PGresult *r = run(s, "checking kombu's tables", schema_check_sql, 0, NULL, PGRES_TUPLES_OK,
                      &rc, e);
    if (!r)
        return rc;
    bool missing = PQgetisnull(r, 0, 0);
    bool ours = !strcmp(PQgetvalue(r, 0, 1), "t");
    char columns[256];
    snprintf(columns, sizeof(columns), "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    if (!missing && strcmp(columns, KOMBU_COLUMNS))
        return err_set(e, E_CONFIG, "broker database '%s': table kombu_message has the columns "
                       "(%s), not kombu's (%s)", s->conn->cfg->where, columns, KOMBU_COLUMNS);
    if (!missing && ours)
        return 0;
    r = PQexec(pg(s), schema_sql);
    if (!r || PQresultStatus(r) != PGRES_COMMAND_OK) {
        char reason[ERR_MSG_MAX];
        snprintf(reason, sizeof(reason), "%s",
                 r ? PQresultErrorMessage(r) : PQerrorMessage(pg(s)));
        PQclear(r);
        PQclear(PQexec(pg(s), "ROLLBACK"));
        return sql_store_failed(s, "creating kombu's tables", reason, e);
    }
    PQclear(r);
    return 0;
}

static int pg_queue_id(struct sql_store *s, const char *name, int64_t *id, struct err *e)
{
    /* ON CONFLICT spends a sequence number when the queue exists: harmless,
     * and one round trip instead of kombu's select-then-insert race. */
    static const char sql[] =
        "WITH added AS (INSERT INTO kombu_queue (id, name)"
        "  VALUES (nextval('queue_id_sequence'), $1) ON CONFLICT (name) DO NOTHING"
        "  RETURNING id)"
        " SELECT id FROM added UNION ALL SELECT id FROM kombu_queue WHERE name = $1";
    const char *params[] = {name};
    int rc;
    PGresult *r = run(s, "looking up a queue", sql, 1, params, PGRES_TUPLES_OK, &rc, e);
    if (!r)
        return rc;
    if (PQntuples(r) < 1) {
        PQclear(r);
        return err_set(e, E_PROTOCOL, "queue '%s' has no row in kombu_queue", name);
    }
    *id = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    return 0;
}

static int pg_listen(struct sql_store *s, const int64_t *queue_ids, size_t n, struct err *e)
{
    struct buf sql = BUF_INIT;
    for (size_t i = 0; i < n; i++)
        buf_addf(&sql, "LISTEN celeriac_q%" PRId64 ";", queue_ids[i]);
    PGresult *r = PQexec(pg(s), sql.data ? sql.data : "");
    buf_release(&sql);
    int rc = 0;
    if (!r || PQresultStatus(r) != PGRES_COMMAND_OK)
        rc = sql_store_failed(s, "LISTEN", r ? PQresultErrorMessage(r) : PQerrorMessage(pg(s)),
                              e);
    PQclear(r);
    return rc;
}

/* A claim from row `row` of the answer (id, version, queue_id, payload). */
static void fill_claim_row(PGresult *r, int row, struct sql_claim *c)
{
    c->id = strtoll(PQgetvalue(r, row, 0), NULL, 10);
    c->version = atoi(PQgetvalue(r, row, 1));
    c->queue_id = strtoll(PQgetvalue(r, row, 2), NULL, 10);
    c->len = (size_t)PQgetlength(r, row, 3);
    c->payload = xmalloc(c->len + 1);
    memcpy(c->payload, PQgetvalue(r, row, 3), c->len + 1);
}

static void fill_claim(PGresult *r, struct sql_claim *c)
{
    fill_claim_row(r, 0, c);
}

/* The rows a lock took (at most max), into c[]; their count. Given back
 * by celeriac (version >= 2) or by a sweep of a claim: delivered before. */
static int fill_locked(PGresult *r, size_t max, struct sql_claim *c)
{
    int n = PQntuples(r);
    if (n > (int)max)
        n = (int)max;
    for (int k = 0; k < n; k++) {
        fill_claim_row(r, k, &c[k]);
        c[k].redelivered = c[k].version >= 2;
    }
    return n;
}

static int pg_claim(struct sql_store *s, const int64_t *queue_ids, size_t n, const char *stamp,
                    struct sql_claim *c, struct err *e)
{
    for (size_t i = 0; i < n; i++) {
        char qid[24];
        snprintf(qid, sizeof(qid), "%" PRId64, queue_ids[i]);
        const char *params[] = {qid, stamp};
        int rc;
        PGresult *r = run_stmt(s, "claiming a message", STMT_CLAIM, 2, params, PGRES_TUPLES_OK,
                               &rc, e);
        if (!r)
            return rc;
        if (PQntuples(r) == 1) {
            fill_claim(r, c);
            c->redelivered = c->version <= -3;
            PQclear(r);
            return 1;
        }
        PQclear(r);
    }
    return 0;
}

static void pg_rollback(struct sql_store *s);
static bool pg_in_transaction(struct sql_store *s);

static int pg_lock(struct sql_store *s, const int64_t *queue_ids, size_t n, size_t max,
                   struct sql_claim *c, struct err *e)
{
    char limit[24];
    snprintf(limit, sizeof(limit), "%zu", max ? max : 1);
    for (size_t i = 0; i < n; i++) {
        char qid[24];
        snprintf(qid, sizeof(qid), "%" PRId64, queue_ids[i]);
        const char *params[] = {qid, limit};
        int rc;
        PGresult *r = run_pipelined(s, "taking a message", i == 0 ? "BEGIN" : NULL,
                                    max > 1 ? STMT_LOCK : STMT_LOCK_ONE, max > 1 ? 2 : 1,
                                    params,
                                    s->task_savepoint ? "SAVEPOINT " SQL_TASK_SAVEPOINT : NULL,
                                    PGRES_TUPLES_OK, &rc, e);
        if (!r) {
            if (db_conn_is_open(s->conn))
                pg_rollback(s);
            return rc;
        }
        int found = fill_locked(r, max ? max : 1, c);
        PQclear(r);
        if (found)
            return found;
    }
    pg_rollback(s);
    return 0;
}

static int pg_settle_locked(struct sql_store *s, int64_t id, const char *stamp, int *version,
                            struct err *e)
{
    char a[24];
    snprintf(a, sizeof(a), "%" PRId64, id);
    const char *params[] = {a, stamp};
    /* Changed by a subtransaction, a row its parent locked gets a
     * MultiXact for its xmax, which every other consumer's scan must then
     * look up (measured: PostgreSQL's CPU per message ten times higher):
     * the lock's own transaction changes it, after the savepoint. */
    const char *release = s->task_savepoint && pg_in_transaction(s)
                              ? "RELEASE SAVEPOINT " SQL_TASK_SAVEPOINT
                              : NULL;
    int rc;
    PGresult *r = stamp ? run_pipelined(s, "claiming a message", release, STMT_CLAIM_LOCKED, 2,
                                        params, "COMMIT", PGRES_TUPLES_OK, &rc, e)
                        : run_pipelined(s, "acking a message", release, STMT_REMOVE_LOCKED, 1,
                                        params, "COMMIT", PGRES_COMMAND_OK, &rc, e);
    if (!r) {
        if (db_conn_is_open(s->conn) && PQtransactionStatus(pg(s)) != PQTRANS_IDLE)
            pg_rollback(s);
        return rc;
    }
    if (stamp && PQntuples(r) == 1 && version)
        *version = atoi(PQgetvalue(r, 0, 0));
    PQclear(r);
    return 0;
}

/* A transactional ack inside a batch, in one round trip: RELEASE (the
 * task's savepoint), DELETE (in the top-level transaction, as
 * pg_settle_locked says why), SAVEPOINT for the next task; no commit. */
static int pg_settle_locked_in_batch(struct sql_store *s, int64_t id, struct err *e)
{
    char row[24];
    snprintf(row, sizeof(row), "%" PRId64, id);
    const char *params[] = {row};
    int rc;
    PGresult *r = run_pipelined(s, "acking a message", "RELEASE SAVEPOINT " SQL_TASK_SAVEPOINT,
                                STMT_REMOVE_LOCKED, 1, params, "SAVEPOINT " SQL_TASK_SAVEPOINT,
                                PGRES_COMMAND_OK, &rc, e);
    if (!r) {
        if (db_conn_is_open(s->conn) && PQtransactionStatus(pg(s)) != PQTRANS_IDLE)
            pg_rollback(s);
        return rc;
    }
    PQclear(r);
    return 0;
}

/* The transactional ack and the next lock in one round trip: RELEASE (a
 * task's savepoint), DELETE, COMMIT, then BEGIN, the lock (up to max rows)
 * and the savepoint, as pg_settle_locked and pg_lock send them. */
static int pg_settle_locked_lock_next(struct sql_store *s, int64_t id, int64_t queue_id,
                                      size_t max, struct sql_claim *next, int *acked,
                                      struct err *e)
{
    char row[24], qid[24], limit[24];
    snprintf(row, sizeof(row), "%" PRId64, id);
    snprintf(qid, sizeof(qid), "%" PRId64, queue_id);
    snprintf(limit, sizeof(limit), "%zu", max ? max : 1);
    const char *row_params[] = {row};
    const char *queue_params[] = {qid, limit};
    bool savepoint = s->task_savepoint && pg_in_transaction(s);
    struct pg_command cmds[6];
    int n = 0;
    if (savepoint)
        cmds[n++] = (struct pg_command){.sql = "RELEASE SAVEPOINT " SQL_TASK_SAVEPOINT};
    cmds[n++] = (struct pg_command){.stmt = STMT_REMOVE_LOCKED, .n = 1, .params = row_params};
    int commit = n;
    cmds[n++] = (struct pg_command){.sql = "COMMIT"};
    cmds[n++] = (struct pg_command){.sql = "BEGIN"};
    int lock = n;
    cmds[n++] = max > 1 ? (struct pg_command){.stmt = STMT_LOCK, .n = 2, .params = queue_params}
                        : (struct pg_command){.stmt = STMT_LOCK_ONE, .n = 1,
                                              .params = queue_params};
    if (s->task_savepoint)
        cmds[n++] = (struct pg_command){.sql = "SAVEPOINT " SQL_TASK_SAVEPOINT};
    PGresult *res[6];
    char reason[ERR_MSG_MAX];
    *acked = 0;
    if (!run_commands(s, cmds, n, res, reason, sizeof(reason))) {
        /* no pipeline here: the two steps one after the other */
        int rc = pg_settle_locked(s, id, NULL, NULL, e);
        if (rc)
            return rc;
        *acked = 1;
        rc = pg_lock(s, &queue_id, 1, max, next, e);
        return rc;
    }
    *acked = res[commit] && !strcmp(PQcmdStatus(res[commit]), "COMMIT");
    int found = 0;
    if (!reason[0] && res[lock])
        found = fill_locked(res[lock], max ? max : 1, next);
    for (int k = 0; k < n; k++)
        PQclear(res[k]);
    if (!found && !reason[0]) {
        pg_rollback(s); /* the queue is empty: end the transaction that found nothing */
        return 0;
    }
    if (!*acked && !reason[0])
        snprintf(reason, sizeof(reason), "the transaction had failed: the server rolled it back");
    if (reason[0]) {
        for (int k = 0; k < found; k++)
            free(next[k].payload);
        int rc = sql_store_failed(s, *acked ? "taking a message" : "acking a message", reason, e);
        if (db_conn_is_open(s->conn) && PQtransactionStatus(pg(s)) != PQTRANS_IDLE)
            pg_rollback(s);
        return rc;
    }
    return found;
}

static int pg_claim_row(struct sql_store *s, int64_t id, const char *stamp, int *version,
                        struct err *e)
{
    char a[24];
    snprintf(a, sizeof(a), "%" PRId64, id);
    const char *params[] = {a, stamp};
    int rc;
    PGresult *r = run_stmt(s, "claiming a message", STMT_CLAIM_ROW, 2, params, PGRES_TUPLES_OK,
                           &rc, e);
    if (!r)
        return rc;
    int found = PQntuples(r) == 1;
    if (found)
        *version = atoi(PQgetvalue(r, 0, 0));
    PQclear(r);
    return found;
}

/* Reads what the server sent (notifications) without blocking; true when
 * a notification came. */
static int drain_notifies(struct sql_store *s, bool *woken, struct err *e)
{
    if (!PQconsumeInput(pg(s)))
        return sql_store_failed(s, "reading notifications", PQerrorMessage(pg(s)), e);
    PGnotify *n;
    while ((n = PQnotifies(pg(s))) != NULL) {
        *woken = true;
        PQfreemem(n);
    }
    return 0;
}

static int pg_wait(struct sql_store *s, int timeout_ms, struct err *e)
{
    bool woken = false;
    int rc = drain_notifies(s, &woken, e);
    if (rc || woken)
        return rc;
    struct pollfd p = {.fd = PQsocket(pg(s)), .events = POLLIN};
    if (p.fd < 0)
        return sql_store_failed(s, "waiting for notifications", "no socket", e);
    if (poll(&p, 1, timeout_ms) > 0)
        rc = drain_notifies(s, &woken, e);
    return rc;
}

static void id_params(char id[24], char version[16], int64_t row, int v)
{
    snprintf(id, 24, "%" PRId64, row);
    snprintf(version, 16, "%d", v);
}

static int pg_remove(struct sql_store *s, int64_t id, int version, struct err *e)
{
    char a[24], b[16];
    id_params(a, b, id, version);
    const char *params[] = {a, b};
    return run_stmt_change(s, "acking a message", STMT_REMOVE, 2, params, e);
}

static int pg_give_back(struct sql_store *s, int64_t id, int version, struct err *e)
{
    char a[24], b[16];
    id_params(a, b, id, version);
    const char *params[] = {a, b};
    return run_stmt_change(s, "restoring a message", STMT_GIVE_BACK, 2, params, e);
}

static int pg_read(struct sql_store *s, int64_t id, int version, char **payload,
                   int64_t *queue_id, struct err *e)
{
    char a[24], b[16];
    id_params(a, b, id, version);
    const char *params[] = {a, b};
    int rc;
    PGresult *r = run(s, "reading a message",
                      "SELECT payload, queue_id FROM kombu_message"
                      " WHERE id = $1 AND version = $2 AND NOT visible", 2, params,
                      PGRES_TUPLES_OK, &rc, e);
    if (!r)
        return rc;
    int found = PQntuples(r) == 1;
    if (found) {
        *payload = xstrdup(PQgetvalue(r, 0, 0));
        *queue_id = strtoll(PQgetvalue(r, 0, 1), NULL, 10);
    }
    PQclear(r);
    return found;
}

static int pg_replace(struct sql_store *s, int64_t id, int version, const char *payload,
                      struct err *e)
{
    /* One statement, so one transaction: the new row exists exactly when
     * the old one is gone. */
    char a[24], b[16];
    id_params(a, b, id, version);
    const char *params[] = {a, b, payload};
    return run_change(s, "requeueing a message",
                      "WITH old AS (DELETE FROM kombu_message"
                      "  WHERE id = $1 AND version = $2 AND NOT visible RETURNING queue_id)"
                      " INSERT INTO kombu_message (id, visible, timestamp, payload, version,"
                      "  queue_id)"
                      " SELECT nextval('message_id_sequence'), true, NULL, $3, 1, queue_id"
                      " FROM old", 3, params, e);
}

static int pg_touch(struct sql_store *s, const int64_t *ids, const int *versions, size_t n,
                    const char *stamp, struct err *e)
{
    for (size_t i = 0; i < n; i++) {
        char a[24], b[16];
        id_params(a, b, ids[i], versions[i]);
        const char *params[] = {a, b, stamp};
        int rc = run_change(s, "keeping a held message",
                            "UPDATE kombu_message SET timestamp = $3::timestamp"
                            " WHERE id = $1 AND version = $2 AND NOT visible", 3, params, e);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* Gives back the celeriac claims matching `where` (on stamp $1). */
static int give_back_where(struct sql_store *s, const char *what, const char *where,
                           const char *stamp, int *given, struct err *e)
{
    char sql[512];
    snprintf(sql, sizeof(sql),
             "UPDATE kombu_message SET visible = true, timestamp = NULL,"
             " version = least(-version + 1, 32001)"
             " WHERE NOT visible AND version < 0 AND %s", where);
    const char *params[] = {stamp};
    int rc;
    PGresult *r = run(s, what, sql, 1, params, PGRES_COMMAND_OK, &rc, e);
    if (!r)
        return rc;
    *given = atoi(PQcmdTuples(r));
    PQclear(r);
    return 0;
}

static int pg_give_back_expired(struct sql_store *s, const char *before, int *given,
                                struct err *e)
{
    return give_back_where(s, "restoring messages past the visibility timeout",
                           "timestamp < $1::timestamp", before, given, e);
}

static int pg_give_back_stamped(struct sql_store *s, const char *stamp, int *given,
                                struct err *e)
{
    return give_back_where(s, "restoring a claim", "timestamp = $1::timestamp", stamp, given, e);
}

static int pg_insert(struct sql_store *s, int64_t queue_id, const char *payload, size_t len,
                     struct err *e)
{
    UNUSED(len); /* text parameters are NUL-terminated */
    char qid[24];
    snprintf(qid, sizeof(qid), "%" PRId64, queue_id);
    const char *params[] = {payload, qid};
    int rc = run_stmt_change(s, "publishing a message", STMT_INSERT, 2, params, e);
    return rc < 0 ? rc : 0;
}

static int pg_exec(struct sql_store *s, const char *sql, struct err *e)
{
    PGresult *r = PQexec(pg(s), sql);
    int rc = 0;
    if (!r || PQresultStatus(r) != PGRES_COMMAND_OK)
        rc = sql_store_failed(s, sql, r ? PQresultErrorMessage(r) : PQerrorMessage(pg(s)), e);
    PQclear(r);
    return rc;
}

static int pg_begin(struct sql_store *s, struct err *e)
{
    return pg_exec(s, "BEGIN", e);
}

/* A COMMIT that ends a failed transaction answers ROLLBACK: not a commit. */
static int pg_commit(struct sql_store *s, struct err *e)
{
    PGresult *r = PQexec(pg(s), "COMMIT");
    int rc = 0;
    if (!r || PQresultStatus(r) != PGRES_COMMAND_OK)
        rc = sql_store_failed(s, "COMMIT", r ? PQresultErrorMessage(r) : PQerrorMessage(pg(s)),
                              e);
    else if (strcmp(PQcmdStatus(r), "COMMIT"))
        rc = err_set(e, E_PROTOCOL, "the transaction had failed: the server rolled it back");
    PQclear(r);
    return rc;
}

static void pg_rollback(struct sql_store *s)
{
    PQclear(PQexec(pg(s), "ROLLBACK"));
}

static int pg_rollback_to_task(struct sql_store *s, struct err *e)
{
    if (!pg_in_transaction(s))
        return err_set(e, E_PROTOCOL, "the task ended the transaction itself");
    return pg_exec(s, "ROLLBACK TO SAVEPOINT " SQL_TASK_SAVEPOINT, e);
}

static bool pg_in_transaction(struct sql_store *s)
{
    PGTransactionStatusType st = PQtransactionStatus(pg(s));
    return st == PQTRANS_INTRANS || st == PQTRANS_INERROR;
}

static bool pg_transaction_usable(struct sql_store *s)
{
    return PQtransactionStatus(pg(s)) == PQTRANS_INTRANS;
}

const struct sql_store_ops sql_pg_store_ops = {
    .prepare = pg_prepare,
    .queue_id = pg_queue_id,
    .listen = pg_listen,
    .claim = pg_claim,
    .lock = pg_lock,
    .settle_locked = pg_settle_locked,
    .settle_locked_lock_next = pg_settle_locked_lock_next,
    .settle_locked_in_batch = pg_settle_locked_in_batch,
    .transaction_usable = pg_transaction_usable,
    .claim_row = pg_claim_row,
    .wait = pg_wait,
    .remove = pg_remove,
    .give_back = pg_give_back,
    .read = pg_read,
    .replace = pg_replace,
    .touch = pg_touch,
    .give_back_expired = pg_give_back_expired,
    .give_back_stamped = pg_give_back_stamped,
    .insert = pg_insert,
    .begin = pg_begin,
    .commit = pg_commit,
    .rollback = pg_rollback,
    .in_transaction = pg_in_transaction,
    .rollback_to_task = pg_rollback_to_task,
};
