/* SPDX-License-Identifier: MIT
 * amqp_tls.c: the TLS socket of an AMQP link on rabbitmq-c's OpenSSL socket:
 * files, certificate verification by OpenSSL, and the words for a TLS
 * failure (see amqp_tls.h).
 */
#include "common.h"
#include "util/amqp_tls.h"
#include "util/amqp_url.h"

#include <amqp_ssl_socket.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

/* OpenSSL's reason for the oldest error in its queue (the cause; later
 * entries only say which call failed), then the queue is cleared. */
static const char *ssl_reason(char *buf, size_t n)
{
    unsigned long code = ERR_peek_error();
    const char *r = NULL;
    if (code && ERR_SYSTEM_ERROR(code))
        r = strerror(ERR_GET_REASON(code));
    else if (code)
        r = ERR_reason_error_string(code);
    snprintf(buf, n, "%s", r ? r : "no reason given by OpenSSL");
    ERR_clear_error();
    return buf;
}

/* OpenSSL calls this for each certificate of the chain it checks; the
 * first failure is kept for the message (rabbitmq-c reports only "failed"). */
static int verify_cb(int ok, X509_STORE_CTX *x)
{
    SSL *ssl = X509_STORE_CTX_get_ex_data(x, SSL_get_ex_data_X509_STORE_CTX_idx());
    struct amqp_tls_check *check = ssl ? SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl)) : NULL;
    if (!ok && check && !check->error)
        check->error = X509_STORE_CTX_get_error(x);
    return ok;
}

/* The server's certificate must chain to the CAs and name the host; OpenSSL
 * checks both during the handshake (and aborts it with an alert to the
 * server), so rabbitmq-c's own name check, DNS names only, stays off. */
static int set_verify(amqp_socket_t *s, const struct amqp_url *u, struct amqp_tls_check *check,
                      const char *where, struct err *e)
{
    SSL_CTX *ctx = amqp_ssl_socket_get_context(s);
    char why[160];
    amqp_ssl_socket_set_verify_peer(s, true);
    amqp_ssl_socket_set_verify_hostname(s, false);
    if (!u->ssl_ca_certs && SSL_CTX_set_default_verify_paths(ctx) != 1)
        return err_set(e, E_CONFIG, "load the system's TLS CA certificates for %s failed: %s",
                       where, ssl_reason(why, sizeof(why)));
    X509_VERIFY_PARAM *param = SSL_CTX_get0_param(ctx);
    X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    /* set1_ip_asc refuses anything but an IPv4 or IPv6 literal */
    if (X509_VERIFY_PARAM_set1_ip_asc(param, u->host) != 1) {
        ERR_clear_error();
        if (X509_VERIFY_PARAM_set1_host(param, u->host, 0) != 1)
            return err_set(e, E_CONFIG, "TLS host name '%s' of %s cannot be checked: %s",
                           u->host, where, ssl_reason(why, sizeof(why)));
    }
    SSL_CTX_set_app_data(ctx, check);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, verify_cb);
    return 0;
}

/* A file named in the URL that this process cannot read: the system's
 * reason, clearer than what OpenSSL says after trying. */
static int check_readable(const char *what, const char *path, const char *where, struct err *e)
{
    if (access(path, R_OK) == 0)
        return 0;
    int saved = errno;
    return err_set(e, E_CONFIG, "load TLS %s '%s' for %s failed: %s", what, path, where,
                   strerror(saved));
}

amqp_socket_t *amqp_tls_socket_new(amqp_connection_state_t conn, const struct amqp_url *u,
                                   const char *where, struct amqp_tls_check *check,
                                   struct err *e)
{
    char why[160];
    check->error = 0;
    check->client_cert = u->ssl_certfile != NULL;
    if ((u->ssl_ca_certs && check_readable("CA file", u->ssl_ca_certs, where, e)) ||
        (u->ssl_certfile && check_readable("certificate", u->ssl_certfile, where, e)) ||
        (u->ssl_keyfile && check_readable("key", u->ssl_keyfile, where, e)))
        return NULL;
    amqp_socket_t *s = amqp_ssl_socket_new(conn);
    if (!s) {
        err_set(e, E_CONN_LOST, "connect to %s failed: cannot create a TLS socket: %s", where,
                ssl_reason(why, sizeof(why)));
        return NULL;
    }
    ERR_clear_error();
    if (u->ssl_ca_certs && amqp_ssl_socket_set_cacert(s, u->ssl_ca_certs)) {
        err_set(e, E_CONFIG, "load TLS CA file '%s' for %s failed: %s", u->ssl_ca_certs, where,
                ssl_reason(why, sizeof(why)));
        return NULL;
    }
    if (u->ssl_certfile && amqp_ssl_socket_set_key(s, u->ssl_certfile, u->ssl_keyfile)) {
        err_set(e, E_CONFIG, "load TLS certificate '%s' with key '%s' for %s failed: %s",
                u->ssl_certfile, u->ssl_keyfile, where, ssl_reason(why, sizeof(why)));
        return NULL;
    }
    if (!u->ssl_verify) {
        amqp_ssl_socket_set_verify_peer(s, false);
        amqp_ssl_socket_set_verify_hostname(s, false);
    } else if (set_verify(s, u, check, where, e)) {
        return NULL;
    }
    return s;
}

void amqp_tls_handshake_done(amqp_socket_t *s)
{
    if (s)
        SSL_CTX_set_app_data(amqp_ssl_socket_get_context(s), NULL);
}

bool amqp_tls_describe(int status, const struct amqp_tls_check *check, const struct amqp_url *u,
                       bool opening, char *why, size_t n)
{
    if (check->error) {
        int err = check->error;
        const char *reason = X509_verify_cert_error_string(err);
        if (err == X509_V_ERR_HOSTNAME_MISMATCH || err == X509_V_ERR_IP_ADDRESS_MISMATCH)
            snprintf(why, n, "the server's TLS certificate is not for host '%s' (%s)",
                     u ? u->host : "?", reason);
        else if (u && u->ssl_ca_certs)
            snprintf(why, n, "the server's TLS certificate could not be verified with CA file "
                             "'%s': %s", u->ssl_ca_certs, reason);
        else
            snprintf(why, n, "the server's TLS certificate could not be verified with the "
                             "system's CA certificates: %s", reason);
        ERR_clear_error();
        return true;
    }
    const char *text = amqp_error_string2(status);
    char reason[160];
    bool ssl = status == AMQP_STATUS_SSL_ERROR || status == AMQP_STATUS_SSL_CONNECTION_FAILED ||
               status == AMQP_STATUS_SSL_PEER_VERIFY_FAILED ||
               status == AMQP_STATUS_SSL_HOSTNAME_VERIFY_FAILED;
    if (ssl && ERR_peek_error())
        snprintf(why, n, "%s (%s)", text, ssl_reason(reason, sizeof(reason)));
    else if (opening && !check->client_cert &&
             (ssl || status == AMQP_STATUS_SOCKET_ERROR || status == AMQP_STATUS_CONNECTION_CLOSED))
        snprintf(why, n, "%s (the server dropped the connection: does it require a client "
                         "certificate? ssl_certfile, ssl_keyfile)", text);
    else
        snprintf(why, n, "%s", text);
    return false;
}
