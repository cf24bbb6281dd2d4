/* SPDX-License-Identifier: MIT
 * banned.h: functions with a safer replacement in this tree become compile errors.
 * Use struct buf (util/buf.h) or snprintf instead of the string copiers, and the
 * _r variants of the time functions.
 */
#ifndef CELERIAC_BANNED_H
#define CELERIAC_BANNED_H

#define BANNED(func) sorry_##func##_is_a_banned_function

#undef strcpy
#define strcpy(x, y) BANNED(strcpy)
#undef strcat
#define strcat(x, y) BANNED(strcat)
#undef strncpy
#define strncpy(x, y, n) BANNED(strncpy)
#undef sprintf
#define sprintf(...) BANNED(sprintf)
#undef vsprintf
#define vsprintf(...) BANNED(vsprintf)
#undef strtok
#define strtok(x, y) BANNED(strtok)
#undef localtime
#define localtime(t) BANNED(localtime)
#undef gmtime
#define gmtime(t) BANNED(gmtime)

#endif /* CELERIAC_BANNED_H */
