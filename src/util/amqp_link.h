/* SPDX-License-Identifier: MIT
 * amqp_link.h: one AMQP 0-9-1 connection through rabbitmq-c (0.11) with one
 * channel, as the future broker/amqp.c uses it: connect with a timeout (TCP or
 * TLS), login, heartbeats, declare, QoS, consume, wait for a delivery, ack and
 * reject, publish with publisher confirms, and one teardown. The analog of
 * redis_link.h. Framing, TLS and heartbeats are rabbitmq-c's job (the TLS
 * socket is set up by amqp_tls.c); this file adds the error mapping, pid
 * ownership and the frame dispatch rabbitmq-c leaves to its caller.
 *
 * Facts the transport must know (RabbitMQ 3.10.8, rabbitmq-c 0.11):
 * - Heartbeats are only serviced inside library calls. The owner must call
 *   amqp_link_next() (or publish) at least every heartbeat/2 seconds, with a
 *   timeout, or the server drops the connection after two missed beats.
 * - Delivery tags belong to the channel. After a channel or connection error
 *   every unacked delivery is requeued by the server (redelivered=true); never
 *   ack an old tag on the new channel (406 "unknown delivery tag" closes it).
 *   amqp_link_ack/reject refuse a tag of an earlier channel with -ESTALE.
 * - A channel error (406 PRECONDITION_FAILED on a declare, 404 NOT_FOUND)
 *   closes the channel with its consumers; the link opens a new channel at
 *   once and reports E_PROTOCOL; the caller consumes again if it was.
 * - A consumer cancelled by the server (queue deleted, quorum leader moved) is
 *   reported by amqp_link_next() as -ECANCELED naming the queue; the link asks
 *   for these notifications (capability consumer_cancel_notify) at login.
 * - One connection object is not thread-safe and not fork-safe: a forked
 *   child must open its own; using the parent's is refused (E_CONN_LOST).
 */
#ifndef CELERIAC_AMQP_LINK_H
#define CELERIAC_AMQP_LINK_H

#include <amqp.h>

#include "util/amqp_tls.h"

struct amqp_url;
struct amqp_link_pending;

/* Bounds every synchronous method (declare, qos, consume, close): a server
 * that does not answer within it is treated as lost. */
#define AMQP_LINK_RPC_TIMEOUT_MS 30000

struct amqp_link_consumer {
    char *tag;                 /* server-generated consumer tag, owned */
    char *queue;               /* owned */
};

struct amqp_link {
    amqp_connection_state_t conn;  /* NULL while disconnected */
    amqp_channel_t channel;        /* the open channel; 0 when none */
    amqp_channel_t last_channel;   /* highest channel number used on conn */
    pid_t owner;                   /* pid that connected; any other pid is refused */
    bool tls;                      /* conn is TLS (a non-owner must not shut it down) */
    struct amqp_tls_check tls_check; /* the certificate check of the last handshake */
    int64_t connected_ms;          /* monotonic time of the connect, for the age in logs */
    const char *role;              /* "broker", "control", ...: names the link in messages */
    char where[300];               /* "host:port vhost 'v'", never credentials */
    int heartbeat;                 /* negotiated seconds, 0 = none */
    bool opening;                  /* inside amqp_link_open: a failure is the caller's
                                      to report (once per episode), not logged here */
    bool worked;                   /* a delivery, a quiet wait or a confirm went through
                                      since the open; a loss before that is also the
                                      caller's to report */
    bool confirming;               /* confirm.select done on this channel */
    uint64_t publish_seq;          /* sequence number of the last confirmed-mode publish */
    int reply_code;                /* the last server close code (403, 404, 406, 530...) or 0 */
    struct amqp_link_consumer *consumers; /* consumers on this channel */
    size_t nconsumers;
    char *cancelled;               /* queue whose consumer the server cancelled, not yet reported */
    struct amqp_link_pending *pending, *pending_tail; /* deliveries read while awaiting a confirm */
};

void amqp_link_init(struct amqp_link *l, const char *role);

/* Connects to u: TCP (or TLS with u's CA, client certificate and
 * verification), both bounded by u->connect_timeout_ms; login as u->user in
 * u->vhost asking for u->heartbeat seconds and u->frame_max; opens channel 1.
 * Returns 0; E_CONN_LOST when the server cannot be reached or dropped the
 * connection; E_CONFIG when the server refused the login (403
 * ACCESS_REFUSED: user or password; 530 NOT_ALLOWED: vhost missing or not
 * permitted), when a TLS file of u cannot be loaded, or when the server's
 * certificate fails verification (amqp_tls.h), which a retry will not fix.
 * e names host, port and vhost. The owner process only. */
int amqp_link_open(struct amqp_link *l, const struct amqp_url *u, struct err *e);
/* Closes the connection (NULL-safe, idempotent): connection.close with the
 * server when healthy and ours, then frees it; logs why with its age when
 * reason is not NULL. In a forked child it only releases its copy and never
 * writes to the socket. */
void amqp_link_close(struct amqp_link *l, const char *reason);
bool amqp_link_is_open(const struct amqp_link *l);
/* True when l is open, has a channel and belongs to this process; else fills
 * e with E_CONN_LOST (a forked child using its parent's link lands here). */
bool amqp_link_can_use(struct amqp_link *l, struct err *e);

/* THE mapping of a rabbitmq-c outcome of `what` into e:
 *   AMQP_RESPONSE_NORMAL                  -> 0
 *   library error (socket, heartbeat timeout, RPC timeout, bad frame)
 *                                         -> E_CONN_LOST, link closed
 *   server connection.close 403 / 530     -> E_CONFIG, link closed
 *   any other server connection.close     -> E_CONN_LOST, link closed
 *   server channel.close (404, 405, 406...) -> E_PROTOCOL, close-ok sent and
 *                                            a fresh channel opened (E_CONN_LOST
 *                                            if that fails); consumers gone
 * The message reads "<what> on <host:port vhost 'v'> failed: <code> <server
 * text>" and l->reply_code keeps the server's code. Returns the code. */
int amqp_link_check(struct amqp_link *l, amqp_rpc_reply_t r, const char *what, struct err *e);

/* basic.qos(prefetch_count, global=false): per consumer, applies to consumers
 * created after it (RabbitMQ 3.3+ semantics; works on quorum queues and 4.x). */
int amqp_link_qos(struct amqp_link *l, uint16_t prefetch, struct err *e);
/* basic.consume on queue; call once per queue. no_ack for pidbox queues. */
int amqp_link_consume(struct amqp_link *l, const char *queue, bool no_ack, struct err *e);

/* basic.cancel of every consumer of the link (the channel keeps its unacked
 * deliveries; deliveries already on the way are kept for amqp_link_next).
 * 0 or a code of amqp_link_check. */
int amqp_link_cancel_all(struct amqp_link *l, struct err *e);

/* Turns on TCP keepalive on the link's socket: probes after idle_s seconds
 * of silence, then every interval_s, giving up after count misses, so a
 * dead peer is noticed without AMQP heartbeats. 0 or -errno. */
int amqp_link_keepalive(struct amqp_link *l, int idle_s, int interval_s, int count);

/* A received message: rabbitmq-c's envelope (channel, delivery_tag,
 * redelivered, exchange, routing_key, message.properties, message.body).
 * Owned: release with amqp_link_delivery_release (amqp_destroy_envelope). */
struct amqp_link_delivery {
    amqp_envelope_t env;
};
void amqp_link_delivery_release(struct amqp_link_delivery *d);

/* Waits up to timeout_ms for the next delivery on any consumer of the link,
 * servicing heartbeats meanwhile. Returns 0 with *d filled (caller releases);
 * -EAGAIN when the time passed; -ECANCELED when the server cancelled a
 * consumer (e names the queue; the others keep running); E_PROTOCOL when the
 * server closed the channel (a new one is open; consume again); E_CONN_LOST;
 * E_CONFIG (connection.close 403/530, e.g. the user was deleted). */
int amqp_link_next(struct amqp_link *l, int timeout_ms, struct amqp_link_delivery *d,
                   struct err *e);

/* basic.ack / basic.reject of one delivery of channel ch. -ESTALE when ch
 * is not the open channel (the server already requeued it); E_CONN_LOST. */
int amqp_link_ack(struct amqp_link *l, amqp_channel_t ch, uint64_t tag, struct err *e);
int amqp_link_reject(struct amqp_link *l, amqp_channel_t ch, uint64_t tag, bool requeue,
                     struct err *e);

/* Publishes body with props to exchange/routing_key and waits up to
 * timeout_ms for the broker's confirm (confirm.select is sent once per
 * channel). Deliveries arriving meanwhile are kept for amqp_link_next.
 * Returns 0 once confirmed; -ENOENT when mandatory and no queue took it
 * (basic.return, 312 NO_ROUTE); E_REFUSED on basic.nack (the broker could
 * not take it: retry); -ETIMEDOUT when no confirm came in time (fate
 * unknown, the link stays open); E_PROTOCOL (channel closed: no such
 * exchange), E_CONN_LOST. Borrowed: everything. */
int amqp_link_publish(struct amqp_link *l, const char *exchange, const char *routing_key,
                      bool mandatory, const amqp_basic_properties_t *props, amqp_bytes_t body,
                      int timeout_ms, struct err *e);

/* Publishes body without waiting for the broker (events, which are
 * transient: a lost one is not worth a round trip each). Not mandatory; on a
 * confirming channel the confirm that comes later is skipped. 0 or
 * E_CONN_LOST. */
int amqp_link_publish_nowait(struct amqp_link *l, const char *exchange, const char *routing_key,
                             const amqp_basic_properties_t *props, amqp_bytes_t body,
                             struct err *e);

#endif /* CELERIAC_AMQP_LINK_H */
