/* SPDX-License-Identifier: MIT
 * ops_tasks.c: the task library of the reload and autoscale tests
 * (tests/ops), built twice by them: -DOPS_VERSION='"v1"' and '"v2"', the
 * way a user rebuilds a library. -DOPS_BAD_ABI builds one that claims an
 * ABI this worker does not speak, -DOPS_EXTRA_FIRST one whose task table
 * moved ops.version.
 */
#define _POSIX_C_SOURCE 200809L

#include <celeriac.h>

#include <errno.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

#ifndef OPS_VERSION
#define OPS_VERSION "v1"
#endif

static void sleep_ms(int64_t ms)
{
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* ops.version(ms=0): one row in ops_runs (task id, version, pid, database
 * backend) when the child has a database, then sleeps ms, then returns the
 * library's version string. Late ack: a retired child must finish it. */
static int ops_version(struct celeriac_task *task)
{
    int64_t ms = 0;
    if (celeriac_has_arg(task, 0, "ms") && celeriac_arg_int(task, 0, "ms", &ms) != CELERIAC_OK)
        return CELERIAC_FAILED;
    PGconn *pg = celeriac_pg(task);
    if (pg) {
        char pid[24];
        snprintf(pid, sizeof(pid), "%ld", (long)getpid());
        const char *params[3] = {celeriac_task_id(task), OPS_VERSION, pid};
        PGresult *res = PQexecParams(pg, "INSERT INTO ops_runs (task_id, version, pid, backend) "
                                         "VALUES ($1, $2, $3::int, pg_backend_pid())",
                                     3, NULL, params, NULL, NULL, 0);
        int ok = PQresultStatus(res) == PGRES_COMMAND_OK;
        PQclear(res);
        if (!ok)
            return celeriac_fail_db(task, PQerrorMessage(pg));
    }
    sleep_ms(ms);
    celeriac_return_str(task, OPS_VERSION, sizeof(OPS_VERSION) - 1);
    return CELERIAC_OK;
}

/* -DOPS_EXTRA_FIRST: a task before ops.version, which moves it to the second
 * position (a reload must refuse it). */
static const struct celeriac_task_def ops_tasks[] = {
#ifdef OPS_EXTRA_FIRST
    {"ops.extra", ops_version, CELERIAC_ACKS_LATE},
#endif
    {"ops.version", ops_version, CELERIAC_ACKS_LATE},
    {NULL, NULL, 0},
};

static const struct celeriac_library ops_library = {
#ifdef OPS_BAD_ABI
    .abi_version = 99,
#else
    .abi_version = CELERIAC_ABI_VERSION,
#endif
    .name = "ops-" OPS_VERSION,
    .tasks = ops_tasks,
};

const struct celeriac_library *celeriac_library_init(int host_abi)
{
    (void)host_abi;
    return &ops_library;
}
