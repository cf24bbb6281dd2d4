/* SPDX-License-Identifier: MIT
 * test_amqp_url.c: amqp_url_parse and amqp_url_describe (util/amqp_url.c).
 */
#include "common.h"
#include "util/amqp_url.h"
#include "util/buf.h"

#include "harness.h"

static void parse_ok(struct amqp_url *u, const char *s)
{
    struct err e = {0};
    int rc = amqp_url_parse(u, s, &e);
    if (rc)
        FAIL("amqp_url_parse('%s') returned %d: %s", s, rc, e.msg);
}

static void parse_bad(const char *s, const char *why)
{
    struct amqp_url u;
    struct err e = {0};
    int rc = amqp_url_parse(&u, s, &e);
    amqp_url_release(&u);
    if (rc != -EINVAL || e.code != -EINVAL)
        FAIL("amqp_url_parse('%s') returned %d, want -EINVAL", s, rc);
    ASSERT_CONTAINS(e.msg, why);
    ASSERT_NOT_CONTAINS(e.msg, "s3cret");
}

TEST(defaults)
{
    struct amqp_url u;
    parse_ok(&u, "amqp://");
    ASSERT_FALSE(u.tls);
    ASSERT_EQ_STR(u.host, "localhost");
    ASSERT_EQ_INT(u.port, 5672);
    ASSERT_EQ_STR(u.vhost, "/");
    ASSERT_EQ_STR(u.user, "guest");
    ASSERT_EQ_STR(u.password, "guest");
    ASSERT_EQ_INT(u.heartbeat, 120);
    ASSERT_EQ_INT(u.frame_max, 131072);
    ASSERT_EQ_INT(u.connect_timeout_ms, 4000);
    ASSERT_TRUE(u.ssl_verify);
    amqp_url_release(&u);
}

TEST(full)
{
    struct amqp_url u;
    parse_ok(&u, "amqp://bob:s3cret@rabbit.example.com:5673/prod");
    ASSERT_EQ_STR(u.user, "bob");
    ASSERT_EQ_STR(u.password, "s3cret");
    ASSERT_EQ_STR(u.host, "rabbit.example.com");
    ASSERT_EQ_INT(u.port, 5673);
    ASSERT_EQ_STR(u.vhost, "prod");
    struct buf b = BUF_INIT;
    amqp_url_describe(&b, &u);
    ASSERT_EQ_STR(b.data, "rabbit.example.com:5673 vhost 'prod'");
    buf_release(&b);
    amqp_url_release(&u);
}

TEST(vhost_forms)
{
    static const struct {
        const char *url, *vhost;
    } cases[] = {
        {"amqp://h", "/"},          {"amqp://h/", "/"},         {"amqp://h//", "/"},
        {"amqp://h/%2F", "/"},      {"amqp://h/%2f", "/"},      {"amqp://h/a%2Fb", "a/b"},
        {"amqp://h/v?heartbeat=0", "v"}, {"amqp://h/caf%C3%A9", "caf\xc3\xa9"},
    };
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        struct amqp_url u;
        parse_ok(&u, cases[i].url);
        ASSERT_EQ_STR(u.vhost, cases[i].vhost);
        amqp_url_release(&u);
    }
}

TEST(schemes)
{
    struct amqp_url u;
    parse_ok(&u, "pyamqp://u:p@h//");
    ASSERT_FALSE(u.tls);
    ASSERT_EQ_INT(u.port, 5672);
    amqp_url_release(&u);
    parse_ok(&u, "AMQPS://h");
    ASSERT_TRUE(u.tls);
    ASSERT_EQ_INT(u.port, 5671);
    amqp_url_release(&u);
    parse_ok(&u, "amqp://h?ssl=true");
    ASSERT_TRUE(u.tls);
    ASSERT_EQ_INT(u.port, 5671);
    amqp_url_release(&u);
    parse_ok(&u, "amqps://h:5000");
    ASSERT_EQ_INT(u.port, 5000);
    amqp_url_release(&u);
    ASSERT_TRUE(amqp_url_is_amqp("pyamqp://x"));
    ASSERT_FALSE(amqp_url_is_amqp("redis://x"));
}

TEST(percent_userinfo_and_ipv6)
{
    struct amqp_url u;
    parse_ok(&u, "amqp://us%40er:p%2F%3Fw@[::1]:5700/v");
    ASSERT_EQ_STR(u.user, "us@er");
    ASSERT_EQ_STR(u.password, "p/?w");
    ASSERT_EQ_STR(u.host, "::1");
    ASSERT_EQ_INT(u.port, 5700);
    struct buf b = BUF_INIT;
    amqp_url_describe(&b, &u);
    ASSERT_EQ_STR(b.data, "[::1]:5700 vhost 'v'");
    buf_release(&b);
    amqp_url_release(&u);
    parse_ok(&u, "amqp://onlyuser@h");
    ASSERT_EQ_STR(u.user, "onlyuser");
    ASSERT_EQ_STR(u.password, "guest");
    amqp_url_release(&u);
}

TEST(tls_options)
{
    struct amqp_url u;
    parse_ok(&u, "amqps://h/?ssl_ca_certs=/etc/ca.pem&ssl_certfile=/c.pem&ssl_keyfile=/k%20.pem"
                 "&ssl_cert_reqs=CERT_NONE");
    ASSERT_EQ_STR(u.ssl_ca_certs, "/etc/ca.pem");
    ASSERT_EQ_STR(u.ssl_certfile, "/c.pem");
    ASSERT_EQ_STR(u.ssl_keyfile, "/k .pem");
    ASSERT_FALSE(u.ssl_verify);
    amqp_url_release(&u);
    parse_ok(&u, "amqps://h?ssl_cert_reqs=required");
    ASSERT_TRUE(u.ssl_verify);
    amqp_url_release(&u);
}

TEST(numeric_options)
{
    struct amqp_url u;
    parse_ok(&u, "amqp://h/?heartbeat=2&frame_max=8192&connect_timeout=0.5&unknown=1");
    ASSERT_EQ_INT(u.heartbeat, 2);
    ASSERT_EQ_INT(u.frame_max, 8192);
    ASSERT_EQ_INT(u.connect_timeout_ms, 500);
    amqp_url_release(&u);
    parse_ok(&u, "amqp://h/?heartbeat=0");
    ASSERT_EQ_INT(u.heartbeat, 0);
    amqp_url_release(&u);
}

TEST(bad)
{
    parse_bad("redis://h", "unsupported scheme 'redis'");
    parse_bad("amqp://h:0/", "port");
    parse_bad("amqp://h:99999/", "port");
    parse_bad("amqp://h:x/", "port");
    parse_bad("amqp://u:s3cret%zz@h/", "percent escape in the password");
    parse_bad("amqp://h/%00", "vhost");
    parse_bad("amqp://[::1/", "IPv6");
    parse_bad("amqp://h/?heartbeat=-1", "heartbeat");
    parse_bad("amqp://h/?frame_max=100", "frame_max");
    parse_bad("amqp://h/?connect_timeout=abc", "connect_timeout");
    parse_bad("amqp://h/?ssl_cert_reqs=maybe", "ssl_cert_reqs");
    parse_bad("amqp://h/?ssl_ca_certs=/ca.pem", "no TLS");
    parse_bad("amqps://h/?ssl_certfile=/c.pem", "ssl_keyfile");
}

RUN_TESTS()
