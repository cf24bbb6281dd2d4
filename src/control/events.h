/* SPDX-License-Identifier: MIT
 * control/events.h: Celery monitoring events (worker-online/heartbeat/offline,
 * task-received/started/succeeded/failed/revoked/retried) published to
 * Celery's `celeryev` exchange through the broker's bus (broker/bus.h), so
 * `celery events` and Flower see celeriac workers. Either process kind;
 * never blocks on a reply.
 */
#ifndef CELERIAC_CONTROL_EVENTS_H
#define CELERIAC_CONTROL_EVENTS_H

#include <jansson.h>

struct bus;
struct message;
struct scoreboard;

struct event_sender {
    struct bus *bus;             /* borrowed: the process's bus; NULL: no events */
    struct scoreboard *sb;       /* for the shared Lamport clock and the on/off flag */
    const char *hostname;        /* node name */
    pid_t master_pid;            /* events carry the main process's pid, as Celery's */
};

/* Publishes one event of `type` ("task-succeeded", ...) with the common
 * fields added to `fields` (a JSON object; the reference is stolen). Task
 * events are dropped while task events are disabled. Sent without waiting
 * for the reply; nothing without a bus. Returns 0 or E_CONN_LOST. */
int event_send(struct event_sender *s, const char *type, json_t *fields);

/* True when task events are on (-E or enable_events) and can be sent. */
bool events_task_enabled(const struct event_sender *s);

/* A task event of `type` about m (its uuid added to fields, whose reference
 * is stolen); nothing while task events are off. */
void events_task(struct event_sender *s, const char *type, const struct message *m,
                 json_t *fields);

/* task-received, carrying the request as Celery's does (args as text). */
void events_task_received(struct event_sender *s, const struct message *m);

#endif /* CELERIAC_CONTROL_EVENTS_H */
