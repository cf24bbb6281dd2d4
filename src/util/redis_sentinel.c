/* SPDX-License-Identifier: MIT
 * redis_sentinel.c: master discovery through Redis Sentinel (see
 * redis_sentinel.h). No +switch-master subscription: a moved master shows
 * as a lost connection or a READONLY reply, and the next connect asks the
 * sentinels again (as kombu and redis-py do).
 * NEEDSWORK(#14): a switchover that leaves the old master alive keeps us on
 * it until Sentinel demotes it (its next INFO, up to 10 s); what is written
 * there meanwhile is redone after the resync. A +switch-master subscription
 * would shorten that window.
 */
#include "common.h"
#include "util/log.h"
#include "util/redis_sentinel.h"
#include "util/url.h"

#include <hiredis.h>
#include <strings.h>
#include <sys/time.h>

/* A sentinel answers from memory: anything slower is treated as down. */
#define SENTINEL_TIMEOUT_MS 1000
/* Distinct master names one process follows (broker, result backend). */
#define KNOWN_MAX 4

/* What this process last learnt about one master name. */
struct known {
    char name[128];        /* master_name; "" = free entry */
    char where[300];       /* "host:port" last verified as the master; "" = never */
    size_t preferred;      /* index of the sentinel that answered last */
};

static struct known known[KNOWN_MAX];
static unsigned moves; /* master moves seen by this process (redis_sentinel_moves) */

static struct known *known_for(const char *name)
{
    for (size_t i = 0; i < KNOWN_MAX; i++)
        if (!strcmp(known[i].name, name))
            return &known[i];
    for (size_t i = 0; i < KNOWN_MAX; i++)
        if (!known[i].name[0]) {
            snprintf(known[i].name, sizeof(known[i].name), "%s", name);
            return &known[i];
        }
    return &known[KNOWN_MAX - 1]; /* more names than entries: share the last */
}

enum ask_result {
    ASK_FOUND,
    ASK_UNKNOWN,   /* the sentinel answered: it knows no such master */
    ASK_FAILED,    /* unreachable, refused, or a reply we cannot use */
};

static redisReply *get_addr(redisContext *c, const char *name)
{
    return redisCommand(c, "SENTINEL get-master-addr-by-name %s", name);
}

/* Asks one sentinel; the reason of a failure goes into e. */
static enum ask_result ask(const struct redis_sentinel_addr *s, const struct redis_url *u,
                           char *host, size_t host_len, int *port, struct err *e)
{
    struct timeval tv = {.tv_sec = SENTINEL_TIMEOUT_MS / 1000,
                         .tv_usec = (SENTINEL_TIMEOUT_MS % 1000) * 1000};
    enum ask_result res = ASK_FAILED;
    redisReply *r = NULL;
    redisContext *c = redisConnectWithTimeout(s->host, s->port, tv);
    if (!c) {
        err_set(e, E_CONN_LOST, "%s:%d: out of memory", s->host, s->port);
        return ASK_FAILED;
    }
    if (c->err) {
        err_set(e, E_CONN_LOST, "%s:%d: %s", s->host, s->port, c->errstr);
        goto out_free;
    }
    redisSetTimeout(c, tv);
    r = get_addr(c, u->master_name);
    if (r && r->type == REDIS_REPLY_ERROR && !strncmp(r->str, "NOAUTH", 6) && u->password) {
        freeReplyObject(r);
        r = u->username ? redisCommand(c, "AUTH %s %s", u->username, u->password)
                        : redisCommand(c, "AUTH %s", u->password);
        if (r && r->type != REDIS_REPLY_ERROR) {
            freeReplyObject(r);
            r = get_addr(c, u->master_name);
        }
    }
    if (!r) {
        err_set(e, E_CONN_LOST, "%s:%d: %s", s->host, s->port,
                c->errstr[0] ? c->errstr : "no reply");
    } else if (r->type == REDIS_REPLY_NIL) {
        err_set(e, E_CONN_LOST, "%s:%d knows no master named '%s'", s->host, s->port,
                u->master_name);
        res = ASK_UNKNOWN;
    } else if (r->type == REDIS_REPLY_ERROR) {
        err_set(e, E_CONN_LOST, "%s:%d refused: %s", s->host, s->port, r->str);
    } else if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
               r->element[0]->type != REDIS_REPLY_STRING ||
               r->element[1]->type != REDIS_REPLY_STRING || r->element[0]->len >= host_len ||
               url_parse_number(r->element[1]->str, r->element[1]->len, 1, 65535,
                                &(long){0})) {
        err_set(e, E_CONN_LOST, "%s:%d gave an unusable address for '%s' (is it a sentinel?)",
                s->host, s->port, u->master_name);
    } else {
        memcpy(host, r->element[0]->str, r->element[0]->len + 1);
        *port = atoi(r->element[1]->str);
        res = ASK_FOUND;
    }
    freeReplyObject(r);
out_free:
    redisFree(c);
    return res;
}

int redis_sentinel_locate(const struct redis_url *u, char *host, size_t host_len, int *port,
                          char *via, size_t via_len, struct err *e)
{
    if (!u->master_name || !*u->master_name)
        return err_set(e, -EINVAL, "a sentinel:// URL needs the master_name transport option");
    struct known *k = known_for(u->master_name);
    size_t n = u->n_sentinels;
    bool all_unknown = true;
    struct err why = {0};
    for (size_t i = 0; i < n; i++) {
        size_t at = (k->preferred + i) % n;
        const struct redis_sentinel_addr *s = &u->sentinels[at];
        struct err one = {0};
        enum ask_result res = ask(s, u, host, host_len, port, &one);
        if (res == ASK_FOUND) {
            k->preferred = at;
            snprintf(via, via_len, "%s:%d", s->host, s->port);
            return 0;
        }
        if (res == ASK_FAILED)
            all_unknown = false;
        if (!why.msg[0] || res == ASK_FAILED)
            why = one; /* a failure says more than "unknown" */
    }
    char list[120];
    size_t used = 0;
    list[0] = '\0';
    for (size_t i = 0; i < n && used < sizeof(list); i++) {
        int w = snprintf(list + used, sizeof(list) - used, "%s%s:%d", i ? "," : "",
                         u->sentinels[i].host, u->sentinels[i].port);
        if (w < 0)
            break;
        used += (size_t)w;
    }
    if (all_unknown)
        return err_set(e, E_CONN_LOST, "no sentinel of %s knows a master named '%s'", list,
                       u->master_name);
    return err_set(e, E_CONN_LOST, "no sentinel of %s gave the address of master '%s' "
                   "(last: %s)", list, u->master_name, why.msg);
}

void redis_sentinel_confirmed(const struct redis_url *u, const char *where, const char *via)
{
    struct known *k = known_for(u->master_name ? u->master_name : "");
    if (!strcmp(k->where, where))
        return;
    if (!k->where[0]) {
        log_info("redis sentinel: master '%s' is at %s (from sentinel %s)", k->name, where, via);
    } else {
        log_warning("redis sentinel: master '%s' moved from %s to %s (failover; from sentinel "
                    "%s)", k->name, k->where, where, via);
        moves++;
    }
    snprintf(k->where, sizeof(k->where), "%s", where);
}

unsigned redis_sentinel_moves(void)
{
    return moves;
}

void redis_sentinel_distrust(const struct redis_url *u)
{
    if (!u->master_name || !u->n_sentinels)
        return;
    struct known *k = known_for(u->master_name);
    k->preferred = (k->preferred + 1) % u->n_sentinels;
}

bool redis_sentinel_is_moved_error(const char *text)
{
    return !strncmp(text, "READONLY", 8) || !strncmp(text, "UNBLOCKED", 9);
}
