/* SPDX-License-Identifier: MIT
 * test_retry.c: once-per-episode logging of a retried operation (util/retry.c).
 * The log goes to stderr; each case points stderr at a temporary file and
 * counts the lines written.
 */
#include "common.h"
#include "util/retry.h"

#include <fcntl.h>

#include "harness.h"

struct capture {
    int saved;
    char path[64];
};

static void capture_begin(struct capture *c)
{
    snprintf(c->path, sizeof(c->path), "/tmp/celeriac-test-retry.XXXXXX");
    int fd = mkstemp(c->path);
    c->saved = dup(STDERR_FILENO);
    dup2(fd, STDERR_FILENO);
    close(fd);
}

/* Restores stderr; returns the captured lines containing needle (all if NULL). */
static int capture_end(struct capture *c, const char *needle)
{
    dup2(c->saved, STDERR_FILENO);
    close(c->saved);
    FILE *f = fopen(c->path, "r");
    char line[4096];
    int n = 0;
    while (f && fgets(line, sizeof(line), f))
        n += !needle || strstr(line, needle) != NULL;
    if (f)
        fclose(f);
    unlink(c->path);
    return n;
}

static struct err cause(int code, const char *msg)
{
    struct err e = {.code = code};
    snprintf(e.msg, sizeof(e.msg), "%s", msg);
    return e;
}

TEST(a_thousand_failures_log_one_line)
{
    struct retry r;
    struct capture cap;
    retry_init(&r, 1, 1, "ack of %s", "tag-1");
    struct err e = cause(E_REFUSED, "Redis refuses writes (maxmemory): ack refused: OOM");
    capture_begin(&cap);
    for (int i = 0; i < 1000; i++)
        retry_failed(&r, LOG_WARNING, &e);
    int lines = capture_end(&cap, NULL);
    ASSERT_EQ_INT(lines, 1);
    ASSERT_EQ_INT(r.failures, 1000);
}

TEST(the_first_line_names_the_operation_cause_and_delay)
{
    struct retry r;
    struct capture cap;
    retry_init(&r, 100, 100, "storing the result of %s", "abc");
    struct err e = cause(E_CONN_LOST, "connect to '127.0.0.1:1' failed: refused");
    capture_begin(&cap);
    int64_t delay = retry_failed(&r, LOG_ERROR, &e);
    ASSERT_EQ_INT(capture_end(&cap, "storing the result of abc failed: connect to"), 1);
    ASSERT_GE_INT(delay, 50);
    ASSERT_LE_INT(delay, 100);
}

TEST(a_new_cause_is_logged_with_the_count)
{
    struct retry r;
    struct capture cap;
    retry_init(&r, 1, 1, "fetching from the broker");
    struct err lost = cause(E_CONN_LOST, "connect to 'x:1' failed: refused");
    struct err oom = cause(E_REFUSED, "Redis refuses writes (maxmemory): LMOVE refused: OOM");
    capture_begin(&cap);
    retry_failed(&r, LOG_WARNING, &lost);
    retry_failed(&r, LOG_WARNING, &lost);
    retry_failed(&r, LOG_WARNING, &oom);
    retry_failed(&r, LOG_WARNING, &oom);
    int lines = capture_end(&cap, NULL);
    ASSERT_EQ_INT(lines, 2);
}

TEST(the_end_of_an_episode_is_logged_once_and_resets)
{
    struct retry r;
    struct capture cap;
    retry_init(&r, 1, 1, "ack of %s", "t");
    struct err e = cause(E_CONN_LOST, "lost");
    capture_begin(&cap);
    retry_succeeded(&r); /* no episode: nothing to say */
    retry_failed(&r, LOG_WARNING, &e);
    retry_failed(&r, LOG_WARNING, &e);
    retry_succeeded(&r);
    retry_succeeded(&r);
    retry_failed(&r, LOG_WARNING, &e); /* a new episode starts with a line */
    ASSERT_EQ_INT(capture_end(&cap, "works again after 2 failed attempts"), 1);
    ASSERT_EQ_INT(r.failures, 1);
    ASSERT_EQ_INT(r.bo.attempt, 1);
}

TEST(a_lasting_episode_is_reminded)
{
    struct retry r;
    struct capture cap;
    retry_init(&r, 1, 1, "x");
    struct err e = cause(E_CONN_LOST, "lost");
    capture_begin(&cap);
    retry_failed(&r, LOG_WARNING, &e);
    r.next_remind_ms = 0; /* as if RETRY_REMIND_MS had passed */
    retry_failed(&r, LOG_WARNING, &e);
    retry_failed(&r, LOG_WARNING, &e);
    ASSERT_EQ_INT(capture_end(&cap, "still failing after 2 attempts"), 1);
}

RUN_TESTS()
