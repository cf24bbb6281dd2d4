/* SPDX-License-Identifier: MIT
 * protocol/msgpack.h: msgpack bytes <-> jansson values, over Debian's
 * msgpack-c, so the rest of the worker only ever sees json_t. Covers what
 * kombu's msgpack serializer writes (packb use_bin_type=True); what JSON
 * cannot hold is refused with a reason, never guessed at.
 */
#ifndef CELERIAC_PROTOCOL_MSGPACK_H
#define CELERIAC_PROTOCOL_MSGPACK_H

#include <jansson.h>

struct buf;

/* msgpack-c's unpacker keeps a fixed stack of 32 open containers; deeper
 * input is refused before it gets there. */
#define PROTOCOL_MSGPACK_DEPTH_MAX 32

/* Decodes exactly one msgpack object filling (data, len); data is hostile.
 * Maps with string keys become objects, arrays arrays, str strings (valid
 * UTF-8 without NUL, as the JSON decoder requires), int integers, float32/64
 * reals (NaN and +-inf as pyjson's marked strings), nil/true/false as such.
 * Refused with a NULL return and the reason in e (E_PROTOCOL): empty,
 * truncated or trailing bytes; nesting deeper than PROTOCOL_MSGPACK_DEPTH_MAX;
 * a container claiming more elements than bytes remain; non-string map keys;
 * bin and ext values (timestamps included); positive integers above
 * INT64_MAX (jansson holds int64 only; the JSON decoder refuses them too).
 * Returns a new reference; either process may call it. */
json_t *protocol_msgpack_load(const char *data, size_t len, struct err *e);

/* Appends v as msgpack to out: the encoding Python's msgpack.packb gives the
 * same value (smallest integer form, float64, str for strings), marked
 * strings as the float NaN/inf they stand for. Returns 0, or E_PROTOCOL
 * (out then holds a partial encoding the caller discards) when v nests
 * deeper than jansson's own dump limit. v is borrowed. */
int protocol_msgpack_dump(struct buf *out, const json_t *v, struct err *e);

#endif /* CELERIAC_PROTOCOL_MSGPACK_H */
