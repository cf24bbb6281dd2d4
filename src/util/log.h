/* SPDX-License-Identifier: MIT
 * log.h: one-line log records to stderr in Celery's layout
 * "[YYYY-MM-DD HH:MM:SS,mmm: LEVEL/Process] message". Each record is one write(),
 * so lines from the master and its children never interleave.
 * Not async-signal-safe: never call from a signal handler.
 */
#ifndef CELERIAC_LOG_H
#define CELERIAC_LOG_H

enum log_level {
    LOG_DEBUG = 10,
    LOG_INFO = 20,
    LOG_WARNING = 30,
    LOG_ERROR = 40,
    LOG_CRITICAL = 50,
};

/* Sets the threshold; records below it are dropped before formatting. */
void log_set_level(enum log_level level);
enum log_level log_get_level(void);
/* Parses "debug", "INFO", "warning", ...; returns 0 or -EINVAL. */
int log_parse_level(const char *name, enum log_level *out);
/* Names the process in every record: "MainProcess", "ForkPoolWorker-3". Copied. */
void log_set_process(const char *name);

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
