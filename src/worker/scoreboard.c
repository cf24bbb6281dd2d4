/* SPDX-License-Identifier: MIT
 * worker/scoreboard.c: the shared slot array (see scoreboard.h).
 */
#include "common.h"
#include "worker/scoreboard.h"

#include <sys/mman.h>

int scoreboard_create(struct scoreboard *sb, size_t n)
{
    size_t size = n * sizeof(struct slot);
    void *p = mmap(NULL, size ? size : 1, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                   -1, 0);
    if (p == MAP_FAILED)
        return -errno;
    sb->slots = p;
    sb->n = n;
    return 0;
}

void scoreboard_destroy(struct scoreboard *sb)
{
    size_t size = sb->n * sizeof(struct slot);
    if (sb->slots)
        munmap(sb->slots, size ? size : 1);
    sb->slots = NULL;
    sb->n = 0;
}

const char *child_state_name(enum child_state s)
{
    static const char *const names[] = {"empty", "starting", "connecting", "idle", "busy",
                                        "stopping"};
    return (size_t)s < ARRAY_SIZE(names) ? names[s] : "unknown";
}
