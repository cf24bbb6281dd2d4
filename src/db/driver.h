/* SPDX-License-Identifier: MIT
 * db/driver.h: what conn.c needs from each database client library. One
 * implementation per file (pg.c, sqlite.c); conn.c picks one by kind and
 * never tests the kind again.
 */
#ifndef CELERIAC_DB_DRIVER_H
#define CELERIAC_DB_DRIVER_H

struct db_conn;

struct db_driver {
    const char *name;
    /* Opens c's handle once (no retry). Returns 0 or E_CONN_LOST with libpq's
     * or SQLite's reason in e. */
    int (*open)(struct db_conn *c, struct err *e);
    /* Frees the handle; c->pg / c->sqlite become NULL. */
    void (*close)(struct db_conn *c);
    /* No round trip: true when the handle is known dead (e.g. the server
     * closed the socket while we were idle). */
    bool (*is_lost)(struct db_conn *c);
    /* No round trip: NULL, or what the server is ("a standby (read-only)",
     * static) when the session is read-only while c->want_rw asks for
     * read-write. */
    const char *(*read_only)(struct db_conn *c);
    /* One round trip proving the connection works, answered within
     * timeout_ms. 0 or E_CONN_LOST (also when no answer came in time). */
    int (*ping)(struct db_conn *c, int64_t timeout_ms, struct err *e);
    /* Rolls back a transaction a task left open, within timeout_ms. 0, or
     * E_CONN_LOST. */
    int (*reset)(struct db_conn *c, int64_t timeout_ms, struct err *e);
    /* Async-signal-safe: asks the server to cancel the running statement
     * (PostgreSQL) or interrupts it (SQLite). Best effort, no result. */
    void (*cancel)(struct db_conn *c);
};

extern const struct db_driver db_pg_driver;
extern const struct db_driver db_sqlite_driver;

#endif /* CELERIAC_DB_DRIVER_H */
