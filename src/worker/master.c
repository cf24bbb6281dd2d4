/* SPDX-License-Identifier: MIT
 * worker/master.c: supervision of the children: fork them, reap them, replace
 * the dead with backoff, stop warm or cold on signals, stop for good when no
 * child can serve at start, and retry slots that could not serve once some
 * child does. The master never opens a broker or database connection,
 * so nothing it holds can leak into a fork.
 */
#include "common.h"
#include "util/backoff.h"
#include "util/proctitle.h"
#include "util/time.h"
#include "worker/autoscale.h"
#include "worker/master.h"
#include "worker/reload.h"
#include "worker/scoreboard.h"
#include "worker/service.h"
#include "worker/statedb.h"
#include "worker/signals.h"
#include "worker/spawn.h"
#include "worker/trim.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/wait.h>

/* A child that lived this long before dying resets its respawn backoff (as
 * does one that finished a task). */
#define HEALTHY_LIFETIME_MS 10000

struct child_entry {
    pid_t pid;               /* 0 when the slot has no process */
    int64_t started_ms;
    int64_t respawn_at_ms;   /* when to fork a replacement; 0 = not scheduled */
    bool cannot_serve;       /* its last child exited EXIT_CANNOT_SERVE and none has
                                served since: retried (a probe) once the worker serves */
    bool killed_for_limit;   /* the master killed it past its hard time limit */
    bool retiring;           /* asked to stop because the pool shrank */
    bool reloading;          /* asked to stop by a reload: replaced at once */
    struct backoff respawn;
    struct {                 /* task it died running, for its replacement to settle */
        int reason;          /* enum lost_reason */
        int sig;
        bool acks_late;
        double time_limit;
        char task_id[40];
        char task_name[96];
        char tag[40];
        uint64_t hand_settled; /* its slot's hand_settled, for the next child */
        char unconfirmed_task_id[40]; /* its result's reply never read */
        char unconfirmed_task_name[96];
    } lost;
    bool hand_check;         /* died and no replacement comes: its task, held
                                messages or hand are for the salvage process */
};

struct master {
    struct worker_config *cfg;
    struct scoreboard sb;
    struct child_entry *children;   /* sb.n entries; the first pool_target are wanted */
    struct child_entry control;     /* the control process (remote control, heartbeats) */
    struct child_entry metrics;     /* the metrics process (--metrics), if any */
    int deathwatch[2];
    bool stop_sent;
    bool kill_sent;
    bool ready_logged;              /* some child became ready: the worker serves */
    bool short_logged;              /* a capacity shortage was reported (once per episode) */
    unsigned short_retries;         /* failed probes in this episode */
    bool trimmed;
    pid_t salvage_pid;              /* returning what dead children's hands held */
    int salvage_runs;               /* bounded: the broker may be gone for good */
    struct service svc;             /* systemd notifications (no-op without systemd) */
    struct reload reload;           /* SIGHUP: the task library loaded again */
    bool control_reload;            /* the control process stops for a reload */
    struct autoscale autoscale;     /* --autoscale */
};

/* A salvage run may fail this many times in a worker's life before the
 * master gives up (each run already retries for seconds). */
#define SALVAGE_RUNS_MAX 3

static int pool_target(struct master *m)
{
    return atomic_load(&m->sb.shared->pool_target);
}

/* Hands the lost task to the slot before its replacement is forked. */
static void pass_lost_task(struct child_entry *ce, struct slot *s)
{
    atomic_store(&s->lost_hand_settled, ce->lost.hand_settled);
    memcpy(s->lost_unconfirmed_task_id, ce->lost.unconfirmed_task_id,
           sizeof(s->lost_unconfirmed_task_id));
    memcpy(s->lost_unconfirmed_task_name, ce->lost.unconfirmed_task_name,
           sizeof(s->lost_unconfirmed_task_name));
    if (ce->lost.reason == LOST_NONE)
        return;
    atomic_store(&s->lost_reason, ce->lost.reason);
    atomic_store(&s->lost_signal, ce->lost.sig);
    atomic_store(&s->lost_acks_late, ce->lost.acks_late);
    s->lost_time_limit = ce->lost.time_limit;
    memcpy(s->lost_task_id, ce->lost.task_id, sizeof(s->lost_task_id));
    memcpy(s->lost_task_name, ce->lost.task_name, sizeof(s->lost_task_name));
    memcpy(s->lost_tag, ce->lost.tag, sizeof(s->lost_tag));
}

static void start_child(struct master *m, int i)
{
    struct child_entry *ce = &m->children[i];
    memset(&m->sb.slots[i], 0, sizeof(m->sb.slots[i]));
    pass_lost_task(ce, &m->sb.slots[i]);
    atomic_store(&m->sb.slots[i].outage_mode, m->ready_logged);
    atomic_store(&m->sb.slots[i].probe, ce->cannot_serve);
    pid_t pid = spawn_child(m->cfg, &m->sb, i, m->deathwatch);
    if (pid < 0) {
        int64_t delay = backoff_next(&ce->respawn);
        log_error("fork of child %d failed: %s; retrying in %" PRId64 " ms", i, strerror(-pid),
                  delay);
        ce->respawn_at_ms = time_mono_ms() + delay;
        return;
    }
    ce->pid = pid;
    ce->started_ms = time_mono_ms();
    ce->respawn_at_ms = 0;
    ce->killed_for_limit = false;
    ce->lost.reason = LOST_NONE;
    ce->lost.unconfirmed_task_id[0] = '\0'; /* the new child's to check now */
    ce->hand_check = false; /* the new child looks in its hand itself */
    atomic_store(&m->sb.slots[i].pid, pid);
    reload_child_forked(&m->reload, i);
}

/* Copies what a dead child was running out of its slot, if anything. */
static void remember_lost_task(struct child_entry *ce, struct slot *s, int status)
{
    ce->lost.reason = LOST_NONE;
    /* Whatever the death, the next child of the slot must tell the message
     * it finds in the hand from the one this child had settled. */
    ce->lost.hand_settled = atomic_load(&s->hand_settled);
    if (!ce->lost.hand_settled && atomic_load(&s->lost_hand_settled))
        ce->lost.hand_settled = atomic_load(&s->lost_hand_settled); /* never popped */
    /* Its own unconfirmed result, or one its predecessor left and it died
     * before checking. */
    const char *uid = s->unconfirmed_task_id[0] ? s->unconfirmed_task_id
                                                : s->lost_unconfirmed_task_id;
    const char *uname = s->unconfirmed_task_id[0] ? s->unconfirmed_task_name
                                                  : s->lost_unconfirmed_task_name;
    snprintf(ce->lost.unconfirmed_task_id, sizeof(ce->lost.unconfirmed_task_id), "%.39s", uid);
    snprintf(ce->lost.unconfirmed_task_name, sizeof(ce->lost.unconfirmed_task_name), "%.95s",
             uname);
    if (atomic_load(&s->lost_reason) != LOST_NONE) {
        /* It died before settling its predecessor's task: hand that on. */
        ce->lost.reason = atomic_load(&s->lost_reason);
        ce->lost.sig = atomic_load(&s->lost_signal);
        ce->lost.acks_late = atomic_load(&s->lost_acks_late);
        ce->lost.time_limit = s->lost_time_limit;
        memcpy(ce->lost.task_id, s->lost_task_id, sizeof(ce->lost.task_id));
        memcpy(ce->lost.task_name, s->lost_task_name, sizeof(ce->lost.task_name));
        memcpy(ce->lost.tag, s->lost_tag, sizeof(ce->lost.tag));
        return;
    }
    if (atomic_load(&s->state) != CHILD_BUSY || !atomic_load(&s->task_started_ms)) {
        if (s->popped_tag[0]) {
            /* Popped, recorded as unacked, never started: back to its queue
             * now rather than after the visibility timeout. (A message in
             * the child's hand is found there by the next child.) */
            ce->lost.reason = LOST_UNSTARTED;
            memcpy(ce->lost.tag, s->popped_tag, sizeof(ce->lost.tag));
            ce->lost.tag[sizeof(ce->lost.tag) - 1] = '\0';
            ce->lost.task_id[0] = ce->lost.task_name[0] = '\0';
        }
        return;
    }
    bool timed_out = ce->killed_for_limit || atomic_load(&s->hard_limit_hit);
    ce->lost.reason = atomic_load(&s->revoke_terminate) ? LOST_REVOKED
                      : timed_out                       ? LOST_TIME_LIMIT
                                                        : LOST_CRASH;
    ce->lost.sig = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
    ce->lost.acks_late = atomic_load(&s->acks_late);
    ce->lost.time_limit = (double)atomic_load(&s->time_limit_ms) / 1000.0;
    snprintf(ce->lost.task_id, sizeof(ce->lost.task_id), "%.39s", s->task_id);
    snprintf(ce->lost.task_name, sizeof(ce->lost.task_name), "%.95s", s->task_name);
    snprintf(ce->lost.tag, sizeof(ce->lost.tag), "%.39s", s->delivery_tag);
}

/* A broker that requeues a dead child's deliveries itself (AMQP) hands the
 * late-ack task the child was running to any child: note the death for the
 * one that receives it (recover_redelivered). Before the slot reads empty:
 * that child waits for it. */
static void note_lost_delivery(struct master *m, const struct child_entry *ce)
{
    int r = ce->lost.reason;
    if (m->cfg->broker.kind != BROKER_AMQP || !ce->lost.acks_late || !ce->lost.task_id[0] ||
        (r != LOST_CRASH && r != LOST_TIME_LIMIT && r != LOST_REVOKED))
        return;
    scoreboard_lost_note(&m->sb, ce->lost.task_id, r);
}


/* A child of slot i died and no replacement will come (stopping, or the
 * pool shrank): what it left is for the salvage process (salvage_due). The
 * task it was running (a cold shutdown kills children mid-task), or one it
 * inherited and never settled; ETA messages it held; in plain-pop mode, its
 * hand, if it did not leave through its exit path. */
static void leave_to_salvage(struct master *m, int i, int status)
{
    struct child_entry *ce = &m->children[i];
    bool clean = WIFEXITED(status) && (WEXITSTATUS(status) == EXIT_OK ||
                                       WEXITSTATUS(status) == EXIT_RECYCLED ||
                                       WEXITSTATUS(status) == EXIT_CANNOT_SERVE);
    /* Only Redis has hands (broker/redis.h). */
    bool hand = !clean && !m->cfg->broker.record_unacked && m->cfg->broker.kind == BROKER_REDIS;
    bool held = atomic_load(&m->sb.held[i].n) > 0;
    if (!hand && !held && ce->lost.reason == LOST_NONE && !ce->lost.unconfirmed_task_id[0])
        return;
    ce->hand_check = true;
    pass_lost_task(ce, &m->sb.slots[i]);
    atomic_store(&m->sb.slots[i].hand_check, 1);
}

/* The salvage process ended: slots it could not finish stay marked for the
 * next run; a failed run counts towards SALVAGE_RUNS_MAX. */
static void salvage_reaped(struct master *m, int status)
{
    m->salvage_pid = 0;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != EXIT_OK)
        m->salvage_runs++;
    for (size_t i = 0; i < m->sb.n; i++) {
        struct child_entry *ce = &m->children[i];
        if (ce->pid || !ce->hand_check)
            continue; /* not the salvage's: a slot awaiting its replacement keeps its task */
        ce->hand_check = atomic_load(&m->sb.slots[i].hand_check);
        if (atomic_load(&m->sb.slots[i].lost_reason) == LOST_NONE)
            ce->lost.reason = LOST_NONE; /* settled: a child forked later must not again */
        if (!m->sb.slots[i].lost_unconfirmed_task_id[0])
            ce->lost.unconfirmed_task_id[0] = '\0';
    }
}

/* A child gave up at start (its database refused it, process_init failed).
 * Before any child has served, that may be a configuration error, and when
 * every child does, the worker stops (none_can_serve). Once the worker
 * serves, it is a shortage that may pass (max_connections, a role's
 * connection limit): the slot is retried with its own backoff by a probe
 * child, which fails quietly; capacity_check reports the episode once. */
static void cannot_serve_exit(struct master *m, int i, pid_t pid)
{
    struct child_entry *ce = &m->children[i];
    bool was_probe = ce->cannot_serve;
    ce->cannot_serve = true;
    ce->respawn_at_ms = time_mono_ms() + backoff_next(&ce->respawn);
    if (was_probe) {
        m->short_retries++;
        log_debug("child %d (pid %d) still cannot serve; next try in %" PRId64 " ms", i,
                  (int)pid, ce->respawn_at_ms - time_mono_ms());
    } else {
        log_error("child %d (pid %d) cannot serve; %s", i, (int)pid,
                  m->ready_logged ? "retrying it with backoff"
                                  : "retrying it with backoff once another child serves");
    }
}

/* Once per loop: slots whose probe became ready serve again; a shortage
 * (slots that cannot serve while the worker serves) is logged once when it
 * starts, with the count and the next attempt, and once when it ends. */
static void capacity_check(struct master *m)
{
    int target = pool_target(m), short_now = 0;
    int64_t next = 0, now = time_mono_ms();
    for (int i = 0; i < target && i < (int)m->sb.n; i++) {
        struct child_entry *ce = &m->children[i];
        int state = atomic_load(&m->sb.slots[i].state);
        if (ce->cannot_serve && ce->pid && (state == CHILD_IDLE || state == CHILD_BUSY)) {
            ce->cannot_serve = false;
            backoff_reset(&ce->respawn);
        }
        if (!ce->cannot_serve)
            continue;
        short_now++;
        if (!ce->pid && ce->respawn_at_ms && (!next || ce->respawn_at_ms < next))
            next = ce->respawn_at_ms;
    }
    if (m->ready_logged && short_now && !m->short_logged) {
        log_warning("%d of %d children cannot serve; retrying each with backoff (next attempt "
                    "in %.1f s), quietly until they serve",
                    short_now, target, next > now ? (double)(next - now) / 1000.0 : 0.0);
        m->short_logged = true;
        m->short_retries = 0;
    } else if (!short_now && m->short_logged) {
        log_info("all %d children serve again (after %u failed retries)", target,
                 m->short_retries);
        m->short_logged = false;
    }
}

/* The metrics process (--metrics) is kept as the control process is:
 * replaced with backoff when it dies, stopped with the worker. True when
 * pid was it. */
static bool metrics_reaped(struct master *m, pid_t pid, int status)
{
    if (!m->metrics.pid || pid != m->metrics.pid)
        return false;
    m->metrics.pid = 0;
    if (m->stop_sent)
        return true;
    if (time_mono_ms() - m->metrics.started_ms >= HEALTHY_LIFETIME_MS)
        backoff_reset(&m->metrics.respawn);
    int64_t delay = backoff_next(&m->metrics.respawn);
    log_error("metrics process (pid %d) %s %d; replacing it in %" PRId64 " ms", (int)pid,
              WIFSIGNALED(status) ? "killed by signal" : "exited with code",
              WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status), delay);
    m->metrics.respawn_at_ms = time_mono_ms() + delay;
    return true;
}

static void metrics_due(struct master *m, int64_t now)
{
    if (!m->cfg->metrics || m->metrics.pid || m->metrics.respawn_at_ms > now)
        return;
    pid_t pid = spawn_metrics(m->cfg, &m->sb, m->deathwatch);
    if (pid > 0) {
        m->metrics.pid = pid;
        m->metrics.started_ms = now;
        m->metrics.respawn_at_ms = 0;
    } else {
        m->metrics.respawn_at_ms = now + backoff_next(&m->metrics.respawn);
    }
}

static int find_child(struct master *m, pid_t pid)
{
    for (int i = 0; i < (int)m->sb.n; i++)
        if (m->children[i].pid == pid)
            return i;
    return -1;
}

static void reap(struct master *m)
{
    for (;;) {
        int status;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid < 0 && errno == EINTR)
            continue;
        if (pid <= 0)
            return; /* 0: none left to reap; ECHILD: no children at all */
        if (pid == m->salvage_pid) {
            salvage_reaped(m, status);
            continue;
        }
        if (metrics_reaped(m, pid, status))
            continue;
        if (pid == m->control.pid) {
            m->control.pid = 0;
            if (m->control_reload && !m->stop_sent) {
                m->control_reload = false;
                m->control.respawn_at_ms = time_mono_ms(); /* with the new library */
            } else if (!m->stop_sent) {
                int64_t delay = backoff_next(&m->control.respawn);
                log_error("control process (pid %d) died; replacing it in %" PRId64 " ms",
                          (int)pid, delay);
                m->control.respawn_at_ms = time_mono_ms() + delay;
            }
            continue;
        }
        int i = find_child(m, pid);
        if (i < 0)
            continue;
        struct child_entry *ce = &m->children[i];
        int64_t lived = time_mono_ms() - ce->started_ms;
        /* the slot was zeroed at its start: these are this child's tasks */
        bool served = atomic_load(&m->sb.slots[i].tasks_done) > 0;
        bool reloading = ce->reloading;
        ce->reloading = false;
        bool handed_on = atomic_load(&m->sb.slots[i].lost_reason) != LOST_NONE;
        remember_lost_task(ce, &m->sb.slots[i], status);
        if (!handed_on)
            note_lost_delivery(m, ce);
        ce->pid = 0;
        atomic_store(&m->sb.slots[i].pid, 0);
        atomic_store(&m->sb.slots[i].state, CHILD_EMPTY);
        if (WIFEXITED(status)) {
            int code = WEXITSTATUS(status);
            if (code == EXIT_CANNOT_SERVE && !m->stop_sent && i < pool_target(m)) {
                cannot_serve_exit(m, i, pid);
                continue;
            }
            if ((code == EXIT_RECYCLED || (reloading && code == EXIT_OK)) && !m->stop_sent &&
                (!reloading || i < pool_target(m))) {
                log_info("child %d (pid %d) retired; replacing it", i, (int)pid);
                backoff_reset(&ce->respawn);
                ce->respawn_at_ms = time_mono_ms();
                continue;
            }
            if (code == EXIT_OK && (m->stop_sent || ce->retiring))
                log_debug("child %d (pid %d) exited", i, (int)pid);
            else
                log_error("child %d (pid %d) exited with code %d", i, (int)pid, code);
        } else if (WIFSIGNALED(status)) {
            log_error("child %d (pid %d) killed by signal %d%s", i, (int)pid, WTERMSIG(status),
                      WCOREDUMP(status) ? " (core dumped)" : "");
        }
        if (m->stop_sent || i >= pool_target(m)) {
            ce->retiring = false;
            leave_to_salvage(m, i, status);
            continue;
        }
        /* A child that finished a task was no crash loop, whatever killed it
         * (the OOM killer, an operator, the task after it): replaced at once,
         * as Celery's pool does. */
        if (lived >= HEALTHY_LIFETIME_MS || served)
            backoff_reset(&ce->respawn);
        /* The first replacement is immediate; a child that keeps dying young
         * before finishing a task (a crash at start, a message that kills
         * every child that takes it) is replaced ever more slowly instead of
         * fork-bombing the host. */
        int64_t delay = ce->respawn.attempt == 0 ? 0 : backoff_next(&ce->respawn);
        if (ce->respawn.attempt == 0)
            ce->respawn.attempt = 1;
        if (delay)
            log_warning("child %d keeps dying after %.1f s; replacing it in %" PRId64 " ms", i,
                        (double)lived / 1000.0, delay);
        ce->respawn_at_ms = time_mono_ms() + delay;
    }
}

/* Forks the salvage process when a child died in a slot no replacement will
 * take (the worker is stopping, the pool shrank) leaving something to settle
 * (leave_to_salvage). */
static void salvage_due(struct master *m)
{
    if (m->salvage_pid || m->salvage_runs >= SALVAGE_RUNS_MAX)
        return;
    bool wanted = false;
    for (size_t i = 0; i < m->sb.n && !wanted; i++)
        wanted = m->children[i].hand_check && !m->children[i].pid;
    if (!wanted)
        return;
    pid_t pid = spawn_salvage(m->cfg, &m->sb, m->deathwatch);
    if (pid > 0) {
        m->salvage_pid = pid;
    } else {
        m->salvage_runs++;
        log_error("fork of the salvage process failed: %s", strerror(-pid));
    }
}

static int alive_count(struct master *m)
{
    int n = (m->control.pid != 0) + (m->salvage_pid != 0) + (m->metrics.pid != 0);
    for (int i = 0; i < (int)m->sb.n; i++)
        n += m->children[i].pid != 0;
    return n;
}

static bool none_can_serve(struct master *m)
{
    for (int i = 0; i < pool_target(m); i++)
        if (!m->children[i].cannot_serve)
            return false;
    return true;
}

static void signal_children(struct master *m, int sig)
{
    if (m->control.pid > 0)
        kill(m->control.pid, sig);
    if (m->metrics.pid > 0)
        kill(m->metrics.pid, sig);
    for (int i = 0; i < (int)m->sb.n; i++)
        if (m->children[i].pid > 0)
            kill(m->children[i].pid, sig);
}

/* A slot that could not serve is retried only once the worker serves. */
static bool wants_child(const struct master *m, const struct child_entry *ce)
{
    return !ce->cannot_serve || m->ready_logged;
}

/* Milliseconds until the next scheduled respawn, capped at `cap`. */
static int next_timeout(struct master *m, int cap)
{
    int64_t now = time_mono_ms(), best = cap;
    if (m->cfg->remote_control && !m->control.pid && m->control.respawn_at_ms)
        best = m->control.respawn_at_ms - now < best ? m->control.respawn_at_ms - now : best;
    if (m->cfg->metrics && !m->metrics.pid && m->metrics.respawn_at_ms)
        best = m->metrics.respawn_at_ms - now < best ? m->metrics.respawn_at_ms - now : best;
    for (int i = 0; i < (int)m->sb.n; i++) {
        struct child_entry *ce = &m->children[i];
        if (!ce->pid && ce->respawn_at_ms && wants_child(m, ce))
            best = ce->respawn_at_ms - now < best ? ce->respawn_at_ms - now : best;
    }
    return best < 0 ? 0 : (int)best;
}

/* Forks what is due, and follows pool_grow / pool_shrink: slots below the
 * target are kept filled, slots above it are asked to finish and stop. */
static void respawn_due(struct master *m)
{
    int64_t now = time_mono_ms();
    int target = pool_target(m);
    for (int i = 0; i < (int)m->sb.n; i++) {
        struct child_entry *ce = &m->children[i];
        if (i >= target) {
            if (ce->pid && !ce->retiring) {
                log_info("pool shrinks: stopping child %d (pid %d)", i, (int)ce->pid);
                kill(ce->pid, SIGTERM);
                ce->retiring = true;
            }
            continue;
        }
        if (!ce->pid && !ce->cannot_serve && !ce->respawn_at_ms)
            ce->respawn_at_ms = now; /* newly wanted after pool_grow */
        /* Not while a salvage run may be emptying this slot's hand. */
        if (!ce->pid && wants_child(m, ce) && ce->respawn_at_ms && ce->respawn_at_ms <= now &&
            !(m->salvage_pid && ce->hand_check))
            start_child(m, i);
    }
    if (m->cfg->remote_control && !m->control.pid && m->control.respawn_at_ms <= now) {
        pid_t pid = spawn_control(m->cfg, &m->sb, m->deathwatch);
        if (pid > 0) {
            m->control.pid = pid;
            m->control.started_ms = now;
            m->control.respawn_at_ms = 0;
        } else {
            m->control.respawn_at_ms = now + backoff_next(&m->control.respawn);
        }
    }
    metrics_due(m, now);
}

/* SIGUSR1: one line per child from the scoreboard. */
static void log_status(struct master *m)
{
    int64_t now = time_mono_ms();
    for (int i = 0; i < (int)m->sb.n; i++) {
        struct slot *s = &m->sb.slots[i];
        int state = atomic_load(&s->state), db = atomic_load(&s->db_state);
        int64_t started = atomic_load(&s->task_started_ms);
        int64_t opened = atomic_load(&s->db_opened_ms);
        char task[160] = "";
        if (state == CHILD_BUSY && started)
            snprintf(task, sizeof(task), " task %.96s[%.40s] for %.1f s", s->task_name, s->task_id,
                     (double)(now - started) / 1000.0);
        log_info("child %d pid %d: %s, %" PRIu64 " tasks, database %s%s (age %.0f s, %u "
                 "reconnects)%s",
                 i, atomic_load(&s->pid), child_state_name(state), atomic_load(&s->tasks_done),
                 db == DBS_UP ? "up" : db == DBS_DOWN ? "down" : "none", "",
                 db == DBS_UP && opened ? (double)(now - opened) / 1000.0 : 0.0,
                 atomic_load(&s->reconnects), task);
    }
}

/* "ready" once a child can take work, as Celery logs it once its pool is up. */
static void maybe_log_ready(struct master *m)
{
    if (m->ready_logged)
        return;
    for (int i = 0; i < (int)m->sb.n; i++) {
        int state = atomic_load(&m->sb.slots[i].state);
        if (state == CHILD_IDLE || state == CHILD_BUSY) {
            log_info("%s ready.", m->cfg->node_name);
            m->ready_logged = true;
            /* From here on the master only waits, reaps and forks: the
             * library pages touched at start-up are not needed resident. */
            long kb = trim_clean_file_pages();
            log_debug("master released %ld KiB of start-up library pages", kb);
            return;
        }
    }
}

/* Backstop for hard time limits: a child normally kills itself from its timer
 * after cancelling its statement; one that cannot (signals blocked, wedged)
 * is killed here a little later. */
#define HARD_LIMIT_GRACE_MS 2000

static bool enforce_time_limits(struct master *m)
{
    bool any = false;
    int64_t now = time_mono_ms();
    for (int i = 0; i < (int)m->sb.n; i++) {
        struct child_entry *ce = &m->children[i];
        struct slot *s = &m->sb.slots[i];
        int64_t limit = atomic_load(&s->time_limit_ms), started = atomic_load(&s->task_started_ms);
        if (!ce->pid || !limit || !started)
            continue;
        any = true;
        if (!ce->killed_for_limit && now - started > limit + HARD_LIMIT_GRACE_MS) {
            log_error("child %d (pid %d) ignored its hard time limit; killing it", i,
                      (int)ce->pid);
            ce->killed_for_limit = true;
            kill(ce->pid, SIGKILL);
        }
    }
    return any;
}

static int supervise(struct master *m)
{
    for (;;) {
        struct pollfd p = {.fd = signals_wake_fd(), .events = POLLIN};
        bool limits = enforce_time_limits(m);
        bool fast = limits || reload_is_active(&m->reload) || !m->ready_logged;
        int timeout = service_timeout(&m->svc, next_timeout(m, fast ? 100 : 1000));
        if (poll(&p, 1, timeout) < 0 && errno != EINTR)
            log_error("poll failed: %s", strerror(errno));
        signals_drain();
        if (sig_status) {
            sig_status = 0;
            log_status(m);
        }
        maybe_log_ready(m);
        if (sig_reopen) {
            sig_reopen = 0;
            log_reopen_all();
        }
        sig_child = 0;
        sig_resize = 0;
        reap(m);
        if (sig_cold && !m->kill_sent) {
            log_warning("cold shutdown: killing %d children", alive_count(m));
            service_stopping(&m->svc, "cold shutdown");
            signal_children(m, SIGKILL);
            m->kill_sent = m->stop_sent = true;
        } else if (sig_stop && !m->stop_sent) {
            log_warning("warm shutdown: children finish their current task");
            service_stopping(&m->svc, "warm shutdown: children finish their current task");
            signal_children(m, SIGTERM);
            m->stop_sent = true;
        }
        if (sig_hup) {
            sig_hup = 0;
            /* systemd hears RELOADING=1 now and READY=1 again once every
             * child is up (service_tick), after a refused reload too */
            if (!m->stop_sent)
                service_reloading(&m->svc);
            if (!m->stop_sent && reload_begin(&m->reload, m->cfg, m->sb.n_tasks)) {
                if (m->control.pid > 0) {
                    m->control_reload = true;
                    kill(m->control.pid, SIGTERM);
                }
                /* it names the tasks from the library it was forked with */
                if (m->metrics.pid > 0)
                    kill(m->metrics.pid, SIGTERM);
            }
        }
        int r = m->stop_sent ? -1 : reload_next(&m->reload, &m->sb, pool_target(m));
        if (r >= 0 && m->children[r].pid > 0) {
            m->children[r].reloading = true;
            kill(m->children[r].pid, SIGTERM);
        }
        salvage_due(m);
        if (m->stop_sent) {
            if (!alive_count(m))
                return EXIT_OK; /* both were asked for */
            continue;
        }
        if (!m->ready_logged && none_can_serve(m)) {
            log_critical("no child could connect to its database; stopping");
            service_stopping(&m->svc, "no child could connect to its database");
            return EXIT_CANNOT_SERVE;
        }
        capacity_check(m);
        autoscale_tick(&m->autoscale, &m->sb);
        respawn_due(m);
        service_tick(&m->svc, &m->sb, pool_target(m));
    }
}

int master_run(struct worker_config *cfg)
{
    struct master m;
    memset(&m, 0, sizeof(m));
    m.cfg = cfg;
    int cap = cfg->max_concurrency > cfg->concurrency ? cfg->max_concurrency : cfg->concurrency;
    struct err why = {0};
    size_t n_tasks = reload_task_capacity(cfg->lib.n_tasks);
    int rc = scoreboard_create_named(&m.sb, (size_t)cap, n_tasks, cfg->node_name, &why);
    if (rc) {
        log_warning("%s; `celeriac status` will not see this worker", why.msg);
        rc = scoreboard_create(&m.sb, (size_t)cap, n_tasks);
    }
    if (rc) {
        log_critical("scoreboard mmap failed: %s", strerror(-rc));
        return EXIT_FAILED;
    }
    rc = signals_master_install();
    if (rc || pipe2(m.deathwatch, O_CLOEXEC)) {
        log_critical("signal setup failed: %s", strerror(rc ? -rc : errno));
        scoreboard_destroy(&m.sb);
        return EXIT_FAILED;
    }
    prctl(PR_SET_NAME, "celeriac:master", 0, 0, 0);
    proctitle_set("celeriac: master %s", cfg->node_name);
    m.sb.shared->pool_target = cfg->concurrency;
    scoreboard_queues_set(&m.sb, cfg->broker.queues, cfg->broker.n_queues); /* -Q is capped */
    if (cfg->statedb) {
        struct err e = {0};
        int loaded = statedb_load(cfg->statedb, &m.sb, &e);
        if (loaded < 0) {
            log_critical("%s", e.msg);
            scoreboard_destroy(&m.sb);
            return EXIT_USAGE;
        }
        if (loaded)
            log_info("%d revoked task id%s loaded from --statedb '%s'", loaded,
                     loaded == 1 ? "" : "s", cfg->statedb);
    }
    /* Before the first child, in a process of its own: the master holds no
     * connection, and strict mode refuses before anything starts. */
    if (spawn_budget_check(cfg, &m.sb, m.deathwatch)) {
        close(m.deathwatch[0]);
        close(m.deathwatch[1]);
        scoreboard_destroy(&m.sb);
        return EXIT_USAGE;
    }
    m.sb.shared->events_enabled = cfg->task_events;
    m.sb.shared->started = time_now();
    m.children = xcalloc(m.sb.n, sizeof(*m.children));
    for (size_t i = 0; i < m.sb.n; i++)
        backoff_init(&m.children[i].respawn, cfg->respawn_base_ms, cfg->respawn_cap_ms);
    backoff_init(&m.control.respawn, cfg->respawn_base_ms, cfg->respawn_cap_ms);
    backoff_init(&m.metrics.respawn, cfg->respawn_base_ms, cfg->respawn_cap_ms);
    log_follow_generation(&m.sb.shared->log_gen);
    service_init(&m.svc, m.sb.n);
    reload_init(&m.reload, m.sb.n);
    autoscale_init(&m.autoscale, cfg);
    respawn_due(&m); /* forks the pool and the control process */
    int code = supervise(&m);
    if (code == EXIT_OK)
        log_info("worker stopped");
    close(m.deathwatch[0]);
    close(m.deathwatch[1]);
    free(m.children);
    service_release(&m.svc);
    log_follow_generation(NULL);
    reload_release(&m.reload);
    scoreboard_destroy(&m.sb);
    return code;
}
