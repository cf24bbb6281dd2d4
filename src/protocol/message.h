/* SPDX-License-Identifier: MIT
 * message.h: Celery protocol v2 task messages in kombu's Redis envelope:
 * decoding what arrives (hostile input) and encoding what we send. It knows
 * the wire format only; what to do with a bad message is the caller's call,
 * guided by the settlement each failure names.
 */
#ifndef CELERIAC_MESSAGE_H
#define CELERIAC_MESSAGE_H

#include <jansson.h>

#include "protocol/serializer.h"

struct buf;

/* Largest envelope accepted by default: bigger ones are rejected unread. */
#define MESSAGE_MAX_DEFAULT (16u * 1024 * 1024)

/* How the broker must settle a message that cannot run (spec §5.1). */
enum message_settle {
    SETTLE_NONE = 0,  /* decoded fine */
    SETTLE_DROP,      /* envelope unusable (not JSON, no tag): nothing to ack, log and drop */
    SETTLE_REJECT,    /* reject without requeue: unknown message, disallowed content, invalid shape */
    SETTLE_ACK,       /* acknowledge and drop: body failed to decode */
};

/* A decoded message. Every pointer is borrowed from `envelope` or `body`,
 * which the struct owns; message_release() frees both. */
struct message {
    json_t *envelope;          /* the list element as parsed */
    const char *raw_body;      /* the body as received when the envelope has none (AMQP);
                                  borrowed from the delivery, read by message_decode_task */
    size_t raw_body_len;
    json_t *body;              /* [args, kwargs, embed] after base64 + JSON decoding (a
                                  protocol 1 body is converted to this form) */
    json_t *proto1_headers;    /* protocol 1: the v2 headers its body stood for, or NULL */
    enum serializer serializer; /* the body's, from content-type (set by the envelope step);
                                  what it sends on is sent in the same */
    const char *delivery_tag;  /* properties.delivery_tag */
    const char *exchange;      /* properties.delivery_info.exchange */
    const char *routing_key;   /* properties.delivery_info.routing_key */
    const char *reply_to;      /* properties.reply_to (the client's rpc:// queue) or NULL */
    const char *correlation_id; /* properties.correlation_id or NULL */
    const char *task_name;     /* headers.task */
    const char *task_id;       /* headers.id; may be known even when decoding fails */
    const char *root_id;       /* headers.root_id or NULL */
    const char *parent_id;     /* headers.parent_id or NULL */
    const char *group;         /* headers.group or NULL */
    int group_index;           /* headers.group_index, -1 when absent or null */
    const char *argsrepr;      /* headers.argsrepr (the sender's repr of args) or NULL */
    const char *kwargsrepr;    /* headers.kwargsrepr or NULL */
    json_t *args;              /* array, borrowed from body */
    json_t *kwargs;            /* object, borrowed from body */
    json_t *embed;             /* object or NULL (treated as all-null) */
    int retries;               /* headers.retries, 0 when absent */
    int priority;              /* properties.priority clamped to 0..9 */
    double eta;                /* Unix seconds, 0 when absent */
    double expires;            /* Unix seconds, 0 when absent */
    double time_limit;         /* hard limit in seconds from headers.timelimit[0], 0 = none */
    double soft_time_limit;    /* soft limit from headers.timelimit[1], 0 = none */
    bool ignore_result;        /* headers.ignore_result */
    bool repaired;             /* delivery_tag or delivery_info was missing and was filled in */
    bool redelivered;          /* restored by kombu or celeriac: it may have run already */
    bool recorded;             /* set by the consumer: the delivery is in kombu's unacked
                                  hash, so it is settled by an ack or a restore */
};

void message_init(struct message *m);
void message_release(struct message *m);

/* Step 1: parses the envelope (data, len) popped from `queue`, enough to
 * record it as unacked: delivery tag, exchange and routing key. A missing tag
 * or delivery_info is repaired (fresh UUID4 tag, exchange "", routing key =
 * queue) so Python restorers never trip on it. Returns 0, or a negative code
 * with *settle = SETTLE_DROP and the reason in e. */
int message_decode_envelope(struct message *m, const char *data, size_t len, const char *queue,
                            enum message_settle *settle, struct err *e);
/* Step 1 for an envelope a transport built as JSON itself from what it
 * received (AMQP: properties, headers table and body), so that it is not
 * printed and parsed again: takes the reference to envelope (released with
 * m, even on failure) and checks and repairs it as above. */
int message_adopt_envelope(struct message *m, json_t *envelope, const char *queue,
                           enum message_settle *settle, struct err *e);

/* Step 2: validates headers and decodes the body into args, kwargs, embed.
 * Returns 0, or a negative code with the reason in e and *settle saying how to
 * settle; m->task_id is set whenever the headers carried one. */
int message_decode_task(struct message *m, enum message_settle *settle, struct err *e);

/* The task id of an envelope too large to decode, read without parsing it:
 * kombu writes properties (with correlation_id, the task id for Celery's
 * messages) after the body, so only the last few kilobytes are looked at.
 * Copies a plausible id (letters, digits, '-', at most out_size - 1 bytes)
 * into out and returns true, or returns false. */
bool message_peek_id(const char *raw, size_t len, char *out, size_t out_size);

/* Appends a kombu message envelope (JSON text) around body[0..len), as
 * kombu's virtual transports (Redis, SQL) store one: the body base64,
 * transient (delivery_mode 1), content_type with its encoding (NULL:
 * application/json, utf-8), headers (borrowed; NULL: {}), delivery_info,
 * and the correlation id when not NULL (an rpc:// reply). */
void message_envelope_encode(struct buf *out, const char *body, size_t len,
                             const char *content_type, json_t *headers, const char *exchange,
                             const char *routing_key, const char *correlation_id);

/* Marks an envelope delivered before (headers and delivery_info), as a
 * restore does. */
void message_envelope_mark_redelivered(json_t *env);

/* How often a late-ack message was requeued because its child died running
 * it (a count celeriac keeps in the envelope's properties: kombu and Celery
 * ignore properties they do not know, and every restore keeps them); a
 * value that is not a small count reads as 0. */
int message_envelope_lost_count(const json_t *env);

/* Sets that count to losses and marks the envelope redelivered. */
void message_envelope_mark_lost(json_t *env, int losses);

/* The envelope re-serialised compactly (for the unacked hash entry). */
char *message_envelope_json(const struct message *m);

/* Celery's exception dict {"exc_type", "exc_message": [message], "exc_module"}.
 * exc_module NULL picks "builtins" for Python's built-in exception names and
 * "celeriac" otherwise. Returns a new reference. */
json_t *message_exception(const char *exc_type, const char *exc_module, const char *message);

/* A JSON string of s; bytes that are not valid UTF-8 become '?' (task code
 * and libpq messages are not guaranteed UTF-8). Returns a new reference. */
json_t *message_string_lossy(const char *s);

/* A task message as a Python client sends it (spec §7.1, §10.1). */
struct task_send {
    const char *name;          /* task name */
    const char *id;            /* task id; NULL = a fresh UUID4 */
    const char *queue;         /* routing key, "celery" when NULL */
    const char *exchange;      /* NULL or "": the default exchange, queue as the routing key */
    const char *reply_to;      /* properties.reply_to (the client's rpc:// queue); NULL = "" */
    json_t *args;              /* borrowed; NULL = [] */
    json_t *kwargs;            /* borrowed; NULL = {} */
    json_t *embed;             /* borrowed; NULL = all four keys null */
    double eta;                /* Unix seconds or 0 */
    double expires;            /* Unix seconds or 0; also properties.expiration (ms left) */
    int retries;
    int priority;
    const char *root_id;       /* NULL = id */
    const char *parent_id;     /* NULL = none */
    const char *group;         /* NULL = none */
    int group_index;           /* position in a chord header */
    bool has_group_index;      /* false: group_index is sent as null */
    double time_limit;         /* 0 = none */
    double soft_time_limit;    /* 0 = none */
    bool ignore_result;
    enum serializer serializer; /* of the body: JSON (zero) or msgpack */
};

/* Appends the envelope JSON for t to out and copies the task id it used into
 * id_out (37 bytes) when not NULL. The body is encoded with t->serializer and
 * base64-encoded, with kombu's content-type and content-encoding for it. */
void message_encode_task(struct buf *out, const struct task_send *t, char *id_out);

/* Which priority list of `queue` a message with priority p goes to / comes
 * from: "queue" for 0..2, "queue\x06\x163" for 3..5, etc. Appends to out. */
/* Appends the traceback text Celery stores with a FAILURE, for an exception
 * dict as message_exception makes: Python's header, where it was raised
 * (task_name and task_id when known, may be NULL), and the last line Python
 * prints ("ValueError: boom", "billiard.exceptions.WorkerLostError: ..."). */
void message_traceback(struct buf *out, const json_t *exc, const char *task_name,
                       const char *task_id);

void message_priority_list(struct buf *out, const char *queue, int priority);

#endif /* CELERIAC_MESSAGE_H */
