/* SPDX-License-Identifier: MIT
 * test_log.c: log records in --log-format json (util/log.c): escaping,
 * bytes that are not UTF-8, task fields, and the reopen generation.
 */
#include "common.h"
#include "util/log.h"

#include <fcntl.h>

#include "harness.h"

static char path[64];

/* Logs one record to a fresh file and returns its contents (static). */
static const char *one_record(enum log_format f, const char *msg)
{
    static char out[4096];
    snprintf(path, sizeof(path), "/tmp/celeriac-test-log-%d.log", (int)getpid());
    unlink(path);
    ASSERT_EQ_INT(log_open_file(path, NULL), 0);
    log_set_format(f);
    log_info("%s", msg);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t n = read(fd, out, sizeof(out) - 1);
    close(fd);
    unlink(path);
    out[n > 0 ? n : 0] = '\0';
    return out;
}

TEST(json_escapes_quotes_and_controls)
{
    log_set_process("ForkPoolWorker-1");
    log_task_clear();
    const char *s = one_record(LOG_FORMAT_JSON, "say \"hi\"\\\nnext\tline");
    ASSERT_CONTAINS(s, "\"level\":\"INFO\",\"process\":\"ForkPoolWorker-1\"");
    ASSERT_CONTAINS(s, "\"message\":\"say \\\"hi\\\"\\\\\\u000anext\\u0009line\"}\n");
    ASSERT_NOT_CONTAINS(s, "task_id");
}

TEST(json_replaces_invalid_utf8_keeps_valid)
{
    log_task_clear();
    const char *s = one_record(LOG_FORMAT_JSON, "caf\xc3\xa9 \xff\xfe end \xe2\x82");
    ASSERT_CONTAINS(s, "caf\xc3\xa9 ?? end ??\"}");
}

TEST(json_carries_task_fields)
{
    log_task_set("0f1e2d3c-aaaa-bbbb-cccc-000000000001", "books.get_book_info");
    const char *s = one_record(LOG_FORMAT_JSON, "Task succeeded");
    ASSERT_CONTAINS(s, "\"task_id\":\"0f1e2d3c-aaaa-bbbb-cccc-000000000001\","
                       "\"task_name\":\"books.get_book_info\"}\n");
    log_task_clear();
}

TEST(json_long_message_is_cut_and_stays_an_object)
{
    char big[5000];
    memset(big, '"', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    log_task_set("id", "name");
    const char *s = one_record(LOG_FORMAT_JSON, big);
    size_t n = strlen(s);
    ASSERT_TRUE(n > 100 && n < 3000);
    ASSERT_CONTAINS(s, "\"task_name\":\"name\"}\n");
    log_task_clear();
}

TEST(text_layout_replaces_controls)
{
    log_set_process("MainProcess");
    const char *s = one_record(LOG_FORMAT_TEXT, "a\nb");
    ASSERT_CONTAINS(s, ": INFO/MainProcess] a?b\n");
}

TEST(reopen_follows_the_generation)
{
    _Atomic uint64_t gen = 0;
    char moved[80];
    snprintf(path, sizeof(path), "/tmp/celeriac-test-log-%d.log", (int)getpid());
    snprintf(moved, sizeof(moved), "%s.1", path);
    unlink(path);
    ASSERT_EQ_INT(log_open_file(path, NULL), 0);
    log_set_format(LOG_FORMAT_TEXT);
    log_follow_generation(&gen);
    log_info("before");
    ASSERT_EQ_INT(rename(path, moved), 0);
    log_info("still old");
    atomic_fetch_add(&gen, 1); /* another process reopened */
    log_info("after");
    char buf[512];
    int fd = open(moved, O_RDONLY | O_CLOEXEC);
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    buf[n > 0 ? n : 0] = '\0';
    ASSERT_CONTAINS(buf, "before");
    ASSERT_CONTAINS(buf, "still old");
    ASSERT_NOT_CONTAINS(buf, "after");
    fd = open(path, O_RDONLY | O_CLOEXEC);
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    buf[n > 0 ? n : 0] = '\0';
    ASSERT_CONTAINS(buf, "after");
    log_follow_generation(NULL);
    unlink(path);
    unlink(moved);
}

RUN_TESTS()
