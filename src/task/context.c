/* SPDX-License-Identifier: MIT
 * task/context.c: the public task API (every celeriac_* function a library
 * calls) over one task's context (see context.h). Argument accessors record a
 * TypeError like Python's when an argument is missing or of the wrong type.
 */
#include "common.h"
#include "db/conn.h"
#include "protocol/message.h"
#include "protocol/pyjson.h"
#include "task/context.h"
#include "util/log.h"

#include <math.h>

#define CELERIAC_API __attribute__((visibility("default")))

/* ---- arena: chunks freed at task end; the first is kept for the next task */

struct arena_chunk {
    struct arena_chunk *next;
    size_t size;                 /* usable bytes after the header */
    size_t used;
    max_align_t data[];
};

#define ARENA_CHUNK_MIN 4096

static void arena_reset(struct celeriac_task *t, bool keep_first)
{
    struct arena_chunk *c = t->chunks, *keep = NULL;
    while (c) {
        struct arena_chunk *next = c->next;
        if (keep_first && !next && c->size == ARENA_CHUNK_MIN) {
            keep = c;
            keep->used = 0;
        } else {
            free(c);
        }
        c = next;
    }
    t->chunks = keep;
    if (keep)
        keep->next = NULL;
}

CELERIAC_API void *celeriac_alloc(struct celeriac_task *task, size_t size)
{
    const size_t align = sizeof(max_align_t);
    size = (size + align - 1) / align * align;
    struct arena_chunk *c = task->chunks;
    if (!c || c->size - c->used < size) {
        size_t cap = size > ARENA_CHUNK_MIN ? size : ARENA_CHUNK_MIN;
        c = xmalloc(sizeof(*c) + cap);
        c->size = cap;
        c->used = 0;
        c->next = task->chunks;
        task->chunks = c;
    }
    void *p = (char *)c->data + c->used;
    c->used += size;
    return p;
}

/* ---- lifecycle */

volatile sig_atomic_t task_soft_limit_hit;

void task_context_init(struct celeriac_task *t, struct celeriac_process *proc)
{
    memset(t, 0, sizeof(*t));
    t->proc = proc;
    buf_init(&t->exc_message);
}

void task_context_release(struct celeriac_task *t)
{
    json_decref(t->result);
    t->result = NULL;
    buf_release(&t->exc_message);
    arena_reset(t, false);
}

void task_context_begin(struct celeriac_task *t, const struct message *msg)
{
    json_decref(t->result);
    t->result = NULL;
    t->failed = false;
    t->db_failure = false;
    t->retry = false;
    t->exc_type[0] = '\0';
    buf_reset(&t->exc_message);
    arena_reset(t, true);
    t->msg = msg;
    task_soft_limit_hit = 0;
}

static void set_failure(struct celeriac_task *t, const char *exc_type, const char *fmt,
                        va_list ap)
{
    t->failed = true;
    snprintf(t->exc_type, sizeof(t->exc_type), "%s", exc_type);
    buf_reset(&t->exc_message);
    buf_vaddf(&t->exc_message, fmt, ap);
}

static int fail(struct celeriac_task *t, const char *exc_type, const char *fmt, ...)
    ATTR_PRINTF(3, 4);
static int fail(struct celeriac_task *t, const char *exc_type, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    set_failure(t, exc_type, fmt, ap);
    va_end(ap);
    return CELERIAC_FAILED;
}

int task_context_run(struct celeriac_task *t, const struct celeriac_task_def *def)
{
    int rc = def->fn(t);
    if (t->retry)
        return CELERIAC_RETRY;
    if (rc == CELERIAC_OK && !t->failed)
        return CELERIAC_OK;
    if (!t->failed)
        fail(t, "RuntimeError", "task returned %d without a reason", rc);
    return CELERIAC_FAILED;
}

/* ---- arguments */

static json_t *find_arg(const struct celeriac_task *t, size_t index, const char *name)
{
    if (index < json_array_size(t->msg->args))
        return json_array_get(t->msg->args, index);
    return name ? json_object_get(t->msg->kwargs, name) : NULL;
}

static const char *json_type_name(const json_t *v)
{
    if (pyjson_is_special(v))
        return "float";
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "dict";
    case JSON_ARRAY:
        return "list";
    case JSON_STRING:
        return "str";
    case JSON_INTEGER:
        return "int";
    case JSON_REAL:
        return "float";
    case JSON_TRUE:
    case JSON_FALSE:
        return "bool";
    case JSON_NULL:
        return "NoneType";
    }
    return "object";
}

/* Finds the argument or records Python's "missing argument" TypeError. */
static json_t *require_arg(struct celeriac_task *t, size_t index, const char *name)
{
    json_t *v = find_arg(t, index, name);
    if (!v) {
        if (name)
            fail(t, "TypeError", "%s() missing required argument: '%s'", t->msg->task_name,
                 name);
        else
            fail(t, "TypeError", "%s() missing required positional argument %zu",
                 t->msg->task_name, index);
    }
    return v;
}

static int wrong_type(struct celeriac_task *t, size_t index, const char *name, const char *want,
                      const json_t *v)
{
    if (name)
        return fail(t, "TypeError", "%s() argument '%s' must be %s, not %s", t->msg->task_name,
                    name, want, json_type_name(v));
    return fail(t, "TypeError", "%s() argument %zu must be %s, not %s", t->msg->task_name, index,
                want, json_type_name(v));
}

CELERIAC_API size_t celeriac_argc(const struct celeriac_task *task)
{
    return json_array_size(task->msg->args);
}

CELERIAC_API bool celeriac_has_arg(const struct celeriac_task *task, size_t index,
                                   const char *name)
{
    return find_arg(task, index, name) != NULL;
}

CELERIAC_API int celeriac_arg_int(struct celeriac_task *task, size_t index, const char *name,
                                  int64_t *out)
{
    json_t *v = require_arg(task, index, name);
    if (!v)
        return CELERIAC_FAILED;
    if (json_is_integer(v)) {
        *out = json_integer_value(v);
        return CELERIAC_OK;
    }
    if (json_is_real(v)) {
        double d = json_real_value(v);
        if (d == floor(d) && d >= -9.2e18 && d <= 9.2e18) {
            *out = (int64_t)d;
            return CELERIAC_OK;
        }
    }
    return wrong_type(task, index, name, "int", v);
}

CELERIAC_API int celeriac_arg_double(struct celeriac_task *task, size_t index, const char *name,
                                     double *out)
{
    json_t *v = require_arg(task, index, name);
    if (!v)
        return CELERIAC_FAILED;
    if (!pyjson_number(v, out)) /* NaN and ±inf too, as Python's float() */
        return wrong_type(task, index, name, "float", v);
    return CELERIAC_OK;
}

CELERIAC_API int celeriac_arg_bool(struct celeriac_task *task, size_t index, const char *name,
                                   bool *out)
{
    json_t *v = require_arg(task, index, name);
    if (!v)
        return CELERIAC_FAILED;
    if (!json_is_boolean(v))
        return wrong_type(task, index, name, "bool", v);
    *out = json_is_true(v);
    return CELERIAC_OK;
}

CELERIAC_API int celeriac_arg_str(struct celeriac_task *task, size_t index, const char *name,
                                  const char **out, size_t *len)
{
    json_t *v = require_arg(task, index, name);
    if (!v)
        return CELERIAC_FAILED;
    if (!json_is_string(v) || pyjson_is_special(v))
        return wrong_type(task, index, name, "str", v);
    *out = json_string_value(v);
    if (len)
        *len = json_string_length(v);
    return CELERIAC_OK;
}

CELERIAC_API int celeriac_arg_json(struct celeriac_task *task, size_t index, const char *name,
                                   const char **out)
{
    json_t *v = require_arg(task, index, name);
    if (!v)
        return CELERIAC_FAILED;
    char *s = pyjson_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!s)
        return fail(task, "ValueError", "argument cannot be rendered as JSON");
    size_t n = strlen(s) + 1;
    char *copy = celeriac_alloc(task, n);
    memcpy(copy, s, n);
    free(s);
    *out = copy;
    return CELERIAC_OK;
}

/* ---- results */

static void set_result(struct celeriac_task *t, json_t *v)
{
    json_decref(t->result);
    t->result = v;
}

CELERIAC_API void celeriac_return_null(struct celeriac_task *task)
{
    set_result(task, NULL);
}

CELERIAC_API void celeriac_return_int(struct celeriac_task *task, int64_t value)
{
    set_result(task, json_integer(value));
}

CELERIAC_API void celeriac_return_double(struct celeriac_task *task, double value)
{
    set_result(task, pyjson_real(value));
}

CELERIAC_API void celeriac_return_bool(struct celeriac_task *task, bool value)
{
    set_result(task, json_boolean(value));
}

CELERIAC_API void celeriac_return_str(struct celeriac_task *task, const char *value, size_t len)
{
    if (len == (size_t)-1)
        len = strlen(value);
    json_t *v = json_stringn(value, len);
    if (!v) {
        /* not UTF-8: store it lossily rather than fail a finished task */
        char *copy = xstrndup(value, len);
        v = message_string_lossy(copy);
        free(copy);
    }
    set_result(task, v);
}

CELERIAC_API int celeriac_return_json(struct celeriac_task *task, const char *json)
{
    json_error_t jerr;
    json_t *v = pyjson_loadb(json, strlen(json), JSON_DECODE_ANY, &jerr);
    if (!v)
        return fail(task, "TypeError", "result is not valid JSON: %s", jerr.text);
    set_result(task, json_is_null(v) ? (json_decref(v), NULL) : v);
    return CELERIAC_OK;
}

CELERIAC_API int celeriac_fail(struct celeriac_task *task, const char *exc_type, const char *fmt,
                               ...)
{
    va_list ap;
    va_start(ap, fmt);
    set_failure(task, exc_type && *exc_type ? exc_type : "Exception", fmt, ap);
    va_end(ap);
    return CELERIAC_FAILED;
}

CELERIAC_API int celeriac_retry(struct celeriac_task *task,
                                const struct celeriac_retry_options *options, const char *exc_type,
                                const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    set_failure(task, exc_type && *exc_type ? exc_type : "Exception", fmt, ap);
    va_end(ap);
    static const struct celeriac_retry_options defaults;
    task->retry_options = options ? *options : defaults;
    int max = task->retry_options.max_retries ? task->retry_options.max_retries : 3;
    if (max >= 0 && task->msg->retries >= max) {
        /* No retry left: Celery re-raises the exception. */
        return CELERIAC_FAILED;
    }
    task->retry = true;
    return CELERIAC_RETRY;
}

CELERIAC_API int celeriac_fail_db(struct celeriac_task *task, const char *message)
{
    fail(task, "DatabaseError", "%s", message ? message : "database error");
    task->db_failure = true;
    return CELERIAC_FAILED;
}

/* ---- context */

CELERIAC_API const char *celeriac_task_id(const struct celeriac_task *task)
{
    return task->msg->task_id;
}

CELERIAC_API const char *celeriac_task_name(const struct celeriac_task *task)
{
    return task->msg->task_name;
}

CELERIAC_API int celeriac_task_retries(const struct celeriac_task *task)
{
    return task->msg->retries;
}

CELERIAC_API bool celeriac_soft_time_limit_exceeded(const struct celeriac_task *task)
{
    UNUSED(task);
    return task_soft_limit_hit != 0;
}

CELERIAC_API PGconn *celeriac_pg(struct celeriac_task *task)
{
    return db_conn_pg(task->proc->db);
}

CELERIAC_API sqlite3 *celeriac_sqlite(struct celeriac_task *task)
{
    return db_conn_sqlite(task->proc->db);
}

CELERIAC_API void celeriac_log(struct celeriac_task *task, int level, const char *fmt, ...)
{
    enum log_level lv = level >= 40 ? LOG_ERROR : level >= 30 ? LOG_WARNING : LOG_INFO;
    if (!log_enabled(lv))
        return;
    struct buf line = BUF_INIT;
    buf_addf(&line, "%s[%s]: ", task->msg->task_name, task->msg->task_id);
    va_list ap;
    va_start(ap, fmt);
    buf_vaddf(&line, fmt, ap);
    va_end(ap);
    log_write(lv, "%s", line.data);
    buf_release(&line);
}

/* ---- process hooks */

CELERIAC_API PGconn *celeriac_process_pg(struct celeriac_process *proc)
{
    return db_conn_pg(proc->db);
}

CELERIAC_API sqlite3 *celeriac_process_sqlite(struct celeriac_process *proc)
{
    return db_conn_sqlite(proc->db);
}

CELERIAC_API bool celeriac_process_db_pooled(const struct celeriac_process *proc)
{
    return proc->db && proc->db->pooled;
}

CELERIAC_API bool celeriac_db_pooled(const struct celeriac_task *task)
{
    return task->proc->db && task->proc->db->pooled;
}

CELERIAC_API int celeriac_process_index(const struct celeriac_process *proc)
{
    return proc->index;
}

CELERIAC_API void celeriac_set_process_data(struct celeriac_process *proc, void *data)
{
    proc->user_data = data;
}

CELERIAC_API void *celeriac_process_get_data(const struct celeriac_process *proc)
{
    return proc->user_data;
}

CELERIAC_API void *celeriac_process_data(struct celeriac_task *task)
{
    return task->proc->user_data;
}
