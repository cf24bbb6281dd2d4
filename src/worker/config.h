/* SPDX-License-Identifier: MIT
 * worker/config.h: the worker's settings after parsing flags and environment,
 * and the process exit codes. Filled by cli/worker.c, read by everything in
 * worker/. Immutable after the first fork, except lib, which only a reload
 * replaces (in the master, between forks).
 */
#ifndef CELERIAC_WORKER_CONFIG_H
#define CELERIAC_WORKER_CONFIG_H

#include "backend/redis.h"
#include "broker/redis.h"
#include "db/conn.h"
#include "task/library.h"
#include "util/log.h"

/* Exit codes, the only place they are defined. */
enum exit_code {
    EXIT_OK = 0,           /* clean shutdown */
    EXIT_FAILED = 1,       /* unexpected failure */
    EXIT_USAGE = 2,        /* bad flag, URL or library: one line on stderr */
    EXIT_CANNOT_SERVE = 3, /* a child gave up (database unreachable): never respawned */
    EXIT_RECYCLED = 4,     /* a child retired itself (task count, memory): replaced at once */
};

/* --db-budget: what a worker does when the connections it plans exceed the
 * database server's room (worker/budget.h). */
enum db_budget_mode {
    DB_BUDGET_WARN = 0,    /* one warning with the numbers (default) */
    DB_BUDGET_STRICT,      /* refuse to start: exit 2, one line */
    DB_BUDGET_OFF,         /* no check */
};

struct worker_config {
    char *app_path;                 /* -A: task library */
    int concurrency;                /* -c: number of children */
    char *node_name;                /* -n: e.g. celeriac@host */
    enum log_level log_level;       /* -l */
    char *broker_url;               /* -b as given (for the banner, masked) */
    char *backend_url;              /* --result-backend as given, or NULL */
    struct redis_transport_options broker_options;  /* --broker-transport-option */
    struct redis_transport_options backend_options; /* --result-backend-transport-option */
    struct broker_config broker;
    struct backend_config backend;
    struct db_config db;
    bool acks_late;                 /* --acks-late: every task acks after its result */
    bool transactional;             /* the broker is in the task database: transactional
                                       tasks commit their writes with their ack */
    bool broker_shares_db;          /* transactional on PostgreSQL: each child's SQL broker
                                       runs on its task connection, so that a transactional
                                       task runs in the transaction that locked its message */
    bool reject_on_worker_lost;     /* late-ack task of a dead child goes back to the queue */
    int max_worker_lost_requeues;   /* ... at most this often per message, then WorkerLostError */
    double visibility_timeout;      /* seconds before anyone's unacked message is restored */
    int sweep_interval_s;           /* how often a child tries the visibility sweep */
    double time_limit;              /* --time-limit seconds, 0 = none */
    double soft_time_limit;         /* --soft-time-limit seconds, 0 = none */
    uint64_t max_tasks_per_child;   /* a child retires after this many tasks; 0 = never */
    uint64_t max_memory_per_child;  /* KiB of RSS after which a child retires; 0 = never */
    int max_concurrency;            /* scoreboard capacity: pool_grow stops here */
    bool remote_control;            /* run the control process (pidbox, heartbeats) */
    char *statedb;                  /* --statedb: file of revoked ids, or NULL */
    char *metrics;                  /* --metrics ADDR:PORT for Prometheus, or NULL */
    char *logfile;                  /* --logfile: append records here, not to stderr */
    enum log_format log_format;     /* --log-format text|json */
    bool without_heartbeat;         /* send no worker-online/heartbeat/offline events */
    bool task_events;               /* -E: send task events from the start */
    int64_t respawn_base_ms;        /* first delay before replacing a dead child */
    int64_t respawn_cap_ms;
    int autoscale_max;              /* --autoscale MAX,MIN; 0 = off */
    int autoscale_min;
    int64_t autoscale_keepalive_ms; /* AUTOSCALE_KEEPALIVE: idle time before shrinking */
    enum db_budget_mode db_budget;  /* --db-budget */
    char *pidfile;                  /* --pidfile: the master's pid, for `celeriac reload` */
    struct library lib;             /* loaded in the master before forking; replaced in the
                                       master by a reload (worker/reload.h) */
};

void worker_config_init(struct worker_config *cfg);
void worker_config_release(struct worker_config *cfg);

#endif /* CELERIAC_WORKER_CONFIG_H */
