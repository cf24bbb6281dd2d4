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

/* True when url names the SQL transport (sqla+ or sqlalchemy+). */
bool sql_broker_url_is_sql(const char *url);

/* Fills db (kind, url, sqlite_path, where) from a kombu URL:
 * sqla+postgresql[+driver]://... (any libpq URI) or sqla+sqlite:///relative.db,
 * sqla+sqlite:////abs/path.db, as SQLAlchemy reads them. 0 or -EINVAL with
 * the reason in e. */
int sql_broker_url_parse(const char *url, struct db_config *db, struct err *e);

/* Sets b up over cfg (cfg->kind BROKER_SQL; borrowed, outlives b) for owner
 * (nothing opened). 0. */
int broker_sql_transport_init(struct broker *b, const struct broker_config *cfg,
                              const struct broker_owner *owner);

#endif /* CELERIAC_BROKER_SQL_H */
