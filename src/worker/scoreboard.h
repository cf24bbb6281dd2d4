/* SPDX-License-Identifier: MIT
 * worker/scoreboard.h: one shared-memory slot per child, made by the master
 * before the first fork. A child writes only its own slot; the master reads
 * them as hints (its pid table is the truth) for status and time limits.
 */
#ifndef CELERIAC_WORKER_SCOREBOARD_H
#define CELERIAC_WORKER_SCOREBOARD_H

#include <stdatomic.h>
#include <sys/stat.h>

struct buf;

#include "worker/tally.h"

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
    LOST_REVOKED,       /* killed by `revoke --terminate` */
    LOST_UNSTARTED,     /* died holding a popped message it had not started */
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
    _Atomic int revoke_terminate;   /* set by the control process before it kills us */
    _Atomic int scheduled;          /* ETA messages the child holds */
    _Atomic int reserved;           /* the described task is received, not yet started */
    _Atomic int outage_mode;        /* set by the master once the worker has served: a
                                       database that is down is an outage to wait out,
                                       not a reason to give up ("cannot serve") */
    _Atomic int probe;              /* set by the master: this child retries a slot whose
                                       last child could not serve; it tries its database
                                       once and gives up quietly (the master reports) */
    double time_start;              /* Unix time the running task started */
    char task_id[40];               /* hint: may be torn while being written */
    char task_name[96];
    char delivery_tag[40];
    char popped_tag[40];            /* a message popped and not yet settled or started */
    _Atomic uint64_t hand_settled;  /* hash of the message in the hand that started or
                                       was settled (0: none), see broker/redis.h */
    char argsrepr[200];             /* running task's args as JSON, truncated */
    char kwargsrepr[120];
    char argsrepr_text[200];        /* the sender's repr (Celery's argsrepr), for safe=True */
    char kwargsrepr_text[120];
    char routing_key[64];
    /* An early-ack task whose result was sent without waiting for the
     * backend's reply, until that reply is read (at most one at a time: a
     * store first confirms the one before). If the child dies meanwhile and
     * the backend never got it (it restarted), the result is lost. */
    char unconfirmed_task_id[40];
    char unconfirmed_task_name[96];

    /* Written by the master before forking a replacement, read by the new
     * child: the task its predecessor died running, to be settled. */
    _Atomic int lost_reason;        /* enum lost_reason */
    _Atomic int lost_acks_late;
    _Atomic int lost_signal;        /* signal that ended it, 0 if it exited */
    double lost_time_limit;         /* seconds, for TimeLimitExceeded */
    char lost_task_id[40];
    char lost_task_name[96];
    char lost_tag[40];
    _Atomic uint64_t lost_hand_settled; /* the dead child's hand_settled */
    char lost_unconfirmed_task_id[40];  /* the dead child's unconfirmed_task_* */
    char lost_unconfirmed_task_name[96];
    _Atomic int hand_check;         /* no replacement comes: the salvage process must
                                       settle lost_*, held tags and this slot's hand */
};

/* ETA messages a child holds while running others: any number (Celery
 * raises its prefetch for each one it holds); the first HELD_BOARD_MAX of
 * them are also described in shared memory, for `inspect scheduled` and for
 * the child's replacement. */
#define HELD_BOARD_MAX 1024

/* One held ETA message as the control process reports it and a replacement
 * child restores it. Written by its child only; a hint while written. */
struct held_entry {
    char tag[40];                   /* delivery tag, recorded in kombu's unacked hash */
    char task_id[40];
    char task_name[96];
    char routing_key[64];
    char argsrepr[96];              /* args as JSON, truncated */
    char kwargsrepr[64];
    double eta;                     /* Unix time it is due */
    int priority;                   /* the message's priority */
    bool redelivered;
};

/* The held ETA messages of one child, kept apart from the slots so that the
 * master's reset of a slot for a new child leaves them: the new child puts
 * them back at once instead of leaving them to the visibility sweep. Those
 * past HELD_BOARD_MAX are left to the sweep (they are in unacked). */
struct held_board {
    _Atomic int n;                  /* entries in use, at most HELD_BOARD_MAX */
    struct held_entry e[HELD_BOARD_MAX];
};

/* Run-time settings of one registered task (by its index in the library),
 * changed by remote control and read by every child. */
struct task_tuning {
    _Atomic int64_t rate_interval_ns;  /* 0 = no rate limit; else ns between starts */
    _Atomic int64_t rate_next_ns;      /* earliest monotonic start of the next run */
    _Atomic int64_t soft_limit_ms;     /* 0 = the worker's default */
    _Atomic int64_t hard_limit_ms;
    _Atomic uint64_t total;            /* runs accepted since start (inspect stats) */
    char rate_text[24];                /* the rate as given, for inspect registered */
};

/* Revoked ids are remembered as Celery's worker remembers them: the last
 * 50,000, each for three hours. */
#define REVOKED_MAX 50000
#define REVOKED_EXPIRES_S 10800.0
#define REVOKED_INDEX_SIZE 131072     /* power of two, about 2.6 x REVOKED_MAX */

/* The queues the worker consumes, changed at run time by remote control
 * (add_consumer, cancel_consumer). One writer at a time (the master before
 * forking, then the control process); readers copy it under the generation
 * number, which is odd while it is being written. */
#define QUEUES_MAX 1024
#define QUEUE_NAME_MAX 201            /* -Q allows 200 bytes */
struct queue_set {
    _Atomic uint64_t gen;
    _Atomic int n;
    char name[QUEUES_MAX][QUEUE_NAME_MAX];
};

/* Worker-wide state in the same mapping. */
/* Late-ack tasks whose child died, noted by the master for a broker that
 * requeues a dead child's deliveries itself (AMQP): the child that receives
 * one again settles it as Celery's worker settles a lost task
 * (recover_redelivered). A ring of the last LOST_NOTES; one writer (the
 * master), read under a sequence lock. */
#define LOST_NOTES 64
struct lost_note {
    _Atomic uint64_t seq;              /* odd while being written; 0: never used */
    char task_id[40];
    int reason;                        /* enum lost_reason */
    int deaths;                        /* how often this task's child died running it */
};

/* The database connection budget (worker/budget.h): written by the master
 * before the first fork and by child 0 when it counts again; read by the
 * control process (inspect stats) and the metrics process. Hints. */
struct budget_board {
    _Atomic int checked;               /* 1 once a count succeeded */
    _Atomic int max_connections;       /* the server's max_connections */
    _Atomic int available;             /* max_connections minus the reserved slots */
    _Atomic int planned;               /* connections this worker opens at most */
    _Atomic int fleet;                 /* celeriac sessions on the server at the last count
                                          (this worker's own included once they are open) */
    _Atomic int others;                /* other client sessions at the last count */
    _Atomic int64_t checked_at;        /* Unix time of the last count, seconds */
};

struct board_shared {
    _Atomic uint64_t clock;            /* Lamport clock of events and replies */
    _Atomic int events_enabled;        /* task events on (-E or enable_events) */
    _Atomic int pool_target;           /* children wanted (pool_grow / pool_shrink) */
    double started;                    /* Unix time the worker started */
    /* Revoked task ids: written only by the control process (one writer),
     * read by every child before running a task. A ring of the last
     * REVOKED_MAX (entry count % REVOKED_MAX is the next to be replaced)
     * and an open-addressing index into it (see scoreboard.c). */
    _Atomic uint64_t revoked_count;
    _Atomic uint64_t revoked_hash[REVOKED_MAX];  /* 0 while the entry is written */
    double revoked_at[REVOKED_MAX];              /* Unix time of the revoke */
    char revoked_id[REVOKED_MAX][40];
    _Atomic uint64_t revoked_index[REVOKED_INDEX_SIZE];
    _Atomic unsigned revoked_max_probe;          /* longest probe any insert made */
    struct queue_set queues;           /* what the children consume */
    _Atomic uint64_t lost_count;       /* notes ever written; % LOST_NOTES is the next */
    struct lost_note lost[LOST_NOTES];
    _Atomic uint64_t log_gen;          /* --logfile reopen generation (util/log.h), bumped by
                                          the master on SIGUSR2 */
    struct budget_board budget;        /* database connections (worker/budget.h) */
    struct task_tuning tasks[];        /* one per registered task */
};

/* The first bytes of the mapping, so that another process (`celeriac
 * status`) can map a worker's board read-only and check it is one of ours,
 * of this layout, before it reads a slot. Written once by the master. */
#define BOARD_MAGIC "celeriac-board\0"
#define BOARD_VERSION 1
#define BOARD_NODE_MAX 256
struct board_header {
    char magic[16];                    /* BOARD_MAGIC */
    uint32_t version;                  /* BOARD_VERSION */
    uint32_t slot_size;                /* sizeof(struct slot): layouts of other builds differ */
    uint64_t n;                        /* slots */
    uint64_t n_tasks;
    uint64_t slots_offset;             /* from the start of the mapping */
    uint64_t shared_offset;
    uint64_t map_size;
    int32_t master_pid;
    char node[BOARD_NODE_MAX];         /* -n of the worker */
};

struct scoreboard {
    struct board_header *header;  /* start of the mapping */
    struct slot *slots;           /* MAP_SHARED, n entries */
    size_t n;                     /* capacity: the most children pool_grow may reach */
    struct board_shared *shared;  /* in the same mapping */
    struct held_board *held;      /* n entries, in the same mapping (pages are touched only
                                     as messages are held) */
    size_t n_tasks;
    struct child_tally *child_tally; /* n entries, in the same mapping (worker/tally.h) */
    struct task_tally *task_tally;   /* n_tasks entries, in the same mapping */
    size_t map_size;
    char *path;                   /* the backing file (scoreboard_create_named), or NULL */
    dev_t dev;                    /* its identity, so that only ours is removed */
    ino_t ino;
    pid_t owner;                  /* the process that created it (removes the file) */
};

/* Maps n zeroed slots and the shared state for n_tasks tasks, shared with
 * future children. Master only, before fork. Returns 0 or -errno. */
int scoreboard_create(struct scoreboard *sb, size_t n, size_t n_tasks);
/* The same, backed by the file scoreboard_path(node) (tmpfs) so that
 * `celeriac status` can read it; the file replaces any stale one of that
 * name and is removed by scoreboard_destroy in the creating process.
 * Master only, before fork. 0, or -errno with e filled (the caller may fall
 * back to scoreboard_create). */
int scoreboard_create_named(struct scoreboard *sb, size_t n, size_t n_tasks, const char *node,
                            struct err *e);
/* Appends the directory of the board files: $CELERIAC_RUNTIME_DIR, else
 * /dev/shm. */
void scoreboard_dir(struct buf *out);
/* Appends the board file of node: <dir>/celeriac-<node>.board, '/' in the
 * node name replaced by '_'. */
void scoreboard_path(struct buf *out, const char *node);
/* Maps the board file at path read-only and checks its header (magic,
 * version, this build's slot layout, size). Any process. 0, or -errno /
 * E_PROTOCOL with e filled. Release with scoreboard_destroy. */
int scoreboard_attach(struct scoreboard *sb, const char *path, struct err *e);
/* Lamport clock: the next value, after merging a received one (0 = none). */
uint64_t scoreboard_clock(struct scoreboard *sb, uint64_t received);
/* Adds id to the revoked set (control process only). */
void scoreboard_revoke(struct scoreboard *sb, const char *id);
/* True if id was revoked (any process; lock-free). */
/* The same, revoked at Unix time when (ids loaded from --statedb). */
void scoreboard_revoke_at(struct scoreboard *sb, const char *id, double when);
bool scoreboard_is_revoked(const struct scoreboard *sb, const char *id);
/* Calls each(id, arg) for every revoked id not yet expired; returns how
 * many. Any process. */
size_t scoreboard_revoked_list(const struct scoreboard *sb, void (*each)(const char *, void *),
                               void *arg);

/* Master: the late-ack task id died with its child for reason (enum
 * lost_reason). Returns the deaths noted for that id, this one included. */
int scoreboard_lost_note(struct scoreboard *sb, const char *task_id, int reason);
/* Children: the note of task_id, if one of the last LOST_NOTES: its latest
 * reason and its deaths. */
bool scoreboard_lost_find(struct scoreboard *sb, const char *task_id, int *reason, int *deaths);
/* Replaces the consumed queues with names[0..n) (the master, before fork).
 * Returns 0, or -E2BIG when there are more than QUEUES_MAX. */
int scoreboard_queues_set(struct scoreboard *sb, char *const *names, size_t n);
/* Adds (true: it was not there) or removes (true: it was there) one queue.
 * Control process only. */
bool scoreboard_queue_add(struct scoreboard *sb, const char *name);
bool scoreboard_queue_remove(struct scoreboard *sb, const char *name);
/* The generation of the queue set: cheap, for "has it changed?". */
uint64_t scoreboard_queues_gen(const struct scoreboard *sb);
/* Copies the queue set: *names (caller frees each and the array) and *n.
 * Returns the generation read. Any process. */
uint64_t scoreboard_queues_read(const struct scoreboard *sb, char ***names, size_t *n);
void scoreboard_destroy(struct scoreboard *sb);
const char *child_state_name(enum child_state s);

#endif /* CELERIAC_WORKER_SCOREBOARD_H */
