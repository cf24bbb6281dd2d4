/* SPDX-License-Identifier: MIT
 * broker/redis.h: consuming Celery task messages from Redis with kombu's key
 * layout: the four priority lists per queue, the `unacked` hash and the
 * `unacked_index` sorted set, so Python and celeriac workers share queues and
 * restore each other's messages. Child processes only.
 */
#ifndef CELERIAC_BROKER_REDIS_H
#define CELERIAC_BROKER_REDIS_H

#include "broker/broker.h"
#include "util/buf.h"
#include "util/redis_link.h"
#include "util/url.h"


struct broker_redis {
    struct redis_link link;
    const struct broker_config *cfg;   /* borrowed; outlives the broker */
    const char **keys;          /* unacked, unacked_index, then every list in pop order */
    size_t *key_lens;
    size_t n_keys;
    char unconfirmed_ack[64];   /* tag acked by broker_redis_ack_send, reply not yet read */
    char *hand;                 /* this child's hand key, or NULL (record_unacked) */
    bool hand_release;          /* the hand holds a settled message: empty it with the
                                   next pop */
    uint64_t hand_settled_hash; /* ... whose bytes hash to this */
    bool hand_unknown;          /* reconnected: a lost pop may have filled the hand */
    bool record_next;           /* with a hand: pop the next message with kombu's record
                                   (the last one had to be recorded: a late-ack stream) */
    bool waited;                /* the last fetch found every list empty and waited */
};

void broker_redis_init(struct broker_redis *b, const struct broker_config *cfg);
/* Consumes queues[0..n) from the next fetch on (n may be 0: nothing is
 * popped). No I/O. */
void broker_redis_set_queues(struct broker_redis *b, char *const *queues, size_t n);
/* Frees the key table and closes the connection (logging reason if not NULL). */
void broker_redis_release(struct broker_redis *b, const char *reason);
/* Connects (no retry: the caller backs off). Returns 0 or E_CONN_LOST. */
int broker_redis_open(struct broker_redis *b, struct err *e);

/* The hand: for a task that acks early, kombu's unacked record would live
 * only from the pop to the task's start, and writing, indexing and deleting
 * it is most of Redis's work per task. Instead each child moves the message
 * it pops (LMOVE, atomic and as cheap as BRPOP) into its own hand, a list
 * "celeriac.hand.<node>.<master pid>.<slot>" that holds at most that one
 * message (the pid keeps two workers of one name apart), and
 * empties it with the next pop (the DEL rides in the same write). The child
 * tells the hand's settled message from an unstarted one by a hash of its
 * bytes, which it keeps in shared memory: a later child of the slot (or the
 * salvage process) puts back a message it finds there unless it hashes to
 * the settled one. The hands of a worker that died whole are taken over by
 * the next worker of the same name on the same host (hand_adopt_orphans).
 * A message that turns out to ack late is recorded as kombu does before its
 * task starts (broker_redis_record, which empties the hand in the same
 * transaction); after such a message the next pop records at once
 * (record_next), and the hand is used again after one that acked early.
 * Without --acks-late every child has a hand. */
void broker_redis_set_hand(struct broker_redis *b, const char *node, pid_t owner, int slot);
/* Calls found(key, arg) for every hand of slot `slot` of any worker named
 * node (any owner pid). 0, or E_CONN_LOST / E_PROTOCOL. */
int broker_redis_scan_hands(struct broker_redis *b, const char *node, int slot,
                            void (*found)(const char *key, void *arg), void *arg,
                            struct err *e);
/* The hash that identifies a message in the hand (never 0). */
uint64_t broker_redis_hand_hash(const char *raw, size_t len);
/* The message in the hand (hashing to hash) started or was settled: the
 * next pop empties the hand. No I/O. */
void broker_redis_hand_settled(struct broker_redis *b, uint64_t hash);

/* The visibility rule for hands: a worker SIGKILLed whole and never started
 * again under its name (a new pod, a new host) would leave its hands for
 * ever: kombu's sweep does not see them, and a reused master pid hides them
 * from hand_adopt_orphans. So each worker advertises itself with a key per
 * master, "celeriac.alive.<node>.<master pid>", SET with an expiry and
 * refreshed (broker_redis_advertise_alive), and the sweep returns the hands
 * whose owner's key is missing once they have sat untouched (OBJECT
 * IDLETIME) longer than the visibility timeout. A live worker's hand is never
 * touched. */
#define BROKER_ALIVE_TTL_S 20        /* the control process refreshes every 5 s */
/* out gets the alive key of worker node's master. */
void broker_redis_alive_key(struct buf *out, const char *node, pid_t master);
/* SET the alive key of node's master to expire in ttl_s seconds, on any link
 * (children and the control process). 0 or E_CONN_LOST / E_PROTOCOL. */
int broker_redis_advertise_alive(struct redis_link *l, const char *node, pid_t master,
                                 int ttl_s, struct err *e);
/* Under the fleet-wide "celeriac.hands_mutex" (taken for period_ms and left
 * to expire, so one process in the fleet sweeps per period), SCANs every
 * hand and returns to its queue, marked redelivered, the message of each
 * hand whose owner's alive key is missing and that is idle longer than
 * visibility_timeout seconds; the check of the alive key and the return are
 * one atomic step. Also returns a message that had started: its owner took
 * the knowledge of that with it. Returns the number returned (0 when another
 * process holds the mutex), or E_CONN_LOST. Child processes. */
int broker_redis_sweep_hands(struct broker_redis *b, double visibility_timeout,
                             int64_t period_ms, struct err *e);

/* Pops the next message, highest priority bucket first, waiting up to
 * timeout_s seconds when every list is empty. With cfg->record_unacked the
 * pop also records it as unacked in the same atomic step (d->recorded_tag);
 * otherwise it pops into the hand. Returns 0 with d->reply NULL when nothing
 * arrived (d->raw NULL), 0 with a delivery, or E_CONN_LOST. Release d with broker_redis_delivery_release(). */
int broker_redis_fetch(struct broker_redis *b, double timeout_s, struct delivery *d,
                       struct err *e);
void broker_redis_delivery_release(struct delivery *d);

/* Records a delivery in the unacked hash and index (kombu's QoS.append), with
 * envelope_json as the stored payload (the repaired envelope if it was fixed),
 * and empties the hand in the same transaction (the record takes over).
 * Returns 0 or E_CONN_LOST. */
int broker_redis_record(struct broker_redis *b, const char *tag, const char *envelope_json,
                        const char *exchange, const char *routing_key, struct err *e);
/* Acknowledges (or rejects without requeue: the same on Redis): removes tag
 * from the unacked hash and index. Returns 0, E_CONN_LOST, or E_REFUSED /
 * E_PROTOCOL from an error reply. */
int broker_redis_ack(struct broker_redis *b, const char *tag, struct err *e);
/* The same ack, sent without waiting for the reply (checked before the next
 * reply is read). If the connection dies before it is confirmed, the ack is
 * sent again right after the next broker_redis_open. Returns 0 or E_CONN_LOST
 * (then ack synchronously after reconnecting). */
int broker_redis_ack_send(struct broker_redis *b, const char *tag, struct err *e);
/* Makes sure the last ack sent without waiting took effect: reads its
 * replies, or sends it again if Redis refused it before. 0, E_CONN_LOST or
 * E_REFUSED (the ack stays due). */
int broker_redis_confirm(struct broker_redis *b, struct err *e);

/* Publishes a task envelope to queue as a Python client does: the binding
 * member (once per queue is enough, but it is idempotent) and LPUSH to the
 * priority's list. Confirmed before it returns. 0 or E_CONN_LOST. */
int broker_redis_publish(struct broker_redis *b, const char *queue, int priority,
                         const char *envelope, size_t len, struct err *e);

/* Moves the unacked scores of the n tags to now where they are still held
 * (ZADD XX): messages held for a later ETA are not restored by the visibility
 * sweep meanwhile. 0, E_CONN_LOST, or the code of an error reply. */
int broker_redis_touch(struct broker_redis *b, const char **tags, size_t n, struct err *e);

/* Puts the message held under tag back on its queue, as kombu's
 * restore_by_tag: marks it redelivered, pushes it to the consumer end (or to
 * the far end when to_back, as a reject with requeue does) of the list its
 * routing and priority name, and removes it from unacked, all in one
 * compare-and-swap step. Returns BROKER_RESTORED, BROKER_NOT_HELD (already
 * acked or restored by someone else: not an error), or E_CONN_LOST / E_PROTOCOL. */
int broker_redis_restore(struct broker_redis *b, const char *tag, bool to_back, struct err *e);

/* The requeue of a late-ack message whose child died running it
 * (reject_on_worker_lost): as broker_redis_restore to the far end, and
 * counting the loss in the message itself (properties.celeriac_worker_lost),
 * so a task that kills every child cannot circulate for ever. When the
 * message has already been requeued max_requeues times it is not requeued:
 * BROKER_EXHAUSTED, with the entry left held for the caller to settle (store
 * a WorkerLostError, then ack). *losses gets the deaths counted so far,
 * this one included (0 when the tag was not held). Returns BROKER_RESTORED,
 * BROKER_NOT_HELD, BROKER_EXHAUSTED, or E_CONN_LOST / E_PROTOCOL. */
int broker_redis_requeue_lost(struct broker_redis *b, const char *tag, int max_requeues,
                              int *losses, struct err *e);

/* Looks in the hand: a message hashing to settled_hash (0: none) is emptied
 * out; any other is put back at the consumer end of its queue's list, marked
 * redelivered, in one compare-and-swap step with the emptying (a hand another
 * process emptied meanwhile is left: 0). Returns 1 when a message
 * went back, 0 when none did, or E_CONN_LOST / E_PROTOCOL; list (if not NULL,
 * size 264) gets the list's name. */
int broker_redis_hand_return(struct broker_redis *b, uint64_t settled_hash, char *list,
                             struct err *e);
/* Empties the hand now if it holds a settled message (a child leaving).
 * 0 or E_CONN_LOST. */
int broker_redis_hand_clear(struct broker_redis *b, struct err *e);

/* kombu's visibility sweep: under the shared unacked_mutex, restores every
 * delivery recorded more than visibility_timeout seconds ago, whoever holds
 * it. Returns the number restored (0 when another process holds the mutex),
 * or a negative code. */
int broker_redis_sweep(struct broker_redis *b, double visibility_timeout, struct err *e);

/* The Redis transport behind broker.h (redis_transport.c): sets b up over
 * cfg for owner (nothing opened). 0. */
int broker_redis_transport_init(struct broker *b, const struct broker_config *cfg,
                                const struct broker_owner *owner);

#endif /* CELERIAC_BROKER_REDIS_H */
