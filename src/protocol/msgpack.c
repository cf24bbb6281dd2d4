/* SPDX-License-Identifier: MIT
 * protocol/msgpack.c: msgpack <-> jansson (see msgpack.h). msgpack-c does the
 * decoding and the encoding; this file bounds what hostile bytes can make it
 * allocate, and maps its objects onto what JSON can hold.
 */
#include "common.h"
#include "protocol/msgpack.h"
#include "protocol/pyjson.h"
#include "util/buf.h"

#include <math.h>
#include <msgpack.h>

/* The shape of one msgpack header: its length, the payload bytes after it
 * (str, bin, ext) or the elements that follow it (array, map: keys and
 * values). */
struct mp_header {
    size_t size;
    size_t payload;
    size_t elements;
};

static size_t big_endian(const unsigned char *p, size_t n)
{
    size_t v = 0;
    for (size_t i = 0; i < n; i++)
        v = v << 8 | p[i];
    return v;
}

/* Reads the header at p (avail bytes there, at least one). Returns 0, or
 * E_PROTOCOL when it is truncated or the byte is never used. */
static int read_header(const unsigned char *p, size_t avail, struct mp_header *h, struct err *e)
{
    unsigned char b = p[0];
    size_t width = 0; /* bytes of the length field that follows b */
    *h = (struct mp_header){.size = 1};
    if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3)
        return 0;
    if (b <= 0x8f)
        h->elements = 2 * (size_t)(b & 0x0f);
    else if (b <= 0x9f)
        h->elements = b & 0x0f;
    else if (b <= 0xbf)
        h->payload = b & 0x1f;
    else if (b == 0xc1)
        return err_set(e, E_PROTOCOL, "msgpack byte 0xc1 is never used");
    else if (b >= 0xca && b <= 0xd3) /* float32/64, uint8..64, int8..64 */
        h->size += (size_t)(b == 0xca ? 4 : b == 0xcb ? 8 : 1 << ((b - 0xcc) & 3));
    else if (b >= 0xd4 && b <= 0xd8) /* fixext 1..16: type byte, data */
        h->size += 1 + ((size_t)1 << (b - 0xd4));
    else
        width = b == 0xc4 || b == 0xc7 || b == 0xd9 ? 1
              : b == 0xc5 || b == 0xc8 || b == 0xda || b == 0xdc || b == 0xde ? 2 : 4;
    if (h->size + width > avail)
        return err_set(e, E_PROTOCOL, "msgpack data is truncated");
    if (!width)
        return 0;
    size_t n = big_endian(p + 1, width);
    h->size += width;
    if (b >= 0xc7 && b <= 0xc9) /* ext 8/16/32: a type byte, then n bytes */
        h->size += 1;
    if (b == 0xdc || b == 0xdd)
        h->elements = n;
    else if (b == 0xde || b == 0xdf)
        h->elements = 2 * n;
    else
        h->payload = n;
    return h->size > avail ? err_set(e, E_PROTOCOL, "msgpack data is truncated") : 0;
}

/* Walks one object over all of (p, len) without building it: complete,
 * nothing after it, nested at most PROTOCOL_MSGPACK_DEPTH_MAX deep, and no
 * container claiming more elements than bytes remain (each takes one at
 * least). msgpack-c allocates a container's slots when it reads its
 * header, so this is what keeps a 5-byte "array of 4 billion" harmless. */
static int check_shape(const unsigned char *p, size_t len, struct err *e)
{
    size_t left[PROTOCOL_MSGPACK_DEPTH_MAX + 1]; /* elements still due at each level */
    int top = 0;
    size_t pos = 0;
    left[0] = 1;
    while (top >= 0) {
        if (!left[top]) {
            top--;
            continue;
        }
        left[top]--;
        if (pos >= len)
            return err_set(e, E_PROTOCOL, "msgpack data is %s", len ? "truncated" : "empty");
        struct mp_header h;
        if (read_header(p + pos, len - pos, &h, e))
            return E_PROTOCOL;
        if (h.payload > len - pos - h.size)
            return err_set(e, E_PROTOCOL, "msgpack data is truncated");
        pos += h.size + h.payload;
        if (!h.elements)
            continue;
        if (h.elements > len - pos)
            return err_set(e, E_PROTOCOL, "msgpack data is truncated: a container claims %zu "
                                          "elements with %zu bytes left", h.elements, len - pos);
        if (top == PROTOCOL_MSGPACK_DEPTH_MAX)
            return err_set(e, E_PROTOCOL, "msgpack data nests deeper than %d levels",
                           PROTOCOL_MSGPACK_DEPTH_MAX);
        left[++top] = h.elements;
    }
    if (pos != len)
        return err_set(e, E_PROTOCOL, "%zu trailing bytes after the msgpack data", len - pos);
    return 0;
}

/* A string JSON can hold: valid UTF-8 and no NUL, as the JSON decoder wants. */
static json_t *string_from(const char *s, size_t n, const char *what, struct err *e)
{
    /* msgpack-c gives no pointer at all for an empty string */
    json_t *v = !n ? json_string("") : memchr(s, '\0', n) ? NULL : json_stringn(s, n);
    if (!v)
        err_set(e, E_PROTOCOL, "msgpack %s is not valid UTF-8 text without NUL", what);
    return v;
}

static json_t *object_to_json(const msgpack_object *o, struct err *e);

static json_t *map_to_json(const msgpack_object_map *map, struct err *e)
{
    json_t *obj = json_object();
    for (uint32_t i = 0; i < map->size; i++) {
        const msgpack_object *k = &map->ptr[i].key;
        if (k->type != MSGPACK_OBJECT_STR) {
            err_set(e, E_PROTOCOL, "msgpack map key is not a string (type %d)", (int)k->type);
            goto out_free;
        }
        json_t *key = string_from(k->via.str.ptr, k->via.str.size, "map key", e);
        json_t *val = key ? object_to_json(&map->ptr[i].val, e) : NULL;
        if (val) /* a repeated key: the last one wins, as in Python */
            json_object_set_new(obj, json_string_value(key), val);
        json_decref(key);
        if (!val)
            goto out_free;
    }
    return obj;
out_free:
    json_decref(obj);
    return NULL;
}

static json_t *array_to_json(const msgpack_object_array *arr, struct err *e)
{
    json_t *list = json_array();
    for (uint32_t i = 0; i < arr->size; i++) {
        json_t *v = object_to_json(&arr->ptr[i], e);
        if (!v) {
            json_decref(list);
            return NULL;
        }
        json_array_append_new(list, v);
    }
    return list;
}

/* One msgpack-c object as a new jansson value, or NULL with the reason.
 * Recursion is bounded by check_shape. */
static json_t *object_to_json(const msgpack_object *o, struct err *e)
{
    switch (o->type) {
    case MSGPACK_OBJECT_NIL:
        return json_null();
    case MSGPACK_OBJECT_BOOLEAN:
        return json_boolean(o->via.boolean);
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        if (o->via.u64 > (uint64_t)INT64_MAX) {
            err_set(e, E_PROTOCOL, "msgpack integer %" PRIu64 " does not fit in int64",
                    o->via.u64);
            return NULL;
        }
        return json_integer((json_int_t)o->via.u64);
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        return json_integer((json_int_t)o->via.i64);
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        return pyjson_real(o->via.f64);
    case MSGPACK_OBJECT_STR:
        return string_from(o->via.str.ptr, o->via.str.size, "string", e);
    case MSGPACK_OBJECT_ARRAY:
        return array_to_json(&o->via.array, e);
    case MSGPACK_OBJECT_MAP:
        return map_to_json(&o->via.map, e);
    case MSGPACK_OBJECT_BIN:
        err_set(e, E_PROTOCOL, "msgpack bin (bytes) values are not supported");
        return NULL;
    case MSGPACK_OBJECT_EXT:
        err_set(e, E_PROTOCOL, "msgpack ext type %d values (timestamps and the like) are not "
                               "supported", (int)o->via.ext.type);
        return NULL;
    }
    err_set(e, E_PROTOCOL, "msgpack object of unknown type %d", (int)o->type);
    return NULL;
}

json_t *protocol_msgpack_load(const char *data, size_t len, struct err *e)
{
    if (check_shape((const unsigned char *)data, len, e))
        return NULL;
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    json_t *v = NULL;
    msgpack_unpack_return rc = msgpack_unpack_next(&u, data, len, &off);
    if (rc != MSGPACK_UNPACK_SUCCESS || off != len)
        err_set(e, E_PROTOCOL, "msgpack-c cannot decode the data (code %d)", (int)rc);
    else
        v = object_to_json(&u.data, e);
    msgpack_unpacked_destroy(&u);
    return v;
}

/* ---- encoding */

static int append_to_buf(void *data, const char *bytes, size_t len)
{
    buf_add(data, bytes, len);
    return 0;
}

/* The same nesting limit jansson's json_dumps applies, so a value either
 * serializer writes, the other writes too. */
#define DUMP_DEPTH_MAX JSON_PARSER_MAX_DEPTH

static int pack_value(msgpack_packer *pk, const json_t *v, int depth, struct err *e);

static int pack_container(msgpack_packer *pk, const json_t *v, int depth, struct err *e)
{
    if (depth >= DUMP_DEPTH_MAX)
        return err_set(e, E_PROTOCOL, "value nests deeper than %d levels", DUMP_DEPTH_MAX);
    if (json_is_array(v)) {
        msgpack_pack_array(pk, json_array_size(v));
        for (size_t i = 0; i < json_array_size(v); i++)
            if (pack_value(pk, json_array_get(v, i), depth + 1, e))
                return E_PROTOCOL;
        return 0;
    }
    msgpack_pack_map(pk, json_object_size(v));
    const char *key;
    json_t *item;
    json_object_foreach((json_t *)v, key, item) {
        size_t n = strlen(key);
        msgpack_pack_str(pk, n);
        msgpack_pack_str_body(pk, key, n);
        if (pack_value(pk, item, depth + 1, e))
            return E_PROTOCOL;
    }
    return 0;
}

static int pack_value(msgpack_packer *pk, const json_t *v, int depth, struct err *e)
{
    double d;
    switch (json_typeof(v)) {
    case JSON_OBJECT:
    case JSON_ARRAY:
        return pack_container(pk, v, depth, e);
    case JSON_STRING:
        if (pyjson_is_special(v) && pyjson_number(v, &d))
            return msgpack_pack_double(pk, d);
        msgpack_pack_str(pk, json_string_length(v));
        return msgpack_pack_str_body(pk, json_string_value(v), json_string_length(v));
    case JSON_INTEGER:
        return msgpack_pack_int64(pk, json_integer_value(v));
    case JSON_REAL:
        return msgpack_pack_double(pk, json_real_value(v));
    case JSON_TRUE:
        return msgpack_pack_true(pk);
    case JSON_FALSE:
        return msgpack_pack_false(pk);
    case JSON_NULL:
        return msgpack_pack_nil(pk);
    }
    return err_set(e, E_PROTOCOL, "value of unknown jansson type");
}

int protocol_msgpack_dump(struct buf *out, const json_t *v, struct err *e)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, append_to_buf);
    return pack_value(&pk, v, 0, e);
}
