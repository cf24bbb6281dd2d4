/* SPDX-License-Identifier: MIT
 * test_msgpack.c: msgpack <-> jansson (protocol/msgpack.c) and the sniffing
 * loader (protocol/serializer.c). The byte strings were written by Python's
 * msgpack 1.0 (packb use_bin_type=True), as kombu sends them.
 */
#include "common.h"
#include "protocol/msgpack.h"
#include "protocol/pyjson.h"
#include "protocol/serializer.h"
#include "util/buf.h"

#include "harness.h"

#define MP(s) s, sizeof(s) - 1

/* [[2, "café ☃", -12, 0.5, None, True, False, 2**63-1, -2**63],
 *  {"k": {"n": [1, []], "e": {}}}, {"callbacks": None}] */
static const char python_body[] =
    "\x93\x99\x02\xa9\x63\x61\x66\xc3\xa9\x20\xe2\x98\x83\xf4\xcb\x3f\xe0\x00\x00\x00\x00\x00"
    "\x00\xc0\xc3\xc2\xcf\x7f\xff\xff\xff\xff\xff\xff\xff\xd3\x80\x00\x00\x00\x00\x00\x00\x00"
    "\x81\xa1\x6b\x82\xa1\x6e\x92\x01\x90\xa1\x65\x80\x81\xa9\x63\x61\x6c\x6c\x62\x61\x63\x6b"
    "\x73\xc0";

/* [nan, inf, -inf] */
static const char python_specials[] =
    "\x93\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00\xcb\x7f\xf0\x00\x00\x00\x00\x00\x00\xcb\xff\xf0"
    "\x00\x00\x00\x00\x00\x00";

static void expect_json(const char *data, size_t len, const char *want)
{
    struct err e = {0};
    json_t *v = protocol_msgpack_load(data, len, &e);
    if (!v)
        FAIL("refused: %s", e.msg);
    char *text = pyjson_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    ASSERT_EQ_STR(text, want);
    free(text);
    json_decref(v);
}

static void expect_refused(const char *data, size_t len, const char *why)
{
    struct err e = {0};
    json_t *v = protocol_msgpack_load(data, len, &e);
    if (v) {
        json_decref(v);
        FAIL("accepted what should be refused for '%s'", why);
    }
    ASSERT_CONTAINS(e.msg, why);
}

TEST(python_body_decodes)
{
    expect_json(MP(python_body),
                "[[2,\"caf\xc3\xa9 \xe2\x98\x83\",-12,0.5,null,true,false,9223372036854775807,"
                "-9223372036854775808],{\"k\":{\"n\":[1,[]],\"e\":{}}},{\"callbacks\":null}]");
}

TEST(encoding_gives_python_bytes)
{
    struct err e = {0};
    json_t *v = protocol_msgpack_load(MP(python_body), &e);
    ASSERT_NOT_NULL(v);
    struct buf out = BUF_INIT;
    ASSERT_EQ_INT(protocol_msgpack_dump(&out, v, &e), 0);
    ASSERT_EQ_MEM(out.data, out.len, python_body, sizeof(python_body) - 1);
    buf_release(&out);
    json_decref(v);
}

TEST(nan_and_infinity_share_pyjson_representation)
{
    expect_json(MP(python_specials), "[NaN,Infinity,-Infinity]");
    /* ... and go out as the floats again, from msgpack and from JSON alike */
    json_error_t jerr;
    json_t *v = pyjson_loadb("[NaN, Infinity, -Infinity]", 26, 0, &jerr);
    ASSERT_NOT_NULL(v);
    ASSERT_TRUE(pyjson_is_special(json_array_get(v, 0)));
    struct buf out = BUF_INIT;
    ASSERT_EQ_INT(protocol_msgpack_dump(&out, v, NULL), 0);
    ASSERT_EQ_MEM(out.data, out.len, python_specials, sizeof(python_specials) - 1);
    buf_release(&out);
    json_decref(v);
}

TEST(float32_widens)
{
    expect_json(MP("\xca\x3f\xc0\x00\x00"), "1.5");
}

TEST(scalars_and_int_forms)
{
    expect_json(MP("\xc0"), "null");
    expect_json(MP("\x7f"), "127");
    expect_json(MP("\xe0"), "-32");
    expect_json(MP("\xcc\xff"), "255");
    expect_json(MP("\xd1\x80\x00"), "-32768");
    expect_json(MP("\xcf\x7f\xff\xff\xff\xff\xff\xff\xff"), "9223372036854775807");
    expect_json(MP("\xd9\x01\x61"), "\"a\"");
    expect_json(MP("\xde\x00\x01\xa1\x61\xc3"), "{\"a\":true}");
    expect_json(MP("\xdc\x00\x00"), "[]");
    expect_json(MP("\xa0"), "\"\"");
    expect_json(MP("\x81\xa0\xa0"), "{\"\":\"\"}");
}

TEST(repeated_key_last_wins)
{
    expect_json(MP("\x82\xa1\x61\x01\xa1\x61\x02"), "{\"a\":2}");
}

TEST(uint64_beyond_int64_refused)
{
    expect_refused(MP("\xcf\xff\xff\xff\xff\xff\xff\xff\xff"),
                   "integer 18446744073709551615 does not fit in int64");
    expect_refused(MP("\xcf\x80\x00\x00\x00\x00\x00\x00\x00"), "does not fit in int64");
}

TEST(non_string_keys_refused)
{
    expect_refused(MP("\x81\x01\x02"), "map key is not a string");
    expect_refused(MP("\x81\xc0\x02"), "map key is not a string");
    expect_refused(MP("\x81\x90\x02"), "map key is not a string");
}

TEST(bin_and_ext_refused)
{
    expect_refused(MP("\x91\xc4\x02\x61\x62"), "bin (bytes) values are not supported");
    /* msgpack.Timestamp(1): fixext4, type -1 */
    expect_refused(MP("\x91\xd6\xff\x00\x00\x00\x01"), "ext type -1");
    expect_refused(MP("\xc7\x01\x05\x00"), "ext type 5");
}

TEST(bad_text_refused)
{
    expect_refused(MP("\xa2\xc3\x28"), "not valid UTF-8");
    expect_refused(MP("\xa3\x61\x00\x62"), "without NUL");
    expect_refused(MP("\x81\xa2\xff\xfe\x01"), "map key is not valid UTF-8");
}

TEST(truncated_and_trailing_refused)
{
    expect_refused("", 0, "empty");
    expect_refused(MP("\x93\x01\x02"), "truncated");
    expect_refused(MP("\xa5\x61\x62"), "truncated");
    expect_refused(MP("\xcb\x3f\xe0"), "truncated");
    expect_refused(MP("\xdd\x00\x00"), "truncated");
    expect_refused(MP("\xc6\xff\xff\xff\xff\x00"), "truncated");
    expect_refused(MP("\x01\x02"), "1 trailing bytes");
    expect_refused(MP("\x90\x90"), "trailing");
    expect_refused(MP("\xc1"), "0xc1 is never used");
    /* every prefix of a real body is refused, never read past its end */
    for (size_t n = 0; n + 1 < sizeof(python_body) - 1; n++) {
        struct err e = {0};
        json_t *v = protocol_msgpack_load(python_body, n, &e);
        if (v) {
            json_decref(v);
            FAIL("a %zu-byte prefix was accepted", n);
        }
    }
}

TEST(huge_container_claims_refused_without_allocating)
{
    /* array32 and map32 of 4 billion elements in a few bytes */
    expect_refused(MP("\xdd\xff\xff\xff\xff\x01"), "claims 4294967295 elements with 1 bytes");
    expect_refused(MP("\xdf\xff\xff\xff\xff\x01"), "claims 8589934590 elements");
    expect_refused(MP("\x91\xdd\x00\x01\x00\x00"), "claims 65536 elements");
}

/* n nested one-element arrays around 1. */
static void nested(struct buf *out, int n)
{
    for (int i = 0; i < n; i++)
        buf_addch(out, (char)0x91);
    buf_addch(out, 1);
}

TEST(nesting_bounded)
{
    struct buf b = BUF_INIT;
    nested(&b, PROTOCOL_MSGPACK_DEPTH_MAX);
    struct err e = {0};
    json_t *v = protocol_msgpack_load(b.data, b.len, &e);
    if (!v)
        FAIL("%d levels refused: %s", PROTOCOL_MSGPACK_DEPTH_MAX, e.msg);
    json_decref(v);
    buf_reset(&b);
    nested(&b, PROTOCOL_MSGPACK_DEPTH_MAX + 1);
    expect_refused(b.data, b.len, "nests deeper than 32 levels");
    buf_reset(&b);
    nested(&b, 100000);
    expect_refused(b.data, b.len, "nests deeper");
    buf_release(&b);
}

TEST(dump_refuses_past_jansson_depth)
{
    json_t *root = json_array(), *cur = root;
    for (int i = 0; i < JSON_PARSER_MAX_DEPTH + 5; i++) {
        json_t *next = json_array();
        json_array_append_new(cur, next);
        cur = next;
    }
    struct buf out = BUF_INIT;
    struct err e = {0};
    ASSERT_EQ_INT(protocol_msgpack_dump(&out, root, &e), E_PROTOCOL);
    ASSERT_CONTAINS(e.msg, "nests deeper");
    buf_reset(&out);
    serializer_dump(&out, SERIALIZER_MSGPACK, root); /* null, as the JSON path writes */
    ASSERT_EQ_MEM(out.data, out.len, "\xc0", 1);
    buf_release(&out);
    json_decref(root);
}

TEST(sniffing_tells_the_two_apart)
{
    enum serializer found;
    struct err e = {0};
    json_t *v = serializer_load_sniffed(MP("{\"a\": NaN}"), &found, &e);
    ASSERT_NOT_NULL(v);
    ASSERT_EQ_INT(found, SERIALIZER_JSON);
    ASSERT_TRUE(pyjson_is_special(json_object_get(v, "a")));
    json_decref(v);
    v = serializer_load_sniffed(MP("\x81\xa1\x61\x01"), &found, &e);
    ASSERT_NOT_NULL(v);
    ASSERT_EQ_INT(found, SERIALIZER_MSGPACK);
    ASSERT_EQ_INT(json_integer_value(json_object_get(v, "a")), 1);
    json_decref(v);
    v = serializer_load_sniffed(MP("\x94\x01\xa1\x78"), &found, &e); /* truncated part */
    ASSERT_NULL(v);
    ASSERT_CONTAINS(e.msg, "truncated");
    ASSERT_NULL(serializer_load_sniffed(MP("nope"), &found, &e));
    ASSERT_CONTAINS(e.msg, "neither JSON nor msgpack");
}

TEST(serializer_dump_both)
{
    json_t *v = json_pack("{s:[i, f, s, n]}", "a", 1, 0.25, "x");
    struct buf out = BUF_INIT;
    serializer_dump(&out, SERIALIZER_JSON, v);
    ASSERT_EQ_STR(out.data, "{\"a\":[1,0.25,\"x\",null]}");
    buf_reset(&out);
    serializer_dump(&out, SERIALIZER_MSGPACK, v);
    ASSERT_EQ_MEM(out.data, out.len, "\x81\xa1\x61\x94\x01\xcb\x3f\xd0\x00\x00\x00\x00\x00\x00"
                                     "\xa1\x78\xc0", 17);
    buf_release(&out);
    json_decref(v);
}

RUN_TESTS()
