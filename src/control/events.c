/* SPDX-License-Identifier: MIT
 * control/events.c: encoding and publishing Celery events (see events.h).
 */
#include "common.h"
#include "control/events.h"
#include "broker/bus.h"
#include "protocol/message.h"
#include "util/buf.h"
#include "util/time.h"
#include "worker/scoreboard.h"

#include <time.h>

bool events_task_enabled(const struct event_sender *s)
{
    return s->bus && atomic_load(&s->sb->shared->events_enabled) != 0;
}

/* Hours west of UTC, as Python's time.timezone // 3600. */
static int utcoffset_hours(void)
{
    time_t now = time(NULL);
    struct tm local;
    localtime_r(&now, &local);
    return (int)(-local.tm_gmtoff / 3600);
}

int event_send(struct event_sender *s, const char *type, json_t *fields)
{
    if (!s->bus || (!strncmp(type, "task-", 5) && !events_task_enabled(s))) {
        json_decref(fields);
        return 0;
    }
    json_object_set_new(fields, "hostname", json_string(s->hostname));
    json_object_set_new(fields, "utcoffset", json_integer(utcoffset_hours()));
    json_object_set_new(fields, "pid", json_integer(s->master_pid));
    json_object_set_new(fields, "clock", json_integer((json_int_t)scoreboard_clock(s->sb, 0)));
    json_object_set_new(fields, "timestamp", json_real(time_now()));
    json_object_set_new(fields, "type", json_string(type));
    char *body = json_dumps(fields, JSON_COMPACT);
    json_decref(fields);

    /* Routing key: the type with '-' turned into '.'. */
    char rk[64];
    snprintf(rk, sizeof(rk), "%s", type);
    for (char *p = rk; *p; p++)
        if (*p == '-')
            *p = '.';
    json_t *headers = json_pack("{s:s}", "hostname", s->hostname);
    int rc = s->bus->ops->event(s->bus, rk, body ? body : "{}", headers);
    json_decref(headers);
    free(body);
    return rc;
}

void events_task(struct event_sender *s, const char *type, const struct message *m, json_t *fields)
{
    if (!events_task_enabled(s)) {
        json_decref(fields);
        return;
    }
    json_object_set_new(fields, "uuid", json_string(m->task_id));
    event_send(s, type, fields);
}

void events_task_received(struct event_sender *s, const struct message *m)
{
    if (!events_task_enabled(s))
        return;
    char *args = json_dumps(m->args, JSON_COMPACT | JSON_ENCODE_ANY);
    char *kwargs = json_dumps(m->kwargs, JSON_COMPACT);
    struct buf eta = BUF_INIT, expires = BUF_INIT;
    if (m->eta > 0)
        time_format_iso(&eta, m->eta, true);
    if (m->expires > 0)
        time_format_iso(&expires, m->expires, true);
    /* Celery sends the sender's repr (argsrepr); a C client's JSON otherwise. */
    json_t *f = json_pack("{s:s, s:s, s:s, s:s?, s:s?, s:i, s:s?, s:s?}", "name", m->task_name,
                          "args", m->argsrepr ? m->argsrepr : args ? args : "[]", "kwargs",
                          m->kwargsrepr ? m->kwargsrepr : kwargs ? kwargs : "{}", "root_id",
                          m->root_id, "parent_id", m->parent_id, "retries", m->retries, "eta",
                          eta.len ? eta.data : NULL, "expires", expires.len ? expires.data : NULL);
    free(args);
    free(kwargs);
    buf_release(&eta);
    buf_release(&expires);
    events_task(s, "task-received", m, f);
}
