/* SPDX-License-Identifier: MIT
 * cli/status.c: `celeriac status`: what each child of a worker on this host
 * is doing, read from the worker's scoreboard file (read-only). No broker,
 * no database: for remote workers use `celeriac inspect`.
 */
#include "common.h"
#include "cli/cli.h"
#include "util/buf.h"
#include "util/time.h"
#include "worker/config.h"
#include "worker/scoreboard.h"

#include <dirent.h>
#include <getopt.h>
#include <jansson.h>
#include <signal.h>

static const char status_usage[] =
    "usage: celeriac status [-n NODE | --pid PID] [--json]\n"
    "\n"
    "Prints the master and every child of a worker running on this host: state,\n"
    "current task, database connection, tasks done. Reads the worker's scoreboard\n"
    "($CELERIAC_RUNTIME_DIR or /dev/shm, celeriac-<node>.board); without -n or\n"
    "--pid, every worker found there.\n"
    "\n"
    "  -n, --hostname NODE   the worker's node name (a bare name matches NODE@any host)\n"
    "  --pid PID             the worker whose master or child has this pid\n"
    "  --json                one JSON object per worker, a JSON array in all\n";

enum { O_PID = 1000, O_JSON };

static const struct option status_options[] = {
    {"hostname", required_argument, NULL, 'n'}, {"pid", required_argument, NULL, O_PID},
    {"json", no_argument, NULL, O_JSON},         {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

struct status_opts {
    const char *node;   /* borrowed from argv; NULL: any */
    pid_t pid;          /* 0: any */
    bool json;
};

static bool pid_is_alive(pid_t pid)
{
    return pid > 0 && (!kill(pid, 0) || errno == EPERM);
}

static bool node_matches(const char *want, const char *node)
{
    if (!strcmp(want, node))
        return true;
    size_t n = strlen(want);
    return !strchr(want, '@') && !strncmp(node, want, n) && node[n] == '@';
}

static bool board_matches(const struct scoreboard *sb, const struct status_opts *o)
{
    if (o->node && !node_matches(o->node, sb->header->node))
        return false;
    if (!o->pid || sb->header->master_pid == o->pid)
        return true;
    for (size_t i = 0; i < sb->n; i++)
        if (atomic_load(&sb->slots[i].pid) == o->pid)
            return true;
    return false;
}

static const char *db_state_name(int s)
{
    return s == DBS_UP ? "up" : s == DBS_DOWN ? "down" : "none";
}

/* "1h02m", "3m05s", "4.2s" */
static void add_duration(struct buf *b, double s)
{
    if (s < 0)
        s = 0;
    if (s < 60)
        buf_addf(b, "%.1fs", s);
    else if (s < 3600)
        buf_addf(b, "%dm%02ds", (int)s / 60, (int)s % 60);
    else if (s < 86400)
        buf_addf(b, "%dh%02dm", (int)s / 3600, (int)s % 3600 / 60);
    else
        buf_addf(b, "%dd%02dh", (int)(s / 86400), (int)s % 86400 / 3600);
}

/* One child's slot as the reader sees it: a copy of the hints (the task
 * name and id may be torn while the child writes them). */
struct child_view {
    int pid, state, db;
    unsigned reconnects;
    uint64_t done;
    double running_s;        /* < 0: no task */
    double db_age_s;         /* < 0: no connection */
    char task_id[41];
    char task_name[97];
};

/* Seconds to the millisecond, as the monotonic clock gives them. */
static double ms_to_s(int64_t ms)
{
    return (double)ms / 1000.0;
}

static void child_view(const struct slot *s, int64_t now, struct child_view *v)
{
    v->pid = atomic_load(&s->pid);
    v->state = atomic_load(&s->state);
    v->db = atomic_load(&s->db_state);
    v->reconnects = atomic_load(&s->reconnects);
    v->done = atomic_load(&s->tasks_done);
    int64_t started = atomic_load(&s->task_started_ms), opened = atomic_load(&s->db_opened_ms);
    v->running_s = v->state == CHILD_BUSY && started ? ms_to_s(now - started) : -1;
    v->db_age_s = v->db == DBS_UP && opened ? ms_to_s(now - opened) : -1;
    snprintf(v->task_id, sizeof(v->task_id), "%.40s", s->task_id);
    snprintf(v->task_name, sizeof(v->task_name), "%.96s", s->task_name);
    if (v->running_s < 0)
        v->task_id[0] = v->task_name[0] = '\0';
}

/* Slots past the pool's target that never held a child are not shown. */
static bool slot_is_shown(const struct scoreboard *sb, size_t i, const struct child_view *v)
{
    return v->state != CHILD_EMPTY || v->pid || (int)i < atomic_load(&sb->shared->pool_target);
}

static void print_text(const struct scoreboard *sb)
{
    const struct board_header *h = sb->header;
    int64_t now = time_mono_ms();
    struct buf line = BUF_INIT;
    buf_addf(&line, "%s: master pid %d, up ", h->node, (int)h->master_pid);
    add_duration(&line, time_now() - sb->shared->started);
    buf_addf(&line, ", pool %d", atomic_load(&sb->shared->pool_target));
    puts(line.data);
    printf("  %-3s %-8s %-10s %-8s %-10s %-7s %-6s %s\n", "#", "PID", "STATE", "DB", "CONN AGE",
           "RECONN", "DONE", "TASK");
    for (size_t i = 0; i < sb->n; i++) {
        struct child_view v;
        child_view(&sb->slots[i], now, &v);
        if (!slot_is_shown(sb, i, &v))
            continue;
        buf_reset(&line);
        buf_addf(&line, "  %-3zu %-8d %-10s %-8s ", i, v.pid, child_state_name(v.state),
                 db_state_name(v.db));
        size_t at = line.len;
        if (v.db_age_s >= 0)
            add_duration(&line, v.db_age_s);
        else
            buf_adds(&line, "-");
        buf_addf(&line, "%*s %-7u %-6" PRIu64 " ", (int)(10 - (line.len - at)), "", v.reconnects,
                 v.done);
        if (v.running_s >= 0) {
            buf_addf(&line, "%s[%s] for ", v.task_name, v.task_id);
            add_duration(&line, v.running_s);
        } else {
            buf_adds(&line, "-");
        }
        puts(line.data);
    }
    buf_release(&line);
}

static json_t *board_json(const struct scoreboard *sb)
{
    const struct board_header *h = sb->header;
    int64_t now = time_mono_ms();
    json_t *children = json_array();
    for (size_t i = 0; i < sb->n; i++) {
        struct child_view v;
        child_view(&sb->slots[i], now, &v);
        if (!slot_is_shown(sb, i, &v))
            continue;
        json_t *task = json_null();
        if (v.running_s >= 0)
            task = json_pack("{s:s, s:s, s:f}", "name", v.task_name, "id", v.task_id,
                             "running_s", v.running_s);
        json_array_append_new(
            children,
            json_pack("{s:I, s:i, s:s, s:o, s:s, s:o, s:I, s:I}", "index", (json_int_t)i, "pid",
                      v.pid, "state", child_state_name(v.state), "task", task, "db",
                      db_state_name(v.db), "db_connection_age_s",
                      v.db_age_s >= 0 ? json_real(v.db_age_s) : json_null(), "reconnects",
                      (json_int_t)v.reconnects, "tasks_done", (json_int_t)v.done));
    }
    return json_pack("{s:s, s:i, s:f, s:i, s:o}", "node", h->node, "master_pid",
                     (int)h->master_pid, "uptime_s",
                     (double)(int64_t)((time_now() - sb->shared->started) * 1000.0) / 1000.0, "pool_target",
                     atomic_load(&sb->shared->pool_target), "children", children);
}

static int parse_status_flags(int argc, char **argv, struct status_opts *o)
{
    memset(o, 0, sizeof(*o));
    optind = 1;
    opterr = 0;
    int opt;
    while ((opt = getopt_long(argc, argv, ":n:h", status_options, NULL)) != -1) {
        char *end;
        long v;
        switch (opt) {
        case 'n': o->node = optarg; break;
        case O_PID:
            v = strtol(optarg, &end, 10);
            if (end == optarg || *end || v <= 0 || v > INT32_MAX) {
                fprintf(stderr, "celeriac: bad --pid '%s' (see --help)\n", optarg);
                return EXIT_USAGE;
            }
            o->pid = (pid_t)v;
            break;
        case O_JSON: o->json = true; break;
        case 'h': fputs(status_usage, stdout); return -1;
        case ':':
            fprintf(stderr, "celeriac: option needs a value: '%s' (see --help)\n",
                    argv[optind - 1]);
            return EXIT_USAGE;
        default:
            fprintf(stderr, "celeriac: unknown option '%s' (see --help)\n", argv[optind - 1]);
            return EXIT_USAGE;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "celeriac: unexpected argument '%s' (see --help)\n", argv[optind]);
        return EXIT_USAGE;
    }
    return 0;
}

static bool is_board_name(const char *name)
{
    size_t n = strlen(name);
    return !strncmp(name, "celeriac-", 9) && n > 15 && !strcmp(name + n - 6, ".board");
}

int cli_status(int argc, char **argv)
{
    struct status_opts o;
    int rc = parse_status_flags(argc, argv, &o);
    if (rc)
        return rc < 0 ? EXIT_OK : rc;
    struct buf dir = BUF_INIT, path = BUF_INIT;
    scoreboard_dir(&dir);
    DIR *d = opendir(dir.data);
    if (!d) {
        fprintf(stderr, "celeriac: open '%s' failed: %s\n", dir.data, strerror(errno));
        buf_release(&dir);
        return EXIT_FAILED;
    }
    json_t *all = json_array();
    size_t found = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (!is_board_name(de->d_name))
            continue;
        buf_reset(&path);
        buf_addf(&path, "%s/%s", dir.data, de->d_name);
        struct scoreboard sb;
        struct err e = {0};
        if (scoreboard_attach(&sb, path.data, &e)) {
            if (o.node || o.pid)
                fprintf(stderr, "celeriac: skipped %s\n", e.msg);
            continue;
        }
        /* a killed master leaves its file: not a running worker */
        if (board_matches(&sb, &o) && pid_is_alive(sb.header->master_pid)) {
            if (o.json)
                json_array_append_new(all, board_json(&sb));
            else
                print_text(&sb);
            found++;
        }
        scoreboard_destroy(&sb);
    }
    closedir(d);
    if (o.json && found) {
        char *text = json_dumps(all, JSON_INDENT(2) | JSON_REAL_PRECISION(16));
        puts(text);
        free(text);
    }
    json_decref(all);
    if (!found) {
        if (o.pid)
            fprintf(stderr, "celeriac: no worker with pid %d runs on this host (looked in '%s')\n",
                    (int)o.pid, dir.data);
        else if (o.node)
            fprintf(stderr, "celeriac: no worker named '%s' runs on this host (looked in '%s')\n",
                    o.node, dir.data);
        else
            fprintf(stderr, "celeriac: no worker runs on this host (looked in '%s')\n", dir.data);
    }
    buf_release(&dir);
    buf_release(&path);
    return found ? EXIT_OK : EXIT_FAILED;
}
