/* SPDX-License-Identifier: MIT
 * fuzz_message.c: libFuzzer target for the message decoder (protocol/message.c).
 * Each input is tried three times: as a whole Redis list element (envelope),
 * and as the body bytes inside a well-formed JSON and msgpack envelope, so the
 * body decoders are reached without the fuzzer having to discover base64. Beyond "no crash, no leak" it
 * checks the decoder's contract: settlements match the step that failed, and
 * a decoded envelope has what the broker needs and re-serialises.
 * Built and run by scripts/fuzz.sh.
 */
#include "common.h"
#include "protocol/message.h"
#include "protocol/msgpack.h"
#include "util/base64.h"
#include "util/buf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                  \
    do {                                                                             \
        if (!(cond)) {                                                               \
            fprintf(stderr, "fuzz_message: contract broken: %s (line %d)\n", #cond,  \
                    __LINE__);                                                       \
            abort();                                                                 \
        }                                                                            \
    } while (0)

/* What msgpack decoded, msgpack encodes and decodes again to the same value. */
static void check_msgpack_round_trip(const json_t *body)
{
    struct buf out = BUF_INIT;
    CHECK(protocol_msgpack_dump(&out, body, NULL) == 0);
    json_t *again = protocol_msgpack_load(out.data, out.len, NULL);
    CHECK(again && json_equal(again, body));
    json_decref(again);
    buf_release(&out);
}

/* Runs both decode steps on (data, len) and checks the results. */
static void decode_checked(const char *data, size_t len)
{
    struct message m;
    enum message_settle settle = SETTLE_NONE;
    struct err e = {0};

    message_init(&m);
    int rc = message_decode_envelope(&m, data, len, "celery", &settle, &e);
    if (rc) {
        CHECK(rc < 0);
        CHECK(settle == SETTLE_DROP);
        CHECK(e.msg[0] != '\0');
        message_release(&m);
        return;
    }
    CHECK(settle == SETTLE_NONE);
    CHECK(m.delivery_tag && m.exchange && m.routing_key);
    CHECK(m.priority >= 0 && m.priority <= 9);

    /* What goes into the unacked hash must decode again to the same tag. */
    char *json = message_envelope_json(&m);
    CHECK(json);
    struct message again;
    enum message_settle settle2;
    message_init(&again);
    CHECK(message_decode_envelope(&again, json, strlen(json), "celery", &settle2, NULL) == 0);
    CHECK(!strcmp(again.delivery_tag, m.delivery_tag));
    CHECK(!again.repaired);
    message_release(&again);
    free(json);

    rc = message_decode_task(&m, &settle, &e);
    if (rc) {
        CHECK(rc < 0);
        CHECK(settle == SETTLE_REJECT || settle == SETTLE_ACK);
        CHECK(e.msg[0] != '\0');
    } else {
        CHECK(settle == SETTLE_NONE);
        CHECK(m.task_name && m.task_id);
        CHECK(json_is_array(m.args));
        CHECK(json_is_object(m.kwargs));
        CHECK(!m.embed || json_is_object(m.embed));
        CHECK(m.retries >= 0);
        CHECK(m.time_limit >= 0 && m.soft_time_limit >= 0);
        if (m.serializer == SERIALIZER_MSGPACK)
            check_msgpack_round_trip(m.body);
    }
    message_release(&m);
}

/* (data, size) as the base64 body of a valid v2 message of content_type. */
static void decode_as_body(const uint8_t *data, size_t size, const char *content_type,
                           const char *content_encoding)
{
    struct buf env = BUF_INIT;
    buf_adds(&env, "{\"body\": \"");
    base64_encode(&env, data, size);
    buf_addf(&env, "\", \"content-encoding\": \"%s\", \"content-type\": \"%s\", ",
             content_encoding, content_type);
    buf_adds(&env, "\"headers\": {\"lang\": \"py\", \"task\": \"tasks.add\", \"id\": "
                   "\"9a5dbd70-c0a6-4ca3-89f7-724d1cf11d09\", \"retries\": 0, \"timelimit\": "
                   "[null, null]}, \"properties\": {\"delivery_info\": {\"exchange\": \"\", "
                   "\"routing_key\": \"celery\"}, \"priority\": 0, \"body_encoding\": "
                   "\"base64\", \"delivery_tag\": \"42c98787-0ebc-4cb4-8e74-2512162d6804\"}}");
    decode_checked(env.data, env.len);
    buf_release(&env);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    decode_checked((const char *)data, size);
    decode_as_body(data, size, "application/json", "utf-8");
    decode_as_body(data, size, "application/x-msgpack", "binary");
    return 0;
}
