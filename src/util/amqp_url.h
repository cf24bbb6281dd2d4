/* SPDX-License-Identifier: MIT
 * amqp_url.h: the broker URLs of RabbitMQ as Celery writes them: amqp://,
 * amqps:// (TLS) and pyamqp:// (kombu's name for the same transport), with the
 * query options of Celery's broker_use_ssl and kombu's connection parameters.
 * Parsing only: connecting is amqp_link.c's job.
 */
#ifndef CELERIAC_AMQP_URL_H
#define CELERIAC_AMQP_URL_H

struct buf;

/* Defaults are Celery 5.2's: user and password guest, host localhost, port
 * 5672 (5671 with TLS), vhost "/", broker_heartbeat 120 s (the server's
 * 60 s wins in the negotiation against a stock RabbitMQ, which takes the
 * lower non-zero value), frame_max 131072 (py-amqp's), and
 * broker_connection_timeout 4 s. */
#define AMQP_URL_HEARTBEAT_DEFAULT 120
#define AMQP_URL_FRAME_MAX_DEFAULT 131072
#define AMQP_URL_CONNECT_TIMEOUT_MS_DEFAULT 4000

/* amqp[s]://[user[:password]@]host[:port][/vhost][?option=value&...]
 *
 * The vhost is the path after the first '/', percent-decoded: "" (or no
 * path) means "/", as do "//" and "/%2F"; "/prod" is "prod". Options:
 *   ssl=true|false          TLS on amqp:// (amqps:// implies it)
 *   ssl_ca_certs=PATH       CA bundle to verify the server with
 *   ssl_certfile=PATH       client certificate (PEM)
 *   ssl_keyfile=PATH        its private key (PEM)
 *   ssl_cert_reqs=none|optional|required (or CERT_NONE, ...): verify the
 *                           server's certificate; default required
 *   heartbeat=SECONDS       0 disables heartbeats
 *   frame_max=BYTES         4096..2^31-1
 *   connect_timeout=SECONDS may be fractional
 * Unknown options are ignored, as kombu passes them on as transport options. */
struct amqp_url {
    bool tls;              /* amqps://, or ssl=true */
    char *host;            /* owned; never NULL after a successful parse */
    int port;              /* 5672, or 5671 with TLS */
    char *vhost;           /* owned, decoded; "/" by default */
    char *user;            /* owned, decoded; "guest" by default */
    char *password;        /* owned, decoded; "guest" by default; never logged */
    char *ssl_ca_certs;    /* owned or NULL */
    char *ssl_certfile;    /* owned or NULL */
    char *ssl_keyfile;     /* owned or NULL */
    bool ssl_verify;       /* ssl_cert_reqs != none */
    int heartbeat;         /* seconds; 0 = off */
    bool heartbeat_given;  /* heartbeat= was in the URL (not the default) */
    int frame_max;         /* bytes */
    int connect_timeout_ms;
};

/* True for the schemes this module parses (amqp, amqps, pyamqp); used by
 * the scheme dispatch of the broker URL. Either process. */
bool amqp_url_is_amqp(const char *s);

/* Parses s into u, which the caller releases with amqp_url_release (also on
 * failure). Returns 0 or -EINVAL with the reason in e; the reason never
 * contains the password. Either process. */
int amqp_url_parse(struct amqp_url *u, const char *s, struct err *e);
void amqp_url_release(struct amqp_url *u);

/* Appends "host:port vhost 'v'" (no credentials), for messages and logs. */
void amqp_url_describe(struct buf *out, const struct amqp_url *u);

#endif /* CELERIAC_AMQP_URL_H */
