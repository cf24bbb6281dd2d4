/* SPDX-License-Identifier: MIT
 * redis_sentinel.h: finding a Redis master through Redis Sentinel, as kombu's
 * SentinelChannel and Celery's SentinelBackend do, and noticing (once per
 * process) that it moved. Connecting to the master is redis_link.c's job;
 * this file never holds a connection open.
 */
#ifndef CELERIAC_REDIS_SENTINEL_H
#define CELERIAC_REDIS_SENTINEL_H

struct redis_url;

/* Asks the sentinels of u (a sentinel:// list with master_name set) for the
 * address of the master, starting with the one that answered last in this
 * process, each with a short timeout. A sentinel that answers NOAUTH is
 * authenticated with u's password and asked again. On success fills host
 * (host_len bytes) and *port, names the sentinel that answered in via
 * (via_len bytes) and returns 0. Otherwise E_CONN_LOST (retry with backoff)
 * with one line in e naming the sentinels and the reason, or -EINVAL when
 * master_name is missing. Either process; not async-signal-safe. */
int redis_sentinel_locate(const struct redis_url *u, char *host, size_t host_len, int *port,
                          char *via, size_t via_len, struct err *e);

/* Records that the master of u was found, and verified as a master, at
 * where ("host:port") through sentinel via: logs one line the first time in
 * this process (info) and one warning each time the address differs from
 * the last one (a failover). Either process. */
void redis_sentinel_confirmed(const struct redis_url *u, const char *where, const char *via);

/* How many times this process has seen a master move (any name): a link
 * opened before the last move must be closed and opened again before its
 * next use, so one task's result and its ack reach the same master. */
unsigned redis_sentinel_moves(void);

/* The address the last answering sentinel gave did not lead to a master:
 * the next redis_sentinel_locate starts with the next sentinel, so one that
 * missed the failover (partitioned, restarted) does not keep every attempt
 * on a dead address. Either process. */
void redis_sentinel_distrust(const struct redis_url *u);

/* Whether an error reply on a connection to a sentinel-found master means
 * the master has moved (READONLY: it is a replica now; UNBLOCKED: a blocked
 * command was cut by the role change): the connection must be closed and
 * the master found again. */
bool redis_sentinel_is_moved_error(const char *text);

#endif /* CELERIAC_REDIS_SENTINEL_H */
