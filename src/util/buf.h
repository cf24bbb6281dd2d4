/* SPDX-License-Identifier: MIT
 * buf.h: growable byte strings. A buf is never NULL-data and always
 * NUL-terminated, so .data can be passed to C string functions.
 */
#ifndef CELERIAC_BUF_H
#define CELERIAC_BUF_H

struct buf {
    char *data;   /* never NULL; points at a static "" until the first append */
    size_t len;   /* bytes used, not counting the terminating NUL */
    size_t cap;   /* bytes allocated, 0 while data is the static "" */
};

#define BUF_INIT { buf_empty, 0, 0 }
extern char buf_empty[];

void buf_init(struct buf *b);
/* Frees the contents and re-initialises b. */
void buf_release(struct buf *b);
/* Empties b, keeping its allocation for reuse. */
void buf_reset(struct buf *b);
void buf_grow(struct buf *b, size_t extra);
void buf_add(struct buf *b, const void *data, size_t len);
void buf_adds(struct buf *b, const char *s);
void buf_addch(struct buf *b, char c);
void buf_addf(struct buf *b, const char *fmt, ...) ATTR_PRINTF(2, 3);
void buf_vaddf(struct buf *b, const char *fmt, va_list ap) ATTR_PRINTF(2, 0);
/* Transfers ownership of the bytes to the caller (free() them); b is re-initialised. */
char *buf_detach(struct buf *b, size_t *len);

#endif /* CELERIAC_BUF_H */
