/* SPDX-License-Identifier: MIT
 * url.h: the URLs celeriac accepts (redis://, kombu's sentinel:// lists,
 * postgresql:// or libpq conninfo, sqlite://) and their password-free
 * rendering for logs and the banner.
 * PostgreSQL strings are only classified and masked here; libpq parses them.
 */
#ifndef CELERIAC_URL_H
#define CELERIAC_URL_H

struct buf;

/* kombu's defaults for its Redis transport options socket_timeout and
 * socket_connect_timeout (seconds), which celeriac also had fixed. */
#define REDIS_SOCKET_TIMEOUT_S 30.0
#define REDIS_CONNECT_TIMEOUT_S 5.0

/* One sentinel of a sentinel:// list. */
struct redis_sentinel_addr {
    char *host;       /* owned */
    int port;         /* 26379 by default */
};

/* redis://[[user]:password@]host[:port][/db]; unix socket: redis+socket:///path[?db=N];
 * kombu's sentinel://[[user]:password@]host[:port][/db];sentinel://host[:port]...:
 * the user, password and database of the first part apply to the master the
 * sentinels name (as kombu's), host and port are left NULL/0 until then. */
struct redis_url {
    char *host;       /* owned; NULL for a unix socket */
    int port;         /* 6379 by default */
    char *socket;     /* owned; path of a unix socket, or NULL */
    int db;           /* database index, 0 by default */
    char *username;   /* owned or NULL */
    char *password;   /* owned or NULL; never logged */
    struct redis_sentinel_addr *sentinels; /* owned, n_sentinels long; NULL unless sentinel:// */
    size_t n_sentinels;
    char *master_name; /* owned; the master_name transport option (sentinel:// only) */
    double socket_timeout_s;  /* > 0: a server silent this long past its answer's due time
                                 is gone (socket_timeout); the sentinels keep their own 1 s */
    double connect_timeout_s; /* > 0: TCP connect limit (socket_connect_timeout) */
};

/* Parses s into u (which the caller releases with redis_url_release, also on
 * failure); the timeouts get their defaults. Returns 0 or -EINVAL with the
 * reason in e. */
int redis_url_parse(struct redis_url *u, const char *s, struct err *e);
/* True when u is a sentinel:// list. */
bool redis_url_is_sentinel(const struct redis_url *u);
void redis_url_release(struct redis_url *u);

/* kombu's Redis transport options (broker_transport_options) and Celery's
 * result_backend_transport_options as KEY=VALUE strings, kept until the URL
 * they apply to is parsed. One parser for the worker's and the other
 * commands' flags and for the C client's option lists. */
struct redis_transport_options {
    const char *list;               /* borrowed: the flag or setting the options come
                                       from, named in messages ("--broker-transport-option") */
    char *master_name;              /* owned, or NULL (sentinel:// only) */
    double socket_timeout_s;        /* socket_timeout; 0 = not given */
    double connect_timeout_s;       /* socket_connect_timeout; 0 = not given */
};

/* Empties o; list (borrowed, outlives o) names where its options come from. */
void redis_transport_options_init(struct redis_transport_options *o, const char *list);
/* Takes one "KEY=VALUE" into o. master_name (1 to 120 bytes), socket_timeout
 * and socket_connect_timeout (seconds, > 0) mean something; any other key is
 * refused rather than ignored. 0, or -EINVAL with a one-line reason naming
 * o->list in e. */
int redis_transport_options_set(struct redis_transport_options *o, const char *kv, struct err *e);
/* Puts o into u, parsed from the URL of the `what` ("broker", "result
 * backend"): master_name goes with a sentinel:// URL and only with one; the
 * timeouts replace u's defaults for every connection made from u. 0, or
 * -EINVAL with the reason in e. */
int redis_transport_options_apply(const struct redis_transport_options *o, struct redis_url *u,
                                  const char *what, struct err *e);
/* For a `what` URL that is not Redis (or absent): -EINVAL with the reason in
 * e when o holds any option, else 0; refused, not ignored. */
int redis_transport_options_refuse(const struct redis_transport_options *o, const char *what,
                                   struct err *e);
/* Frees what o owns and empties it (o->list kept). NULL-safe. */
void redis_transport_options_release(struct redis_transport_options *o);

enum db_kind {
    DB_NONE,
    DB_POSTGRES,
    DB_SQLITE,
};

/* Decides which database a --db string names. For DB_SQLITE, *path receives
 * the file path (caller frees). Returns 0 or -EINVAL with the reason in e. */
int db_url_classify(const char *s, enum db_kind *kind, char **path, struct err *e);

/* A decimal number of at most 10 digits in [lo, hi] from [s, s+len).
 * 0 or -EINVAL. */
int url_parse_number(const char *s, size_t len, long lo, long hi, long *out);

/* Percent-decodes [s, s+len) into a new string; NULL on a bad escape or an
 * encoded NUL (which no C string can carry). */
char *url_pct_decode(const char *s, size_t len);

/* Appends s with any password replaced by "***": URL userinfo, "password=" in a
 * conninfo string and "?password=" in a URI query. */
void url_mask(struct buf *out, const char *s);

#endif /* CELERIAC_URL_H */
