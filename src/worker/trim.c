/* SPDX-License-Identifier: MIT
 * worker/trim.c: see trim.h. Reads /proc/self/smaps: a mapping qualifies only
 * when it is file-backed, not writable, and has no anonymous or private dirty
 * page (a RELRO region is read-only but was written by the dynamic linker:
 * dropping it would lose the relocations, so such mappings are skipped).
 */
#include "common.h"
#include "worker/trim.h"

#include <sys/mman.h>

struct mapping {
    uintptr_t start, end;
    bool candidate;          /* file-backed and not writable */
    long rss_kb, anon_kb, dirty_kb;
};

static long release(const struct mapping *m)
{
    if (!m->candidate || m->anon_kb || m->dirty_kb || !m->rss_kb)
        return 0;
    if (madvise((void *)m->start, m->end - m->start, MADV_DONTNEED))
        return 0;
    return m->rss_kb;
}

long trim_clean_file_pages(void)
{
    FILE *f = fopen("/proc/self/smaps", "re");
    if (!f)
        return -errno;
    char line[512];
    struct mapping m = {0};
    bool have = false;
    long released = 0;
    while (fgets(line, sizeof(line), f)) {
        unsigned long start, end, offset, inode;
        char perms[8], dev[16], path[400] = "";
        if (sscanf(line, "%lx-%lx %7s %lx %15s %lu %399s", &start, &end, perms, &offset, dev,
                   &inode, path) >= 6) {
            if (have)
                released += release(&m);
            m = (struct mapping){.start = start, .end = end};
            /* Only files (a path, an inode), never [heap], [stack], [vdso]. */
            m.candidate = inode != 0 && path[0] == '/' && perms[1] != 'w';
            have = true;
            continue;
        }
        long kb;
        if (sscanf(line, "Rss: %ld kB", &kb) == 1)
            m.rss_kb = kb;
        else if (sscanf(line, "Anonymous: %ld kB", &kb) == 1)
            m.anon_kb = kb;
        else if (sscanf(line, "Private_Dirty: %ld kB", &kb) == 1)
            m.dirty_kb = kb;
    }
    if (have)
        released += release(&m);
    fclose(f);
    return released;
}
