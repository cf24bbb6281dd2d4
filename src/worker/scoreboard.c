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

/* ---- the consumed queues: a sequence lock, one writer */

static void queues_write_begin(struct queue_set *q)
{
    atomic_fetch_add(&q->gen, 1); /* odd: readers retry */
}

static void queues_write_end(struct queue_set *q)
{
    atomic_fetch_add(&q->gen, 1);
}

int scoreboard_queues_set(struct scoreboard *sb, char *const *names, size_t n)
{
    struct queue_set *q = &sb->shared->queues;
    if (n > QUEUES_MAX)
        return -E2BIG;
    queues_write_begin(q);
    for (size_t i = 0; i < n; i++)
        snprintf(q->name[i], sizeof(q->name[i]), "%s", names[i]);
    atomic_store(&q->n, (int)n);
    queues_write_end(q);
    return 0;
}

static int queue_index(const struct queue_set *q, const char *name)
{
    int n = atomic_load(&q->n);
    for (int i = 0; i < n; i++)
        if (!strcmp(q->name[i], name))
            return i;
    return -1;
}

bool scoreboard_queue_add(struct scoreboard *sb, const char *name)
{
    struct queue_set *q = &sb->shared->queues;
    int n = atomic_load(&q->n);
    if (queue_index(q, name) >= 0 || n >= QUEUES_MAX || strlen(name) >= QUEUE_NAME_MAX)
        return false;
    queues_write_begin(q);
    snprintf(q->name[n], sizeof(q->name[n]), "%s", name);
    atomic_store(&q->n, n + 1);
    queues_write_end(q);
    return true;
}

bool scoreboard_queue_remove(struct scoreboard *sb, const char *name)
{
    struct queue_set *q = &sb->shared->queues;
    int i = queue_index(q, name), n = atomic_load(&q->n);
    if (i < 0)
        return false;
    queues_write_begin(q);
    memmove(q->name[i], q->name[i + 1], (size_t)(n - i - 1) * sizeof(q->name[0]));
    atomic_store(&q->n, n - 1);
    queues_write_end(q);
    return true;
}

uint64_t scoreboard_queues_gen(const struct scoreboard *sb)
{
    return atomic_load(&sb->shared->queues.gen);
}

uint64_t scoreboard_queues_read(const struct scoreboard *sb, char ***names, size_t *n)
{
    const struct queue_set *q = &sb->shared->queues;
    for (unsigned tries = 0;; tries++) {
        uint64_t gen = atomic_load(&q->gen);
        /* A write takes microseconds; a writer killed halfway leaves the
         * number odd for ever, so after a while the set is taken as it is. */
        if ((gen & 1) && tries < 1000) {
            if (tries > 100)
                usleep(1000);
            continue;
        }
        int count = atomic_load(&q->n);
        if (count < 0 || count > QUEUES_MAX)
            count = 0;
        char **out = xcalloc((size_t)count + 1, sizeof(*out));
        for (int i = 0; i < count; i++)
            out[i] = xstrndup(q->name[i], QUEUE_NAME_MAX - 1);
        if (atomic_load(&q->gen) == gen || tries >= 1000) {
            *names = out;
            *n = (size_t)count;
            return gen;
        }
        for (int i = 0; i < count; i++)
            free(out[i]);
        free(out);
    }
}
