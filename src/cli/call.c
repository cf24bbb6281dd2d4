/* SPDX-License-Identifier: MIT
 * cli/call.c: `celeriac call NAME [ARGS...]` and `celeriac result ID`: send a
 * task by name and read a result from the command line, through the C client.
 */
#include "common.h"
#include "celeriac_client.h"
#include "cli/cli.h"
#include "client/client_internal.h"
#include "protocol/pyjson.h"
#include "util/buf.h"
#include "util/time.h"
#include "util/url.h"
#include "worker/config.h"

#include <getopt.h>
#include <jansson.h>

static const char call_usage[] =
    "usage: celeriac call NAME [ARG...] [options]\n"
    "       celeriac result ID [options]\n"
    "\n"
    "Sends task NAME (each ARG is a JSON value, or a string when it is not valid\n"
    "JSON) and prints its id; with --wait, prints the result.\n"
    "\n"
    "  --args JSON            positional arguments as one JSON array\n"
    "  --kwargs JSON          keyword arguments as a JSON object\n"
    "  --countdown S          run no earlier than S seconds from now\n"
    "  --eta ISO              run no earlier than this time (2026-01-01T00:00:00+00:00)\n"
    "  --expires S            do not run after S seconds from now\n"
    "  --queue Q              queue (default: celery)\n"
    "  --priority N           0..9 (Redis: 0 first)\n"
    "  --wait                 wait for the result and print it (exit 1 on FAILURE)\n"
    "  --timeout S            how long --wait waits (default: 30)\n"
    "  -b, --broker URL       (env CELERIAC_BROKER_URL; default redis://localhost:6379/0);\n"
    "                         Redis Sentinel: 'sentinel://h1:26379;sentinel://h2:26379'\n"
    "  --result-backend URL   (env CELERIAC_RESULT_BACKEND; needed for --wait and result)\n"
    "  --broker-transport-option KEY=VALUE\n"
    "  --result-backend-transport-option KEY=VALUE\n"
    "                         as for the worker: master_name (required with\n"
    "                         sentinel://), socket_timeout, socket_connect_timeout\n";

enum { O_ARGS = 1000, O_KWARGS, O_COUNTDOWN, O_ETA, O_EXPIRES, O_QUEUE, O_PRIORITY, O_WAIT,
       O_TIMEOUT, O_BACKEND, O_BROKER_TRANSPORT_OPTION, O_BACKEND_TRANSPORT_OPTION };

static const struct option call_options[] = {
    {"args", required_argument, NULL, O_ARGS},       {"kwargs", required_argument, NULL, O_KWARGS},
    {"countdown", required_argument, NULL, O_COUNTDOWN}, {"eta", required_argument, NULL, O_ETA},
    {"expires", required_argument, NULL, O_EXPIRES}, {"queue", required_argument, NULL, O_QUEUE},
    {"priority", required_argument, NULL, O_PRIORITY}, {"wait", no_argument, NULL, O_WAIT},
    {"timeout", required_argument, NULL, O_TIMEOUT}, {"broker", required_argument, NULL, 'b'},
    {"result-backend", required_argument, NULL, O_BACKEND}, {"help", no_argument, NULL, 'h'},
    {"broker-transport-option", required_argument, NULL, O_BROKER_TRANSPORT_OPTION},
    {"result-backend-transport-option", required_argument, NULL, O_BACKEND_TRANSPORT_OPTION},
    {NULL, 0, NULL, 0},
};

struct call_opts {
    const char *args, *kwargs, *broker, *backend;
    struct celeriac_send_options send;
    struct redis_transport_options broker_options;  /* --broker-transport-option */
    struct redis_transport_options backend_options; /* --result-backend-transport-option */
    bool wait;
    double timeout;
};

static int bad(const char *what, const char *value)
{
    fprintf(stderr, "celeriac: %s '%s' (see --help)\n", what, value);
    return EXIT_USAGE;
}

/* One KEY=VALUE into o: exit 2 with the worker's line for a bad one. */
static int transport_option(struct redis_transport_options *o, const char *kv)
{
    struct err e = {0};
    if (!redis_transport_options_set(o, kv, &e))
        return 0;
    fprintf(stderr, "celeriac: %s (see --help)\n", e.msg);
    return EXIT_USAGE;
}

/* Opens the client the way the flags say; NULL after printing why, with
 * *code the exit status (2 for a bad URL or transport option). The result
 * backend and its options count only when backend is not NULL. */
static struct celeriac_client *open_client(const struct call_opts *o, const char *backend,
                                           int *code)
{
    struct redis_transport_options none;
    redis_transport_options_init(&none, o->backend_options.list);
    struct err e = {0};
    struct celeriac_client *c = client_new(o->broker, backend, &o->broker_options,
                                           backend ? &o->backend_options : &none, &e);
    if (!c) {
        fprintf(stderr, "celeriac: %s\n", e.msg);
        *code = e.code == -EINVAL ? EXIT_USAGE : EXIT_FAILED;
    }
    return c;
}

static int number(const char *s, double *out)
{
    char *end;
    *out = strtod(s, &end);
    return end == s || *end;
}

static int parse_call_flags(int argc, char **argv, struct call_opts *o)
{
    memset(o, 0, sizeof(*o));
    redis_transport_options_init(&o->broker_options, "--broker-transport-option");
    redis_transport_options_init(&o->backend_options, "--result-backend-transport-option");
    o->timeout = 30;
    o->broker = getenv("CELERIAC_BROKER_URL");
    o->backend = getenv("CELERIAC_RESULT_BACKEND");
    optind = 1;
    opterr = 0;
    int opt;
    double d;
    while ((opt = getopt_long(argc, argv, ":b:h", call_options, NULL)) != -1) {
        switch (opt) {
        case O_ARGS: o->args = optarg; break;
        case O_KWARGS: o->kwargs = optarg; break;
        case O_COUNTDOWN:
            if (number(optarg, &o->send.countdown)) return bad("bad --countdown", optarg);
            break;
        case O_ETA:
            if (time_parse_iso(optarg, &o->send.eta)) return bad("bad --eta", optarg);
            break;
        case O_EXPIRES:
            if (number(optarg, &o->send.expires)) return bad("bad --expires", optarg);
            break;
        case O_QUEUE: o->send.queue = optarg; break;
        case O_PRIORITY:
            if (number(optarg, &d) || d < 0 || d > 255) return bad("bad --priority", optarg);
            o->send.priority = (int)d;
            break;
        case O_WAIT: o->wait = true; break;
        case O_TIMEOUT:
            if (number(optarg, &o->timeout) || o->timeout <= 0) return bad("bad --timeout", optarg);
            break;
        case 'b': o->broker = optarg; break;
        case O_BACKEND: o->backend = optarg; break;
        case O_BROKER_TRANSPORT_OPTION:
            if (transport_option(&o->broker_options, optarg)) return EXIT_USAGE;
            break;
        case O_BACKEND_TRANSPORT_OPTION:
            if (transport_option(&o->backend_options, optarg)) return EXIT_USAGE;
            break;
        case 'h': fputs(call_usage, stdout); return -1;
        case ':': return bad("option needs a value:", argv[optind - 1]);
        default: return bad("unknown option", argv[optind - 1]);
        }
    }
    return 0;
}

/* Prints the meta's result (SUCCESS) or exception; returns the exit code.
 * celeriac_wait gives JSON text whatever the worker stored (JSON or msgpack);
 * NaN and Infinity are printed as Python writes them. */
static int print_result(const char *meta_text)
{
    json_t *m = pyjson_loadb(meta_text, strlen(meta_text), 0, NULL);
    const char *status = json_string_value(json_object_get(m, "status"));
    json_t *result = json_object_get(m, "result");
    char *text = pyjson_dumps(result ? result : json_null(), JSON_ENCODE_ANY | JSON_COMPACT);
    int code = EXIT_OK;
    if (status && !strcmp(status, "SUCCESS")) {
        printf("%s\n", text ? text : "null");
    } else {
        printf("%s %s\n", status ? status : "UNKNOWN", text ? text : "null");
        code = EXIT_FAILED;
    }
    free(text);
    json_decref(m);
    return code;
}

/* Positional ARGs: JSON values, or strings when they do not parse. */
static char *args_from_argv(int argc, char **argv)
{
    json_t *arr = json_array();
    for (int i = 0; i < argc; i++) {
        json_t *v = json_loads(argv[i], JSON_DECODE_ANY, NULL);
        json_array_append_new(arr, v ? v : json_string(argv[i]));
    }
    char *s = json_dumps(arr, JSON_COMPACT);
    json_decref(arr);
    return s;
}

/* `celeriac call` after its flags; returns the exit code. */
static int send_task(struct call_opts *o, int argc, char **argv)
{
    int rc;
    if (optind >= argc)
        return bad("no task name given", "");
    const char *name = argv[optind++];
    char *args = NULL;
    if (optind < argc) {
        if (o->args)
            return bad("give arguments either as ARG... or --args, not both:", argv[optind]);
        args = args_from_argv(argc - optind, argv + optind);
    }
    if (o->wait && !o->backend) {
        free(args);
        return bad("--wait needs --result-backend", "");
    }
    char err[256], id[37];
    struct celeriac_client *c = open_client(o, o->wait ? o->backend : NULL, &rc);
    if (!c) {
        free(args);
        return rc;
    }
    o->send.subscribe = o->wait;
    rc = celeriac_send(c, name, args ? args : o->args, o->kwargs, &o->send, id, err, sizeof(err));
    free(args);
    if (rc) {
        fprintf(stderr, "celeriac: %s\n", err);
        celeriac_client_free(c);
        return strstr(err, "JSON") ? EXIT_USAGE : EXIT_FAILED;
    }
    if (!o->wait) {
        printf("%s\n", id);
        celeriac_client_free(c);
        return EXIT_OK;
    }
    char *meta = NULL;
    rc = celeriac_wait(c, id, o->timeout, &meta, err, sizeof(err));
    celeriac_client_free(c);
    if (rc) {
        fprintf(stderr, "celeriac: task %s: %s\n", id, err);
        return EXIT_FAILED;
    }
    rc = print_result(meta);
    free(meta);
    return rc;
}

/* `celeriac result` after its flags; returns the exit code. */
static int read_result(struct call_opts *o, int argc, char **argv)
{
    int rc;
    if (optind >= argc)
        return bad("no task id given", "");
    if (!o->backend)
        return bad("result needs --result-backend", "");
    char err[256];
    struct celeriac_client *c = open_client(o, o->backend, &rc);
    if (!c)
        return rc;
    char *meta = NULL;
    rc = celeriac_wait(c, argv[optind], o->wait ? o->timeout : 0.001, &meta, err, sizeof(err));
    celeriac_client_free(c);
    if (rc) {
        if (!o->wait) {
            printf("PENDING\n");
            return EXIT_FAILED;
        }
        fprintf(stderr, "celeriac: task %s: %s\n", argv[optind], err);
        return EXIT_FAILED;
    }
    rc = print_result(meta);
    free(meta);
    return rc;
}

/* Parses the flags of `celeriac call` or `celeriac result`, runs it with
 * them and frees what they hold. */
static int with_call_flags(int argc, char **argv, int (*run)(struct call_opts *, int, char **))
{
    struct call_opts o;
    int rc = parse_call_flags(argc, argv, &o);
    if (!rc)
        rc = run(&o, argc, argv);
    redis_transport_options_release(&o.broker_options);
    redis_transport_options_release(&o.backend_options);
    return rc < 0 ? EXIT_OK : rc;
}

int cli_call(int argc, char **argv)
{
    return with_call_flags(argc, argv, send_task);
}

int cli_result(int argc, char **argv)
{
    return with_call_flags(argc, argv, read_result);
}
