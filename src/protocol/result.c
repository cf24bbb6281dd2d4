/* SPDX-License-Identifier: MIT
 * protocol/result.c: encoding the result meta (see result.h).
 */
#include "common.h"
#include "protocol/message.h"
#include "protocol/result.h"
#include "util/buf.h"
#include "util/time.h"

enum serializer result_serializer_pick(enum result_serializer choice, enum serializer arrived_in)
{
    switch (choice) {
    case RESULT_SERIALIZER_MSGPACK:
        return SERIALIZER_MSGPACK;
    case RESULT_SERIALIZER_AUTO:
        return arrived_in;
    case RESULT_SERIALIZER_JSON:
        break;
    }
    return SERIALIZER_JSON;
}

static json_t *string_or_null(const char *s)
{
    json_t *v = s ? json_string(s) : NULL;
    return v ? v : json_null();
}

bool result_state_is_ready(const char *status)
{
    return !strcmp(status, "SUCCESS") || !strcmp(status, "FAILURE") || !strcmp(status, "REVOKED");
}

bool result_state_is_exception(const char *status)
{
    return !strcmp(status, "FAILURE") || !strcmp(status, "RETRY") || !strcmp(status, "REVOKED");
}

bool result_meta_traceback(struct buf *out, const struct result_meta *m)
{
    if (m->traceback) {
        buf_adds(out, m->traceback);
        return true;
    }
    if (strcmp(m->status, "FAILURE"))
        return false;
    /* Celery stores the formatted traceback with every failure; clients
     * print it (AsyncResult.traceback), so it is never null. */
    message_traceback(out, m->result, m->task_name, m->task_id);
    return true;
}

/* The meta as an object whose keys are in the order Python writes them
 * (jansson keeps insertion order); date_done is naive UTC like Celery 5.2. */
static json_t *result_meta_object(const struct result_meta *m)
{
    bool ready = result_state_is_ready(m->status);
    json_t *o = json_object();
    json_object_set_new(o, "status", string_or_null(m->status));
    json_object_set(o, "result", m->result ? m->result : json_null());
    struct buf tb = BUF_INIT;
    bool has_tb = result_meta_traceback(&tb, m);
    json_object_set_new(o, "traceback", has_tb ? string_or_null(tb.data) : json_null());
    buf_release(&tb);
    json_object_set_new(o, "children", m->children ? json_incref(m->children) : json_array());
    json_t *done = json_null();
    if (ready) {
        struct buf when = BUF_INIT;
        time_format_iso(&when, time_now(), false);
        done = string_or_null(when.data);
        buf_release(&when);
    }
    json_object_set_new(o, "date_done", done);
    if (m->group_id)
        json_object_set_new(o, "group_id", string_or_null(m->group_id));
    if (m->parent_id)
        json_object_set_new(o, "parent_id", string_or_null(m->parent_id));
    json_object_set_new(o, "task_id", string_or_null(m->task_id));
    return o;
}

void result_meta_encode(struct buf *out, const struct result_meta *m, enum serializer s)
{
    json_t *o = result_meta_object(m);
    if (s == SERIALIZER_MSGPACK) {
        serializer_dump(out, s, o);
        json_decref(o);
        return;
    }
    /* Python's separators at the top level, as this meta was always written */
    const char *key;
    json_t *v;
    const char *sep = "{";
    json_object_foreach(o, key, v) {
        buf_adds(out, sep);
        buf_addch(out, '"');
        buf_adds(out, key); /* our own key names: nothing to escape */
        buf_add(out, "\": ", 3);
        serializer_dump(out, s, v);
        sep = ", ";
    }
    buf_addch(out, '}');
    json_decref(o);
}


void result_reply_encode(struct buf *out, const struct result_meta *m, enum serializer s)
{
    json_t *meta = result_meta_object(m);
    json_t *o = json_object();
    json_object_set_new(o, "task_id", string_or_null(m->task_id));
    static const char *const keys[] = {"status", "result", "traceback", "children"};
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        json_object_set(o, keys[i], json_object_get(meta, keys[i]));
    json_decref(meta);
    serializer_dump(out, s, o);
    json_decref(o);
}
