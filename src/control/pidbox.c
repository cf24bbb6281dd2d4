/* SPDX-License-Identifier: MIT
 * control/pidbox.c: the remote-control commands celeriac answers, with the
 * reply shapes Celery 5.2 sends (spec celery-control-events-amqp.md §1). State
 * comes from the scoreboard the children keep; changes go back through it.
 */
#include "common.h"
#include "control/pidbox.h"
#include "broker/bus.h"
#include "util/base64.h"
#include "util/buf.h"
#include "util/log.h"
#include "util/time.h"
#include "worker/config.h"
#include "worker/scoreboard.h"
#include "worker/statedb.h"

#include <fnmatch.h>
#include <regex.h>
#include <signal.h>
#include <sys/resource.h>

/* ---- helpers */

static json_t *ok(const char *text)
{
    return json_pack("{s:s}", "ok", text);
}

static json_t *error(const char *text)
{
    return json_pack("{s:s}", "error", text);
}

static int task_index(const struct pidbox *p, const char *name)
{
    for (size_t i = 0; name && i < p->cfg->lib.n_tasks; i++)
        if (!strcmp(p->cfg->lib.desc->tasks[i].name, name))
            return (int)i;
    return -1;
}

static json_t *delivery_info(const struct slot *s)
{
    return json_pack("{s:s, s:s, s:i, s:n}", "exchange", "", "routing_key", s->routing_key,
                     "priority", 0, "redelivered");
}

/* Celery's Request.info for a running task. */
static json_t *request_info(const struct pidbox *p, const struct slot *s, bool safe)
{
    json_t *args = NULL, *kwargs = NULL;
    if (safe) {
        args = json_string(s->argsrepr_text);
        kwargs = json_string(s->kwargsrepr_text);
    } else {
        args = json_loads(s->argsrepr, 0, NULL);
        kwargs = json_loads(s->kwargsrepr, 0, NULL);
        if (!args)
            args = json_string(s->argsrepr); /* truncated: show the text */
        if (!kwargs)
            kwargs = json_string(s->kwargsrepr);
    }
    return json_pack("{s:s, s:s, s:o, s:o, s:s, s:s, s:f, s:b, s:o, s:i}", "id", s->task_id,
                     "name", s->task_name, "args", args ? args : json_null(), "kwargs",
                     kwargs ? kwargs : json_null(), "type", s->task_name, "hostname",
                     p->cfg->node_name, "time_start", s->time_start, "acknowledged",
                     !atomic_load(&s->acks_late), "delivery_info", delivery_info(s),
                     "worker_pid", atomic_load(&s->pid));
}

static bool busy(const struct slot *s)
{
    return atomic_load(&s->pid) && atomic_load(&s->state) == CHILD_BUSY &&
           atomic_load(&s->task_started_ms);
}

/* Received by a child and not started yet (waiting for a rate limit or its
 * database): Celery's reserved request, not acknowledged, in no process. */
static bool reserved(const struct slot *s)
{
    return atomic_load(&s->pid) && atomic_load(&s->reserved) && !busy(s);
}

static json_t *reserved_info(const struct pidbox *p, const struct slot *s, bool safe)
{
    json_t *info = request_info(p, s, safe);
    json_object_set_new(info, "time_start", json_null());
    json_object_set_new(info, "acknowledged", json_false());
    json_object_set_new(info, "worker_pid", json_null());
    return info;
}

static json_t *cmd_reserved(struct pidbox *p, json_t *args)
{
    bool safe = json_is_true(json_object_get(args, "safe"));
    json_t *list = json_array();
    for (size_t i = 0; i < p->sb->n; i++)
        if (reserved(&p->sb->slots[i]))
            json_array_append_new(list, reserved_info(p, &p->sb->slots[i], safe));
    return list;
}

/* ---- inspect */

static json_t *cmd_active(struct pidbox *p, json_t *args)
{
    bool safe = json_is_true(json_object_get(args, "safe"));
    json_t *list = json_array();
    for (size_t i = 0; i < p->sb->n; i++)
        if (busy(&p->sb->slots[i]))
            json_array_append_new(list, request_info(p, &p->sb->slots[i], safe));
    return list;
}

/* Celery's entry for an ETA request waiting in its timer: the timer's
 * priority (6 for every ETA task) and the request, not yet acknowledged. */
static json_t *scheduled_info(const struct pidbox *p, const struct held_entry *h)
{
    struct buf eta = BUF_INIT;
    time_format_iso(&eta, h->eta, true);
    json_t *args = json_loads(h->argsrepr, 0, NULL), *kwargs = json_loads(h->kwargsrepr, 0, NULL);
    json_t *info = json_pack("{s:s, s:s, s:o, s:o, s:s, s:s, s:n, s:b, s:{s:s, s:s, s:i, s:b}, "
                             "s:n}",
                             "id", h->task_id, "name", h->task_name, "args",
                             args ? args : json_string(h->argsrepr), "kwargs",
                             kwargs ? kwargs : json_string(h->kwargsrepr), "type", h->task_name,
                             "hostname", p->cfg->node_name, "time_start", "acknowledged", 0,
                             "delivery_info", "exchange", "", "routing_key", h->routing_key,
                             "priority", h->priority, "redelivered", h->redelivered,
                             "worker_pid");
    json_t *entry = json_pack("{s:s, s:i, s:o}", "eta", eta.data, "priority", 6, "request", info);
    buf_release(&eta);
    return entry;
}

/* What the live children hold for later (the first HELD_BOARD_MAX each). */
static json_t *cmd_scheduled(struct pidbox *p)
{
    json_t *list = json_array();
    for (size_t i = 0; i < p->sb->n; i++) {
        if (!atomic_load(&p->sb->slots[i].pid))
            continue;
        const struct held_board *b = &p->sb->held[i];
        int n = atomic_load(&b->n);
        for (int k = 0; k < n && k < HELD_BOARD_MAX; k++) {
            struct held_entry h = b->e[k]; /* a copy: the child may be rewriting it */
            h.task_id[sizeof(h.task_id) - 1] = h.task_name[sizeof(h.task_name) - 1] = '\0';
            h.routing_key[sizeof(h.routing_key) - 1] = '\0';
            h.argsrepr[sizeof(h.argsrepr) - 1] = h.kwargsrepr[sizeof(h.kwargsrepr) - 1] = '\0';
            json_array_append_new(list, scheduled_info(p, &h));
        }
    }
    return list;
}

static json_t *cmd_query_task(struct pidbox *p, json_t *args)
{
    json_t *ids = json_object_get(args, "ids"), *out = json_object(); /* a list, or one id */
    for (size_t i = 0; i < p->sb->n; i++) {
        struct slot *s = &p->sb->slots[i];
        bool running = busy(s);
        if (!running && !reserved(s))
            continue;
        bool wanted = json_is_string(ids) && !strcmp(json_string_value(ids), s->task_id);
        size_t k;
        json_t *v;
        json_array_foreach(ids, k, v) wanted |= json_is_string(v) &&
                                                !strcmp(json_string_value(v), s->task_id);
        if (wanted)
            json_object_set_new(out, s->task_id,
                                json_pack("[s, o]", running ? "active" : "reserved",
                                          running ? request_info(p, s, false)
                                                  : reserved_info(p, s, false)));
    }
    return out;
}

static json_t *cmd_registered(struct pidbox *p)
{
    json_t *list = json_array();
    /* Celery sorts the names. */
    size_t n = p->cfg->lib.n_tasks;
    const char **names = xcalloc(n, sizeof(*names));
    for (size_t i = 0; i < n; i++)
        names[i] = p->cfg->lib.desc->tasks[i].name;
    for (size_t i = 1; i < n; i++)
        for (size_t j = i; j > 0 && strcmp(names[j - 1], names[j]) > 0; j--) {
            const char *t = names[j];
            names[j] = names[j - 1];
            names[j - 1] = t;
        }
    for (size_t i = 0; i < n; i++) {
        int ti = task_index(p, names[i]);
        const char *rate = p->sb->shared->tasks[ti].rate_text;
        if (atomic_load(&p->sb->shared->tasks[ti].rate_interval_ns) && rate[0]) {
            struct buf b = BUF_INIT;
            buf_addf(&b, "%s [rate_limit=%s]", names[i], rate);
            json_array_append_new(list, json_string(b.data));
            buf_release(&b);
        } else {
            json_array_append_new(list, json_string(names[i]));
        }
    }
    free(names);
    return list;
}

static void append_id(const char *id, void *list)
{
    json_array_append_new(list, json_string(id));
}

static json_t *cmd_revoked(struct pidbox *p)
{
    json_t *list = json_array();
    scoreboard_revoked_list(p->sb, append_id, list);
    return list;
}

static json_t *cmd_active_queues(struct pidbox *p)
{
    json_t *list = json_array();
    char **names;
    size_t n;
    scoreboard_queues_read(p->sb, &names, &n);
    for (size_t i = 0; i < n; i++) {
        const char *q = names[i];
        json_array_append_new(
            list,
            json_pack("{s:s, s:{s:s, s:s, s:n, s:b, s:b, s:b, s:n, s:b}, s:s, s:n, s:n, s:n, "
                      "s:b, s:b, s:b, s:b, s:n, s:[], s:n, s:n, s:n, s:n, s:n, s:n}",
                      "name", q, "exchange", "name", q, "type", "direct", "arguments",
                      "durable", 1, "passive", 0, "auto_delete", 0, "delivery_mode",
                      "no_declare", 0, "routing_key", q, "queue_arguments", "binding_arguments",
                      "consumer_arguments", "durable", 1, "exclusive", 0, "auto_delete", 0,
                      "no_ack", 0, "alias", "bindings", "no_declare", "expires", "message_ttl",
                      "max_length", "max_length_bytes", "max_priority"));
        free(names[i]);
    }
    free(names);
    return list;
}

/* add_consumer / cancel_consumer: the children pick the new set up before
 * their next fetch. Celery answers the same whether or not anything changed. */
static json_t *cmd_consumer(struct pidbox *p, json_t *args, bool add)
{
    const char *queue = json_string_value(json_object_get(args, "queue"));
    if (!queue || !*queue || strlen(queue) >= QUEUE_NAME_MAX)
        return error("queue must be a queue name of at most 200 bytes");
    struct buf text = BUF_INIT;
    if (add) {
        if (scoreboard_queue_add(p->sb, queue))
            log_info("Started consuming from %s", queue);
        buf_addf(&text, "add consumer %s", queue);
    } else {
        if (scoreboard_queue_remove(p->sb, queue))
            log_info("Canceling queue %s", queue);
        buf_addf(&text, "no longer consuming from %s", queue);
    }
    json_t *reply = ok(text.data);
    buf_release(&text);
    return reply;
}

static json_t *rusage_json(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru))
        return json_string("N/A");
    return json_pack("{s:f, s:f, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "utime",
                     (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6, "stime",
                     (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6, "maxrss",
                     (json_int_t)ru.ru_maxrss, "minflt", (json_int_t)ru.ru_minflt, "majflt",
                     (json_int_t)ru.ru_majflt, "nswap", (json_int_t)ru.ru_nswap, "inblock",
                     (json_int_t)ru.ru_inblock, "oublock", (json_int_t)ru.ru_oublock, "nvcsw",
                     (json_int_t)ru.ru_nvcsw, "nivcsw", (json_int_t)ru.ru_nivcsw);
}

/* The broker connection as Celery's stats describe it (no password). */
static json_t *broker_info(const struct broker_config *b)
{
    bool amqp = b->kind == BROKER_AMQP;
    json_t *info = json_pack(
        "{s:s?, s:s?, s:n, s:i, s:b, s:b, s:s, s:i, s:{}, s:n, s:n, s:f, s:s, s:[]}", "hostname",
        amqp ? b->amqp.host : b->url.host, "userid", amqp ? b->amqp.user : NULL, "virtual_host",
        "port", amqp ? b->amqp.port : b->url.port, "insist", 0, "ssl", amqp && b->amqp.tls,
        "transport", amqp ? "amqp" : "redis", "connect_timeout", 5, "transport_options",
        "login_method", "uri_prefix", "heartbeat", amqp ? (double)b->amqp.heartbeat : 0.0,
        "failover_strategy", "round-robin", "alternates");
    json_object_set_new(info, "virtual_host",
                        amqp ? json_string(b->amqp.vhost) : json_sprintf("%d", b->url.db));
    if (amqp)
        json_object_set_new(info, "login_method", json_string("PLAIN"));
    return info;
}

/* The database connection budget (worker/budget.h) as last counted, or
 * NULL when no PostgreSQL server was counted. "fleet" is every celeriac
 * session the count saw, this worker's own included once child 0 counted. */
static json_t *budget_json(const struct budget_board *b)
{
    if (!atomic_load(&b->checked))
        return NULL;
    return json_pack("{s:i, s:i, s:i, s:i, s:i, s:I}", "max_connections",
                     atomic_load(&b->max_connections), "available", atomic_load(&b->available),
                     "planned", atomic_load(&b->planned), "fleet", atomic_load(&b->fleet),
                     "other_clients", atomic_load(&b->others), "checked_at",
                     (json_int_t)atomic_load(&b->checked_at));
}

static json_t *cmd_stats(struct pidbox *p)
{
    const struct worker_config *cfg = p->cfg;
    json_t *total = json_object();
    for (size_t i = 0; i < cfg->lib.n_tasks; i++) {
        uint64_t n = atomic_load(&p->sb->shared->tasks[i].total);
        if (n)
            json_object_set_new(total, cfg->lib.desc->tasks[i].name, json_integer((json_int_t)n));
    }
    json_t *procs = json_array(), *dbs = json_array();
    int64_t now = time_mono_ms();
    for (size_t i = 0; i < p->sb->n; i++) {
        struct slot *s = &p->sb->slots[i];
        int pid = atomic_load(&s->pid);
        if (!pid)
            continue;
        json_array_append_new(procs, json_integer(pid));
        int dbs_state = atomic_load(&s->db_state);
        int64_t opened = atomic_load(&s->db_opened_ms);
        json_array_append_new(
            dbs, json_pack("{s:i, s:i, s:s, s:s, s:f, s:i, s:I}", "index", (int)i, "pid", pid,
                           "state", child_state_name(atomic_load(&s->state)), "db",
                           dbs_state == DBS_UP ? "up" : dbs_state == DBS_DOWN ? "down" : "none",
                           "db_age", dbs_state == DBS_UP && opened ? (double)(now - opened) / 1e3 : 0.0,
                           "db_reconnects", (int)atomic_load(&s->reconnects), "processed",
                           (json_int_t)atomic_load(&s->tasks_done)));
    }
    char clock[32];
    snprintf(clock, sizeof(clock), "%" PRIu64, scoreboard_clock(p->sb, 0));
    json_t *mtpc = cfg->max_tasks_per_child ? json_integer((json_int_t)cfg->max_tasks_per_child)
                                            : json_string("N/A");
    json_t *broker = broker_info(&cfg->broker);
    json_t *stats = json_pack(
        "{s:o, s:i, s:s, s:i, s:{s:i, s:o, s:o, s:b, s:[f, f], s:{s:i, s:s, s:s, s:s, s:s}, "
        "s:o}, s:o, s:i, s:o, s:s, s:s}",
        "total", total, "pid", (int)p->master_pid, "clock", clock, "uptime",
        (int)(time_now() - p->sb->shared->started), "pool", "max-concurrency",
        atomic_load(&p->sb->shared->pool_target), "processes", procs, "max-tasks-per-child",
        mtpc, "put-guarded-by-semaphore", 0, "timeouts", cfg->soft_time_limit, cfg->time_limit,
        "writes", "total", 0, "avg", "0.00", "all", "", "raw", "", "strategy", "fair",
        "celeriac-children", dbs, "broker", broker, "prefetch_count",
        atomic_load(&p->sb->shared->pool_target) * (cfg->broker.prefetch ? cfg->broker.prefetch : 1), "rusage", rusage_json(), "sw_ident",
        "celeriac", "sw_ver", CELERIAC_VERSION);
    json_t *budget = budget_json(&p->sb->shared->budget);
    if (stats && budget)
        json_object_set_new(stats, "celeriac-db-budget", budget);
    else
        json_decref(budget);
    return stats;
}

static json_t *cmd_conf(struct pidbox *p)
{
    const struct worker_config *cfg = p->cfg;
    return json_pack("{s:i, s:b, s:f, s:f, s:f, s:i, s:s, s:b}", "worker_concurrency",
                     atomic_load(&p->sb->shared->pool_target), "task_acks_late", cfg->acks_late,
                     "task_time_limit", cfg->time_limit, "task_soft_time_limit",
                     cfg->soft_time_limit, "broker_transport_options_visibility_timeout",
                     cfg->visibility_timeout, "result_expires", cfg->backend.expires_s,
                     "task_default_queue", cfg->broker.queues[0], "task_reject_on_worker_lost",
                     cfg->reject_on_worker_lost);
}

/* ---- control */

static int signal_number(json_t *v)
{
    if (json_is_integer(v))
        return (int)json_integer_value(v);
    const char *name = json_string_value(v);
    if (!name)
        return SIGTERM;
    if (!strncmp(name, "SIG", 3))
        name += 3;
    static const struct { const char *name; int sig; } sigs[] = {
        {"TERM", SIGTERM}, {"KILL", SIGKILL}, {"INT", SIGINT}, {"QUIT", SIGQUIT},
        {"HUP", SIGHUP},   {"USR1", SIGUSR1}, {"USR2", SIGUSR2},
    };
    for (size_t i = 0; i < ARRAY_SIZE(sigs); i++)
        if (!strcmp(name, sigs[i].name))
            return sigs[i].sig;
    return -1;
}

void pidbox_escalate(struct pidbox *p)
{
    int64_t now = time_mono_ms();
    for (size_t k = 0; k < p->n_terminating;) {
        struct terminating *t = &p->terminating[k];
        if (now < t->kill_at_ms) {
            k++;
            continue;
        }
        for (size_t i = 0; i < p->sb->n; i++) {
            struct slot *s = &p->sb->slots[i];
            if (atomic_load(&s->pid) == t->pid && busy(s) && !strcmp(s->task_id, t->task_id)) {
                log_warning("task %s still running %d s after terminate; killing pid %d",
                            t->task_id, TERMINATE_GRACE_MS / 1000, (int)t->pid);
                kill(t->pid, SIGKILL);
            }
        }
        *t = p->terminating[--p->n_terminating];
    }
}

static json_t *cmd_revoke(struct pidbox *p, json_t *args, bool force_terminate)
{
    json_t *ids = json_object_get(args, "task_id");
    json_t *list = json_is_array(ids) ? json_incref(ids) : json_pack("[O]", ids ? ids : json_null());
    bool terminate = force_terminate || json_is_true(json_object_get(args, "terminate"));
    int sig = signal_number(json_object_get(args, "signal"));
    /* A child ignores HUP (a terminal hangup must not stop tasks): terminating
     * with it needs KILL. TERM and INT end a child whose terminate flag is
     * set (signals_child_terminate_on); any signal escalates to KILL after
     * TERMINATE_GRACE_MS. The replacement reports the task as revoked. */
    if (sig == SIGHUP)
        sig = SIGKILL;
    if (terminate && sig <= 0) {
        json_decref(list);
        return error("bad signal");
    }
    struct buf text = BUF_INIT, killed = BUF_INIT;
    size_t k;
    json_t *v;
    json_array_foreach(list, k, v) {
        const char *id = json_string_value(v);
        if (!id || !*id || strlen(id) > 39)
            continue;
        if (!scoreboard_is_revoked(p->sb, id) && p->cfg->statedb)
            statedb_append(p->cfg->statedb, id, time_now());
        scoreboard_revoke(p->sb, id);
        buf_addf(&text, "%s%s", text.len ? ", " : "", id);
        if (!terminate)
            continue;
        for (size_t i = 0; i < p->sb->n; i++) {
            struct slot *s = &p->sb->slots[i];
            int pid = atomic_load(&s->pid);
            if (busy(s) && !strcmp(s->task_id, id) && pid > 0) {
                atomic_store(&s->revoke_terminate, 1);
                kill(pid, sig);
                buf_addf(&killed, "%s%s", killed.len ? ", " : "", id);
                if (sig != SIGKILL && p->n_terminating < ARRAY_SIZE(p->terminating)) {
                    struct terminating *t = &p->terminating[p->n_terminating++];
                    t->pid = pid;
                    snprintf(t->task_id, sizeof(t->task_id), "%s", id);
                    t->kill_at_ms = time_mono_ms() + TERMINATE_GRACE_MS;
                }
            }
        }
    }
    json_decref(list);
    json_t *reply;
    if (terminate) {
        struct buf b = BUF_INIT;
        buf_addf(&b, "terminate: %s", killed.len ? killed.data : "tasks unknown");
        reply = ok(b.data);
        buf_release(&b);
    } else {
        struct buf b = BUF_INIT;
        buf_addf(&b, "tasks %s flagged as revoked", text.data);
        reply = ok(b.data);
        buf_release(&b);
    }
    if (text.len)
        log_info("revoked %s%s", text.data, terminate ? " (terminate)" : "");
    buf_release(&text);
    buf_release(&killed);
    return reply;
}

/* "10/s", "100/m", "5/h", "7" (per second), "" or 0: off. ns between starts. */
static int parse_rate(json_t *v, int64_t *interval_ns)
{
    double per_second;
    if (!v || json_is_null(v) || (json_is_string(v) && !*json_string_value(v)) ||
        (json_is_number(v) && json_number_value(v) == 0)) {
        *interval_ns = 0;
        return 0;
    }
    if (json_is_number(v)) {
        per_second = json_number_value(v);
    } else if (json_is_string(v)) {
        char *end;
        const char *s = json_string_value(v);
        double n = strtod(s, &end);
        if (end == s)
            return -EINVAL;
        if (n == 0 && (!*end || *end == '/')) {
            *interval_ns = 0; /* Celery's rate("0") and rate("0/s"): no limit */
            return 0;
        }
        double unit = 1;
        if (*end == '/') {
            end++;
            unit = *end == 's' ? 1 : *end == 'm' ? 60 : *end == 'h' ? 3600 : 0;
            if (!unit || end[1])
                return -EINVAL;
        } else if (*end) {
            return -EINVAL;
        }
        per_second = n / unit;
    } else {
        return -EINVAL;
    }
    if (!(per_second > 0))
        return -EINVAL;
    *interval_ns = (int64_t)(1e9 / per_second);
    return 0;
}

static json_t *cmd_rate_limit(struct pidbox *p, json_t *args)
{
    int ti = task_index(p, json_string_value(json_object_get(args, "task_name")));
    if (ti < 0)
        return error("unknown task");
    json_t *rate = json_object_get(args, "rate_limit");
    int64_t interval;
    if (parse_rate(rate, &interval)) {
        struct buf b = BUF_INIT;
        char *r = json_dumps(rate, JSON_ENCODE_ANY);
        buf_addf(&b, "Invalid rate limit string: %s", r ? r : "?");
        free(r);
        json_t *e = error(b.data);
        buf_release(&b);
        return e;
    }
    struct task_tuning *t = &p->sb->shared->tasks[ti];
    if (json_is_string(rate))
        snprintf(t->rate_text, sizeof(t->rate_text), "%s", json_string_value(rate));
    else if (json_is_number(rate))
        snprintf(t->rate_text, sizeof(t->rate_text), "%g", json_number_value(rate));
    atomic_store(&t->rate_interval_ns, interval);
    return ok(interval ? "new rate limit set successfully" : "rate limit disabled successfully");
}

static json_t *cmd_time_limit(struct pidbox *p, json_t *args)
{
    int ti = task_index(p, json_string_value(json_object_get(args, "task_name")));
    if (ti < 0)
        return error("unknown task");
    json_t *soft = json_object_get(args, "soft"), *hard = json_object_get(args, "hard");
    struct task_tuning *t = &p->sb->shared->tasks[ti];
    atomic_store(&t->soft_limit_ms,
                 json_is_number(soft) ? (int64_t)(json_number_value(soft) * 1000) : 0);
    atomic_store(&t->hard_limit_ms,
                 json_is_number(hard) ? (int64_t)(json_number_value(hard) * 1000) : 0);
    return ok("time limits set successfully");
}

static json_t *cmd_pool(struct pidbox *p, json_t *args, int sign)
{
    json_t *nv = json_object_get(args, "n");
    if (nv && !json_is_integer(nv))
        return error("TypeError('n must be an integer')");
    int n = nv ? (int)json_integer_value(nv) : 1;
    if (n < 0 || n > 1024)
        return error("ValueError('n must be between 0 and 1024')");
    int cur = atomic_load(&p->sb->shared->pool_target);
    int want = cur + sign * n;
    if (want < 1)
        want = 1;
    if ((size_t)want > p->sb->n)
        want = (int)p->sb->n;
    atomic_store(&p->sb->shared->pool_target, want);
    kill(p->master_pid, SIGUSR2); /* wake the master to act on it */
    return ok(sign > 0 ? "pool will grow" : "pool will shrink");
}

/* Celery's handlers for these take no arguments: extra ones are a TypeError. */
static json_t *unexpected_args(const char *method, json_t *args)
{
    static const char *const no_args[] = {"enable_events", "disable_events", "heartbeat",
                                          "active_queues"};
    if (!json_object_size(args))
        return NULL;
    for (size_t i = 0; i < ARRAY_SIZE(no_args); i++) {
        if (strcmp(method, no_args[i]))
            continue;
        const char *key = json_object_iter_key(json_object_iter(args));
        struct buf b = BUF_INIT;
        buf_addf(&b, "TypeError(\"%s() got an unexpected keyword argument '%.64s'\")", method,
                 key ? key : "?");
        json_t *e = error(b.data);
        buf_release(&b);
        return e;
    }
    return NULL;
}

json_t *pidbox_dispatch(struct pidbox *p, const char *method, json_t *args)
{
    json_t *bad_args = unexpected_args(method, args);
    if (bad_args)
        return bad_args;
    if (!strcmp(method, "ping"))
        return ok("pong");
    if (!strcmp(method, "stats"))
        return cmd_stats(p);
    if (!strcmp(method, "active") || !strcmp(method, "dump_active"))
        return cmd_active(p, args);
    if (!strcmp(method, "reserved") || !strcmp(method, "dump_reserved"))
        return cmd_reserved(p, args);
    if (!strcmp(method, "scheduled") || !strcmp(method, "dump_schedule"))
        return cmd_scheduled(p);
    if (!strcmp(method, "registered") || !strcmp(method, "dump_tasks"))
        return cmd_registered(p);
    if (!strcmp(method, "revoked") || !strcmp(method, "dump_revoked"))
        return cmd_revoked(p);
    if (!strcmp(method, "query_task"))
        return cmd_query_task(p, args);
    if (!strcmp(method, "active_queues"))
        return cmd_active_queues(p);
    if (!strcmp(method, "add_consumer") || !strcmp(method, "cancel_consumer"))
        return cmd_consumer(p, args, method[0] == 'a');
    if (!strcmp(method, "clock"))
        return json_pack("{s:I}", "clock", (json_int_t)scoreboard_clock(p->sb, 0));
    if (!strcmp(method, "conf") || !strcmp(method, "dump_conf"))
        return cmd_conf(p);
    if (!strcmp(method, "report"))
        return ok("celeriac " CELERIAC_VERSION);
    if (!strcmp(method, "revoke"))
        return cmd_revoke(p, args, false);
    if (!strcmp(method, "terminate"))
        return cmd_revoke(p, args, true);
    if (!strcmp(method, "rate_limit"))
        return cmd_rate_limit(p, args);
    if (!strcmp(method, "time_limit"))
        return cmd_time_limit(p, args);
    if (!strcmp(method, "enable_events")) {
        int was = atomic_exchange(&p->sb->shared->events_enabled, 1);
        return ok(was ? "task events already enabled" : "task events enabled");
    }
    if (!strcmp(method, "disable_events")) {
        int was = atomic_exchange(&p->sb->shared->events_enabled, 0);
        return ok(was ? "task events disabled" : "task events already disabled");
    }
    if (!strcmp(method, "heartbeat")) {
        p->heartbeat_requested = true;
        return json_null();
    }
    if (!strcmp(method, "pool_grow"))
        return cmd_pool(p, args, +1);
    if (!strcmp(method, "pool_shrink"))
        return cmd_pool(p, args, -1);
    if (!strcmp(method, "shutdown")) {
        p->shutdown_requested = true;
        return NULL; /* Celery never replies to shutdown */
    }
    if (!strcmp(method, "hello"))
        return json_pack("{s:{}, s:I}", "revoked", "clock", (json_int_t)scoreboard_clock(p->sb, 0));
    struct buf b = BUF_INIT;
    buf_addf(&b, "KeyError('%.64s')", method);
    json_t *e = error(b.data);
    buf_release(&b);
    return e;
}

/* ---- matching and replying */

static bool addressed_to_us(const struct pidbox *p, json_t *body)
{
    const char *me = p->cfg->node_name;
    json_t *dest = json_object_get(body, "destination");
    if (json_is_array(dest) && json_array_size(dest)) {
        size_t i;
        json_t *v;
        json_array_foreach(dest, i, v) if (json_is_string(v) && !strcmp(json_string_value(v), me))
            return true;
        return false;
    }
    const char *pattern = json_string_value(json_object_get(body, "pattern"));
    const char *matcher = json_string_value(json_object_get(body, "matcher"));
    if (pattern && matcher) {
        if (!strcmp(matcher, "glob"))
            return fnmatch(pattern, me, 0) == 0;
        if (!strcmp(matcher, "pcre")) {
            /* Python's re.match: the match must start at the first character. */
            regex_t re;
            if (regcomp(&re, pattern, REG_EXTENDED))
                return false;
            regmatch_t m;
            bool hit = regexec(&re, me, 1, &m, 0) == 0 && m.rm_so == 0;
            regfree(&re);
            return hit;
        }
        return false;
    }
    return true;
}

/* The reply Celery's clients wait for: {node: result}, with the request's
 * ticket and our clock in the headers. */
static int send_reply(struct pidbox *p, json_t *reply_to, const char *ticket, json_t *result)
{
    const char *exchange = json_string_value(json_object_get(reply_to, "exchange"));
    const char *rk = json_string_value(json_object_get(reply_to, "routing_key"));
    if (!exchange || !rk || !ticket)
        return 0;
    json_t *body = json_object();
    json_object_set(body, p->cfg->node_name, result);
    char *body_text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    json_t *headers = json_pack("{s:s, s:I}", "ticket", ticket, "clock",
                                (json_int_t)scoreboard_clock(p->sb, 0));
    struct err e = {0};
    int rc = p->bus->ops->reply(p->bus, exchange, rk, body_text ? body_text : "{}", headers, &e);
    if (rc)
        log_warning("remote control: reply to %s: %s", rk, e.msg);
    json_decref(headers);
    free(body_text);
    return rc;
}

int pidbox_handle(struct pidbox *p, const char *payload, size_t len)
{
    json_t *env = json_loadb(payload, len, 0, NULL);
    const char *b64 = json_string_value(json_object_get(env, "body"));
    const char *enc = json_string_value(
        json_object_get(json_object_get(env, "properties"), "body_encoding"));
    json_t *body = NULL;
    if (b64) {
        struct buf raw = BUF_INIT;
        if (!enc || strcmp(enc, "base64") || !base64_decode(&raw, b64, strlen(b64)))
            body = json_loadb(enc && !strcmp(enc, "base64") ? raw.data : b64,
                              enc && !strcmp(enc, "base64") ? raw.len : strlen(b64), 0, NULL);
        buf_release(&raw);
    }
    const char *method = json_string_value(json_object_get(body, "method"));
    if (!json_is_object(body) || !method) {
        log_warning("ignored a malformed remote-control message (%zu bytes)", len);
        json_decref(body);
        json_decref(env);
        return 0;
    }
    json_t *clock = json_object_get(json_object_get(env, "headers"), "clock");
    if (json_is_integer(clock) && json_integer_value(clock) > 0)
        scoreboard_clock(p->sb, (uint64_t)json_integer_value(clock));
    int rc = 0;
    if (addressed_to_us(p, body)) {
        json_t *args = json_object_get(body, "arguments");
        json_t *empty = json_object();
        log_debug("remote control: %s", method);
        json_t *result = pidbox_dispatch(p, method, json_is_object(args) ? args : empty);
        json_decref(empty);
        json_t *reply_to = json_object_get(body, "reply_to");
        const char *ticket = json_string_value(json_object_get(body, "ticket"));
        if (result && json_is_object(reply_to))
            rc = send_reply(p, reply_to, ticket, result);
        json_decref(result);
    }
    json_decref(body);
    json_decref(env);
    return rc;
}
