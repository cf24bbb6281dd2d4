/* SPDX-License-Identifier: MIT
 * control/process.c: the control process's loop: listen to the node's
 * pidbox on the broker's bus, answer requests, beat the heart, reconnect
 * with backoff.
 */
#include "common.h"
#include "broker/bus.h"
#include "control/events.h"
#include "control/pidbox.h"
#include "control/process.h"
#include "util/backoff.h"
#include "util/buf.h"
#include "util/log.h"
#include "util/proctitle.h"
#include "util/retry.h"
#include "util/time.h"
#include "worker/config.h"
#include "worker/scoreboard.h"
#include "worker/signals.h"

#include <math.h>
#include <poll.h>
#include <sys/prctl.h>

#define HEARTBEAT_MS 2000
/* How often the worker says it is alive (bus.h; on Redis a key that
 * expires after BROKER_ALIVE_TTL_S). */
#define ALIVE_REFRESH_MS 5000

struct control {
    const struct worker_config *cfg;
    struct scoreboard *sb;
    int deathwatch_fd;
    struct bus bus;                /* pidbox requests, replies and events */
    struct event_sender events;
    struct pidbox pidbox;
    bool online_sent;
};

static bool master_gone(struct control *c)
{
    struct pollfd p = {.fd = c->deathwatch_fd, .events = POLLIN};
    return poll(&p, 1, 0) > 0;
}

static json_t *worker_fields(struct control *c, bool full)
{
    if (!full) /* the heartbeat command's reduced form, as Celery's */
        return json_pack("{s:f, s:s, s:s, s:s}", "freq", 5.0, "sw_ident", "celeriac", "sw_ver",
                         CELERIAC_VERSION, "sw_sys", "Linux");
    int active = 0;
    uint64_t processed = 0;
    for (size_t i = 0; i < c->sb->n; i++) {
        struct slot *s = &c->sb->slots[i];
        active += atomic_load(&s->pid) && atomic_load(&s->state) == CHILD_BUSY;
    }
    for (size_t i = 0; i < c->sb->n_tasks; i++)
        processed += atomic_load(&c->sb->shared->tasks[i].total);
    double load[3] = {0, 0, 0};
    if (getloadavg(load, 3) < 0)
        load[0] = load[1] = load[2] = 0;
    for (int i = 0; i < 3; i++) /* Celery rounds up to two decimals */
        load[i] = ceil(load[i] * 100.0) / 100.0;
    return json_pack("{s:f, s:i, s:I, s:[f, f, f], s:s, s:s, s:s}", "freq",
                     (double)HEARTBEAT_MS / 1000.0, "active", active, "processed",
                     (json_int_t)processed, "loadavg", load[0], load[1], load[2], "sw_ident",
                     "celeriac", "sw_ver", CELERIAC_VERSION, "sw_sys", "Linux");
}

ATTR_NORETURN static void leave(struct control *c)
{
    if (c->online_sent && c->bus.ops->is_open(&c->bus)) {
        event_send(&c->events, "worker-offline", worker_fields(c, true));
        struct err e = {0};
        c->bus.ops->flush(&c->bus, &e);
    }
    c->bus.ops->release(&c->bus);
    _exit(EXIT_OK);
}

void control_main(const struct worker_config *cfg, struct scoreboard *sb, int deathwatch_fd)
{
    struct control c;
    memset(&c, 0, sizeof(c));
    c.cfg = cfg;
    c.sb = sb;
    c.deathwatch_fd = deathwatch_fd;
    log_set_process("ControlProcess");
    prctl(PR_SET_NAME, "celeriac:control", 0, 0, 0);
    proctitle_set("celeriac: control");
    prctl(PR_SET_PDEATHSIG, SIGTERM, 0, 0, 0);
    bus_init(&c.bus, &cfg->broker, cfg->node_name);
    pid_t master = getppid();
    c.events = (struct event_sender){.bus = &c.bus, .sb = sb, .hostname = cfg->node_name,
                                     .master_pid = master};
    c.pidbox = (struct pidbox){.cfg = cfg, .sb = sb, .bus = &c.bus, .events = &c.events,
                               .master_pid = master};
    struct retry connecting;
    retry_init(&connecting, 200, 10000, "remote control: connecting to the broker");
    int64_t next_beat = 0, next_alive = 0;

    while (!sig_stop && !master_gone(&c)) {
        struct err e = {0};
        if (!c.bus.ops->is_open(&c.bus)) {
            if (c.bus.ops->open(&c.bus, &e)) {
                c.bus.ops->close(&c.bus, NULL);
                retry_wait(&connecting, LOG_ERROR, &e, &sig_stop);
                continue;
            }
            retry_succeeded(&connecting);
            next_alive = 0; /* advertise at once on a new connection */
            if (!c.cfg->without_heartbeat && !c.online_sent) {
                event_send(&c.events, "worker-online", worker_fields(&c, true));
                c.online_sent = true;
            }
        }
        int64_t now = time_mono_ms();
        if (now >= next_alive) {
            if (c.bus.ops->alive(&c.bus, master, &e) == E_PROTOCOL)
                log_warning("advertising this worker alive failed: %s", e.msg);
            next_alive = now + ALIVE_REFRESH_MS;
        }
        if (!c.cfg->without_heartbeat && (now >= next_beat || c.pidbox.heartbeat_requested)) {
            event_send(&c.events, "worker-heartbeat",
                       worker_fields(&c, !c.pidbox.heartbeat_requested || now >= next_beat));
            c.pidbox.heartbeat_requested = false;
            next_beat = now + HEARTBEAT_MS;
            c.bus.ops->flush(&c.bus, &e);
        }
        pidbox_escalate(&c.pidbox);
        log_follow_reopen();
        /* Without heartbeats there is no beat to wake for: wait the full
         * second (it bounds how late a stop or a gone master is noticed). */
        int wait = c.cfg->without_heartbeat ? 1000 : (int)(next_beat - time_mono_ms());
        struct buf request = BUF_INIT;
        int got = c.bus.ops->next(&c.bus, wait < 0 ? 0 : wait > 1000 ? 1000 : wait, &request, &e);
        if (got > 0)
            pidbox_handle(&c.pidbox, request.data, request.len);
        buf_release(&request);
        if (got <= 0)
            continue;
        if (c.pidbox.shutdown_requested) {
            log_warning("shutdown requested by remote control");
            kill(master, SIGTERM);
            c.pidbox.shutdown_requested = false;
        }
    }
    leave(&c);
}
