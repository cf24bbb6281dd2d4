/* SPDX-License-Identifier: MIT
 * base64.h: RFC 4648 base64 (standard alphabet, '=' padding), as kombu writes
 * envelope bodies.
 */
#ifndef CELERIAC_BASE64_H
#define CELERIAC_BASE64_H

struct buf;

/* Appends the encoding of (data, len) to out. */
void base64_encode(struct buf *out, const void *data, size_t len);
/* Appends the decoding of (text, len) to out. Ignores no characters: any byte
 * outside the alphabet, bad padding or a bad length gives -EINVAL (out may
 * then hold a partial decoding). */
int base64_decode(struct buf *out, const char *text, size_t len);

#endif /* CELERIAC_BASE64_H */
