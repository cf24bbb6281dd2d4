/* SPDX-License-Identifier: MIT
 * control/process.c: the control process's loop: subscribe to the pidbox
 * channel, answer requests, beat the heart, reconnect with backoff.
 */
#include "common.h"
#include "control/events.h"
#include "control/pidbox.h"
#include "control/process.h"
#include "util/backoff.h"
#include "util/buf.h"
#include "util/log.h"
#include "util/redis_link.h"
#include "util/retry.h"
#include "util/time.h"
#include "worker/config.h"
#include "worker/scoreboard.h"
#include "worker/signals.h"

#include <math.h>
#include <poll.h>
#include <sys/prctl.h>

#define HEARTBEAT_MS 2000
/* How often the worker's alive key (broker/redis.h) is refreshed; it
 * expires after BROKER_ALIVE_TTL_S. */
#define ALIVE_REFRESH_MS 5000

struct control {
    const struct worker_config *cfg;
    struct scoreboard *sb;
    int deathwatch_fd;
    struct redis_link sub;         /* SUBSCRIBEd to the pidbox channel */
    struct redis_link cmd;         /* replies and events */
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

static int connect_links(struct control *c, struct err *e)
{
    if (redis_link_open(&c->cmd, &c->cfg->broker.url, e) ||
        redis_link_open(&c->sub, &c->cfg->broker.url, e))
        return E_CONN_LOST;
    /* Advertise the node as kombu does (informational) and listen. */
    redisReply *r;
    struct buf member = BUF_INIT, channel = BUF_INIT;
    buf_addf(&member, "\x06\x16\x06\x16%s.celery.pidbox", c->cfg->node_name);
    buf_addf(&channel, "/%d.celery.pidbox", c->cfg->broker.url.db);
    r = redis_link_command(&c->cmd, e, "SADD _kombu.binding.celery.pidbox %b", member.data,
                           member.len);
    if (r) {
        freeReplyObject(r);
        r = redis_link_command(&c->sub, e, "SUBSCRIBE %s", channel.data);
    }
    buf_release(&member);
    buf_release(&channel);
    if (!r)
        return E_CONN_LOST;
    freeReplyObject(r);
    return 0;
}

/* Waits up to timeout_ms for one pub/sub message; 1 = got one (in *out), 0 =
 * timeout, E_CONN_LOST. */
static int next_message(struct control *c, int timeout_ms, redisReply **out)
{
    void *reply = NULL;
    if (redisGetReplyFromReader(c->sub.ctx, &reply) != REDIS_OK)
        goto out_lost;
    if (!reply) {
        struct pollfd p = {.fd = c->sub.ctx->fd, .events = POLLIN};
        int n = poll(&p, 1, timeout_ms);
        if (n <= 0)
            return 0;
        if (redisBufferRead(c->sub.ctx) != REDIS_OK ||
            redisGetReplyFromReader(c->sub.ctx, &reply) != REDIS_OK)
            goto out_lost;
        if (!reply)
            return 0;
    }
    *out = reply;
    return 1;

out_lost:
    redis_link_close(&c->sub, c->sub.ctx && c->sub.ctx->errstr[0] ? c->sub.ctx->errstr : "lost");
    return E_CONN_LOST;
}

ATTR_NORETURN static void leave(struct control *c)
{
    if (c->online_sent && redis_link_is_open(&c->cmd)) {
        event_send(&c->events, "worker-offline", worker_fields(c, true));
        struct err e = {0};
        redis_link_drain(&c->cmd, &e);
    }
    redis_link_close(&c->sub, NULL);
    redis_link_close(&c->cmd, NULL);
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
    prctl(PR_SET_PDEATHSIG, SIGTERM, 0, 0, 0);
    redis_link_init(&c.sub, "control");
    redis_link_init(&c.cmd, "control");
    pid_t master = getppid();
    c.events = (struct event_sender){.link = &c.cmd, .sb = sb, .hostname = cfg->node_name,
                                     .db = cfg->broker.url.db, .master_pid = master};
    c.pidbox = (struct pidbox){.cfg = cfg, .sb = sb, .cmd = &c.cmd, .events = &c.events,
                               .master_pid = master};
    struct retry connecting;
    retry_init(&connecting, 200, 10000, "remote control: connecting to the broker");
    int64_t next_beat = 0, next_alive = 0;

    while (!sig_stop && !master_gone(&c)) {
        struct err e = {0};
        if (!redis_link_is_open(&c.sub) || !redis_link_is_open(&c.cmd)) {
            if (connect_links(&c, &e)) {
                redis_link_close(&c.sub, NULL);
                redis_link_close(&c.cmd, NULL);
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
            if (broker_redis_advertise_alive(&c.cmd, cfg->node_name, master, BROKER_ALIVE_TTL_S,
                                             &e) == E_PROTOCOL)
                log_warning("advertising this worker alive failed: %s", e.msg);
            next_alive = now + ALIVE_REFRESH_MS;
        }
        if (!c.cfg->without_heartbeat && (now >= next_beat || c.pidbox.heartbeat_requested)) {
            event_send(&c.events, "worker-heartbeat",
                       worker_fields(&c, !c.pidbox.heartbeat_requested || now >= next_beat));
            c.pidbox.heartbeat_requested = false;
            next_beat = now + HEARTBEAT_MS;
            redis_link_drain(&c.cmd, &e);
        }
        pidbox_escalate(&c.pidbox);
        /* Without heartbeats there is no beat to wake for: wait the full
         * second (it bounds how late a stop or a gone master is noticed). */
        int wait = c.cfg->without_heartbeat ? 1000 : (int)(next_beat - time_mono_ms());
        redisReply *r = NULL;
        int got = next_message(&c, wait < 0 ? 0 : wait > 1000 ? 1000 : wait, &r);
        if (got <= 0)
            continue;
        if (r->type == REDIS_REPLY_ARRAY && r->elements == 3 &&
            r->element[0]->type == REDIS_REPLY_STRING && !strcmp(r->element[0]->str, "message") &&
            r->element[2]->type == REDIS_REPLY_STRING)
            pidbox_handle(&c.pidbox, r->element[2]->str, r->element[2]->len);
        freeReplyObject(r);
        if (c.pidbox.shutdown_requested) {
            log_warning("shutdown requested by remote control");
            kill(master, SIGTERM);
            c.pidbox.shutdown_requested = false;
        }
    }
    leave(&c);
}
