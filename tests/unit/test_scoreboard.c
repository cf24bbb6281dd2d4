/* SPDX-License-Identifier: MIT
 * test_scoreboard.c: the shared mapping (worker/scoreboard.c): slots, the
 * shared state and the per-slot parcels, which must sit on pages of their
 * own so that only the child of a slot ever touches its parcel.
 */
#include "common.h"
#include "worker/scoreboard.h"

#include <sys/mman.h>
#include <unistd.h>

#include "harness.h"

TEST(parcels_are_page_aligned_and_disjoint)
{
    struct scoreboard sb;
    ASSERT_EQ_INT(scoreboard_create(&sb, 3, 5), 0);
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t end_of_shared = (uintptr_t)sb.shared + sizeof(*sb.shared) +
                              5 * sizeof(struct task_tuning);
    ASSERT_EQ_INT((uintptr_t)sb.parcels % page, 0);
    ASSERT_TRUE((uintptr_t)sb.parcels >= end_of_shared);
    ASSERT_EQ_INT(sizeof(struct parcel) % page, 0);
    /* Every byte of the last parcel is inside the mapping and writable. */
    struct parcel *last = &sb.parcels[2];
    memset(last, 0xa5, sizeof(*last));
    ASSERT_TRUE((uintptr_t)(last + 1) <= (uintptr_t)sb.slots + sb.map_size);
    scoreboard_destroy(&sb);
}

TEST(untouched_parcels_cost_no_memory)
{
    struct scoreboard sb;
    ASSERT_EQ_INT(scoreboard_create(&sb, 64, 1), 0);
    size_t pages = (size_t)(sb.map_size + (size_t)sysconf(_SC_PAGESIZE) - 1) /
                   (size_t)sysconf(_SC_PAGESIZE);
    unsigned char *vec = xcalloc(pages, 1);
    sb.slots[0].state = CHILD_IDLE;   /* the master touches slots and shared state only */
    sb.shared->pool_target = 1;
    ASSERT_EQ_INT(mincore(sb.slots, sb.map_size, vec), 0);
    size_t first_parcel = (size_t)((char *)sb.parcels - (char *)sb.slots) /
                          (size_t)sysconf(_SC_PAGESIZE);
    size_t resident = 0;
    for (size_t i = first_parcel; i < pages; i++)
        resident += vec[i] & 1;
    ASSERT_EQ_INT(resident, 0);
    free(vec);
    scoreboard_destroy(&sb);
}

TEST(new_mapping_is_zeroed)
{
    struct scoreboard sb;
    ASSERT_EQ_INT(scoreboard_create(&sb, 2, 1), 0);
    ASSERT_EQ_INT(atomic_load(&sb.slots[1].parcel_held), 0);
    ASSERT_EQ_INT(atomic_load(&sb.slots[1].lost_parcel), 0);
    ASSERT_EQ_INT(sb.parcels[1].len, 0);
    scoreboard_destroy(&sb);
}

RUN_TESTS()
