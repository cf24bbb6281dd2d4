/* SPDX-License-Identifier: MIT
 * worker/canvas.h: what a worker does after a task so Celery's canvas keeps
 * going: retries (Task.retry), link callbacks and errbacks, the next step of
 * a chain, and the chord join on the Redis result backend (spec §5.6, §5.10,
 * §6.6). Signatures come from the message and are hostile input. Every
 * message sent goes in the serializer of the message that led to it; chord
 * parts are written as the backend's --result-serializer says and read in
 * either. Child only.
 */
#ifndef CELERIAC_WORKER_CANVAS_H
#define CELERIAC_WORKER_CANVAS_H

#include <jansson.h>

struct backend;
struct broker;
struct message;

struct canvas {
    struct broker *broker;           /* where new task messages go */
    struct backend *backend;         /* chord counters; FAILURE of refused signatures */
};

/* Sends m again for a retry: same id, args and embed, retries + 1, due at
 * eta, parent_id = its own id (as Celery does). Returns 0 or a negative code. */
int canvas_retry(const struct canvas *cv, const struct message *m, double eta, struct err *e);

/* After m succeeded with result: sends each link callback with the result
 * prepended to its args (unless immutable; several go out as one group, as
 * Celery's worker sends them) and the next chain step, and appends their
 * result tuples to children (a JSON array; NULL: not wanted), as Celery
 * records them in the parent's result. */
int canvas_on_success(const struct canvas *cv, const struct message *m, json_t *result,
                      json_t *children, struct err *e);

/* After m failed: sends each link_error errback with m's id prepended. */
int canvas_on_failure(const struct canvas *cv, const struct message *m, struct err *e);

/* m is a chord header member (embed.chord set, headers.group set) whose own
 * result (state, result) is stored: records it in the chord's join set and,
 * when it is the last member, sends the chord body with every result, or
 * marks the body FAILURE when a member failed. Returns 0 or a negative code. */
int canvas_chord_part(const struct canvas *cv, const struct message *m, const char *state,
                      json_t *result, struct err *e);

#endif /* CELERIAC_WORKER_CANVAS_H */
