/* SPDX-License-Identifier: MIT
 * cli/inspect.c: `celeriac inspect COMMAND` and `celeriac control COMMAND`,
 * `celery inspect` / `celery control` for hosts without Python: the same
 * request on the broker, the same output and exit codes (69 when no node
 * replied). The protocol is control/client.c's.
 */
#include "common.h"
#include "cli/cli.h"
#include "control/client.h"
#include "protocol/pyjson.h"
#include "util/buf.h"
#include "util/url.h"
#include "worker/config.h"

#include <getopt.h>
#include <jansson.h>

/* sysexits.h EX_UNAVAILABLE: what celery exits with when no node replied. */
#define EXIT_NO_REPLY 69

enum arg_type { ARG_STR, ARG_INT, ARG_FLOAT, ARG_BOOL };

/* A command as Celery's Panel.meta declares it: positional arguments by
 * name and type, then the rest under one variadic name. */
struct command {
    const char *name;
    bool control;              /* `control` (else `inspect`) */
    const char *args[4];
    enum arg_type types[4];
    const char *variadic;
};

static const struct command commands[] = {
    {"active", false, {NULL}, {0}, NULL},
    {"active_queues", false, {NULL}, {0}, NULL},
    {"clock", false, {NULL}, {0}, NULL},
    {"conf", false, {"with_defaults"}, {ARG_BOOL}, NULL},
    {"ping", false, {NULL}, {0}, NULL},
    {"query_task", false, {NULL}, {0}, "ids"},
    {"registered", false, {NULL}, {0}, "taskinfoitems"},
    {"report", false, {NULL}, {0}, NULL},
    {"reserved", false, {NULL}, {0}, NULL},
    {"revoked", false, {NULL}, {0}, NULL},
    {"scheduled", false, {NULL}, {0}, NULL},
    {"stats", false, {NULL}, {0}, NULL},
    {"add_consumer", true, {"queue", "exchange", "exchange_type", "routing_key"}, {0}, NULL},
    {"autoscale", true, {"max", "min"}, {ARG_INT, ARG_INT}, NULL},
    {"cancel_consumer", true, {"queue"}, {0}, NULL},
    {"disable_events", true, {NULL}, {0}, NULL},
    {"enable_events", true, {NULL}, {0}, NULL},
    {"heartbeat", true, {NULL}, {0}, NULL},
    {"pool_grow", true, {"n"}, {ARG_INT}, NULL},
    {"pool_restart", true, {NULL}, {0}, NULL},
    {"pool_shrink", true, {"n"}, {ARG_INT}, NULL},
    {"rate_limit", true, {"task_name", "rate_limit"}, {0}, NULL},
    {"revoke", true, {NULL}, {0}, "task_id"},
    {"shutdown", true, {NULL}, {0}, NULL},
    {"terminate", true, {"signal"}, {0}, "task_id"},
    {"time_limit", true, {"task_name", "soft", "hard"}, {0, ARG_FLOAT, ARG_FLOAT}, NULL},
};

static const char inspect_usage[] =
    "usage: celeriac inspect COMMAND [ARG...] [options]\n"
    "       celeriac control COMMAND [ARG...] [options]\n"
    "\n"
    "Celery's remote control from C, as `celery inspect` / `celery control`: the\n"
    "request is broadcast on the broker and every worker (celeriac or Python\n"
    "Celery) that answers within the timeout is printed. Exit 69 when none did.\n"
    "\n"
    "inspect: active active_queues clock conf ping query_task ID... registered\n"
    "         [ATTR...] report reserved revoked scheduled stats\n"
    "control: add_consumer QUEUE [EXCHANGE TYPE KEY] autoscale MAX MIN\n"
    "         cancel_consumer QUEUE disable_events enable_events heartbeat\n"
    "         pool_grow [N] pool_restart pool_shrink [N] rate_limit TASK RATE\n"
    "         revoke ID... shutdown terminate SIGNAL ID... time_limit TASK SOFT [HARD]\n"
    "\n"
    "  -b, --broker URL       (env CELERIAC_BROKER_URL; default redis://localhost:6379/0);\n"
    "                         Redis Sentinel: 'sentinel://h1:26379;sentinel://h2:26379'\n"
    "      --broker-transport-option KEY=VALUE\n"
    "                         as for the worker: master_name (required with\n"
    "                         sentinel://), socket_timeout, socket_connect_timeout\n"
    "  -d, --destination N,N  only these nodes (comma-separated)\n"
    "  -t, --timeout S        how long to wait for each reply (default: 1)\n"
    "  -j, --json             the replies as one JSON document\n";

enum { OPT_BROKER_TRANSPORT_OPTION = 1000 };

static const struct option inspect_options[] = {
    {"broker", required_argument, NULL, 'b'}, {"destination", required_argument, NULL, 'd'},
    {"timeout", required_argument, NULL, 't'}, {"json", no_argument, NULL, 'j'},
    {"broker-transport-option", required_argument, NULL, OPT_BROKER_TRANSPORT_OPTION},
    {"help", no_argument, NULL, 'h'},          {NULL, 0, NULL, 0},
};

struct inspect_opts {
    const char *broker;
    struct redis_transport_options broker_options; /* --broker-transport-option */
    char **destination;        /* owned, n_destination names */
    size_t n_destination;
    double timeout;
    bool json;
};

static int usage_error(const char *what, const char *value)
{
    fprintf(stderr, "celeriac: %s '%s' (see --help)\n", what, value);
    return EXIT_USAGE;
}

static void split_destination(struct inspect_opts *o, const char *list)
{
    for (const char *p = list; *p;) {
        size_t n = strcspn(p, ",");
        if (n) {
            o->destination = xrealloc(o->destination, (o->n_destination + 1) * sizeof(char *));
            o->destination[o->n_destination++] = xstrndup(p, n);
        }
        p += n + (p[n] == ',');
    }
}

static int parse_inspect_flags(int argc, char **argv, struct inspect_opts *o)
{
    o->timeout = 1.0;
    o->broker = getenv("CELERIAC_BROKER_URL");
    if (!o->broker || !*o->broker)
        o->broker = "redis://localhost:6379/0";
    optind = 1;
    opterr = 0;
    int opt;
    char *end;
    struct err e = {0};
    /* options may follow the command, as click allows; its arguments are left in order */
    while ((opt = getopt_long(argc, argv, ":b:d:t:jh", inspect_options, NULL)) != -1) {
        switch (opt) {
        case 'b': o->broker = optarg; break;
        case 'd': split_destination(o, optarg); break;
        case 't':
            o->timeout = strtod(optarg, &end);
            if (end == optarg || *end || !(o->timeout > 0) || o->timeout > 3600)
                return usage_error("bad --timeout", optarg);
            break;
        case 'j': o->json = true; break;
        case OPT_BROKER_TRANSPORT_OPTION:
            if (redis_transport_options_set(&o->broker_options, optarg, &e)) {
                fprintf(stderr, "celeriac: %s (see --help)\n", e.msg);
                return EXIT_USAGE;
            }
            break;
        case 'h': fputs(inspect_usage, stdout); return -1;
        case ':': return usage_error("option needs a value:", argv[optind - 1]);
        default: return usage_error("unknown option", argv[optind - 1]);
        }
    }
    return 0;
}

/* Celery's _compile_arguments: positional values by the command's
 * signature, the rest under its variadic name. NULL after a usage error. */
static json_t *compile_arguments(const struct command *c, char **args, int n)
{
    json_t *out = json_object();
    int i = 0;
    for (; i < n && i < (int)ARRAY_SIZE(c->args) && c->args[i]; i++) {
        json_t *v;
        char *end;
        switch (c->types[i]) {
        case ARG_INT: {
            long long x = strtoll(args[i], &end, 10);
            v = end != args[i] && !*end ? json_integer(x) : NULL;
            break;
        }
        case ARG_FLOAT: {
            double x = strtod(args[i], &end);
            v = end != args[i] && !*end ? json_real(x) : NULL;
            break;
        }
        case ARG_BOOL:
            v = json_boolean(!strcasecmp(args[i], "true") || !strcasecmp(args[i], "yes") ||
                             !strcasecmp(args[i], "on") || !strcmp(args[i], "1"));
            break;
        default: v = json_string(args[i]); break;
        }
        if (!v) {
            fprintf(stderr, "celeriac: bad value '%s' for %s of %s (see --help)\n", args[i],
                    c->args[i], c->name);
            json_decref(out);
            return NULL;
        }
        json_object_set_new(out, c->args[i], v);
    }
    if (c->variadic) {
        json_t *rest = json_array();
        for (; i < n; i++)
            json_array_append_new(rest, json_string(args[i]));
        json_object_set_new(out, c->variadic, rest);
    } else if (i < n) {
        fprintf(stderr, "celeriac: %s takes %d argument%s, got '%s' more (see --help)\n", c->name,
                i, i == 1 ? "" : "s", args[i]);
        json_decref(out);
        return NULL;
    }
    return out;
}

/* Each line of text prefixed with n spaces (celery.utils.text.indent). */
static void add_indented(struct buf *out, const char *text, int n)
{
    for (const char *p = text;;) {
        size_t len = strcspn(p, "\n");
        buf_addf(out, "%*s", n, "");
        buf_add(out, p, len);
        if (!p[len])
            break;
        buf_addch(out, '\n');
        p += len + 1;
    }
}

/* CLIContext.pretty: a status ("OK"/"ERROR") and the body text. */
static const char *pretty(struct buf *out, const json_t *v)
{
    if (json_is_array(v)) {
        if (!json_array_size(v))
            buf_adds(out, "- empty -");
        size_t i;
        json_t *item;
        json_array_foreach(v, i, item) {
            if (i)
                buf_addch(out, '\n');
            buf_adds(out, "* ");
            if (json_is_string(item))
                buf_adds(out, json_string_value(item));
            else
                pyjson_repr(out, item);
        }
        return "OK";
    }
    if (json_is_object(v)) {
        const json_t *ok = json_object_get(v, "ok"), *error = json_object_get(v, "error");
        if (ok || error) {
            struct buf inner = BUF_INIT;
            pretty(&inner, ok ? ok : error);
            add_indented(out, inner.data, 4);
            buf_release(&inner);
            return ok ? "OK" : "ERROR";
        }
        /* 16 digits: Python's shortest repr for most floats (0.002839, not
         * 0.0028389999999999999); --json keeps jansson's exact 17 */
        char *text = pyjson_dumps(v, JSON_INDENT(4) | JSON_SORT_KEYS | JSON_ENSURE_ASCII |
                                         JSON_REAL_PRECISION(16));
        buf_adds(out, text);
        free(text);
        return "OK";
    }
    if (json_is_string(v))
        buf_adds(out, json_string_value(v));
    else
        pyjson_repr(out, v);
    return "OK";
}

static void print_reply(const char *node, const json_t *reply)
{
    struct buf body = BUF_INIT, all = BUF_INIT;
    const char *status = pretty(&body, reply);
    buf_addf(&all, "->  %s: %s\n", node, status);
    add_indented(&all, body.data, 4);
    fputs(all.data, stdout);
    fputc('\n', stdout);
    buf_release(&body);
    buf_release(&all);
}

static const struct command *find_command(const char *name, bool control)
{
    for (size_t i = 0; i < ARRAY_SIZE(commands); i++)
        if (commands[i].control == control && !strcmp(commands[i].name, name))
            return &commands[i];
    return NULL;
}

/* The node of a {node: result} reply and its result. */
static const char *reply_node(json_t *one, json_t **result)
{
    void *it = json_object_iter(one);
    *result = json_object_iter_value(it);
    return json_object_iter_key(it);
}

static int print_replies(json_t *replies, bool control, bool as_json)
{
    size_t i;
    json_t *one, *result;
    if (as_json) {
        json_t *doc = replies;
        if (!control) { /* inspect flattens: {node: result} */
            doc = json_object();
            json_array_foreach(replies, i, one) {
                const char *node = reply_node(one, &result);
                json_object_set(doc, node, result);
            }
        } else {
            json_incref(doc);
        }
        char *text = pyjson_dumps(doc, JSON_ENSURE_ASCII | JSON_ENCODE_ANY);
        puts(text);
        free(text);
        json_decref(doc);
        return EXIT_OK;
    }
    json_array_foreach(replies, i, one) {
        const char *node = reply_node(one, &result);
        print_reply(node, result);
    }
    if (!control) {
        size_t n = json_array_size(replies);
        printf("\n%zu node%s online.\n", n, n == 1 ? "" : "s");
    }
    return EXIT_OK;
}

static int run(int argc, char **argv, bool control)
{
    struct inspect_opts o = {0};
    redis_transport_options_init(&o.broker_options, "--broker-transport-option");
    int rc = parse_inspect_flags(argc, argv, &o);
    if (rc)
        goto out_free_opts;
    if (optind >= argc) {
        fprintf(stderr, "celeriac: %s needs a command (see --help)\n", argv[0]);
        rc = EXIT_USAGE;
        goto out_free_opts;
    }
    const struct command *c = find_command(argv[optind], control);
    if (!c) {
        rc = usage_error(control ? "unknown control command" : "unknown inspect command",
                         argv[optind]);
        goto out_free_opts;
    }
    json_t *arguments = compile_arguments(c, argv + optind + 1, argc - optind - 1);
    if (!arguments) {
        rc = EXIT_USAGE;
        goto out_free_opts;
    }
    struct err e = {0};
    struct control_client *cl = control_client_open(o.broker, &o.broker_options, &e);
    if (!cl) {
        fprintf(stderr, "celeriac: %s\n", e.msg);
        rc = e.code == E_CONFIG || e.code == -EINVAL || e.code == -ENOTSUP ? EXIT_USAGE
                                                                            : EXIT_FAILED;
        goto out_free_args;
    }
    struct control_request req = {
        .method = c->name, .arguments = arguments, .destination = o.destination,
        .n_destination = o.n_destination, .timeout_s = o.timeout, .reply = true,
    };
    json_t *replies = NULL;
    if (control_client_broadcast(cl, &req, &replies, &e)) {
        fprintf(stderr, "celeriac: %s\n", e.msg);
        rc = EXIT_FAILED;
    } else if (!json_array_size(replies)) {
        fprintf(stderr, "Error: No nodes replied within time constraint\n");
        rc = EXIT_NO_REPLY;
    } else {
        rc = print_replies(replies, control, o.json);
    }
    json_decref(replies);
    control_client_free(cl);

out_free_args:
    json_decref(arguments);
out_free_opts:
    redis_transport_options_release(&o.broker_options);
    for (size_t i = 0; i < o.n_destination; i++)
        free(o.destination[i]);
    free(o.destination);
    return rc < 0 ? EXIT_OK : rc;
}

int cli_inspect(int argc, char **argv)
{
    return run(argc, argv, false);
}

int cli_control(int argc, char **argv)
{
    return run(argc, argv, true);
}
