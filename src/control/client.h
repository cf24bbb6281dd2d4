/* SPDX-License-Identifier: MIT
 * control/client.h: the client side of remote control, what `celery
 * inspect` / `celery control` do: broadcast a pidbox request with a reply
 * queue of our own, gather the nodes' replies until a wait times out. Over
 * Redis (kombu's fanout channel and binding sets) and RabbitMQ (the
 * celery.pidbox fanout and reply.celery.pidbox direct exchanges).
 *
 * Not the worker side: broker/bus.h listens to a node's pidbox and replies;
 * a client has no node, owns a reply queue and cleans it up, so it does not
 * ride on the bus seam.
 */
#ifndef CELERIAC_CONTROL_CLIENT_H
#define CELERIAC_CONTROL_CLIENT_H

#include <jansson.h>

struct control_client;

struct redis_transport_options;

/* Connects to the broker at url (redis://, sentinel://, amqp://, amqps://)
 * and prepares a reply queue named after a fresh oid. options (borrowed;
 * NULL = none) are the broker's Redis transport options (util/url.h):
 * master_name is needed with sentinel://, and any option is refused for
 * amqp://. NULL with e filled (E_CONN_LOST: unreachable; E_CONFIG or
 * -EINVAL: bad URL or option, refused login; -ENOTSUP: a transport without
 * broadcast). Caller frees with control_client_free. */
struct control_client *control_client_open(const char *url,
                                           const struct redis_transport_options *options,
                                           struct err *e);

/* What one broadcast asks. Everything borrowed. */
struct control_request {
    const char *method;            /* "ping", "rate_limit", ... */
    json_t *arguments;             /* object, or NULL for {} */
    char *const *destination;      /* node names; NULL or n_destination 0: every node */
    size_t n_destination;
    double timeout_s;              /* each wait for a reply; the first silent wait ends it */
    bool reply;                    /* false: publish and return at once */
};

/* Publishes r and gathers the replies that carry its ticket: *replies is a
 * new JSON array of {node: result} objects in arrival order (caller
 * json_decrefs), stopping early once every destination has replied.
 * 0, or E_CONN_LOST / E_PROTOCOL with e filled (*replies NULL). */
int control_client_broadcast(struct control_client *c, const struct control_request *r,
                             json_t **replies, struct err *e);

/* Removes the reply queue and closes the connection. NULL-safe. */
void control_client_free(struct control_client *c);

#endif /* CELERIAC_CONTROL_CLIENT_H */
