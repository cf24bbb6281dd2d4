/* SPDX-License-Identifier: MIT
 * amqp_tls.h: the TLS socket of an AMQP link (rabbitmq-c 0.11 over OpenSSL):
 * the CA (or the system's CAs), the client certificate, and verification of
 * the server's certificate chain and name by OpenSSL, so that an IP address
 * is checked against the certificate's IP entries as Python's ssl does
 * (rabbitmq-c 0.11 compares a host only with DNS names and the CN); and the
 * words for a TLS failure. amqp_link.c is the only user.
 */
#ifndef CELERIAC_AMQP_TLS_H
#define CELERIAC_AMQP_TLS_H

#include <amqp.h>

struct amqp_url;

/* What the certificate check found during one handshake. */
struct amqp_tls_check {
    int error;                 /* X509_V_ERR_* of the first failure; 0 = none yet */
    bool client_cert;          /* a client certificate was offered */
};

/* A TLS socket on conn (conn owns it and frees it), set up from u: with
 * u->ssl_verify the server's certificate must chain to u->ssl_ca_certs (the
 * system's CAs without it) and name u->host (a DNS name, or an IP address
 * among the certificate's IP entries); u->ssl_certfile/keyfile are presented
 * when the server asks. The first verification failure of the handshake is
 * written to *check (borrowed: it must outlive amqp_tls_handshake_done).
 * Returns NULL with e set: E_CONFIG when a file cannot be loaded (its
 * reason in e), E_CONN_LOST when out of memory. where names the server
 * in messages. */
amqp_socket_t *amqp_tls_socket_new(amqp_connection_state_t conn, const struct amqp_url *u,
                                   const char *where, struct amqp_tls_check *check,
                                   struct err *e);

/* Ends the use of the check given to amqp_tls_socket_new; s may be NULL. */
void amqp_tls_handshake_done(amqp_socket_t *s);

/* Fills why (size n) with what the rabbitmq-c status of a TLS connection
 * means: the certificate failure of check (naming the CA file of u, or the
 * host), else the library's text with OpenSSL's reason, e.g. "SSL handshake
 * failed (wrong version number)"; opening: the AMQP handshake was under way
 * (a server that wants a client certificate drops the connection there).
 * u may be NULL. Returns true when the failure is the server's certificate
 * (configuration, not an outage). */
bool amqp_tls_describe(int status, const struct amqp_tls_check *check, const struct amqp_url *u,
                       bool opening, char *why, size_t n);

#endif /* CELERIAC_AMQP_TLS_H */
