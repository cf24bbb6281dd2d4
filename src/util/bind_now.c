/* SPDX-License-Identifier: MIT
 * util/bind_now.c: see bind_now.h for why the worker re-executes itself.
 */
#include "common.h"
#include "util/bind_now.h"

#include <unistd.h>

/* Set beside LD_BIND_NOW to tell the second round it was ours to remove. */
#define OURS "CELERIAC_SET_LD_BIND_NOW"

static bool under_valgrind(void)
{
    const char *preload = getenv("LD_PRELOAD");
    return preload && strstr(preload, "vgpreload");
}

void bind_now_or_reexec(char **argv)
{
    if (getenv(OURS)) {
        unsetenv(OURS);
        unsetenv("LD_BIND_NOW");
        return;
    }
    const char *set = getenv("LD_BIND_NOW");
    if ((set && *set) || under_valgrind())
        return;
    if (setenv("LD_BIND_NOW", "1", 1) || setenv(OURS, "1", 1))
        return;
    execv("/proc/self/exe", argv);
    /* No /proc, or the binary was replaced under us: run lazily bound. */
    unsetenv(OURS);
    unsetenv("LD_BIND_NOW");
}
