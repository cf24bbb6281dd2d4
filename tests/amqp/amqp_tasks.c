/* SPDX-License-Identifier: MIT
 * amqp_tasks.c: the task library of test_amqp_worker.sh, built at run time
 * as a user builds one (include/celeriac.h alone). Each task that records
 * appends one line "<name> <pid>" to $AMQPT_RUNS, so the test counts runs
 * and reads the order they ran in.
 */
#define _POSIX_C_SOURCE 200809L

#include <celeriac.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Appends "<what> <pid>\n" to $AMQPT_RUNS in one write (O_APPEND). */
static void record(const char *what)
{
    const char *path = getenv("AMQPT_RUNS");
    if (!path)
        return;
    char line[256];
    int n = snprintf(line, sizeof(line), "%s %ld\n", what, (long)getpid());
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0)
        return;
    if (write(fd, line, (size_t)n) < 0)
        (void)0;
    close(fd);
}

static void sleep_s(double s)
{
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* amqpt.add(a, b) -> a + b */
static int t_add(struct celeriac_task *task)
{
    int64_t a, b;
    if (celeriac_arg_int(task, 0, "a", &a) || celeriac_arg_int(task, 1, "b", &b))
        return CELERIAC_FAILED;
    celeriac_return_int(task, a + b);
    return CELERIAC_OK;
}

/* amqpt.fail(): ValueError */
static int t_fail(struct celeriac_task *task)
{
    return celeriac_fail(task, "ValueError", "amqpt.fail failed on purpose");
}

/* amqpt.retry_once(): retries once (countdown 1 s), then returns its retries. */
static int t_retry_once(struct celeriac_task *task)
{
    if (celeriac_task_retries(task) < 1) {
        struct celeriac_retry_options o = {.countdown = 1, .max_retries = 3};
        return celeriac_retry(task, &o, "ValueError", "not yet");
    }
    celeriac_return_int(task, celeriac_task_retries(task));
    return CELERIAC_OK;
}

/* amqpt.mark(label, seconds=0): records "label pid", sleeps, returns label. */
static int t_mark(struct celeriac_task *task)
{
    const char *label;
    double s = 0;
    if (celeriac_arg_str(task, 0, "label", &label, NULL))
        return CELERIAC_FAILED;
    if (celeriac_has_arg(task, 1, "seconds") && celeriac_arg_double(task, 1, "seconds", &s))
        return CELERIAC_FAILED;
    record(label);
    sleep_s(s);
    celeriac_return_str(task, label, (size_t)-1);
    return CELERIAC_OK;
}

static const struct celeriac_task_def amqpt_tasks[] = {
    {"amqpt.add", t_add, 0},
    {"amqpt.fail", t_fail, 0},
    {"amqpt.retry_once", t_retry_once, 0},
    {"amqpt.mark", t_mark, 0},
    {"amqpt.mark_late", t_mark, CELERIAC_ACKS_LATE},
    {NULL, NULL, 0},
};

static const struct celeriac_library amqpt_library = {
    .abi_version = CELERIAC_ABI_VERSION,
    .name = "amqpt",
    .tasks = amqpt_tasks,
};

const struct celeriac_library *celeriac_library_init(int host_abi)
{
    (void)host_abi;
    return &amqpt_library;
}
