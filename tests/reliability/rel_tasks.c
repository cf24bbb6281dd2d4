/* SPDX-License-Identifier: MIT
 * rel_tasks.c: a task library for the reliability tests (tests/reliability),
 * built by them at run time the way a user builds one (include/celeriac.h
 * alone). Its tasks misbehave on purpose: crash, abort, hold a statement on
 * the server, leave a transaction open, grow the heap, and report which
 * process and which PostgreSQL backend ran them (rel.record also leaves a
 * row per run, for counting runs).
 */
#define _POSIX_C_SOURCE 200809L

#include <celeriac.h>

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

/* Sleeps `s` seconds; a signal (the soft limit's timer) ends it early only
 * when it is the soft time limit, as tasks.sleep does. Returns 0, or 1 when
 * the soft limit cut it short. */
static int sleep_seconds(struct celeriac_task *task, double s)
{
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) != 0) {
        if (errno != EINTR)
            return 0;
        if (celeriac_soft_time_limit_exceeded(task))
            return 1;
    }
    return 0;
}

static int opt_seconds(struct celeriac_task *task, double *out)
{
    *out = 0;
    if (celeriac_has_arg(task, 0, "seconds"))
        return celeriac_arg_double(task, 0, "seconds", out);
    return CELERIAC_OK;
}

/* Fails the task with the connection's error, as a lost connection or a
 * failed statement (the worker tells them apart). */
static int fail_pg(struct celeriac_task *task, PGconn *pg, PGresult *res)
{
    char msg[256];
    const char *m = res && *PQresultErrorMessage(res) ? PQresultErrorMessage(res)
                                                      : PQerrorMessage(pg);
    snprintf(msg, sizeof(msg), "%s", m);
    msg[strcspn(msg, "\n")] = '\0';
    PQclear(res);
    if (celeriac_soft_time_limit_exceeded(task))
        return celeriac_fail(task, "SoftTimeLimitExceeded", "soft time limit exceeded");
    return celeriac_fail_db(task, msg);
}

/* {"pid": <child pid>, "backend": <pg_backend_pid() or null>} */
static int return_ids(struct celeriac_task *task, const char *backend)
{
    char json[96];
    snprintf(json, sizeof(json), "{\"pid\": %ld, \"backend\": %s}", (long)getpid(),
             backend && *backend ? backend : "null");
    return celeriac_return_json(task, json);
}

/* rel.pid(seconds=0): who ran it, after sleeping; early ack. */
static int rel_pid(struct celeriac_task *task)
{
    double s;
    if (opt_seconds(task, &s) != CELERIAC_OK)
        return CELERIAC_FAILED;
    if (sleep_seconds(task, s))
        return celeriac_fail(task, "SoftTimeLimitExceeded", "soft time limit exceeded");
    return return_ids(task, NULL);
}

/* rel.pg(): {"pid", "backend"} of the child's PostgreSQL connection. */
static int rel_pg(struct celeriac_task *task)
{
    PGconn *pg = celeriac_pg(task);
    if (!pg)
        return celeriac_fail(task, "RuntimeError", "no PostgreSQL connection");
    PGresult *res = PQexec(pg, "SELECT pg_backend_pid()");
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        return fail_pg(task, pg, res);
    int rc = return_ids(task, PQgetvalue(res, 0, 0));
    PQclear(res);
    return rc;
}

/* rel.pg_sleep(seconds): SELECT pg_sleep(seconds) on the server, then
 * {"pid", "backend"}. Not idempotent. rel.pg_sleep_idem: the same, declared
 * idempotent. */
static int rel_pg_sleep(struct celeriac_task *task)
{
    double s;
    if (celeriac_arg_double(task, 0, "seconds", &s) != CELERIAC_OK)
        return CELERIAC_FAILED;
    PGconn *pg = celeriac_pg(task);
    if (!pg)
        return celeriac_fail(task, "RuntimeError", "no PostgreSQL connection");
    char arg[32];
    snprintf(arg, sizeof(arg), "%g", s);
    const char *params[1] = {arg};
    PGresult *res = PQexecParams(pg, "SELECT pg_backend_pid(), pg_sleep($1::float8)", 1, NULL,
                                 params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        return fail_pg(task, pg, res);
    int rc = return_ids(task, PQgetvalue(res, 0, 0));
    PQclear(res);
    return rc;
}

/* rel.record(ms=0): INSERT INTO rel_runs (task_id, pid) this run, then sleeps
 * ms milliseconds: each run of each task leaves a row, so a test counts
 * duplicates and losses in the database (the test creates the table).
 * Autocommit: a run whose connection is lost before the INSERT's reply
 * committed nothing, so it is declared idempotent (re-run after reconnect). */
static int rel_record(struct celeriac_task *task)
{
    int64_t ms = 0;
    if (celeriac_has_arg(task, 0, "ms") && celeriac_arg_int(task, 0, "ms", &ms) != CELERIAC_OK)
        return CELERIAC_FAILED;
    PGconn *pg = celeriac_pg(task);
    if (!pg)
        return celeriac_fail(task, "RuntimeError", "no PostgreSQL connection");
    char pid[24];
    snprintf(pid, sizeof(pid), "%ld", (long)getpid());
    const char *params[2] = {celeriac_task_id(task), pid};
    PGresult *res = PQexecParams(pg, "INSERT INTO rel_runs (task_id, pid) VALUES ($1, $2::int) "
                                     "RETURNING pg_backend_pid()",
                                 2, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        return fail_pg(task, pg, res);
    char backend[24];
    snprintf(backend, sizeof(backend), "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    if (sleep_seconds(task, (double)ms / 1000.0))
        return celeriac_fail(task, "SoftTimeLimitExceeded", "soft time limit exceeded");
    return return_ids(task, backend);
}

/* rel.leave_open(mark): BEGIN; INSERT INTO rel_marks VALUES (mark); and
 * returns without COMMIT: the worker must roll it back. */
static int rel_leave_open(struct celeriac_task *task)
{
    const char *mark;
    if (celeriac_arg_str(task, 0, "mark", &mark, NULL) != CELERIAC_OK)
        return CELERIAC_FAILED;
    PGconn *pg = celeriac_pg(task);
    if (!pg)
        return celeriac_fail(task, "RuntimeError", "no PostgreSQL connection");
    PGresult *res = PQexec(pg, "BEGIN");
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        return fail_pg(task, pg, res);
    PQclear(res);
    const char *params[1] = {mark};
    res = PQexecParams(pg, "INSERT INTO rel_marks (mark) VALUES ($1) RETURNING pg_backend_pid()",
                       1, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        return fail_pg(task, pg, res);
    int rc = return_ids(task, PQgetvalue(res, 0, 0));
    PQclear(res);
    return rc;
}

/* rel.txn(): {"pid", "backend", "txn": PQtransactionStatus at task start}
 * (0 idle, 2 in transaction, 3 in error). */
static int rel_txn(struct celeriac_task *task)
{
    PGconn *pg = celeriac_pg(task);
    if (!pg)
        return celeriac_fail(task, "RuntimeError", "no PostgreSQL connection");
    int txn = (int)PQtransactionStatus(pg);
    PGresult *res = PQexec(pg, "SELECT pg_backend_pid()");
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        return fail_pg(task, pg, res);
    char json[128];
    snprintf(json, sizeof(json), "{\"pid\": %ld, \"backend\": %s, \"txn\": %d}", (long)getpid(),
             PQgetvalue(res, 0, 0), txn);
    PQclear(res);
    return celeriac_return_json(task, json);
}

/* rel.segv() / rel.abort(): task code that crashes its process. */
static int rel_segv(struct celeriac_task *task)
{
    (void)task;
    volatile int *volatile p = NULL;
    *p = 1;
    raise(SIGSEGV);
    return CELERIAC_FAILED;
}

static int rel_abort(struct celeriac_task *task)
{
    (void)task;
    abort();
}

/* Sleeps the task's "seconds" argument with the given signals blocked. */
static int sleep_deaf_to(struct celeriac_task *task, const int *sigs, size_t n)
{
    double s;
    if (celeriac_arg_double(task, 0, "seconds", &s) != CELERIAC_OK)
        return CELERIAC_FAILED;
    sigset_t set;
    sigemptyset(&set);
    for (size_t i = 0; i < n; i++)
        sigaddset(&set, sigs[i]);
    sigprocmask(SIG_BLOCK, &set, NULL);
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) != 0)
        ;
    sigprocmask(SIG_UNBLOCK, &set, NULL);
    return return_ids(task, NULL);
}

/* rel.wedge(seconds): blocks SIGALRM (the child's time-limit timer) and
 * sleeps: a task the child cannot interrupt, for the master's backstop. */
static int rel_wedge(struct celeriac_task *task)
{
    static const int sigs[] = {SIGALRM};
    return sleep_deaf_to(task, sigs, 1);
}

/* rel.deaf(seconds): blocks TERM and INT too: a task that does not die of
 * revoke --terminate's signal, for its escalation to KILL. */
static int rel_deaf(struct celeriac_task *task)
{
    static const int sigs[] = {SIGALRM, SIGTERM, SIGINT};
    return sleep_deaf_to(task, sigs, 3);
}

static void *volatile grown;

/* rel.grow(mib): allocates and touches mib MiB that it never frees, so the
 * child's resident size grows (for --max-memory-per-child). */
static int rel_grow(struct celeriac_task *task)
{
    int64_t mib;
    if (celeriac_arg_int(task, 0, "mib", &mib) != CELERIAC_OK)
        return CELERIAC_FAILED;
    if (mib < 0 || mib > 1024)
        return celeriac_fail(task, "ValueError", "mib out of range");
    size_t n = (size_t)mib << 20;
    char *p = malloc(n);
    if (!p && n)
        return celeriac_fail(task, "MemoryError", "malloc failed");
    memset(p, 0x5a, n); /* touched: resident */
    grown = p;          /* kept, so the compiler cannot drop the allocation */
    return return_ids(task, NULL);
}

/* Built with -DREL_EARLY_ONLY (librel-early.so) no task acks late, so a
 * worker pops with plain BRPOP and keeps no unacked record (the default for
 * libraries without late-ack tasks). */
#ifdef REL_EARLY_ONLY
#define LATE 0
#else
#define LATE CELERIAC_ACKS_LATE
#endif

static const struct celeriac_task_def rel_tasks[] = {
    {"rel.pid", rel_pid, 0},
    {"rel.sleep_late", rel_pid, LATE},
    {"rel.pg", rel_pg, 0},
    {"rel.pg_sleep", rel_pg_sleep, 0},
    {"rel.pg_sleep_idem", rel_pg_sleep, CELERIAC_IDEMPOTENT},
    {"rel.record", rel_record, LATE | CELERIAC_IDEMPOTENT},
    {"rel.write", rel_record, LATE}, /* rel.record, not idempotent */
    {"rel.leave_open", rel_leave_open, 0},
    {"rel.txn", rel_txn, 0},
    {"rel.segv", rel_segv, 0},
    {"rel.segv_late", rel_segv, LATE},
    {"rel.abort", rel_abort, 0},
    {"rel.wedge", rel_wedge, 0},
    {"rel.deaf", rel_deaf, 0},
    {"rel.grow", rel_grow, 0},
    {NULL, NULL, 0},
};

/* process_init: sleeps REL_INIT_SLEEP seconds when that is set, so a test
 * can kill a child while it is still starting; segfaults in every child of
 * slot REL_INIT_SEGV_INDEX (one slot in a crash loop). */
static int rel_process_init(struct celeriac_process *proc)
{
    const char *crash = getenv("REL_INIT_SEGV_INDEX");
    if (crash && atoi(crash) == celeriac_process_index(proc))
        raise(SIGSEGV);
    const char *s = getenv("REL_INIT_SLEEP");
    double secs = s ? atof(s) : 0;
    struct timespec ts = {(time_t)secs, (long)((secs - (double)(time_t)secs) * 1e9)};
    if (secs > 0)
        while (nanosleep(&ts, &ts) != 0)
            ;
    return 0;
}

static const struct celeriac_library rel_library = {
    .abi_version = CELERIAC_ABI_VERSION,
    .name = "reliability",
    .tasks = rel_tasks,
    .process_init = rel_process_init,
};

const struct celeriac_library *celeriac_library_init(int host_abi)
{
    (void)host_abi;
    return &rel_library;
}
