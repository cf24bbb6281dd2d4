/* SPDX-License-Identifier: MIT
 * control/pidbox.h: Celery remote control ("pidbox") requests: matching a
 * request to this node, running the command against the scoreboard, and the
 * reply a `celery inspect` / `celery control` client collects. Runs in the
 * control process only.
 */
#ifndef CELERIAC_CONTROL_PIDBOX_H
#define CELERIAC_CONTROL_PIDBOX_H

#include <jansson.h>

#include "control/events.h"

struct worker_config;
struct scoreboard;
struct bus;

struct pidbox {
    const struct worker_config *cfg;   /* borrowed */
    struct scoreboard *sb;             /* borrowed */
    struct bus *bus;                   /* borrowed: requests and replies */
    struct event_sender *events;       /* for the heartbeat command */
    pid_t master_pid;
    bool shutdown_requested;           /* `control shutdown` arrived */
    bool heartbeat_requested;          /* `heartbeat` arrived: send one now */
    struct terminating {               /* revoke --terminate sent, KILL if still running */
        pid_t pid;
        char task_id[40];
        int64_t kill_at_ms;            /* monotonic */
    } terminating[16];
    size_t n_terminating;
};

/* revoke --terminate gives a task this long to die of the signal asked for
 * before its process is killed. */
#define TERMINATE_GRACE_MS 5000

/* Kills the processes whose terminate grace period ran out while they still
 * run the task (call it from the control loop, about once a second). */
void pidbox_escalate(struct pidbox *p);

/* Handles one message published on the pidbox channel (hostile input:
 * anything malformed is logged and ignored). Returns 0, or E_CONN_LOST when
 * the reply could not be sent. */
int pidbox_handle(struct pidbox *p, const char *payload, size_t len);

/* The result of `method` with `args` for this node: a new JSON value, or NULL
 * for "no reply" (shutdown). Exposed for tests. */
json_t *pidbox_dispatch(struct pidbox *p, const char *method, json_t *args);

#endif /* CELERIAC_CONTROL_PIDBOX_H */
