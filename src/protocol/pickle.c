/* SPDX-License-Identifier: MIT
 * protocol/pickle.c: the protocol-5 pickle writer of pickle.h, with CPython's
 * framing (frames of at least 4 bytes, a new one after 64 KiB, payloads of
 * 64 KiB or more outside any frame) so its bytes equal Python's.
 */
#include "common.h"
#include "protocol/pickle.h"
#include "util/buf.h"

#include <stdint.h>

/* Opcodes (CPython Lib/pickle.py) */
#define OP_PROTO 0x80
#define OP_FRAME 0x95
#define OP_STOP '.'
#define OP_NONE 'N'
#define OP_NEWTRUE 0x88
#define OP_NEWFALSE 0x89
#define OP_BININT1 'K'
#define OP_BININT2 'M'
#define OP_BININT 'J'
#define OP_LONG1 0x8a
#define OP_BINFLOAT 'G'
#define OP_SHORT_BINUNICODE 0x8c
#define OP_BINUNICODE 'X'
#define OP_BINUNICODE8 0x8d
#define OP_EMPTY_LIST ']'
#define OP_APPEND 'a'
#define OP_APPENDS 'e'
#define OP_EMPTY_DICT '}'
#define OP_SETITEM 's'
#define OP_SETITEMS 'u'
#define OP_MARK '('
#define OP_EMPTY_TUPLE ')'
#define OP_TUPLE 't'
#define OP_TUPLE1 0x85
#define OP_MEMOIZE 0x94
#define OP_BINGET 'h'
#define OP_LONG_BINGET 'j'

#define FRAME_HEADER_SIZE 9     /* FRAME + 8-byte length */
#define FRAME_SIZE_MIN 4        /* shorter frames lose their header */
#define FRAME_SIZE_TARGET 65536 /* a frame this long ends before the next object */
#define BATCH_SIZE 1000         /* items per APPENDS / SETITEMS */
#define NO_FRAME SIZE_MAX

struct pickler {
    struct buf *out;
    size_t frame_start;  /* offset of the open frame's header, or NO_FRAME */
    bool framing;        /* off while a large payload is written outside frames */
    uint32_t memo_next;  /* index the next MEMOIZE gets */
    json_t *memo;        /* string value -> memo index, for the strings CPython shares */
    unsigned flags;
};

static void write_bytes(struct pickler *p, const void *data, size_t len)
{
    if (p->framing && p->frame_start == NO_FRAME) {
        p->frame_start = p->out->len;
        static const char header[FRAME_HEADER_SIZE];
        buf_add(p->out, header, sizeof(header));
    }
    buf_add(p->out, data, len);
}

static void write_op(struct pickler *p, unsigned char op)
{
    write_bytes(p, &op, 1);
}

static void put_le(struct pickler *p, uint64_t v, size_t n)
{
    unsigned char b[8];
    for (size_t i = 0; i < n; i++)
        b[i] = (unsigned char)(v >> (8 * i));
    write_bytes(p, b, n);
}

/* Closes the open frame: its header gets the length, or is cut out when the
 * frame is too short to be worth one. */
static void commit_frame(struct pickler *p)
{
    if (p->frame_start == NO_FRAME)
        return;
    struct buf *o = p->out;
    size_t start = p->frame_start, len = o->len - start - FRAME_HEADER_SIZE;
    p->frame_start = NO_FRAME;
    if (len >= FRAME_SIZE_MIN) {
        o->data[start] = (char)OP_FRAME;
        for (size_t i = 0; i < 8; i++)
            o->data[start + 1 + i] = (char)(unsigned char)((uint64_t)len >> (8 * i));
        return;
    }
    memmove(o->data + start, o->data + start + FRAME_HEADER_SIZE, len);
    o->len -= FRAME_HEADER_SIZE;
    o->data[o->len] = '\0';
}

/* Before each object, as CPython's save(): a long frame ends here. */
static void object_boundary(struct pickler *p)
{
    if (p->frame_start != NO_FRAME &&
        p->out->len - p->frame_start - FRAME_HEADER_SIZE >= FRAME_SIZE_TARGET)
        commit_frame(p);
}

/* An opcode with its payload; a large payload goes outside any frame. */
static void write_payload(struct pickler *p, const unsigned char *head, size_t head_len,
                          const char *data, size_t len)
{
    bool bypass = len >= FRAME_SIZE_TARGET;
    if (bypass) {
        commit_frame(p);
        p->framing = false;
    }
    write_bytes(p, head, head_len);
    write_bytes(p, data, len);
    p->framing = true;
}

static uint32_t memoize(struct pickler *p)
{
    write_op(p, OP_MEMOIZE);
    return p->memo_next++;
}

static void write_get(struct pickler *p, json_int_t idx)
{
    if (idx < 256) {
        unsigned char op[2] = {OP_BINGET, (unsigned char)idx};
        write_bytes(p, op, 2);
        return;
    }
    write_op(p, OP_LONG_BINGET);
    put_le(p, (uint64_t)idx, 4);
}

static void save_int(struct pickler *p, json_int_t v)
{
    if (v >= 0 && v < 256) {
        unsigned char op[2] = {OP_BININT1, (unsigned char)v};
        write_bytes(p, op, 2);
    } else if (v >= 0 && v < 65536) {
        write_op(p, OP_BININT2);
        put_le(p, (uint64_t)v, 2);
    } else if (v >= INT32_MIN && v <= INT32_MAX) {
        write_op(p, OP_BININT);
        put_le(p, (uint64_t)v, 4);
    } else {
        /* the shortest little-endian two's complement, as CPython's LONG1 */
        size_t n = 1;
        while (n < 8 && !(v >= -((json_int_t)1 << (8 * n - 1)) &&
                          v < ((json_int_t)1 << (8 * n - 1))))
            n++;
        unsigned char op[2] = {OP_LONG1, (unsigned char)n};
        write_bytes(p, op, 2);
        put_le(p, (uint64_t)v, n);
    }
}

static void save_float(struct pickler *p, double d)
{
    uint64_t bits;
    memcpy(&bits, &d, sizeof(bits));
    unsigned char b[9] = {OP_BINFLOAT};
    for (int i = 0; i < 8; i++)
        b[1 + i] = (unsigned char)(bits >> (56 - 8 * i)); /* big-endian */
    write_bytes(p, b, sizeof(b));
}

/* CPython keeps one object for "" and for each character up to U+00FF, so
 * every occurrence of one of them after the first is a memo reference. */
static bool is_shared_string(const char *s, size_t len)
{
    const unsigned char *u = (const unsigned char *)s;
    return len == 0 || (len == 1 && u[0] < 0x80) || (len == 2 && (u[0] == 0xc2 || u[0] == 0xc3));
}

/* Dict keys (which json.loads makes once per distinct key) and the shared
 * strings are written once per value; other strings every time. */
static void save_string(struct pickler *p, const char *s, size_t len, bool is_key)
{
    object_boundary(p);
    bool by_value = (is_key || is_shared_string(s, len)) && strlen(s) == len;
    json_t *seen = by_value ? json_object_get(p->memo, s) : NULL;
    if (seen) {
        write_get(p, json_integer_value(seen));
        return;
    }
    unsigned char head[9];
    size_t head_len;
    if (len < 256) {
        head[0] = OP_SHORT_BINUNICODE;
        head[1] = (unsigned char)len;
        head_len = 2;
    } else if ((uint64_t)len <= UINT32_MAX) {
        head[0] = OP_BINUNICODE;
        for (size_t i = 0; i < 4; i++)
            head[1 + i] = (unsigned char)((uint64_t)len >> (8 * i));
        head_len = 5;
    } else {
        head[0] = OP_BINUNICODE8;
        for (size_t i = 0; i < 8; i++)
            head[1 + i] = (unsigned char)((uint64_t)len >> (8 * i));
        head_len = 9;
    }
    write_payload(p, head, head_len, s, len);
    uint32_t idx = memoize(p);
    if (by_value)
        json_object_set_new(p->memo, s, json_integer(idx));
}

static int save(struct pickler *p, const json_t *v, int depth, struct err *e);

/* Celery's exception args: a tuple, as ensure_serializable returns them. */
static int save_tuple(struct pickler *p, const json_t *items, int depth, struct err *e)
{
    object_boundary(p);
    size_t n = json_array_size(items);
    if (n == 0) {
        write_op(p, OP_EMPTY_TUPLE);
        return 0;
    }
    if (n > 3)
        write_op(p, OP_MARK);
    for (size_t i = 0; i < n; i++) {
        int rc = save(p, json_array_get(items, i), depth + 1, e);
        if (rc)
            return rc;
    }
    write_op(p, n > 3 ? OP_TUPLE : (unsigned char)(OP_TUPLE1 + n - 1));
    memoize(p);
    return 0;
}

static int save_list(struct pickler *p, const json_t *v, int depth, struct err *e)
{
    write_op(p, OP_EMPTY_LIST);
    memoize(p);
    size_t n = json_array_size(v);
    if (n == 1) {
        int rc = save(p, json_array_get(v, 0), depth + 1, e);
        if (!rc)
            write_op(p, OP_APPEND);
        return rc;
    }
    for (size_t i = 0; i < n;) {
        write_op(p, OP_MARK);
        for (size_t batch = 0; batch < BATCH_SIZE && i < n; batch++, i++) {
            int rc = save(p, json_array_get(v, i), depth + 1, e);
            if (rc)
                return rc;
        }
        write_op(p, OP_APPENDS);
    }
    return 0;
}

static int save_item(struct pickler *p, const char *key, const json_t *value, int depth,
                     struct err *e)
{
    save_string(p, key, strlen(key), true);
    if (depth == 0 && (p->flags & PICKLE_EXCEPTION) && !strcmp(key, "exc_message") &&
        json_is_array(value))
        return save_tuple(p, value, depth + 1, e);
    return save(p, value, depth + 1, e);
}

static int save_dict(struct pickler *p, const json_t *v, int depth, struct err *e)
{
    write_op(p, OP_EMPTY_DICT);
    memoize(p);
    size_t n = json_object_size(v), i = 0;
    if (n == 0)
        return 0;
    bool single = n == 1;
    const char *key;
    json_t *value;
    json_object_foreach((json_t *)v, key, value) {
        if (!single && i % BATCH_SIZE == 0)
            write_op(p, OP_MARK);
        int rc = save_item(p, key, value, depth, e);
        if (rc)
            return rc;
        i++;
        if (!single && (i % BATCH_SIZE == 0 || i == n))
            write_op(p, OP_SETITEMS);
    }
    if (single)
        write_op(p, OP_SETITEM);
    return 0;
}

static int save(struct pickler *p, const json_t *v, int depth, struct err *e)
{
    if (depth > PICKLE_DEPTH_MAX)
        return err_set(e, E_TOO_BIG, "value nests deeper than %d levels", PICKLE_DEPTH_MAX);
    if (json_is_string(v)) {
        save_string(p, json_string_value(v), json_string_length(v), false);
        return 0;
    }
    object_boundary(p);
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return save_dict(p, v, depth, e);
    case JSON_ARRAY:
        return save_list(p, v, depth, e);
    case JSON_INTEGER:
        save_int(p, json_integer_value(v));
        return 0;
    case JSON_REAL:
        save_float(p, json_real_value(v));
        return 0;
    case JSON_TRUE:
        write_op(p, OP_NEWTRUE);
        return 0;
    case JSON_FALSE:
        write_op(p, OP_NEWFALSE);
        return 0;
    case JSON_STRING:
    case JSON_NULL:
        break;
    }
    write_op(p, OP_NONE);
    return 0;
}

int pickle_dump(struct buf *out, const json_t *v, unsigned flags, struct err *e)
{
    struct pickler p = {.out = out, .frame_start = NO_FRAME, .memo = json_object(),
                        .flags = flags};
    const unsigned char proto[2] = {OP_PROTO, 5};
    buf_add(out, proto, sizeof(proto)); /* before framing starts, as CPython */
    p.framing = true;
    int rc = save(&p, v ? v : json_null(), 0, e);
    if (!rc) {
        write_op(&p, OP_STOP);
        commit_frame(&p);
    }
    json_decref(p.memo);
    return rc;
}
