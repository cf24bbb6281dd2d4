/* SPDX-License-Identifier: MIT
 * broker/sql.h: kombu's SQLAlchemy transport (sqla+postgresql://,
 * sqla+sqlite:///) behind broker.h: kombu's tables, each child its own
 * connection, claims that never serialise children, acks that delete, and
 * what a dead process held given back (see sql_store.h). Child processes
 * only.
 */
#ifndef CELERIAC_BROKER_SQL_H
#define CELERIAC_BROKER_SQL_H

#include "broker/broker.h"

#include <strings.h>

/* True when url names the SQL transport (sqla+ or sqlalchemy+). Inline, so
 * that the core client (client/client.c) can ask without linking this
 * transport, and with it libpq and sqlite3. */
static inline bool sql_broker_url_is_sql(const char *url)
{
    return !strncasecmp(url, "sqla+", 5) || !strncasecmp(url, "sqlalchemy+", 11);
}

/* Fills db (kind, url, sqlite_path, where) from a kombu URL:
 * sqla+postgresql[+driver]://... (any libpq URI) or sqla+sqlite:///relative.db,
 * sqla+sqlite:////abs/path.db, as SQLAlchemy reads them. 0 or -EINVAL with
 * the reason in e. */
int sql_broker_url_parse(const char *url, struct db_config *db, struct err *e);

/* Sets b up over cfg (cfg->kind BROKER_SQL; borrowed, outlives b) for owner
 * (nothing opened). 0. */
int broker_sql_transport_init(struct broker *b, const struct broker_config *cfg,
                              const struct broker_owner *owner);

/* ---- transactional tasks (CELERIAC_TRANSACTIONAL) -----------------------
 * When the broker's database is the task's, a transactional task runs in a
 * transaction on the task's own connection, and its message's row is
 * deleted in that transaction: the task's writes and the ack commit
 * together or not at all. The row stays claimed (by the broker connection)
 * until then, so a death before the commit leaves it to be given back and
 * run again, with none of the first run's writes. */

/* True when the broker (BROKER_SQL) and the task database are one database:
 * the same file, or the same host, port and database name. */
bool sql_broker_is_task_db(const struct broker_config *broker, const struct db_config *db);

/* True when b (any transport) holds m's row locked in the open transaction
 * of the task's own connection, the broker running on it
 * (worker_config.broker_shares_db): that transaction must last until the
 * task starts, a transactional task runs inside it (after a savepoint, see
 * sql_txn_rollback_to_task), and its ack (the row's DELETE and the COMMIT)
 * commits the task's writes. */
bool sql_broker_holds_in_task_txn(const struct broker *b, const struct message *m);

/* The transactions a batch may span: every transactional task in one is a
 * subtransaction (its savepoint), and past 64 of them
 * (PGPROC_MAX_CACHED_SUBXIDS) every other backend's snapshot must read
 * pg_subtrans, which slows every consumer of the database. */
#define SQL_BATCH_MAX 64

/* Names the lock transaction b holds open on the task's connection (any
 * transport: 0 when none): a result held for a task of that transaction
 * is stored by owner.before_commit of the same epoch, or never (the
 * transaction rolled back). */
uint64_t sql_broker_txn_epoch(const struct broker *b);

/* Undoes a task's writes since the lock's savepoint, keeping its message's
 * lock. 0, or < 0 when the task ended the transaction itself. */
int sql_txn_rollback_to_task(struct db_conn *c, struct err *e);

/* Opens the task's transaction on c. 0 or a negative code. */
int sql_txn_begin(struct db_conn *c, struct err *e);
/* Whether the transaction is still open (a task that committed or rolled
 * back on its own has ended it). */
bool sql_txn_is_open(struct db_conn *c);
/* Deletes the row the delivery tag names and commits. 1: committed; 0: the
 * claim was no longer ours, the transaction was rolled back; < 0: it failed
 * (E_CONN_LOST: whether it committed is unknown). */
int sql_txn_commit_acking(struct db_conn *c, const char *tag, struct err *e);
/* Rolls the transaction back (best effort). */
void sql_txn_rollback(struct db_conn *c);

#endif /* CELERIAC_BROKER_SQL_H */
