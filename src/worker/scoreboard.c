/* SPDX-License-Identifier: MIT
 * worker/scoreboard.c: the shared slot array (see scoreboard.h).
 */
#include "common.h"
#include "util/hash.h"
#include "worker/scoreboard.h"

#include <sys/mman.h>

int scoreboard_create(struct scoreboard *sb, size_t n, size_t n_tasks)
{
    size_t slots = n * sizeof(struct slot);
    size_t shared = sizeof(struct board_shared) + n_tasks * sizeof(struct task_tuning);
    shared = (shared + 63) / 64 * 64;
    size_t size = slots + shared + n * sizeof(struct held_board);
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return -errno;
    sb->slots = p;
    sb->n = n;
    sb->shared = (struct board_shared *)((char *)p + slots);
    sb->held = (struct held_board *)((char *)p + slots + shared);
    sb->n_tasks = n_tasks;
    sb->map_size = size;
    return 0;
}

void scoreboard_destroy(struct scoreboard *sb)
{
    if (sb->slots)
        munmap(sb->slots, sb->map_size);
    memset(sb, 0, sizeof(*sb));
}

uint64_t scoreboard_clock(struct scoreboard *sb, uint64_t received)
{
    uint64_t cur = atomic_load(&sb->shared->clock);
    for (;;) {
        uint64_t next = (received > cur ? received : cur) + 1;
        if (atomic_compare_exchange_weak(&sb->shared->clock, &cur, next))
            return next;
    }
}

/* 0 is reserved for "empty". */
static uint64_t id_hash(const char *id)
{
    return hash_nonzero(id, strlen(id));
}

void scoreboard_revoke(struct scoreboard *sb, const char *id)
{
    struct board_shared *s = sb->shared;
    if (scoreboard_is_revoked(sb, id))
        return;
    uint64_t n = atomic_load(&s->revoked_count);
    size_t i = (size_t)(n % REVOKED_MAX);
    atomic_store(&s->revoked_hash[i], 0); /* readers skip the entry while it changes */
    snprintf(s->revoked_id[i], sizeof(s->revoked_id[i]), "%s", id);
    atomic_store(&s->revoked_hash[i], id_hash(id));
    atomic_store(&s->revoked_count, n + 1);
}

bool scoreboard_is_revoked(const struct scoreboard *sb, const char *id)
{
    const struct board_shared *s = sb->shared;
    uint64_t n = atomic_load(&s->revoked_count);
    if (!n)
        return false;
    uint64_t h = id_hash(id);
    size_t used = n < REVOKED_MAX ? (size_t)n : REVOKED_MAX;
    for (size_t i = 0; i < used; i++)
        if (atomic_load(&s->revoked_hash[i]) == h && !strcmp(s->revoked_id[i], id))
            return true;
    return false;
}

const char *child_state_name(enum child_state s)
{
    static const char *const names[] = {"empty", "starting", "connecting", "idle", "busy",
                                        "stopping"};
    return (size_t)s < ARRAY_SIZE(names) ? names[s] : "unknown";
}
