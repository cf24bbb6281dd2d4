/* SPDX-License-Identifier: MIT
 * worker/canvas.c: retries, callbacks, chains, groups and chords (see
 * canvas.h): every signature kind Celery's canvas sends is applied as
 * Celery's worker applies it; one nested past CANVAS_DEPTH_MAX or of an
 * unknown kind is refused with a FAILURE on its id, never dropped silently.
 */
#include "common.h"
#include "backend/backend.h"
#include "broker/broker.h"
#include "protocol/message.h"
#include "protocol/pyjson.h"
#include "protocol/serializer.h"
#include "util/buf.h"
#include "util/log.h"
#include "util/time.h"
#include "util/uuid.h"
#include "worker/canvas.h"

#include <math.h>


/* Sends t; when children is not NULL, appends the result tuple Celery
 * records for it ([[id, null], null], as AsyncResult.as_tuple()). */
static int publish(const struct canvas *cv, const struct task_send *t, json_t *children,
                   struct err *e)
{
    struct buf env = BUF_INIT;
    char id[UUID_STR_LEN];
    message_encode_task(&env, t, id);
    if (children)
        json_array_append_new(children, json_pack("[[s, n], n]", id));
    int rc = cv->broker->ops->publish(cv->broker, t->queue ? t->queue : "celery", t->priority,
                                      env.data, env.len, e);
    buf_release(&env);
    return rc;
}

int canvas_retry(const struct canvas *cv, const struct message *m, double eta, struct err *e)
{
    /* Back where it came from, as Celery's Task.signature_from_request:
     * through the default exchange to the queue its routing key names, or
     * through the exchange it came by, with the same routing key. */
    struct task_send t = {
        .name = m->task_name, .id = m->task_id, .queue = m->routing_key,
        .exchange = m->exchange, .reply_to = m->reply_to, .args = m->args,
        .kwargs = m->kwargs, .embed = m->embed, .eta = eta, .expires = m->expires,
        .retries = m->retries + 1, .priority = m->priority,
        .root_id = m->root_id ? m->root_id : m->task_id, .parent_id = m->task_id,
        .group = m->group, .group_index = m->group_index, .has_group_index = m->group_index >= 0,
        .time_limit = m->time_limit, .soft_time_limit = m->soft_time_limit,
        .ignore_result = m->ignore_result, .serializer = m->serializer,
    };
    return publish(cv, &t, NULL, e);
}

/* A list of signatures from a value that may be one signature or a list. */
static json_t *as_list(json_t *v)
{
    if (json_is_array(v))
        return json_incref(v);
    if (json_is_object(v))
        return json_pack("[O]", v);
    return json_array();
}

/* Stores FAILURE for a signature we will not apply, so nobody waits for it. */
static void refuse(const struct canvas *cv, const struct message *parent, json_t *sig,
                   const char *why)
{
    json_t *opts = json_object_get(sig, "options");
    const char *id = json_string_value(json_object_get(opts, "task_id"));
    const char *name = json_string_value(json_object_get(sig, "task"));
    log_error("signature %s (%s) not applied: %s", name ? name : "?", id ? id : "no id", why);
    if (!id)
        return;
    json_t *exc = message_exception("NotImplementedError", NULL, why);
    struct result_meta meta = {.status = "FAILURE", .result = exc, .task_id = id,
                               .arrived_in = parent->serializer};
    struct err e = {0};
    if (cv->backend->ops->store(cv->backend, &meta, 0, &e))
        log_error("storing the refusal of %s failed: %s", id, e.msg);
    json_decref(exc);
}

/* How a signature is applied. */
struct sig_send {
    json_t *prepend;             /* a value put before its args (the parent's result or id) */
    json_t *chain_rest;          /* the remaining chain steps for its embed */
    json_t *children;            /* where its result tuple is appended */
    const char *group;           /* sent as a member of this group (at group_index) */
    int group_index;
    json_t *chord;               /* the chord body a header member carries, or NULL */
    int depth;                   /* nesting of groups, chords and chains so far */
};

/* Signatures are hostile input: nesting deeper than this is refused. */
#define CANVAS_DEPTH_MAX 16

static int apply_signature(const struct canvas *cv, const struct message *parent, json_t *sig,
                           const struct sig_send *how, struct err *e);

/* Applies one task signature as a new task message; how may leave any
 * field NULL. */
static int send_signature(const struct canvas *cv, const struct message *parent, json_t *sig,
                          const struct sig_send *how, struct err *e)
{
    const char *name = json_string_value(json_object_get(sig, "task"));
    if (!json_is_object(sig) || !name) {
        log_error("task %s: ignored a callback that is not a signature", parent->task_id);
        return 0;
    }
    json_t *opts = json_object_get(sig, "options");
    json_t *sargs = json_object_get(sig, "args"), *skwargs = json_object_get(sig, "kwargs");
    json_t *args = json_array();
    if (how->prepend && !json_is_true(json_object_get(sig, "immutable")))
        json_array_append(args, how->prepend);
    if (json_is_array(sargs))
        json_array_extend(args, sargs);
    json_t *links = as_list(json_object_get(opts, "link"));
    json_t *errlinks = as_list(json_object_get(opts, "link_error"));
    json_t *chord = how->chord ? how->chord : json_object_get(opts, "chord");
    json_t *embed = json_pack("{s:o, s:o, s:O, s:O}", "callbacks",
                              json_array_size(links) ? json_incref(links) : json_null(),
                              "errbacks", json_array_size(errlinks) ? json_incref(errlinks)
                                                                    : json_null(),
                              "chain", how->chain_rest ? how->chain_rest : json_null(),
                              "chord", json_is_object(chord) ? chord : json_null());
    json_decref(links);
    json_decref(errlinks);
    double now = time_now(), eta = 0, expires = 0;
    json_t *v = json_object_get(opts, "countdown");
    if (json_is_number(v))
        eta = now + json_number_value(v);
    if (json_is_string(v = json_object_get(opts, "eta")))
        time_parse_iso(json_string_value(v), &eta);
    v = json_object_get(opts, "expires");
    if (json_is_number(v))
        expires = now + json_number_value(v);
    else if (json_is_string(v))
        time_parse_iso(json_string_value(v), &expires);
    json_t *gi = json_object_get(opts, "group_index");
    const char *queue = json_string_value(json_object_get(opts, "queue"));
    const char *rk = json_string_value(json_object_get(opts, "routing_key"));
    const char *exchange = json_string_value(json_object_get(opts, "exchange"));
    /* Celery sends through a named exchange only when it has both the
     * exchange and the routing key; otherwise to a queue by name. */
    if (exchange && *exchange && rk && *rk)
        queue = rk;
    else
        exchange = NULL;
    if (!queue)
        queue = rk;
    json_t *prio = json_object_get(opts, "priority");
    struct task_send t = {
        .name = name, .id = json_string_value(json_object_get(opts, "task_id")),
        .queue = queue ? queue : "celery", .exchange = exchange,
        /* the reply queue the signature names (a frozen chain's client) */
        .reply_to = json_string_value(json_object_get(opts, "reply_to")), .args = args,
        .kwargs = json_is_object(skwargs) ? skwargs : NULL, .embed = embed, .eta = eta,
        .expires = expires, .priority = json_is_integer(prio) ? (int)json_integer_value(prio) : 0,
        .root_id = parent->root_id ? parent->root_id : parent->task_id,
        .parent_id = parent->task_id,
        .group = how->group ? how->group : json_string_value(json_object_get(opts, "group_id")),
        .group_index = how->group ? how->group_index
                       : json_is_integer(gi) ? (int)json_integer_value(gi)
                                             : 0,
        .has_group_index = how->group || json_is_integer(gi),
        .serializer = parent->serializer, /* in kind, as a Python worker's task_serializer */
    };
    if (t.priority < 0 || t.priority > 9)
        t.priority = t.priority < 0 ? 0 : 9;
    int rc = publish(cv, &t, how->children, e);
    json_decref(args);
    json_decref(embed);
    return rc;
}

/* The member signatures of a group signature (kwargs.tasks), or of a list. */
static json_t *group_members(json_t *sig)
{
    if (json_is_array(sig))
        return sig;
    return json_object_get(json_object_get(sig, "kwargs"), "tasks");
}

/* A group: every member sent with the group's id and its index, each
 * getting the value passed on; recorded in children as the group's tuple. */
static int apply_group(const struct canvas *cv, const struct message *parent, json_t *sig,
                       const struct sig_send *how, struct err *e)
{
    json_t *members = group_members(sig);
    if (!json_is_array(members)) {
        refuse(cv, parent, sig, "a group signature without kwargs.tasks");
        return 0;
    }
    char gid[UUID_STR_LEN];
    const char *id = json_string_value(json_object_get(json_object_get(sig, "options"), "task_id"));
    snprintf(gid, sizeof(gid), "%s", id && strlen(id) < sizeof(gid) ? id : "");
    if (!gid[0])
        uuid_generate(gid);
    json_t *tuples = json_array();
    struct sig_send member = *how;
    member.group = gid;
    member.children = tuples;
    member.chain_rest = NULL; /* Celery makes a chain step after a group a chord body */
    member.depth = how->depth + 1;
    size_t i;
    json_t *m;
    int rc = 0;
    json_array_foreach(members, i, m) {
        json_t *gi = json_object_get(json_object_get(m, "options"), "group_index");
        member.group_index = json_is_integer(gi) ? (int)json_integer_value(gi) : (int)i;
        if ((rc = apply_signature(cv, parent, m, &member, e)))
            break;
    }
    if (how->children)
        json_array_append_new(how->children, json_pack("[[s, n], o]", gid, tuples));
    else
        json_decref(tuples);
    return rc;
}

/* A chord: the header's size goes to the backend (as Celery's Redis backend
 * stores it), then every header member is sent carrying the body; the last
 * one to finish sends the body (canvas_chord_part). */
/* Appends to out the task signatures of a chord header, a group inside it
 * standing for its members as Celery unrolls it (each group's members taken
 * next, in reverse order). False when a member is neither a task nor a group,
 * or groups nest deeper than depth allows. */
static bool unroll_header(json_t *members, bool reversed, json_t *out, int depth)
{
    size_t n = json_array_size(members);
    for (size_t k = 0; k < n; k++) {
        json_t *m = json_array_get(members, reversed ? n - 1 - k : k);
        const char *type = json_string_value(json_object_get(m, "subtask_type"));
        if (!json_is_object(m))
            return false;
        if (!type) {
            json_array_append(out, m);
            continue;
        }
        json_t *inner = group_members(m);
        if (strcmp(type, "group") || !json_is_array(inner) || depth >= CANVAS_DEPTH_MAX ||
            !unroll_header(inner, true, out, depth + 1))
            return false;
    }
    return true;
}

/* Sends the (unrolled) chord header members, each carrying the body, after
 * storing the chord's size where the last member's join finds it. */
static int send_chord(const struct canvas *cv, const struct message *parent, json_t *members,
                      json_t *body, json_t *header, json_t *sig, const struct sig_send *how,
                      struct err *e)
{
    if (!cv->backend->cfg->enabled) {
        refuse(cv, parent, body, "a chord needs a result backend");
        return 0;
    }
    const char *id = json_string_value(
        json_object_get(json_object_get(json_is_object(header) ? header : sig, "options"), "task_id"));
    if (!id)
        id = json_string_value(json_object_get(json_object_get(sig, "options"), "task_id"));
    char gid[UUID_STR_LEN];
    snprintf(gid, sizeof(gid), "%s", id && strlen(id) < sizeof(gid) ? id : "");
    if (!gid[0])
        uuid_generate(gid);
    int rc = cv->backend->ops->chord_size(cv->backend, gid, json_array_size(members), e);
    if (rc)
        return rc;
    struct sig_send member = *how;
    member.group = gid;
    member.chord = body;
    member.depth = how->depth + 1;
    member.children = NULL;
    member.chain_rest = NULL;
    size_t i;
    json_t *m;
    json_array_foreach(members, i, m) {
        member.group_index = (int)i;
        if ((rc = send_signature(cv, parent, m, &member, e)))
            break;
    }
    if (how->children) /* the chord's result is its body's */
        json_array_append_new(how->children, json_pack("[[s?, n], n]", json_string_value(
            json_object_get(json_object_get(body, "options"), "task_id"))));
    return rc;
}

static int apply_chord(const struct canvas *cv, const struct message *parent, json_t *sig,
                       const struct sig_send *how, struct err *e)
{
    json_t *kwargs = json_object_get(sig, "kwargs");
    json_t *header = json_object_get(kwargs, "header"), *body = json_object_get(kwargs, "body");
    json_t *given = group_members(header);
    if (!json_is_array(given) || !json_is_object(body)) {
        refuse(cv, parent, sig, "a chord signature without a header and a body");
        return 0;
    }
    json_t *members = json_array();
    if (!unroll_header(given, false, members, how->depth)) {
        json_decref(members);
        refuse(cv, parent, body, "a chord header member must be a task or a group of tasks");
        return 0;
    }
    int rc = send_chord(cv, parent, members, body, header, sig, how, e);
    json_decref(members);
    return rc;
}

/* A nested chain: its first task, carrying the rest (and whatever followed
 * the chain where it stood). */
static int apply_chain(const struct canvas *cv, const struct message *parent, json_t *sig,
                       const struct sig_send *how, struct err *e)
{
    json_t *tasks = json_object_get(json_object_get(sig, "kwargs"), "tasks");
    size_t n = json_array_size(tasks);
    if (!n) {
        refuse(cv, parent, sig, "a chain signature without kwargs.tasks");
        return 0;
    }
    /* embed.chain is stored reversed: the next step last */
    json_t *rest = json_array();
    for (size_t i = 0; how->chain_rest && i < json_array_size(how->chain_rest); i++)
        json_array_append(rest, json_array_get(how->chain_rest, i));
    for (size_t i = n; i-- > 1;)
        json_array_append(rest, json_array_get(tasks, i));
    struct sig_send first = *how;
    first.chain_rest = rest;
    first.depth = how->depth + 1;
    int rc = apply_signature(cv, parent, json_array_get(tasks, 0), &first, e);
    json_decref(rest);
    return rc;
}

/* Applies a signature of any kind Celery's canvas sends: a task, a group, a
 * chord or a chain. */
static int apply_signature(const struct canvas *cv, const struct message *parent, json_t *sig,
                           const struct sig_send *how, struct err *e)
{
    const char *type = json_string_value(json_object_get(sig, "subtask_type"));
    if (how->depth > CANVAS_DEPTH_MAX) {
        refuse(cv, parent, sig, "canvas nested too deeply");
        return 0;
    }
    if (!type)
        return send_signature(cv, parent, sig, how, e);
    if (!strcmp(type, "group"))
        return apply_group(cv, parent, sig, how, e);
    if (!strcmp(type, "chord"))
        return apply_chord(cv, parent, sig, how, e);
    if (!strcmp(type, "chain"))
        return apply_chain(cv, parent, sig, how, e);
    refuse(cv, parent, sig, "unknown signature type");
    return 0;
}

/* Several link callbacks go out as one group, as Celery's worker sends
 * them: each a member of a fresh group id, recorded in children as the
 * group's tuple [[group id, null], [member tuples]]. */
static int send_callback_group(const struct canvas *cv, const struct message *m,
                               json_t *callbacks, json_t *value, json_t *children, struct err *e)
{
    char gid[UUID_STR_LEN];
    uuid_generate(gid);
    json_t *members = json_array();
    struct sig_send how = {.prepend = value, .children = members, .group = gid};
    size_t i;
    json_t *sig;
    int rc = 0;
    json_array_foreach(callbacks, i, sig) {
        how.group_index = (int)i;
        if ((rc = apply_signature(cv, m, sig, &how, e)))
            break;
    }
    if (children)
        json_array_append_new(children, json_pack("[[s, n], o]", gid, members));
    else
        json_decref(members);
    return rc;
}

int canvas_on_success(const struct canvas *cv, const struct message *m, json_t *result,
                      json_t *children, struct err *e)
{
    if (!m->embed)
        return 0;
    json_t *value = result ? result : json_null();
    json_t *callbacks = json_object_get(m->embed, "callbacks");
    size_t n = json_array_size(callbacks);
    int rc = 0;
    if (n == 1) {
        struct sig_send how = {.prepend = value, .children = children};
        rc = apply_signature(cv, m, json_array_get(callbacks, 0), &how, e);
    } else if (n > 1) {
        rc = send_callback_group(cv, m, callbacks, value, children, e);
    }
    if (rc)
        return rc;
    /* The chain is stored reversed: the next step is the last element. */
    json_t *chain = json_object_get(m->embed, "chain");
    n = json_array_size(chain);
    if (n) {
        json_t *rest = json_array();
        for (size_t i = 0; i + 1 < n; i++)
            json_array_append(rest, json_array_get(chain, i));
        struct sig_send how = {.prepend = value, .chain_rest = rest, .children = children};
        rc = apply_signature(cv, m, json_array_get(chain, n - 1), &how, e);
        json_decref(rest);
    }
    return rc;
}

int canvas_on_failure(const struct canvas *cv, const struct message *m, struct err *e)
{
    json_t *errbacks = m->embed ? json_object_get(m->embed, "errbacks") : NULL;
    if (!json_is_array(errbacks))
        return 0;
    json_t *id = json_string(m->task_id);
    size_t i;
    json_t *sig;
    int rc = 0;
    json_array_foreach(errbacks, i, sig) {
        struct sig_send how = {.prepend = id};
        if ((rc = apply_signature(cv, m, sig, &how, e)))
            break;
    }
    json_decref(id);
    return rc;
}

/* Sends the chord body with the header's results (parts, in header order),
 * or marks it failed. */
static int finish_chord(const struct canvas *cv, const struct message *m, json_t *body,
                        json_t *parts, struct err *e)
{
    json_t *results = json_array();
    const char *failed_id = NULL;
    json_t *failed_result = NULL;
    size_t i;
    json_t *part;
    json_array_foreach(parts, i, part) {
        const char *state = json_string_value(json_array_get(part, 2));
        if (state && (!strcmp(state, "FAILURE") || !strcmp(state, "REVOKED")) && !failed_id) {
            failed_id = json_string_value(json_array_get(part, 1));
            failed_result = json_array_get(part, 3);
        }
        json_array_append(results, json_array_get(part, 3));
    }
    int rc = 0;
    if (failed_id) {
        const char *body_id = json_string_value(
            json_object_get(json_object_get(body, "options"), "task_id"));
        /* Celery's message: Dependency <id> raised ValueError('c-boom') */
        struct buf why = BUF_INIT;
        buf_addf(&why, "Dependency %s raised ", failed_id);
        pyjson_exc_repr(&why, failed_result);
        log_error("chord %s: %s", m->group, why.data);
        if (body_id) {
            json_t *exc = message_exception("ChordError", "celery.exceptions", why.data);
            struct result_meta meta = {.status = "FAILURE", .result = exc, .task_id = body_id,
                                       .arrived_in = m->serializer};
            rc = cv->backend->ops->store(cv->backend, &meta, 0, e);
            json_decref(exc);
        }
        buf_release(&why);
    } else {
        struct sig_send how = {.prepend = results};
        rc = apply_signature(cv, m, body, &how, e);
    }
    json_decref(results);
    return rc;
}

int canvas_chord_part(const struct canvas *cv, const struct message *m, const char *state,
                      json_t *result, struct err *e)
{
    json_t *body = m->embed ? json_object_get(m->embed, "chord") : NULL;
    if (!json_is_object(body) || !m->group)
        return 0;
    if (!cv->backend->cfg->enabled) {
        log_error("chord %s needs a result backend to join; body not sent", m->group);
        return 0;
    }
    json_t *part = json_pack("[i, s, s, O]", 1, m->task_id, state, result ? result : json_null());
    json_t *parts = NULL;
    int rc = cv->backend->ops->chord_part(cv->backend, m->group, m->group_index, part,
                                          backend_serializer(cv->backend, m->serializer),
                                          &parts, e);
    json_decref(part);
    if (!rc && parts) /* the last member: join */
        rc = finish_chord(cv, m, body, parts, e);
    json_decref(parts);
    return rc;
}
