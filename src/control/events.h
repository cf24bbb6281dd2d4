/* SPDX-License-Identifier: MIT
 * control/events.h: Celery monitoring events (worker-online/heartbeat/offline,
 * task-received/started/succeeded/failed/revoked/retried) published on Redis
 * pub/sub as kombu's fanout exchange `celeryev` does, so `celery events` and
 * Flower see celeriac workers. Either process kind; never blocks on a reply.
 */
#ifndef CELERIAC_CONTROL_EVENTS_H
#define CELERIAC_CONTROL_EVENTS_H

#include <jansson.h>

struct buf;
struct message;
struct redis_link;
struct scoreboard;

struct event_sender {
    struct redis_link *link;     /* borrowed: the process's broker connection; NULL:
                                    no events on this broker (AMQP for now) */
    struct scoreboard *sb;       /* for the shared Lamport clock and the on/off flag */
    const char *hostname;        /* node name */
    int db;                      /* broker database number: channel prefix "/<db>." */
    pid_t master_pid;            /* events carry the main process's pid, as Celery's */
};

/* Publishes one event of `type` ("task-succeeded", ...) with the common
 * fields added to `fields` (a JSON object; the reference is stolen). Task
 * events are dropped while task events are disabled. Sent without waiting
 * for the reply; nothing without a link. Returns 0 or E_CONN_LOST. */
int event_send(struct event_sender *s, const char *type, json_t *fields);

/* True when task events are on (-E or enable_events) and can be sent. */
bool events_task_enabled(const struct event_sender *s);

/* A task event of `type` about m (its uuid added to fields, whose reference
 * is stolen); nothing while task events are off. */
void events_task(struct event_sender *s, const char *type, const struct message *m,
                 json_t *fields);

/* task-received, carrying the request as Celery's does (args as text). */
void events_task_received(struct event_sender *s, const struct message *m);

/* Appends a kombu envelope carrying body_json to out: JSON content,
 * base64 body, a fresh delivery tag, the given exchange and routing key. */
void envelope_encode(struct buf *out, const char *body_json, json_t *headers, const char *exchange,
                     const char *routing_key, int delivery_mode);

#endif /* CELERIAC_CONTROL_EVENTS_H */
