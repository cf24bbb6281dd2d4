/* SPDX-License-Identifier: MIT
 * metrics/process.c: the metrics process's life: bind the --metrics address
 * with backoff, hand the socket to libmicrohttpd (its own polling thread,
 * started with every signal blocked), render each scrape from the
 * scoreboard, stop with the worker. No HTTP parsing here.
 */
#include "common.h"
#include "metrics/exposition.h"
#include "metrics/listen.h"
#include "metrics/process.h"
#include "util/buf.h"
#include "util/log.h"
#include "util/retry.h"
#include "util/time.h"
#include "worker/config.h"
#include "worker/scoreboard.h"
#include "worker/signals.h"

#include <microhttpd.h>
#include <poll.h>
#include <sys/prctl.h>

struct metrics {
    const struct worker_config *cfg;
    struct scoreboard *sb;
    const char **task_names;        /* n_tasks, borrowed from the library */
    size_t n_tasks;
    int deathwatch_fd;
    struct MHD_Daemon *daemon;
};

/* Resident bytes of pid from /proc/<pid>/statm; 0 when it cannot be read. */
static uint64_t proc_rss(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/statm", (int)pid);
    FILE *f = fopen(path, "re");
    if (!f)
        return 0;
    unsigned long size = 0, resident = 0;
    int n = fscanf(f, "%lu %lu", &size, &resident);
    fclose(f);
    long page = sysconf(_SC_PAGESIZE);
    return n == 2 && page > 0 ? (uint64_t)resident * (uint64_t)page : 0;
}

static enum MHD_Result reply(struct MHD_Connection *conn, unsigned status, char *body,
                             size_t len, const char *type)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    enum MHD_Result ok = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return ok;
}

/* libmicrohttpd's request callback, on its thread: GET or HEAD /metrics,
 * 404 for any other path, 405 for any other method. Logs nothing. */
static enum MHD_Result answer(void *cls, struct MHD_Connection *conn, const char *url,
                              const char *method, const char *version, const char *upload,
                              size_t *upload_len, void **req)
{
    UNUSED(version);
    UNUSED(upload);
    UNUSED(upload_len);
    UNUSED(req);
    struct metrics *m = cls;
    struct buf out = BUF_INIT;
    size_t len;
    if (strcmp(method, MHD_HTTP_METHOD_GET) && strcmp(method, MHD_HTTP_METHOD_HEAD)) {
        buf_adds(&out, "method not allowed\n");
        char *body = buf_detach(&out, &len);
        return reply(conn, MHD_HTTP_METHOD_NOT_ALLOWED, body, len, "text/plain");
    }
    if (strcmp(url, "/metrics")) {
        buf_adds(&out, "not found: try /metrics\n");
        char *body = buf_detach(&out, &len);
        return reply(conn, MHD_HTTP_NOT_FOUND, body, len, "text/plain");
    }
    struct exposition x = {.sb = m->sb, .hostname = m->cfg->node_name,
                           .task_names = m->task_names, .n_tasks = m->n_tasks,
                           .now_ms = time_mono_ms(),
                           .rss = proc_rss};
    exposition_render(&out, &x);
    char *body = buf_detach(&out, &len);
    return reply(conn, MHD_HTTP_OK, body, len, EXPOSITION_CONTENT_TYPE);
}

/* Binds and starts the daemon: 0, or an error in e (the socket closed). */
static int start(struct metrics *m, struct err *e)
{
    int fd = metrics_listen_open(m->cfg->metrics, e);
    if (fd < 0)
        return fd;
    sigset_t old;
    signals_block_all(&old); /* the daemon's thread inherits the mask */
    m->daemon = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL, 0, NULL, NULL,
                                 answer, m, MHD_OPTION_LISTEN_SOCKET, (MHD_socket)fd,
                                 MHD_OPTION_CONNECTION_LIMIT, (unsigned)64,
                                 MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)10, MHD_OPTION_END);
    signals_restore(&old);
    if (!m->daemon) {
        close(fd);
        return err_set(e, -EIO, "libmicrohttpd could not start");
    }
    return 0;
}

static bool master_gone(const struct metrics *m)
{
    struct pollfd p = {.fd = m->deathwatch_fd, .events = POLLIN};
    return poll(&p, 1, 0) > 0;
}

/* Waits up to ms, in steps that notice a stop or a gone master. */
static void pause_ms(const struct metrics *m, int64_t ms)
{
    int64_t until = time_mono_ms() + ms;
    while (!sig_stop && !master_gone(m) && time_mono_ms() < until) {
        int64_t left = until - time_mono_ms();
        struct pollfd p = {.fd = m->deathwatch_fd, .events = POLLIN};
        poll(&p, 1, left > 1000 ? 1000 : left < 0 ? 0 : (int)left);
    }
}

void metrics_main(const struct worker_config *cfg, struct scoreboard *sb, int deathwatch_fd)
{
    struct metrics m = {.cfg = cfg, .sb = sb, .deathwatch_fd = deathwatch_fd};
    log_set_process("MetricsProcess");
    prctl(PR_SET_NAME, "celeriac:metrics", 0, 0, 0);
    prctl(PR_SET_PDEATHSIG, SIGTERM, 0, 0, 0);
    m.n_tasks = cfg->lib.n_tasks < sb->n_tasks ? cfg->lib.n_tasks : sb->n_tasks;
    m.task_names = xcalloc(m.n_tasks ? m.n_tasks : 1, sizeof(*m.task_names));
    for (size_t i = 0; i < m.n_tasks; i++)
        m.task_names[i] = cfg->lib.desc->tasks[i].name;
    struct retry listening;
    retry_init(&listening, 1000, 15000, "serving metrics on '%s'", cfg->metrics);
    while (!sig_stop && !master_gone(&m)) {
        if (m.daemon) {
            pause_ms(&m, 60000);
            continue;
        }
        struct err e = {0};
        if (start(&m, &e)) {
            pause_ms(&m, retry_failed(&listening, LOG_ERROR, &e));
            continue;
        }
        retry_succeeded(&listening);
        log_info("metrics: serving http://%s/metrics", cfg->metrics);
    }
    if (m.daemon)
        MHD_stop_daemon(m.daemon);
    free(m.task_names);
    _exit(EXIT_OK);
}
