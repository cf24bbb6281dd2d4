/* SPDX-License-Identifier: MIT
 * broker/sql_txn.c: the transaction a transactional task runs in, on the
 * task's own connection to the broker's database (see broker/sql.h): the
 * same statements as the transport's, run on that connection.
 */
#include "common.h"
#include "broker/sql.h"
#include "broker/sql_store.h"

#include <limits.h>
#include <stdlib.h>

const struct sql_store_ops *sql_store_ops_for(const struct db_conn *c)
{
    return c->cfg->kind == DB_SQLITE ? &sql_sqlite_store_ops : &sql_pg_store_ops;
}

static struct sql_store on(struct db_conn *c)
{
    return (struct sql_store){.ops = sql_store_ops_for(c), .conn = c};
}

/* Two names of one SQLite file compare by what they resolve to. */
static bool same_file(const char *a, const char *b)
{
    char ra[PATH_MAX], rb[PATH_MAX];
    if (realpath(a, ra) && realpath(b, rb))
        return !strcmp(ra, rb);
    return !strcmp(a, b);
}

bool sql_broker_is_task_db(const struct broker_config *broker, const struct db_config *db)
{
    if (broker->kind != BROKER_SQL || broker->sql.kind != db->kind)
        return false;
    if (db->kind == DB_SQLITE)
        return same_file(broker->sql.sqlite_path, db->sqlite_path);
    /* host:port/dbname, as libpq reads both URLs */
    return db->kind == DB_POSTGRES && broker->sql.where && db->where &&
           !strcmp(broker->sql.where, db->where);
}

int sql_txn_begin(struct db_conn *c, struct err *e)
{
    struct sql_store s = on(c);
    return s.ops->begin(&s, e);
}

bool sql_txn_is_open(struct db_conn *c)
{
    struct sql_store s = on(c);
    return db_conn_is_open(c) && s.ops->in_transaction(&s);
}

int sql_txn_commit_acking(struct db_conn *c, const char *tag, struct err *e)
{
    struct sql_store s = on(c);
    int64_t id;
    int version;
    if (!sql_tag_parse(tag, &id, &version)) {
        s.ops->rollback(&s);
        return err_set(e, E_PROTOCOL, "'%.40s' names no claimed row", tag);
    }
    int rc = s.ops->remove(&s, id, version, e);
    if (rc <= 0) {
        if (db_conn_is_open(c))
            s.ops->rollback(&s);
        return rc;
    }
    rc = s.ops->commit(&s, e);
    return rc < 0 ? rc : 1;
}

int sql_txn_rollback_to_task(struct db_conn *c, struct err *e)
{
    struct sql_store s = on(c);
    if (!s.ops->rollback_to_task)
        return err_set(e, E_PROTOCOL, "no lock path on this database");
    return s.ops->rollback_to_task(&s, e);
}

void sql_txn_rollback(struct db_conn *c)
{
    struct sql_store s = on(c);
    if (db_conn_is_open(c))
        s.ops->rollback(&s);
}
