/* SPDX-License-Identifier: MIT
 * base64.c: strict base64 for message bodies (see base64.h).
 */
#include "common.h"
#include "util/base64.h"
#include "util/buf.h"

static const char alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

void base64_encode(struct buf *out, const void *data, size_t len)
{
    const unsigned char *p = data;
    buf_grow(out, (len + 2) / 3 * 4);
    char *o = out->data + out->len;
    size_t i = 0;
    for (; i + 2 < len; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        *o++ = alphabet[v >> 18];
        *o++ = alphabet[(v >> 12) & 63];
        *o++ = alphabet[(v >> 6) & 63];
        *o++ = alphabet[v & 63];
    }
    if (i < len) {
        uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < len ? (uint32_t)p[i + 1] << 8 : 0);
        *o++ = alphabet[v >> 18];
        *o++ = alphabet[(v >> 12) & 63];
        *o++ = i + 1 < len ? alphabet[(v >> 6) & 63] : '=';
        *o++ = '=';
    }
    out->len = (size_t)(o - out->data);
    out->data[out->len] = '\0';
}

static int decode_char(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

int base64_decode(struct buf *out, const char *text, size_t len)
{
    if (len % 4)
        return -EINVAL;
    buf_grow(out, len / 4 * 3);
    char *o = out->data + out->len;
    for (size_t i = 0; i < len; i += 4) {
        int a = decode_char((unsigned char)text[i]), b = decode_char((unsigned char)text[i + 1]);
        int c = decode_char((unsigned char)text[i + 2]), d = decode_char((unsigned char)text[i + 3]);
        bool last = i + 4 == len;
        if (a < 0 || b < 0)
            return -EINVAL;
        if (c < 0 && !(last && text[i + 2] == '=' && text[i + 3] == '='))
            return -EINVAL;
        if (d < 0 && !(last && text[i + 3] == '='))
            return -EINVAL;
        uint32_t v = (uint32_t)a << 18 | (uint32_t)b << 12 | (uint32_t)(c < 0 ? 0 : c) << 6 |
                     (uint32_t)(d < 0 ? 0 : d);
        *o++ = (char)(v >> 16);
        if (c >= 0)
            *o++ = (char)(v >> 8 & 255);
        if (d >= 0)
            *o++ = (char)(v & 255);
    }
    out->len = (size_t)(o - out->data);
    out->data[out->len] = '\0';
    return 0;
}
