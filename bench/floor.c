/* SPDX-License-Identifier: MIT
 * floor.c: the benchmark's floor, the least work a Celery-compatible worker can do
 * per task: BRPOP, decode the envelope and body, run books.get_book_info's one
 * prepared statement (or add two integers), store the result with
 * MULTI SETEX PUBLISH EXEC. One process per concurrency slot, each with its own
 * connections opened after fork. It deliberately does no unacked bookkeeping, no
 * acks, no retries, no reconnects and no logging: a lost connection ends the process.
 *
 *   floor -c N -b redis://HOST:PORT/DB -r redis://HOST:PORT/DB --db CONNINFO
 *         [-Q QUEUE] [--idle-exit SECONDS] [--kombu-ack]
 *
 * --kombu-ack adds what kombu's Redis transport costs per message and nothing
 * else: MULTI ZADD unacked_index + HSET unacked EXEC, then the early ack MULTI
 * ZREM HDEL EXEC, sent before the task runs without waiting, their replies read
 * after the result is stored: no extra round trip, only Redis's work. Without it
 * (the default) this is the floor.
 *
 * A child exits after SECONDS (default 1; 0 = never) with every queue list empty,
 * or on TERM/INT after its current task; the master exits when all children have.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <hiredis.h>
#include <jansson.h>
#include <libpq-fe.h>

/* Same statement as examples/books/books.c (PG_GET_BOOK_SQL): one implicit
 * transaction that reads the title, sets fetched_at and returns the title. */
#define GET_BOOK_STMT "floor_get_book_info"
#define GET_BOOK_SQL "UPDATE books SET fetched_at = now() WHERE id = $1 RETURNING title"
#define RESULT_TTL "86400"
#define META_PREFIX "celery-task-meta-"
#define N_LISTS 4

struct options {
    int concurrency;
    const char *broker;    /* redis://host:port/db */
    const char *backend;   /* redis://host:port/db */
    const char *db;        /* libpq conninfo or URL */
    const char *queue;     /* base list name */
    int idle_exit_s;       /* 0: never exit on an empty queue */
    bool kombu_ack;        /* also do kombu's unacked bookkeeping (a yardstick, not the floor) */
};

static volatile sig_atomic_t stop_flag;

static void on_stop(int sig)
{
    (void)sig;
    stop_flag = 1;
}

/* The master's waitpid must see EINTR (no SA_RESTART); a child's hiredis and
 * libpq calls must not (SA_RESTART; BRPOP's 1 s timeout bounds the wait). */
static void install_handlers(bool restart)
{
    struct sigaction sa;

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_stop;
    sigfillset(&sa.sa_mask);
    sa.sa_flags = restart ? SA_RESTART : 0;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);
}

__attribute__((noreturn, format(printf, 1, 2))) static void die(const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "floor[%d]: ", (int)getpid());
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    _exit(1);
}

/* Opens redis://host:port/db (no password: the bench's Redis has none). */
static redisContext *redis_open(const char *url)
{
    char host[256] = "127.0.0.1";
    int port = 6379, db = 0;
    redisContext *c;
    redisReply *r;

    if (strncmp(url, "redis://", 8) != 0 ||
        sscanf(url + 8, "%255[^:/]:%d/%d", host, &port, &db) < 1)
        die("bad redis url '%s'", url);
    c = redisConnect(host, port);
    if (!c || c->err)
        die("connect to '%s:%d' failed: %s", host, port, c ? c->errstr : "out of memory");
    r = redisCommand(c, "SELECT %d", db);
    if (!r || r->type == REDIS_REPLY_ERROR)
        die("SELECT %d failed", db);
    freeReplyObject(r);
    return c;
}

static int b64val(unsigned char ch)
{
    if (ch >= 'A' && ch <= 'Z')
        return ch - 'A';
    if (ch >= 'a' && ch <= 'z')
        return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9')
        return ch - '0' + 52;
    if (ch == '+')
        return 62;
    if (ch == '/')
        return 63;
    return -1;
}

/* Standard base64 with padding into out (room for len * 3 / 4 bytes).
 * Returns the decoded length, or -1. */
static long b64decode(const char *in, size_t len, unsigned char *out)
{
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;

    for (size_t i = 0; i < len; i++) {
        int v;

        if (in[i] == '=')
            break;
        v = b64val((unsigned char)in[i]);
        if (v < 0)
            return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
        }
    }
    return (long)o;
}

/* "2026-11-25T11:41:24.940008": naive UTC with microseconds, as Celery 5.2. */
static void date_done(char *out, size_t size)
{
    struct timespec ts;
    struct tm tm;

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    snprintf(out, size, "%04d-%02d-%02dT%02d:%02d:%02d.%06ld", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000);
}

struct child {
    const struct options *o;
    redisContext *broker;
    redisContext *backend;
    PGconn *pg;
    const char *argv[N_LISTS + 2];   /* BRPOP list... timeout */
    size_t argl[N_LISTS + 2];
    char lists[N_LISTS][128];
    unsigned char *body;             /* base64 scratch, grown as needed */
    size_t body_cap;
    char meta[1024];
    char *unacked;                   /* [envelope, exchange, routing key] scratch */
    size_t unacked_cap;
};

/* Runs one task: returns the result as compact JSON text (caller frees with
 * free()), or NULL for a task this floor does not know. */
static char *run(struct child *c, const char *task, json_t *args)
{
    json_t *a0 = json_array_get(args, 0);

    if (strcmp(task, "books.get_book_info") == 0) {
        char idtext[24];
        const char *params[1] = {idtext};
        PGresult *res;
        json_t *title;
        char *out;

        snprintf(idtext, sizeof(idtext), "%" JSON_INTEGER_FORMAT, json_integer_value(a0));
        res = PQexecPrepared(c->pg, GET_BOOK_STMT, 1, params, NULL, NULL, 0);
        if (PQresultStatus(res) != PGRES_TUPLES_OK)
            die("get_book_info(%s) failed: %s", idtext, PQerrorMessage(c->pg));
        title = PQntuples(res) ? json_string(PQgetvalue(res, 0, 0)) : json_null();
        PQclear(res);
        out = json_dumps(title, JSON_ENCODE_ANY | JSON_COMPACT);
        json_decref(title);
        return out;
    }
    if (strcmp(task, "tasks.add") == 0) {
        char *out = malloc(24);

        snprintf(out, 24, "%" JSON_INTEGER_FORMAT,
                 json_integer_value(a0) + json_integer_value(json_array_get(args, 1)));
        return out;
    }
    return NULL;
}

/* kombu's QoS.append then QoS.ack for tag, in one pipelined round trip. */
static void kombu_record_and_ack(struct child *c, json_t *env, const char *raw, size_t len)
{
    json_t *props = json_object_get(env, "properties");
    const char *tag = json_string_value(json_object_get(props, "delivery_tag"));
    json_t *di = json_object_get(props, "delivery_info");
    const char *rk = json_string_value(json_object_get(di, "routing_key"));
    struct timespec ts;
    char score[32];
    int n, done = 0;

    if (!tag || !rk)
        die("envelope lacks properties.delivery_tag or delivery_info");
    if (len + strlen(rk) + 16 > c->unacked_cap) {
        c->unacked_cap = len + strlen(rk) + 16;
        c->unacked = realloc(c->unacked, c->unacked_cap);
        if (!c->unacked)
            die("out of memory");
    }
    n = snprintf(c->unacked, c->unacked_cap, "[%.*s, \"\", \"%s\"]", (int)len, raw, rk);
    clock_gettime(CLOCK_REALTIME, &ts);
    snprintf(score, sizeof(score), "%.7f", (double)ts.tv_sec + (double)ts.tv_nsec / 1e9);
    redisAppendCommand(c->broker, "MULTI");
    redisAppendCommand(c->broker, "ZADD unacked_index %s %s", score, tag);
    redisAppendCommand(c->broker, "HSET unacked %s %b", tag, c->unacked, (size_t)n);
    redisAppendCommand(c->broker, "EXEC");
    redisAppendCommand(c->broker, "MULTI");
    redisAppendCommand(c->broker, "ZREM unacked_index %s", tag);
    redisAppendCommand(c->broker, "HDEL unacked %s", tag);
    redisAppendCommand(c->broker, "EXEC");
    /* Sent now, without waiting: the replies are read after the result is stored. */
    do {
        if (redisBufferWrite(c->broker, &done) != REDIS_OK)
            die("unacked bookkeeping: %s", c->broker->errstr);
    } while (!done);
}

/* Reads the 8 replies kombu_record_and_ack left pending. */
static void kombu_confirm(struct child *c)
{
    for (int i = 0; i < 8; i++) {
        redisReply *r;

        if (redisGetReply(c->broker, (void **)&r) != REDIS_OK)
            die("unacked bookkeeping: %s", c->broker->errstr);
        if (r->type == REDIS_REPLY_ERROR)
            die("unacked bookkeeping: %s", r->str);
        freeReplyObject(r);
    }
}

/* Decodes one envelope, runs its task and stores the result. */
static void handle(struct child *c, const char *raw, size_t len)
{
    json_error_t jerr;
    json_t *env, *headers, *body = NULL;
    const char *id, *task, *b64;
    size_t b64len;
    long n;
    char *result, done[96];
    char key[sizeof(META_PREFIX) + 64];
    int mlen, klen;

    env = json_loadb(raw, len, 0, &jerr);
    if (!env)
        die("envelope is not JSON: %s", jerr.text);
    headers = json_object_get(env, "headers");
    id = json_string_value(json_object_get(headers, "id"));
    task = json_string_value(json_object_get(headers, "task"));
    b64 = json_string_value(json_object_get(env, "body"));
    if (!id || !task || !b64)
        die("envelope lacks headers.id, headers.task or body");
    if (c->o->kombu_ack)
        kombu_record_and_ack(c, env, raw, len);
    b64len = json_string_length(json_object_get(env, "body"));
    if (b64len > c->body_cap) {
        c->body_cap = b64len;
        c->body = realloc(c->body, c->body_cap);
        if (!c->body)
            die("out of memory");
    }
    n = b64decode(b64, b64len, c->body);
    if (n >= 0)
        body = json_loadb((const char *)c->body, (size_t)n, 0, &jerr);
    if (!body)
        die("task %s: body is not base64 JSON", id);

    result = run(c, task, json_array_get(body, 0));
    if (!result)
        die("task %s: unknown task '%s'", id, task);
    date_done(done, sizeof(done));
    mlen = snprintf(c->meta, sizeof(c->meta),
                    "{\"status\": \"SUCCESS\", \"result\": %s, \"traceback\": null, "
                    "\"children\": [], \"date_done\": \"%s\", \"task_id\": \"%s\"}",
                    result, done, id);
    klen = snprintf(key, sizeof(key), META_PREFIX "%s", id);
    free(result);
    if (mlen < 0 || (size_t)mlen >= sizeof(c->meta) || klen < 0 || (size_t)klen >= sizeof(key))
        die("task %s: result too large", id);

    /* One round trip: MULTI, SETEX, PUBLISH, EXEC pipelined. */
    redisAppendCommand(c->backend, "MULTI");
    redisAppendCommand(c->backend, "SETEX %b " RESULT_TTL " %b", key, (size_t)klen, c->meta,
                       (size_t)mlen);
    redisAppendCommand(c->backend, "PUBLISH %b %b", key, (size_t)klen, c->meta, (size_t)mlen);
    redisAppendCommand(c->backend, "EXEC");
    for (int i = 0; i < 4; i++) {
        redisReply *r;

        if (redisGetReply(c->backend, (void **)&r) != REDIS_OK)
            die("storing result of %s: %s", id, c->backend->errstr);
        if (r->type == REDIS_REPLY_ERROR)
            die("storing result of %s: %s", id, r->str);
        freeReplyObject(r);
    }
    if (c->o->kombu_ack)
        kombu_confirm(c);
    json_decref(body);
    json_decref(env);
}

__attribute__((noreturn)) static void child_main(const struct options *o)
{
    struct child c;
    PGresult *res;
    int idle = 0;

    install_handlers(true);
    memset(&c, 0, sizeof(c));
    c.o = o;
    c.broker = redis_open(o->broker);
    c.backend = redis_open(o->backend);
    c.pg = PQconnectdb(o->db);
    if (PQstatus(c.pg) != CONNECTION_OK)
        die("connect to the database failed: %s", PQerrorMessage(c.pg));
    res = PQprepare(c.pg, GET_BOOK_STMT, GET_BOOK_SQL, 1, NULL);
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        die("prepare failed: %s", PQerrorMessage(c.pg));
    PQclear(res);

    /* kombu's BRPOP: the base list, then the priority 3, 6, 9 lists; 1 s timeout. */
    c.argv[0] = "BRPOP";
    c.argl[0] = 5;
    for (int i = 0; i < N_LISTS; i++) {
        if (i == 0)
            snprintf(c.lists[i], sizeof(c.lists[i]), "%s", o->queue);
        else
            snprintf(c.lists[i], sizeof(c.lists[i]), "%s\x06\x16%d", o->queue, 3 * i);
        c.argv[1 + i] = c.lists[i];
        c.argl[1 + i] = strlen(c.lists[i]);
    }
    c.argv[N_LISTS + 1] = "1";
    c.argl[N_LISTS + 1] = 1;

    while (!stop_flag) {
        redisReply *r = redisCommandArgv(c.broker, N_LISTS + 2, c.argv, c.argl);

        if (!r)
            die("BRPOP failed: %s", c.broker->errstr);
        if (r->type == REDIS_REPLY_ARRAY && r->elements == 2) {
            idle = 0;
            handle(&c, r->element[1]->str, r->element[1]->len);
        } else if (r->type == REDIS_REPLY_NIL) {
            if (o->idle_exit_s > 0 && ++idle >= o->idle_exit_s)
                stop_flag = 1;
        } else {
            die("unexpected BRPOP reply type %d", r->type);
        }
        freeReplyObject(r);
    }
    PQfinish(c.pg);
    redisFree(c.broker);
    redisFree(c.backend);
    free(c.body);
    free(c.unacked);
    _exit(0);
}

static void usage(void)
{
    fprintf(stderr, "usage: floor -c N -b redis://HOST:PORT/DB -r redis://HOST:PORT/DB "
                    "--db CONNINFO [-Q QUEUE] [--idle-exit SECONDS] [--kombu-ack]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    struct options o = {.concurrency = 1, .queue = "celery", .idle_exit_s = 1};
    pid_t *pids;
    int live;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;

        if (!strcmp(a, "--kombu-ack")) {
            o.kombu_ack = true;
            continue;
        }
        if (!v)
            usage();
        if (!strcmp(a, "-c"))
            o.concurrency = atoi(v);
        else if (!strcmp(a, "-b"))
            o.broker = v;
        else if (!strcmp(a, "-r"))
            o.backend = v;
        else if (!strcmp(a, "--db"))
            o.db = v;
        else if (!strcmp(a, "-Q"))
            o.queue = v;
        else if (!strcmp(a, "--idle-exit"))
            o.idle_exit_s = atoi(v);
        else
            usage();
        i++;
    }
    if (o.concurrency < 1 || o.concurrency > 256 || !o.broker || !o.backend || !o.db ||
        strlen(o.queue) > 100)
        usage();

    install_handlers(false);
    pids = calloc((size_t)o.concurrency, sizeof(*pids));
    if (!pids)
        die("out of memory");
    /* Nothing is connected before the fork: each child opens its own. */
    for (int i = 0; i < o.concurrency; i++) {
        pid_t pid = fork();

        if (pid < 0)
            die("fork failed: %s", strerror(errno));
        if (pid == 0)
            child_main(&o);
        pids[i] = pid;
    }
    live = o.concurrency;
    while (live > 0) {
        int st;
        pid_t pid = waitpid(-1, &st, 0);

        if (pid < 0 && errno == EINTR) {
            /* A stop request: pass it on to the children still running. */
            if (stop_flag)
                for (int i = 0; i < o.concurrency; i++)
                    if (pids[i] > 0)
                        kill(pids[i], SIGTERM);
            continue;
        }
        if (pid < 0)
            break;
        for (int i = 0; i < o.concurrency; i++)
            if (pids[i] == pid)
                pids[i] = 0;
        live--;
    }
    free(pids);
    return 0;
}
