/* SPDX-License-Identifier: MIT
 * worker/trim.h: giving back the library pages the master touched while
 * starting (relocations, constructors of libpq's TLS and Kerberos stack) and
 * will not touch again while it only waits, reaps and forks.
 */
#ifndef CELERIAC_WORKER_TRIM_H
#define CELERIAC_WORKER_TRIM_H

/* Drops this process's resident pages of read-only, file-backed mappings
 * that hold no private (modified) page, so the kernel re-reads them from the
 * page cache if they are ever touched again. Never touches writable,
 * anonymous or relocated memory. Returns the KiB released, or -errno. */
long trim_clean_file_pages(void);

#endif /* CELERIAC_WORKER_TRIM_H */
