/* SPDX-License-Identifier: MIT
 * protocol/pickle.h: Python pickle (protocol 5) for JSON-shaped values, as
 * SQLAlchemy's PickleType writes Celery's database result column. Encoding
 * only: celeriac never reads a pickle back, so no unpickler (and none of
 * pickle's code-running opcodes) exists here.
 */
#ifndef CELERIAC_PROTOCOL_PICKLE_H
#define CELERIAC_PROTOCOL_PICKLE_H

#include <jansson.h>

struct buf;

/* Deepest nesting pickle_dump accepts (jansson's own parser stops at 2048). */
#define PICKLE_DEPTH_MAX 2048

enum pickle_dump_flags {
    /* v is a Celery exception dict: its exc_message array is pickled as the
     * tuple Celery's prepare_exception makes of exc.args. */
    PICKLE_EXCEPTION = 1 << 0,
};

/* Appends v pickled with protocol 5 to out, byte for byte what CPython 3.11's
 * pickle.dumps(value, 5) writes for the value json.loads would make of v:
 * null/true/false as None/True/False, integers as int, reals as float,
 * strings as str, arrays as list, objects as dict in key order. Equal dict
 * keys and one-character strings are written once and referred to after, as
 * CPython's shared objects are. Returns 0, or E_TOO_BIG (nesting deeper than
 * PICKLE_DEPTH_MAX) with out holding a partial pickle the caller discards.
 * Either process; not async-signal-safe. */
int pickle_dump(struct buf *out, const json_t *v, unsigned flags, struct err *e);

#endif /* CELERIAC_PROTOCOL_PICKLE_H */
