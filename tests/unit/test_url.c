/* SPDX-License-Identifier: MIT
 * test_url.c: redis_url_parse, the Redis transport options, db_url_classify and
 * url_mask (util/url.c).
 */
#include "common.h"
#include "util/buf.h"
#include "util/url.h"

#include "harness.h"

/* Parses s, expecting success; the caller releases u. */
static void parse_ok(struct redis_url *u, const char *s)
{
    struct err e = {0};
    int rc = redis_url_parse(u, s, &e);
    if (rc)
        FAIL("redis_url_parse('%s') returned %d: %s", s, rc, e.msg);
}

/* Parses s expecting -EINVAL and a message; returns nothing, releases u. */
static void parse_bad(const char *s)
{
    struct redis_url u;
    struct err e = {0};
    int rc = redis_url_parse(&u, s, &e);
    redis_url_release(&u);
    if (rc != -EINVAL)
        FAIL("redis_url_parse('%s') returned %d, want -EINVAL (%d)", s, rc, -EINVAL);
    if (!e.msg[0])
        FAIL("redis_url_parse('%s') failed without a message", s);
    if (e.code != -EINVAL)
        FAIL("redis_url_parse('%s') set e.code %d, want -EINVAL", s, e.code);
}

TEST(redis_defaults)
{
    struct redis_url u;
    parse_ok(&u, "redis://localhost");
    ASSERT_EQ_STR(u.host, "localhost");
    ASSERT_EQ_INT(u.port, 6379);
    ASSERT_EQ_INT(u.db, 0);
    ASSERT_NULL(u.socket);
    ASSERT_NULL(u.username);
    ASSERT_NULL(u.password);
    /* kombu's socket_timeout and socket_connect_timeout defaults */
    ASSERT_TRUE(u.socket_timeout_s == 30.0);
    ASSERT_TRUE(u.connect_timeout_s == 5.0);
    redis_url_release(&u);
}

TEST(redis_host_port_db)
{
    struct redis_url u;
    parse_ok(&u, "redis://127.0.0.1:6390/3");
    ASSERT_EQ_STR(u.host, "127.0.0.1");
    ASSERT_EQ_INT(u.port, 6390);
    ASSERT_EQ_INT(u.db, 3);
    ASSERT_NULL(u.password);
    redis_url_release(&u);

    parse_ok(&u, "redis://cache.example.com/15");
    ASSERT_EQ_STR(u.host, "cache.example.com");
    ASSERT_EQ_INT(u.port, 6379);
    ASSERT_EQ_INT(u.db, 15);
    redis_url_release(&u);

    parse_ok(&u, "redis://h:1/");
    ASSERT_EQ_STR(u.host, "h");
    ASSERT_EQ_INT(u.port, 1);
    ASSERT_EQ_INT(u.db, 0);
    redis_url_release(&u);

    parse_ok(&u, "redis://h:65535/0");
    ASSERT_EQ_INT(u.port, 65535);
    redis_url_release(&u);
}

TEST(redis_scheme_is_case_insensitive)
{
    struct redis_url u;
    parse_ok(&u, "REDIS://h:7000/1");
    ASSERT_EQ_STR(u.host, "h");
    ASSERT_EQ_INT(u.port, 7000);
    ASSERT_EQ_INT(u.db, 1);
    redis_url_release(&u);
}

TEST(redis_empty_host_is_localhost)
{
    struct redis_url u;
    parse_ok(&u, "redis://");
    ASSERT_EQ_STR(u.host, "localhost");
    ASSERT_EQ_INT(u.port, 6379);
    redis_url_release(&u);

    parse_ok(&u, "redis://:pw@:6380/2");
    ASSERT_EQ_STR(u.host, "localhost");
    ASSERT_EQ_INT(u.port, 6380);
    ASSERT_EQ_INT(u.db, 2);
    ASSERT_EQ_STR(u.password, "pw");
    redis_url_release(&u);
}

TEST(redis_password_only)
{
    struct redis_url u;
    parse_ok(&u, "redis://:s3cret@redis.local:6379/0");
    ASSERT_NULL(u.username);
    ASSERT_EQ_STR(u.password, "s3cret");
    ASSERT_EQ_STR(u.host, "redis.local");
    redis_url_release(&u);
}

TEST(redis_username_and_password)
{
    struct redis_url u;
    parse_ok(&u, "redis://alice:wonder@10.0.0.5:6381/4");
    ASSERT_EQ_STR(u.username, "alice");
    ASSERT_EQ_STR(u.password, "wonder");
    ASSERT_EQ_STR(u.host, "10.0.0.5");
    ASSERT_EQ_INT(u.port, 6381);
    ASSERT_EQ_INT(u.db, 4);
    redis_url_release(&u);
}

TEST(redis_username_without_password)
{
    struct redis_url u;
    parse_ok(&u, "redis://bob@h");
    ASSERT_EQ_STR(u.username, "bob");
    ASSERT_NULL(u.password);
    ASSERT_EQ_STR(u.host, "h");
    redis_url_release(&u);
}

TEST(redis_percent_escapes)
{
    struct redis_url u;
    /* %40 '@', %3A ':', %2F '/', %25 '%', %20 ' ' */
    parse_ok(&u, "redis://us%40er:p%3Ass%2Fw%25rd%20x@h:6379/0");
    ASSERT_EQ_STR(u.username, "us@er");
    ASSERT_EQ_STR(u.password, "p:ss/w%rd x");
    ASSERT_EQ_STR(u.host, "h");
    redis_url_release(&u);

    /* Lower-case hex and an escape as the very last characters. */
    parse_ok(&u, "redis://:ab%2f%3a@h");
    ASSERT_EQ_STR(u.password, "ab/:");
    redis_url_release(&u);
}

TEST(redis_password_with_raw_at)
{
    struct redis_url u;
    /* The last '@' before the path ends the userinfo. */
    parse_ok(&u, "redis://:p@ss@h:6379");
    ASSERT_EQ_STR(u.password, "p@ss");
    ASSERT_EQ_STR(u.host, "h");
    redis_url_release(&u);
}

TEST(redis_bad_percent_escapes)
{
    parse_bad("redis://:pw%zz@h");
    parse_bad("redis://:pw%4@h");
    parse_bad("redis://:pw%@h");
    parse_bad("redis://us%g1:pw@h");
}

TEST(redis_ipv6)
{
    struct redis_url u;
    parse_ok(&u, "redis://[::1]:6380/2");
    ASSERT_EQ_STR(u.host, "::1");
    ASSERT_EQ_INT(u.port, 6380);
    ASSERT_EQ_INT(u.db, 2);
    redis_url_release(&u);

    parse_ok(&u, "redis://[2001:db8::7]");
    ASSERT_EQ_STR(u.host, "2001:db8::7");
    ASSERT_EQ_INT(u.port, 6379);
    redis_url_release(&u);

    parse_ok(&u, "redis://:pw@[fe80::1%25eth0]:7000/1");
    ASSERT_EQ_STR(u.password, "pw");
    ASSERT_EQ_INT(u.port, 7000);
    ASSERT_EQ_INT(u.db, 1);
    redis_url_release(&u);

    parse_bad("redis://[::1:6379/0");
    parse_bad("redis://[::1]x/0");
    parse_bad("redis://[::1]:/0");
}

TEST(redis_socket)
{
    struct redis_url u;
    parse_ok(&u, "redis+socket:///var/run/redis.sock");
    ASSERT_NULL(u.host);
    ASSERT_EQ_STR(u.socket, "/var/run/redis.sock");
    ASSERT_EQ_INT(u.db, 0);
    redis_url_release(&u);

    parse_ok(&u, "redis+socket:///tmp/r.sock?db=5");
    ASSERT_EQ_STR(u.socket, "/tmp/r.sock");
    ASSERT_EQ_INT(u.db, 5);
    redis_url_release(&u);

    parse_ok(&u, "redis+socket:///tmp/r.sock?timeout=3&db=7");
    ASSERT_EQ_STR(u.socket, "/tmp/r.sock");
    ASSERT_EQ_INT(u.db, 7);
    redis_url_release(&u);

    parse_ok(&u, "unix:///tmp/u.sock?db=1");
    ASSERT_EQ_STR(u.socket, "/tmp/u.sock");
    ASSERT_EQ_INT(u.db, 1);
    redis_url_release(&u);

    parse_bad("redis+socket://");
    parse_bad("redis+socket://relative.sock");
    parse_bad("redis+socket:///tmp/r.sock?db=x");
    parse_bad("redis+socket:///tmp/r.sock?db=");
}

TEST(redis_bad_ports)
{
    parse_bad("redis://h:0");
    parse_bad("redis://h:65536");
    parse_bad("redis://h:99999999999");
    parse_bad("redis://h:-1");
    parse_bad("redis://h:63a");
    parse_bad("redis://h:");
    parse_bad("redis://h: 80");
    parse_bad("redis://h:+80");
}

TEST(redis_bad_db)
{
    parse_bad("redis://h/abc");
    parse_bad("redis://h/-1");
    parse_bad("redis://h:6379/1x");
    parse_bad("redis://h/99999999999999");
}

TEST(redis_bad_scheme)
{
    parse_bad("http://h:6379/0");
    parse_bad("rediss://h:6379/0");
    parse_bad("amqp://guest:guest@h//");
    parse_bad("h:6379");
    parse_bad("");
    parse_bad("redis:/h");
}

TEST(redis_error_message_never_holds_password)
{
    const char *bad[] = {
        "redis://:hunter2@h:99999/0",
        "redis://:hunter2@h/notadb",
        "redis://u:hunter2@[::1/0",
    };
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        struct redis_url u;
        struct err e = {0};
        int rc = redis_url_parse(&u, bad[i], &e);
        redis_url_release(&u);
        ASSERT_EQ_INT(rc, -EINVAL);
        ASSERT_NOT_CONTAINS(e.msg, "hunter2");
    }
}

TEST(redis_null_err_is_allowed)
{
    struct redis_url u;
    ASSERT_EQ_INT(redis_url_parse(&u, "ftp://x", NULL), -EINVAL);
    redis_url_release(&u);
}

TEST(redis_release_twice)
{
    struct redis_url u;
    parse_ok(&u, "redis://a:b@h/1");
    redis_url_release(&u);
    redis_url_release(&u);
    ASSERT_NULL(u.host);
    ASSERT_NULL(u.password);
}

/* --- db_url_classify --- */

static void classify_ok(const char *s, enum db_kind want, const char *want_path)
{
    enum db_kind kind = DB_NONE;
    char *path = (char *)"unset";
    struct err e = {0};
    int rc = db_url_classify(s, &kind, &path, &e);
    if (rc)
        FAIL("db_url_classify('%s') returned %d: %s", s, rc, e.msg);
    if (kind != want)
        FAIL("db_url_classify('%s') gave kind %d, want %d", s, (int)kind, (int)want);
    if (want_path) {
        if (!path || strcmp(path, want_path))
            FAIL("db_url_classify('%s') gave path '%s', want '%s'", s, path ? path : "(null)",
                 want_path);
    } else if (path) {
        FAIL("db_url_classify('%s') gave path '%s', want NULL", s, path);
    }
    free(path);
}

static void classify_bad(const char *s)
{
    enum db_kind kind = DB_POSTGRES;
    char *path = NULL;
    struct err e = {0};
    int rc = db_url_classify(s, &kind, &path, &e);
    free(path);
    if (rc != -EINVAL)
        FAIL("db_url_classify('%s') returned %d (kind %d), want -EINVAL", s, rc, (int)kind);
    if (!e.msg[0])
        FAIL("db_url_classify('%s') failed without a message", s);
    if (kind != DB_NONE)
        FAIL("db_url_classify('%s') failed but left kind %d", s, (int)kind);
}

TEST(classify_sqlite_absolute)
{
    classify_ok("sqlite:///var/lib/celeriac/books.db", DB_SQLITE, "/var/lib/celeriac/books.db");
}

TEST(classify_sqlite_relative)
{
    classify_ok("sqlite://books.db", DB_SQLITE, "books.db");
    classify_ok("sqlite://data/books.db", DB_SQLITE, "data/books.db");
}

TEST(classify_postgres_urls)
{
    classify_ok("postgresql://u:p@db.local:5432/books", DB_POSTGRES, NULL);
    classify_ok("postgres://db.local/books", DB_POSTGRES, NULL);
    classify_ok("POSTGRESQL://h/d", DB_POSTGRES, NULL);
    classify_ok("postgresql:///books?host=/tmp", DB_POSTGRES, NULL);
}

TEST(classify_conninfo)
{
    classify_ok("host=/tmp dbname=books", DB_POSTGRES, NULL);
    classify_ok("dbname=books", DB_POSTGRES, NULL);
    classify_ok("host = db user=u password = 'se cret'", DB_POSTGRES, NULL);
}

TEST(classify_null_path_pointer)
{
    enum db_kind kind;
    ASSERT_EQ_INT(db_url_classify("sqlite:///a.db", &kind, NULL, NULL), 0);
    ASSERT_EQ_INT(kind, DB_SQLITE);
    ASSERT_EQ_INT(db_url_classify("nonsense", &kind, NULL, NULL), -EINVAL);
}

TEST(classify_empty)
{
    classify_bad("");
}

TEST(classify_sqlite_memory)
{
    /* Each child would get its own private empty database. */
    classify_bad("sqlite://:memory:");
    classify_bad("sqlite:///:memory:");
}

TEST(classify_sqlite_without_file)
{
    classify_bad("sqlite://");
    classify_bad("sqlite:///");
}

TEST(classify_garbage)
{
    classify_bad("books.db");
    classify_bad("mysql://u:p@h/db");
    classify_bad("redis://h:6379/0");
    classify_bad("   ");
    classify_bad("postgresql");
}

/* A URL with an unknown scheme is not a conninfo just because its query has '='. */
TEST(classify_unknown_scheme_with_query)
{
    classify_bad("mysql://u@h/db?ssl=true");
}

/* --- url_mask --- */

static char *masked(const char *s)
{
    struct buf out = BUF_INIT;
    url_mask(&out, s);
    return buf_detach(&out, NULL);
}

#define ASSERT_MASK(in, want)                                                   \
    do {                                                                        \
        char *m_ = masked(in);                                                  \
        ASSERT_EQ_STR(m_, want);                                                \
        free(m_);                                                               \
    } while (0)

TEST(mask_urls)
{
    ASSERT_MASK("redis://:s3cret@h:6379/0", "redis://:***@h:6379/0");
    ASSERT_MASK("redis://alice:s3cret@h/1", "redis://alice:***@h/1");
    ASSERT_MASK("postgresql://u:s3cret@db.local:5432/books",
                "postgresql://u:***@db.local:5432/books");
    ASSERT_MASK("postgres://u:p%40ss@h/d", "postgres://u:***@h/d");
}

TEST(mask_urls_without_password_unchanged)
{
    ASSERT_MASK("redis://h:6379/0", "redis://h:6379/0");
    ASSERT_MASK("redis://bob@h/0", "redis://bob@h/0");
    ASSERT_MASK("postgresql:///books?host=/tmp", "postgresql:///books?host=/tmp");
    ASSERT_MASK("sqlite:///var/x.db", "sqlite:///var/x.db");
    ASSERT_MASK("", "");
}

TEST(mask_password_with_raw_at)
{
    char *m = masked("redis://:p@ss@h:6379/0");
    ASSERT_NOT_CONTAINS(m, "p@ss");
    ASSERT_NOT_CONTAINS(m, ":p");
    ASSERT_CONTAINS(m, "h:6379/0");
    free(m);
}

TEST(mask_conninfo_plain)
{
    ASSERT_MASK("host=db password=secret dbname=books", "host=db password=*** dbname=books");
    ASSERT_MASK("password=secret", "password=***");
    ASSERT_MASK("host=db PASSWORD=secret", "host=db PASSWORD=***");
}

TEST(mask_conninfo_quoted_with_spaces)
{
    ASSERT_MASK("host=db password = 'se cret' dbname=books",
                "host=db password = *** dbname=books");
    char *m = masked("password='it\\'s a secret' user=u");
    ASSERT_NOT_CONTAINS(m, "secret");
    ASSERT_NOT_CONTAINS(m, "it");
    ASSERT_CONTAINS(m, "user=u");
    free(m);
}

TEST(mask_conninfo_keeps_other_words)
{
    /* "passwordfile" style keys and values mentioning password are not passwords. */
    ASSERT_MASK("host=db user=password", "host=db user=password");
    ASSERT_MASK("dbname=passwords host=db", "dbname=passwords host=db");
}

TEST(mask_uri_query_password)
{
    char *m = masked("postgresql://u@db/books?sslmode=require&password=s3cret&x=1");
    ASSERT_NOT_CONTAINS(m, "s3cret");
    ASSERT_CONTAINS(m, "sslmode=require");
    ASSERT_CONTAINS(m, "x=1");
    free(m);
    m = masked("postgresql://db/books?password=s3cret");
    ASSERT_NOT_CONTAINS(m, "s3cret");
    ASSERT_EQ_STR(m, "postgresql://db/books?password=***");
    free(m);
    m = masked("postgresql://u:one@db/books?password=two");
    ASSERT_NOT_CONTAINS(m, "one");
    ASSERT_NOT_CONTAINS(m, "two");
    free(m);
}

/* libpq's URI parser looks for '@' up to the first '/', so '?' and '#' may
 * appear raw in a password it accepts; none of it may reach a log line. */
TEST(mask_password_with_raw_query_chars)
{
    char *m = masked("postgresql://u:s3cr?t@db/books");
    ASSERT_NOT_CONTAINS(m, "s3cr");
    free(m);
    m = masked("postgresql://u:s3cr#t@db/books");
    ASSERT_NOT_CONTAINS(m, "s3cr");
    free(m);
}

TEST(mask_appends)
{
    struct buf out = BUF_INIT;
    buf_adds(&out, "db=");
    url_mask(&out, "redis://:x@h");
    ASSERT_EQ_STR(out.data, "db=redis://:***@h");
    buf_release(&out);
}

TEST(sentinel_list_as_kombu_writes_it)
{
    struct redis_url u;
    parse_ok(&u, "sentinel://:s3cret@10.0.0.1:26380/2;sentinel://h2;SENTINEL://[::1]:26381");
    ASSERT_TRUE(redis_url_is_sentinel(&u));
    ASSERT_EQ_SIZE(u.n_sentinels, 3);
    ASSERT_EQ_STR(u.sentinels[0].host, "10.0.0.1");
    ASSERT_EQ_INT(u.sentinels[0].port, 26380);
    ASSERT_EQ_STR(u.sentinels[1].host, "h2");
    ASSERT_EQ_INT(u.sentinels[1].port, 26379);
    ASSERT_EQ_STR(u.sentinels[2].host, "::1");
    ASSERT_EQ_INT(u.sentinels[2].port, 26381);
    ASSERT_EQ_STR(u.password, "s3cret"); /* the first part's, for the master */
    ASSERT_EQ_INT(u.db, 2);
    ASSERT_NULL(u.host);
    ASSERT_NULL(u.master_name); /* a transport option, set by the caller */
    ASSERT_TRUE(u.socket_timeout_s == 30.0); /* also the sentinel-found master's */
    ASSERT_TRUE(u.connect_timeout_s == 5.0);
    redis_url_release(&u);

    parse_ok(&u, "sentinel://localhost:26379");
    ASSERT_EQ_SIZE(u.n_sentinels, 1);
    ASSERT_NULL(u.password);
    redis_url_release(&u);

    parse_ok(&u, "redis://:a;b@h:6390/1"); /* a ';' in a password is no list */
    ASSERT_FALSE(redis_url_is_sentinel(&u));
    ASSERT_EQ_STR(u.password, "a;b");
    redis_url_release(&u);
}

TEST(sentinel_list_refuses_mixed_schemes)
{
    struct redis_url u;
    struct err e = {0};
    ASSERT_EQ_INT(redis_url_parse(&u, "sentinel://h1:26379;redis://h2:6379", &e), -EINVAL);
    ASSERT_CONTAINS(e.msg, "mixes");
    ASSERT_CONTAINS(e.msg, "redis://");
    redis_url_release(&u);
    ASSERT_EQ_INT(redis_url_parse(&u, "redis://h1:6379;sentinel://h2:26379", &e), -EINVAL);
    ASSERT_CONTAINS(e.msg, "mixes");
    redis_url_release(&u);
    ASSERT_EQ_INT(redis_url_parse(&u, "redis://h1:6379;redis://h2:6379", &e), -EINVAL);
    ASSERT_CONTAINS(e.msg, "sentinel:// only");
    redis_url_release(&u);
    parse_bad("sentinel://h1;h2");
    parse_bad("sentinel://h1:99999");
    parse_bad("sentinel://h1;");
}

TEST(mask_sentinel_list)
{
    char *m = masked("sentinel://:p1@h1:26379;sentinel://u:p2@h2:26379");
    ASSERT_EQ_STR(m, "sentinel://:***@h1:26379;sentinel://u:***@h2:26379");
    free(m);
}

/* set() expecting -EINVAL with a message holding want. */
static void option_bad(struct redis_transport_options *o, const char *kv, const char *want)
{
    struct err e = {0};
    ASSERT_EQ_INT(redis_transport_options_set(o, kv, &e), -EINVAL);
    ASSERT_CONTAINS(e.msg, want);
}

TEST(transport_options_set_and_apply)
{
    struct redis_transport_options o;
    struct err e = {0};
    redis_transport_options_init(&o, "--broker-transport-option");
    ASSERT_EQ_INT(redis_transport_options_set(&o, "master_name=one", &e), 0);
    ASSERT_EQ_INT(redis_transport_options_set(&o, "master_name=mymaster", &e), 0); /* last wins */
    ASSERT_EQ_INT(redis_transport_options_set(&o, "socket_timeout=2.5", &e), 0);
    ASSERT_EQ_INT(redis_transport_options_set(&o, "socket_connect_timeout=1", &e), 0);
    struct redis_url u;
    parse_ok(&u, "sentinel://h1;sentinel://h2:26380");
    ASSERT_EQ_INT(redis_transport_options_apply(&o, &u, "broker", &e), 0);
    ASSERT_EQ_STR(u.master_name, "mymaster");
    ASSERT_TRUE(u.socket_timeout_s == 2.5);
    ASSERT_TRUE(u.connect_timeout_s == 1.0);
    redis_url_release(&u);

    parse_ok(&u, "redis://h1");
    ASSERT_EQ_INT(redis_transport_options_apply(&o, &u, "broker", &e), -EINVAL);
    ASSERT_EQ_STR(e.msg, "--broker-transport-option master_name applies to a sentinel:// broker "
                         "URL only");
    redis_url_release(&u);
    ASSERT_EQ_INT(redis_transport_options_refuse(&o, "broker", &e), -EINVAL);
    ASSERT_CONTAINS(e.msg, "master_name applies to a redis:// or sentinel:// broker URL only");
    redis_transport_options_release(&o);
    ASSERT_NULL(o.master_name);
    ASSERT_EQ_STR(o.list, "--broker-transport-option");
    redis_transport_options_release(NULL);
}

TEST(transport_options_sentinel_needs_master_name)
{
    struct redis_transport_options o;
    struct err e = {0};
    redis_transport_options_init(&o, "result_backend_transport_options");
    struct redis_url u;
    parse_ok(&u, "sentinel://h1/1");
    ASSERT_EQ_INT(redis_transport_options_apply(&o, &u, "result backend", &e), -EINVAL);
    ASSERT_EQ_STR(e.msg, "bad result backend URL: sentinel:// needs "
                         "result_backend_transport_options master_name=NAME");
    redis_url_release(&u);
    ASSERT_EQ_INT(redis_transport_options_refuse(&o, "result backend", &e), 0); /* none given */
}

TEST(transport_options_bad_values)
{
    struct redis_transport_options o;
    redis_transport_options_init(&o, "--broker-transport-option");
    option_bad(&o, "master_name", "--broker-transport-option wants KEY=VALUE, got 'master_name'");
    option_bad(&o, "=x", "wants KEY=VALUE");
    option_bad(&o, "master_name=", "master_name wants a name of 1 to 120 bytes");
    option_bad(&o, "socket_timeout=abc", "--broker-transport-option socket_timeout wants a "
                                         "positive number of seconds, got 'abc'");
    option_bad(&o, "socket_timeout=0", "positive number");
    option_bad(&o, "socket_connect_timeout=-1", "positive number");
    option_bad(&o, "socket_connect_timeout=nan", "positive number");
    option_bad(&o, "visibility_timeout=3", "unknown option 'visibility_timeout' (celeriac knows");
    ASSERT_NULL(o.master_name);
    ASSERT_TRUE(o.socket_timeout_s == 0 && o.connect_timeout_s == 0);
    redis_transport_options_release(&o);
}

RUN_TESTS()
