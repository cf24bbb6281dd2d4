/* SPDX-License-Identifier: MIT
 * client/envelope.c: the task message a send publishes (kombu's JSON
 * envelope around a Celery v2 body), shared by the core client (client.c)
 * and its SQL part (sql.c, outbox.c); each library carries its own copy.
 */
#include "common.h"
#include "celeriac_client.h"
#include "client/client_internal.h"
#include "protocol/message.h"
#include "util/buf.h"
#include "util/time.h"

#include <jansson.h>

static void set_err(char *err, size_t errlen, const char *msg)
{
    if (err && errlen)
        snprintf(err, errlen, "%s", msg);
}

static json_t *parse_json(const char *text, bool want_array, char *err, size_t errlen)
{
    json_error_t je;
    json_t *v = json_loads(text, 0, &je);
    if (!v || (want_array ? !json_is_array(v) : !json_is_object(v))) {
        char msg[300];
        snprintf(msg, sizeof(msg), "%s is not a JSON %s: %s", want_array ? "args" : "kwargs",
                 want_array ? "array" : "object", v ? "wrong type" : je.text);
        set_err(err, errlen, msg);
        json_decref(v);
        return NULL;
    }
    return v;
}

int client_task_envelope(struct buf *env, const char *name, const char *args_json,
                         const char *kwargs_json, const struct celeriac_send_options *o,
                         char id[37], char *err, size_t errlen)
{
    json_t *args = args_json ? parse_json(args_json, true, err, errlen) : json_array();
    json_t *kwargs = kwargs_json ? parse_json(kwargs_json, false, err, errlen) : json_object();
    if (!args || !kwargs) {
        json_decref(args);
        json_decref(kwargs);
        return -1;
    }
    double now = time_now();
    struct task_send t = {
        .name = name, .id = o->task_id, .queue = o->queue, .args = args, .kwargs = kwargs,
        .eta = o->eta > 0 ? o->eta : o->countdown > 0 ? now + o->countdown : 0,
        .expires = o->expires > 0 ? now + o->expires : 0,
        .priority = o->priority < 0 ? 0 : o->priority > 9 ? 9 : o->priority,
        .time_limit = o->time_limit, .soft_time_limit = o->soft_time_limit,
        .ignore_result = o->ignore_result,
    };
    if (!o->task_id) {
        /* The id must be known before publishing to subscribe first. */
        message_encode_task(env, &t, id);
    } else {
        snprintf(id, 37, "%s", o->task_id);
        message_encode_task(env, &t, NULL);
    }
    json_decref(args);
    json_decref(kwargs);
    return 0;
}

