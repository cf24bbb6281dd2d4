/* SPDX-License-Identifier: MIT
 * cli/worker.c: `celeriac worker`: flags and environment into a
 * worker_config, validation (exit 2 with one line), the start-up banner, then
 * the master. Shaped like `celery worker`.
 */
#include "common.h"
#include "cli/cli.h"
#include "broker/sql.h"
#include "metrics/listen.h"
#include "util/log.h"
#include "util/buf.h"
#include "util/pidfile.h"
#include "util/url.h"
#include "worker/autoscale.h"
#include "worker/config.h"
#include "worker/master.h"
#include "worker/scoreboard.h"

#include <getopt.h>
#include <limits.h>
#include <sys/utsname.h>

enum {
    OPT_RESULT_BACKEND = 1000,
    OPT_DB,
    OPT_ACKS_LATE,
    OPT_DB_ATTEMPTS,
    OPT_DB_BACKOFF_BASE,
    OPT_DB_BACKOFF_CAP,
    OPT_DB_CONNECT_TIMEOUT,
    OPT_DB_IDLE_CHECK,
    OPT_RESULT_EXPIRES,
    OPT_MAX_MESSAGE,
    OPT_TIME_LIMIT,
    OPT_SOFT_TIME_LIMIT,
    OPT_VISIBILITY_TIMEOUT,
    OPT_NO_REJECT_ON_WORKER_LOST,
    OPT_MAX_WORKER_LOST_REQUEUES,
    OPT_PREFETCH_MULTIPLIER,
    OPT_SQL_BATCH,
    OPT_SQL_BATCH_MS,
    OPT_QUEUE_TYPE,
    OPT_QUEUE_MAX_PRIORITY,
    OPT_MAX_TASKS_PER_CHILD,
    OPT_MAX_MEMORY_PER_CHILD,
    OPT_DB_MAX_AGE,
    OPT_DB_MAX_USES,
    OPT_SWEEP_INTERVAL,
    OPT_WITHOUT_HEARTBEAT,
    OPT_WITHOUT_CONTROL,
    OPT_MAX_CONCURRENCY,
    OPT_STATEDB,
    OPT_RESULT_SERIALIZER,
    OPT_METRICS,
    OPT_LOGFILE,
    OPT_LOG_FORMAT,
    OPT_PIDFILE,
    OPT_AUTOSCALE,
    OPT_DB_BUDGET,
    OPT_DB_POOLER,
    OPT_BROKER_TRANSPORT_OPTION,
    OPT_BACKEND_TRANSPORT_OPTION,
};

static const struct option options[] = {
    {"app", required_argument, NULL, 'A'},
    {"concurrency", required_argument, NULL, 'c'},
    {"queues", required_argument, NULL, 'Q'},
    {"broker", required_argument, NULL, 'b'},
    {"result-backend", required_argument, NULL, OPT_RESULT_BACKEND},
    {"broker-transport-option", required_argument, NULL, OPT_BROKER_TRANSPORT_OPTION},
    {"result-backend-transport-option", required_argument, NULL, OPT_BACKEND_TRANSPORT_OPTION},
    {"db", required_argument, NULL, OPT_DB},
    {"loglevel", required_argument, NULL, 'l'},
    {"hostname", required_argument, NULL, 'n'},
    {"acks-late", no_argument, NULL, OPT_ACKS_LATE},
    {"db-connect-attempts", required_argument, NULL, OPT_DB_ATTEMPTS},
    {"db-backoff-base", required_argument, NULL, OPT_DB_BACKOFF_BASE},
    {"db-backoff-cap", required_argument, NULL, OPT_DB_BACKOFF_CAP},
    {"db-connect-timeout", required_argument, NULL, OPT_DB_CONNECT_TIMEOUT},
    {"db-idle-check", required_argument, NULL, OPT_DB_IDLE_CHECK},
    {"result-expires", required_argument, NULL, OPT_RESULT_EXPIRES},
    {"result-serializer", required_argument, NULL, OPT_RESULT_SERIALIZER},
    {"max-message-size", required_argument, NULL, OPT_MAX_MESSAGE},
    {"time-limit", required_argument, NULL, OPT_TIME_LIMIT},
    {"soft-time-limit", required_argument, NULL, OPT_SOFT_TIME_LIMIT},
    {"visibility-timeout", required_argument, NULL, OPT_VISIBILITY_TIMEOUT},
    {"sql-batch", required_argument, NULL, OPT_SQL_BATCH},
    {"sql-batch-ms", required_argument, NULL, OPT_SQL_BATCH_MS},
    {"no-reject-on-worker-lost", no_argument, NULL, OPT_NO_REJECT_ON_WORKER_LOST},
    {"max-worker-lost-requeues", required_argument, NULL, OPT_MAX_WORKER_LOST_REQUEUES},
    {"prefetch-multiplier", required_argument, NULL, OPT_PREFETCH_MULTIPLIER},
    {"queue-type", required_argument, NULL, OPT_QUEUE_TYPE},
    {"queue-max-priority", required_argument, NULL, OPT_QUEUE_MAX_PRIORITY},
    {"max-tasks-per-child", required_argument, NULL, OPT_MAX_TASKS_PER_CHILD},
    {"max-memory-per-child", required_argument, NULL, OPT_MAX_MEMORY_PER_CHILD},
    {"db-max-age", required_argument, NULL, OPT_DB_MAX_AGE},
    {"db-max-uses", required_argument, NULL, OPT_DB_MAX_USES},
    {"sweep-interval", required_argument, NULL, OPT_SWEEP_INTERVAL},
    {"task-events", no_argument, NULL, 'E'},
    {"without-heartbeat", no_argument, NULL, OPT_WITHOUT_HEARTBEAT},
    {"without-remote-control", no_argument, NULL, OPT_WITHOUT_CONTROL},
    {"max-concurrency", required_argument, NULL, OPT_MAX_CONCURRENCY},
    {"statedb", required_argument, NULL, OPT_STATEDB},
    {"metrics", required_argument, NULL, OPT_METRICS},
    {"logfile", required_argument, NULL, OPT_LOGFILE},
    {"log-format", required_argument, NULL, OPT_LOG_FORMAT},
    {"pidfile", required_argument, NULL, OPT_PIDFILE},
    {"autoscale", required_argument, NULL, OPT_AUTOSCALE},
    {"db-budget", required_argument, NULL, OPT_DB_BUDGET},
    {"db-pooler", required_argument, NULL, OPT_DB_POOLER},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

static const char usage_text[] =
    "usage: celeriac worker -A LIB.so [options]\n"
    "\n"
    "Runs a Celery-compatible prefork worker whose tasks are C functions in LIB.so.\n"
    "Each child process opens its own broker and database connections after fork.\n"
    "\n"
    "  -A, --app LIB.so            task library (env CELERIAC_APP)\n"
    "  -c, --concurrency N         child processes (env CELERIAC_CONCURRENCY; default: CPUs)\n"
    "  -Q, --queues Q1,Q2          queues to consume (env CELERIAC_QUEUES; default: celery)\n"
    "  -b, --broker URL            redis://[:pass@]host:port/db (env CELERIAC_BROKER_URL;\n"
    "                              default: redis://localhost:6379/0); Redis Sentinel as\n"
    "                              kombu: 'sentinel://[:pass@]h1:26379;sentinel://h2:26379'\n"
    "      --broker-transport-option KEY=VALUE\n"
    "                              kombu's broker_transport_options; celeriac knows\n"
    "                              master_name (required with sentinel://),\n"
    "                              socket_timeout (seconds a server may stay silent;\n"
    "                              default 30) and socket_connect_timeout (default 5)\n"
    "      --result-backend URL    store results: redis://..., rpc:// (amqp:// broker),\n"
    "                              db+postgresql://... or db+sqlite:///path (Celery's\n"
    "                              celery_taskmeta table) (env CELERIAC_RESULT_BACKEND;\n"
    "                              default: none, as Celery); sentinel://... as for -b\n"
    "      --result-backend-transport-option KEY=VALUE\n"
    "                              Celery's result_backend_transport_options: master_name\n"
    "                              (required with a sentinel:// result backend),\n"
    "                              socket_timeout, socket_connect_timeout (as above)\n"
    "      --db URL                postgresql://..., a libpq conninfo, sqlite:///abs/path or\n"
    "                              sqlite://rel/path (env CELERIAC_DB_URL; default: none)\n"
    "  -l, --loglevel LEVEL        debug, info, warning, error, critical (env\n"
    "                              CELERIAC_LOGLEVEL; default: info)\n"
    "  -f, --logfile PATH          append log records to PATH, reopened on SIGUSR2\n"
    "                              (logrotate) (env CELERIAC_LOGFILE; default: stderr)\n"
    "      --log-format FORMAT     text (Celery's layout) or json (one object a line:\n"
    "                              time, level, process, message, task_id, task_name)\n"
    "                              (env CELERIAC_LOG_FORMAT; default: text)\n"
    "  -n, --hostname NAME         node name, %h = host name (env CELERIAC_HOSTNAME;\n"
    "                              default: celeriac@%h)\n"
    "      --acks-late             acknowledge every task after its result is stored\n"
    "                              (env CELERIAC_ACKS_LATE=1; default: when it starts)\n"
    "      --db-connect-attempts N tries at child start before giving up (default: 4)\n"
    "      --db-backoff-base MS    first retry delay, doubled per try (default: 500)\n"
    "      --db-backoff-cap MS     largest retry delay (default: 10000)\n"
    "      --db-connect-timeout S  libpq connect_timeout, and the longest wait for a\n"
    "                              health check or rollback (default: 5)\n"
    "      --db-idle-check MS      ping a connection idle this long before use\n"
    "                              (default: 30000; 0 = never)\n"
    "      --db-budget MODE        warn, strict or off: at start, compare the PostgreSQL\n"
    "                              connections this worker opens plus those other celeriac\n"
    "                              workers hold with max_connections minus the reserved\n"
    "                              slots; warn (default), or refuse to start (exit 2)\n"
    "      --db-pooler MODE        transaction: --db goes through a transaction pooler\n"
    "                              (PgBouncer pool_mode = transaction): keep no session\n"
    "                              state, tell the library not to prepare statements,\n"
    "                              skip the budget check; none (default)\n"
    "      --result-expires S      result TTL in seconds, 0 = never (default: 86400)\n"
    "      --result-serializer S   json, msgpack, or auto (in the task's own serializer);\n"
    "                              default: json, Celery's result_serializer default\n"
    "      --max-message-size B    larger messages are dropped unread (default: 16777216)\n"
    "      --time-limit S          hard time limit per task: the statement is cancelled and\n"
    "                              the child killed and replaced (default: none)\n"
    "      --soft-time-limit S     soft limit: the statement is cancelled and the task can\n"
    "                              see celeriac_soft_time_limit_exceeded() (default: none)\n"
    "      --visibility-timeout S  unacked messages older than this are restored to their\n"
    "                              queue by whichever worker sweeps first (default: 3600)\n"
    "      --sweep-interval S      how often each child tries that sweep (default: 60)\n"
    "      --no-reject-on-worker-lost\n"
    "                              a late-ack task whose child died fails with\n"
    "                              WorkerLostError instead of going back to the queue\n"
    "      --max-worker-lost-requeues N\n"
    "                              a late-ack message whose child died is requeued at most\n"
    "                              N times, then fails with WorkerLostError (default: 3)\n"
    "      --prefetch-multiplier N amqp://: messages each child may hold unacked per\n"
    "                              queue, beyond the ETA messages it holds (Celery's\n"
    "                              worker_prefetch_multiplier; 0 = no limit; default: 1)\n"
    "      --sql-batch N           sqla+postgresql:// as the task database: transactional\n"
    "                              tasks that may share one commit, their results stored\n"
    "                              just before it (1-64; 1 = a commit per task; default: 16)\n"
    "      --sql-batch-ms MS       no task joins a batch open longer than MS: how long a\n"
    "                              result may wait for its batch's commit, beyond its\n"
    "                              last neighbour's run (1-60000; default: 50)\n"
    "      --queue-type classic|quorum\n"
    "                              amqp://: x-queue-type of the queues it declares (Celery's\n"
    "                              task_default_queue_type; a queue that exists is used as\n"
    "                              it is; default: the server's)\n"
    "      --queue-max-priority N  amqp://: x-max-priority of the queues it declares\n"
    "                              (Celery's task_queue_max_priority; default: none)\n"
    "      --max-tasks-per-child N replace a child after N tasks (default: never)\n"
    "      --max-memory-per-child KIB\n"
    "                              replace a child whose RSS exceeds KIB after a task\n"
    "      --db-max-age S          reopen a database connection after about S seconds\n"
    "                              (80-100%, jittered; default: never)\n"
    "      --db-max-uses N         reopen it after about N tasks (jittered; default: never)\n"
    "  -E, --task-events           send task events (celery events, Flower); also\n"
    "                              switched by `celery control enable_events`\n"
    "      --without-heartbeat     send no worker-online/heartbeat/offline events\n"
    "      --without-remote-control\n"
    "                              no control process: celery inspect/control and\n"
    "                              revoke do not reach this worker\n"
    "      --max-concurrency N     how far `celery control pool_grow` may go\n"
    "      --statedb FILE          keep revoked task ids in FILE across restarts (Celery's\n"
    "                              --statedb; each is refused for three hours)\n"
    "                              (default: the larger of -c and 64)\n"
    "      --metrics ADDR:PORT     serve Prometheus metrics on http://ADDR:PORT/metrics\n"
    "                              (env CELERIAC_METRICS; default: off)\n"
    "      --autoscale MAX,MIN     start MIN children (default 1), grow towards MAX while\n"
    "                              every child is busy, shrink back after an idle\n"
    "                              AUTOSCALE_KEEPALIVE seconds (env; default: 30)\n"
    "      --pidfile PATH          write the master's pid to PATH (for celeriac reload)\n"
    "  -h, --help                  this help\n"
    "\n"
    "Exit status: 0 clean shutdown, 2 bad usage or configuration, 3 no child could\n"
    "connect to its database.\n";

ATTR_PRINTF(1, 2) static int usage_error(const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    fprintf(stderr, "celeriac worker: %s (see --help)\n", line);
    return EXIT_USAGE;
}

/* --result-serializer: json (Celery's default), msgpack, or auto. */
static int parse_result_serializer(const char *s, enum result_serializer *out)
{
    static const struct {
        const char *name;
        enum result_serializer value;
    } names[] = {
        {"json", RESULT_SERIALIZER_JSON},
        {"msgpack", RESULT_SERIALIZER_MSGPACK},
        {"auto", RESULT_SERIALIZER_AUTO},
    };
    for (size_t i = 0; i < ARRAY_SIZE(names); i++)
        if (!strcmp(s, names[i].name)) {
            *out = names[i].value;
            return 0;
        }
    return usage_error("--result-serializer wants json, msgpack or auto, got '%s'", s);
}

static int parse_long(const char *flag, const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return usage_error("%s wants an integer in %ld..%ld, got '%s'", flag, lo, hi, s);
    *out = v;
    return 0;
}

/* A positive number of seconds (fractions allowed). */
static int parse_double(const char *flag, const char *s, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v > 0) || v > 1e9)
        return usage_error("%s wants a positive number of seconds, got '%s'", flag, s);
    *out = v;
    return 0;
}

static void set_str(char **field, const char *value)
{
    free(*field);
    *field = xstrdup(value);
}

static int set_queues(struct worker_config *cfg, const char *list)
{
    for (size_t i = 0; i < cfg->broker.n_queues; i++)
        free(cfg->broker.queues[i]);
    free(cfg->broker.queues);
    cfg->broker.queues = NULL;
    cfg->broker.n_queues = 0;
    const char *p = list;
    while (*p) {
        size_t n = strcspn(p, ",");
        const char *start = p;
        while (n && *start == ' ') {
            start++;
            n--;
        }
        while (n && start[n - 1] == ' ')
            n--;
        if (n) {
            if (n > 200)
                return usage_error("queue name longer than 200 bytes");
            cfg->broker.queues = xrealloc(cfg->broker.queues,
                                          (cfg->broker.n_queues + 1) * sizeof(char *));
            cfg->broker.queues[cfg->broker.n_queues++] = xstrndup(start, n);
        }
        p += strcspn(p, ",");
        if (*p)
            p++;
    }
    if (!cfg->broker.n_queues)
        return usage_error("-Q names no queue");
    if (cfg->broker.n_queues > QUEUES_MAX)
        return usage_error("-Q names more than 1024 queues");
    return 0;
}

static char *expand_node_name(const char *pattern)
{
    char host[256] = "localhost";
    gethostname(host, sizeof(host) - 1);
    struct buf b = BUF_INIT;
    for (const char *p = pattern; *p; p++) {
        if (p[0] == '%' && p[1] == 'h') {
            buf_adds(&b, host);
            p++;
        } else if (p[0] == '%' && p[1] == 'n') {
            buf_add(&b, host, strcspn(host, "."));
            p++;
        } else {
            buf_addch(&b, *p);
        }
    }
    if (!strchr(b.data, '@')) { /* Celery's rule: a bare name gets @host */
        buf_addch(&b, '@');
        buf_adds(&b, host);
    }
    return buf_detach(&b, NULL);
}

/* --metrics ADDR:PORT (or CELERIAC_METRICS, named by from), checked now
 * so a typo is exit 2; the metrics process binds it. */
static int set_metrics(struct worker_config *cfg, const char *v, const char *from)
{
    char host[256], port[8];
    struct err e = {0};
    if (metrics_listen_parse(v, host, sizeof(host), port, sizeof(port), &e))
        return usage_error("%s%s%s", strcmp(from, "--metrics") ? from : "",
                           strcmp(from, "--metrics") ? ": " : "", e.msg);
    set_str(&cfg->metrics, v);
    return 0;
}

/* --broker-transport-option / --result-backend-transport-option KEY=VALUE
 * (util/url.h, shared with the other commands and the C client). */
static int set_transport_option(struct redis_transport_options *o, const char *kv)
{
    struct err e = {0};
    return redis_transport_options_set(o, kv, &e) ? usage_error("%s", e.msg) : 0;
}

/* Puts the transport options into the Redis URL they apply to, or refuses
 * them for a URL that is not Redis (u NULL). */
static int attach_transport_options(struct redis_url *u, const struct redis_transport_options *o,
                                    const char *what)
{
    struct err e = {0};
    if (u ? redis_transport_options_apply(o, u, what, &e)
          : redis_transport_options_refuse(o, what, &e))
        return usage_error("%s", e.msg);
    return 0;
}

/* Environment first, so flags override it. */
static int apply_env(struct worker_config *cfg, const char **db_url)
{
    const char *v;
    long n;
    if ((v = getenv("CELERIAC_APP")) && *v)
        set_str(&cfg->app_path, v);
    if ((v = getenv("CELERIAC_CONCURRENCY")) && *v) {
        if (parse_long("CELERIAC_CONCURRENCY", v, 1, 1024, &n))
            return EXIT_USAGE;
        cfg->concurrency = (int)n;
    }
    if ((v = getenv("CELERIAC_QUEUES")) && *v && set_queues(cfg, v))
        return EXIT_USAGE;
    if ((v = getenv("CELERIAC_BROKER_URL")) && *v)
        set_str(&cfg->broker_url, v);
    if ((v = getenv("CELERIAC_RESULT_BACKEND")) && *v)
        set_str(&cfg->backend_url, v);
    if ((v = getenv("CELERIAC_DB_URL")) && *v)
        *db_url = v;
    if ((v = getenv("CELERIAC_LOGLEVEL")) && *v && log_parse_level(v, &cfg->log_level))
        return usage_error("unknown log level '%s' in CELERIAC_LOGLEVEL", v);
    if ((v = getenv("CELERIAC_LOGFILE")) && *v)
        set_str(&cfg->logfile, v);
    if ((v = getenv("CELERIAC_LOG_FORMAT")) && *v && log_parse_format(v, &cfg->log_format))
        return usage_error("unknown log format '%s' in CELERIAC_LOG_FORMAT (want text or json)",
                           v);
    if ((v = getenv("CELERIAC_HOSTNAME")) && *v)
        set_str(&cfg->node_name, v);
    if ((v = getenv("CELERIAC_METRICS")) && *v && set_metrics(cfg, v, "CELERIAC_METRICS"))
        return EXIT_USAGE;
    if ((v = getenv("CELERIAC_ACKS_LATE")) && *v)
        cfg->acks_late = strcmp(v, "0") && strcasecmp(v, "false") && strcasecmp(v, "no");
    return 0;
}

static int parse_flags(struct worker_config *cfg, int argc, char **argv, const char **db_url)
{
    long n;
    int opt;
    optind = 1;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, ":A:c:Q:b:l:n:f:hE", options, NULL)) != -1) {
        switch (opt) {
        case 'A':
            set_str(&cfg->app_path, optarg);
            break;
        case 'c':
            if (parse_long("-c", optarg, 1, 1024, &n))
                return EXIT_USAGE;
            cfg->concurrency = (int)n;
            break;
        case 'Q':
            if (set_queues(cfg, optarg))
                return EXIT_USAGE;
            break;
        case 'b':
            set_str(&cfg->broker_url, optarg);
            break;
        case OPT_RESULT_BACKEND:
            set_str(&cfg->backend_url, optarg);
            break;
        case OPT_BROKER_TRANSPORT_OPTION:
            if (set_transport_option(&cfg->broker_options, optarg))
                return EXIT_USAGE;
            break;
        case OPT_BACKEND_TRANSPORT_OPTION:
            if (set_transport_option(&cfg->backend_options, optarg))
                return EXIT_USAGE;
            break;
        case OPT_DB:
            *db_url = optarg;
            break;
        case 'l':
            if (log_parse_level(optarg, &cfg->log_level))
                return usage_error("unknown log level '%s'", optarg);
            break;
        case 'n':
            set_str(&cfg->node_name, optarg);
            break;
        case 'f':
        case OPT_LOGFILE:
            set_str(&cfg->logfile, optarg);
            break;
        case OPT_LOG_FORMAT:
            if (log_parse_format(optarg, &cfg->log_format))
                return usage_error("--log-format wants text or json, got '%s'", optarg);
            break;
        case OPT_ACKS_LATE:
            cfg->acks_late = true;
            break;
        case OPT_DB_ATTEMPTS:
            if (parse_long("--db-connect-attempts", optarg, 1, 1000, &n))
                return EXIT_USAGE;
            cfg->db.attempts = (int)n;
            break;
        case OPT_DB_BACKOFF_BASE:
            if (parse_long("--db-backoff-base", optarg, 1, 3600000, &n))
                return EXIT_USAGE;
            cfg->db.backoff_base_ms = n;
            break;
        case OPT_DB_BACKOFF_CAP:
            if (parse_long("--db-backoff-cap", optarg, 1, 3600000, &n))
                return EXIT_USAGE;
            cfg->db.backoff_cap_ms = n;
            break;
        case OPT_DB_CONNECT_TIMEOUT:
            if (parse_long("--db-connect-timeout", optarg, 1, 3600, &n))
                return EXIT_USAGE;
            cfg->db.connect_timeout_s = (int)n;
            break;
        case OPT_DB_IDLE_CHECK:
            if (parse_long("--db-idle-check", optarg, 0, 86400000, &n))
                return EXIT_USAGE;
            cfg->db.idle_check_ms = n;
            break;
        case OPT_RESULT_EXPIRES:
            if (parse_long("--result-expires", optarg, 0, INT32_MAX, &n))
                return EXIT_USAGE;
            cfg->backend.expires_s = (int)n;
            break;
        case OPT_RESULT_SERIALIZER:
            if (parse_result_serializer(optarg, &cfg->backend.serializer))
                return EXIT_USAGE;
            break;
        case OPT_MAX_MESSAGE:
            if (parse_long("--max-message-size", optarg, 1024, 512L * 1024 * 1024, &n))
                return EXIT_USAGE;
            cfg->broker.max_message = (size_t)n;
            break;
        case OPT_TIME_LIMIT:
            if (parse_double("--time-limit", optarg, &cfg->time_limit))
                return EXIT_USAGE;
            break;
        case OPT_SOFT_TIME_LIMIT:
            if (parse_double("--soft-time-limit", optarg, &cfg->soft_time_limit))
                return EXIT_USAGE;
            break;
        case OPT_VISIBILITY_TIMEOUT:
            if (parse_double("--visibility-timeout", optarg, &cfg->visibility_timeout))
                return EXIT_USAGE;
            break;
        case OPT_SWEEP_INTERVAL:
            if (parse_long("--sweep-interval", optarg, 1, 86400, &n))
                return EXIT_USAGE;
            cfg->sweep_interval_s = (int)n;
            break;
        case OPT_NO_REJECT_ON_WORKER_LOST:
            cfg->reject_on_worker_lost = false;
            break;
        case OPT_MAX_WORKER_LOST_REQUEUES:
            if (parse_long("--max-worker-lost-requeues", optarg, 0, 1000000, &n))
                return EXIT_USAGE;
            cfg->max_worker_lost_requeues = (int)n;
            break;
        case OPT_SQL_BATCH:
            if (parse_long("--sql-batch", optarg, 1, SQL_BATCH_MAX, &n))
                return EXIT_USAGE;
            cfg->broker.sql_batch = (int)n;
            break;
        case OPT_SQL_BATCH_MS:
            if (parse_long("--sql-batch-ms", optarg, 1, 60000, &n))
                return EXIT_USAGE;
            cfg->broker.sql_batch_ms = (int)n;
            break;
        case OPT_PREFETCH_MULTIPLIER:
            if (parse_long("--prefetch-multiplier", optarg, 0, 65535, &n))
                return EXIT_USAGE;
            cfg->broker.prefetch = (int)n;
            break;
        case OPT_QUEUE_TYPE:
            if (strcmp(optarg, "classic") && strcmp(optarg, "quorum"))
                return usage_error("--queue-type must be classic or quorum, not '%s'", optarg);
            cfg->broker.queue_type = optarg[0] == 'q' ? "quorum" : "classic";
            break;
        case OPT_QUEUE_MAX_PRIORITY:
            if (parse_long("--queue-max-priority", optarg, 1, 255, &n))
                return EXIT_USAGE;
            cfg->broker.queue_max_priority = (int)n;
            break;
        case OPT_MAX_TASKS_PER_CHILD:
            if (parse_long("--max-tasks-per-child", optarg, 1, LONG_MAX, &n))
                return EXIT_USAGE;
            cfg->max_tasks_per_child = (uint64_t)n;
            break;
        case OPT_MAX_MEMORY_PER_CHILD:
            if (parse_long("--max-memory-per-child", optarg, 1, LONG_MAX, &n))
                return EXIT_USAGE;
            cfg->max_memory_per_child = (uint64_t)n;
            break;
        case OPT_DB_MAX_AGE:
            if (parse_long("--db-max-age", optarg, 1, 86400 * 365, &n))
                return EXIT_USAGE;
            cfg->db.max_age_ms = n * 1000;
            break;
        case OPT_DB_MAX_USES:
            if (parse_long("--db-max-uses", optarg, 1, LONG_MAX, &n))
                return EXIT_USAGE;
            cfg->db.max_uses = (uint64_t)n;
            break;
        case 'E':
            cfg->task_events = true;
            break;
        case OPT_WITHOUT_HEARTBEAT:
            cfg->without_heartbeat = true;
            break;
        case OPT_WITHOUT_CONTROL:
            cfg->remote_control = false;
            break;
        case OPT_METRICS:
            if (set_metrics(cfg, optarg, "--metrics"))
                return EXIT_USAGE;
            break;
        case OPT_STATEDB:
            free(cfg->statedb);
            cfg->statedb = xstrdup(optarg);
            break;
        case OPT_PIDFILE:
            set_str(&cfg->pidfile, optarg);
            break;
        case OPT_AUTOSCALE: {
            struct err e = {0};
            if (autoscale_parse(cfg, optarg, &e))
                return usage_error("%s", e.msg);
            break;
        }
        case OPT_DB_BUDGET:
            if (!strcmp(optarg, "warn"))
                cfg->db_budget = DB_BUDGET_WARN;
            else if (!strcmp(optarg, "strict"))
                cfg->db_budget = DB_BUDGET_STRICT;
            else if (!strcmp(optarg, "off"))
                cfg->db_budget = DB_BUDGET_OFF;
            else
                return usage_error("--db-budget wants warn, strict or off, got '%s'", optarg);
            break;
        case OPT_DB_POOLER:
            if (!strcmp(optarg, "transaction"))
                cfg->db.pooled = true;
            else if (!strcmp(optarg, "none"))
                cfg->db.pooled = false;
            else
                return usage_error("--db-pooler wants transaction or none, got '%s'", optarg);
            break;
        case OPT_MAX_CONCURRENCY:
            if (parse_long("--max-concurrency", optarg, 1, 4096, &n))
                return EXIT_USAGE;
            cfg->max_concurrency = (int)n;
            break;
        case 'h':
            fputs(usage_text, stdout);
            return -1;
        case ':':
            return usage_error("option '%s' needs a value", argv[optind - 1]);
        default:
            return usage_error("unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return usage_error("unexpected argument '%s'", argv[optind]);
    return 0;
}

/* The broker URL picks the transport by its scheme: amqp://, amqps:// and
 * pyamqp:// are RabbitMQ, sqla+... and sqlalchemy+... kombu's SQL transport,
 * everything else goes to the Redis parser, which refuses a scheme it does
 * not know. 0 or -EINVAL with the reason in e. */
static int parse_broker_url(struct worker_config *cfg, struct err *e)
{
    if (sql_broker_url_is_sql(cfg->broker_url)) {
        cfg->broker.kind = BROKER_SQL;
        return sql_broker_url_parse(cfg->broker_url, &cfg->broker.sql, e);
    }
    if (!amqp_url_is_amqp(cfg->broker_url)) {
        cfg->broker.kind = BROKER_REDIS;
        int rc = redis_url_parse(&cfg->broker.url, cfg->broker_url, e);
        const char *sep = strstr(cfg->broker_url, "://");
        if (rc && sep && strstr(e->msg, "unsupported scheme"))
            err_set(e, rc, "unsupported scheme '%.*s' (want redis://, redis+socket://, "
                    "sentinel://, amqp://, amqps://, pyamqp://, sqla+postgresql:// or "
                    "sqla+sqlite:///)",
                    (int)(sep - cfg->broker_url > 32 ? 32 : sep - cfg->broker_url),
                    cfg->broker_url);
        return rc;
    }
    cfg->broker.kind = BROKER_AMQP;
    return amqp_url_parse(&cfg->broker.amqp, cfg->broker_url, e);
}

/* kombu's SQL transport has no fanout: Celery runs no remote control and
 * sends no events on it, and neither do we (one line says so). The broker
 * connection is opened as the tasks' is, with the same timeouts. (-Q
 * already refuses names longer than kombu's VARCHAR(200).) */
static void gate_sql(struct worker_config *cfg)
{
    if (cfg->broker.kind != BROKER_SQL)
        return;
    if (cfg->remote_control || cfg->task_events)
        log_info("the SQL transport has no broadcast: no remote control and no events (as "
                 "with Celery)");
    cfg->remote_control = false;
    cfg->task_events = false;
    cfg->without_heartbeat = true;
    cfg->broker.record_unacked = false;
    struct db_config *sql = &cfg->broker.sql;
    sql->attempts = 1;
    sql->backoff_base_ms = cfg->db.backoff_base_ms;
    sql->backoff_cap_ms = cfg->db.backoff_cap_ms;
    sql->connect_timeout_s = cfg->db.connect_timeout_s;
    sql->busy_timeout_ms = cfg->db.busy_timeout_ms;
}

/* What AMQP does not need is turned off: kombu's unacked hash (the server
 * requeues what a closed connection held). */
static void gate_amqp(struct worker_config *cfg)
{
    if (cfg->broker.kind != BROKER_AMQP)
        return;
    cfg->broker.record_unacked = false;
    if (!cfg->backend_url)
        log_warning("no --result-backend: task results are not stored (with an amqp:// "
                    "broker: --result-backend redis://... or rpc://)");
}

static int validate(struct worker_config *cfg, const char *db_url)
{
    struct err e = {0};
    if (!cfg->app_path)
        return usage_error("no task library: pass -A LIB.so");
    if (!cfg->broker_url)
        cfg->broker_url = xstrdup("redis://localhost:6379/0");
    if (parse_broker_url(cfg, &e))
        return usage_error("bad broker URL: %s", e.msg);
    if (attach_transport_options(cfg->broker.kind == BROKER_REDIS ? &cfg->broker.url : NULL,
                                 &cfg->broker_options, "broker"))
        return EXIT_USAGE;
    if (cfg->broker.queue_max_priority && cfg->broker.queue_type &&
        !strcmp(cfg->broker.queue_type, "quorum"))
        return usage_error("--queue-max-priority applies to classic queues only: quorum queues "
                           "refuse x-max-priority");
    if (!cfg->broker.n_queues && set_queues(cfg, "celery"))
        return EXIT_USAGE;
    if (cfg->backend_url && !strncasecmp(cfg->backend_url, "rpc://", 6)) {
        if (cfg->broker.kind == BROKER_REDIS)
            return usage_error("bad result backend URL: rpc:// needs an amqp:// or sqla+ broker "
                               "here; with Redis use --result-backend redis://...");
        cfg->backend.kind = BACKEND_RPC;
        cfg->backend.enabled = true;
    } else if (cfg->backend_url && !strncasecmp(cfg->backend_url, "db+", 3)) {
        if (backend_db_parse_url(&cfg->backend.db, cfg->backend_url, &e))
            return usage_error("bad result backend URL: %s", e.msg);
        /* the result connection waits as long as the tasks' one */
        cfg->backend.db.connect_timeout_s = cfg->db.connect_timeout_s;
        cfg->backend.db.busy_timeout_ms = cfg->db.busy_timeout_ms;
        cfg->backend.kind = BACKEND_DB;
        cfg->backend.enabled = true;
    } else if (cfg->backend_url) {
        if (redis_url_parse(&cfg->backend.url, cfg->backend_url, &e))
            return usage_error("bad result backend URL: %s", e.msg);
        if (attach_transport_options(&cfg->backend.url, &cfg->backend_options, "result backend"))
            return EXIT_USAGE;
        cfg->backend.enabled = true;
    }
    if ((!cfg->backend_url || cfg->backend.kind != BACKEND_REDIS) &&
        attach_transport_options(NULL, &cfg->backend_options, "result backend"))
        return EXIT_USAGE;
    if (db_url) {
        if (db_url_classify(db_url, &cfg->db.kind, &cfg->db.sqlite_path, &e))
            return usage_error("bad database URL: %s", e.msg);
        cfg->db.url = xstrdup(db_url);
        if (cfg->db.kind == DB_POSTGRES) {
            if (db_pg_describe(db_url, &cfg->db.where, &e))
                return usage_error("bad database URL: %s", e.msg);
        } else {
            cfg->db.where = xstrdup(cfg->db.sqlite_path);
        }
    }
    if (cfg->db.pooled && cfg->db.kind != DB_POSTGRES)
        return usage_error("--db-pooler transaction needs a postgresql:// --db");
    if (cfg->autoscale_max) { /* as Celery: the autoscaler decides, -c is not used */
        cfg->concurrency = cfg->autoscale_min;
        if (cfg->max_concurrency < cfg->autoscale_max)
            cfg->max_concurrency = cfg->autoscale_max;
    }
    if (!cfg->max_concurrency)
        cfg->max_concurrency = cfg->concurrency > 64 ? cfg->concurrency : 64;
    if (cfg->db.backoff_cap_ms < cfg->db.backoff_base_ms)
        cfg->db.backoff_cap_ms = cfg->db.backoff_base_ms;
    char *node = expand_node_name(cfg->node_name ? cfg->node_name : "celeriac@%h");
    free(cfg->node_name);
    cfg->node_name = node;
    if (library_load(&cfg->lib, cfg->app_path, &e))
        return usage_error("%s", e.msg);
    /* kombu's unacked record protects a message while its task runs only
     * for late ack; with early ack it would live from the pop to the task's
     * start, and the child's hand (broker/redis.h) covers that for less. A
     * task flagged to ack late has its message recorded before it starts
     * (keep); with --acks-late every pop records at once. */
    cfg->broker.record_unacked = cfg->acks_late;
    const char *transactional = NULL;
    for (size_t i = 0; i < cfg->lib.n_tasks; i++) {
        unsigned flags = cfg->lib.desc->tasks[i].flags;
        if ((flags & CELERIAC_TRANSACTIONAL) && !transactional)
            transactional = cfg->lib.desc->tasks[i].name;
    }
    /* The SQL transport keeps session state on its connection (LISTEN, its
     * prepared statements): it needs PostgreSQL itself, not the pooler.
     * NEEDSWORK(#14): a sqla+ URL naming the pooler by another host:port than
     * --db is not recognised; its statements are then prepared again after a
     * 26000 or run unprepared, but its LISTEN (on whichever server session
     * ran it) wakes it only by chance. */
    if (cfg->db.pooled && sql_broker_is_task_db(&cfg->broker, &cfg->db))
        return usage_error("--db-pooler transaction: the sqla+ broker cannot use the pooled "
                           "--db '%s' (LISTEN and prepared statements need a session); give "
                           "--broker a URL that reaches PostgreSQL directly", cfg->db.where);
    cfg->transactional = transactional && sql_broker_is_task_db(&cfg->broker, &cfg->db);
    cfg->broker_shares_db = cfg->transactional && cfg->db.kind == DB_POSTGRES;
    if (transactional && !cfg->transactional)
        log_warning("task %s (and any other transactional task) runs as an ordinary late-ack "
                    "task: one commit for its writes and its ack needs the broker in its "
                    "database (--broker sqla+... naming the --db database)", transactional);
    gate_amqp(cfg);
    gate_sql(cfg);
    return 0;
}

static void print_banner(const struct worker_config *cfg)
{
    struct utsname un;
    uname(&un);
    struct buf broker = BUF_INIT, backend = BUF_INIT, db = BUF_INIT;
    url_mask(&broker, cfg->broker_url);
    if (cfg->backend_url)
        url_mask(&backend, cfg->backend_url);
    else
        buf_adds(&backend, "disabled");
    if (cfg->db.url) {
        url_mask(&db, cfg->db.url);
        buf_adds(&db, cfg->db.pooled            ? " (one connection per child, through a "
                                                  "transaction pooler)"
                      : cfg->broker_shares_db ? " (one connection per child, the broker's too)"
                                              : " (one connection per child)");
    } else {
        buf_adds(&db, "none");
    }
    printf("\n -------------- %s v%s\n"
           "--- ***** ----- %s %s %s\n"
           "-- ******* ---- \n"
           "- *** --- * --- [config]\n"
           "- ** ---------- .> app:         %s (%s)\n"
           "- ** ---------- .> transport:   %s\n"
           "- ** ---------- .> results:     %s\n"
           "- ** ---------- .> database:    %s\n"
           "- *** --- * --- .> concurrency: %d (prefork)\n"
           "-- ******* ---- .> acks:        %s\n"
           "--- ***** ----- .> task events: %s\n"
           "--- ***** ----- \n"
           " -------------- [queues]\n",
           cfg->node_name, CELERIAC_VERSION, un.sysname, un.release, un.machine,
           cfg->lib.desc->name ? cfg->lib.desc->name : "tasks", cfg->lib.path, broker.data,
           backend.data, db.data, cfg->concurrency, cfg->acks_late ? "late" : "early",
           cfg->task_events ? "ON" : "OFF (enable -E to monitor tasks in this worker)");
    for (size_t i = 0; i < cfg->broker.n_queues; i++)
        printf("                .> %-16s exchange=%s(direct) key=%s\n", cfg->broker.queues[i],
               cfg->broker.queues[i], cfg->broker.queues[i]);
    printf("\n[tasks]\n");
    for (size_t i = 0; i < cfg->lib.n_tasks; i++) {
        const struct celeriac_task_def *t = &cfg->lib.desc->tasks[i];
        printf("  . %s%s%s\n", t->name, t->flags & CELERIAC_ACKS_LATE ? " (acks_late)" : "",
               t->flags & CELERIAC_IDEMPOTENT ? " (idempotent)" : "");
    }
    printf("\n");
    fflush(stdout);
    buf_release(&broker);
    buf_release(&backend);
    buf_release(&db);
}

/* --logfile and --log-format, before anything logs: the file is opened
 * here, by the master before its first fork, and every process appends to
 * it. A file that cannot be opened stops the start with one line. */
static int open_log(struct worker_config *cfg)
{
    log_set_format(cfg->log_format);
    if (!cfg->logfile)
        return 0;
    struct err e = {0};
    if (log_open_file(cfg->logfile, &e)) {
        fprintf(stderr, "celeriac worker: %s\n", e.msg);
        return EXIT_USAGE;
    }
    return 0;
}

int cli_worker(int argc, char **argv)
{
    struct worker_config cfg;
    worker_config_init(&cfg);
    const char *db_url = NULL;
    int rc = apply_env(&cfg, &db_url);
    if (!rc)
        rc = parse_flags(&cfg, argc, argv, &db_url);
    if (!rc)
        rc = open_log(&cfg);
    if (!rc)
        rc = validate(&cfg, db_url);
    if (rc) {
        worker_config_release(&cfg);
        return rc < 0 ? EXIT_OK : rc;
    }
    log_set_level(cfg.log_level);
    struct err e = {0};
    if (cfg.pidfile && pidfile_write(cfg.pidfile, &e)) {
        fprintf(stderr, "celeriac worker: %s\n", e.msg);
        worker_config_release(&cfg);
        return EXIT_USAGE;
    }
    print_banner(&cfg);
    rc = master_run(&cfg);
    pidfile_remove(cfg.pidfile);
    worker_config_release(&cfg);
    return rc;
}
