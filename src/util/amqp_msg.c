/* SPDX-License-Identifier: MIT
 * amqp_msg.c: AMQP field tables <-> JSON, deliveries -> kombu envelopes,
 * envelopes -> basic.publish properties (see amqp_msg.h).
 */
#include "common.h"
#include "util/amqp_msg.h"
#include "util/base64.h"
#include "util/buf.h"

#include <math.h>

static json_t *value_to_json(const amqp_field_value_t *v, int depth, struct err *e);

/* A JSON string of (p, len); bytes that are not UTF-8 (or NUL) become '?'. */
static json_t *string_lossy(const void *p, size_t len)
{
    json_t *s = json_stringn(p, len);
    if (s)
        return s;
    char *copy = xmalloc(len + 1);
    const unsigned char *in = p;
    for (size_t i = 0; i < len; i++)
        copy[i] = in[i] && in[i] < 0x80 ? (char)in[i] : '?';
    s = json_stringn(copy, len);
    free(copy);
    return s;
}

static json_t *array_to_json(const amqp_array_t *a, int depth, struct err *e)
{
    json_t *out = json_array();
    for (int i = 0; i < a->num_entries; i++) {
        json_t *v = value_to_json(&a->entries[i], depth + 1, e);
        if (!v) {
            json_decref(out);
            return NULL;
        }
        json_array_append_new(out, v);
    }
    return out;
}

static json_t *table_to_json(const amqp_table_t *t, int depth, struct err *e)
{
    if (depth > AMQP_MSG_MAX_DEPTH) {
        err_set(e, E_PROTOCOL, "AMQP table nested deeper than %d", AMQP_MSG_MAX_DEPTH);
        return NULL;
    }
    json_t *out = json_object();
    for (int i = 0; i < t->num_entries; i++) {
        const amqp_table_entry_t *en = &t->entries[i];
        json_t *v = value_to_json(&en->value, depth + 1, e);
        if (!v) {
            json_decref(out);
            return NULL;
        }
        /* keys are short strings: at most 255 bytes, UTF-8 by the spec */
        char key[256];
        size_t klen = en->key.len < sizeof(key) ? en->key.len : sizeof(key) - 1;
        memcpy(key, en->key.bytes, klen);
        key[klen] = '\0';
        json_object_setn_new_nocheck(out, key, klen, v);
    }
    return out;
}

static json_t *value_to_json(const amqp_field_value_t *v, int depth, struct err *e)
{
    if (depth > AMQP_MSG_MAX_DEPTH) {
        err_set(e, E_PROTOCOL, "AMQP table nested deeper than %d", AMQP_MSG_MAX_DEPTH);
        return NULL;
    }
    switch (v->kind) {
    case AMQP_FIELD_KIND_VOID: return json_null();
    case AMQP_FIELD_KIND_BOOLEAN: return json_boolean(v->value.boolean);
    case AMQP_FIELD_KIND_I8: return json_integer(v->value.i8);
    case AMQP_FIELD_KIND_U8: return json_integer(v->value.u8);
    case AMQP_FIELD_KIND_I16: return json_integer(v->value.i16);
    case AMQP_FIELD_KIND_U16: return json_integer(v->value.u16);
    case AMQP_FIELD_KIND_I32: return json_integer(v->value.i32);
    case AMQP_FIELD_KIND_U32: return json_integer(v->value.u32);
    case AMQP_FIELD_KIND_I64: return json_integer(v->value.i64);
    /* py-amqp writes signed 64-bit integers under 'L' */
    case AMQP_FIELD_KIND_U64: return json_integer((json_int_t)(int64_t)v->value.u64);
    case AMQP_FIELD_KIND_TIMESTAMP: return json_integer((json_int_t)v->value.u64);
    case AMQP_FIELD_KIND_F32: return json_real(v->value.f32);
    case AMQP_FIELD_KIND_F64: return json_real(v->value.f64);
    case AMQP_FIELD_KIND_DECIMAL:
        return json_real((double)v->value.decimal.value / pow(10, v->value.decimal.decimals));
    case AMQP_FIELD_KIND_UTF8:
    case AMQP_FIELD_KIND_BYTES: return string_lossy(v->value.bytes.bytes, v->value.bytes.len);
    case AMQP_FIELD_KIND_TABLE: return table_to_json(&v->value.table, depth, e);
    case AMQP_FIELD_KIND_ARRAY: return array_to_json(&v->value.array, depth, e);
    }
    err_set(e, E_PROTOCOL, "AMQP field of unknown kind '%c'", (char)v->kind);
    return NULL;
}

json_t *amqp_msg_table_to_json(const amqp_table_t *t, struct err *e)
{
    return table_to_json(t, 0, e);
}

static void pool_bytes(amqp_pool_t *pool, const char *s, size_t len, amqp_bytes_t *out)
{
    if (!len) {
        *out = amqp_empty_bytes;
        return;
    }
    amqp_pool_alloc_bytes(pool, len, out);
    if (!out->bytes) {
        fprintf(stderr, "fatal: out of memory allocating %zu bytes\n", len);
        abort();
    }
    memcpy(out->bytes, s, len);
}

static void *pool_calloc(amqp_pool_t *pool, size_t n, size_t size)
{
    if (!n)
        return NULL;
    if (size && n > SIZE_MAX / size) {
        fprintf(stderr, "fatal: allocation of %zu x %zu bytes overflows\n", n, size);
        abort();
    }
    void *p = amqp_pool_alloc(pool, n * size);
    if (!p) {
        fprintf(stderr, "fatal: out of memory allocating %zu bytes\n", n * size);
        abort();
    }
    memset(p, 0, n * size);
    return p;
}

static int value_from_json(amqp_field_value_t *out, const json_t *v, amqp_pool_t *pool,
                           int depth, struct err *e);

static int table_from_json(amqp_table_t *out, const json_t *obj, amqp_pool_t *pool, int depth,
                           struct err *e)
{
    if (!json_is_object(obj))
        return err_set(e, -EINVAL, "AMQP table from JSON: not an object");
    if (depth > AMQP_MSG_MAX_DEPTH)
        return err_set(e, -EINVAL, "AMQP table nested deeper than %d", AMQP_MSG_MAX_DEPTH);
    out->num_entries = (int)json_object_size(obj);
    out->entries = pool_calloc(pool, (size_t)out->num_entries, sizeof(*out->entries));
    const char *key;
    size_t klen;
    json_t *v;
    int i = 0;
    json_object_keylen_foreach((json_t *)obj, key, klen, v) {
        if (klen > 255)
            return err_set(e, -EINVAL, "AMQP table key longer than 255 bytes");
        pool_bytes(pool, key, klen, &out->entries[i].key);
        int rc = value_from_json(&out->entries[i].value, v, pool, depth + 1, e);
        if (rc)
            return rc;
        i++;
    }
    return 0;
}

static int array_from_json(amqp_array_t *out, const json_t *arr, amqp_pool_t *pool, int depth,
                           struct err *e)
{
    out->num_entries = (int)json_array_size(arr);
    out->entries = pool_calloc(pool, (size_t)out->num_entries, sizeof(*out->entries));
    for (int i = 0; i < out->num_entries; i++) {
        int rc = value_from_json(&out->entries[i], json_array_get(arr, (size_t)i), pool,
                                 depth + 1, e);
        if (rc)
            return rc;
    }
    return 0;
}

static int value_from_json(amqp_field_value_t *out, const json_t *v, amqp_pool_t *pool,
                           int depth, struct err *e)
{
    if (depth > AMQP_MSG_MAX_DEPTH)
        return err_set(e, -EINVAL, "AMQP table nested deeper than %d", AMQP_MSG_MAX_DEPTH);
    switch (json_typeof(v)) {
    case JSON_NULL: out->kind = AMQP_FIELD_KIND_VOID; return 0;
    case JSON_TRUE:
    case JSON_FALSE:
        out->kind = AMQP_FIELD_KIND_BOOLEAN;
        out->value.boolean = json_is_true(v);
        return 0;
    case JSON_INTEGER: {
        json_int_t n = json_integer_value(v);
        if (n >= INT32_MIN && n <= INT32_MAX) {
            out->kind = AMQP_FIELD_KIND_I32;
            out->value.i32 = (int32_t)n;
        } else {
            out->kind = AMQP_FIELD_KIND_I64;
            out->value.i64 = n;
        }
        return 0;
    }
    case JSON_REAL:
        out->kind = AMQP_FIELD_KIND_F64;
        out->value.f64 = json_real_value(v);
        return 0;
    case JSON_STRING:
        out->kind = AMQP_FIELD_KIND_UTF8;
        pool_bytes(pool, json_string_value(v), json_string_length(v), &out->value.bytes);
        return 0;
    case JSON_OBJECT:
        out->kind = AMQP_FIELD_KIND_TABLE;
        return table_from_json(&out->value.table, v, pool, depth, e);
    case JSON_ARRAY:
        out->kind = AMQP_FIELD_KIND_ARRAY;
        return array_from_json(&out->value.array, v, pool, depth, e);
    }
    return err_set(e, -EINVAL, "AMQP table from JSON: unsupported value");
}

int amqp_msg_table_from_json(amqp_table_t *out, const json_t *obj, amqp_pool_t *pool,
                             struct err *e)
{
    memset(out, 0, sizeof(*out));
    return table_from_json(out, obj, pool, 0, e);
}

/* Sets key to the string of an AMQP property when its flag is present. */
static void set_prop_str(json_t *obj, const char *key, const amqp_basic_properties_t *p,
                         amqp_flags_t flag, const amqp_bytes_t *b)
{
    if (p->_flags & flag)
        json_object_set_new(obj, key, string_lossy(b->bytes, b->len));
}

static json_t *envelope_properties(const amqp_envelope_t *env)
{
    const amqp_basic_properties_t *p = &env->message.properties;
    json_t *props = json_object();
    set_prop_str(props, "correlation_id", p, AMQP_BASIC_CORRELATION_ID_FLAG, &p->correlation_id);
    set_prop_str(props, "reply_to", p, AMQP_BASIC_REPLY_TO_FLAG, &p->reply_to);
    set_prop_str(props, "expiration", p, AMQP_BASIC_EXPIRATION_FLAG, &p->expiration);
    set_prop_str(props, "message_id", p, AMQP_BASIC_MESSAGE_ID_FLAG, &p->message_id);
    if (p->_flags & AMQP_BASIC_DELIVERY_MODE_FLAG)
        json_object_set_new(props, "delivery_mode", json_integer(p->delivery_mode));
    json_object_set_new(props, "priority",
                        json_integer(p->_flags & AMQP_BASIC_PRIORITY_FLAG ? p->priority : 0));
    char tag[24];
    snprintf(tag, sizeof(tag), "%" PRIu64, env->delivery_tag);
    json_object_set_new(props, "delivery_tag", json_string(tag));
    json_t *info = json_object();
    json_object_set_new(info, "exchange", string_lossy(env->exchange.bytes, env->exchange.len));
    json_object_set_new(info, "routing_key",
                        string_lossy(env->routing_key.bytes, env->routing_key.len));
    json_object_set_new(info, "redelivered", json_boolean(env->redelivered));
    json_object_set_new(props, "delivery_info", info);
    return props;
}

json_t *amqp_msg_envelope_bodiless(const amqp_envelope_t *env, struct err *e)
{
    const amqp_basic_properties_t *p = &env->message.properties;
    json_t *headers = p->_flags & AMQP_BASIC_HEADERS_FLAG ? amqp_msg_table_to_json(&p->headers, e)
                                                          : json_object();
    if (!headers)
        return NULL;
    json_t *root = json_object();
    set_prop_str(root, "content-type", p, AMQP_BASIC_CONTENT_TYPE_FLAG, &p->content_type);
    set_prop_str(root, "content-encoding", p, AMQP_BASIC_CONTENT_ENCODING_FLAG,
                 &p->content_encoding);
    json_object_set_new(root, "headers", headers);
    json_object_set_new(root, "properties", envelope_properties(env));
    return root;
}

static json_t *envelope_with_body(const amqp_envelope_t *env, struct err *e)
{
    json_t *root = amqp_msg_envelope_bodiless(env, e);
    if (!root)
        return NULL;
    struct buf b64 = BUF_INIT;
    base64_encode(&b64, env->message.body.bytes, env->message.body.len);
    json_object_set_new(root, "body", json_stringn(b64.data, b64.len));
    buf_release(&b64);
    json_object_set_new(json_object_get(root, "properties"), "body_encoding",
                        json_string("base64"));
    return root;
}

int amqp_msg_to_envelope(struct buf *out, const amqp_envelope_t *env, struct err *e)
{
    json_t *root = envelope_with_body(env, e);
    if (!root)
        return E_PROTOCOL;
    char *text = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    if (!text) {
        fprintf(stderr, "fatal: out of memory serialising an envelope\n");
        abort();
    }
    buf_adds(out, text);
    free(text);
    return 0;
}

void amqp_msg_outgoing_release(struct amqp_msg_outgoing *out)
{
    if (out->pool.pagesize)
        empty_amqp_pool(&out->pool);
    free(out->body.bytes);
    free(out->exchange);
    free(out->routing_key);
    memset(out, 0, sizeof(*out));
}

static void set_str_prop(struct amqp_msg_outgoing *out, amqp_flags_t flag, amqp_bytes_t *field,
                         const json_t *v, const char *dflt)
{
    const char *s = json_is_string(v) ? json_string_value(v) : dflt;
    if (!s)
        return;
    pool_bytes(&out->pool, s, strlen(s), field);
    out->props._flags |= flag;
}

/* The body's bytes per properties.body_encoding into out->body. */
static int outgoing_body(struct amqp_msg_outgoing *out, const json_t *envelope,
                         const json_t *props, struct err *e)
{
    const json_t *body = json_object_get(envelope, "body");
    if (!json_is_string(body))
        return err_set(e, -EINVAL, "envelope body is not a string");
    const json_t *enc = json_object_get(props, "body_encoding");
    struct buf b = BUF_INIT;
    if (json_is_string(enc) && !strcmp(json_string_value(enc), "base64")) {
        if (base64_decode(&b, json_string_value(body), json_string_length(body))) {
            buf_release(&b);
            return err_set(e, -EINVAL, "envelope body is not valid base64");
        }
    } else {
        buf_add(&b, json_string_value(body), json_string_length(body));
    }
    size_t len;
    char *data = buf_detach(&b, &len);
    out->body.len = len;
    out->body.bytes = data;
    return 0;
}

static int outgoing_numbers(struct amqp_msg_outgoing *out, const json_t *props, struct err *e)
{
    const json_t *mode = json_object_get(props, "delivery_mode");
    json_int_t m = json_is_integer(mode) ? json_integer_value(mode) : 2;
    if (m != 1 && m != 2)
        return err_set(e, -EINVAL, "envelope delivery_mode %" JSON_INTEGER_FORMAT " is not 1 or 2",
                       m);
    out->props.delivery_mode = (uint8_t)m;
    out->props._flags |= AMQP_BASIC_DELIVERY_MODE_FLAG;
    const json_t *prio = json_object_get(props, "priority");
    if (json_is_number(prio)) {
        double p = json_number_value(prio);
        if (!(p >= 0 && p <= 255))
            return err_set(e, -EINVAL, "envelope priority is not in 0..255");
        out->props.priority = (uint8_t)p;
        out->props._flags |= AMQP_BASIC_PRIORITY_FLAG;
    }
    return 0;
}

int amqp_msg_from_envelope(struct amqp_msg_outgoing *out, const json_t *envelope, struct err *e)
{
    memset(out, 0, sizeof(*out));
    init_amqp_pool(&out->pool, 4096);
    if (!json_is_object(envelope))
        return err_set(e, -EINVAL, "envelope is not a JSON object");
    const json_t *props = json_object_get(envelope, "properties");
    const json_t *info = json_object_get(props, "delivery_info");
    const json_t *ex = json_object_get(info, "exchange");
    const json_t *rk = json_object_get(info, "routing_key");
    out->exchange = xstrdup(json_is_string(ex) ? json_string_value(ex) : "");
    out->routing_key = xstrdup(json_is_string(rk) ? json_string_value(rk) : "");
    set_str_prop(out, AMQP_BASIC_CONTENT_TYPE_FLAG, &out->props.content_type,
                 json_object_get(envelope, "content-type"), "application/json");
    set_str_prop(out, AMQP_BASIC_CONTENT_ENCODING_FLAG, &out->props.content_encoding,
                 json_object_get(envelope, "content-encoding"), "utf-8");
    set_str_prop(out, AMQP_BASIC_CORRELATION_ID_FLAG, &out->props.correlation_id,
                 json_object_get(props, "correlation_id"), NULL);
    set_str_prop(out, AMQP_BASIC_REPLY_TO_FLAG, &out->props.reply_to,
                 json_object_get(props, "reply_to"), NULL);
    set_str_prop(out, AMQP_BASIC_EXPIRATION_FLAG, &out->props.expiration,
                 json_object_get(props, "expiration"), NULL);
    const json_t *headers = json_object_get(envelope, "headers");
    if (headers && !json_is_null(headers)) {
        int rc = amqp_msg_table_from_json(&out->props.headers, headers, &out->pool, e);
        if (rc)
            return rc;
        out->props._flags |= AMQP_BASIC_HEADERS_FLAG;
    }
    int rc = outgoing_numbers(out, props, e);
    return rc ? rc : outgoing_body(out, envelope, props, e);
}
