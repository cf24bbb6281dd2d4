/* SPDX-License-Identifier: MIT
 * control/events.c: encoding and publishing Celery events (see events.h).
 */
#include "common.h"
#include "control/events.h"
#include "protocol/message.h"
#include "util/base64.h"
#include "util/buf.h"
#include "util/redis_link.h"
#include "util/time.h"
#include "util/uuid.h"
#include "worker/scoreboard.h"

#include <time.h>

void envelope_encode(struct buf *out, const char *body_json, json_t *headers, const char *exchange,
                     const char *routing_key, int delivery_mode)
{
    char tag[UUID_STR_LEN];
    uuid_generate(tag);
    struct buf b64 = BUF_INIT;
    base64_encode(&b64, body_json, strlen(body_json));
    json_t *env = json_pack("{s:s, s:s, s:s, s:O, s:{s:i, s:{s:s, s:s}, s:i, s:s, s:s}}", "body",
                            b64.data, "content-encoding", "utf-8", "content-type",
                            "application/json", "headers", headers ? headers : json_object(),
                            "properties", "delivery_mode", delivery_mode, "delivery_info",
                            "exchange", exchange, "routing_key", routing_key, "priority", 0,
                            "body_encoding", "base64", "delivery_tag", tag);
    buf_release(&b64);
    char *text = json_dumps(env, JSON_COMPACT);
    buf_adds(out, text);
    free(text);
    json_decref(env);
}

bool events_task_enabled(const struct event_sender *s)
{
    return s->link && atomic_load(&s->sb->shared->events_enabled) != 0;
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
    if (!s->link || (!strncmp(type, "task-", 5) && !events_task_enabled(s))) {
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
    struct buf env = BUF_INIT, channel = BUF_INIT;
    envelope_encode(&env, body ? body : "{}", headers, "celeryev", rk, 1);
    json_decref(headers);
    free(body);
    buf_addf(&channel, "/%d.celeryev/%s", s->db, rk);
    const char *argv[] = {"PUBLISH", channel.data, env.data};
    size_t lens[] = {7, channel.len, env.len};
    int rc = redis_link_send_argv(s->link, 3, argv, lens);
    buf_release(&env);
    buf_release(&channel);
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
