/* SPDX-License-Identifier: MIT
 * redis_link.c: a hiredis connection with connect options, pid ownership,
 * script caching and a single teardown path (see redis_link.h).
 */
#include "common.h"
#include "util/log.h"
#include "util/redis_link.h"
#include "util/redis_sentinel.h"
#include "util/self.h"
#include "util/time.h"
#include "util/url.h"

#include <math.h>
#include <sys/time.h>

void redis_link_init(struct redis_link *l, const char *role)
{
    memset(l, 0, sizeof(*l));
    l->role = role;
}

bool redis_link_is_open(const struct redis_link *l)
{
    return l->ctx != NULL;
}

/* Seconds as a timeval, never zero: a zero SO_RCVTIMEO would mean "wait
 * for ever", the opposite of a tiny timeout. */
static struct timeval timeval_of(double s)
{
    double us = ceil(s * 1e6);
    if (us < 1)
        us = 1;
    return (struct timeval){.tv_sec = (time_t)(us / 1e6),
                            .tv_usec = (suseconds_t)fmod(us, 1e6)};
}

/* Sets the socket's read and write timeout (SO_RCVTIMEO, SO_SNDTIMEO). */
static int apply_timeout(struct redis_link *l, double s)
{
    return redisSetTimeout(l->ctx, timeval_of(s)) == REDIS_OK ? 0 : E_CONN_LOST;
}

static void describe(const struct redis_url *u, char *out, size_t n)
{
    if (u->socket)
        snprintf(out, n, "%s", u->socket);
    else
        snprintf(out, n, "%s:%d", u->host, u->port);
}

/* Asks the server its role: a sentinel-found address must be the master
 * now (a replica until the sentinels have reconfigured it is not). */
static int check_master(struct redis_link *l, const char *where, const struct redis_url *u,
                        struct err *e)
{
    redisReply *r = redis_link_command(l, e, "ROLE");
    if (!r)
        return E_CONN_LOST;
    bool master = r->type == REDIS_REPLY_ARRAY && r->elements > 0 &&
                  r->element[0]->type == REDIS_REPLY_STRING && !strcmp(r->element[0]->str, "master");
    if (!master)
        err_set(e, E_CONN_LOST, "'%s', named master '%s' by the sentinels, is not a master "
                "(ROLE: %s)", where, u->master_name,
                r->type == REDIS_REPLY_ARRAY && r->elements > 0 &&
                        r->element[0]->type == REDIS_REPLY_STRING ? r->element[0]->str
                : r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
    freeReplyObject(r);
    if (!master)
        redis_link_close(l, NULL);
    return master ? 0 : E_CONN_LOST;
}

/* Connects to host:port (or u's socket), then AUTH, SELECT, scripts and,
 * for a sentinel-found master (via names the sentinel), the ROLE check. */
static int open_at(struct redis_link *l, const struct redis_url *u, const char *host, int port,
                   const char *via, struct err *e)
{
    char where[300];
    bool sentinel = via != NULL;
    if (sentinel)
        snprintf(where, sizeof(where), "%s:%d", host, port);
    else
        describe(u, where, sizeof(where));
    struct timeval ct = timeval_of(u->connect_timeout_s);
    redisContext *c = u->socket ? redisConnectUnixWithTimeout(u->socket, ct)
                                : redisConnectWithTimeout(host, port, ct);
    if (!c)
        return err_set(e, E_CONN_LOST, "connect to '%s' failed: out of memory", where);
    if (c->err) {
        char why[160];
        /* hiredis words its own connect timeout as the bare errno text */
        if (c->err == REDIS_ERR_IO && !strcmp(c->errstr, strerror(ETIMEDOUT)))
            snprintf(why, sizeof(why), "no answer within %g s (socket_connect_timeout)",
                     u->connect_timeout_s);
        else
            snprintf(why, sizeof(why), "%s", c->errstr);
        if (sentinel)
            err_set(e, E_CONN_LOST, "connect to '%s' (master '%s' per sentinel %s) failed: %s",
                    where, u->master_name, via, why);
        else
            err_set(e, E_CONN_LOST, "connect to '%s' failed: %s", where, why);
        redisFree(c);
        return E_CONN_LOST;
    }
    if (!u->socket)
        redisEnableKeepAlive(c);
    l->ctx = c;
    snprintf(l->peer, sizeof(l->peer), "%s", where);
    l->timeout_s = u->socket_timeout_s;
    l->answered = false;
    if (apply_timeout(l, l->timeout_s)) {
        err_set(e, E_CONN_LOST, "set the socket timeout of '%s' failed: %s", where, c->errstr);
        redis_link_close(l, NULL);
        return E_CONN_LOST;
    }
    l->owner = self_pid();
    l->connected_ms = time_mono_ms();
    l->follow_master = sentinel;
    l->moves_seen = redis_sentinel_moves(); /* again below: this open may be the move */

    redisReply *r = NULL;
    if (u->password) {
        r = u->username ? redis_link_command(l, e, "AUTH %s %s", u->username, u->password)
                        : redis_link_command(l, e, "AUTH %s", u->password);
        if (!r)
            return E_CONN_LOST;
        if (r->type == REDIS_REPLY_ERROR) {
            err_set(e, E_CONN_LOST, "authenticate to '%s' failed: %s", where, r->str);
            goto out_close;
        }
        freeReplyObject(r);
    }
    if (u->db) {
        r = redis_link_command(l, e, "SELECT %d", u->db);
        if (!r)
            return E_CONN_LOST;
        if (r->type == REDIS_REPLY_ERROR) {
            err_set(e, E_CONN_LOST, "select database %d on '%s' failed: %s", u->db, where, r->str);
            goto out_close;
        }
        freeReplyObject(r);
    }
    for (struct redis_script *const *s = l->scripts; s && *s; s++) {
        r = redis_link_command(l, e, "SCRIPT LOAD %s", (*s)->body);
        if (!r)
            return E_CONN_LOST;
        if (r->type != REDIS_REPLY_STRING || r->len != 40) {
            err_set(e, E_CONN_LOST, "script load on '%s' failed: %s", where,
                    r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply");
            goto out_close;
        }
        memcpy((*s)->sha, r->str, 41);
        freeReplyObject(r);
    }
    if (sentinel) {
        if (check_master(l, where, u, e))
            return E_CONN_LOST;
        redis_sentinel_confirmed(u, where, via);
        l->moves_seen = redis_sentinel_moves();
    }
    return 0;

out_close:
    freeReplyObject(r);
    redis_link_close(l, NULL);
    return E_CONN_LOST;
}

int redis_link_open(struct redis_link *l, const struct redis_url *u, struct err *e)
{
    redis_link_close(l, NULL);
    if (!redis_url_is_sentinel(u))
        return open_at(l, u, u->host, u->port, NULL, e);
    char host[256], via[300];
    int port;
    int rc = redis_sentinel_locate(u, host, sizeof(host), &port, via, sizeof(via), e);
    if (rc)
        return rc == -EINVAL ? rc : E_CONN_LOST;
    rc = open_at(l, u, host, port, via, e);
    if (rc)
        redis_sentinel_distrust(u); /* a stale sentinel must not keep us there */
    return rc;
}

void redis_link_close(struct redis_link *l, const char *reason)
{
    if (!l->ctx)
        return;
    /* A link the server never answered on is a failed connect, which the
     * caller's retry reports once per episode: a line per attempt (the
     * kernel of a hung host still accepts TCP) would flood. */
    if (reason && l->answered)
        log_warning("%s connection closed after %.1f s: %s", l->role,
                    (double)(time_mono_ms() - l->connected_ms) / 1000.0, reason);
    /* A context inherited across fork belongs to another process: free our
     * memory without touching the shared socket's protocol state. */
    redisFree(l->ctx);
    l->ctx = NULL;
    l->pending = 0;
    l->answered = false;
}

/* Error replies that mean "not now" rather than "never": the server is
 * loading its dataset after a restart, or busy with a script. Treated like
 * a lost connection so callers reconnect and retry with backoff. On a link
 * to a sentinel-found master, READONLY and UNBLOCKED mean it moved: the
 * reconnect asks the sentinels again. */
static bool is_transient_error(const struct redis_link *l, const redisReply *r)
{
    return r && r->type == REDIS_REPLY_ERROR &&
           (!strncmp(r->str, "LOADING", 7) || !strncmp(r->str, "BUSY", 4) ||
            !strncmp(r->str, "NOSCRIPT", 8) ||
            !strncmp(r->str, "MASTERDOWN", 10) || !strncmp(r->str, "TRYAGAIN", 8) ||
            (l->follow_master && redis_sentinel_is_moved_error(r->str)));
}

/* hiredis reports a socket timeout (SO_RCVTIMEO, SO_SNDTIMEO) as an I/O
 * error whose text is strerror(EAGAIN): errno itself is gone by now. */
static bool is_timeout(const redisContext *c)
{
    return c->err == REDIS_ERR_IO && !strcmp(c->errstr, strerror(EAGAIN));
}

/* Called after a failed hiredis call: the connection is unusable. */
static void lost(struct redis_link *l, struct err *e)
{
    char why[sizeof(l->peer) + 64];
    if (l->ctx && is_timeout(l->ctx))
        snprintf(why, sizeof(why), "no answer from Redis '%s' within %g s (socket_timeout)",
                 l->peer, l->timeout_s);
    else
        snprintf(why, sizeof(why), "%s",
                 l->ctx && l->ctx->errstr[0] ? l->ctx->errstr : "no reply");
    err_set(e, E_CONN_LOST, "%s connection lost: %s", l->role, why);
    redis_link_close(l, why);
}

/* A transient error reply closes the link like a lost connection would. */
static redisReply *checked(struct redis_link *l, redisReply *r, struct err *e)
{
    if (!r) {
        lost(l, e);
        return NULL;
    }
    l->answered = true;
    if (!is_transient_error(l, r))
        return r;
    char why[128];
    snprintf(why, sizeof(why), "%s", r->str);
    freeReplyObject(r);
    err_set(e, E_CONN_LOST, "%s connection: %s", l->role, why);
    redis_link_close(l, why);
    return NULL;
}

static bool owned(struct redis_link *l, struct err *e)
{
    if (!l->ctx) {
        err_set(e, E_CONN_LOST, "%s connection is not open", l->role);
        return false;
    }
    if (l->owner != self_pid()) {
        /* A forked copy must never speak on its parent's socket. */
        err_set(e, E_CONN_LOST, "%s connection opened by pid %d used from pid %d", l->role,
                (int)l->owner, (int)self_pid());
        return false;
    }
    if (l->follow_master && l->moves_seen != redis_sentinel_moves()) {
        /* Another link of this process found the master elsewhere: what
         * this one would write (a result, an ack) must go there too, not
         * to a master whose unreplicated writes are about to vanish. */
        err_set(e, E_CONN_LOST, "%s connection: the sentinels named another master", l->role);
        redis_link_close(l, "the sentinels named another master");
        return false;
    }
    return true;
}

int redis_link_flush(struct redis_link *l, struct err *e)
{
    if (!owned(l, e))
        return E_CONN_LOST;
    int done = 0;
    while (!done) {
        if (redisBufferWrite(l->ctx, &done) != REDIS_OK) {
            lost(l, e);
            return E_CONN_LOST;
        }
    }
    return 0;
}

int redis_link_send_argv(struct redis_link *l, int argc, const char **argv, const size_t *lens)
{
    int rc = redis_link_append_argv(l, argc, argv, lens);
    if (rc)
        return rc;
    l->pending++;
    return redis_link_flush(l, NULL);
}

int redis_link_drain(struct redis_link *l, struct err *e)
{
    int rc = 0;
    while (l->pending > 0) {
        if (!owned(l, e))
            return E_CONN_LOST;
        void *reply = NULL;
        if (redisGetReply(l->ctx, &reply) != REDIS_OK || !reply) {
            lost(l, e);
            return E_CONN_LOST;
        }
        l->pending--;
        redisReply *r = checked(l, reply, e);
        if (!r)
            return E_CONN_LOST;
        if (r->type == REDIS_REPLY_ERROR && !rc)
            rc = redis_link_reply_error(e, l->role, r->str);
        freeReplyObject(r);
    }
    return rc;
}

int redis_link_reply_error(struct err *e, const char *what, const char *text)
{
    static const struct {
        const char *prefix;
        const char *why;
    } refusals[] = {
        {"OOM", "Redis refuses writes (maxmemory)"},
        {"READONLY", "Redis refuses writes (a read-only replica)"},
        {"MISCONF", "Redis refuses writes (it cannot persist to disk)"},
        {"LOADING", "Redis is loading its dataset"},
        {"BUSY", "Redis is busy running a script"},
        {"MASTERDOWN", "Redis replica has lost its master"},
    };
    for (size_t i = 0; i < ARRAY_SIZE(refusals); i++)
        if (!strncmp(text, refusals[i].prefix, strlen(refusals[i].prefix)))
            return err_set(e, E_REFUSED, "%s: %s refused: %s", refusals[i].why, what, text);
    if (strstr(text, "unknown command"))
        return err_set(e, E_PROTOCOL, "%s failed (Redis 6.2 or later is required): %s", what,
                       text);
    return err_set(e, E_PROTOCOL, "%s failed: %s", what, text);
}

/* Before a reply is awaited, the replies of earlier sent commands come off
 * the socket first (they arrive in order). */
static bool drained(struct redis_link *l, struct err *e)
{
    return !l->pending || redis_link_drain(l, e) != E_CONN_LOST;
}

redisReply *redis_link_command(struct redis_link *l, struct err *e, const char *fmt, ...)
{
    if (!owned(l, e) || !drained(l, e))
        return NULL;
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(l->ctx, fmt, ap);
    va_end(ap);
    return checked(l, r, e);
}

redisReply *redis_link_argv(struct redis_link *l, struct err *e, int argc, const char **argv,
                            const size_t *lens)
{
    if (!owned(l, e) || !drained(l, e))
        return NULL;
    redisReply *r = redisCommandArgv(l->ctx, argc, argv, lens);
    return checked(l, r, e);
}

/* The deadline is extended by the command's own wait rather than the wait
 * capped below socket_timeout: a cap would tie how long the worker blocks
 * to a network setting (a 0.2 s socket_timeout would turn an idle wait into
 * a round trip every 0.1 s), and the margin left for the network would be a
 * guess. Extended, socket_timeout keeps one meaning everywhere: how long a
 * server may stay silent after its answer is due. */
redisReply *redis_link_blocking_argv(struct redis_link *l, double block_s, struct err *e,
                                     int argc, const char **argv, const size_t *lens)
{
    if (!owned(l, e) || !drained(l, e))
        return NULL;
    if (apply_timeout(l, l->timeout_s + block_s)) {
        lost(l, e);
        return NULL;
    }
    redisReply *r = redisCommandArgv(l->ctx, argc, argv, lens);
    if (r && apply_timeout(l, l->timeout_s)) { /* the next command is owed at once */
        freeReplyObject(r);
        r = NULL;
    }
    return checked(l, r, e);
}

int redis_link_append_argv(struct redis_link *l, int argc, const char **argv, const size_t *lens)
{
    if (!owned(l, NULL))
        return E_CONN_LOST;
    if (redisAppendCommandArgv(l->ctx, argc, argv, lens) != REDIS_OK)
        return E_CONN_LOST;
    return 0;
}

redisReply *redis_link_read(struct redis_link *l, struct err *e)
{
    if (!owned(l, e) || !drained(l, e))
        return NULL;
    void *r = NULL;
    if (redisGetReply(l->ctx, &r) != REDIS_OK || !r) {
        lost(l, e);
        return NULL;
    }
    return checked(l, r, e);
}

/* Scripts are loaded when the link opens, never in the middle of a pipeline
 * (a synchronous load there would read another command's reply). The
 * argument vector is as long as the caller's: a worker may consume any
 * number of queues, four lists each. */
int redis_link_append_script(struct redis_link *l, const struct redis_script *s, int nargs,
                             const char **args, const size_t *lens, int numkeys)
{
    if (nargs < 0)
        return -EINVAL;
    const char **argv = xcalloc((size_t)nargs + 3, sizeof(*argv));
    size_t *alens = xcalloc((size_t)nargs + 3, sizeof(*alens));
    char nk[16];
    snprintf(nk, sizeof(nk), "%d", numkeys);
    bool loaded = s->sha[0] != '\0';
    argv[0] = loaded ? "EVALSHA" : "EVAL";
    alens[0] = loaded ? 7 : 4;
    argv[1] = loaded ? s->sha : s->body;
    alens[1] = loaded ? 40 : strlen(s->body);
    argv[2] = nk;
    alens[2] = strlen(nk);
    for (int i = 0; i < nargs; i++) {
        argv[3 + i] = args[i];
        alens[3 + i] = lens ? lens[i] : strlen(args[i]);
    }
    int rc = redis_link_append_argv(l, nargs + 3, argv, alens);
    free(argv);
    free(alens);
    return rc;
}
