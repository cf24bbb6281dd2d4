/* SPDX-License-Identifier: MIT
 * proctitle.c: the process title over argv and environ (see proctitle.h).
 * Linux only: the kernel reads /proc/PID/cmdline from the argv area and,
 * when its last byte is no longer NUL, on up to the first NUL beyond it.
 */
#include "common.h"
#include "util/proctitle.h"

extern char **environ;

static char *area;      /* start of argv[0] */
static size_t area_len; /* contiguous bytes from argv[0] through the last environ string */
static char **saved_argv; /* the moved argv and environ, kept reachable for leak checkers */
static char **saved_env;  /* (setenv may replace environ's array) */
static size_t old_len = SIZE_MAX; /* the length of the title last written; the whole area at first */

char **proctitle_init(int argc, char **argv)
{
    if (argc < 1 || !argv[0] || area)
        return argv;
    char **copy = xcalloc((size_t)argc + 1, sizeof(*copy));
    /* The area: argv strings, then environ strings, as long as each starts
     * right after the previous one's NUL. */
    char *end = argv[0] + strlen(argv[0]) + 1;
    for (int i = 1; i < argc; i++)
        if (argv[i] == end)
            end = argv[i] + strlen(argv[i]) + 1;
    size_t n_env = 0;
    while (environ[n_env])
        n_env++;
    for (size_t i = 0; i < n_env; i++)
        if (environ[i] == end)
            end = environ[i] + strlen(environ[i]) + 1;
    char **env = xcalloc(n_env + 1, sizeof(*env));
    for (size_t i = 0; i < n_env; i++)
        env[i] = xstrdup(environ[i]);
    environ = env;
    saved_env = env;
    for (int i = 0; i < argc; i++)
        copy[i] = xstrdup(argv[i]);
    saved_argv = copy;
    area = argv[0];
    area_len = (size_t)(end - argv[0]);
    return copy;
}

/* Writes the title over the area, clearing what an older, longer one left. */
static void write_area(const char *title, size_t len)
{
    if (len > area_len - 1)
        len = area_len - 1;
    size_t old = old_len < area_len ? old_len : area_len;
    memcpy(area, title, len);
    /* NUL padding: ps shows the title alone, without trailing spaces. */
    if (old > len)
        memset(area + len, 0, old - len);
    area[len] = '\0';
    old_len = len;
}

void proctitle_set(const char *fmt, ...)
{
    if (!area || area_len < 2 || !saved_argv || !saved_env)
        return;
    char title[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(title, sizeof(title), fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    size_t len = (size_t)n < sizeof(title) ? (size_t)n : sizeof(title) - 1;
    write_area(title, len);
}

void proctitle_set_parts(const char *const *parts, size_t n)
{
    if (!area || area_len < 2 || !saved_argv || !saved_env)
        return;
    char title[512];
    size_t len = 0;
    for (size_t i = 0; i < n && len < sizeof(title); i++) {
        size_t k = strnlen(parts[i], sizeof(title) - len);
        memcpy(title + len, parts[i], k);
        len += k;
    }
    write_area(title, len);
}
