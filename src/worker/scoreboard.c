/* SPDX-License-Identifier: MIT
 * worker/scoreboard.c: the shared slot array (see scoreboard.h).
 */
#include "common.h"
#include "util/buf.h"
#include "util/hash.h"
#include "util/time.h"
#include "worker/scoreboard.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>

/* The layout of a board of n slots and n_tasks tasks: the header, the
 * slots, the shared state, the held boards, the tallies (the metrics'
 * counters: per child, then per task), each 64-byte aligned. */
static size_t board_layout(size_t n, size_t n_tasks, size_t *slots_off, size_t *shared_off,
                           size_t *held_off, size_t *tally_off)
{
    size_t shared = sizeof(struct board_shared) + n_tasks * sizeof(struct task_tuning);
    *slots_off = (sizeof(struct board_header) + 63) / 64 * 64;
    *shared_off = *slots_off + (n * sizeof(struct slot) + 63) / 64 * 64;
    *held_off = *shared_off + (shared + 63) / 64 * 64;
    *tally_off = (*held_off + n * sizeof(struct held_board) + 63) / 64 * 64;
    return *tally_off + n * sizeof(struct child_tally) + n_tasks * sizeof(struct task_tally);
}

/* Points sb into the mapping p of size bytes whose header is filled. */
static void board_bind(struct scoreboard *sb, void *p)
{
    struct board_header *h = p;
    size_t slots_off, shared_off, held_off, tally_off;
    sb->header = h;
    sb->n = (size_t)h->n;
    sb->n_tasks = (size_t)h->n_tasks;
    sb->map_size =
        board_layout(sb->n, sb->n_tasks, &slots_off, &shared_off, &held_off, &tally_off);
    sb->slots = (struct slot *)((char *)p + slots_off);
    sb->shared = (struct board_shared *)((char *)p + shared_off);
    sb->held = (struct held_board *)((char *)p + held_off);
    sb->child_tally = (struct child_tally *)((char *)p + tally_off);
    sb->task_tally = (struct task_tally *)(sb->child_tally + sb->n);
}

static void board_header_fill(void *p, size_t n, size_t n_tasks, const char *node)
{
    struct board_header *h = p;
    size_t slots_off, shared_off, held_off, tally_off;
    h->map_size = board_layout(n, n_tasks, &slots_off, &shared_off, &held_off, &tally_off);
    memcpy(h->magic, BOARD_MAGIC, sizeof(h->magic));
    h->version = BOARD_VERSION;
    h->slot_size = sizeof(struct slot);
    h->n = n;
    h->n_tasks = n_tasks;
    h->slots_offset = slots_off;
    h->shared_offset = shared_off;
    h->master_pid = (int32_t)getpid();
    snprintf(h->node, sizeof(h->node), "%s", node ? node : "");
}

int scoreboard_create(struct scoreboard *sb, size_t n, size_t n_tasks)
{
    size_t a, b, c, d, size = board_layout(n, n_tasks, &a, &b, &c, &d);
    memset(sb, 0, sizeof(*sb));
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return -errno;
    board_header_fill(p, n, n_tasks, NULL);
    board_bind(sb, p);
    return 0;
}

void scoreboard_dir(struct buf *out)
{
    const char *dir = getenv("CELERIAC_RUNTIME_DIR");
    buf_adds(out, dir && *dir ? dir : "/dev/shm");
}

void scoreboard_path(struct buf *out, const char *node)
{
    scoreboard_dir(out);
    buf_adds(out, "/celeriac-");
    for (const char *c = node; *c; c++)
        buf_addch(out, *c == '/' ? '_' : *c);
    buf_adds(out, ".board");
}

/* A new file under a temporary name, sized (sparse: tmpfs gives pages as
 * they are touched), mapped, its header filled, then renamed over the
 * node's name so a reader never sees it half made. */
int scoreboard_create_named(struct scoreboard *sb, size_t n, size_t n_tasks, const char *node,
                            struct err *e)
{
    size_t a, b, c, d, size = board_layout(n, n_tasks, &a, &b, &c, &d);
    struct buf path = BUF_INIT, tmp = BUF_INIT;
    memset(sb, 0, sizeof(*sb));
    scoreboard_path(&path, node);
    buf_addf(&tmp, "%s.%d.tmp", path.data, (int)getpid());
    int rc = 0;
    void *p = MAP_FAILED;
    int fd = open(tmp.data, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) {
        rc = -errno;
        err_set(e, rc, "create '%s' failed: %s", tmp.data, strerror(-rc));
        goto out_free;
    }
    struct stat st;
    if (ftruncate(fd, (off_t)size) || fstat(fd, &st)) {
        rc = -errno;
        err_set(e, rc, "size '%s' failed: %s", tmp.data, strerror(-rc));
        goto out_unlink;
    }
    p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        rc = -errno;
        err_set(e, rc, "mmap '%s' failed: %s", tmp.data, strerror(-rc));
        goto out_unlink;
    }
    board_header_fill(p, n, n_tasks, node);
    if (rename(tmp.data, path.data)) {
        rc = -errno;
        err_set(e, rc, "rename to '%s' failed: %s", path.data, strerror(-rc));
        munmap(p, size);
        goto out_unlink;
    }
    board_bind(sb, p);
    sb->path = buf_detach(&path, NULL);
    sb->dev = st.st_dev;
    sb->ino = st.st_ino;
    sb->owner = getpid();
    goto out_close;

out_unlink:
    unlink(tmp.data);
out_close:
    close(fd);
out_free:
    buf_release(&path);
    buf_release(&tmp);
    return rc;
}

int scoreboard_attach(struct scoreboard *sb, const char *path, struct err *e)
{
    memset(sb, 0, sizeof(*sb));
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int rc = -errno;
        return err_set(e, rc, "open '%s' failed: %s", path, strerror(-rc));
    }
    struct stat st;
    int rc = 0;
    void *p = MAP_FAILED;
    if (fstat(fd, &st)) {
        rc = -errno;
        err_set(e, rc, "stat '%s' failed: %s", path, strerror(-rc));
        goto out_close;
    }
    if ((size_t)st.st_size < sizeof(struct board_header)) {
        rc = err_set(e, E_PROTOCOL, "'%s' is not a celeriac scoreboard (too short)", path);
        goto out_close;
    }
    p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        rc = -errno;
        err_set(e, rc, "mmap '%s' failed: %s", path, strerror(-rc));
        goto out_close;
    }
    const struct board_header *h = p;
    size_t a, b, c, d;
    if (memcmp(h->magic, BOARD_MAGIC, sizeof(h->magic))) {
        rc = err_set(e, E_PROTOCOL, "'%s' is not a celeriac scoreboard", path);
    } else if (h->version != BOARD_VERSION || h->slot_size != sizeof(struct slot)) {
        rc = err_set(e, E_PROTOCOL,
                     "'%s' was written by another celeriac build (layout %u/%u, ours %u/%zu)",
                     path, h->version, h->slot_size, BOARD_VERSION, sizeof(struct slot));
    } else if (h->n > 65536 || h->n_tasks > 1000000 ||
               board_layout((size_t)h->n, (size_t)h->n_tasks, &a, &b, &c, &d) != (size_t)st.st_size ||
               h->map_size != (uint64_t)st.st_size) {
        rc = err_set(e, E_PROTOCOL, "'%s' has an inconsistent size", path);
    }
    if (rc) {
        munmap(p, (size_t)st.st_size);
        goto out_close;
    }
    board_bind(sb, p);

out_close:
    close(fd);
    return rc;
}

/* Removes the backing file when it is still ours: a worker started later
 * under the same node name has replaced it with its own. */
static void board_unlink(const struct scoreboard *sb)
{
    struct stat st;
    if (sb->path && sb->owner == getpid() && !stat(sb->path, &st) && st.st_dev == sb->dev &&
        st.st_ino == sb->ino)
        unlink(sb->path);
}

void scoreboard_destroy(struct scoreboard *sb)
{
    board_unlink(sb);
    if (sb->header)
        munmap(sb->header, sb->map_size);
    free(sb->path);
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

/* The revoked index: linear probing over REVOKED_INDEX_SIZE words, each 0
 * (never used) or (the upper 48 bits of the id's hash << 16 | ring entry + 1).
 * Entries are never emptied: one whose ring entry now holds another id is
 * stale, skipped by readers and reused by the writer, so a reader's probe
 * never stops early; it stops at a never-used word or after the longest
 * probe any insert has made. */
#define INDEX_MASK (REVOKED_INDEX_SIZE - 1)

static uint64_t index_word(uint64_t h, size_t entry)
{
    return (h & ~(uint64_t)0xffff) | (uint64_t)(entry + 1);
}

static bool index_word_is_current(const struct board_shared *s, uint64_t w)
{
    size_t entry = (size_t)(w & 0xffff) - 1;
    return entry < REVOKED_MAX &&
           (atomic_load(&s->revoked_hash[entry]) & ~(uint64_t)0xffff) == (w & ~(uint64_t)0xffff);
}

static bool revoked_entry_matches(const struct board_shared *s, size_t entry, uint64_t h,
                                  const char *id, double now)
{
    return atomic_load(&s->revoked_hash[entry]) == h && !strcmp(s->revoked_id[entry], id) &&
           now - s->revoked_at[entry] < REVOKED_EXPIRES_S;
}

void scoreboard_revoke(struct scoreboard *sb, const char *id)
{
    scoreboard_revoke_at(sb, id, time_now());
}

void scoreboard_revoke_at(struct scoreboard *sb, const char *id, double when)
{
    struct board_shared *s = sb->shared;
    if (scoreboard_is_revoked(sb, id))
        return;
    uint64_t n = atomic_load(&s->revoked_count), h = id_hash(id);
    size_t entry = (size_t)(n % REVOKED_MAX);
    atomic_store(&s->revoked_hash[entry], 0); /* the old id's index word goes stale */
    snprintf(s->revoked_id[entry], sizeof(s->revoked_id[entry]), "%s", id);
    s->revoked_at[entry] = when;
    atomic_store(&s->revoked_hash[entry], h);
    for (unsigned probe = 0; probe < REVOKED_INDEX_SIZE; probe++) {
        size_t at = (size_t)(h + probe) & INDEX_MASK;
        uint64_t w = atomic_load(&s->revoked_index[at]);
        if (w && index_word_is_current(s, w))
            continue;
        atomic_store(&s->revoked_index[at], index_word(h, entry));
        if (probe > atomic_load(&s->revoked_max_probe))
            atomic_store(&s->revoked_max_probe, probe);
        break;
    }
    atomic_store(&s->revoked_count, n + 1);
}

bool scoreboard_is_revoked(const struct scoreboard *sb, const char *id)
{
    const struct board_shared *s = sb->shared;
    if (!atomic_load(&s->revoked_count))
        return false;
    uint64_t h = id_hash(id);
    unsigned max_probe = atomic_load(&s->revoked_max_probe);
    double now = time_now();
    for (unsigned probe = 0; probe <= max_probe && probe < REVOKED_INDEX_SIZE; probe++) {
        uint64_t w = atomic_load(&s->revoked_index[(size_t)(h + probe) & INDEX_MASK]);
        if (!w)
            return false;
        size_t entry = (size_t)(w & 0xffff) - 1;
        if (entry < REVOKED_MAX && revoked_entry_matches(s, entry, h, id, now))
            return true;
    }
    return false;
}

size_t scoreboard_revoked_list(const struct scoreboard *sb, void (*each)(const char *, void *),
                               void *arg)
{
    const struct board_shared *s = sb->shared;
    uint64_t n = atomic_load(&s->revoked_count);
    size_t used = n < REVOKED_MAX ? (size_t)n : REVOKED_MAX, listed = 0;
    double now = time_now();
    for (size_t i = 0; i < used; i++) {
        if (atomic_load(&s->revoked_hash[i]) && now - s->revoked_at[i] < REVOKED_EXPIRES_S) {
            each(s->revoked_id[i], arg);
            listed++;
        }
    }
    return listed;
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

int scoreboard_lost_note(struct scoreboard *sb, const char *task_id, int reason)
{
    struct board_shared *sh = sb->shared;
    struct lost_note *n = NULL;
    int deaths = 1;
    for (size_t i = 0; i < LOST_NOTES && !n; i++) /* the only writer: no lock to read */
        if (atomic_load(&sh->lost[i].seq) && !strcmp(sh->lost[i].task_id, task_id))
            n = &sh->lost[i];
    if (n)
        deaths = n->deaths + 1;
    else
        n = &sh->lost[atomic_fetch_add(&sh->lost_count, 1) % LOST_NOTES];
    uint64_t seq = atomic_load(&n->seq);
    atomic_store(&n->seq, seq | 1);
    snprintf(n->task_id, sizeof(n->task_id), "%s", task_id);
    n->reason = reason;
    n->deaths = deaths;
    atomic_store(&n->seq, (seq | 1) + 1);
    return deaths;
}

bool scoreboard_lost_find(struct scoreboard *sb, const char *task_id, int *reason, int *deaths)
{
    struct board_shared *sh = sb->shared;
    for (size_t i = 0; i < LOST_NOTES; i++) {
        struct lost_note *n = &sh->lost[i];
        for (;;) {
            uint64_t before = atomic_load(&n->seq);
            if (!before)
                break;
            if (before & 1)
                continue; /* the master is writing it: a few stores */
            bool hit = !strncmp(n->task_id, task_id, sizeof(n->task_id));
            int r = n->reason, d = n->deaths;
            if (atomic_load(&n->seq) != before)
                continue;
            if (!hit)
                break;
            *reason = r;
            *deaths = d;
            return true;
        }
    }
    return false;
}
