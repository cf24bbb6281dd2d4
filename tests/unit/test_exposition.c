/* SPDX-License-Identifier: MIT
 * test_exposition.c: the Prometheus text rendering of the scoreboard
 * (metrics/exposition.c) and the --metrics argument (metrics/listen.c).
 */
#include "common.h"
#include "metrics/exposition.h"
#include "metrics/listen.h"
#include "worker/scoreboard.h"

#include "harness.h"

static uint64_t fake_rss(pid_t pid)
{
    return (uint64_t)pid * 4096;
}

static const char *const names[] = {"tasks.add", "odd\"name\\"};

/* A scoreboard of 2 slots and 2 tasks with known counts, rendered. */
static char *render(struct scoreboard *sb)
{
    ASSERT_EQ_INT(scoreboard_create(sb, 2, 2), 0);
    atomic_store(&sb->shared->pool_target, 2);
    struct task_tally *t = &sb->task_tally[0];
    atomic_store(&t->received, 5);
    atomic_store(&t->started, 4);
    atomic_store(&t->succeeded, 3);
    atomic_store(&t->failed, 1);
    tally_observe(t, 0.003);
    tally_observe(t, 0.2);
    tally_observe(t, 0.2);
    tally_observe(t, 100);
    struct slot *s = &sb->slots[1];
    atomic_store(&s->pid, 7);
    atomic_store(&s->state, CHILD_BUSY);
    atomic_store(&s->db_state, DBS_UP);
    atomic_store(&s->db_opened_ms, 1000);
    atomic_store(&s->scheduled, 3);
    atomic_store(&sb->child_tally[1].starts, 3);
    atomic_store(&sb->child_tally[1].db_wait_ms, 1500);
    struct exposition x = {.sb = sb, .hostname = "w@h", .task_names = names,
                           .n_tasks = sb->n_tasks, .now_ms = 3500,
                           .rss = fake_rss};
    struct buf out = BUF_INIT;
    exposition_render(&out, &x);
    return buf_detach(&out, NULL);
}

static bool has_line(const char *text, const char *line)
{
    size_t n = strlen(line);
    for (const char *p = text; (p = strstr(p, line)); p++)
        if ((p == text || p[-1] == '\n') && p[n] == '\n')
            return true;
    return false;
}

TEST(task_counters_with_name_and_hostname)
{
    struct scoreboard sb;
    char *text = render(&sb);
    ASSERT_TRUE(has_line(text, "# TYPE celery_task_received_total counter"));
    ASSERT_TRUE(has_line(text, "celery_task_received_total{name=\"tasks.add\",hostname=\"w@h\"} 5"));
    ASSERT_TRUE(has_line(text, "celery_task_succeeded_total{name=\"tasks.add\",hostname=\"w@h\"} 3"));
    ASSERT_TRUE(has_line(text, "celery_task_retried_total{name=\"tasks.add\",hostname=\"w@h\"} 0"));
    /* label values escaped */
    ASSERT_TRUE(has_line(text,
                         "celery_task_failed_total{name=\"odd\\\"name\\\\\",hostname=\"w@h\"} 0"));
    free(text);
    scoreboard_destroy(&sb);
}

TEST(histogram_is_cumulative_with_count_and_sum)
{
    struct scoreboard sb;
    char *text = render(&sb);
    const char *b = "celery_task_runtime_seconds_bucket{name=\"tasks.add\",hostname=\"w@h\",";
    char line[200];
    snprintf(line, sizeof(line), "%sle=\"0.005\"} 1", b);
    ASSERT_TRUE(has_line(text, line));
    snprintf(line, sizeof(line), "%sle=\"0.1\"} 1", b);
    ASSERT_TRUE(has_line(text, line));
    snprintf(line, sizeof(line), "%sle=\"0.25\"} 3", b);
    ASSERT_TRUE(has_line(text, line));
    snprintf(line, sizeof(line), "%sle=\"60.0\"} 3", b);
    ASSERT_TRUE(has_line(text, line));
    snprintf(line, sizeof(line), "%sle=\"+Inf\"} 4", b);
    ASSERT_TRUE(has_line(text, line));
    ASSERT_TRUE(has_line(
        text, "celery_task_runtime_seconds_count{name=\"tasks.add\",hostname=\"w@h\"} 4"));
    ASSERT_TRUE(has_line(
        text, "celery_task_runtime_seconds_sum{name=\"tasks.add\",hostname=\"w@h\"} 100.403000"));
    free(text);
    scoreboard_destroy(&sb);
}

TEST(worker_and_child_families)
{
    struct scoreboard sb;
    char *text = render(&sb);
    ASSERT_TRUE(has_line(text, "celery_worker_up{hostname=\"w@h\"} 1"));
    ASSERT_TRUE(has_line(text, "celery_worker_tasks_active{hostname=\"w@h\"} 1"));
    ASSERT_TRUE(has_line(text, "celeriac_db_connection_up{hostname=\"w@h\",child=\"0\"} 0"));
    ASSERT_TRUE(has_line(text, "celeriac_db_connection_up{hostname=\"w@h\",child=\"1\"} 1"));
    ASSERT_TRUE(
        has_line(text, "celeriac_db_connection_age_seconds{hostname=\"w@h\",child=\"1\"} 2.500"));
    ASSERT_TRUE(
        has_line(text, "celeriac_db_wait_seconds_total{hostname=\"w@h\",child=\"1\"} 1.500"));
    ASSERT_TRUE(has_line(text, "celeriac_messages_held{hostname=\"w@h\",child=\"1\"} 3"));
    ASSERT_TRUE(has_line(text, "celeriac_child_rss_bytes{hostname=\"w@h\",child=\"1\"} 28672"));
    ASSERT_TRUE(has_line(text, "celeriac_child_restarts_total{hostname=\"w@h\",child=\"1\"} 2"));
    free(text);
    scoreboard_destroy(&sb);
}

/* Every line is HELP, TYPE or a sample; HELP and TYPE once per family. */
TEST(each_family_has_help_and_type_once)
{
    struct scoreboard sb;
    char *text = render(&sb);
    size_t helps = 0, types = 0;
    for (char *line = text; *line;) {
        char *nl = strchr(line, '\n');
        ASSERT_TRUE(nl != NULL);
        *nl = '\0';
        if (!strncmp(line, "# HELP ", 7))
            helps++;
        else if (!strncmp(line, "# TYPE ", 7))
            types++;
        else
            ASSERT_TRUE(line[0] != '#' && strchr(line, ' ') != NULL);
        line = nl + 1;
    }
    ASSERT_EQ_SIZE(helps, 6 + 1 + 2 + 9);
    ASSERT_EQ_SIZE(types, helps);
    free(text);
    scoreboard_destroy(&sb);
}

TEST(metrics_argument)
{
    char host[64], port[8];
    struct err e = {0};
    ASSERT_EQ_INT(metrics_listen_parse("127.0.0.1:9808", host, sizeof(host), port,
                                       sizeof(port), &e), 0);
    ASSERT_EQ_STR(host, "127.0.0.1");
    ASSERT_EQ_STR(port, "9808");
    ASSERT_EQ_INT(metrics_listen_parse("[::1]:80", host, sizeof(host), port, sizeof(port), &e),
                  0);
    ASSERT_EQ_STR(host, "::1");
    ASSERT_EQ_INT(metrics_listen_parse(":9808", host, sizeof(host), port, sizeof(port), &e), 0);
    ASSERT_EQ_STR(host, "");
    ASSERT_EQ_INT(metrics_listen_parse("9808", host, sizeof(host), port, sizeof(port), &e),
                  -EINVAL);
    ASSERT_EQ_INT(metrics_listen_parse("h:0", host, sizeof(host), port, sizeof(port), &e),
                  -EINVAL);
    ASSERT_EQ_INT(metrics_listen_parse("h:65536", host, sizeof(host), port, sizeof(port), &e),
                  -EINVAL);
    ASSERT_EQ_INT(metrics_listen_parse("::1:80", host, sizeof(host), port, sizeof(port), &e),
                  -EINVAL);
    ASSERT_EQ_INT(metrics_listen_parse("h:80x", host, sizeof(host), port, sizeof(port), &e),
                  -EINVAL);
}

RUN_TESTS()
