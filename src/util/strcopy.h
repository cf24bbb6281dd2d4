/* SPDX-License-Identifier: MIT
 * strcopy.h: a C string into a fixed array, truncated and always terminated:
 * what snprintf(dst, size, "%s", src) does, without parsing a format on the
 * per-task path.
 */
#ifndef CELERIAC_STRCOPY_H
#define CELERIAC_STRCOPY_H

#include <string.h>

static inline void str_copy(char *dst, size_t size, const char *src)
{
    if (!size)
        return;
    size_t n = strnlen(src, size - 1);
    memcpy(dst, src, n);
    dst[n] = '\0';
}

#endif /* CELERIAC_STRCOPY_H */
