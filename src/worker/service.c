/* SPDX-License-Identifier: MIT
 * worker/service.c: systemd notifications from the master (see service.h).
 * The master stays connection-free: what it reports comes from the
 * scoreboard the children write.
 */
#include "common.h"
#include "util/sdnotify.h"
#include "util/time.h"
#include "worker/service.h"

#include <time.h>

#define STATUS_EVERY_MS 2000

void service_init(struct service *s, size_t n)
{
    memset(s, 0, sizeof(*s));
    s->enabled = sdnotify_enabled();
    if (!s->enabled)
        return;
    uint64_t usec = sdnotify_watchdog_usec();
    if (usec) {
        s->watchdog_ms = (int64_t)(usec / 2000);
        if (s->watchdog_ms < 1)
            s->watchdog_ms = 1;
    }
    s->n = n;
    s->seen_pid = xcalloc(n, sizeof(*s->seen_pid));
    s->seen_done = xcalloc(n, sizeof(*s->seen_done));
    s->last_up = -1;
}

void service_release(struct service *s)
{
    free(s->seen_pid);
    free(s->seen_done);
    s->seen_pid = NULL;
    s->seen_done = NULL;
}

/* Tasks done since the start: the live children's counts plus those of
 * children that left (a slot's count starts again at 0 with a new child). */
static uint64_t tasks_done(struct service *s, const struct scoreboard *sb)
{
    uint64_t live = 0;
    for (size_t i = 0; i < s->n && i < sb->n; i++) {
        int pid = atomic_load(&sb->slots[i].pid);
        uint64_t done = atomic_load(&sb->slots[i].tasks_done);
        if (pid != s->seen_pid[i]) {
            s->done_before += s->seen_done[i];
            s->seen_pid[i] = pid;
            s->seen_done[i] = 0;
        }
        if (pid && done >= s->seen_done[i])
            s->seen_done[i] = done;
        live += s->seen_done[i];
    }
    return s->done_before + live;
}

void service_tick(struct service *s, const struct scoreboard *sb, int target)
{
    if (!s->enabled)
        return;
    int64_t now = time_mono_ms();
    /* Also while stopping: a warm shutdown may take TimeoutStopSec. */
    if (s->watchdog_ms && now >= s->next_watchdog_ms) {
        sdnotify_send("WATCHDOG=1");
        s->next_watchdog_ms = now + s->watchdog_ms;
    }
    if (s->stopping_sent)
        return;
    int up = 0, db_up = 0, db_down = 0;
    for (int i = 0; i < target && i < (int)sb->n; i++) {
        const struct slot *slot = &sb->slots[i];
        int state = atomic_load(&slot->state), db = atomic_load(&slot->db_state);
        if (!atomic_load(&slot->pid))
            continue;
        if (state == CHILD_IDLE || state == CHILD_BUSY)
            up++;
        db_up += db == DBS_UP;
        db_down += db == DBS_DOWN;
    }
    /* Ready: every wanted child serves and none waits for its database. */
    int serving = 0;
    for (int i = 0; i < target && i < (int)sb->n; i++) {
        const struct slot *slot = &sb->slots[i];
        int state = atomic_load(&slot->state);
        serving += atomic_load(&slot->pid) && (state == CHILD_IDLE || state == CHILD_BUSY) &&
                   atomic_load(&slot->db_state) != DBS_DOWN;
    }
    char status[sizeof(s->last_status)];
    const char *db = db_up + db_down == 0 ? "none" : db_down ? "connecting" : "up";
    snprintf(status, sizeof(status), "%d/%d children up, database %s (%d/%d connected), "
             "%" PRIu64 " tasks done", up, target, db, db_up, target, tasks_done(s, sb));
    if (!s->ready_sent && target > 0 && serving == target) {
        char msg[sizeof(status) + 32];
        snprintf(msg, sizeof(msg), "READY=1\nSTATUS=%s", status);
        sdnotify_send(msg);
        s->ready_sent = true;
        snprintf(s->last_status, sizeof(s->last_status), "%s", status);
        s->last_up = up;
        s->next_status_ms = now + STATUS_EVERY_MS;
    } else if (strcmp(status, s->last_status) &&
               (now >= s->next_status_ms || up != s->last_up)) {
        char msg[sizeof(status) + 16];
        snprintf(msg, sizeof(msg), "STATUS=%s", status);
        sdnotify_send(msg);
        snprintf(s->last_status, sizeof(s->last_status), "%s", status);
        s->last_up = up;
        s->next_status_ms = now + STATUS_EVERY_MS;
    }
}

int service_timeout(const struct service *s, int timeout_ms)
{
    if (!s->enabled || !s->watchdog_ms)
        return timeout_ms;
    int64_t left = s->next_watchdog_ms - time_mono_ms();
    if (left < 0)
        left = 0;
    return left < timeout_ms ? (int)left : timeout_ms;
}

void service_stopping(struct service *s, const char *why)
{
    if (!s->enabled || s->stopping_sent)
        return;
    char msg[200];
    snprintf(msg, sizeof(msg), "STOPPING=1\nSTATUS=%s", why);
    sdnotify_send(msg);
    s->stopping_sent = true;
}

void service_reloading(struct service *s)
{
    if (!s->enabled || s->stopping_sent)
        return;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    char msg[128];
    snprintf(msg, sizeof(msg), "RELOADING=1\nMONOTONIC_USEC=%" PRIu64 "\nSTATUS=reloading",
             (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u);
    sdnotify_send(msg);
    s->ready_sent = false;
}
