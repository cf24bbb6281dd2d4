/* SPDX-License-Identifier: MIT
 * url.c: parsing redis:// URLs, sentinel:// lists and their transport options,
 * classifying database URLs, masking passwords.
 */
#include "common.h"
#include "util/buf.h"
#include "util/url.h"

#include <ctype.h>
#include <strings.h>

int url_parse_number(const char *s, size_t len, long lo, long hi, long *out)
{
    if (!len || len > 10)
        return -EINVAL;
    long v = 0;
    for (size_t i = 0; i < len; i++) {
        if (!isdigit((unsigned char)s[i]))
            return -EINVAL;
        v = v * 10 + (s[i] - '0');
    }
    if (v < lo || v > hi)
        return -EINVAL;
    *out = v;
    return 0;
}

/* An int field through url_parse_number. */
static int parse_int(const char *s, size_t len, int lo, int hi, int *out)
{
    long v;
    if (url_parse_number(s, len, lo, hi, &v))
        return -EINVAL;
    *out = (int)v;
    return 0;
}

char *url_pct_decode(const char *s, size_t len)
{
    char *out = xmalloc(len + 1), *o = out;
    for (size_t i = 0; i < len; i++) {
        if (s[i] != '%') {
            *o++ = s[i];
            continue;
        }
        if (i + 2 >= len || !isxdigit((unsigned char)s[i + 1]) ||
            !isxdigit((unsigned char)s[i + 2]) || (s[i + 1] == '0' && s[i + 2] == '0')) {
            free(out);
            return NULL;
        }
        char hex[3] = {s[i + 1], s[i + 2], 0};
        *o++ = (char)strtol(hex, NULL, 16);
        i += 2;
    }
    *o = '\0';
    return out;
}

void redis_url_release(struct redis_url *u)
{
    for (size_t i = 0; i < u->n_sentinels; i++)
        free(u->sentinels[i].host);
    free(u->sentinels);
    free(u->master_name);
    free(u->host);
    free(u->socket);
    free(u->username);
    free(u->password);
    memset(u, 0, sizeof(*u));
}

static int parse_socket_url(struct redis_url *u, const char *rest, struct err *e)
{
    const char *q = strchr(rest, '?');
    size_t plen = q ? (size_t)(q - rest) : strlen(rest);
    if (!plen || rest[0] != '/')
        return err_set(e, -EINVAL, "redis socket URL needs an absolute path");
    u->socket = xstrndup(rest, plen);
    if (q) {
        const char *db = strstr(q, "db=");
        if (!db)
            db = strstr(q, "virtual_host=") ? strstr(q, "virtual_host=") + 10 : NULL;
        if (db && parse_int(db + 3, strcspn(db + 3, "&"), 0, 1 << 20, &u->db))
            return err_set(e, -EINVAL, "redis URL database is not a number");
    }
    return 0;
}

/* Host, port, user, password and database of a TCP URL from p, the text
 * after its "scheme://". */
static int parse_tcp(struct redis_url *u, const char *p, struct err *e)
{
    const char *end = p + strcspn(p, "/?#");
    const char *at = NULL;
    for (const char *c = p; c < end; c++)
        if (*c == '@')
            at = c;
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        const char *uend = colon ? colon : at;
        if (uend > p && !(u->username = url_pct_decode(p, (size_t)(uend - p))))
            return err_set(e, -EINVAL, "redis URL has a bad percent escape in the user name");
        if (colon && !(u->password = url_pct_decode(colon + 1, (size_t)(at - colon - 1))))
            return err_set(e, -EINVAL, "redis URL has a bad percent escape in the password");
        p = at + 1;
    }
    const char *hend = end;
    if (*p == '[') {
        const char *rb = memchr(p, ']', (size_t)(end - p));
        if (!rb)
            return err_set(e, -EINVAL, "redis URL has an unterminated IPv6 address");
        u->host = xstrndup(p + 1, (size_t)(rb - p - 1));
        p = rb + 1;
        hend = p;
    } else {
        const char *colon = memchr(p, ':', (size_t)(end - p));
        hend = colon ? colon : end;
        u->host = xstrndup(p, (size_t)(hend - p));
        p = hend;
    }
    if (!*u->host) {
        free(u->host);
        u->host = xstrdup("localhost");
    }
    if (p < end) {
        if (*p != ':' || parse_int(p + 1, (size_t)(end - p - 1), 1, 65535, &u->port))
            return err_set(e, -EINVAL, "redis URL port is not a number in 1..65535");
    }
    if (*end == '/' && end[1] && end[1] != '?') {
        if (parse_int(end + 1, strcspn(end + 1, "?#"), 0, 1 << 20, &u->db))
            return err_set(e, -EINVAL, "redis URL database '%.*s' is not a number",
                           (int)strcspn(end + 1, "?#"), end + 1);
    }
    return 0;
}

/* True when the len bytes at p start with scheme "://". */
static bool part_has_scheme(const char *p, size_t len, const char *scheme)
{
    size_t n = strlen(scheme);
    return len >= n + 3 && !strncasecmp(p, scheme, n) && !strncmp(p + n, "://", 3);
}

/* kombu's sentinel list: sentinel://[[user]:pass@]h1[:port][/db];sentinel://h2...
 * Every part must be sentinel://; the first one's credentials and database
 * are the master's (kombu takes them from the connection's own URL). */
static int parse_sentinel_list(struct redis_url *u, const char *s, struct err *e)
{
    const char *p = s;
    for (size_t i = 0; *p || i == 0; i++) {
        size_t len = strcspn(p, ";");
        if (!part_has_scheme(p, len, "sentinel")) {
            const char *sep = memmem(p, len, "://", 3);
            if (sep)
                return err_set(e, -EINVAL, "a sentinel list mixes 'sentinel://' with '%.*s://' "
                               "(every ';'-separated part must be sentinel://)",
                               (int)(sep - p > 32 ? 32 : sep - p), p);
            return err_set(e, -EINVAL, "sentinel list part %zu is not a sentinel:// URL", i + 1);
        }
        if (u->n_sentinels >= 64)
            return err_set(e, -EINVAL, "a sentinel list of more than 64 sentinels");
        char *part = xstrndup(p + 11, len - 11);
        struct redis_url one = {.port = 26379};
        int rc = parse_tcp(&one, part, e);
        free(part);
        if (rc) {
            redis_url_release(&one);
            return rc;
        }
        u->sentinels = xrealloc(u->sentinels, (u->n_sentinels + 1) * sizeof(*u->sentinels));
        u->sentinels[u->n_sentinels++] = (struct redis_sentinel_addr){.host = one.host,
                                                                      .port = one.port};
        one.host = NULL;
        if (i == 0) {
            u->username = one.username;
            u->password = one.password;
            u->db = one.db;
            one.username = one.password = NULL;
        }
        redis_url_release(&one);
        p += len;
        if (*p == ';' && !*++p)
            return err_set(e, -EINVAL, "sentinel list ends with an empty part after ';'");
    }
    return 0;
}

bool redis_url_is_sentinel(const struct redis_url *u)
{
    return u->n_sentinels > 0;
}

int redis_url_parse(struct redis_url *u, const char *s, struct err *e)
{
    memset(u, 0, sizeof(*u));
    u->port = 6379;
    u->socket_timeout_s = REDIS_SOCKET_TIMEOUT_S;
    u->connect_timeout_s = REDIS_CONNECT_TIMEOUT_S;
    if (!strncasecmp(s, "sentinel://", 11)) {
        u->port = 0;
        return parse_sentinel_list(u, s, e);
    }
    /* A ';' followed by another URL is kombu's failover list, which only
     * sentinel:// has here (a ';' may also sit in a password). */
    for (const char *semi = strchr(s, ';'); semi; semi = strchr(semi + 1, ';')) {
        size_t len = strcspn(semi + 1, ";");
        const char *sep = memmem(semi + 1, len, "://", 3);
        if (!sep)
            continue;
        if (part_has_scheme(semi + 1, len, "sentinel"))
            return err_set(e, -EINVAL, "a sentinel list mixes '%.*s://' with 'sentinel://' "
                           "(every ';'-separated part must be sentinel://)",
                           strstr(s, "://") ? (int)(strstr(s, "://") - s) : 16, s);
        return err_set(e, -EINVAL, "a ';'-separated list of URLs is for sentinel:// only");
    }
    if (!strncasecmp(s, "redis+socket://", 15))
        return parse_socket_url(u, s + 15, e);
    if (!strncasecmp(s, "unix://", 7))
        return parse_socket_url(u, s + 7, e);
    if (strncasecmp(s, "redis://", 8))
        return err_set(e, -EINVAL, "unsupported scheme '%.*s' (want redis:// or sentinel://)",
                       strstr(s, "://") ? (int)(strstr(s, "://") - s) : 16, s);
    return parse_tcp(u, s + 8, e);
}

void redis_transport_options_init(struct redis_transport_options *o, const char *list)
{
    *o = (struct redis_transport_options){.list = list};
}

void redis_transport_options_release(struct redis_transport_options *o)
{
    if (!o)
        return;
    free(o->master_name);
    redis_transport_options_init(o, o->list);
}

/* True when [key, eq) is exactly name. */
static bool is_key(const char *key, const char *eq, const char *name)
{
    return (size_t)(eq - key) == strlen(name) && !strncmp(key, name, (size_t)(eq - key));
}

/* A positive number of seconds (fractions allowed) for the option called name. */
static int parse_seconds(const char *name, const char *s, double *out, struct err *e)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v > 0) || v > 1e9)
        return err_set(e, -EINVAL, "%s wants a positive number of seconds, got '%.100s'", name,
                       s);
    *out = v;
    return 0;
}

int redis_transport_options_set(struct redis_transport_options *o, const char *kv, struct err *e)
{
    const char *eq = strchr(kv, '=');
    if (!eq || eq == kv)
        return err_set(e, -EINVAL, "%s wants KEY=VALUE, got '%.100s'", o->list, kv);
    char name[96];
    snprintf(name, sizeof(name), "%s %.*s", o->list, (int)(eq - kv > 40 ? 40 : eq - kv), kv);
    if (is_key(kv, eq, "master_name")) {
        if (!eq[1] || strlen(eq + 1) > 120)
            return err_set(e, -EINVAL, "%s wants a name of 1 to 120 bytes", name);
        free(o->master_name);
        o->master_name = xstrdup(eq + 1);
        return 0;
    }
    if (is_key(kv, eq, "socket_timeout"))
        return parse_seconds(name, eq + 1, &o->socket_timeout_s, e);
    if (is_key(kv, eq, "socket_connect_timeout"))
        return parse_seconds(name, eq + 1, &o->connect_timeout_s, e);
    return err_set(e, -EINVAL, "%s: unknown option '%.*s' (celeriac knows master_name, "
                   "socket_timeout and socket_connect_timeout)", o->list,
                   (int)(eq - kv > 64 ? 64 : eq - kv), kv);
}

int redis_transport_options_apply(const struct redis_transport_options *o, struct redis_url *u,
                                  const char *what, struct err *e)
{
    if (redis_url_is_sentinel(u) && !o->master_name)
        return err_set(e, -EINVAL, "bad %s URL: sentinel:// needs %s master_name=NAME", what,
                       o->list);
    if (!redis_url_is_sentinel(u) && o->master_name)
        return err_set(e, -EINVAL, "%s master_name applies to a sentinel:// %s URL only", o->list,
                       what);
    if (o->master_name) {
        free(u->master_name);
        u->master_name = xstrdup(o->master_name);
    }
    if (o->socket_timeout_s > 0)
        u->socket_timeout_s = o->socket_timeout_s;
    if (o->connect_timeout_s > 0)
        u->connect_timeout_s = o->connect_timeout_s;
    return 0;
}

int redis_transport_options_refuse(const struct redis_transport_options *o, const char *what,
                                   struct err *e)
{
    const char *key = o->master_name              ? "master_name"
                      : o->socket_timeout_s > 0  ? "socket_timeout"
                      : o->connect_timeout_s > 0 ? "socket_connect_timeout"
                                                 : NULL;
    if (!key)
        return 0;
    return err_set(e, -EINVAL, "%s %s applies to a redis:// or sentinel:// %s URL only", o->list,
                   key, what);
}

int db_url_classify(const char *s, enum db_kind *kind, char **path, struct err *e)
{
    *kind = DB_NONE;
    if (path)
        *path = NULL;
    if (!strncasecmp(s, "sqlite://", 9)) {
        const char *p = s + 9;
        if (!*p || !strcmp(p, "/"))
            return err_set(e, -EINVAL, "sqlite URL names no file (want sqlite:///abs/path)");
        if (!strcmp(p, ":memory:") || !strcmp(p, "/:memory:"))
            return err_set(e, -EINVAL,
                           "sqlite URL ':memory:' would give each child its own empty database");
        *kind = DB_SQLITE;
        if (path)
            *path = xstrdup(p);
        return 0;
    }
    if (!strncasecmp(s, "postgresql://", 13) || !strncasecmp(s, "postgres://", 11)) {
        *kind = DB_POSTGRES;
        return 0;
    }
    if (strchr(s, '=') && !strstr(s, "://")) { /* key=value conninfo */
        *kind = DB_POSTGRES;
        return 0;
    }
    if (!*s)
        return err_set(e, -EINVAL, "database URL is empty");
    const char *scheme_end = strstr(s, "://");
    if (scheme_end)
        return err_set(e, -EINVAL,
                       "unsupported scheme '%.*s' (want postgresql://, a libpq conninfo or "
                       "sqlite://)",
                       (int)(scheme_end - s > 32 ? 32 : scheme_end - s), s);
    return err_set(e, -EINVAL,
                   "unsupported database URL (want postgresql://, a libpq conninfo or sqlite://)");
}

/* Appends a conninfo string with the value of every password=... replaced. */
static void mask_conninfo(struct buf *out, const char *s)
{
    const char *p = s;
    while (*p) {
        const char *hit = strcasestr(p, "password");
        if (!hit) {
            buf_adds(out, p);
            return;
        }
        const char *q = hit + 8;
        while (*q == ' ')
            q++;
        bool at_word_start = hit == s || isspace((unsigned char)hit[-1]) || hit[-1] == '?' ||
                             hit[-1] == '&';
        if (*q != '=' || !at_word_start) {
            buf_add(out, p, (size_t)(q - p));
            p = q;
            continue;
        }
        q++;
        while (*q == ' ')
            q++;
        buf_add(out, p, (size_t)(q - p));
        buf_adds(out, "***");
        if (*q == '\'') {
            q++;
            while (*q && *q != '\'') {
                if (*q == '\\' && q[1])
                    q++;
                q++;
            }
            if (*q)
                q++;
        } else {
            while (*q && !isspace((unsigned char)*q) && *q != '&')
                q++;
        }
        p = q;
    }
}

void url_mask(struct buf *out, const char *s)
{
    /* kombu's ';' list (sentinel://...;sentinel://...): each URL on its own */
    const char *semi = strchr(s, ';');
    if (semi && strstr(semi, "://")) {
        char *first = xstrndup(s, (size_t)(semi - s));
        url_mask(out, first);
        free(first);
        buf_addch(out, ';');
        url_mask(out, semi + 1);
        return;
    }
    const char *scheme = strstr(s, "://");
    if (!scheme) {
        mask_conninfo(out, s);
        return;
    }
    const char *auth = scheme + 3;
    /* The authority ends at the first '/': libpq accepts '?' and '#' inside
     * a password, so they must not end the part we mask. */
    const char *end = auth + strcspn(auth, "/");
    const char *at_any = NULL;
    for (const char *c = auth; c < end; c++)
        if (*c == '@')
            at_any = c;
    if (!at_any)
        end = auth + strcspn(auth, "/?#");
    const char *at = NULL;
    for (const char *c = auth; c < end; c++)
        if (*c == '@')
            at = c;
    struct buf rest = BUF_INIT;
    if (at) {
        const char *colon = memchr(auth, ':', (size_t)(at - auth));
        if (colon) {
            buf_add(out, s, (size_t)(colon + 1 - s));
            buf_adds(out, "***");
            buf_add(out, at, (size_t)(end - at));
        } else {
            buf_add(out, s, (size_t)(end - s));
        }
    } else {
        buf_add(out, s, (size_t)(end - s));
    }
    mask_conninfo(&rest, end); /* a URI query may carry ?password= */
    buf_add(out, rest.data, rest.len);
    buf_release(&rest);
}
