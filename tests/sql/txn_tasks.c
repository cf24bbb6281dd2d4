/* SPDX-License-Identifier: MIT
 * txn_tasks.c: the task library of the transactional-task tests
 * (tests/sql/test_sql_transactional.sh). Each task writes one row per run
 * into ledger(task_id) and then stays in the database for `seconds`, so a
 * child killed at a random instant is often killed after the write:
 *   txn.record  CELERIAC_TRANSACTIONAL: the write and the ack commit together,
 *               so every task id must end up in the ledger exactly once;
 *   late.record CELERIAC_ACKS_LATE only: a kill after the write runs it again,
 *               a second row (what the test shows it can detect);
 *   txn.fail    transactional, writes then fails: the write is rolled back;
 *   txn.commits transactional, but COMMITs itself (the worker says so);
 *   txn.crash   transactional, writes then kills its own process: a poison
 *               task, whose deaths must be counted though its message's
 *               lock leaves the row unchanged;
 *   plain.crash the same, an ordinary (early-ack) task: acked before it
 *               runs, so its write is in the ledger once, never twice.
 */
#include <celeriac.h>

#include <libpq-fe.h>
#include <signal.h>
#include <stdio.h>

static int fail_pg(struct celeriac_task *task, PGconn *pg, PGresult *res)
{
    char msg[256];
    snprintf(msg, sizeof(msg), "%s", res ? PQresultErrorMessage(res) : PQerrorMessage(pg));
    PQclear(res);
    return celeriac_fail_db(task, msg);
}

/* INSERT INTO ledger, then pg_sleep(seconds); returns the task id. */
static int record(struct celeriac_task *task, const char *then)
{
    double secs = 0;
    if (celeriac_arg_double(task, 0, "seconds", &secs) != CELERIAC_OK)
        return CELERIAC_FAILED;
    PGconn *pg = celeriac_pg(task);
    if (!pg)
        return celeriac_fail(task, "RuntimeError", "no PostgreSQL connection");
    char arg[32];
    snprintf(arg, sizeof(arg), "%g", secs);
    const char *params[2] = {celeriac_task_id(task), arg};
    PGresult *res = PQexecParams(pg, "INSERT INTO ledger (task_id) VALUES ($1)", 1, NULL, params,
                                 NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        return fail_pg(task, pg, res);
    PQclear(res);
    res = PQexecParams(pg, "SELECT pg_sleep($1::float8)", 1, NULL, params + 1, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        return fail_pg(task, pg, res);
    PQclear(res);
    if (then) {
        res = PQexec(pg, then);
        if (PQresultStatus(res) != PGRES_COMMAND_OK)
            return fail_pg(task, pg, res);
        PQclear(res);
    }
    celeriac_return_str(task, celeriac_task_id(task), (size_t)-1);
    return CELERIAC_OK;
}

static int txn_record(struct celeriac_task *task)
{
    return record(task, NULL);
}

static int txn_fail(struct celeriac_task *task)
{
    if (record(task, NULL) != CELERIAC_OK)
        return CELERIAC_FAILED;
    return celeriac_fail(task, "ValueError", "failed after writing");
}

static int txn_commits(struct celeriac_task *task)
{
    return record(task, "COMMIT");
}

static int txn_crash(struct celeriac_task *task)
{
    if (record(task, NULL) != CELERIAC_OK)
        return CELERIAC_FAILED;
    raise(SIGKILL);
    return CELERIAC_FAILED;
}

static const struct celeriac_task_def txn_tasks[] = {
    {"txn.record", txn_record, CELERIAC_TRANSACTIONAL},
    {"late.record", txn_record, CELERIAC_ACKS_LATE},
    {"txn.fail", txn_fail, CELERIAC_TRANSACTIONAL},
    {"txn.commits", txn_commits, CELERIAC_TRANSACTIONAL},
    {"txn.crash", txn_crash, CELERIAC_TRANSACTIONAL},
    {"plain.crash", txn_crash, 0},
    {NULL, NULL, 0},
};

static const struct celeriac_library txn_library = {
    .abi_version = CELERIAC_ABI_VERSION,
    .name = "transactional",
    .tasks = txn_tasks,
};

const struct celeriac_library *celeriac_library_init(int host_abi)
{
    (void)host_abi;
    return &txn_library;
}
