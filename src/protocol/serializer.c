/* SPDX-License-Identifier: MIT
 * protocol/serializer.c: choosing between JSON and msgpack (see serializer.h).
 * The encodings themselves live in pyjson.c and msgpack.c.
 */
#include "common.h"
#include "protocol/msgpack.h"
#include "protocol/pyjson.h"
#include "protocol/serializer.h"
#include "util/buf.h"

const char *serializer_content_type(enum serializer s)
{
    return s == SERIALIZER_MSGPACK ? "application/x-msgpack" : "application/json";
}

const char *serializer_content_encoding(enum serializer s)
{
    return s == SERIALIZER_MSGPACK ? "binary" : "utf-8";
}

const char *serializer_name(enum serializer s)
{
    return s == SERIALIZER_MSGPACK ? "msgpack" : "json";
}

void serializer_dump(struct buf *out, enum serializer s, const json_t *v)
{
    if (s == SERIALIZER_MSGPACK) {
        size_t start = out->len;
        if (protocol_msgpack_dump(out, v, NULL)) {
            out->len = start;
            out->data[start] = '\0';
            buf_addch(out, (char)0xc0); /* nil */
        }
        return;
    }
    char *text = pyjson_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    buf_adds(out, text ? text : "null");
    free(text);
}

/* True for the first byte of a msgpack array or map. */
static bool is_msgpack_container(unsigned char b)
{
    return (b >= 0x80 && b <= 0x9f) || (b >= 0xdc && b <= 0xdf);
}

json_t *serializer_load_sniffed(const char *data, size_t len, enum serializer *found,
                                struct err *e)
{
    if (len && is_msgpack_container((unsigned char)data[0])) {
        if (found)
            *found = SERIALIZER_MSGPACK;
        return protocol_msgpack_load(data, len, e);
    }
    if (found)
        *found = SERIALIZER_JSON;
    json_error_t jerr;
    json_t *v = pyjson_loadb(data, len, JSON_DECODE_ANY, &jerr);
    if (!v)
        err_set(e, E_PROTOCOL, "stored value is neither JSON nor msgpack: %s", jerr.text);
    return v;
}
