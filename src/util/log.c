/* SPDX-License-Identifier: MIT
 * log.c: the log record formatter and its destination (see log.h). Records
 * longer than the line buffer are cut, never split, so a hostile task name
 * cannot flood a line. Rotation is a shared generation number, not a signal
 * to every process: a record goes to exactly one file.
 */
#include "common.h"
#include "util/log.h"
#include "util/strcopy.h"

#include <fcntl.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>

#define LINE_MAX_BYTES 2048

static enum log_level threshold = LOG_INFO;
static enum log_format format = LOG_FORMAT_TEXT;
static char process_name[48] = "MainProcess";
static int log_fd = STDERR_FILENO;
static char *log_path;                 /* --logfile, or NULL: stderr */
static _Atomic uint64_t *shared_gen;   /* bumped by the master on SIGUSR2 */
static uint64_t seen_gen;              /* the generation this process's log_fd is of */
static char task_id[40];               /* the task the records are about, or "" */
static char task_name[96];

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

void log_set_format(enum log_format f)
{
    format = f;
}

int log_parse_format(const char *name, enum log_format *out)
{
    if (!strcasecmp(name, "text")) {
        *out = LOG_FORMAT_TEXT;
        return 0;
    }
    if (!strcasecmp(name, "json")) {
        *out = LOG_FORMAT_JSON;
        return 0;
    }
    return -EINVAL;
}

void log_task_set(const char *id, const char *name)
{
    str_copy(task_id, sizeof(task_id), id ? id : "");
    str_copy(task_name, sizeof(task_name), name ? name : "");
}

void log_task_clear(void)
{
    task_id[0] = task_name[0] = '\0';
}

static int open_append(const char *path)
{
    int fd;
    do
        fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY, 0640);
    while (fd < 0 && errno == EINTR);
    return fd < 0 ? -errno : fd;
}

int log_open_file(const char *path, struct err *e)
{
    int fd = open_append(path);
    if (fd < 0)
        return err_set(e, fd, "open log file '%s' failed: %s", path, strerror(-fd));
    if (log_fd != STDERR_FILENO)
        close(log_fd);
    log_fd = fd;
    free(log_path);
    log_path = xstrdup(path);
    return 0;
}

void log_follow_generation(_Atomic uint64_t *gen)
{
    shared_gen = gen;
    seen_gen = gen ? atomic_load(gen) : 0;
}

/* Replaces log_fd by a new descriptor of log_path. On failure the old one
 * stays: its records land in the moved file rather than nowhere. */
static int reopen_here(void)
{
    int fd = open_append(log_path);
    if (fd < 0)
        return fd;
    close(log_fd);
    log_fd = fd;
    return 0;
}

void log_follow_reopen(void)
{
    if (!shared_gen || !log_path)
        return;
    uint64_t gen = atomic_load(shared_gen);
    if (gen == seen_gen)
        return;
    seen_gen = gen; /* one try per generation: a failing open is not retried per record */
    int rc = reopen_here();
    if (rc)
        log_error("reopen log file '%s' failed: %s; still writing to the moved file", log_path,
                  strerror(-rc));
}

int log_reopen_all(void)
{
    if (!log_path)
        return 0;
    int rc = reopen_here();
    if (rc) {
        log_error("reopen log file '%s' failed: %s; still writing to the moved file", log_path,
                  strerror(-rc));
        return rc;
    }
    if (shared_gen)
        seen_gen = atomic_fetch_add(shared_gen, 1) + 1;
    log_info("log file '%s' reopened", log_path);
    return 0;
}

/* Appends s as the inside of a JSON string: quotes, backslashes and control
 * characters escaped, bytes that are not UTF-8 replaced by '?', never
 * beyond cap (a character that does not fit is left out). */
static size_t json_escape(char *out, size_t n, size_t cap, const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        char tmp[8];
        size_t len = 1;
        const unsigned char *src = p;
        if (*p == '"' || *p == '\\') {
            tmp[0] = '\\';
            tmp[1] = (char)*p;
            src = (const unsigned char *)tmp;
            len = 2;
        } else if (*p < 0x20) {
            snprintf(tmp, sizeof(tmp), "\\u%04x", *p);
            src = (const unsigned char *)tmp;
            len = 6;
        } else if (*p >= 0x80) {
            size_t want = (*p & 0xe0) == 0xc0 ? 2 : (*p & 0xf0) == 0xe0 ? 3
                          : (*p & 0xf8) == 0xf0 ? 4 : 0;
            size_t k = 1;
            while (want && k < want && (p[k] & 0xc0) == 0x80)
                k++;
            if (!want || k != want || (*p == 0xc0 || *p == 0xc1)) {
                if (n + 1 >= cap)
                    break;
                out[n++] = '?';
                p++;
                continue;
            }
            len = want;
        }
        if (n + len >= cap)
            break;
        memcpy(out + n, src, len);
        n += len;
        p += src == p ? len : 1;
    }
    return n;
}

/* Appends the record's fields as one JSON object. */
static size_t format_json(char *line, size_t cap, const struct timeval *tv, const struct tm *tm,
                          enum log_level level, const char *msg)
{
    char stamp[48], zone[8];
    strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", tm);
    strftime(zone, sizeof(zone), "%z", tm);
    int m = snprintf(line, cap, "{\"time\":\"%s.%03d%.3s:%.2s\",\"level\":\"%s\",\"process\":\"",
                     stamp, (int)(tv->tv_usec / 1000), zone, zone + 3, level_name(level));
    size_t n = m > 0 ? (size_t)m : 0;
    size_t body_cap = cap - 128; /* room for the task fields and the closing brace */
    n = json_escape(line, n, body_cap, process_name);
    n += (size_t)snprintf(line + n, cap - n, "\",\"message\":\"");
    n = json_escape(line, n, body_cap, msg);
    if (task_id[0]) {
        n += (size_t)snprintf(line + n, cap - n, "\",\"task_id\":\"");
        n = json_escape(line, n, cap - 64, task_id);
        n += (size_t)snprintf(line + n, cap - n, "\",\"task_name\":\"");
        n = json_escape(line, n, cap - 4, task_name);
    }
    line[n++] = '"';
    line[n++] = '}';
    return n;
}

void log_vwrite(enum log_level level, const char *fmt, va_list ap)
{
    if (level < threshold)
        return;
    int saved_errno = errno;
    log_follow_reopen();
    char line[LINE_MAX_BYTES + 512];
    char msg[LINE_MAX_BYTES];
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    localtime_r(&tv.tv_sec, &tm);
    size_t n;
    if (format == LOG_FORMAT_JSON) {
        vsnprintf(msg, sizeof(msg), fmt, ap);
        n = format_json(line, sizeof(line) - 1, &tv, &tm, level, msg);
    } else {
        n = strftime(line, LINE_MAX_BYTES, "[%Y-%m-%d %H:%M:%S", &tm);
        int m = snprintf(line + n, LINE_MAX_BYTES - n, ",%03d: %s/%s] ",
                         (int)(tv.tv_usec / 1000), level_name(level), process_name);
        if (m > 0)
            n += (size_t)m;
        m = vsnprintf(line + n, LINE_MAX_BYTES - n, fmt, ap);
        if (m > 0)
            n += (size_t)m;
        if (n >= LINE_MAX_BYTES - 1)
            n = LINE_MAX_BYTES - 2;
        /* Control characters from the network must not forge log lines. */
        for (size_t i = 0; i < n; i++)
            if ((unsigned char)line[i] < 0x20 && line[i] != '\t')
                line[i] = '?';
    }
    line[n++] = '\n';
    /* One write() of the whole line: with O_APPEND the kernel places it
     * whole at the end of the file, whichever process writes. */
    size_t off = 0;
    while (off < n) {
        ssize_t w = write(log_fd, line + off, n - off);
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
