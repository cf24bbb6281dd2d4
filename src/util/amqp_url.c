/* SPDX-License-Identifier: MIT
 * amqp_url.c: parsing amqp://, amqps:// and pyamqp:// broker URLs (see
 * amqp_url.h). Kombu's rules for the vhost and defaults, Celery's names for
 * the TLS options.
 */
#include "common.h"
#include "util/amqp_url.h"
#include "util/buf.h"
#include "util/url.h"

#include <ctype.h>
#include <math.h>
#include <strings.h>

static const struct {
    const char *prefix;
    bool tls;
} schemes[] = {
    {"amqp://", false},
    {"pyamqp://", false},
    {"amqps://", true},
};

bool amqp_url_is_amqp(const char *s)
{
    for (size_t i = 0; i < ARRAY_SIZE(schemes); i++)
        if (!strncasecmp(s, schemes[i].prefix, strlen(schemes[i].prefix)))
            return true;
    return false;
}

void amqp_url_release(struct amqp_url *u)
{
    free(u->host);
    free(u->vhost);
    free(u->user);
    free(u->password);
    free(u->ssl_ca_certs);
    free(u->ssl_certfile);
    free(u->ssl_keyfile);
    memset(u, 0, sizeof(*u));
}

static int set_bool(const char *v, bool *out)
{
    if (!strcasecmp(v, "true") || !strcmp(v, "1") || !strcasecmp(v, "yes") || !strcasecmp(v, "on"))
        *out = true;
    else if (!strcasecmp(v, "false") || !strcmp(v, "0") || !strcasecmp(v, "no") ||
             !strcasecmp(v, "off"))
        *out = false;
    else
        return -EINVAL;
    return 0;
}

static int set_cert_reqs(const char *v, bool *verify)
{
    if (!strncasecmp(v, "CERT_", 5))
        v += 5;
    if (!strcasecmp(v, "none"))
        *verify = false;
    else if (!strcasecmp(v, "required") || !strcasecmp(v, "optional"))
        *verify = true; /* rabbitmq-c has no "verify if presented" mode */
    else
        return -EINVAL;
    return 0;
}

static int set_seconds_ms(const char *v, int *out)
{
    char *end;
    errno = 0;
    double d = strtod(v, &end);
    if (errno || end == v || *end || !(d >= 0) || d > 86400)
        return -EINVAL;
    *out = (int)lround(d * 1000);
    return 0;
}

/* One key=value option (both decoded). */
static int set_option(struct amqp_url *u, const char *k, const char *v, struct err *e)
{
    long n;
    int rc = 0;
    if (!strcmp(k, "ssl")) {
        rc = set_bool(v, &u->tls);
    } else if (!strcmp(k, "ssl_ca_certs")) {
        free(u->ssl_ca_certs);
        u->ssl_ca_certs = xstrdup(v);
    } else if (!strcmp(k, "ssl_certfile")) {
        free(u->ssl_certfile);
        u->ssl_certfile = xstrdup(v);
    } else if (!strcmp(k, "ssl_keyfile")) {
        free(u->ssl_keyfile);
        u->ssl_keyfile = xstrdup(v);
    } else if (!strcmp(k, "ssl_cert_reqs")) {
        rc = set_cert_reqs(v, &u->ssl_verify);
    } else if (!strcmp(k, "heartbeat")) {
        /* py-amqp accepts a float; AMQP carries whole seconds */
        int ms;
        rc = set_seconds_ms(v, &ms);
        if (!rc && ms > 65535 * 1000)
            rc = -EINVAL;
        if (!rc) {
            u->heartbeat = (ms + 999) / 1000;
            u->heartbeat_given = true;
        }
    } else if (!strcmp(k, "frame_max")) {
        rc = url_parse_number(v, strlen(v), 4096, INT32_MAX, &n);
        if (!rc)
            u->frame_max = (int)n;
    } else if (!strcmp(k, "connect_timeout")) {
        rc = set_seconds_ms(v, &u->connect_timeout_ms);
    }
    if (rc)
        return err_set(e, -EINVAL, "amqp URL option '%s' has a bad value '%.64s'", k, v);
    return 0;
}

static int parse_query(struct amqp_url *u, const char *q, struct err *e)
{
    while (*q) {
        size_t n = strcspn(q, "&;");
        const char *eq = memchr(q, '=', n);
        if (n && eq) {
            char *k = url_pct_decode(q, (size_t)(eq - q));
            char *v = url_pct_decode(eq + 1, (size_t)(q + n - eq - 1));
            int rc = k && v ? set_option(u, k, v, e)
                            : err_set(e, -EINVAL, "amqp URL query has a bad percent escape");
            free(k);
            free(v);
            if (rc)
                return rc;
        }
        q += n;
        if (*q)
            q++;
    }
    return 0;
}

/* user[:password]@ of [p, at). */
static int parse_userinfo(struct amqp_url *u, const char *p, const char *at, struct err *e)
{
    const char *colon = memchr(p, ':', (size_t)(at - p));
    const char *uend = colon ? colon : at;
    if (uend > p) {
        free(u->user);
        if (!(u->user = url_pct_decode(p, (size_t)(uend - p))))
            return err_set(e, -EINVAL, "amqp URL has a bad percent escape in the user name");
    }
    if (colon) {
        free(u->password);
        if (!(u->password = url_pct_decode(colon + 1, (size_t)(at - colon - 1))))
            return err_set(e, -EINVAL, "amqp URL has a bad percent escape in the password");
    }
    return 0;
}

/* host[:port] or [v6][:port] of [p, end). */
static int parse_hostport(struct amqp_url *u, const char *p, const char *end, struct err *e)
{
    const char *hend;
    if (*p == '[') {
        const char *rb = memchr(p, ']', (size_t)(end - p));
        if (!rb)
            return err_set(e, -EINVAL, "amqp URL has an unterminated IPv6 address");
        u->host = xstrndup(p + 1, (size_t)(rb - p - 1));
        hend = rb + 1;
    } else {
        const char *colon = memchr(p, ':', (size_t)(end - p));
        hend = colon ? colon : end;
        u->host = xstrndup(p, (size_t)(hend - p));
    }
    if (!*u->host) {
        free(u->host);
        u->host = xstrdup("localhost");
    }
    long port;
    if (hend < end) {
        if (*hend != ':' || url_parse_number(hend + 1, (size_t)(end - hend - 1), 1, 65535, &port))
            return err_set(e, -EINVAL, "amqp URL port is not a number in 1..65535");
        u->port = (int)port;
    }
    return 0;
}

static void set_defaults(struct amqp_url *u)
{
    memset(u, 0, sizeof(*u));
    u->user = xstrdup("guest");
    u->password = xstrdup("guest");
    u->ssl_verify = true;
    u->heartbeat = AMQP_URL_HEARTBEAT_DEFAULT;
    u->frame_max = AMQP_URL_FRAME_MAX_DEFAULT;
    u->connect_timeout_ms = AMQP_URL_CONNECT_TIMEOUT_MS_DEFAULT;
}

int amqp_url_parse(struct amqp_url *u, const char *s, struct err *e)
{
    set_defaults(u);
    const char *p = NULL;
    for (size_t i = 0; i < ARRAY_SIZE(schemes) && !p; i++) {
        if (!strncasecmp(s, schemes[i].prefix, strlen(schemes[i].prefix))) {
            p = s + strlen(schemes[i].prefix);
            u->tls = schemes[i].tls;
        }
    }
    if (!p)
        return err_set(e, -EINVAL, "unsupported scheme '%.*s' (want amqp://, amqps:// or pyamqp://)",
                       strstr(s, "://") ? (int)(strstr(s, "://") - s) : 16, s);
    /* The authority ends at the first '/' after the last '@' (a password
     * may hold '/', '?' or '#' only percent-encoded, as in kombu). */
    const char *end = p + strcspn(p, "/?#");
    const char *at = NULL;
    for (const char *c = p; c < end; c++)
        if (*c == '@')
            at = c;
    int rc = at ? parse_userinfo(u, p, at, e) : 0;
    if (!rc)
        rc = parse_hostport(u, at ? at + 1 : p, end, e);
    if (rc)
        return rc;
    size_t plen = *end == '/' ? strcspn(end + 1, "?#") : 0;
    u->vhost = plen ? url_pct_decode(end + 1, plen) : xstrdup("/");
    if (!u->vhost)
        return err_set(e, -EINVAL, "amqp URL has a bad percent escape in the vhost");
    const char *q = strchr(end, '?');
    if (q) {
        char *query = xstrndup(q + 1, strcspn(q + 1, "#"));
        rc = parse_query(u, query, e);
        free(query);
        if (rc)
            return rc;
    }
    if (!u->port)
        u->port = u->tls ? 5671 : 5672;
    if (!u->tls && (u->ssl_ca_certs || u->ssl_certfile || u->ssl_keyfile))
        return err_set(e, -EINVAL, "amqp URL has TLS options but no TLS (use amqps:// or ssl=true)");
    if (!u->ssl_certfile != !u->ssl_keyfile)
        return err_set(e, -EINVAL, "amqp URL needs both ssl_certfile and ssl_keyfile, or neither");
    return 0;
}

void amqp_url_describe(struct buf *out, const struct amqp_url *u)
{
    bool v6 = u->host && strchr(u->host, ':');
    buf_addf(out, "%s%s%s:%d vhost '%s'", v6 ? "[" : "", u->host ? u->host : "?", v6 ? "]" : "",
             u->port, u->vhost ? u->vhost : "/");
}
