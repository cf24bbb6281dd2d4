/* SPDX-License-Identifier: MIT
 * util/self.c: the cached pid (see self.h).
 */
#include "common.h"
#include "util/self.h"

static pid_t cached;

pid_t self_pid(void)
{
    if (!cached)
        cached = getpid();
    return cached;
}

void self_pid_reset(void)
{
    cached = 0;
}
