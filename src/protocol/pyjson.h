/* SPDX-License-Identifier: MIT
 * protocol/pyjson.h: Python's JSON dialect on top of jansson. Python's json
 * writes NaN, Infinity and -Infinity, which are not JSON and which jansson
 * can neither parse nor hold. Such a number is carried inside celeriac as a
 * marked string (U+FDD0, a Unicode noncharacter, then the token) and written
 * back out as the bare token, so arguments and results round-trip exactly as
 * Python's worker gives them.
 */
#ifndef CELERIAC_PYJSON_H
#define CELERIAC_PYJSON_H

#include <jansson.h>

/* json_loadb, reading NaN, Infinity and -Infinity outside strings as marked
 * strings. Returns a new reference or NULL (err filled as by jansson). */
json_t *pyjson_loadb(const char *text, size_t len, size_t flags, json_error_t *err);
/* json_dumps, writing marked strings as Python's bare tokens. Caller frees. */
char *pyjson_dumps(const json_t *v, size_t flags);
/* A new reference carrying d: a real, or the marked string for NaN and ±inf. */
json_t *pyjson_real(double d);
/* True when v is a number or a marked string; *out gets its value. */
bool pyjson_number(const json_t *v, double *out);
/* True when v is a marked string (a non-finite float). */
bool pyjson_is_special(const json_t *v);

struct buf;
/* Appends Python's repr() of v: 'text' (quoted and escaped as Python does),
 * None, True, False, numbers, [..], {..}; NaN and inf as nan and inf. */
void pyjson_repr(struct buf *out, const json_t *v);
/* Appends the repr of an exception dict {"exc_type", "exc_message": [args]}
 * as Python prints it: ValueError('boom'). Anything else as pyjson_repr. */
void pyjson_exc_repr(struct buf *out, const json_t *exc);

#endif /* CELERIAC_PYJSON_H */
