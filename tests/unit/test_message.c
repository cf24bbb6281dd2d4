/* SPDX-License-Identifier: MIT
 * test_message.c: the Celery v2 message decoder and encoder (protocol/message.c)
 * against the envelopes captured in spec celery-redis.md §7, the injected cases
 * of §7.4 (V2..V12) and hostile input: bad JSON, bad base64, bad shapes, invalid
 * UTF-8, deep nesting, huge numbers.
 */
#include "common.h"
#include "protocol/message.h"
#include "util/buf.h"
#include "util/time.h"
#include "util/uuid.h"

#include "harness.h"

/* ---- helpers ---- */

/* Our own base64 encoder, so a bug in util/base64.c cannot hide behind itself. */
static char *b64(const char *s, size_t len)
{
    static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const unsigned char *p = (const unsigned char *)s;
    char *out = xmalloc((len + 2) / 3 * 4 + 1), *o = out;
    size_t i = 0;
    for (; i + 3 <= len; i += 3) {
        *o++ = a[p[i] >> 2];
        *o++ = a[(p[i] & 3) << 4 | p[i + 1] >> 4];
        *o++ = a[(p[i + 1] & 15) << 2 | p[i + 2] >> 6];
        *o++ = a[p[i + 2] & 63];
    }
    if (len - i == 1) {
        *o++ = a[p[i] >> 2];
        *o++ = a[(p[i] & 3) << 4];
        *o++ = '=';
        *o++ = '=';
    } else if (len - i == 2) {
        *o++ = a[p[i] >> 2];
        *o++ = a[(p[i] & 3) << 4 | p[i + 1] >> 4];
        *o++ = a[(p[i + 1] & 15) << 2];
        *o++ = '=';
    }
    *o = '\0';
    return out;
}

#define TASK_ID "9a5dbd70-c0a6-4ca3-89f7-724d1cf11d09"
#define TAG "42c98787-0ebc-4cb4-8e74-2512162d6804"
#define EMBED_NULL "{\"callbacks\": null, \"errbacks\": null, \"chain\": null, \"chord\": null}"
#define BODY_ADD "[[2, 2], {}, " EMBED_NULL "]"
#define HEADERS_ADD                                                                         \
    "{\"lang\": \"py\", \"task\": \"tasks.add\", \"id\": \"" TASK_ID "\", \"shadow\": null, " \
    "\"eta\": null, \"expires\": null, \"group\": null, \"group_index\": null, "              \
    "\"retries\": 0, \"timelimit\": [null, null], \"root_id\": \"" TASK_ID "\", "             \
    "\"parent_id\": null, \"argsrepr\": \"[2, 2]\", \"kwargsrepr\": \"{}\", "                 \
    "\"origin\": \"gen9127@vm\", \"ignore_result\": false}"
#define PROPS_ADD                                                                           \
    "{\"correlation_id\": \"" TASK_ID "\", \"reply_to\": "                                    \
    "\"3b2b34cc-a9cf-3954-ba22-e50337d2c25c\", \"delivery_mode\": 2, \"delivery_info\": "     \
    "{\"exchange\": \"\", \"routing_key\": \"celery\"}, \"priority\": 0, "                    \
    "\"body_encoding\": \"base64\", \"delivery_tag\": \"" TAG "\"}"

/* Spec §7.1, the list element exactly as stored (866 bytes). */
static const char captured_add[] =
    "{\"body\": \"W1syLCAyXSwge30sIHsiY2FsbGJhY2tzIjogbnVsbCwgImVycmJhY2tzIjogbnVsbCwgImNoYWluIjog"
    "bnVsbCwgImNob3JkIjogbnVsbH1d\", \"content-encoding\": \"utf-8\", \"content-type\": "
    "\"application/json\", \"headers\": {\"lang\": \"py\", \"task\": \"tasks.add\", \"id\": "
    "\"9a5dbd70-c0a6-4ca3-89f7-724d1cf11d09\", \"shadow\": null, \"eta\": null, \"expires\": "
    "null, \"group\": null, \"group_index\": null, \"retries\": 0, \"timelimit\": [null, null], "
    "\"root_id\": \"9a5dbd70-c0a6-4ca3-89f7-724d1cf11d09\", \"parent_id\": null, \"argsrepr\": "
    "\"[2, 2]\", \"kwargsrepr\": \"{}\", \"origin\": \"gen9127@vm\", \"ignore_result\": false}, "
    "\"properties\": {\"correlation_id\": \"9a5dbd70-c0a6-4ca3-89f7-724d1cf11d09\", "
    "\"reply_to\": \"3b2b34cc-a9cf-3954-ba22-e50337d2c25c\", \"delivery_mode\": 2, "
    "\"delivery_info\": {\"exchange\": \"\", \"routing_key\": \"celery\"}, \"priority\": 0, "
    "\"body_encoding\": \"base64\", \"delivery_tag\": \"42c98787-0ebc-4cb4-8e74-2512162d6804\"}}";

/* Spec §7.3, the retry message, with the ids the capture abbreviates filled in. */
#define RETRY_ID "5151339d-3ff2-44ad-a908-e9d0c152cbf7"
#define RETRY_TAG "652e186e-5f0e-4c55-9b1e-6a7d2f0c8e41"
static const char captured_retry[] =
    "{\"body\": \"W1s3XSwge30sIHsiY2FsbGJhY2tzIjogbnVsbCwgImVycmJhY2tzIjogbnVsbCwgImNoYWluIjogbnVs"
    "bCwgImNob3JkIjogbnVsbH1d\", \"content-encoding\": \"utf-8\", \"content-type\": "
    "\"application/json\", \"headers\": {\"lang\": \"py\", \"task\": \"tasks.flaky\", \"id\": "
    "\"" RETRY_ID "\", \"shadow\": null, \"eta\": \"2026-11-25T11:42:00.354051+00:00\", "
    "\"expires\": null, \"group\": null, \"group_index\": null, \"retries\": 1, \"timelimit\": "
    "[null, null], \"root_id\": \"" RETRY_ID "\", \"parent_id\": \"" RETRY_ID "\", "
    "\"argsrepr\": \"(7,)\", \"kwargsrepr\": \"{}\", \"origin\": \"gen9685@vm\", "
    "\"ignore_result\": false}, \"properties\": {\"correlation_id\": \"" RETRY_ID "\", "
    "\"reply_to\": \"e4e5c2fc-8a3b-3c4d-9e5f-6a7b8c9d0e1f\", \"replaced_task_nesting\": 0, "
    "\"origin\": \"gen9727@vm\", \"delivery_mode\": 2, \"delivery_info\": {\"exchange\": \"\", "
    "\"routing_key\": \"celery\"}, \"priority\": 0, \"body_encoding\": \"base64\", "
    "\"delivery_tag\": \"" RETRY_TAG "\"}}";

/* Spec §7.6: the first message of chain(add.s(1, 1), add.s(2), add.s(3)). */
#define CHAIN_BODY                                                                          \
    "[[1, 1], {}, {\"callbacks\": null, \"errbacks\": null, \"chain\": [{\"task\": "          \
    "\"tasks.add\", \"args\": [3], \"kwargs\": {}, \"options\": {\"task_id\": "               \
    "\"0aef86e9-5b8e-4bd3-9a6e-3f2c1d0e9b71\", \"reply_to\": "                                \
    "\"dee323a1-7c4e-3f1b-a2d9-8e6f5c4b3a21\"}, \"subtask_type\": null, \"immutable\": "      \
    "false}, {\"task\": \"tasks.add\", \"args\": [2], \"kwargs\": {}, \"options\": "          \
    "{\"task_id\": \"906c4677-2d1f-4a8b-b3c5-6e7f8a9b0c12\", \"reply_to\": "                  \
    "\"dee323a1-7c4e-3f1b-a2d9-8e6f5c4b3a21\"}, \"subtask_type\": null, \"immutable\": "      \
    "false}], \"chord\": null}]"

/* Spec §7.6: a chord header member. */
#define CHORD_BODY                                                                          \
    "[[1, 1], {}, {\"callbacks\": null, \"errbacks\": null, \"chain\": null, \"chord\": "     \
    "{\"task\": \"tasks.echo\", \"args\": [], \"kwargs\": {}, \"options\": {\"task_id\": "    \
    "\"1e6cbf4e-3a2b-4c1d-8e9f-0a1b2c3d4e5f\"}, \"subtask_type\": null, \"immutable\": "      \
    "false}}]"

/* Builds an envelope. body: plain body text, base64-encoded into "body";
 * raw_body, when set, is the JSON value of "body" verbatim (and body is unused).
 * ctype NULL = application/json, "" = no content-type key. headers and props
 * are JSON text; NULL = the §7.1 ones; "" = key omitted. Caller frees. */
struct env {
    const char *body;
    const char *raw_body;
    const char *ctype;
    const char *headers;
    const char *props;
};

static char *env_build(const struct env *v)
{
    struct buf b = BUF_INIT;
    buf_adds(&b, "{\"body\": ");
    if (v->raw_body) {
        buf_adds(&b, v->raw_body);
    } else {
        const char *body = v->body ? v->body : BODY_ADD;
        char *enc = b64(body, strlen(body));
        buf_addf(&b, "\"%s\"", enc);
        free(enc);
    }
    buf_adds(&b, ", \"content-encoding\": \"utf-8\"");
    const char *ctype = v->ctype ? v->ctype : "application/json";
    if (*ctype)
        buf_addf(&b, ", \"content-type\": \"%s\"", ctype);
    const char *h = v->headers ? v->headers : HEADERS_ADD;
    if (*h)
        buf_addf(&b, ", \"headers\": %s", h);
    const char *p = v->props ? v->props : PROPS_ADD;
    if (*p)
        buf_addf(&b, ", \"properties\": %s", p);
    buf_adds(&b, "}");
    return buf_detach(&b, NULL);
}

static const char *settle_name(enum message_settle s)
{
    switch (s) {
    case SETTLE_NONE: return "SETTLE_NONE";
    case SETTLE_DROP: return "SETTLE_DROP";
    case SETTLE_REJECT: return "SETTLE_REJECT";
    case SETTLE_ACK: return "SETTLE_ACK";
    }
    return "SETTLE_?";
}

#define ASSERT_SETTLE(got, want)                                                \
    do {                                                                        \
        enum message_settle s_ = (got);                                         \
        if (s_ != (want))                                                       \
            FAIL("settle is %s, want %s", settle_name(s_), settle_name(want));  \
    } while (0)

/* Invariants of any successful envelope decode: what the broker relies on. */
static void check_envelope_invariants(const struct message *m)
{
    ASSERT_NOT_NULL(m->envelope);
    ASSERT_NOT_NULL(m->delivery_tag);
    ASSERT_NOT_NULL(m->exchange);
    ASSERT_NOT_NULL(m->routing_key);
    ASSERT_GE_INT(m->priority, 0);
    ASSERT_LE_INT(m->priority, 9);
}

/* Decodes the envelope (data, len) from queue, expecting success. */
static void envelope_ok_len(struct message *m, const char *data, size_t len, const char *queue)
{
    enum message_settle settle = SETTLE_REJECT;
    struct err e = {0};
    message_init(m);
    int rc = message_decode_envelope(m, data, len, queue, &settle, &e);
    if (rc)
        FAIL("message_decode_envelope returned %d (%s): %s", rc, settle_name(settle), e.msg);
    ASSERT_SETTLE(settle, SETTLE_NONE);
    check_envelope_invariants(m);
}

static void envelope_ok(struct message *m, const char *data, const char *queue)
{
    envelope_ok_len(m, data, strlen(data), queue);
}

/* Both steps, expecting success. */
static void decode_ok(struct message *m, const char *data)
{
    envelope_ok(m, data, "celery");
    enum message_settle settle = SETTLE_REJECT;
    struct err e = {0};
    int rc = message_decode_task(m, &settle, &e);
    if (rc)
        FAIL("message_decode_task returned %d (%s): %s", rc, settle_name(settle), e.msg);
    ASSERT_SETTLE(settle, SETTLE_NONE);
    ASSERT_TRUE(json_is_array(m->args));
    ASSERT_TRUE(json_is_object(m->kwargs));
    ASSERT_TRUE(m->embed == NULL || json_is_object(m->embed));
    ASSERT_NOT_NULL(m->task_name);
    ASSERT_NOT_NULL(m->task_id);
}

static void decode_env_ok(struct message *m, const struct env *v)
{
    char *text = env_build(v);
    decode_ok(m, text);
    free(text);
}

/* Expects the envelope step to fail with SETTLE_DROP and a reason. */
static void expect_drop_len(const char *data, size_t len)
{
    struct message m;
    enum message_settle settle = SETTLE_NONE;
    struct err e = {0};
    message_init(&m);
    int rc = message_decode_envelope(&m, data, len, "celery", &settle, &e);
    message_release(&m);
    if (rc >= 0)
        FAIL("message_decode_envelope accepted a bad envelope (%zu bytes)", len);
    ASSERT_SETTLE(settle, SETTLE_DROP);
    ASSERT_TRUE(e.msg[0] != '\0');
    ASSERT_EQ_INT(e.code, rc);
}

static void expect_drop(const char *data)
{
    expect_drop_len(data, strlen(data));
}

/* Expects the envelope to decode and the task step to fail with want; checks the
 * task id is known when want_id is not NULL. */
static void expect_task_fail(const struct env *v, enum message_settle want, const char *want_id)
{
    char *text = env_build(v);
    struct message m;
    envelope_ok(&m, text, "celery");
    free(text);
    enum message_settle settle = SETTLE_NONE;
    struct err e = {0};
    int rc = message_decode_task(&m, &settle, &e);
    if (rc >= 0) {
        message_release(&m);
        FAIL("message_decode_task accepted it (want %s)", settle_name(want));
    }
    ASSERT_SETTLE(settle, want);
    ASSERT_TRUE(e.msg[0] != '\0');
    if (want_id)
        ASSERT_EQ_STR(m.task_id, want_id);
    message_release(&m);
}

static json_t *parse(const char *text)
{
    json_error_t jerr;
    json_t *v = json_loads(text, JSON_DECODE_ANY, &jerr);
    if (!v)
        FAIL("test JSON does not parse: %s: %s", jerr.text, text);
    return v;
}

/* v equals the JSON text want. */
#define ASSERT_JSON_EQ(v, want)                                                 \
    do {                                                                        \
        json_t *w_ = parse(want);                                               \
        json_t *v_ = (v);                                                       \
        if (!json_equal(v_, w_)) {                                              \
            char *s_ = v_ ? json_dumps(v_, JSON_ENCODE_ANY) : NULL;             \
            printf("# %s:%d: got %s, want %s\n", __FILE__, __LINE__,            \
                   s_ ? s_ : "(null)", want);                                   \
            free(s_);                                                           \
            json_decref(w_);                                                    \
            FAIL("ASSERT_JSON_EQ(%s) failed", #v);                              \
        }                                                                       \
        json_decref(w_);                                                        \
    } while (0)

static bool is_uuid4(const char *s)
{
    if (!s || strlen(s) != 36)
        return false;
    for (int i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-')
                return false;
        } else if (!strchr("0123456789abcdef", s[i])) {
            return false;
        }
    }
    return s[14] == '4' && strchr("89ab", s[19]);
}

/* ---- captured messages (spec §7) ---- */

TEST(captured_7_1_add_envelope)
{
    struct message m;
    ASSERT_EQ_SIZE(strlen(captured_add), 866);
    envelope_ok(&m, captured_add, "celery");
    ASSERT_EQ_STR(m.delivery_tag, TAG);
    ASSERT_EQ_STR(m.exchange, "");
    ASSERT_EQ_STR(m.routing_key, "celery");
    ASSERT_FALSE(m.repaired);
    ASSERT_EQ_INT(m.priority, 0);
    message_release(&m);
}

TEST(captured_7_1_add_task)
{
    struct message m;
    decode_ok(&m, captured_add);
    ASSERT_EQ_STR(m.task_name, "tasks.add");
    ASSERT_EQ_STR(m.task_id, TASK_ID);
    ASSERT_EQ_STR(m.root_id, TASK_ID);
    ASSERT_NULL(m.parent_id);
    ASSERT_NULL(m.group);
    ASSERT_JSON_EQ(m.args, "[2, 2]");
    ASSERT_JSON_EQ(m.kwargs, "{}");
    /* embed: Python sends all four keys null; NULL means the same. */
    if (m.embed)
        ASSERT_JSON_EQ(m.embed, EMBED_NULL);
    ASSERT_EQ_INT(m.retries, 0);
    ASSERT_EQ_INT(m.priority, 0);
    ASSERT_NEAR(m.eta, 0, 0);
    ASSERT_NEAR(m.expires, 0, 0);
    ASSERT_NEAR(m.time_limit, 0, 0);
    ASSERT_NEAR(m.soft_time_limit, 0, 0);
    ASSERT_FALSE(m.ignore_result);
    ASSERT_FALSE(m.repaired);
    message_release(&m);
}

/* What goes into the unacked hash is the envelope as received. */
TEST(captured_7_1_envelope_json_unchanged)
{
    struct message m;
    decode_ok(&m, captured_add);
    char *json = message_envelope_json(&m);
    ASSERT_NOT_NULL(json);
    json_t *again = parse(json);
    json_t *orig = parse(captured_add);
    ASSERT_TRUE(json_equal(again, orig));
    ASSERT_NOT_CONTAINS(json, "\n");
    json_decref(again);
    json_decref(orig);
    free(json);
    message_release(&m);
}

TEST(captured_7_3_retry_message)
{
    struct message m;
    decode_ok(&m, captured_retry);
    ASSERT_EQ_STR(m.task_name, "tasks.flaky");
    ASSERT_EQ_STR(m.task_id, RETRY_ID);
    ASSERT_EQ_STR(m.parent_id, RETRY_ID);
    ASSERT_EQ_STR(m.root_id, RETRY_ID);
    ASSERT_EQ_STR(m.delivery_tag, RETRY_TAG);
    ASSERT_EQ_INT(m.retries, 1);
    ASSERT_NEAR(m.eta, 1795606920.354051, 1e-6);
    ASSERT_NEAR(m.expires, 0, 0);
    ASSERT_JSON_EQ(m.args, "[7]");
    ASSERT_JSON_EQ(m.kwargs, "{}");
    message_release(&m);
}

/* Unknown properties (replaced_task_nesting, origin) survive into the unacked copy. */
TEST(captured_7_3_unknown_properties_preserved)
{
    struct message m;
    decode_ok(&m, captured_retry);
    char *json = message_envelope_json(&m);
    json_t *v = parse(json);
    json_t *props = json_object_get(v, "properties");
    ASSERT_JSON_EQ(json_object_get(props, "replaced_task_nesting"), "0");
    ASSERT_JSON_EQ(json_object_get(props, "origin"), "\"gen9727@vm\"");
    ASSERT_JSON_EQ(json_object_get(props, "reply_to"),
                   "\"e4e5c2fc-8a3b-3c4d-9e5f-6a7b8c9d0e1f\"");
    json_decref(v);
    free(json);
    message_release(&m);
}

TEST(captured_7_6_chain_body)
{
    struct message m;
    decode_env_ok(&m, &(struct env){.body = CHAIN_BODY});
    ASSERT_JSON_EQ(m.args, "[1, 1]");
    ASSERT_NOT_NULL(m.embed);
    json_t *chain = json_object_get(m.embed, "chain");
    ASSERT_TRUE(json_is_array(chain));
    ASSERT_EQ_SIZE(json_array_size(chain), 2);
    /* Reverse order: the step to run next is the last element. */
    json_t *next = json_array_get(chain, 1);
    ASSERT_EQ_STR(json_string_value(json_object_get(next, "task")), "tasks.add");
    ASSERT_JSON_EQ(json_object_get(next, "args"), "[2]");
    ASSERT_EQ_STR(json_string_value(json_object_get(json_object_get(next, "options"), "task_id")),
                  "906c4677-2d1f-4a8b-b3c5-6e7f8a9b0c12");
    ASSERT_JSON_EQ(json_object_get(json_array_get(chain, 0), "args"), "[3]");
    ASSERT_TRUE(json_is_null(json_object_get(m.embed, "chord")));
    message_release(&m);
}

TEST(captured_7_6_chord_header_member)
{
    const char *headers =
        "{\"lang\": \"py\", \"task\": \"tasks.add\", \"id\": \"" TASK_ID "\", \"group\": "
        "\"08c408cc-1b2a-4c3d-9e8f-7a6b5c4d3e2f\", \"group_index\": 1, \"retries\": 0, "
        "\"timelimit\": [null, null], \"root_id\": \"" TASK_ID "\", \"parent_id\": null}";
    struct message m;
    decode_env_ok(&m, &(struct env){.body = CHORD_BODY, .headers = headers});
    ASSERT_EQ_STR(m.group, "08c408cc-1b2a-4c3d-9e8f-7a6b5c4d3e2f");
    json_t *chord = json_object_get(m.embed, "chord");
    ASSERT_EQ_STR(json_string_value(json_object_get(chord, "task")), "tasks.echo");
    message_release(&m);
}

/* ---- spec §7.4, messages injected as a C client would ---- */

/* V1: the minimal envelope of §2.4. */
TEST(v1_minimal_envelope)
{
    const char *headers = "{\"lang\": \"c\", \"task\": \"tasks.add\", \"id\": \"" TASK_ID "\"}";
    const char *props = "{\"delivery_tag\": \"" TAG "\", \"body_encoding\": \"base64\", "
                        "\"delivery_info\": {\"exchange\": \"\", \"routing_key\": \"celery\"}}";
    struct message m;
    decode_env_ok(&m, &(struct env){.headers = headers, .props = props});
    ASSERT_EQ_STR(m.task_name, "tasks.add");
    ASSERT_EQ_INT(m.retries, 0);
    ASSERT_NULL(m.root_id);
    ASSERT_NULL(m.parent_id);
    ASSERT_EQ_INT(m.priority, 0);
    ASSERT_FALSE(m.repaired);
    message_release(&m);
}

/* V2: no body_encoding, the body is the JSON text itself. */
TEST(v2_plain_body_without_body_encoding)
{
    const char *props = "{\"delivery_tag\": \"" TAG "\", \"delivery_info\": {\"exchange\": \"\", "
                        "\"routing_key\": \"celery\"}}";
    struct message m;
    decode_env_ok(&m, &(struct env){.raw_body = "\"[[3, 4], {\\\"z\\\": 1}, null]\"",
                                    .props = props});
    ASSERT_JSON_EQ(m.args, "[3, 4]");
    ASSERT_JSON_EQ(m.kwargs, "{\"z\": 1}");
    ASSERT_NULL(m.embed);
    message_release(&m);
}

TEST(v2_plain_body_with_utf8_or_null_encoding)
{
    const char *props[] = {
        "{\"delivery_tag\": \"" TAG "\", \"body_encoding\": \"utf-8\", \"delivery_info\": "
        "{\"exchange\": \"\", \"routing_key\": \"celery\"}}",
        "{\"delivery_tag\": \"" TAG "\", \"body_encoding\": null, \"delivery_info\": "
        "{\"exchange\": \"\", \"routing_key\": \"celery\"}}",
    };
    for (size_t i = 0; i < ARRAY_SIZE(props); i++) {
        struct message m;
        decode_env_ok(&m, &(struct env){.raw_body = "\"[[5], {}, {}]\"", .props = props[i]});
        ASSERT_JSON_EQ(m.args, "[5]");
        message_release(&m);
    }
}

/* V3: no delivery_tag: a fresh UUID4 tag, recorded in the envelope too. */
TEST(v3_no_delivery_tag_repaired)
{
    const char *props = "{\"body_encoding\": \"base64\", \"delivery_info\": {\"exchange\": \"\", "
                        "\"routing_key\": \"celery\"}}";
    char *text = env_build(&(struct env){.props = props});
    struct message m1, m2;
    envelope_ok(&m1, text, "celery");
    ASSERT_TRUE(m1.repaired);
    ASSERT_TRUE(is_uuid4(m1.delivery_tag));
    ASSERT_EQ_STR(m1.routing_key, "celery");
    char *json = message_envelope_json(&m1);
    json_t *v = parse(json);
    ASSERT_EQ_STR(json_string_value(json_object_get(json_object_get(v, "properties"),
                                                    "delivery_tag")),
                  m1.delivery_tag);
    json_decref(v);
    free(json);
    /* The task still decodes. */
    enum message_settle settle;
    ASSERT_EQ_INT(message_decode_task(&m1, &settle, NULL), 0);
    ASSERT_EQ_STR(m1.task_name, "tasks.add");
    /* Every repair makes a different tag. */
    envelope_ok(&m2, text, "celery");
    ASSERT_TRUE(is_uuid4(m2.delivery_tag));
    ASSERT_TRUE(strcmp(m1.delivery_tag, m2.delivery_tag) != 0);
    message_release(&m1);
    message_release(&m2);
    free(text);
}

TEST(v3_non_string_delivery_tag_repaired)
{
    const char *props = "{\"delivery_tag\": 17, \"body_encoding\": \"base64\", \"delivery_info\": "
                        "{\"exchange\": \"\", \"routing_key\": \"celery\"}}";
    char *text = env_build(&(struct env){.props = props});
    struct message m;
    envelope_ok(&m, text, "celery");
    ASSERT_TRUE(m.repaired);
    ASSERT_TRUE(is_uuid4(m.delivery_tag));
    message_release(&m);
    free(text);
}

/* V4: a content type outside accept_content: reject, the task id is known. */
TEST(v4_disallowed_content_type_rejected)
{
    expect_task_fail(&(struct env){.ctype = "application/x-foo"}, SETTLE_REJECT, TASK_ID);
    expect_task_fail(&(struct env){.ctype = "application/x-python-serialize"}, SETTLE_REJECT,
                     TASK_ID);
    expect_task_fail(&(struct env){.ctype = "application/x-yaml"}, SETTLE_REJECT, TASK_ID);
}

/* A missing content-type is application/data: not accepted either. */
TEST(v4_missing_content_type_rejected)
{
    expect_task_fail(&(struct env){.ctype = ""}, SETTLE_REJECT, TASK_ID);
}

/* V5: protocol v1 (task in the body, headers {}) is not supported: reject. */
/* V5: protocol 1 (body {task, id, args, ...}, no 'task' header) runs as
 * Celery's worker runs it: converted to v2 headers and [args, kwargs, embed]. */
TEST(v5_protocol_v1_converted)
{
    const char *body = "{\"task\": \"tasks.add\", \"id\": \"" TASK_ID "\", \"args\": [2, 2], "
                       "\"kwargs\": {\"z\": 1}, \"retries\": 2, \"eta\": \"2030-01-01T00:00:00+00:00\", "
                       "\"expires\": null, \"utc\": true, \"callbacks\": [{\"task\": \"t.cb\"}], "
                       "\"errbacks\": null, \"timelimit\": [5, 3], \"taskset\": \"g-1\", "
                       "\"chord\": null}";
    struct message m;
    decode_env_ok(&m, &(struct env){.body = body, .headers = "{}"});
    ASSERT_EQ_STR(m.task_name, "tasks.add");
    ASSERT_EQ_STR(m.task_id, TASK_ID);
    ASSERT_EQ_INT(json_array_size(m.args), 2);
    ASSERT_EQ_INT(json_integer_value(json_object_get(m.kwargs, "z")), 1);
    ASSERT_EQ_INT(m.retries, 2);
    ASSERT_NEAR(m.eta, 1893456000.0, 1e-6);
    ASSERT_NEAR(m.time_limit, 5, 0);
    ASSERT_NEAR(m.soft_time_limit, 3, 0);
    ASSERT_EQ_STR(m.group, "g-1");
    ASSERT_TRUE(json_is_array(json_object_get(m.embed, "callbacks")));
    message_release(&m);
}

/* V5b: a protocol 1 body without a task name, or without an id, is rejected. */
TEST(v5_protocol_v1_incomplete_rejected)
{
    expect_task_fail(&(struct env){.body = "{\"args\": []}", .headers = "{}"}, SETTLE_REJECT, NULL);
    expect_task_fail(&(struct env){.body = "{\"task\": \"tasks.add\", \"args\": []}",
                                   .headers = "{}"},
                     SETTLE_REJECT, NULL);
    expect_task_fail(&(struct env){.body = "{\"task\": \"tasks.add\", \"id\": \"" TASK_ID
                                           "\", \"args\": 5}",
                                   .headers = "{}"},
                     SETTLE_REJECT, TASK_ID);
}

/* V6: expires in the past is parsed (the caller revokes it, not the decoder). */
TEST(v6_expires_2020_parsed)
{
    const char *headers = "{\"lang\": \"c\", \"task\": \"tasks.add\", \"id\": \"" TASK_ID "\", "
                          "\"expires\": \"2020-01-01T00:00:00+00:00\"}";
    struct message m;
    decode_env_ok(&m, &(struct env){.headers = headers});
    ASSERT_NEAR(m.expires, 1577836800.0, 1e-6);
    ASSERT_NEAR(m.eta, 0, 0);
    message_release(&m);
}

/* V7: timelimit is [hard, soft]. */
TEST(v7_timelimit_hard_soft)
{
    const char *headers = "{\"lang\": \"c\", \"task\": \"tasks.add\", \"id\": \"" TASK_ID "\", "
                          "\"timelimit\": [2, 1]}";
    struct message m;
    decode_env_ok(&m, &(struct env){.headers = headers});
    ASSERT_NEAR(m.time_limit, 2, 0);
    ASSERT_NEAR(m.soft_time_limit, 1, 0);
    message_release(&m);

    headers = "{\"task\": \"tasks.add\", \"id\": \"" TASK_ID "\", \"timelimit\": [2.5, null]}";
    decode_env_ok(&m, &(struct env){.headers = headers});
    ASSERT_NEAR(m.time_limit, 2.5, 0);
    ASSERT_NEAR(m.soft_time_limit, 0, 0);
    message_release(&m);

    headers = "{\"task\": \"tasks.add\", \"id\": \"" TASK_ID "\", \"timelimit\": [null, 30]}";
    decode_env_ok(&m, &(struct env){.headers = headers});
    ASSERT_NEAR(m.time_limit, 0, 0);
    ASSERT_NEAR(m.soft_time_limit, 30, 0);
    message_release(&m);
}

TEST(v7_bad_timelimit_rejected)
{
    const char *bad[] = {"\"5\"", "[1]", "[1, 2, 3]", "[\"a\", 1]", "{\"hard\": 1}", "7"};
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        char headers[256];
        snprintf(headers, sizeof(headers),
                 "{\"task\": \"tasks.add\", \"id\": \"" TASK_ID "\", \"timelimit\": %s}", bad[i]);
        expect_task_fail(&(struct env){.headers = headers}, SETTLE_REJECT, TASK_ID);
    }
}

/* V8: an eta with 'Z'. */
TEST(v8_eta_z)
{
    const char *headers = "{\"lang\": \"c\", \"task\": \"tasks.echo\", \"id\": \"" TASK_ID "\", "
                          "\"eta\": \"2026-11-25T11:42:55Z\"}";
    struct message m;
    decode_env_ok(&m, &(struct env){.headers = headers});
    ASSERT_NEAR(m.eta, 1795606975.0, 1e-6);
    message_release(&m);
}

/* V9: ignore_result. */
TEST(v9_ignore_result)
{
    const char *headers = "{\"task\": \"tasks.add\", \"id\": \"" TASK_ID "\", "
                          "\"ignore_result\": true}";
    struct message m;
    decode_env_ok(&m, &(struct env){.headers = headers});
    ASSERT_TRUE(m.ignore_result);
    message_release(&m);
}

/* V10: no delivery_info: exchange "" and routing key = the queue it came from. */
TEST(v10_no_delivery_info_repaired)
{
    const char *props = "{\"delivery_tag\": \"" TAG "\", \"body_encoding\": \"base64\"}";
    char *text = env_build(&(struct env){.props = props});
    struct message m;
    envelope_ok(&m, text, "books");
    free(text);
    ASSERT_TRUE(m.repaired);
    ASSERT_EQ_STR(m.delivery_tag, TAG);
    ASSERT_EQ_STR(m.exchange, "");
    ASSERT_EQ_STR(m.routing_key, "books");
    char *json = message_envelope_json(&m);
    json_t *v = parse(json);
    ASSERT_JSON_EQ(json_object_get(json_object_get(v, "properties"), "delivery_info"),
                   "{\"exchange\": \"\", \"routing_key\": \"books\"}");
    json_decref(v);
    free(json);
    message_release(&m);
}

TEST(v10_partial_delivery_info_repaired)
{
    const char *props = "{\"delivery_tag\": \"" TAG "\", \"body_encoding\": \"base64\", "
                        "\"delivery_info\": {\"exchange\": \"\"}}";
    char *text = env_build(&(struct env){.props = props});
    struct message m;
    envelope_ok(&m, text, "q2");
    free(text);
    ASSERT_TRUE(m.repaired);
    ASSERT_EQ_STR(m.routing_key, "q2");
    message_release(&m);

    props = "{\"delivery_tag\": \"" TAG "\", \"body_encoding\": \"base64\", "
            "\"delivery_info\": {\"routing_key\": \"q3\"}}";
    text = env_build(&(struct env){.props = props});
    envelope_ok(&m, text, "q2");
    free(text);
    ASSERT_TRUE(m.repaired);
    ASSERT_EQ_STR(m.exchange, "");
    ASSERT_EQ_STR(m.routing_key, "q3");
    message_release(&m);
}

/* No properties at all: both the tag and delivery_info are missing. */
TEST(no_properties_repaired)
{
    char *text = env_build(&(struct env){.props = ""});
    struct message m;
    envelope_ok(&m, text, "celery");
    free(text);
    ASSERT_TRUE(m.repaired);
    ASSERT_TRUE(is_uuid4(m.delivery_tag));
    ASSERT_EQ_STR(m.routing_key, "celery");
    /* Without body_encoding the body is taken as plain text, which this is not. */
    enum message_settle settle = SETTLE_NONE;
    ASSERT_TRUE(message_decode_task(&m, &settle, NULL) < 0);
    ASSERT_SETTLE(settle, SETTLE_ACK);
    message_release(&m);
}

/* V11: args [], kwargs with float, null, bool, nested values. */
TEST(v11_kwargs_types_round_trip)
{
    const char *body = "[[], {\"f\": 1.5, \"n\": null, \"t\": true, \"b\": false, \"s\": "
                       "\"caf\\u00e9 \\u65e5\", \"l\": [1, {\"x\": []}]}, " EMBED_NULL "]";
    struct message m;
    decode_env_ok(&m, &(struct env){.body = body});
    ASSERT_JSON_EQ(m.args, "[]");
    ASSERT_JSON_EQ(m.kwargs, "{\"f\": 1.5, \"n\": null, \"t\": true, \"b\": false, \"s\": "
                             "\"caf\\u00e9 \\u65e5\", \"l\": [1, {\"x\": []}]}");
    message_release(&m);
}

/* V12: a naive eta is UTC. */
TEST(v12_naive_eta_is_utc)
{
    const char *headers = "{\"task\": \"tasks.add\", \"id\": \"" TASK_ID "\", "
                          "\"eta\": \"2026-11-25T11:43:53.574058\"}";
    struct message m;
    decode_env_ok(&m, &(struct env){.headers = headers});
    ASSERT_NEAR(m.eta, 1795607033.574058, 1e-6);
    message_release(&m);
}

/* ---- header validation ---- */

TEST(invalid_eta_or_expires_rejected)
{
    const char *bad[] = {
        "\"eta\": \"tomorrow\"",
        "\"eta\": 1795607033",
        "\"eta\": \"2026-13-01T00:00:00\"",
        "\"expires\": \"\"",
        "\"expires\": [\"2026-11-25T11:43:53Z\"]",
        "\"expires\": true",
    };
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        char headers[256];
        snprintf(headers, sizeof(headers), "{\"task\": \"tasks.add\", \"id\": \"" TASK_ID "\", %s}",
                 bad[i]);
        expect_task_fail(&(struct env){.headers = headers}, SETTLE_REJECT, TASK_ID);
    }
}

TEST(headers_not_object_rejected)
{
    expect_task_fail(&(struct env){.headers = "[]"}, SETTLE_REJECT, NULL);
    expect_task_fail(&(struct env){.headers = "\"task\""}, SETTLE_REJECT, NULL);
    expect_task_fail(&(struct env){.headers = "null"}, SETTLE_REJECT, NULL);
    expect_task_fail(&(struct env){.headers = ""}, SETTLE_REJECT, NULL);
}

TEST(task_header_missing_or_not_string_rejected)
{
    expect_task_fail(&(struct env){.headers = "{\"id\": \"" TASK_ID "\"}"}, SETTLE_REJECT,
                     TASK_ID);
    expect_task_fail(&(struct env){.headers = "{\"task\": 42, \"id\": \"" TASK_ID "\"}"},
                     SETTLE_REJECT, TASK_ID);
    expect_task_fail(&(struct env){.headers = "{\"task\": null, \"id\": \"" TASK_ID "\"}"},
                     SETTLE_REJECT, TASK_ID);
}

TEST(id_header_missing_or_not_string_rejected)
{
    expect_task_fail(&(struct env){.headers = "{\"task\": \"tasks.add\"}"}, SETTLE_REJECT, NULL);
    expect_task_fail(&(struct env){.headers = "{\"task\": \"tasks.add\", \"id\": 7}"},
                     SETTLE_REJECT, NULL);
}

TEST(retries_values)
{
    struct message m;
    decode_env_ok(&m, &(struct env){.headers = "{\"task\": \"t\", \"id\": \"i\", \"retries\": 3}"});
    ASSERT_EQ_INT(m.retries, 3);
    message_release(&m);
    decode_env_ok(&m, &(struct env){.headers = "{\"task\": \"t\", \"id\": \"i\", "
                                               "\"retries\": null}"});
    ASSERT_EQ_INT(m.retries, 0);
    message_release(&m);
    decode_env_ok(&m, &(struct env){.headers = "{\"task\": \"t\", \"id\": \"i\", "
                                               "\"retries\": 2147483647}"});
    ASSERT_EQ_INT(m.retries, 2147483647);
    message_release(&m);
}

/* A retry count past int must be refused or saturated, never wrapped (2^32 + 1 -> 1). */
TEST(retries_overflow_not_truncated)
{
    const char *big[] = {"4294967297", "9223372036854775807", "2147483648"};
    for (size_t i = 0; i < ARRAY_SIZE(big); i++) {
        char headers[128];
        snprintf(headers, sizeof(headers), "{\"task\": \"t\", \"id\": \"i\", \"retries\": %s}",
                 big[i]);
        char *text = env_build(&(struct env){.headers = headers});
        struct message m;
        envelope_ok(&m, text, "celery");
        free(text);
        enum message_settle settle = SETTLE_NONE;
        int rc = message_decode_task(&m, &settle, NULL);
        if (rc == 0)
            ASSERT_EQ_INT(m.retries, 2147483647);
        else
            ASSERT_SETTLE(settle, SETTLE_REJECT);
        message_release(&m);
    }
}

/* ---- priority ---- */

static int priority_of(const char *value)
{
    char props[256];
    snprintf(props, sizeof(props),
             "{\"delivery_tag\": \"" TAG "\", \"body_encoding\": \"base64\", \"delivery_info\": "
             "{\"exchange\": \"\", \"routing_key\": \"celery\"}, \"priority\": %s}",
             value);
    char *text = env_build(&(struct env){.props = props});
    struct message m;
    decode_ok(&m, text);
    free(text);
    int p = m.priority;
    message_release(&m);
    return p;
}

TEST(priority_clamped)
{
    ASSERT_EQ_INT(priority_of("0"), 0);
    ASSERT_EQ_INT(priority_of("3"), 3);
    ASSERT_EQ_INT(priority_of("9"), 9);
    ASSERT_EQ_INT(priority_of("10"), 9);
    ASSERT_EQ_INT(priority_of("255"), 9);
    ASSERT_EQ_INT(priority_of("-1"), 0);
    ASSERT_EQ_INT(priority_of("-2147483649"), 0);
    /* Would read as 3 if narrowed to 32 bits before clamping. */
    ASSERT_EQ_INT(priority_of("4294967299"), 9);
    ASSERT_EQ_INT(priority_of("9223372036854775807"), 9);
}

TEST(priority_invalid_is_zero)
{
    ASSERT_EQ_INT(priority_of("null"), 0);
    ASSERT_EQ_INT(priority_of("\"high\""), 0);
    ASSERT_EQ_INT(priority_of("[5]"), 0);
    ASSERT_EQ_INT(priority_of("{}"), 0);
    ASSERT_EQ_INT(priority_of("true"), 0);
}

/* kombu computes int(priority): a float priority is truncated, not ignored. */
TEST(priority_float_truncated_like_python)
{
    ASSERT_EQ_INT(priority_of("7.0"), 7);
    ASSERT_EQ_INT(priority_of("5.7"), 5);
    ASSERT_EQ_INT(priority_of("12.5"), 9);
}

/* ---- envelopes that are not usable at all: drop ---- */

TEST(not_json_dropped)
{
    expect_drop("");
    expect_drop("{");
    expect_drop("{not json}");
    expect_drop("hello");
    expect_drop("{\"body\": \"x\",}");
    expect_drop("{\"body\": 'single'}");
    expect_drop(" ");
}

TEST(json_not_object_dropped)
{
    expect_drop("[1, 2]");
    expect_drop("\"envelope\"");
    expect_drop("null");
    expect_drop("42");
    expect_drop("true");
}

TEST(trailing_garbage_dropped)
{
    char *text = env_build(&(struct env){0});
    struct buf b = BUF_INIT;
    buf_adds(&b, text);
    buf_adds(&b, " x");
    expect_drop(b.data);
    buf_release(&b);
    buf_adds(&b, text);
    buf_adds(&b, "{}");
    expect_drop(b.data);
    buf_release(&b);
    free(text);
}

/* Only (data, len) is read: no NUL terminator needed, bytes past len ignored. */
TEST(envelope_length_respected)
{
    char *text = env_build(&(struct env){0});
    size_t len = strlen(text);
    char *exact = xmalloc(len); /* not NUL-terminated */
    memcpy(exact, text, len);
    struct message m;
    envelope_ok_len(&m, exact, len, "celery");
    enum message_settle settle;
    ASSERT_EQ_INT(message_decode_task(&m, &settle, NULL), 0);
    message_release(&m);
    free(exact);

    struct buf b = BUF_INIT;
    buf_adds(&b, text);
    buf_adds(&b, "GARBAGE AFTER THE END");
    envelope_ok_len(&m, b.data, len, "celery");
    message_release(&m);
    /* And a prefix of a valid envelope is not one. */
    expect_drop_len(text, len - 1);
    buf_release(&b);
    free(text);
}

TEST(envelope_with_nul_byte_dropped)
{
    char *text = env_build(&(struct env){0});
    size_t len = strlen(text);
    text[len / 2] = '\0';
    expect_drop_len(text, len);
    free(text);
}

TEST(invalid_utf8_in_envelope_dropped)
{
    expect_drop("{\"body\": \"\xc3\x28\", \"headers\": {}, \"properties\": {}}");
    expect_drop("{\"body\": \"x\", \"headers\": {\"task\": \"t\xff\"}, \"properties\": {}}");
    /* overlong '/' and a UTF-16 surrogate encoded as UTF-8 */
    expect_drop("{\"body\": \"\xc0\xaf\", \"properties\": {}}");
    expect_drop("{\"body\": \"\xed\xa0\x80\", \"properties\": {}}");
}

/* 100000 '[' : no recursion to the bottom of the stack. */
TEST(deep_nesting_envelope_dropped)
{
    size_t n = 100000;
    char *deep = xmalloc(n + 1);
    memset(deep, '[', n);
    deep[n] = '\0';
    expect_drop(deep);
    free(deep);

    struct buf b = BUF_INIT;
    buf_adds(&b, "{\"headers\": ");
    for (size_t i = 0; i < n; i++)
        buf_addch(&b, '[');
    for (size_t i = 0; i < n; i++)
        buf_addch(&b, ']');
    buf_adds(&b, ", \"properties\": {}}");
    expect_drop(b.data);
    buf_release(&b);
}

/* ---- bodies that fail to decode: ack ---- */

TEST(body_not_base64_acked)
{
    const char *bad[] = {
        "\"!!!not base64!!!\"",
        "\"W1tdLCB7fSwge31\"",       /* length not a multiple of 4 */
        "\"W1tdLCB7fSwge3=d\"",      /* padding in the middle */
        "\"W1tdLCB7\\nfSwge31d\"",   /* a line break */
        "\"W1tdLCB7fSwge31d====\"",  /* too much padding */
        "\"W1tdLCB7fSwge31d W1td\"", /* a space */
        "\"W1tdLCB7fSwge31-\"",      /* URL-safe alphabet */
    };
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++)
        expect_task_fail(&(struct env){.raw_body = bad[i]}, SETTLE_ACK, TASK_ID);
}

TEST(body_base64_but_not_json_acked)
{
    expect_task_fail(&(struct env){.body = "[[2, 2], {}"}, SETTLE_ACK, TASK_ID);
    expect_task_fail(&(struct env){.body = "not json"}, SETTLE_ACK, TASK_ID);
    expect_task_fail(&(struct env){.body = ""}, SETTLE_ACK, TASK_ID);
    expect_task_fail(&(struct env){.body = "[[], {}, {}] trailing"}, SETTLE_ACK, TASK_ID);
}

TEST(body_plain_not_json_acked)
{
    const char *props = "{\"delivery_tag\": \"" TAG "\", \"delivery_info\": {\"exchange\": \"\", "
                        "\"routing_key\": \"celery\"}}";
    expect_task_fail(&(struct env){.raw_body = "\"[[1], {}\"", .props = props}, SETTLE_ACK,
                     TASK_ID);
}

TEST(body_field_missing_or_not_string)
{
    const char *raw[] = {"42", "null", "[\"W1tdLCB7fSwge31d\"]", "{}"};
    for (size_t i = 0; i < ARRAY_SIZE(raw); i++) {
        char *text = env_build(&(struct env){.raw_body = raw[i]});
        struct message m;
        envelope_ok(&m, text, "celery");
        free(text);
        enum message_settle settle = SETTLE_NONE;
        ASSERT_TRUE(message_decode_task(&m, &settle, NULL) < 0);
        ASSERT_TRUE(settle == SETTLE_ACK || settle == SETTLE_REJECT);
        ASSERT_EQ_STR(m.task_id, TASK_ID);
        message_release(&m);
    }
}

TEST(unknown_body_encoding_refused)
{
    const char *props = "{\"delivery_tag\": \"" TAG "\", \"body_encoding\": \"rot13\", "
                        "\"delivery_info\": {\"exchange\": \"\", \"routing_key\": \"celery\"}}";
    char *text = env_build(&(struct env){.raw_body = "\"[[], {}, {}]\"", .props = props});
    struct message m;
    envelope_ok(&m, text, "celery");
    free(text);
    enum message_settle settle = SETTLE_NONE;
    ASSERT_TRUE(message_decode_task(&m, &settle, NULL) < 0);
    ASSERT_TRUE(settle == SETTLE_ACK || settle == SETTLE_REJECT);
    message_release(&m);
}

TEST(invalid_utf8_in_body_acked)
{
    expect_task_fail(&(struct env){.body = "[[\"\xff\xfe\"], {}, {}]"}, SETTLE_ACK, TASK_ID);
    expect_task_fail(&(struct env){.body = "[[\"caf\xc3\"], {}, {}]"}, SETTLE_ACK, TASK_ID);
    expect_task_fail(&(struct env){.body = "[[], {\"k\xc0\xaf\": 1}, {}]"}, SETTLE_ACK, TASK_ID);
}

TEST(deep_nesting_body_acked)
{
    size_t n = 100000;
    struct buf b = BUF_INIT;
    for (size_t i = 0; i < n; i++)
        buf_addch(&b, '[');
    expect_task_fail(&(struct env){.body = b.data}, SETTLE_ACK, TASK_ID);
    /* Balanced, and inside args. */
    buf_reset(&b);
    buf_adds(&b, "[");
    for (size_t i = 0; i < n; i++)
        buf_addch(&b, '[');
    for (size_t i = 0; i < n; i++)
        buf_addch(&b, ']');
    buf_adds(&b, ", {}, {}]");
    expect_task_fail(&(struct env){.body = b.data}, SETTLE_ACK, TASK_ID);
    buf_release(&b);
}

/* ---- bodies of the wrong shape: reject ---- */

TEST(body_not_three_array_rejected)
{
    const char *bad[] = {"{\"args\": [1]}", "[[1], {}]", "[[], {}, {}, 4]", "[]"};
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++)
        expect_task_fail(&(struct env){.body = bad[i]}, SETTLE_REJECT, TASK_ID);
}

/* A body that is valid JSON but a scalar decoded fine: its shape is wrong, so
 * reject like any other non-[args, kwargs, embed] body (not ack as undecodable). */
TEST(body_json_scalar_rejected)
{
    const char *bad[] = {"\"[[], {}, {}]\"", "42", "null", "true"};
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        printf("# body %s\n", bad[i]);
        expect_task_fail(&(struct env){.body = bad[i]}, SETTLE_REJECT, TASK_ID);
    }
}

TEST(kwargs_not_object_rejected)
{
    const char *bad[] = {"[[], [], {}]", "[[], null, {}]", "[[], \"k\", {}]", "[[], 3, {}]"};
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++)
        expect_task_fail(&(struct env){.body = bad[i]}, SETTLE_REJECT, TASK_ID);
}

TEST(args_not_list_rejected)
{
    const char *bad[] = {"[{}, {}, {}]", "[null, {}, {}]", "[\"ab\", {}, {}]", "[5, {}, {}]"};
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++)
        expect_task_fail(&(struct env){.body = bad[i]}, SETTLE_REJECT, TASK_ID);
}

TEST(embed_null_accepted_other_types_rejected)
{
    struct message m;
    decode_env_ok(&m, &(struct env){.body = "[[1], {}, null]"});
    ASSERT_NULL(m.embed);
    message_release(&m);
    decode_env_ok(&m, &(struct env){.body = "[[1], {}, {}]"});
    ASSERT_TRUE(json_is_object(m.embed));
    message_release(&m);
    expect_task_fail(&(struct env){.body = "[[1], {}, 5]"}, SETTLE_REJECT, TASK_ID);
    expect_task_fail(&(struct env){.body = "[[1], {}, []]"}, SETTLE_REJECT, TASK_ID);
}

/* ---- numbers ---- */

TEST(int64_extremes_exact)
{
    struct message m;
    decode_env_ok(&m, &(struct env){.body = "[[9223372036854775807, -9223372036854775808, 0], "
                                            "{}, {}]"});
    ASSERT_TRUE(json_is_integer(json_array_get(m.args, 0)));
    ASSERT_TRUE(json_integer_value(json_array_get(m.args, 0)) == INT64_MAX);
    ASSERT_TRUE(json_integer_value(json_array_get(m.args, 1)) == INT64_MIN);
    message_release(&m);
}

/* Beyond int64: report (ack as undecodable), never hand the task a wrapped value. */
TEST(huge_integers_not_truncated)
{
    const char *bodies[] = {
        "[[123456789012345678901234567890], {}, {}]",
        "[[9223372036854775808], {}, {}]",
        "[[-9223372036854775809], {}, {}]",
        "[[], {\"n\": 18446744073709551617}, {}]",
    };
    for (size_t i = 0; i < ARRAY_SIZE(bodies); i++) {
        char *text = env_build(&(struct env){.body = bodies[i]});
        struct message m;
        envelope_ok(&m, text, "celery");
        free(text);
        enum message_settle settle = SETTLE_NONE;
        int rc = message_decode_task(&m, &settle, NULL);
        if (rc == 0) {
            json_t *v = json_array_size(m.args) ? json_array_get(m.args, 0)
                                                : json_object_get(m.kwargs, "n");
            if (json_is_integer(v))
                FAIL("body %s decoded to integer %" JSON_INTEGER_FORMAT, bodies[i],
                     json_integer_value(v));
        } else {
            ASSERT_SETTLE(settle, SETTLE_ACK);
        }
        message_release(&m);
    }
}

TEST(huge_and_tiny_reals)
{
    const char *bodies[] = {"[[1e308, 1e-320, -0.0, 5e-324], {}, {}]", "[[1e400], {}, {}]",
                            "[[-1e400], {}, {}]"};
    for (size_t i = 0; i < ARRAY_SIZE(bodies); i++) {
        char *text = env_build(&(struct env){.body = bodies[i]});
        struct message m;
        envelope_ok(&m, text, "celery");
        free(text);
        enum message_settle settle = SETTLE_NONE;
        int rc = message_decode_task(&m, &settle, NULL);
        if (rc)
            ASSERT_SETTLE(settle, SETTLE_ACK);
        message_release(&m);
    }
}

/* Python's json writes NaN, Infinity, -Infinity (spec §2.5); a body carrying
 * them comes from a healthy client and must decode. */
TEST(python_special_floats_in_body_accepted)
{
    struct message m;
    char *text = env_build(&(struct env){.body = "[[NaN, Infinity, -Infinity], {}, {}]"});
    envelope_ok(&m, text, "celery");
    free(text);
    enum message_settle settle = SETTLE_NONE;
    struct err e = {0};
    int rc = message_decode_task(&m, &settle, &e);
    if (rc)
        FAIL("body [[NaN, Infinity, -Infinity], {}, {}] refused (%s): %s", settle_name(settle),
             e.msg);
    ASSERT_EQ_SIZE(json_array_size(m.args), 3);
    message_release(&m);
}

TEST(huge_number_in_envelope_does_not_crash)
{
    const char *props = "{\"delivery_tag\": \"" TAG "\", \"body_encoding\": \"base64\", "
                        "\"delivery_info\": {\"exchange\": \"\", \"routing_key\": \"celery\"}, "
                        "\"priority\": 99999999999999999999999}";
    char *text = env_build(&(struct env){.props = props});
    struct message m;
    enum message_settle settle = SETTLE_NONE;
    struct err e = {0};
    message_init(&m);
    int rc = message_decode_envelope(&m, text, strlen(text), "celery", &settle, &e);
    free(text);
    if (rc == 0)
        ASSERT_EQ_INT(m.priority, 9);
    else
        ASSERT_SETTLE(settle, SETTLE_DROP);
    message_release(&m);
}

/* ---- lifecycle ---- */

TEST(release_is_safe_everywhere)
{
    struct message m;
    message_init(&m);
    message_release(&m);
    message_release(&m);
    /* after a failed envelope */
    enum message_settle settle;
    message_init(&m);
    ASSERT_TRUE(message_decode_envelope(&m, "{", 1, "celery", &settle, NULL) < 0);
    message_release(&m);
    /* after a failed task decode with the body already parsed */
    char *text = env_build(&(struct env){.body = "[[], [], {}]"});
    envelope_ok(&m, text, "celery");
    free(text);
    ASSERT_TRUE(message_decode_task(&m, &settle, NULL) < 0);
    message_release(&m);
    ASSERT_NULL(m.envelope);
    ASSERT_NULL(m.body);
    ASSERT_NULL(m.task_id);
}

/* A struct message is reusable after release: nothing of the first decode leaks in. */
TEST(reuse_after_release)
{
    struct message m;
    decode_ok(&m, captured_retry);
    message_release(&m);
    decode_ok(&m, captured_add);
    ASSERT_EQ_INT(m.retries, 0);
    ASSERT_NULL(m.parent_id);
    ASSERT_NEAR(m.eta, 0, 0);
    message_release(&m);
}

/* ---- encoding ---- */

static json_t *decode_envelope_text(const char *text)
{
    json_t *v = parse(text);
    ASSERT_TRUE(json_is_object(v));
    return v;
}

TEST(encode_round_trip)
{
    json_t *args = parse("[2, \"x\", {\"k\": [1.5, null]}]");
    json_t *kwargs = parse("{\"title\": \"caf\\u00e9\", \"n\": 9007199254740993}");
    json_t *embed = parse(CHAIN_BODY);
    json_t *embed2 = json_incref(json_array_get(embed, 2));
    struct task_send t = {
        .name = "books.get_book_info",
        .id = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9",
        .queue = "books",
        .args = args,
        .kwargs = kwargs,
        .embed = embed2,
        .eta = 1795607033.574058,
        .expires = 1795607621.574058,
        .retries = 3,
        .priority = 6,
        .root_id = "r00t",
        .parent_id = "par3nt",
        .group = "gr0up",
        .time_limit = 30,
        .soft_time_limit = 20.5,
        .ignore_result = true,
    };
    struct buf out = BUF_INIT;
    char id[UUID_STR_LEN] = "";
    message_encode_task(&out, &t, id);
    ASSERT_EQ_STR(id, "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9");

    struct message m;
    envelope_ok_len(&m, out.data, out.len, "books");
    ASSERT_FALSE(m.repaired);
    ASSERT_TRUE(is_uuid4(m.delivery_tag));
    ASSERT_EQ_STR(m.exchange, "");
    ASSERT_EQ_STR(m.routing_key, "books");
    ASSERT_EQ_INT(m.priority, 6);
    enum message_settle settle;
    struct err e = {0};
    if (message_decode_task(&m, &settle, &e))
        FAIL("encoded message does not decode: %s", e.msg);
    ASSERT_EQ_STR(m.task_name, "books.get_book_info");
    ASSERT_EQ_STR(m.task_id, id);
    ASSERT_EQ_STR(m.root_id, "r00t");
    ASSERT_EQ_STR(m.parent_id, "par3nt");
    ASSERT_EQ_STR(m.group, "gr0up");
    ASSERT_TRUE(json_equal(m.args, args));
    ASSERT_TRUE(json_equal(m.kwargs, kwargs));
    ASSERT_TRUE(json_equal(m.embed, embed2));
    ASSERT_EQ_INT(m.retries, 3);
    ASSERT_NEAR(m.eta, 1795607033.574058, 1.5e-6);
    ASSERT_NEAR(m.expires, 1795607621.574058, 1.5e-6);
    ASSERT_NEAR(m.time_limit, 30, 0);
    ASSERT_NEAR(m.soft_time_limit, 20.5, 0);
    ASSERT_TRUE(m.ignore_result);
    message_release(&m);

    /* The borrowed inputs are untouched and still owned by us. */
    ASSERT_JSON_EQ(args, "[2, \"x\", {\"k\": [1.5, null]}]");
    ASSERT_EQ_INT(args->refcount, 1);
    ASSERT_EQ_INT(kwargs->refcount, 1);
    ASSERT_EQ_INT(embed2->refcount, 2);
    json_decref(args);
    json_decref(kwargs);
    json_decref(embed2);
    json_decref(embed);
    buf_release(&out);
}

/* The wire shape Python expects (spec §2, §3.1, §7.1). */
TEST(encode_wire_shape)
{
    json_t *args = parse("[2, 2]");
    struct task_send t = {.name = "tasks.add", .args = args, .eta = 1795607033.574058};
    struct buf out = BUF_INIT;
    char id[UUID_STR_LEN];
    message_encode_task(&out, &t, id);
    ASSERT_TRUE(is_uuid4(id));
    ASSERT_NOT_CONTAINS(out.data, "\n");
    json_t *env = decode_envelope_text(out.data);
    ASSERT_JSON_EQ(json_object_get(env, "content-type"), "\"application/json\"");
    ASSERT_JSON_EQ(json_object_get(env, "content-encoding"), "\"utf-8\"");

    json_t *h = json_object_get(env, "headers");
    ASSERT_EQ_STR(json_string_value(json_object_get(h, "task")), "tasks.add");
    ASSERT_EQ_STR(json_string_value(json_object_get(h, "id")), id);
    ASSERT_EQ_STR(json_string_value(json_object_get(h, "root_id")), id);
    ASSERT_TRUE(json_is_null(json_object_get(h, "parent_id")));
    ASSERT_TRUE(json_is_null(json_object_get(h, "group")));
    ASSERT_TRUE(json_is_null(json_object_get(h, "expires")));
    ASSERT_JSON_EQ(json_object_get(h, "retries"), "0");
    ASSERT_JSON_EQ(json_object_get(h, "timelimit"), "[null, null]");
    ASSERT_JSON_EQ(json_object_get(h, "ignore_result"), "false");
    ASSERT_TRUE(json_is_string(json_object_get(h, "lang")));
    const char *eta = json_string_value(json_object_get(h, "eta"));
    ASSERT_EQ_STR(eta, "2026-11-25T11:43:53.574058+00:00");

    json_t *p = json_object_get(env, "properties");
    ASSERT_EQ_STR(json_string_value(json_object_get(p, "body_encoding")), "base64");
    ASSERT_TRUE(is_uuid4(json_string_value(json_object_get(p, "delivery_tag"))));
    ASSERT_EQ_STR(json_string_value(json_object_get(p, "correlation_id")), id);
    ASSERT_JSON_EQ(json_object_get(p, "delivery_info"),
                   "{\"exchange\": \"\", \"routing_key\": \"celery\"}");
    ASSERT_JSON_EQ(json_object_get(p, "priority"), "0");

    /* The body is standard padded base64 of [args, kwargs, embed] with all four embed keys. */
    const char *body = json_string_value(json_object_get(env, "body"));
    ASSERT_NOT_NULL(body);
    ASSERT_EQ_INT(strlen(body) % 4, 0);
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=";
    ASSERT_EQ_SIZE(strspn(body, alphabet), strlen(body));
    struct message m;
    envelope_ok_len(&m, out.data, out.len, "celery");
    enum message_settle settle;
    ASSERT_EQ_INT(message_decode_task(&m, &settle, NULL), 0);
    ASSERT_JSON_EQ(m.body, "[[2, 2], {}, " EMBED_NULL "]");
    message_release(&m);
    json_decref(env);
    json_decref(args);
    buf_release(&out);
}

TEST(encode_defaults)
{
    struct task_send t = {.name = "tasks.noop"};
    struct buf out = BUF_INIT;
    char id[UUID_STR_LEN];
    message_encode_task(&out, &t, id);
    struct message m;
    envelope_ok_len(&m, out.data, out.len, "celery");
    ASSERT_EQ_STR(m.routing_key, "celery");
    enum message_settle settle;
    ASSERT_EQ_INT(message_decode_task(&m, &settle, NULL), 0);
    ASSERT_EQ_STR(m.task_id, id);
    ASSERT_JSON_EQ(m.args, "[]");
    ASSERT_JSON_EQ(m.kwargs, "{}");
    ASSERT_JSON_EQ(m.embed, EMBED_NULL);
    ASSERT_NEAR(m.eta, 0, 0);
    ASSERT_NEAR(m.time_limit, 0, 0);
    ASSERT_FALSE(m.ignore_result);
    message_release(&m);
    buf_release(&out);
}

TEST(encode_fresh_ids_and_tags)
{
    struct task_send t = {.name = "tasks.noop"};
    struct buf a = BUF_INIT, b = BUF_INIT;
    char ida[UUID_STR_LEN], idb[UUID_STR_LEN];
    message_encode_task(&a, &t, ida);
    message_encode_task(&b, &t, idb);
    ASSERT_TRUE(strcmp(ida, idb) != 0);
    struct message ma, mb;
    envelope_ok_len(&ma, a.data, a.len, "celery");
    envelope_ok_len(&mb, b.data, b.len, "celery");
    ASSERT_TRUE(strcmp(ma.delivery_tag, mb.delivery_tag) != 0);
    message_release(&ma);
    message_release(&mb);
    /* id_out may be NULL. */
    message_encode_task(&a, &t, NULL);
    buf_release(&a);
    buf_release(&b);
}

TEST(encode_appends)
{
    struct task_send t = {.name = "tasks.noop"};
    struct buf out = BUF_INIT;
    buf_adds(&out, "PREFIX");
    message_encode_task(&out, &t, NULL);
    ASSERT_TRUE(!strncmp(out.data, "PREFIX{", 7));
    struct message m;
    envelope_ok_len(&m, out.data + 6, out.len - 6, "celery");
    message_release(&m);
    buf_release(&out);
}

TEST(encode_priority_kept_in_envelope)
{
    struct task_send t = {.name = "tasks.noop", .priority = 10};
    struct buf out = BUF_INIT;
    message_encode_task(&out, &t, NULL);
    json_t *env = decode_envelope_text(out.data);
    /* kombu keeps the number; only the list is clamped (spec §4.2). */
    ASSERT_JSON_EQ(json_object_get(json_object_get(env, "properties"), "priority"), "10");
    json_decref(env);
    struct message m;
    envelope_ok_len(&m, out.data, out.len, "celery");
    ASSERT_EQ_INT(m.priority, 9);
    message_release(&m);
    buf_release(&out);
}

/* What a retry or a signature carries on: the exchange it came through, the
 * reply queue, and the AMQP expiration kombu derives from expires. */
TEST(encode_exchange_reply_to_expiration)
{
    struct task_send t = {.name = "tasks.noop", .queue = "rk", .exchange = "x",
                          .reply_to = "0115ef45-31ac-3cfe-81d9-d9c98e109232",
                          .expires = time_now() + 60};
    struct buf out = BUF_INIT;
    message_encode_task(&out, &t, NULL);
    json_t *env = decode_envelope_text(out.data);
    json_t *p = json_object_get(env, "properties");
    ASSERT_JSON_EQ(json_object_get(p, "delivery_info"),
                   "{\"exchange\": \"x\", \"routing_key\": \"rk\"}");
    ASSERT_EQ_STR(json_string_value(json_object_get(p, "reply_to")),
                  "0115ef45-31ac-3cfe-81d9-d9c98e109232");
    const char *exp = json_string_value(json_object_get(p, "expiration"));
    ASSERT_NOT_NULL(exp);
    long ms = strtol(exp, NULL, 10);
    ASSERT_TRUE(ms > 58000 && ms <= 60000);
    json_decref(env);
    struct message m;
    envelope_ok_len(&m, out.data, out.len, "rk");
    ASSERT_EQ_STR(m.exchange, "x");
    ASSERT_EQ_STR(m.reply_to, "0115ef45-31ac-3cfe-81d9-d9c98e109232");
    message_release(&m);
    buf_release(&out);

    /* expires already past: 0 (RabbitMQ delivers it only to a waiting
     * consumer); no expires: no expiration; no reply_to: "" */
    struct task_send past = {.name = "tasks.noop", .expires = time_now() - 5};
    message_encode_task(&out, &past, NULL);
    env = decode_envelope_text(out.data);
    p = json_object_get(env, "properties");
    ASSERT_EQ_STR(json_string_value(json_object_get(p, "expiration")), "0");
    ASSERT_EQ_STR(json_string_value(json_object_get(p, "reply_to")), "");
    json_decref(env);
    buf_release(&out);
    struct task_send none = {.name = "tasks.noop"};
    message_encode_task(&out, &none, NULL);
    env = decode_envelope_text(out.data);
    ASSERT_NULL(json_object_get(json_object_get(env, "properties"), "expiration"));
    json_decref(env);
    buf_release(&out);
}

/* ---- priority lists ---- */

static void check_list(const char *queue, int priority, const char *want, size_t want_len)
{
    struct buf b = BUF_INIT;
    message_priority_list(&b, queue, priority);
    if (b.len != want_len || memcmp(b.data, want, want_len)) {
        printf("# priority %d of '%s':\n", priority, queue);
        ASSERT_EQ_MEM(b.data, b.len, want, want_len);
    }
    buf_release(&b);
}

#define CHECK_LIST(q, p, lit) check_list(q, p, lit, sizeof(lit) - 1)

TEST(priority_list_names)
{
    CHECK_LIST("celery", 0, "celery");
    CHECK_LIST("celery", 1, "celery");
    CHECK_LIST("celery", 2, "celery");
    CHECK_LIST("celery", 3, "celery\x06\x16" "3");
    CHECK_LIST("celery", 4, "celery\x06\x16" "3");
    CHECK_LIST("celery", 5, "celery\x06\x16" "3");
    CHECK_LIST("celery", 6, "celery\x06\x16" "6");
    CHECK_LIST("celery", 7, "celery\x06\x16" "6");
    CHECK_LIST("celery", 8, "celery\x06\x16" "6");
    CHECK_LIST("celery", 9, "celery\x06\x16" "9");
    CHECK_LIST("celery", 10, "celery\x06\x16" "9");
    CHECK_LIST("celery", 1000, "celery\x06\x16" "9");
    CHECK_LIST("celery", -1, "celery");
    CHECK_LIST("celery", -1000, "celery");
    CHECK_LIST("books", 6, "books\x06\x16" "6");
}

TEST(priority_list_appends)
{
    struct buf b = BUF_INIT;
    buf_adds(&b, "BRPOP ");
    message_priority_list(&b, "q", 3);
    buf_addch(&b, ' ');
    message_priority_list(&b, "q", 0);
    static const char want[] = "BRPOP q\x06\x16" "3 q";
    ASSERT_EQ_MEM(b.data, b.len, want, sizeof(want) - 1);
    buf_release(&b);
}

/* ---- exceptions ---- */

static void check_exception(const char *type, const char *module, const char *msg,
                            const char *want)
{
    json_t *v = message_exception(type, module, msg);
    ASSERT_NOT_NULL(v);
    ASSERT_JSON_EQ(v, want);
    json_decref(v);
}

TEST(exception_builtins)
{
    check_exception("ValueError", NULL, "bad thing",
                    "{\"exc_type\": \"ValueError\", \"exc_message\": [\"bad thing\"], "
                    "\"exc_module\": \"builtins\"}");
    const char *names[] = {"KeyError", "TypeError", "RuntimeError", "Exception",
                           "ZeroDivisionError", "IndexError", "AttributeError",
                           "NotImplementedError", "OSError", "TimeoutError", "AssertionError",
                           "LookupError", "ArithmeticError", "MemoryError", "OverflowError"};
    for (size_t i = 0; i < ARRAY_SIZE(names); i++) {
        json_t *v = message_exception(names[i], NULL, "m");
        ASSERT_EQ_STR(json_string_value(json_object_get(v, "exc_module")), "builtins");
        ASSERT_EQ_STR(json_string_value(json_object_get(v, "exc_type")), names[i]);
        json_decref(v);
    }
}

TEST(exception_custom_module)
{
    check_exception("MyErr", "tasks", "custom",
                    "{\"exc_type\": \"MyErr\", \"exc_message\": [\"custom\"], "
                    "\"exc_module\": \"tasks\"}");
    check_exception("TimeLimitExceeded", "billiard.exceptions", "2",
                    "{\"exc_type\": \"TimeLimitExceeded\", \"exc_message\": [\"2\"], "
                    "\"exc_module\": \"billiard.exceptions\"}");
    check_exception("NotRegistered", "celery.exceptions", "tasks.nosuch",
                    "{\"exc_type\": \"NotRegistered\", \"exc_message\": [\"tasks.nosuch\"], "
                    "\"exc_module\": \"celery.exceptions\"}");
    /* An explicit module wins even for a builtin name. */
    check_exception("ValueError", "myapp.errors", "x",
                    "{\"exc_type\": \"ValueError\", \"exc_message\": [\"x\"], "
                    "\"exc_module\": \"myapp.errors\"}");
}

TEST(exception_unknown_name_is_celeriac)
{
    check_exception("BookNotFound", NULL, "isbn 123",
                    "{\"exc_type\": \"BookNotFound\", \"exc_message\": [\"isbn 123\"], "
                    "\"exc_module\": \"celeriac\"}");
    /* Names are case-sensitive and whole: no prefix matches. */
    json_t *v = message_exception("valueerror", NULL, "");
    ASSERT_EQ_STR(json_string_value(json_object_get(v, "exc_module")), "celeriac");
    json_decref(v);
    v = message_exception("ValueErrorX", NULL, "");
    ASSERT_EQ_STR(json_string_value(json_object_get(v, "exc_module")), "celeriac");
    json_decref(v);
    v = message_exception("Value", NULL, "");
    ASSERT_EQ_STR(json_string_value(json_object_get(v, "exc_module")), "celeriac");
    json_decref(v);
}

TEST(exception_message_not_utf8)
{
    json_t *v = message_exception("RuntimeError", NULL, "libpq says \xff\xfe");
    ASSERT_NOT_NULL(v);
    json_t *msg = json_array_get(json_object_get(v, "exc_message"), 0);
    ASSERT_TRUE(json_is_string(msg));
    ASSERT_TRUE(!strncmp(json_string_value(msg), "libpq says ", 11));
    json_decref(v);
}

TEST(string_lossy_valid_utf8_unchanged)
{
    json_t *v = message_string_lossy("plain");
    ASSERT_EQ_STR(json_string_value(v), "plain");
    json_decref(v);
    v = message_string_lossy("caf\xc3\xa9 \xe6\x97\xa5");
    ASSERT_EQ_STR(json_string_value(v), "caf\xc3\xa9 \xe6\x97\xa5");
    json_decref(v);
    v = message_string_lossy("");
    ASSERT_EQ_STR(json_string_value(v), "");
    json_decref(v);
}

/* Only the bytes that are not valid UTF-8 become '?'; valid characters around them stay. */
TEST(string_lossy_replaces_only_invalid_bytes)
{
    json_t *v = message_string_lossy("bad\xff");
    ASSERT_EQ_STR(json_string_value(v), "bad?");
    json_decref(v);
    v = message_string_lossy("caf\xc3\xa9 \xff!");
    ASSERT_EQ_STR(json_string_value(v), "caf\xc3\xa9 ?!");
    json_decref(v);
}

RUN_TESTS()
