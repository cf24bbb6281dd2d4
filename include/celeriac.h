/* SPDX-License-Identifier: MIT
 * celeriac.h: the only header a task library sees.
 *
 * A task library is a shared object loaded with `celeriac worker -A lib.so`. It
 * exports one symbol, celeriac_library_init(), which returns a description of
 * its tasks and hooks. The worker's master loads the library once to validate
 * it and list the tasks (no I/O may happen at that point); every child process
 * then runs the hooks and tasks with its own database connection.
 *
 * Threading: a child runs one task at a time on one thread. Every function here
 * must be called from that thread, during the call it was given a handle in.
 * Nothing here is async-signal-safe.
 *
 * Lifetime: a task must keep nothing it got from these functions past its
 * return: not the task handle, not the connection, not memory from
 * celeriac_alloc(). The connection in particular may be replaced between
 * tasks (after a lost connection); ask for it again in every call.
 *
 * Build a library with:  cc -std=c11 -fPIC -shared -o libmine.so mine.c
 * (plus `pkg-config --cflags --libs libpq` or `sqlite3` when it uses them).
 */
#ifndef CELERIAC_H
#define CELERIAC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The ABI this header describes. A library compiled against another value is
 * refused at load time with both numbers in the message. Raised whenever a
 * struct below changes shape or a function changes meaning. */
#define CELERIAC_ABI_VERSION 2

/* The oldest ABI this worker still loads: a library built for ABI 1 lacks
 * only the fields marked "ABI 2" below, which the worker then ignores. */
#define CELERIAC_ABI_OLDEST 1

#define CELERIAC_VERSION "0.1.0"

/* libpq's and SQLite's handle types, declared without their headers so a
 * library that uses only one of them need not have the other installed. */
typedef struct pg_conn PGconn;
typedef struct sqlite3 sqlite3;

/* One running task. Opaque; valid only during the task function's call. */
struct celeriac_task;
/* The child process a hook runs in. Opaque; valid only during the hook's call. */
struct celeriac_process;

/* Return values of task functions and hooks. */
enum celeriac_status {
    CELERIAC_OK = 0,      /* the task succeeded; its result is what it set, or null */
    CELERIAC_FAILED = -1, /* the task failed; celeriac_fail() said why */
    CELERIAC_RETRY = -2,  /* retry later; returned by celeriac_retry() */
};

/* How a task is retried (celeriac_retry, autoretry). Zero-initialise; zero
 * fields take Celery's defaults. */
struct celeriac_retry_options {
    double countdown;     /* seconds until the retry runs; 0 = 180 (default_retry_delay) */
    int max_retries;      /* retries allowed; 0 = 3 (Celery's default); -1 = unlimited */
    bool backoff;         /* countdown doubles per retry: countdown * 2^retries */
    double backoff_max;   /* cap of the backed-off countdown; 0 = 600 */
    bool jitter;          /* draw the countdown at random from [0, countdown] */
};

/* Declarative retries (ABI 2): when task `task` fails with one of the
 * exc_type names in the comma-separated `exc_types` ("*" = any), it is retried
 * with `options` instead of failing, as Celery's autoretry_for. */
struct celeriac_autoretry {
    const char *task;                       /* task name; NULL ends the table */
    const char *exc_types;                  /* e.g. "OperationalError,TimeoutError" */
    struct celeriac_retry_options options;
};

/* A task function. Returns CELERIAC_OK or CELERIAC_FAILED (use
 * `return celeriac_fail(task, ...)`). Any other value is treated as a failure
 * with exc_type "RuntimeError". */
typedef int (*celeriac_task_fn)(struct celeriac_task *task);

/* A per-process hook. process_init returning non-zero makes the child give up
 * with "cannot serve" (the master then stops instead of respawning it). */
typedef int (*celeriac_process_fn)(struct celeriac_process *proc);

/* Per-task options (bit flags for celeriac_task_def.flags). */
enum celeriac_task_flags {
    /* Acknowledge the message after the result is stored instead of when the
     * task starts, so a child that dies mid-task leaves it for redelivery. */
    CELERIAC_ACKS_LATE = 1 << 0,
    /* Store no SUCCESS result (as Celery's ignore_result=True). */
    CELERIAC_IGNORE_RESULT = 1 << 1,
    /* Running the task twice has the same effect as running it once: when the
     * database connection is lost mid-task, the worker reconnects and runs it
     * again instead of failing it. */
    CELERIAC_IDEMPOTENT = 1 << 2,
    /* With the broker in the task's own database (--broker sqla+... naming
     * the --db database): the task runs in a transaction on its connection,
     * and its message is acked (its row deleted) in that transaction, so its
     * writes and the ack commit together or not at all. A crash at any
     * instant neither loses the task nor applies its writes twice; a failure
     * or a retry rolls its writes back. The task must not COMMIT or ROLLBACK
     * itself. On any other broker it runs as CELERIAC_ACKS_LATE. */
    CELERIAC_TRANSACTIONAL = 1 << 3,
};

/* One task in a library's table. */
struct celeriac_task_def {
    const char *name;    /* the Celery task name, e.g. "books.get_book_info" */
    celeriac_task_fn fn; /* called once per message */
    unsigned flags;      /* enum celeriac_task_flags */
};

/* What celeriac_library_init() returns. Fields are only ever appended; a
 * library sets abi_version to CELERIAC_ABI_VERSION so the host knows which
 * fields it filled in. */
struct celeriac_library {
    int abi_version;                       /* always CELERIAC_ABI_VERSION */
    const char *name;                      /* shown in the banner and logs */
    const struct celeriac_task_def *tasks; /* array ending with a {NULL} entry */
    /* Optional (NULL allowed). Runs in each child after fork, after its
     * database connection is open and before the first task. */
    celeriac_process_fn process_init;
    /* Optional. Runs in each child on every orderly exit path, before its
     * database connection is closed. Its return value is ignored. */
    celeriac_process_fn process_shutdown;
    /* Optional. Runs in a child every time its database connection has been
     * (re)opened, before any task sees it: the place to prepare statements,
     * which do not survive a reconnect. Non-zero marks the connection bad and
     * the child reconnects with backoff. */
    celeriac_process_fn db_connected;
    /* Optional. Runs in a child just before its database connection is
     * closed (reconnect, recycle or exit) while the handle is still valid:
     * the place to finalize cached sqlite3_stmt objects. Return value ignored. */
    celeriac_process_fn db_closing;
    /* ABI 2. Optional table of declarative retries, ending with {NULL}. */
    const struct celeriac_autoretry *autoretry;
};

/* The one symbol a library exports. Called once in the master with the
 * host's ABI version, before any fork. Must do no I/O and open nothing.
 * Returns a pointer to static storage describing the library, or NULL to
 * refuse loading (e.g. when host_abi is unknown to it). */
const struct celeriac_library *celeriac_library_init(int host_abi);

/* ---- Arguments ---------------------------------------------------------
 * Celery passes positional args (a JSON array) and keyword args (a JSON
 * object). Each accessor below looks up positional argument `index` first and,
 * when there are not that many positional args, the keyword argument `name`
 * (name may be NULL for positional-only). On a missing argument or a JSON type
 * that does not fit, it records a TypeError failure on the task (as Python
 * would raise) and returns CELERIAC_FAILED; the task should then return
 * CELERIAC_FAILED. Strings are borrowed and live until the task returns. */

/* Number of positional arguments. */
size_t celeriac_argc(const struct celeriac_task *task);
/* True if positional `index` or keyword `name` was given (even as null). */
bool celeriac_has_arg(const struct celeriac_task *task, size_t index, const char *name);
/* A JSON integer that fits in int64_t (a float with no fraction is accepted,
 * as Python's int() of such a value would be; true/false are refused). */
int celeriac_arg_int(struct celeriac_task *task, size_t index, const char *name, int64_t *out);
/* A JSON number (integer or real). */
int celeriac_arg_double(struct celeriac_task *task, size_t index, const char *name, double *out);
/* A JSON true/false. */
int celeriac_arg_bool(struct celeriac_task *task, size_t index, const char *name, bool *out);
/* A JSON string, UTF-8, NUL-terminated; *len (if not NULL) gets its length. */
int celeriac_arg_str(struct celeriac_task *task, size_t index, const char *name,
                     const char **out, size_t *len);
/* Any JSON value, rendered as compact JSON text (arrays and objects included). */
int celeriac_arg_json(struct celeriac_task *task, size_t index, const char *name,
                      const char **out);

/* ---- Results -----------------------------------------------------------
 * Setting a result replaces any earlier one. Strings are copied. */
void celeriac_return_null(struct celeriac_task *task);
void celeriac_return_int(struct celeriac_task *task, int64_t value);
void celeriac_return_double(struct celeriac_task *task, double value); /* NaN/inf as Python writes them */
void celeriac_return_bool(struct celeriac_task *task, bool value);
/* A UTF-8 string of len bytes (len may be (size_t)-1 for NUL-terminated). */
void celeriac_return_str(struct celeriac_task *task, const char *value, size_t len);
/* Any JSON text, e.g. "{\"ok\": true}". Returns CELERIAC_OK, or CELERIAC_FAILED
 * (with a TypeError recorded) when json is not valid JSON. */
int celeriac_return_json(struct celeriac_task *task, const char *json);

/* Records the task's failure as Celery stores it: exc_type (a Python exception
 * class name such as "ValueError", "LookupError", "KeyError"; "builtins" is
 * used as exc_module for the standard ones, "celeriac" for others) and a
 * printf-style message. Always returns CELERIAC_FAILED. */
int celeriac_fail(struct celeriac_task *task, const char *exc_type, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Reports a failure that came from the database. The worker inspects the
 * connection: when it was lost, the task is re-run after reconnecting if it is
 * CELERIAC_IDEMPOTENT, and otherwise fails with exc_type "OperationalError";
 * when the connection is fine the failure is stored as DatabaseError with
 * `message`. Always returns CELERIAC_FAILED. */
int celeriac_fail_db(struct celeriac_task *task, const char *message);

/* Asks for the task to run again later, as Celery's Task.retry: the worker
 * stores state RETRY with this exception, sends a new message for the same
 * task id with retries + 1 and an ETA (options may be NULL for the defaults),
 * and settles this one. When max_retries is exhausted the task fails instead
 * with this exception. Returns CELERIAC_RETRY, or CELERIAC_FAILED when no retry
 * is left; either way, return it from the task. */
int celeriac_retry(struct celeriac_task *task, const struct celeriac_retry_options *options,
                   const char *exc_type, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* ---- Context -----------------------------------------------------------*/
const char *celeriac_task_id(const struct celeriac_task *task);
const char *celeriac_task_name(const struct celeriac_task *task);
/* How many times this task id has been retried (Celery's request.retries). */
int celeriac_task_retries(const struct celeriac_task *task);

/* True once the task's soft time limit (--soft-time-limit or the message's
 * timelimit header) has passed. When it passes, the worker also cancels the
 * statement running on the task's connection. A task that sees this should
 * clean up and return celeriac_fail(task, "SoftTimeLimitExceeded", ...). */
bool celeriac_soft_time_limit_exceeded(const struct celeriac_task *task);

/* The process's live PostgreSQL connection, or NULL when the worker runs
 * with SQLite or no database. Never cache it: ask in every call. Using it
 * from another process (after a fork) is refused by the worker. */
PGconn *celeriac_pg(struct celeriac_task *task);
/* The process's SQLite handle (WAL mode, busy timeout set), or NULL. */
sqlite3 *celeriac_sqlite(struct celeriac_task *task);

/* Scratch memory that lives until the task returns; never NULL (the child
 * aborts when memory runs out). Aligned for any type. */
void *celeriac_alloc(struct celeriac_task *task, size_t size);

/* Logs one line at INFO (level 20), WARNING (30) or ERROR (40) with the task
 * id. Never pass a password. */
void celeriac_log(struct celeriac_task *task, int level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* True when the PostgreSQL connection goes through a transaction pooler
 * (PgBouncer with pool_mode = transaction): the worker was started with
 * --db-pooler transaction, or found out itself when a prepared statement went
 * missing between transactions. Each transaction may then run on another
 * server session, so nothing may rely on session state: no named prepared
 * statements (PQprepare/PQexecPrepared; PQexecParams works, as it parses and
 * runs in one exchange), no LISTEN, no SET without LOCAL, no temporary tables,
 * no session advisory locks. Ask in every call (it can turn true at run time;
 * db_connected runs again then). Added without an ABI change: a library that
 * calls it needs a worker that has it (dlopen then names the missing symbol). */
bool celeriac_db_pooled(const struct celeriac_task *task);

/* ---- Process hooks -----------------------------------------------------*/
PGconn *celeriac_process_pg(struct celeriac_process *proc);
sqlite3 *celeriac_process_sqlite(struct celeriac_process *proc);
/* celeriac_db_pooled() for a hook: check it in db_connected before preparing. */
bool celeriac_process_db_pooled(const struct celeriac_process *proc);
/* The child's index, 0 .. concurrency-1. */
int celeriac_process_index(const struct celeriac_process *proc);
/* A pointer the library may keep per process (set in process_init, read by
 * tasks with celeriac_process_data); celeriac never frees it. */
void celeriac_set_process_data(struct celeriac_process *proc, void *data);
void *celeriac_process_data(struct celeriac_task *task);
/* The same pointer, from a hook (db_connected, db_closing, process_shutdown). */
void *celeriac_process_get_data(const struct celeriac_process *proc);

#ifdef __cplusplus
}
#endif

#endif /* CELERIAC_H */
