/* SPDX-License-Identifier: MIT
 * test_scoreboard.c: the revoked-id set (worker/scoreboard.c): the last
 * 50,000 ids for three hours, found through the index in a few probes.
 */
#include "common.h"
#include "util/buf.h"
#include "util/time.h"
#include "worker/scoreboard.h"

#include "harness.h"

static void id_of(char *out, size_t n, unsigned i)
{
    snprintf(out, n, "%08x-0000-4000-8000-%012x", i * 2654435761u, i);
}

static void count_one(const char *id, void *arg)
{
    UNUSED(id);
    (*(size_t *)arg)++;
}

TEST(remembers_the_last_50000)
{
    struct scoreboard sb;
    ASSERT_EQ_INT(scoreboard_create(&sb, 1, 0), 0);
    char id[40];
    const unsigned total = REVOKED_MAX + 10000;
    for (unsigned i = 0; i < total; i++) {
        id_of(id, sizeof(id), i);
        scoreboard_revoke(&sb, id);
    }
    unsigned forgotten = 0, kept = 0;
    for (unsigned i = 0; i < total; i++) {
        id_of(id, sizeof(id), i);
        if (scoreboard_is_revoked(&sb, id))
            kept++;
        else if (i < total - REVOKED_MAX)
            forgotten++;
    }
    ASSERT_EQ_INT(kept, REVOKED_MAX);
    ASSERT_EQ_INT(forgotten, total - REVOKED_MAX);
    id_of(id, sizeof(id), total + 7);
    ASSERT_FALSE(scoreboard_is_revoked(&sb, id));
    ASSERT_FALSE(scoreboard_is_revoked(&sb, "not-an-id"));
    size_t listed = 0;
    ASSERT_EQ_SIZE(scoreboard_revoked_list(&sb, count_one, &listed), (size_t)REVOKED_MAX);
    ASSERT_EQ_SIZE(listed, (size_t)REVOKED_MAX);
    /* linear probing at under 40 % load: lookups stay short */
    ASSERT_LT_INT(atomic_load(&sb.shared->revoked_max_probe), 64);
    scoreboard_destroy(&sb);
}

TEST(revoking_twice_keeps_one_entry)
{
    struct scoreboard sb;
    ASSERT_EQ_INT(scoreboard_create(&sb, 1, 0), 0);
    scoreboard_revoke(&sb, "a");
    scoreboard_revoke(&sb, "a");
    ASSERT_EQ_INT(atomic_load(&sb.shared->revoked_count), 1);
    ASSERT_TRUE(scoreboard_is_revoked(&sb, "a"));
    scoreboard_destroy(&sb);
}

TEST(entries_expire_after_three_hours)
{
    struct scoreboard sb;
    ASSERT_EQ_INT(scoreboard_create(&sb, 1, 0), 0);
    scoreboard_revoke(&sb, "old");
    scoreboard_revoke(&sb, "new");
    sb.shared->revoked_at[0] = time_now() - REVOKED_EXPIRES_S - 1;
    ASSERT_FALSE(scoreboard_is_revoked(&sb, "old"));
    ASSERT_TRUE(scoreboard_is_revoked(&sb, "new"));
    size_t listed = 0;
    ASSERT_EQ_SIZE(scoreboard_revoked_list(&sb, count_one, &listed), 1);
    scoreboard_destroy(&sb);
}

/* The file-backed board: another process maps it read-only and checks its
 * header; the creator removes the file, and only its own. */
TEST(named_board_is_attachable_and_removed)
{
    char dir[] = "/tmp/celeriac-sb.XXXXXX";
    ASSERT_NOT_NULL(mkdtemp(dir));
    setenv("CELERIAC_RUNTIME_DIR", dir, 1);
    struct scoreboard sb, ro;
    struct err e = {0};
    ASSERT_EQ_INT(scoreboard_create_named(&sb, 3, 2, "w/1@host", &e), 0);
    struct buf path = BUF_INIT;
    scoreboard_path(&path, "w/1@host");
    ASSERT_CONTAINS(path.data, "/celeriac-w_1@host.board");
    atomic_store(&sb.slots[2].pid, 4242);
    snprintf(sb.slots[2].task_name, sizeof(sb.slots[2].task_name), "tasks.add");
    ASSERT_EQ_INT(scoreboard_attach(&ro, path.data, &e), 0);
    ASSERT_EQ_STR(ro.header->node, "w/1@host");
    ASSERT_EQ_INT(ro.header->master_pid, getpid());
    ASSERT_EQ_SIZE(ro.n, (size_t)3);
    ASSERT_EQ_INT(atomic_load(&ro.slots[2].pid), 4242);
    ASSERT_EQ_STR(ro.slots[2].task_name, "tasks.add");
    scoreboard_destroy(&ro);
    ASSERT_EQ_INT(access(path.data, F_OK), 0); /* a reader never removes it */
    scoreboard_destroy(&sb);
    ASSERT_NE_INT(access(path.data, F_OK), 0);

    /* not a board: refused with a reason */
    FILE *f = fopen(path.data, "w");
    ASSERT_NOT_NULL(f);
    for (int i = 0; i < 4096; i++)
        fputc('x', f);
    fclose(f);
    ASSERT_NE_INT(scoreboard_attach(&ro, path.data, &e), 0);
    ASSERT_CONTAINS(e.msg, "not a celeriac scoreboard");
    unlink(path.data);
    rmdir(dir);
    unsetenv("CELERIAC_RUNTIME_DIR");
    buf_release(&path);
}

RUN_TESTS()
