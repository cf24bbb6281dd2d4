/* SPDX-License-Identifier: MIT
 * db/conn.h: the one database connection a child process owns. Opened after
 * fork with retries, checked before every task, re-established when lost,
 * refused to any process but the one that opened it, closed on every exit path.
 * Child processes only; nothing here is async-signal-safe.
 */
#ifndef CELERIAC_DB_CONN_H
#define CELERIAC_DB_CONN_H

#include <signal.h>

#include "util/url.h"

typedef struct pg_conn PGconn;
typedef struct sqlite3 sqlite3;

struct db_config {
    enum db_kind kind;         /* DB_NONE: tasks get no connection */
    char *url;                 /* owned: the --db string as given (never logged) */
    char *sqlite_path;         /* owned: file path for DB_SQLITE */
    char *where;               /* owned: "host:port" or the path, safe to log */
    int attempts;              /* connect attempts at start-up before giving up */
    int64_t backoff_base_ms;   /* first retry delay */
    int64_t backoff_cap_ms;    /* largest retry delay */
    int connect_timeout_s;     /* libpq connect_timeout */
    int busy_timeout_ms;       /* SQLite busy timeout */
    int64_t idle_check_ms;     /* a connection idle this long is pinged before use */
    int64_t max_age_ms;        /* recycle a connection after about this long; 0 = never */
    uint64_t max_uses;         /* recycle after about this many tasks; 0 = never */
    bool pooled;               /* --db-pooler transaction: a transaction pooler (PgBouncer)
                                  is in front, so no session state lasts past a transaction */
};

/* Called after every successful open and before every close, so the task
 * library can prepare and finalize statements. arg is db_conn.hook_arg. */
typedef int (*db_hook_fn)(void *arg);

struct db_conn {
    const struct db_config *cfg;  /* borrowed; outlives the connection */
    PGconn *pg;                   /* open PostgreSQL handle or NULL */
    sqlite3 *sqlite;              /* open SQLite handle or NULL */
    void *pg_cancel;              /* PGcancel for the open PostgreSQL handle, or NULL */
    pid_t owner;                  /* pid that opened the handle */
    int64_t opened_ms;            /* monotonic time of the open */
    int64_t last_used_ms;         /* monotonic time the last task finished with it */
    unsigned reconnects;          /* re-opens after a loss, for stats */
    uint64_t attempts;            /* connect attempts, failed or not, for stats */
    int64_t wait_ms;              /* time spent in db_conn_open, for stats */
    uint64_t uses;                /* tasks run on this handle (the child counts) */
    int64_t recycle_at_ms;        /* jittered max_age deadline; 0 = none */
    uint64_t recycle_after;       /* jittered max_uses; 0 = none */
    char app_name[64];            /* PostgreSQL application_name */
    bool pooled;                  /* behind a transaction pooler: cfg->pooled, or found out
                                     from a lost prepared statement (db_pg_message_is_pooled) */
    char at[96];                  /* "host:port" the open handle reached (one host of a
                                     multi-host URL), or "" when closed; safe to log */
    bool want_rw;                 /* the open PostgreSQL handle must be read-write (its
                                     target_session_attrs is read-write or primary) */
    const char *lost_why;         /* static: why db_conn_check_lost last said "lost" */
    bool quiet;                   /* db_conn_open logs failures at debug level: the
                                     caller reports them (a worker's capacity probe) */
    db_hook_fn on_open;           /* NULL or library hook glue */
    db_hook_fn on_close;
    db_hook_fn on_retry;          /* NULL, or called after each failed connect attempt,
                                     before the wait (its return value is ignored) */
    void *hook_arg;
    bool broker_txn;              /* the broker holds the open transaction between two
                                   tasks (a row locked for the next one): db_conn_clean
                                   and db_conn_ready leave the handle alone meanwhile */
};

/* Fills c for cfg; opens nothing. */
void db_conn_init(struct db_conn *c, const struct db_config *cfg, const char *app_name);

/* Opens the connection, retrying up to `attempts` times (0 = until *stop)
 * with exponential backoff and jitter. Logs the first failure and the end of
 * the episode with the number of attempts (the rest at debug). Returns 0, or
 * E_CONN_LOST with "connect to 'host:port' failed: <reason>" in e. */
int db_conn_open(struct db_conn *c, int attempts, volatile sig_atomic_t *stop, struct err *e);

/* The one close path: runs on_close, closes the handle, logs reason (if not
 * NULL) with the connection's age. NULL-safe and idempotent. */
void db_conn_close(struct db_conn *c, const char *reason);

bool db_conn_is_open(const struct db_conn *c);

/* Before a task: makes sure the handle is live and clean. Detects a connection
 * lost while idle (server restart, pg_terminate_backend) without a round trip,
 * pings after idle_check_ms, rolls back a transaction left open, and reopens a
 * lost connection (retrying until *stop). The ping and the rollback wait at
 * most connect_timeout_s, and at most limit_ms when that is > 0 (the hard
 * time limit of the task about to run); a server that does not answer in
 * time counts as lost. Returns 0, or E_CONN_LOST when it could not
 * reconnect before *stop was set. */
int db_conn_ready(struct db_conn *c, int64_t limit_ms, volatile sig_atomic_t *stop,
                  struct err *e);

/* Right after a task: rolls back a transaction it left open (logged), waiting
 * at most connect_timeout_s for it. Cheap when there is none (no round
 * trip). Returns 0, or E_CONN_LOST (the handle
 * is then closed and db_conn_ready reopens it). */
int db_conn_clean(struct db_conn *c, struct err *e);
/* Whether the handle is due to be recycled (max age or max uses reached),
 * which db_conn_ready does next. */
bool db_conn_recycle_due(const struct db_conn *c);

/* After a task reported a database failure: true when the connection is
 * gone, or is on a read-only server (a standby, or a primary fenced with
 * default_transaction_read_only) while read-write is wanted; the handle is
 * then closed with the reason, also left in c->lost_why. The one place that
 * decides what "connection lost" means. */
bool db_conn_check_lost(struct db_conn *c);

/* For log lines about c: the host:port its open handle reached, else the
 * configured where (every host of a multi-host URL). Borrowed from c. */
const char *db_conn_where(const struct db_conn *c);

/* Async-signal-safe: cancels the statement running on c, if any (for time
 * limits, from a timer's signal handler). */
void db_conn_cancel(struct db_conn *c);

/* The live handles, or NULL (with an error logged) when called from a process
 * other than the one that opened them. */
PGconn *db_conn_pg(struct db_conn *c);
sqlite3 *db_conn_sqlite(struct db_conn *c);

/* Fills where (for logs) from a PostgreSQL conninfo or URI via libpq's own
 * parser; returns 0 or -EINVAL with libpq's reason in e. */
int db_pg_describe(const char *conninfo, char **where, struct err *e);

/* True for a PostgreSQL SQLSTATE (NULL allowed) that means the session is
 * gone even if the socket looks open: class 08, admin or crash shutdown,
 * cannot connect now; or that it is useless for writing: 25006 (read-only
 * transaction: a standby, or a fenced old primary), where a new session
 * (target_session_attrs=read-write) finds the primary. The one list every
 * PostgreSQL user here consults. */
bool db_pg_sqlstate_is_loss(const char *state);

/* True when a PostgreSQL connect failure's message (NULL allowed) says the
 * server is full: SQLSTATE 53300 (max_connections, the reserved slots, or a
 * role's CONNECTION LIMIT), which libpq reports only as text. */
bool db_pg_message_is_full(const char *msg);

/* True when a PostgreSQL error message (NULL allowed) says a prepared
 * statement is missing or already there ("prepared statement \"x\" does not
 * exist", SQLSTATE 26000; "... already exists", 42P05): on a connection that
 * prepared it and was never reset, the sign of a transaction pooler handing
 * each transaction to another server session. */
bool db_pg_message_is_pooled(const char *msg);

/* What a PostgreSQL server's connection slots are used for, seen from one
 * session (itself not counted). */
struct db_census {
    int max_connections;      /* the server's max_connections */
    int reserved;             /* superuser_reserved_connections + reserved_connections
                                 (PostgreSQL 16+; 0 before) */
    int celeriac;             /* client sessions whose application_name starts "celeriac " */
    int others;               /* every other client session */
};

/* One query on c's open PostgreSQL handle (pg_stat_activity and the
 * settings), run outside a transaction, answered within timeout_ms. Any
 * process that owns c. Returns 0 with out filled, or E_DB, or E_CONN_LOST
 * (no answer in time included: the caller then closes c), with "connection
 * census on '...' failed: <reason>" in e. */
int db_pg_census(struct db_conn *c, int64_t timeout_ms, struct db_census *out, struct err *e);

#endif /* CELERIAC_DB_CONN_H */
