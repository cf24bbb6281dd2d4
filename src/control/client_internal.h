/* SPDX-License-Identifier: MIT
 * control/client_internal.h: what control/client.c asks of a transport:
 * a connection with a reply queue, publish to the broadcast exchange, wait
 * for one reply. Messages cross this seam as kombu envelopes (JSON text),
 * so the request and its replies are built and read in one place.
 */
#ifndef CELERIAC_CONTROL_CLIENT_INTERNAL_H
#define CELERIAC_CONTROL_CLIENT_INTERNAL_H

struct buf;

#define PIDBOX_EXCHANGE "celery.pidbox"
#define PIDBOX_REPLY_EXCHANGE "reply.celery.pidbox"

struct control_transport {
    /* Publishes the envelope to celery.pidbox (routing key ""). 0 or a
     * negative code with e filled. */
    int (*publish)(struct control_transport *t, const char *envelope, struct err *e);
    /* Waits up to timeout_ms for one reply; 1 with its envelope appended,
     * 0 on timeout, a negative code with e filled. */
    int (*next)(struct control_transport *t, int timeout_ms, struct buf *envelope,
                struct err *e);
    /* Deletes the reply queue (best effort), closes, frees t. */
    void (*free)(struct control_transport *t);
};

struct redis_transport_options;

/* Each connects to url and declares the reply queue "<oid>.reply.celery.pidbox"
 * bound with oid (borrowed; outlives t). Redis takes the broker's transport
 * options (borrowed, not NULL). NULL with e filled. */
struct control_transport *control_client_redis_open(const char *url,
                                                    const struct redis_transport_options *options,
                                                    const char *oid, struct err *e);
struct control_transport *control_client_amqp_open(const char *url, const char *oid, struct err *e);

#endif /* CELERIAC_CONTROL_CLIENT_INTERNAL_H */
