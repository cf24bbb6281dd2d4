/* SPDX-License-Identifier: MIT
 * amqp_msg.h: AMQP messages as JSON. A received basic.deliver (properties,
 * body, delivery info) becomes the kombu-style envelope that
 * protocol/message.h decodes, and an envelope celeriac would send becomes
 * basic.publish properties and a body; AMQP field tables map to JSON objects
 * and back. No I/O here: amqp_link.c moves the frames.
 *
 * Header types (py-amqp's encoding, which Celery's headers use): long string
 * 'S' <-> string, void 'V' <-> null, 't' <-> bool, 'I' (int32) and 'l'
 * (int64) <-> integer, 'd' <-> real, 'F' <-> object, 'A' <-> array. Received
 * in addition: every other integer kind; 'L' is read as signed 64-bit,
 * because py-amqp writes signed values under that code; 'f' and 'D'
 * (decimal) as reals; 'T' (timestamp) as integer seconds; 'x' (bytes) as a
 * string, with bytes that are not UTF-8 replaced by '?'.
 */
#ifndef CELERIAC_AMQP_MSG_H
#define CELERIAC_AMQP_MSG_H

#include <amqp.h>
#include <jansson.h>

struct buf;

/* Nesting deeper than this is refused both ways (hostile input). */
#define AMQP_MSG_MAX_DEPTH 32

/* A new JSON object for table t; NULL with E_PROTOCOL in e when a value
 * cannot be represented (unknown kind, nesting too deep). Caller
 * json_decref()s it. */
json_t *amqp_msg_table_to_json(const amqp_table_t *t, struct err *e);

/* Fills *out from a JSON object, allocating from pool (released with the
 * pool: empty_amqp_pool / amqp_msg_outgoing_release). Strings become 'S',
 * integers 'I' when they fit 32 bits and 'l' otherwise, reals 'd'. Returns 0
 * or -EINVAL (not an object, nesting too deep). */
int amqp_msg_table_from_json(amqp_table_t *out, const json_t *obj, amqp_pool_t *pool,
                             struct err *e);

/* What amqp_msg_to_envelope needs of one delivery: amqp_envelope_t as
 * rabbitmq-c's amqp_consume_message fills it. Appends the envelope JSON
 *   {"body": base64(body), "content-type", "content-encoding", "headers",
 *    "properties": {"correlation_id", "reply_to", "delivery_mode",
 *    "priority", "expiration", "body_encoding": "base64",
 *    "delivery_tag": "<AMQP tag>",
 *    "delivery_info": {"exchange", "routing_key", "redelivered"}}}
 * to out. Absent AMQP properties are absent (or null) keys; the priority is
 * the AMQP value (RabbitMQ: higher is served first). Returns 0 or E_PROTOCOL
 * (headers not representable), leaving out unchanged on failure. */
int amqp_msg_to_envelope(struct buf *out, const amqp_envelope_t *env, struct err *e);
/* The same envelope as a new JSON object (the caller's reference), without
 * "body" and properties.body_encoding, for a consumer that decodes it at
 * once and keeps the body's bytes beside it (struct delivery.body): no base64
 * round trip. NULL with E_PROTOCOL in e as above. */
json_t *amqp_msg_envelope_bodiless(const amqp_envelope_t *env, struct err *e);

/* A message ready for amqp_basic_publish. Every pointer is owned by the
 * struct (body malloc()ed, the rest in pool). */
struct amqp_msg_outgoing {
    amqp_basic_properties_t props;
    amqp_bytes_t body;          /* decoded bytes of the envelope's body */
    char *exchange;             /* properties.delivery_info.exchange, "" by default */
    char *routing_key;          /* properties.delivery_info.routing_key, "" by default */
    amqp_pool_t pool;
};

/* Converts an envelope (the shape above, or message_encode_task's) into out:
 * content_type and content_encoding from the top level (default
 * application/json, utf-8), headers as a table, correlation_id, reply_to and
 * priority from properties when present, delivery_mode from properties
 * (default 2, persistent, like Celery's task messages), the body decoded per
 * properties.body_encoding ("base64", or none: the string's bytes). Returns 0
 * or -EINVAL with the reason in e; out must be released either way. */
int amqp_msg_from_envelope(struct amqp_msg_outgoing *out, const json_t *envelope, struct err *e);
void amqp_msg_outgoing_release(struct amqp_msg_outgoing *out);

#endif /* CELERIAC_AMQP_MSG_H */
