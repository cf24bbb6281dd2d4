/* SPDX-License-Identifier: MIT
 * redis_link.h: one hiredis connection as the broker and the result backend
 * both use it: connect with AUTH/SELECT/keepalive, remember the owning pid,
 * run Lua scripts by SHA with a reload on NOSCRIPT, and tear down in one place.
 * RESP parsing is hiredis's job; this file only adds what hiredis lacks.
 */
#ifndef CELERIAC_REDIS_LINK_H
#define CELERIAC_REDIS_LINK_H

#include <hiredis.h>

struct redis_url;

struct redis_link {
    redisContext *ctx;      /* NULL while disconnected */
    pid_t owner;            /* pid that connected; any other pid is refused */
    int64_t connected_ms;   /* monotonic time of the connect, for the age in logs */
    const char *role;       /* "broker" or "backend": names the link in messages */
    int pending;            /* replies of sent-and-not-awaited commands still to read */
    bool follow_master;     /* opened through sentinels: READONLY means "find it again" */
    unsigned moves_seen;    /* redis_sentinel_moves() at the open; a later move closes it */
    struct redis_script *const *scripts; /* NULL-terminated: loaded on every open */
    char peer[300];         /* "host:port" or the socket path, for messages */
    double timeout_s;       /* the URL's socket_timeout: longest silence past an answer's due */
    bool answered;          /* a reply has arrived: from then on a close is worth a line */
};

/* A server-side Lua script: loaded (SCRIPT LOAD) each time the link opens,
 * then run by its SHA, so the body is neither sent nor hashed per call. */
struct redis_script {
    const char *body;       /* Lua source, static */
    char sha[41];           /* filled by the first load; the same on every server */
};

void redis_link_init(struct redis_link *l, const char *role);
/* Connects to u (TCP keepalive, u's connect and socket timeouts, AUTH, SELECT).
 * A sentinel:// u is first resolved through its sentinels (redis_sentinel.h)
 * and the server's ROLE must be master. Returns 0, or E_CONN_LOST with
 * "connect to 'host:port' failed: ..." (or the sentinels' reason) in e, or
 * -EINVAL when a sentinel:// u has no master_name. */
int redis_link_open(struct redis_link *l, const struct redis_url *u, struct err *e);
/* Closes the connection (NULL-safe, idempotent) and logs why with its age
 * when reason is not NULL. */
void redis_link_close(struct redis_link *l, const char *reason);
bool redis_link_is_open(const struct redis_link *l);

/* Runs a command; on a connection-level failure closes the link and returns
 * NULL with E_CONN_LOST in e. A server that stays silent for the URL's
 * socket_timeout is such a failure: "no answer from Redis 'host:port' within
 * N s (socket_timeout)". An error reply is returned as a reply (caller
 * checks REDIS_REPLY_ERROR). The caller frees the reply with freeReplyObject. */
redisReply *redis_link_command(struct redis_link *l, struct err *e, const char *fmt, ...);
redisReply *redis_link_argv(struct redis_link *l, struct err *e, int argc, const char **argv,
                            const size_t *lens);
/* redis_link_argv for a command the server holds up to block_s seconds by
 * design (BLMOVE, BRPOP with that timeout): its answer is due only then, so
 * the server gets block_s plus socket_timeout. */
redisReply *redis_link_blocking_argv(struct redis_link *l, double block_s, struct err *e,
                                     int argc, const char **argv, const size_t *lens);

/* Appends EVALSHA of s (EVAL when it is not loaded) with numkeys keys
 * followed by args to the pipeline; read the reply with redis_link_read().
 * A NOSCRIPT reply (SCRIPT FLUSH on the server) closes the link like a lost
 * connection; reopening loads the scripts again. Returns 0 or a negative code. */
int redis_link_append_script(struct redis_link *l, const struct redis_script *s, int nargs,
                             const char **args, const size_t *lens, int numkeys);
/* Sends a command without waiting for its reply (written to the socket now,
 * so it reaches the server even if this process dies next); the reply is
 * read and checked before any later reply. Returns 0 or E_CONN_LOST. */
int redis_link_send_argv(struct redis_link *l, int argc, const char **argv, const size_t *lens);
/* Writes appended commands to the socket without reading anything. */
int redis_link_flush(struct redis_link *l, struct err *e);
/* Reads and checks every reply still pending from sent commands. Returns
 * 0, E_PROTOCOL when one was an error reply (logged), or E_CONN_LOST (the
 * link is then closed, and the commands may or may not have run). */
int redis_link_drain(struct redis_link *l, struct err *e);

/* Classifies an error reply of command `what` into e: E_REFUSED when the
 * server refuses writes or work for now (OOM, READONLY, MISCONF, LOADING,
 * BUSY: the connection is fine, retry later), E_PROTOCOL otherwise (an
 * unknown command names the Redis version we need). Returns the code. */
int redis_link_reply_error(struct err *e, const char *what, const char *text);

/* Appends a command to the pipeline; reads one pipelined reply. */
int redis_link_append_argv(struct redis_link *l, int argc, const char **argv, const size_t *lens);
redisReply *redis_link_read(struct redis_link *l, struct err *e);

#endif /* CELERIAC_REDIS_LINK_H */
