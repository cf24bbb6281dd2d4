/* SPDX-License-Identifier: MIT
 * test_pickle.c: protocol/pickle.c against bytes CPython 3.11 writes with
 * pickle.dumps(json.loads(text), 5) (vectors made with Debian's python3),
 * including framing around large payloads and the memo references CPython
 * makes for shared strings.
 */
#include "common.h"
#include "protocol/pickle.h"
#include "util/buf.h"

#include <openssl/evp.h>

#include "harness.h"

struct vector {
    const char *json;
    const char *pickle_hex;
};

static const struct vector vectors[] = {
    {"null", "80054e2e"},
    {"true", "8005882e"},
    {"false", "8005892e"},
    {"0", "80054b002e"},
    {"255", "80054bff2e"},
    {"256", "80059504000000000000004d00012e"},
    {"65535", "80059504000000000000004dffff2e"},
    {"65536", "80059506000000000000004a000001002e"},
    {"-1", "80059506000000000000004affffffff2e"},
    {"2147483647", "80059506000000000000004affffff7f2e"},
    {"-2147483648", "80059506000000000000004a000000802e"},
    {"2147483648", "80059508000000000000008a0500000080002e"},
    {"-2147483649", "80059508000000000000008a05ffffff7fff2e"},
    {"9223372036854775807", "8005950b000000000000008a08ffffffffffffff7f2e"},
    {"-9223372036854775808", "8005950b000000000000008a0800000000000000802e"},
    {"549755813888", "80059509000000000000008a060000000080002e"},
    {"-549755813888", "80059508000000000000008a0500000000802e"},
    {"3.5", "8005950a0000000000000047400c0000000000002e"},
    {"-0.0", "8005950a000000000000004780000000000000002e"},
    {"1e+300", "8005950a00000000000000477e37e43c8800759c2e"},
    {"\"\"", "80059504000000000000008c00942e"},
    {"\"a\"", "80059505000000000000008c0161942e"},
    {"\"\xc3\xa9\"", "80059506000000000000008c02c3a9942e"},
    {"\"\xe2\x82\xac\"", "80059507000000000000008c03e282ac942e"},
    {"\"hello\"", "80059509000000000000008c0568656c6c6f942e"},
    {"[]", "80055d942e"},
    {"[1]", "80059506000000000000005d944b01612e"},
    {"[1, 2]", "80059509000000000000005d94284b014b02652e"},
    {"{}", "80057d942e"},
    {"{\"a\": 1}", "8005950a000000000000007d948c0161944b01732e"},
    {"{\"a\": 1, \"b\": 2}", "80059511000000000000007d94288c0161944b018c0162944b02752e"},
    {"[{\"a\": 1}, {\"a\": 2}]",
     "80059515000000000000005d94287d948c0161944b01737d9468024b0273652e"},
    {"{\"a\": \"a\", \"bb\": \"bb\", \"c\": [\"\", \"\", \"c\", \"\xc3\xa9\", \"\xc3\xa9\", "
     "\"ab\", \"ab\"], \"d\": [{\"bb\": 1}]}",
     "80059543000000000000007d94288c01619468018c026262948c026262948c0163945d94288c0094680668"
     "048c02c3a99468078c026162948c02616294658c0164945d947d9468024b017361752e"},
    {"{\"n\": [1, 2.5, \"x\", null, true, false], \"nested\": {\"k\": {\"k\": []}}}",
     "80059536000000000000007d94288c016e945d94284b014740040000000000008c0178944e8889658c066e"
     "6573746564947d948c016b947d9468065d947373752e"},
};

static void to_hex(struct buf *out, const struct buf *in)
{
    for (size_t i = 0; i < in->len; i++)
        buf_addf(out, "%02x", (unsigned char)in->data[i]);
}

static json_t *parse(const char *text)
{
    json_error_t je;
    json_t *v = json_loads(text, JSON_DECODE_ANY, &je);
    if (!v)
        harness_fail(__FILE__, __LINE__, "bad vector %s: %s", text, je.text);
    return v;
}

/* Pickles text (JSON) with flags; returns the bytes as hex (caller releases). */
static void dump_hex(struct buf *hex, const char *text, unsigned flags)
{
    json_t *v = parse(text);
    struct buf out = BUF_INIT;
    ASSERT_EQ_INT(pickle_dump(&out, v, flags, NULL), 0);
    to_hex(hex, &out);
    buf_release(&out);
    json_decref(v);
}

TEST(json_values_match_cpython)
{
    for (size_t i = 0; i < ARRAY_SIZE(vectors); i++) {
        struct buf hex = BUF_INIT;
        dump_hex(&hex, vectors[i].json, 0);
        ASSERT_EQ_STR(hex.data, vectors[i].pickle_hex);
        buf_release(&hex);
    }
}

TEST(exception_args_are_a_tuple)
{
    struct buf hex = BUF_INIT;
    dump_hex(&hex, "{\"exc_type\": \"ValueError\", \"exc_message\": [\"boom\"], "
                   "\"exc_module\": \"builtins\"}", PICKLE_EXCEPTION);
    ASSERT_EQ_STR(hex.data,
                  "8005954c000000000000007d94288c086578635f74797065948c0a56616c75654572726f72"
                  "948c0b6578635f6d657373616765948c04626f6f6d9485948c0a6578635f6d6f64756c6594"
                  "8c086275696c74696e7394752e");
    buf_reset(&hex);
    dump_hex(&hex, "{\"exc_type\": \"Retry\", \"exc_message\": [\"a\", \"b\", \"c\", \"d\"], "
                   "\"exc_module\": \"celery.exceptions\"}", PICKLE_EXCEPTION);
    ASSERT_EQ_STR(hex.data,
                  "8005955a000000000000007d94288c086578635f74797065948c055265747279948c0b6578"
                  "635f6d65737361676594288c0161948c0162948c0163948c01649474948c0a6578635f6d6f"
                  "64756c65948c1163656c6572792e657863657074696f6e7394752e");
    buf_reset(&hex);
    dump_hex(&hex, "{\"exc_type\": \"X\", \"exc_message\": [], \"exc_module\": \"m\"}",
             PICKLE_EXCEPTION);
    ASSERT_EQ_STR(hex.data, "80059534000000000000007d94288c086578635f74797065948c0158948c0b6578"
                            "635f6d65737361676594298c0a6578635f6d6f64756c65948c016d94752e");
    buf_release(&hex);
}

TEST(exception_flag_only_changes_the_top_level_exc_message)
{
    struct buf plain = BUF_INIT, flagged = BUF_INIT;
    dump_hex(&plain, "{\"x\": {\"exc_message\": [1]}}", 0);
    dump_hex(&flagged, "{\"x\": {\"exc_message\": [1]}}", PICKLE_EXCEPTION);
    ASSERT_EQ_STR(flagged.data, plain.data);
    buf_release(&plain);
    buf_release(&flagged);
}

/* v's pickle (v is consumed): its length and sha256 against CPython's. */
static void check_large(json_t *v, size_t want_len, const char *want_sha)
{
    struct buf out = BUF_INIT, hex = BUF_INIT;
    ASSERT_EQ_INT(pickle_dump(&out, v, 0, NULL), 0);
    unsigned char md[32];
    unsigned int md_len = 0;
    ASSERT_TRUE(EVP_Digest(out.data, out.len, md, &md_len, EVP_sha256(), NULL));
    struct buf digest = {(char *)md, md_len, 0};
    to_hex(&hex, &digest);
    ASSERT_EQ_SIZE(out.len, want_len);
    ASSERT_EQ_STR(hex.data, want_sha);
    buf_release(&out);
    buf_release(&hex);
    json_decref(v);
}

static json_t *repeated(char c, size_t n)
{
    char *s = xmalloc(n + 1);
    memset(s, c, n);
    s[n] = '\0';
    json_t *v = json_stringn(s, n);
    free(s);
    return v;
}

TEST(batches_and_frames_match_cpython)
{
    json_t *list = json_array(), *dict = json_object();
    for (int i = 0; i < 2500; i++)
        json_array_append_new(list, json_integer(i));
    check_large(list, 7264, "a2292ac146b9d04a36e005f818937ee0abd9805e469689a86d1fb37aff9827aa");
    for (int i = 0; i < 2001; i++) {
        char key[16];
        snprintf(key, sizeof(key), "%d", i);
        json_object_set_new(dict, key, json_integer(i));
    }
    check_large(dict, 18664, "53dc46295d0d9875eb217a172b307cbea54d523f3759ff17630335b0d3e905af");
    check_large(json_pack("[o, i]", repeated('x', 70000), 1), 70024,
                "685126c1f9146ffd18031af76f020b4f947e26c4d679a59dd46fc0fc86bca986");
    check_large(json_pack("[o, o]", repeated('x', 40000), repeated('y', 40000)), 80028,
                "641f1db2bca02624802eb841b9ab7e693240ee86528c11d7a97750e025ba21ae");
    check_large(json_pack("[o, o, i]", repeated('x', 40000), repeated('y', 40000), 1), 80039,
                "d544ef32567ffb6c9bd4b939ea10b0b69973447bffacfb1bedf0aab21f710fab");
    check_large(json_pack("{s: o}", "k", repeated('x', 70000)), 70025,
                "66f862aa942492542effafccb79f700e14b4bf3800a36f461f45c6c7cd95b3cb");
    json_t *many = json_array();
    for (int i = 0; i < 400; i++) {
        char digit[16];
        struct buf s = BUF_INIT;
        snprintf(digit, sizeof(digit), "%d", i);
        for (int k = 0; k < 300; k++)
            buf_adds(&s, digit);
        json_array_append_new(many, json_stringn(s.data, s.len));
        buf_release(&s);
    }
    check_large(many, 329452, "207e8048955c1a804f3536ef4828a866da0b528091c0ebfc3b3a344859305138");
}

TEST(too_deep_is_refused)
{
    json_t *v = json_array(), *inner = v;
    for (int i = 0; i < PICKLE_DEPTH_MAX + 5; i++) {
        json_t *next = json_array();
        json_array_append_new(inner, next);
        inner = next;
    }
    struct buf out = BUF_INIT;
    struct err e = {0};
    ASSERT_EQ_INT(pickle_dump(&out, v, 0, &e), E_TOO_BIG);
    ASSERT_CONTAINS(e.msg, "deeper");
    buf_release(&out);
    json_decref(v);
}

TEST(null_pointer_is_none)
{
    struct buf out = BUF_INIT, hex = BUF_INIT;
    ASSERT_EQ_INT(pickle_dump(&out, NULL, 0, NULL), 0);
    to_hex(&hex, &out);
    ASSERT_EQ_STR(hex.data, "80054e2e");
    buf_release(&out);
    buf_release(&hex);
}

TEST(embedded_nul_is_kept)
{
    json_t *v = json_stringn("a\0b", 3);
    struct buf out = BUF_INIT, hex = BUF_INIT;
    ASSERT_EQ_INT(pickle_dump(&out, v, 0, NULL), 0);
    to_hex(&hex, &out);
    /* pickle.dumps('a\x00b', 5) */
    ASSERT_EQ_STR(hex.data, "80059507000000000000008c0361006294" "2e");
    buf_release(&out);
    buf_release(&hex);
    json_decref(v);
}

RUN_TESTS()
