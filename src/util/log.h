/* SPDX-License-Identifier: MIT
 * log.h: one-line log records in Celery's layout
 * "[YYYY-MM-DD HH:MM:SS,mmm: LEVEL/Process] message", or one JSON object a
 * line (--log-format json), to stderr or to an append-only file
 * (--logfile). Each record is one write() to an O_APPEND descriptor, so
 * lines from the master and its children never interleave.
 * Not async-signal-safe: never call from a signal handler.
 */
#ifndef CELERIAC_LOG_H
#define CELERIAC_LOG_H

#include <stdatomic.h>

enum log_level {
    LOG_DEBUG = 10,
    LOG_INFO = 20,
    LOG_WARNING = 30,
    LOG_ERROR = 40,
    LOG_CRITICAL = 50,
};

enum log_format {
    LOG_FORMAT_TEXT = 0,   /* Celery's layout */
    LOG_FORMAT_JSON,       /* {"time", "level", "process", "message"[, "task_id", "task_name"]} */
};

/* Sets the threshold; records below it are dropped before formatting. */
void log_set_level(enum log_level level);
enum log_level log_get_level(void);
/* Parses "debug", "INFO", "warning", ...; returns 0 or -EINVAL. */
int log_parse_level(const char *name, enum log_level *out);
/* Names the process in every record: "MainProcess", "ForkPoolWorker-3". Copied. */
void log_set_process(const char *name);
void log_set_format(enum log_format format);
/* Parses "text" or "json"; returns 0 or -EINVAL. */
int log_parse_format(const char *name, enum log_format *out);

/* Opens path for appending (created 0640 if absent) and sends every record
 * there instead of stderr. Master, before the first fork: children inherit
 * the descriptor. Returns 0, or -errno with "open log file '<path>' failed:
 * <cause>" in e. path is copied. */
int log_open_file(const char *path, struct err *e);
/* The file's reopen generation, in shared memory: a process whose last
 * reopen is older than *gen reopens the file before its next record (and
 * in log_follow_reopen). Borrowed; any process, after log_open_file. */
void log_follow_generation(_Atomic uint64_t *gen);
/* Reopens the log file now (logrotate moved it) and bumps the shared
 * generation so every other process reopens before its next record. A
 * record is written once, to the old file or to the new one: none is lost
 * or doubled. No-op without --logfile. Master. Returns 0 or -errno; on
 * failure the old descriptor stays in use and the failure is logged. */
int log_reopen_all(void);
/* Reopens if the shared generation moved since this process last did;
 * cheap (one atomic load). Any process: idle loops call it so that a file
 * moved away is let go of soon. */
void log_follow_reopen(void);

/* The task the following records are about (JSON: task_id and task_name
 * fields). Copied, truncated to fit; NULL clears. Children. */
void log_task_set(const char *task_id, const char *task_name);
void log_task_clear(void);

static inline bool log_enabled(enum log_level level)
{
    return level >= log_get_level();
}

void log_write(enum log_level level, const char *fmt, ...) ATTR_PRINTF(2, 3);
void log_vwrite(enum log_level level, const char *fmt, va_list ap);

#define log_debug(...) do { if (log_enabled(LOG_DEBUG)) log_write(LOG_DEBUG, __VA_ARGS__); } while (0)
#define log_info(...) log_write(LOG_INFO, __VA_ARGS__)
#define log_warning(...) log_write(LOG_WARNING, __VA_ARGS__)
#define log_error(...) log_write(LOG_ERROR, __VA_ARGS__)
#define log_critical(...) log_write(LOG_CRITICAL, __VA_ARGS__)

#endif /* CELERIAC_LOG_H */
