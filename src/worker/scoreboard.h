/* SPDX-License-Identifier: MIT
 * worker/scoreboard.h: one shared-memory slot per child, made by the master
 * before the first fork. A child writes only its own slot; the master reads
 * them as hints (its pid table is the truth) for status and time limits.
 */
#ifndef CELERIAC_WORKER_SCOREBOARD_H
#define CELERIAC_WORKER_SCOREBOARD_H

#include <stdatomic.h>

enum child_state {
    CHILD_EMPTY = 0,    /* no process in this slot */
    CHILD_STARTING,     /* forked, setting up */
    CHILD_CONNECTING,   /* opening or re-opening a connection */
    CHILD_IDLE,         /* waiting for a message */
    CHILD_BUSY,         /* running a task */
    CHILD_STOPPING,     /* finishing and closing */
};

enum db_state {
    DBS_NONE = 0,       /* no database configured */
    DBS_DOWN,           /* not connected */
    DBS_UP,             /* connected */
};

/* Why the previous process in a slot left a task unfinished. */
enum lost_reason {
    LOST_NONE = 0,
    LOST_CRASH,         /* died by a signal or an unexpected exit mid-task */
    LOST_TIME_LIMIT,    /* killed for exceeding its hard time limit */
};

struct slot {
    _Atomic int pid;
    _Atomic int state;              /* enum child_state */
    _Atomic int db_state;           /* enum db_state */
    _Atomic unsigned reconnects;    /* database re-opens after a loss */
    _Atomic int64_t db_opened_ms;   /* monotonic time of the current connection's open */
    _Atomic int64_t task_started_ms;/* monotonic; 0 when idle */
    _Atomic uint64_t tasks_done;
    _Atomic int64_t time_limit_ms;  /* hard limit of the running task; 0 = none */
    _Atomic int acks_late;          /* the running task acks after its result */
    _Atomic int hard_limit_hit;     /* set by the child's timer handler */
    char task_id[40];               /* hint: may be torn while being written */
    char task_name[96];
    char delivery_tag[40];

    /* Written by the master before forking a replacement, read by the new
     * child: the task its predecessor died running, to be settled. */
    _Atomic int lost_reason;        /* enum lost_reason */
    _Atomic int lost_acks_late;
    _Atomic int lost_signal;        /* signal that ended it, 0 if it exited */
    double lost_time_limit;         /* seconds, for TimeLimitExceeded */
    char lost_task_id[40];
    char lost_task_name[96];
    char lost_tag[40];
};

struct scoreboard {
    struct slot *slots;   /* MAP_SHARED, n entries */
    size_t n;
};

/* Maps n zeroed slots shared with future children. Master only, before fork.
 * Returns 0 or -errno. */
int scoreboard_create(struct scoreboard *sb, size_t n);
void scoreboard_destroy(struct scoreboard *sb);
const char *child_state_name(enum child_state s);

#endif /* CELERIAC_WORKER_SCOREBOARD_H */
