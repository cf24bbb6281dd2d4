/* SPDX-License-Identifier: MIT
 * test_buf.c: struct buf (util/buf.c): growth, formatting, detach, reset, release.
 */
#include "common.h"
#include "util/buf.h"

#include "harness.h"

TEST(init_is_empty_string)
{
    struct buf b = BUF_INIT;
    ASSERT_NOT_NULL(b.data);
    ASSERT_EQ_STR(b.data, "");
    ASSERT_EQ_SIZE(b.len, 0);
    struct buf c;
    buf_init(&c);
    ASSERT_EQ_STR(c.data, "");
    ASSERT_EQ_SIZE(c.len, 0);
    ASSERT_EQ_SIZE(c.cap, 0);
}

TEST(release_on_empty_buf)
{
    struct buf b = BUF_INIT;
    buf_release(&b);
    buf_release(&b);
    ASSERT_EQ_STR(b.data, "");
    ASSERT_EQ_SIZE(b.len, 0);
    /* The static "" must not have been written through. */
    ASSERT_EQ_INT(buf_empty[0], 0);
}

TEST(reset_on_empty_buf_does_not_write)
{
    struct buf b = BUF_INIT;
    buf_reset(&b);
    ASSERT_EQ_STR(b.data, "");
    ASSERT_EQ_INT(buf_empty[0], 0);
}

TEST(add_and_addch_and_adds)
{
    struct buf b = BUF_INIT;
    buf_adds(&b, "abc");
    buf_addch(&b, '-');
    buf_add(&b, "xyz123", 3);
    buf_add(&b, "ignored", 0);
    ASSERT_EQ_STR(b.data, "abc-xyz");
    ASSERT_EQ_SIZE(b.len, 7);
    ASSERT_EQ_INT(b.data[b.len], '\0');
    buf_release(&b);
    ASSERT_EQ_STR(b.data, "");
}

TEST(add_binary_with_nul)
{
    struct buf b = BUF_INIT;
    buf_add(&b, "a\0b", 3);
    ASSERT_EQ_SIZE(b.len, 3);
    ASSERT_EQ_MEM(b.data, b.len, "a\0b", 3);
    ASSERT_EQ_INT(b.data[3], '\0');
    buf_release(&b);
}

TEST(addf_formats)
{
    struct buf b = BUF_INIT;
    buf_addf(&b, "%s=%d", "x", 42);
    buf_addf(&b, ",%05.1f", 2.25);
    ASSERT_EQ_STR(b.data, "x=42,002.2");
    ASSERT_EQ_SIZE(b.len, strlen("x=42,002.2"));
    buf_release(&b);
}

TEST(addf_empty_result)
{
    struct buf b = BUF_INIT;
    buf_addf(&b, "%s", "");
    ASSERT_EQ_STR(b.data, "");
    ASSERT_EQ_SIZE(b.len, 0);
    buf_release(&b);
}

/* Appends that cross the capacity many times, checking every byte after. */
TEST(addf_growth)
{
    struct buf b = BUF_INIT;
    struct buf want = BUF_INIT;
    char big[3000];
    memset(big, 'q', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    for (int i = 0; i < 500; i++) {
        buf_addf(&b, "[%d:%s]", i, i % 50 == 7 ? big : "v");
        char piece[16];
        snprintf(piece, sizeof(piece), "[%d:", i);
        buf_adds(&want, piece);
        buf_adds(&want, i % 50 == 7 ? big : "v");
        buf_addch(&want, ']');
        ASSERT_EQ_SIZE(b.len, want.len);
        ASSERT_TRUE(b.cap > b.len);
        ASSERT_EQ_INT(b.data[b.len], '\0');
    }
    ASSERT_EQ_MEM(b.data, b.len, want.data, want.len);
    ASSERT_EQ_SIZE(strlen(b.data), b.len);
    buf_release(&b);
    buf_release(&want);
}

/* An addf that exactly fills the remaining capacity, then one byte more. */
TEST(addf_exact_fit_boundaries)
{
    for (size_t fill = 0; fill < 200; fill++) {
        struct buf b = BUF_INIT;
        buf_grow(&b, 100);
        size_t cap = b.cap;
        ASSERT_TRUE(cap >= 101);
        for (size_t i = 0; i < fill && b.len + 1 < cap; i++)
            buf_addch(&b, 'a');
        size_t room = cap - b.len - 1;
        size_t before = b.len;
        buf_addf(&b, "%*s", (int)room, "z");
        ASSERT_EQ_SIZE(b.len, before + (room ? room : 1));
        buf_addf(&b, "%s", "!");
        ASSERT_EQ_SIZE(b.len, before + (room ? room : 1) + 1);
        ASSERT_EQ_INT(b.data[b.len - 1], '!');
        ASSERT_EQ_INT(b.data[b.len], '\0');
        ASSERT_EQ_SIZE(strlen(b.data), b.len);
        buf_release(&b);
    }
}

TEST(grow_keeps_contents)
{
    struct buf b = BUF_INIT;
    buf_adds(&b, "keep");
    buf_grow(&b, 1 << 20);
    ASSERT_TRUE(b.cap >= 4 + (1 << 20) + 1);
    ASSERT_EQ_STR(b.data, "keep");
    ASSERT_EQ_SIZE(b.len, 4);
    buf_release(&b);
}

TEST(reset_keeps_allocation)
{
    struct buf b = BUF_INIT;
    buf_adds(&b, "hello world");
    size_t cap = b.cap;
    char *data = b.data;
    buf_reset(&b);
    ASSERT_EQ_SIZE(b.len, 0);
    ASSERT_EQ_STR(b.data, "");
    ASSERT_EQ_SIZE(b.cap, cap);
    ASSERT_TRUE(b.data == data);
    buf_adds(&b, "again");
    ASSERT_EQ_STR(b.data, "again");
    buf_release(&b);
}

TEST(detach_transfers_ownership)
{
    struct buf b = BUF_INIT;
    buf_addf(&b, "%s-%d", "tag", 7);
    size_t len = 99;
    char *s = buf_detach(&b, &len);
    ASSERT_EQ_STR(s, "tag-7");
    ASSERT_EQ_SIZE(len, 5);
    /* b is re-initialised and usable again, independent of s. */
    ASSERT_EQ_STR(b.data, "");
    ASSERT_EQ_SIZE(b.len, 0);
    ASSERT_EQ_SIZE(b.cap, 0);
    buf_adds(&b, "new");
    ASSERT_EQ_STR(s, "tag-7");
    ASSERT_EQ_STR(b.data, "new");
    free(s);
    buf_release(&b);
}

TEST(detach_empty_returns_freeable_string)
{
    struct buf b = BUF_INIT;
    size_t len = 99;
    char *s = buf_detach(&b, &len);
    ASSERT_NOT_NULL(s);
    ASSERT_EQ_STR(s, "");
    ASSERT_EQ_SIZE(len, 0);
    ASSERT_TRUE(s != buf_empty);
    free(s);
    char *t = buf_detach(&b, NULL);
    ASSERT_EQ_STR(t, "");
    free(t);
}

RUN_TESTS()
