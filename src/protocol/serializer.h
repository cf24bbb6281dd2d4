/* SPDX-License-Identifier: MIT
 * protocol/serializer.h: the two body and result encodings celeriac speaks,
 * Celery's "json" (Python's dialect, see pyjson.h) and "msgpack" (see
 * msgpack.h), behind one choice, so callers never branch on bytes.
 */
#ifndef CELERIAC_PROTOCOL_SERIALIZER_H
#define CELERIAC_PROTOCOL_SERIALIZER_H

#include <jansson.h>

struct buf;

enum serializer {
    SERIALIZER_JSON = 0,       /* application/json, utf-8: Celery's default */
    SERIALIZER_MSGPACK,        /* application/x-msgpack, binary */
};

/* kombu's content-type and content-encoding for s (static strings). */
const char *serializer_content_type(enum serializer s);
const char *serializer_content_encoding(enum serializer s);
/* "json" or "msgpack" (static). */
const char *serializer_name(enum serializer s);

/* Appends v encoded with s to out. A value neither encoding can write (nested
 * past jansson's dump limit) is written as null, as the JSON path always did.
 * v is borrowed. Either process. */
void serializer_dump(struct buf *out, enum serializer s, const json_t *v);

/* Decodes bytes stored by either serializer (a result meta, a chord part):
 * a JSON document starts with '{', '[' or whitespace; msgpack maps start
 * with 0x80-0x8f, 0xde or 0xdf, arrays with 0x90-0x9f, 0xdc or 0xdd, which
 * no JSON text does. Returns a new reference, or NULL with the reason in e.
 * When found is not NULL it gets the serializer the bytes were in. */
json_t *serializer_load_sniffed(const char *data, size_t len, enum serializer *found,
                                struct err *e);

#endif /* CELERIAC_PROTOCOL_SERIALIZER_H */
