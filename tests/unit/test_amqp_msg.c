/* SPDX-License-Identifier: MIT
 * test_amqp_msg.c: AMQP tables <-> JSON and envelopes <-> deliveries
 * (util/amqp_msg.c), without a broker.
 */
#include "common.h"
#include "protocol/message.h"
#include "util/amqp_msg.h"
#include "util/buf.h"

#include "harness.h"

static char *dump(const json_t *j)
{
    return json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
}

TEST(table_round_trip)
{
    const char *text = "{\"a\":\"s\\u00e9\",\"b\":null,\"c\":true,\"d\":7,\"e\":-5000000000,"
                       "\"f\":2.5,\"g\":{\"h\":[1,[null,false],{\"i\":\"j\"}]},\"k\":[]}";
    json_t *in = json_loads(text, 0, NULL);
    amqp_pool_t pool;
    init_amqp_pool(&pool, 4096);
    amqp_table_t t;
    struct err e = {0};
    ASSERT_EQ_INT(amqp_msg_table_from_json(&t, in, &pool, &e), 0);
    ASSERT_EQ_INT(t.num_entries, 8);
    /* the kinds py-amqp uses */
    for (int i = 0; i < t.num_entries; i++) {
        char k = ((char *)t.entries[i].key.bytes)[0];
        char kind = (char)t.entries[i].value.kind;
        char want = k == 'a' ? 'S' : k == 'b' ? 'V' : k == 'c' ? 't' : k == 'd' ? 'I'
                  : k == 'e' ? 'l' : k == 'f' ? 'd' : k == 'g' ? 'F' : 'A';
        ASSERT_EQ_INT(kind, want);
    }
    json_t *out = amqp_msg_table_to_json(&t, &e);
    ASSERT_NOT_NULL(out);
    char *a = dump(in), *b = dump(out);
    ASSERT_EQ_STR(b, a);
    free(a);
    free(b);
    json_decref(out);
    json_decref(in);
    empty_amqp_pool(&pool);
}

TEST(table_kinds_received)
{
    amqp_table_entry_t en[] = {
        {.key = amqp_cstring_bytes("big"), .value = {.kind = AMQP_FIELD_KIND_U64, .value.u64 = (uint64_t)-3}},
        {.key = amqp_cstring_bytes("u8"), .value = {.kind = AMQP_FIELD_KIND_U8, .value.u8 = 200}},
        {.key = amqp_cstring_bytes("f"), .value = {.kind = AMQP_FIELD_KIND_F32, .value.f32 = 0.5f}},
        {.key = amqp_cstring_bytes("dec"), .value = {.kind = AMQP_FIELD_KIND_DECIMAL, .value.decimal = {2, 1234}}},
        {.key = amqp_cstring_bytes("ts"), .value = {.kind = AMQP_FIELD_KIND_TIMESTAMP, .value.u64 = 1700000000}},
        {.key = amqp_cstring_bytes("x"), .value = {.kind = AMQP_FIELD_KIND_BYTES, .value.bytes = {3, NULL}}},
    };
    amqp_table_t t = {.num_entries = (int)ARRAY_SIZE(en), .entries = en};
    char raw[] = "a\xffz";
    en[5].value.value.bytes.bytes = raw;
    struct err e = {0};
    json_t *j = amqp_msg_table_to_json(&t, &e);
    char *s = dump(j);
    ASSERT_EQ_STR(s, "{\"big\":-3,\"dec\":12.34,\"f\":0.5,\"ts\":1700000000,\"u8\":200,\"x\":\"a?z\"}");
    free(s);
    json_decref(j);
}

TEST(too_deep)
{
    json_t *j = json_object(), *cur = j;
    for (int i = 0; i < AMQP_MSG_MAX_DEPTH + 2; i++) {
        json_t *n = json_object();
        json_object_set_new(cur, "n", n);
        cur = n;
    }
    amqp_pool_t pool;
    init_amqp_pool(&pool, 4096);
    amqp_table_t t;
    struct err e = {0};
    ASSERT_EQ_INT(amqp_msg_table_from_json(&t, j, &pool, &e), -EINVAL);
    ASSERT_CONTAINS(e.msg, "deeper");
    empty_amqp_pool(&pool);
    json_decref(j);
}

/* An envelope celeriac encodes -> publish properties -> a delivery -> the
 * envelope again -> the Celery decoder. */
/* What rabbitmq-c hands a consumer for o, delivered from queue "pq". */
static amqp_envelope_t delivery_of(const struct amqp_msg_outgoing *o, uint64_t tag)
{
    amqp_envelope_t d = {0};
    d.channel = 1;
    d.delivery_tag = tag;
    d.exchange = amqp_cstring_bytes("");
    d.routing_key = amqp_cstring_bytes("pq");
    d.message.properties = o->props;
    d.message.body = o->body;
    return d;
}

TEST(envelope_round_trip)
{
    json_t *args = json_pack("[i, s]", 1, "\xc3\xa9");
    struct task_send t = {.name = "books.add", .queue = "pq", .args = args, .priority = 7};
    struct buf enc = BUF_INIT;
    char id[40];
    message_encode_task(&enc, &t, id);
    json_t *env = json_loads(enc.data, 0, NULL);
    struct amqp_msg_outgoing o;
    struct err e = {0};
    ASSERT_EQ_INT(amqp_msg_from_envelope(&o, env, &e), 0);
    ASSERT_EQ_INT(o.props.priority, 7);
    ASSERT_EQ_INT(o.props.delivery_mode, 2);
    ASSERT_EQ_MEM(o.props.correlation_id.bytes, o.props.correlation_id.len, id, strlen(id));
    ASSERT_EQ_STR(o.routing_key, "pq");

    amqp_envelope_t d = delivery_of(&o, 42);
    d.redelivered = 1;
    struct buf back = BUF_INIT;
    ASSERT_EQ_INT(amqp_msg_to_envelope(&back, &d, &e), 0);
    struct message m;
    enum message_settle settle;
    message_init(&m);
    ASSERT_EQ_INT(message_decode_envelope(&m, back.data, back.len, "pq", &settle, &e), 0);
    ASSERT_EQ_INT(message_decode_task(&m, &settle, &e), 0);
    ASSERT_EQ_STR(m.task_name, "books.add");
    ASSERT_EQ_STR(m.task_id, id);
    ASSERT_EQ_STR(m.delivery_tag, "42");
    ASSERT_EQ_STR(m.routing_key, "pq");
    ASSERT_EQ_INT(m.priority, 7);
    ASSERT_TRUE(m.redelivered);
    ASSERT_FALSE(m.repaired);
    char *a = dump(m.args);
    ASSERT_EQ_STR(a, "[1,\"\xc3\xa9\"]");
    free(a);
    message_release(&m);
    buf_release(&back);
    amqp_msg_outgoing_release(&o);
    json_decref(env);
    json_decref(args);
    buf_release(&enc);
}

/* What the worker's AMQP consumer does: the envelope without its body, the
 * body's bytes beside it. It decodes to what the text envelope decodes to. */
TEST(bodiless_envelope_with_raw_body)
{
    json_t *args = json_pack("[i, s]", 3, "\xc3\xa9");
    struct task_send t = {.name = "books.add", .queue = "pq", .args = args};
    struct buf enc = BUF_INIT;
    char id[40];
    message_encode_task(&enc, &t, id);
    json_t *env = json_loads(enc.data, 0, NULL);
    struct amqp_msg_outgoing o;
    struct err e = {0};
    ASSERT_EQ_INT(amqp_msg_from_envelope(&o, env, &e), 0);
    amqp_envelope_t d = delivery_of(&o, 43);

    json_t *bodiless = amqp_msg_envelope_bodiless(&d, &e);
    ASSERT_TRUE(bodiless != NULL);
    ASSERT_TRUE(json_object_get(bodiless, "body") == NULL);
    ASSERT_TRUE(json_object_get(json_object_get(bodiless, "properties"), "body_encoding") == NULL);
    struct message m;
    enum message_settle settle;
    message_init(&m);
    ASSERT_EQ_INT(message_adopt_envelope(&m, bodiless, "pq", &settle, &e), 0);
    m.raw_body = o.body.bytes;
    m.raw_body_len = o.body.len;
    ASSERT_EQ_INT(message_decode_task(&m, &settle, &e), 0);
    ASSERT_EQ_STR(m.task_id, id);
    ASSERT_EQ_STR(m.delivery_tag, "43");
    char *a = dump(m.args);
    ASSERT_EQ_STR(a, "[3,\"\xc3\xa9\"]");
    free(a);
    message_release(&m);

    /* Without the raw body the bodiless envelope has nothing to decode:
     * refused and acked, as an envelope whose body is not a string. */
    message_init(&m);
    ASSERT_EQ_INT(message_adopt_envelope(&m, amqp_msg_envelope_bodiless(&d, &e), "pq", &settle,
                                         &e), 0);
    ASSERT_TRUE(message_decode_task(&m, &settle, &e) != 0);
    ASSERT_EQ_INT(settle, SETTLE_ACK);
    message_release(&m);
    amqp_msg_outgoing_release(&o);
    json_decref(env);
    json_decref(args);
    buf_release(&enc);
}

TEST(bad_envelopes)
{
    static const char *bad[] = {
        "[]",
        "{\"body\": 5}",
        "{\"body\": \"!!\", \"properties\": {\"body_encoding\": \"base64\"}}",
        "{\"body\": \"\", \"properties\": {\"delivery_mode\": 3}}",
        "{\"body\": \"\", \"properties\": {\"priority\": 256}}",
        "{\"body\": \"\", \"headers\": [1]}",
    };
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        json_t *j = json_loads(bad[i], 0, NULL);
        struct amqp_msg_outgoing o;
        struct err e = {0};
        int rc = amqp_msg_from_envelope(&o, j, &e);
        amqp_msg_outgoing_release(&o);
        json_decref(j);
        if (rc != -EINVAL || !e.msg[0])
            FAIL("envelope %s: rc %d '%s'", bad[i], rc, e.msg);
    }
}

RUN_TESTS()
