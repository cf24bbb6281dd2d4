/* SPDX-License-Identifier: MIT
 * test_base64.c: strict RFC 4648 base64 (util/base64.c) as kombu writes bodies,
 * plus uuid_generate (util/uuid.c) and err_set (util/xalloc.c), which every
 * envelope and error path uses.
 */
#include "common.h"
#include "util/base64.h"
#include "util/buf.h"
#include "util/uuid.h"

#include "harness.h"

static const char *const plain[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
static const char *const coded[] = {"", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};

TEST(encode_rfc4648_vectors)
{
    for (size_t i = 0; i < ARRAY_SIZE(plain); i++) {
        struct buf b = BUF_INIT;
        base64_encode(&b, plain[i], strlen(plain[i]));
        ASSERT_EQ_STR(b.data, coded[i]);
        ASSERT_EQ_SIZE(b.len, strlen(coded[i]));
        buf_release(&b);
    }
}

TEST(decode_rfc4648_vectors)
{
    for (size_t i = 0; i < ARRAY_SIZE(plain); i++) {
        struct buf b = BUF_INIT;
        ASSERT_EQ_INT(base64_decode(&b, coded[i], strlen(coded[i])), 0);
        ASSERT_EQ_MEM(b.data, b.len, plain[i], strlen(plain[i]));
        ASSERT_EQ_INT(b.data[b.len], '\0');
        buf_release(&b);
    }
}

TEST(captured_body_decodes)
{
    const char *body = "W1syLCAyXSwge30sIHsiY2FsbGJhY2tzIjogbnVsbCwgImVycmJhY2tzIjogbnVsbCwgImNoYWlu"
                       "IjogbnVsbCwgImNob3JkIjogbnVsbH1d";
    struct buf b = BUF_INIT;
    ASSERT_EQ_INT(base64_decode(&b, body, strlen(body)), 0);
    ASSERT_EQ_STR(b.data, "[[2, 2], {}, {\"callbacks\": null, \"errbacks\": null, \"chain\": "
                          "null, \"chord\": null}]");
    buf_release(&b);
}

TEST(binary_round_trip)
{
    unsigned char all[256 * 3 + 2];
    for (size_t i = 0; i < sizeof(all); i++)
        all[i] = (unsigned char)(i * 7 + i / 256);
    for (size_t n = 0; n <= sizeof(all); n += (n < 10 ? 1 : 37)) {
        struct buf enc = BUF_INIT, dec = BUF_INIT;
        base64_encode(&enc, all, n);
        ASSERT_EQ_SIZE(enc.len, (n + 2) / 3 * 4);
        ASSERT_EQ_SIZE(strlen(enc.data), enc.len);
        ASSERT_EQ_INT(base64_decode(&dec, enc.data, enc.len), 0);
        ASSERT_EQ_MEM(dec.data, dec.len, all, n);
        buf_release(&enc);
        buf_release(&dec);
    }
}

TEST(encode_and_decode_append)
{
    struct buf b = BUF_INIT;
    buf_adds(&b, "x:");
    base64_encode(&b, "foo", 3);
    ASSERT_EQ_STR(b.data, "x:Zm9v");
    ASSERT_EQ_INT(base64_decode(&b, "YmFy", 4), 0);
    ASSERT_EQ_STR(b.data, "x:Zm9vbar");
    buf_release(&b);
}

TEST(decode_only_reads_len)
{
    struct buf b = BUF_INIT;
    ASSERT_EQ_INT(base64_decode(&b, "Zm9v!!!!", 4), 0);
    ASSERT_EQ_STR(b.data, "foo");
    buf_release(&b);
}

TEST(decode_rejects_bad_input)
{
    const char *bad[] = {
        "Zg",        /* missing padding */
        "Zg=",       /* short padding */
        "Zm9vY",     /* bad length */
        "Zg==Zg==",  /* padding before the end */
        "Z===",      /* too much padding */
        "====",      /* padding only */
        "Zg=a",      /* data after padding */
        "Zm9v\n",    /* line break */
        "Zm 9",      /* space */
        "Zm9-",      /* URL-safe alphabet */
        "Zm9_",
        "Zm9\x80",   /* non-ASCII */
        "Zm9\0",     /* NUL */
    };
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        struct buf b = BUF_INIT;
        size_t len = strlen(bad[i]) + (i == ARRAY_SIZE(bad) - 1);
        int rc = base64_decode(&b, bad[i], len);
        buf_release(&b);
        if (rc != -EINVAL)
            FAIL("base64_decode accepted bad input #%zu '%s' (rc %d)", i, bad[i], rc);
    }
}

/* ---- uuid_generate ---- */

TEST(uuid4_format)
{
    for (int n = 0; n < 200; n++) {
        char u[UUID_STR_LEN];
        memset(u, 'X', sizeof(u));
        uuid_generate(u);
        ASSERT_EQ_SIZE(strlen(u), 36);
        for (int i = 0; i < 36; i++) {
            if (i == 8 || i == 13 || i == 18 || i == 23)
                ASSERT_EQ_INT(u[i], '-');
            else
                ASSERT_TRUE(strchr("0123456789abcdef", u[i]) != NULL);
        }
        ASSERT_EQ_INT(u[14], '4');
        ASSERT_TRUE(strchr("89ab", u[19]) != NULL);
    }
}

TEST(uuid4_unique)
{
    enum { N = 1000 };
    static char ids[N][UUID_STR_LEN];
    for (int i = 0; i < N; i++)
        uuid_generate(ids[i]);
    for (int i = 0; i < N; i++)
        for (int j = i + 1; j < N; j++)
            if (!strcmp(ids[i], ids[j]))
                FAIL("uuid_generate repeated %s", ids[i]);
}

/* ---- err_set ---- */

TEST(err_set_fills_and_returns)
{
    struct err e = {0};
    ASSERT_EQ_INT(err_set(&e, -EINVAL, "parse '%s' failed: %d", "x", 7), -EINVAL);
    ASSERT_EQ_INT(e.code, -EINVAL);
    ASSERT_EQ_STR(e.msg, "parse 'x' failed: 7");
    ASSERT_EQ_INT(err_set(NULL, E_PROTOCOL, "ignored %s", "y"), E_PROTOCOL);
}

TEST(err_set_truncates_long_messages)
{
    char big[1000];
    memset(big, 'm', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    struct err e;
    err_set(&e, -1, "%s", big);
    ASSERT_EQ_SIZE(strlen(e.msg), ERR_MSG_MAX - 1);
}

RUN_TESTS()
