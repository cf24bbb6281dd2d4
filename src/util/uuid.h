/* SPDX-License-Identifier: MIT
 * uuid.h: random (version 4) UUIDs for task ids, delivery tags and mutex tokens.
 */
#ifndef CELERIAC_UUID_H
#define CELERIAC_UUID_H

#define UUID_STR_LEN 37 /* 36 characters and the NUL */

/* Writes a lowercase UUID4 into out. Either process; not async-signal-safe. */
void uuid_generate(char out[UUID_STR_LEN]);

#endif /* CELERIAC_UUID_H */
