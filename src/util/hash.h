/* SPDX-License-Identifier: MIT
 * util/hash.h: a 64-bit FNV-1a hash that is never 0, so callers can keep 0
 * for "nothing" (revoked-id slots, the settled message of a hand).
 */
#ifndef CELERIAC_UTIL_HASH_H
#define CELERIAC_UTIL_HASH_H

#include <stddef.h>
#include <stdint.h>

static inline uint64_t hash_nonzero(const void *data, size_t len)
{
    const unsigned char *p = data;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < len; i++)
        h = (h ^ p[i]) * 1099511628211ull;
    return h ? h : 1;
}

#endif /* CELERIAC_UTIL_HASH_H */
