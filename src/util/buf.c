/* SPDX-License-Identifier: MIT
 * buf.c: growable byte strings (see buf.h).
 */
#include "common.h"
#include "util/buf.h"

char buf_empty[1];

void buf_init(struct buf *b)
{
    b->data = buf_empty;
    b->len = 0;
    b->cap = 0;
}

void buf_release(struct buf *b)
{
    if (b->cap)
        free(b->data);
    buf_init(b);
}

void buf_reset(struct buf *b)
{
    b->len = 0;
    if (b->cap)
        b->data[0] = '\0';
}

void buf_grow(struct buf *b, size_t extra)
{
    if (extra >= SIZE_MAX - b->len - 1)
        abort();
    size_t need = b->len + extra + 1;
    if (need <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need)
        cap = cap < SIZE_MAX / 2 ? cap * 2 : need;
    if (b->cap) {
        b->data = xrealloc(b->data, cap);
    } else {
        b->data = xmalloc(cap);
        b->data[0] = '\0';
    }
    b->cap = cap;
}

void buf_add(struct buf *b, const void *data, size_t len)
{
    if (!len)
        return;
    buf_grow(b, len);
    memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = '\0';
}

void buf_adds(struct buf *b, const char *s)
{
    buf_add(b, s, strlen(s));
}

void buf_addch(struct buf *b, char c)
{
    buf_add(b, &c, 1);
}

void buf_vaddf(struct buf *b, const char *fmt, va_list ap)
{
    va_list copy;
    va_copy(copy, ap);
    int n = vsnprintf(b->data + b->len, b->cap ? b->cap - b->len : 0, fmt, copy);
    va_end(copy);
    if (n < 0)
        return;
    if (b->cap && (size_t)n < b->cap - b->len) {
        b->len += (size_t)n;
        return;
    }
    buf_grow(b, (size_t)n);
    vsnprintf(b->data + b->len, b->cap - b->len, fmt, ap);
    b->len += (size_t)n;
}

void buf_addf(struct buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    buf_vaddf(b, fmt, ap);
    va_end(ap);
}

char *buf_detach(struct buf *b, size_t *len)
{
    char *p = b->cap ? b->data : xstrdup("");
    if (len)
        *len = b->len;
    buf_init(b);
    return p;
}
