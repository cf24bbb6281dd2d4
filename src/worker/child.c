/* SPDX-License-Identifier: MIT
 * worker/child.c: the life of one worker child: open its own broker, result
 * backend and database connections after fork, then fetch, decode, run,
 * store and acknowledge until told to stop, then close everything through one
 * exit path. Settling of bad messages follows spec §5.1.
 */
#include "common.h"
#include "util/proctitle.h"
#include "util/strcopy.h"
#include "util/time.h"
#include "worker/budget.h"
#include "worker/child_internal.h"
#include "worker/signals.h"

#include <poll.h>
#include <sys/prctl.h>

/* Seconds a BRPOP waits: bounds how long a stop request or a lost master
 * goes unnoticed by an idle child. */
#define FETCH_TIMEOUT_S 1

/* ---- library hooks around the database connection */

static int hook_db_open(void *arg)
{
    struct child *c = arg;
    atomic_store(&c->slot->db_state, DBS_UP);
    atomic_store(&c->slot->db_opened_ms, c->db.opened_ms);
    const struct celeriac_library *lib = c->cfg->lib.desc;
    if (lib->db_connected && lib->db_connected(&c->proc)) {
        log_error("library hook db_connected failed");
        return -1;
    }
    return 0;
}

/* A failed connect attempt: counted at once, an outage can be long. */
static int hook_db_retry(void *arg)
{
    tally_db(arg);
    return 0;
}

static int hook_db_close(void *arg)
{
    struct child *c = arg;
    atomic_store(&c->slot->db_state, DBS_DOWN);
    /* Reconnecting may take an outage's length: a delivery not yet started
     * is made durable first (a task running now has been acked). One held
     * by a lock on this very connection cannot be: it goes back to its
     * queue as the connection closes. */
    if (c->current && !atomic_load(&c->slot->task_started_ms) &&
        !transaction_holds_delivery(c, c->current))
        settle_protect(c, c->current);
    const struct celeriac_library *lib = c->cfg->lib.desc;
    if (lib->db_closing)
        lib->db_closing(&c->proc);
    return 0;
}

/* ---- the process title ps shows */

void child_title(struct child *c, const char *state, const struct message *m)
{
    /* Twice per task (busy, idle): joined from parts, not formatted. */
    char index[16];
    char *p = index + sizeof(index);
    *--p = '\0';
    unsigned v = (unsigned)c->index;
    do
        *--p = (char)('0' + v % 10);
    while ((v /= 10) && p > index);
    char name[97], id[41];
    str_copy(name, sizeof(name), m && m->task_name ? m->task_name : "?");
    str_copy(id, sizeof(id), m && m->task_id ? m->task_id : "?");
    const char *parts[] = {"celeriac: worker child ", p, " ", state, " ", name, "[", id, "]"};
    proctitle_set_parts(parts, m ? ARRAY_SIZE(parts) : 4);
}

/* ---- connections */

static bool master_gone(struct child *c)
{
    struct pollfd p = {.fd = c->deathwatch_fd, .events = POLLIN};
    return poll(&p, 1, 0) > 0; /* only EOF or HUP can arrive: the master never writes */
}

bool child_should_stop(struct child *c)
{
    if (sig_stop)
        return true;
    if (master_gone(c)) {
        log_warning("master process is gone; stopping");
        sig_stop = 1;
        return true;
    }
    return false;
}

/* Opens a Redis link, retrying with backoff until it works or we must stop. */
static int open_with_backoff(struct child *c, int (*open)(void *, struct err *), void *target,
                             const char *what)
{
    struct retry r;
    retry_init(&r, 200, 10000, "connecting to the %s", what);
    for (;;) {
        struct err e = {0};
        if (!open(target, &e)) {
            retry_succeeded(&r);
            return 0;
        }
        if (child_should_stop(c))
            return E_CONN_LOST;
        retry_wait(&r, LOG_ERROR, &e, &sig_stop);
    }
}

static int open_broker(void *b, struct err *e)
{
    struct broker *broker = b;
    return broker->ops->open(broker, e);
}

static int open_backend(void *b, struct err *e)
{
    struct backend *backend = b;
    return backend->ops->open(backend, e);
}

int child_ensure_broker(struct child *c)
{
    if (c->broker.ops->is_open(&c->broker))
        return 0;
    int state = atomic_load(&c->slot->state);
    atomic_store(&c->slot->state, CHILD_CONNECTING);
    child_title(c, "connecting", NULL);
    int rc = open_with_backoff(c, open_broker, &c->broker, "broker");
    if (state == CHILD_IDLE)
        child_title(c, "idle", NULL);
    return rc;
}

int child_ensure_backend(struct child *c)
{
    if (c->backend.ops->is_open(&c->backend))
        return 0;
    atomic_store(&c->slot->state, CHILD_CONNECTING);
    return open_with_backoff(c, open_backend, &c->backend, "result backend");
}

/* Remote control changed the queues (add_consumer, cancel_consumer):
 * consume the new set from the next fetch on. */
static void follow_queues(struct child *c)
{
    if (scoreboard_queues_gen(c->sb) == c->queues_gen)
        return;
    char **names;
    size_t n;
    c->queues_gen = scoreboard_queues_read(c->sb, &names, &n);
    c->broker.ops->consume(&c->broker, names, n);
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
}

/* --max-tasks-per-child and --max-memory-per-child: true when this child
 * should retire after the task it just finished. */
static bool should_retire(struct child *c)
{
    uint64_t done = atomic_load(&c->slot->tasks_done);
    if (c->cfg->max_tasks_per_child && done >= c->cfg->max_tasks_per_child) {
        log_info("retiring after %" PRIu64 " tasks (--max-tasks-per-child)", done);
        return true;
    }
    if (c->cfg->max_memory_per_child) {
        FILE *f = fopen("/proc/self/statm", "re");
        unsigned long size = 0, resident = 0;
        if (f && fscanf(f, "%lu %lu", &size, &resident) == 2) {
            uint64_t kib = (uint64_t)resident * (uint64_t)sysconf(_SC_PAGESIZE) / 1024;
            if (kib > c->cfg->max_memory_per_child) {
                log_info("retiring at %" PRIu64 " KiB resident (--max-memory-per-child %" PRIu64
                         ")", kib, c->cfg->max_memory_per_child);
                fclose(f);
                return true;
            }
        }
        if (f)
            fclose(f);
    }
    return false;
}

/* ---- life */

ATTR_NORETURN static void leave(struct child *c, int code)
{
    atomic_store(&c->slot->state, CHILD_STOPPING);
    child_title(c, "stopping", NULL);
    held_restore(c);
    const struct celeriac_library *lib = c->cfg->lib.desc;
    if (code != EXIT_CANNOT_SERVE && lib->process_shutdown)
        lib->process_shutdown(&c->proc);
    /* Read the replies of what was sent without waiting; a connection that
     * died in between gets one reconnect, which sends those commands again. */
    c->broker.ops->leave(&c->broker);
    c->backend.ops->leave(&c->backend);
    settle_forget_confirmed(c); /* confirmed: nothing for the next child to check */
    db_conn_close(&c->db, "worker child exiting");
    c->broker.ops->release(&c->broker);
    c->backend.ops->release(&c->backend);
    task_context_release(&c->task);
    atomic_store(&c->slot->db_state, DBS_NONE);
    atomic_store(&c->slot->state, CHILD_EMPTY);
    /* _exit: the master's atexit work and stdio buffers are not ours. */
    _exit(code);
}

/* Gives up at start: the master does not replace a child that cannot serve
 * until the worker serves. A capacity probe (the master retrying such a
 * slot) fails quietly: the master reports the shortage once. */
ATTR_NORETURN static void give_up(struct child *c, const char *why)
{
    if (atomic_load(&c->slot->probe))
        log_debug("cannot serve yet: %s", why);
    else
        log_critical("cannot serve: %s", why);
    leave(c, EXIT_CANNOT_SERVE);
}

/* Sets up c in a freshly forked child: names, connection structs (nothing
 * opened yet), hooks. */
static void child_setup(struct child *c, const struct worker_config *cfg, struct scoreboard *sb,
                        struct slot *slot, int index, int deathwatch_fd)
{
    memset(c, 0, sizeof(*c));
    c->cfg = cfg;
    c->sb = sb;
    c->canvas = (struct canvas){.broker = &c->broker, .backend = &c->backend};
    c->events = (struct event_sender){.sb = sb, .hostname = cfg->node_name,
                                      .master_pid = getppid()};
    c->slot = slot;
    c->index = index;
    c->deathwatch_fd = deathwatch_fd;
    retry_init(&c->fetch_retry, 100, 5000, "fetching from the broker");

    char name[32];
    snprintf(name, sizeof(name), "ForkPoolWorker-%d", index + 1);
    log_set_process(name);
    snprintf(name, sizeof(name), "celeriac:child%d", index);
    prctl(PR_SET_NAME, name, 0, 0, 0);
    /* Backup for the death-watch pipe while blocked in a long task. */
    prctl(PR_SET_PDEATHSIG, SIGTERM, 0, 0, 0);

    atomic_store(&slot->state, CHILD_STARTING);
    atomic_fetch_add(&sb->child_tally[index].starts, 1);
    child_title(c, "starting", NULL);
    atomic_store(&slot->db_state, cfg->db.kind == DB_NONE ? DBS_NONE : DBS_DOWN);
    struct broker_owner owner = {.node = cfg->node_name, .master_pid = c->events.master_pid,
                                 .index = index, .slot = slot, .held_board = &sb->held[index],
                                 .sweep_interval_s = cfg->sweep_interval_s,
                                 .visibility_timeout = cfg->visibility_timeout,
                                 .task_db = cfg->broker_shares_db ? &c->db : NULL,
                                 .before_commit = transaction_before_commit,
                                 .ctx = c};
    struct err e = {0};
    if (broker_init(&c->broker, &cfg->broker, &owner, &e)) {
        log_critical("cannot serve: %s", e.msg); /* the CLI checked the URL first */
        _exit(EXIT_CANNOT_SERVE);
    }
    c->events.bus = c->broker.ops->bus(&c->broker);
    backend_init(&c->backend, &cfg->backend, &c->broker);
    c->proc.index = index;
    c->proc.db = &c->db;
    task_context_init(&c->task, &c->proc);

    char app_name[64];
    snprintf(app_name, sizeof(app_name), "celeriac child %d pid %d %s", index, (int)getpid(),
             cfg->node_name);
    db_conn_init(&c->db, &cfg->db, app_name);
    c->db.on_open = hook_db_open;
    c->db.on_close = hook_db_close;
    c->db.on_retry = hook_db_retry;
    c->db.hook_arg = c;
}

/* Opens the database connection, after fork, or gives up. */
static void open_database(struct child *c)
{
    struct slot *slot = c->slot;
    atomic_store(&slot->state, CHILD_CONNECTING);
    child_title(c, "connecting", NULL);
    struct err e = {0};
    /* At the worker's start an unreachable database is a configuration
     * problem: give up after the configured attempts. A replacement for a
     * child that served waits the outage out (retrying with backoff). A
     * probe tries once: the master retries the slot with its backoff. */
    int attempts = atomic_load(&slot->probe)        ? 1
                   : atomic_load(&slot->outage_mode) ? 0
                                                     : c->cfg->db.attempts;
    c->db.quiet = atomic_load(&slot->probe);
    if (db_conn_open(&c->db, attempts, &sig_stop, &e)) {
        if (sig_stop)
            leave(c, EXIT_OK);
        give_up(c, e.msg);
    }
    tally_db(c);
    c->budget_next_ms = time_mono_ms() + BUDGET_FIRST_RECOUNT_MS;
    log_info("database connection to '%s' opened by pid %d (after fork, application_name "
             "'%s')", db_conn_where(&c->db), (int)getpid(), c->db.app_name);
}

bool child_fetches_next(const struct child *c)
{
    uint64_t limit = c->cfg->max_tasks_per_child;
    return !sig_stop && c->n_held == 0 &&
           !(limit && atomic_load(&c->slot->tasks_done) + 1 >= limit);
}

/* Fetches and handles messages until told to stop (or retired). */
static void serve(struct child *c)
{
    const struct worker_config *cfg = c->cfg;
    unsigned long loops = 0;
    while (!(loops++ % 64 ? sig_stop : child_should_stop(c))) {
        /* The death-watch poll runs every 64 messages and whenever the queue
         * is idle; PR_SET_PDEATHSIG covers a busy child in between. */
        if (cfg->db.kind != DB_NONE && (!db_conn_is_open(&c->db) || cfg->broker_shares_db)) {
            /* Down: do not pull tasks it would only fail (an open handle is
             * checked right before each task instead). A connection the
             * broker shares is checked here, outside any delivery's lock
             * (pinged after idle, recycled when due): execute_accepted
             * does not roll a lock back to check it. */
            struct err e = {0};
            if (db_conn_ready(&c->db, 0, &sig_stop, &e))
                break; /* only fails when stopping */
            atomic_store(&c->slot->reconnects, c->db.reconnects);
            tally_db(c);
        }
        if (c->index == 0 && cfg->db.kind == DB_POSTGRES)
            budget_recount(cfg, &c->db, c->sb, &c->budget_next_ms);
        if (child_ensure_broker(c))
            break;
        log_follow_reopen(); /* let go of a rotated log file even when idle */
        c->broker.ops->maintain(&c->broker);
        follow_queues(c);
        held_run_due(c);
        held_refresh(c);
        if (sig_stop)
            break;
        struct delivery d;
        struct err e = {0};
        double due = held_next_due(c);
        double timeout = due < FETCH_TIMEOUT_S ? (due > 0.05 ? due : 0.05) : FETCH_TIMEOUT_S;
        int rc = c->broker.ops->fetch(&c->broker, timeout, &d, &e);
        if (rc) {
            /* Backs off on every class of failure: a connection that opens
             * and dies at once must not turn this loop into a spin. */
            retry_wait(&c->fetch_retry, rc == E_CONN_LOST ? LOG_WARNING : LOG_ERROR, &e,
                       &sig_stop);
            continue;
        }
        retry_succeeded(&c->fetch_retry);
        bool ran = delivery_came(&d);
        settle_confirm_results(c); /* its reply has arrived by now: no wait */
        if (!ran)
            loops = 0; /* idle: check the master next time round */
        if (ran)
            intake_handle(c, &d);
        c->broker.ops->delivery_release(&d);
        if (ran && should_retire(c))
            leave(c, EXIT_RECYCLED);
    }
}

void child_main(const struct worker_config *cfg, struct scoreboard *sb, struct slot *slot,
                int index, int deathwatch_fd)
{
    struct child c;
    child_setup(&c, cfg, sb, slot, index, deathwatch_fd);
    if (cfg->db.kind != DB_NONE)
        open_database(&c);
    if (cfg->lib.desc->process_init && cfg->lib.desc->process_init(&c.proc))
        give_up(&c, "the task library's process_init hook failed");
    if (child_ensure_broker(&c) || child_ensure_backend(&c))
        leave(&c, EXIT_OK);
    limits_install(&c);
    signals_child_terminate_on(&slot->revoke_terminate);
    recover_lost_task(&c);
    recover_unconfirmed_result(&c);
    recover_slot(&c);
    atomic_store(&slot->state, CHILD_IDLE);
    child_title(&c, "idle", NULL);
    log_debug("child %d ready", index);
    serve(&c);
    leave(&c, EXIT_OK);
}
