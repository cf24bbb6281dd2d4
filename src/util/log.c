/* SPDX-License-Identifier: MIT
 * log.c: the log record formatter (see log.h). Records longer than the line
 * buffer are cut, never split, so a hostile task name cannot flood a line.
 */
#include "common.h"
#include "util/log.h"

#include <strings.h>
#include <sys/time.h>
#include <time.h>

static enum log_level threshold = LOG_INFO;
static char process_name[48] = "MainProcess";

void log_set_level(enum log_level level)
{
    threshold = level;
}

enum log_level log_get_level(void)
{
    return threshold;
}

static const struct {
    const char *name;
    enum log_level level;
} level_names[] = {
    {"DEBUG", LOG_DEBUG},   {"INFO", LOG_INFO},         {"WARNING", LOG_WARNING},
    {"WARN", LOG_WARNING},  {"ERROR", LOG_ERROR},       {"CRITICAL", LOG_CRITICAL},
    {"FATAL", LOG_CRITICAL},
};

int log_parse_level(const char *name, enum log_level *out)
{
    for (size_t i = 0; i < ARRAY_SIZE(level_names); i++) {
        if (!strcasecmp(name, level_names[i].name)) {
            *out = level_names[i].level;
            return 0;
        }
    }
    return -EINVAL;
}

static const char *level_name(enum log_level level)
{
    for (size_t i = 0; i < ARRAY_SIZE(level_names); i++)
        if (level_names[i].level == level)
            return level_names[i].name;
    return "LOG";
}

void log_set_process(const char *name)
{
    snprintf(process_name, sizeof(process_name), "%s", name);
}

void log_vwrite(enum log_level level, const char *fmt, va_list ap)
{
    if (level < threshold)
        return;
    int saved_errno = errno;
    char line[2048];
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    localtime_r(&tv.tv_sec, &tm);
    size_t n = strftime(line, sizeof(line), "[%Y-%m-%d %H:%M:%S", &tm);
    int m = snprintf(line + n, sizeof(line) - n, ",%03d: %s/%s] ", (int)(tv.tv_usec / 1000),
                     level_name(level), process_name);
    if (m > 0)
        n += (size_t)m;
    m = vsnprintf(line + n, sizeof(line) - n, fmt, ap);
    if (m > 0)
        n += (size_t)m;
    if (n >= sizeof(line) - 1)
        n = sizeof(line) - 2;
    /* Control characters from the network must not forge log lines. */
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)line[i] < 0x20 && line[i] != '\t')
            line[i] = '?';
    line[n++] = '\n';
    size_t off = 0;
    while (off < n) {
        ssize_t w = write(STDERR_FILENO, line + off, n - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break;
        off += (size_t)w;
    }
    errno = saved_errno;
}

void log_write(enum log_level level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_vwrite(level, fmt, ap);
    va_end(ap);
}
