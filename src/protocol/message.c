/* SPDX-License-Identifier: MIT
 * message.c: decoding and encoding Celery protocol v2 messages in kombu's Redis
 * envelope. Everything here treats its input as hostile: every field is
 * type-checked before use, and no input makes it abort or leak.
 */
#include "common.h"
#include "protocol/message.h"
#include "protocol/msgpack.h"
#include "protocol/pyjson.h"
#include "util/base64.h"
#include "util/buf.h"
#include "util/time.h"
#include "util/uuid.h"

#include <ctype.h>
#include <math.h>
#include <strings.h>

void message_init(struct message *m)
{
    memset(m, 0, sizeof(*m));
}

void message_release(struct message *m)
{
    json_decref(m->body);
    json_decref(m->proto1_headers);
    json_decref(m->envelope);
    message_init(m);
}

static const char *str_field(json_t *obj, const char *key)
{
    return json_string_value(json_object_get(obj, key)); /* NULL unless a string */
}

/* Gets obj[key] as an object, creating it (replacing a non-object) when missing. */
static json_t *object_field_repaired(json_t *obj, const char *key, bool *repaired)
{
    json_t *v = json_object_get(obj, key);
    if (json_is_object(v))
        return v;
    v = json_object();
    json_object_set_new(obj, key, v);
    *repaired = true;
    return v;
}

int message_decode_envelope(struct message *m, const char *data, size_t len, const char *queue,
                            enum message_settle *settle, struct err *e)
{
    json_error_t jerr;
    *settle = SETTLE_DROP;
    json_t *envelope = json_loadb(data, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!envelope)
        return err_set(e, E_PROTOCOL, "envelope is not JSON: %s (at byte %d)", jerr.text,
                       jerr.position);
    return message_adopt_envelope(m, envelope, queue, settle, e);
}

int message_adopt_envelope(struct message *m, json_t *envelope, const char *queue,
                           enum message_settle *settle, struct err *e)
{
    *settle = SETTLE_DROP;
    m->envelope = envelope;
    if (!json_is_object(m->envelope))
        return err_set(e, E_PROTOCOL, "envelope is not a JSON object");

    /* kombu needs properties.delivery_tag and delivery_info.{exchange,routing_key}
     * to restore a message; a Python worker dies without them. Repair rather than
     * drop, so the message can be tracked and settled like any other. */
    bool repaired = false;
    json_t *props = object_field_repaired(m->envelope, "properties", &repaired);
    if (!json_is_string(json_object_get(props, "delivery_tag"))) {
        char tag[UUID_STR_LEN];
        uuid_generate(tag);
        json_object_set_new(props, "delivery_tag", json_string(tag));
        repaired = true;
    }
    json_t *info = object_field_repaired(props, "delivery_info", &repaired);
    if (!json_is_string(json_object_get(info, "exchange"))) {
        json_object_set_new(info, "exchange", json_string(""));
        repaired = true;
    }
    if (!json_is_string(json_object_get(info, "routing_key"))) {
        json_object_set_new(info, "routing_key", json_string(queue));
        repaired = true;
    }
    m->repaired = repaired;
    m->delivery_tag = str_field(props, "delivery_tag");
    m->exchange = str_field(info, "exchange");
    m->routing_key = str_field(info, "routing_key");
    m->reply_to = str_field(props, "reply_to");
    m->correlation_id = str_field(props, "correlation_id");
    json_t *prio = json_object_get(props, "priority");
    /* kombu takes int(priority): 7.0 and 7.9 are both 7. */
    double p = json_is_number(prio) ? json_number_value(prio) : 0;
    m->priority = !(p >= 0) ? 0 : p > 9 ? 9 : (int)p;

    json_t *headers = json_object_get(m->envelope, "headers");
    if (json_is_object(headers))
        m->task_id = str_field(headers, "id");
    m->redelivered = json_is_true(json_object_get(headers, "redelivered")) ||
                     json_is_true(json_object_get(info, "redelivered"));
    /* Known before the body is decoded, so even the FAILURE of a body that
     * will not decode can be answered in kind. */
    const char *ctype = str_field(m->envelope, "content-type");
    if (ctype && !strcasecmp(ctype, serializer_content_type(SERIALIZER_MSGPACK)))
        m->serializer = SERIALIZER_MSGPACK;
    *settle = SETTLE_NONE;
    return 0;
}

/* Reads an optional ISO-8601 header: absent or null leaves *out at 0. */
static int time_header(json_t *headers, const char *key, double *out, struct err *e)
{
    json_t *v = json_object_get(headers, key);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_string(v) || time_parse_iso(json_string_value(v), out))
        return err_set(e, E_PROTOCOL, "header '%s' is not an ISO-8601 time", key);
    return 0;
}

static int number_value(json_t *v, double *out)
{
    if (!v || json_is_null(v)) {
        *out = 0;
        return 0;
    }
    if (!json_is_number(v))
        return -EINVAL;
    double d = json_number_value(v);
    if (!isfinite(d) || d < 0)
        return -EINVAL;
    *out = d;
    return 0;
}

static int optional_string(json_t *headers, const char *key, const char **out, struct err *e)
{
    json_t *v = json_object_get(headers, key);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_string(v))
        return err_set(e, E_PROTOCOL, "header '%s' is not a string", key);
    *out = json_string_value(v);
    return 0;
}

static int decode_headers(struct message *m, json_t *headers, struct err *e)
{
    json_t *v = json_object_get(headers, "retries");
    if (v && !json_is_null(v)) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > INT32_MAX)
            return err_set(e, E_PROTOCOL, "header 'retries' is not a non-negative integer");
        m->retries = (int)json_integer_value(v);
    }
    v = json_object_get(headers, "timelimit");
    if (v && !json_is_null(v)) {
        /* [hard, soft]: the order the code and the wire use, not the protocol doc's */
        if (!json_is_array(v) || json_array_size(v) != 2 ||
            number_value(json_array_get(v, 0), &m->time_limit) ||
            number_value(json_array_get(v, 1), &m->soft_time_limit))
            return err_set(e, E_PROTOCOL, "header 'timelimit' is not [hard, soft]");
    }
    v = json_object_get(headers, "ignore_result");
    if (v && !json_is_null(v)) {
        if (!json_is_boolean(v))
            return err_set(e, E_PROTOCOL, "header 'ignore_result' is not a boolean");
        m->ignore_result = json_is_true(v);
    }
    if (time_header(headers, "eta", &m->eta, e) || time_header(headers, "expires", &m->expires, e))
        return E_PROTOCOL;
    v = json_object_get(headers, "group_index");
    m->group_index = json_is_integer(v) && json_integer_value(v) >= 0 &&
                             json_integer_value(v) < INT32_MAX
                         ? (int)json_integer_value(v)
                         : -1;
    m->argsrepr = str_field(headers, "argsrepr");
    m->kwargsrepr = str_field(headers, "kwargsrepr");
    if (optional_string(headers, "root_id", &m->root_id, e) ||
        optional_string(headers, "parent_id", &m->parent_id, e) ||
        optional_string(headers, "group", &m->group, e))
        return E_PROTOCOL;
    return 0;
}

/* Decodes the envelope's body text per properties.body_encoding into out. */
static int body_decode(const struct message *m, struct buf *out, enum message_settle *settle,
                       struct err *e)
{
    json_t *body = json_object_get(m->envelope, "body");
    if (!json_is_string(body)) {
        *settle = SETTLE_ACK;
        return err_set(e, E_PROTOCOL, "body is not a string");
    }
    const char *text = json_string_value(body);
    size_t len = json_string_length(body);
    json_t *props = json_object_get(m->envelope, "properties");
    json_t *enc = json_object_get(props, "body_encoding");
    if (json_is_string(enc) && !strcasecmp(json_string_value(enc), "base64")) {
        if (base64_decode(out, text, len)) {
            *settle = SETTLE_ACK;
            return err_set(e, E_PROTOCOL, "body is not valid base64");
        }
        return 0;
    }
    if (enc && !json_is_null(enc) &&
        !(json_is_string(enc) && !strcasecmp(json_string_value(enc), "utf-8"))) {
        *settle = SETTLE_REJECT;
        return err_set(e, E_PROTOCOL, "unsupported body_encoding");
    }
    buf_add(out, text, len);
    return 0;
}

/* The body's bytes: as received (raw_body), or the envelope's body text
 * decoded per properties.body_encoding into scratch. */
static int body_bytes(const struct message *m, struct buf *scratch, const char **data,
                      size_t *len_out, enum message_settle *settle, struct err *e)
{
    if (m->raw_body) {
        *data = m->raw_body;
        *len_out = m->raw_body_len;
        return 0;
    }
    int rc = body_decode(m, scratch, settle, e);
    *data = scratch->data;
    *len_out = scratch->len;
    return rc;
}

/* Which serializer the envelope's content-type and content-encoding name;
 * anything but kombu's json and msgpack is refused, as a Python worker
 * refuses what is not in accept_content. */
static int body_serializer(const struct message *m, enum serializer *out, struct err *e)
{
    const char *ctype = str_field(m->envelope, "content-type");
    const char *cenc = str_field(m->envelope, "content-encoding");
    if (ctype && !strcasecmp(ctype, "application/json")) {
        *out = SERIALIZER_JSON;
        if (cenc && strcasecmp(cenc, "utf-8") && strcasecmp(cenc, "utf8"))
            return err_set(e, E_PROTOCOL, "unsupported content-encoding '%.32s'", cenc);
        return 0;
    }
    if (ctype && !strcasecmp(ctype, serializer_content_type(SERIALIZER_MSGPACK))) {
        *out = SERIALIZER_MSGPACK;
        if (cenc && strcasecmp(cenc, "binary"))
            return err_set(e, E_PROTOCOL, "unsupported content-encoding '%.32s' for msgpack",
                           cenc);
        return 0;
    }
    return err_set(e, E_PROTOCOL, "content disallowed: refusing to deserialize content type "
                                  "'%.64s'", ctype ? ctype : "application/data");
}

/* The body as jansson values: JSON (Python's NaN and Infinity as pyjson
 * carries them) or msgpack. 0, or a code with *settle set. */
static int load_body(struct message *m, json_t **out, enum message_settle *settle, struct err *e)
{
    enum serializer ser = SERIALIZER_JSON;
    if (body_serializer(m, &ser, e))
        return E_PROTOCOL;
    m->serializer = ser;
    struct buf scratch = BUF_INIT;
    const char *data;
    size_t len;
    int rc = body_bytes(m, &scratch, &data, &len, settle, e);
    if (rc) {
        buf_release(&scratch);
        return rc;
    }
    json_error_t jerr;
    struct err why = {0};
    if (ser == SERIALIZER_MSGPACK)
        *out = protocol_msgpack_load(data, len, &why);
    else
        *out = pyjson_loadb(data, len, JSON_DECODE_ANY, &jerr);
    buf_release(&scratch);
    if (!*out) {
        *settle = SETTLE_ACK;
        if (ser == SERIALIZER_MSGPACK)
            return err_set(e, E_PROTOCOL, "body is not msgpack celeriac can take: %s", why.msg);
        return err_set(e, E_PROTOCOL, "body is not JSON: %s", jerr.text);
    }
    *settle = SETTLE_REJECT;
    return 0;
}

/* Copies body[key] into headers[key] when present. */
static void carry(json_t *headers, json_t *body, const char *from, const char *to)
{
    json_t *v = json_object_get(body, from);
    if (v)
        json_object_set(headers, to, v);
}

/* Protocol 1 (Celery still reads it; celery-node and gocelery send it): no
 * 'task' header, the body a mapping {task, id, args, kwargs, retries, eta,
 * expires, timelimit, taskset, callbacks, errbacks, chord}. Converts it to the
 * v2 headers and [args, kwargs, embed] body the rest of the worker knows, as
 * Celery's own worker does. Takes body. */
static int decode_proto1(struct message *m, json_t *body, struct err *e)
{
    m->body = body;
    if (!json_is_string(json_object_get(body, "task")))
        return err_set(e, E_PROTOCOL, "unknown message: no 'task' header and no protocol 1 "
                                      "'task' field");
    json_t *h = json_object();
    m->proto1_headers = h;
    carry(h, body, "task", "task");
    carry(h, body, "id", "id");
    carry(h, body, "retries", "retries");
    carry(h, body, "eta", "eta");
    carry(h, body, "expires", "expires");
    carry(h, body, "timelimit", "timelimit");
    carry(h, body, "taskset", "group");
    m->task_name = str_field(h, "task");
    m->task_id = str_field(h, "id");
    if (!m->task_id)
        return err_set(e, E_PROTOCOL, "invalid task: no 'id' field (protocol 1)");
    json_t *args = json_object_get(body, "args"), *kwargs = json_object_get(body, "kwargs");
    json_t *embed = json_pack("{s:O?, s:O?, s:O?, s:n}", "callbacks",
                              json_object_get(body, "callbacks"), "errbacks",
                              json_object_get(body, "errbacks"), "chord",
                              json_object_get(body, "chord"), "chain");
    m->body = json_pack("[o, o, o]", args ? json_incref(args) : json_array(),
                        kwargs ? json_incref(kwargs) : json_object(),
                        embed ? embed : json_object());
    json_decref(body);
    return decode_headers(m, h, e);
}

/* Checks [args, kwargs, embed] and points m at its parts. */
static int take_body_parts(struct message *m, struct err *e)
{
    if (!json_is_array(m->body) || json_array_size(m->body) != 3)
        return err_set(e, E_PROTOCOL, "invalid task: body is not [args, kwargs, embed]");
    m->args = json_array_get(m->body, 0);
    m->kwargs = json_array_get(m->body, 1);
    m->embed = json_array_get(m->body, 2);
    if (!json_is_array(m->args))
        return err_set(e, E_PROTOCOL, "invalid task: args is not a list");
    if (!json_is_object(m->kwargs))
        return err_set(e, E_PROTOCOL, "invalid task: kwargs is not a mapping");
    if (json_is_null(m->embed))
        m->embed = NULL;
    else if (!json_is_object(m->embed))
        return err_set(e, E_PROTOCOL, "invalid task: embed is not a mapping");
    return 0;
}

int message_decode_task(struct message *m, enum message_settle *settle, struct err *e)
{
    *settle = SETTLE_REJECT;
    json_t *headers = json_object_get(m->envelope, "headers");
    if (headers && !json_is_object(headers))
        return err_set(e, E_PROTOCOL, "unknown message: headers is not an object");
    if (json_object_get(headers, "compression"))
        return err_set(e, E_PROTOCOL, "compressed bodies are not supported");
    m->task_name = str_field(headers, "task");
    if (!m->task_name) {
        json_t *body = NULL;
        int rc = load_body(m, &body, settle, e);
        if (rc)
            return rc;
        if (!json_is_object(body)) {
            json_decref(body);
            return err_set(e, E_PROTOCOL, "unknown message: no 'task' header");
        }
        if (decode_proto1(m, body, e) || take_body_parts(m, e))
            return E_PROTOCOL;
        *settle = SETTLE_NONE;
        return 0;
    }
    if (!m->task_id)
        return err_set(e, E_PROTOCOL, "invalid task: no 'id' header");
    if (decode_headers(m, headers, e))
        return E_PROTOCOL;
    int rc = load_body(m, &m->body, settle, e);
    if (rc)
        return rc;
    if (take_body_parts(m, e))
        return E_PROTOCOL;
    *settle = SETTLE_NONE;
    return 0;
}

bool message_peek_id(const char *raw, size_t len, char *out, size_t out_size)
{
    static const char key[] = "\"correlation_id\"";
    size_t tail = len < 16384 ? len : 16384;
    const char *start = raw + len - tail, *hit = NULL;
    for (const char *p = start; (p = memmem(p, (size_t)(raw + len - p), key, sizeof(key) - 1));
         p++)
        hit = p; /* the last one: a body cannot end after properties */
    if (!hit)
        return false;
    const char *p = hit + sizeof(key) - 1, *end = raw + len;
    while (p < end && (*p == ' ' || *p == ':'))
        p++;
    if (p >= end || *p++ != '"')
        return false;
    size_t n = 0;
    while (p + n < end && n + 1 < out_size &&
           (isalnum((unsigned char)p[n]) || p[n] == '-' || p[n] == '_'))
        n++;
    if (!n || p + n >= end || p[n] != '"')
        return false;
    memcpy(out, p, n);
    out[n] = '\0';
    return true;
}

void message_envelope_encode(struct buf *out, const char *body, size_t len,
                             const char *content_type, json_t *headers, const char *exchange,
                             const char *routing_key, const char *correlation_id)
{
    char tag[UUID_STR_LEN];
    uuid_generate(tag);
    bool json = !content_type || !strcmp(content_type, "application/json");
    struct buf b64 = BUF_INIT;
    base64_encode(&b64, body, len);
    json_t *env = json_pack("{s:s, s:s, s:s, s:o, s:{s:i, s:{s:s, s:s}, s:i, s:s, s:s}}", "body",
                            b64.data ? b64.data : "", "content-encoding",
                            json ? "utf-8" : "binary", "content-type",
                            content_type ? content_type : "application/json", "headers",
                            headers ? json_incref(headers) : json_object(), "properties",
                            "delivery_mode", 1,
                            "delivery_info", "exchange", exchange, "routing_key", routing_key,
                            "priority", 0, "body_encoding", "base64", "delivery_tag", tag);
    if (correlation_id)
        json_object_set_new(json_object_get(env, "properties"), "correlation_id",
                            json_string(correlation_id));
    buf_release(&b64);
    char *text = json_dumps(env, JSON_COMPACT);
    buf_adds(out, text);
    free(text);
    json_decref(env);
}

#define WORKER_LOST_PROPERTY "celeriac_worker_lost"

void message_envelope_mark_redelivered(json_t *env)
{
    json_t *headers = json_object_get(env, "headers");
    if (json_is_object(headers))
        json_object_set_new(headers, "redelivered", json_true());
    json_t *info = json_object_get(json_object_get(env, "properties"), "delivery_info");
    if (json_is_object(info))
        json_object_set_new(info, "redelivered", json_true());
}

int message_envelope_lost_count(const json_t *env)
{
    json_t *v = json_object_get(json_object_get(env, "properties"), WORKER_LOST_PROPERTY);
    json_int_t n = json_is_integer(v) ? json_integer_value(v) : 0;
    return n < 0 ? 0 : n > 1000000 ? 1000000 : (int)n;
}

void message_envelope_mark_lost(json_t *env, int losses)
{
    json_t *props = json_object_get(env, "properties");
    if (json_is_object(props))
        json_object_set_new(props, WORKER_LOST_PROPERTY, json_integer(losses));
    message_envelope_mark_redelivered(env);
}

char *message_envelope_json(const struct message *m)
{
    return json_dumps(m->envelope, JSON_COMPACT);
}

json_t *message_string_lossy(const char *s)
{
    json_t *v = json_string(s);
    if (v)
        return v;
    /* Keep every valid UTF-8 sequence; each byte of an invalid one becomes '?'. */
    size_t n = strlen(s);
    char *copy = xstrdup(s);
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)copy[i];
        size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        bool ok = len > 0 && i + len <= n;
        for (size_t k = 1; ok && k < len; k++)
            ok = ((unsigned char)copy[i + k] >> 6) == 2;
        if (ok && len > 1) {
            json_t *probe = json_stringn(copy + i, len); /* rejects overlongs, surrogates */
            ok = probe != NULL;
            json_decref(probe);
        }
        if (!ok) {
            copy[i++] = '?';
            continue;
        }
        i += len;
    }
    v = json_string(copy);
    free(copy);
    return v;
}

static const char *const builtin_exceptions[] = {
    "ArithmeticError", "AssertionError", "AttributeError", "ConnectionError", "Exception",
    "FileNotFoundError", "IndexError", "KeyError", "LookupError", "MemoryError",
    "NotImplementedError", "OSError", "OverflowError", "PermissionError", "RuntimeError",
    "TimeoutError", "TypeError", "ValueError", "ZeroDivisionError",
};

json_t *message_exception(const char *exc_type, const char *exc_module, const char *message)
{
    if (!exc_module) {
        exc_module = "celeriac";
        for (size_t i = 0; i < ARRAY_SIZE(builtin_exceptions); i++)
            if (!strcmp(exc_type, builtin_exceptions[i]))
                exc_module = "builtins";
    }
    json_t *msg = message_string_lossy(message);
    return json_pack("{s:s, s:[o], s:s}", "exc_type", exc_type, "exc_message", msg, "exc_module",
                     exc_module);
}

void message_traceback(struct buf *out, const json_t *exc, const char *task_name,
                       const char *task_id)
{
    const char *type = json_string_value(json_object_get(exc, "exc_type"));
    const char *module = json_string_value(json_object_get(exc, "exc_module"));
    json_t *args = json_object_get(exc, "exc_message");
    buf_adds(out, "Traceback (most recent call last):\n");
    if (task_name)
        buf_addf(out, "  File \"celeriac\", in %s[%s]\n    (a C task function; no Python "
                      "frames)\n", task_name, task_id ? task_id : "?");
    else
        buf_adds(out, "  File \"celeriac\", in the worker\n");
    if (module && strcmp(module, "builtins") && strcmp(module, "__main__"))
        buf_addf(out, "%s.", module);
    buf_adds(out, type ? type : "Exception");
    /* Python prints str(exc): the single argument, or the tuple of them */
    json_t *only = json_is_array(args) && json_array_size(args) == 1 ? json_array_get(args, 0)
                                                                     : args;
    char *text = json_is_string(only) ? NULL
                                      : pyjson_dumps(only, JSON_COMPACT | JSON_ENCODE_ANY);
    const char *shown = json_is_string(only) ? json_string_value(only) : text;
    if (shown && *shown)
        buf_addf(out, ": %s", shown);
    buf_addch(out, '\n');
    free(text);
}

void message_priority_list(struct buf *out, const char *queue, int priority)
{
    static const int steps[] = {0, 3, 6, 9};
    int bucket = 0;
    for (size_t i = 0; i < ARRAY_SIZE(steps); i++)
        if (priority >= steps[i])
            bucket = steps[i];
    buf_adds(out, queue);
    if (bucket)
        buf_addf(out, "\x06\x16%d", bucket);
}

static json_t *time_or_null(double t)
{
    if (t <= 0)
        return json_null();
    struct buf b = BUF_INIT;
    time_format_iso(&b, t, true);
    json_t *v = json_string(b.data);
    buf_release(&b);
    return v;
}

static json_t *string_or_null(const char *s)
{
    return s ? json_string(s) : json_null();
}

static json_t *limit_or_null(double v)
{
    return v > 0 ? json_real(v) : json_null();
}

void message_encode_task(struct buf *out, const struct task_send *t, char *id_out)
{
    char id[UUID_STR_LEN], tag[UUID_STR_LEN];
    if (t->id)
        snprintf(id, sizeof(id), "%s", t->id);
    else
        uuid_generate(id);
    uuid_generate(tag);
    const char *queue = t->queue ? t->queue : "celery";

    json_t *args = t->args ? json_incref(t->args) : json_array();
    json_t *kwargs = t->kwargs ? json_incref(t->kwargs) : json_object();
    json_t *embed = t->embed ? json_incref(t->embed)
                             : json_pack("{s:n, s:n, s:n, s:n}", "callbacks", "errbacks",
                                         "chain", "chord");
    char *argsrepr = pyjson_dumps(args, JSON_COMPACT | JSON_ENCODE_ANY);
    char *kwargsrepr = pyjson_dumps(kwargs, JSON_COMPACT);
    json_t *body = json_pack("[ooo]", args, kwargs, embed);
    struct buf encoded = BUF_INIT, b64 = BUF_INIT;
    serializer_dump(&encoded, t->serializer, body);
    json_decref(body);
    base64_encode(&b64, encoded.data, encoded.len);
    buf_release(&encoded);

    char origin[128], host[64] = "localhost";
    gethostname(host, sizeof(host) - 1);
    snprintf(origin, sizeof(origin), "celeriac%d@%s", (int)getpid(), host);

    json_t *headers = json_pack(
        "{s:s, s:s, s:s, s:n, s:o, s:o, s:o, s:o, s:i, s:[oo], s:s, s:o, s:s, s:s, s:s, s:b}",
        "lang", "c", "task", t->name, "id", id, "shadow", "eta", time_or_null(t->eta), "expires",
        time_or_null(t->expires), "group", string_or_null(t->group), "group_index",
        t->has_group_index ? json_integer(t->group_index) : json_null(), "retries",
        t->retries, "timelimit", limit_or_null(t->time_limit), limit_or_null(t->soft_time_limit),
        "root_id", t->root_id ? t->root_id : id, "parent_id", string_or_null(t->parent_id),
        "argsrepr", argsrepr, "kwargsrepr", kwargsrepr, "origin", origin, "ignore_result",
        t->ignore_result);
    free(argsrepr);
    free(kwargsrepr);
    json_t *props = json_pack(
        "{s:s, s:s, s:i, s:{s:s, s:s}, s:i, s:s, s:s}", "correlation_id", id, "reply_to",
        t->reply_to ? t->reply_to : "", "delivery_mode", 2, "delivery_info", "exchange",
        t->exchange ? t->exchange : "", "routing_key", queue, "priority", t->priority,
        "body_encoding", "base64", "delivery_tag", tag);
    if (t->expires > 0) {
        /* As kombu's Producer.publish(expiration=s): str(int(s * 1000)), the
         * time left (0 when past); RabbitMQ drops it from the queue then. */
        double left_ms = (t->expires - time_now()) * 1000.0;
        char ms[32];
        snprintf(ms, sizeof(ms), "%lld", left_ms > 0 ? (long long)left_ms : 0LL);
        json_object_set_new(props, "expiration", json_string(ms));
    }
    json_t *env = json_pack("{s:s, s:s, s:s, s:o, s:o}", "body", b64.data, "content-encoding",
                            serializer_content_encoding(t->serializer), "content-type",
                            serializer_content_type(t->serializer), "headers", headers,
                            "properties", props);
    buf_release(&b64);
    char *text = json_dumps(env, JSON_COMPACT);
    buf_adds(out, text);
    free(text);
    json_decref(env);
    if (id_out)
        memcpy(id_out, id, UUID_STR_LEN);
}
