/* SPDX-License-Identifier: MIT
 * floor.c: the benchmark's floor, the least work a Celery-compatible worker can do
 * per task on each broker the bench measures: take one message, decode the
 * envelope and body, run books.get_book_info's one prepared statement (or add two
 * integers), store the result in the Redis result backend with
 * MULTI SETEX PUBLISH EXEC. One process per concurrency slot, each with its own
 * connections opened after fork. It deliberately does no unacked bookkeeping, no
 * retries, no reconnects and no logging: a lost connection ends the process.
 *
 *   floor -c N -b BROKER -r redis://HOST:PORT/DB [--db CONNINFO]
 *         [-Q QUEUE] [--idle-exit SECONDS] [--kombu-ack]
 *
 * BROKER is one of:
 *   redis://HOST:PORT/DB  BRPOP on the queue's list and its priority lists; the
 *                         message is kombu's envelope with a base64 body; no ack
 *                         (kombu's Redis transport acks by bookkeeping, below).
 *   amqp://USER:PASS@HOST:PORT/VHOST  (vhost "/" written "//" as kombu does)
 *                         rabbitmq-c, channel 1, basic.qos prefetch 1 (celeriac's
 *                         per child), basic.consume with acks; task and id from
 *                         the message's headers, the body is the JSON itself;
 *                         basic.ack sent before the task runs, unawaited (an
 *                         early ack, as celeriac's).
 *   sqla+postgresql://...  kombu's SQL transport tables, on ONE libpq connection
 *                         that also runs the task's statement (as celeriac's bench
 *                         run shares it; --db is then not taken). Per message the
 *                         two round trips of celeriac's lock path for an early-ack
 *                         task: pipelined BEGIN + SELECT ... FOR UPDATE SKIP LOCKED,
 *                         then pipelined DELETE + COMMIT. On an empty queue it
 *                         waits for the NOTIFY of celeriac's trigger on
 *                         kombu_message (LISTEN celeriac_q<queue id>, as celeriac's
 *                         idle children do), so its latency compares with
 *                         celeriac's; it needs that trigger, which celeriac
 *                         installs on its first start.
 * --db is required for redis:// and amqp://.
 *
 * --kombu-ack (Redis only) adds what kombu's Redis transport costs per message and
 * nothing else: MULTI ZADD unacked_index + HSET unacked EXEC, then the early ack
 * MULTI ZREM HDEL EXEC, sent before the task runs without waiting, their replies
 * read after the result is stored: no extra round trip, only Redis's work. Without
 * it (the default) this is the floor.
 *
 * A child exits after SECONDS (default 1; 0 = never) with no message (Redis: every
 * queue list empty), or on TERM/INT after its current task; the master exits when
 * all children have.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
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

#include <amqp.h>
#include <amqp_tcp_socket.h>
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
/* celeriac's STMT_LOCK and STMT_REMOVE_LOCKED (src/broker/sql_pg.c), word for word. */
#define SQL_LOCK_STMT "floor_lock"
#define SQL_LOCK_SQL                                                                     \
    "SELECT id, version, queue_id, payload FROM kombu_message"                          \
    " WHERE queue_id = $1 AND visible ORDER BY timestamp, id LIMIT 1"                   \
    " FOR UPDATE SKIP LOCKED"
#define SQL_REMOVE_STMT "floor_remove"
#define SQL_REMOVE_SQL "DELETE FROM kombu_message WHERE id = $1"
#define SQL_SCHEME "sqla+"

enum broker_kind { BROKER_REDIS, BROKER_AMQP, BROKER_SQL };

struct options {
    int concurrency;
    enum broker_kind kind;
    const char *broker;    /* redis://host:port/db, amqp://..., sqla+postgresql://... */
    const char *backend;   /* redis://host:port/db */
    const char *db;        /* libpq conninfo or URL (redis and amqp: the broker's own on sql) */
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
 * libpq calls must not (SA_RESTART; BRPOP's 1 s timeout, amqp_consume_message's
 * 1 s timeout and the SQL wait's 100 ms poll() slice bound the wait). */
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
    redisContext *broker;            /* redis:// only */
    amqp_connection_state_t amqp;    /* amqp:// only */
    redisContext *backend;
    PGconn *pg;                      /* the task's statement; also the broker on sqla+ */
    char queue_id[24];               /* sqla+: kombu_queue.id of o->queue */
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

/* Runs task `task` (id `id`) with the arguments in body ([args, kwargs, embed])
 * and stores its result: the part every broker shares. */
static void run_and_store(struct child *c, const char *id, const char *task, json_t *body)
{
    char *result, done[96];
    char key[sizeof(META_PREFIX) + 64];
    int mlen, klen;

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
}

/* kombu's envelope (Redis and the SQL transport): headers.id, headers.task and
 * the base64 body. */
struct envelope {
    json_t *env;
    const char *id, *task;
};

static void envelope_parse(struct envelope *m, const char *raw, size_t len)
{
    json_error_t jerr;
    json_t *headers;

    m->env = json_loadb(raw, len, 0, &jerr);
    if (!m->env)
        die("envelope is not JSON: %s", jerr.text);
    headers = json_object_get(m->env, "headers");
    m->id = json_string_value(json_object_get(headers, "id"));
    m->task = json_string_value(json_object_get(headers, "task"));
    if (!m->id || !m->task || !json_string_value(json_object_get(m->env, "body")))
        die("envelope lacks headers.id, headers.task or body");
}

/* The envelope's body, base64 of the JSON [args, kwargs, embed], decoded and
 * parsed (caller decrefs). */
static json_t *envelope_body(struct child *c, const struct envelope *m)
{
    json_t *b = json_object_get(m->env, "body");
    size_t b64len = json_string_length(b);
    json_error_t jerr;
    json_t *body = NULL;
    long n;

    if (b64len > c->body_cap) {
        c->body_cap = b64len;
        c->body = realloc(c->body, c->body_cap);
        if (!c->body)
            die("out of memory");
    }
    n = b64decode(json_string_value(b), b64len, c->body);
    if (n >= 0)
        body = json_loadb((const char *)c->body, (size_t)n, 0, &jerr);
    if (!body)
        die("task %s: body is not base64 JSON", m->id);
    return body;
}

/* Redis: decodes one envelope, runs its task and stores the result. */
static void handle(struct child *c, const char *raw, size_t len)
{
    struct envelope m;
    json_t *body;

    envelope_parse(&m, raw, len);
    if (c->o->kombu_ack)
        kombu_record_and_ack(c, m.env, raw, len);
    body = envelope_body(c, &m);
    run_and_store(c, m.id, m.task, body);
    if (c->o->kombu_ack)
        kombu_confirm(c);
    json_decref(body);
    json_decref(m.env);
}

/* Prepares statement `name` on c->pg. */
static void pg_prepare(struct child *c, const char *name, const char *sql)
{
    PGresult *res = PQprepare(c->pg, name, sql, 1, NULL);

    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        die("prepare failed: %s", PQerrorMessage(c->pg));
    PQclear(res);
}

static double mono_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- redis:// ---------------------------------------------------------------- */

static void redis_loop(struct child *c)
{
    const struct options *o = c->o;
    int idle = 0;

    /* kombu's BRPOP: the base list, then the priority 3, 6, 9 lists; 1 s timeout. */
    c->argv[0] = "BRPOP";
    c->argl[0] = 5;
    for (int i = 0; i < N_LISTS; i++) {
        if (i == 0)
            snprintf(c->lists[i], sizeof(c->lists[i]), "%s", o->queue);
        else
            snprintf(c->lists[i], sizeof(c->lists[i]), "%s\x06\x16%d", o->queue, 3 * i);
        c->argv[1 + i] = c->lists[i];
        c->argl[1 + i] = strlen(c->lists[i]);
    }
    c->argv[N_LISTS + 1] = "1";
    c->argl[N_LISTS + 1] = 1;

    while (!stop_flag) {
        redisReply *r = redisCommandArgv(c->broker, N_LISTS + 2, c->argv, c->argl);

        if (!r)
            die("BRPOP failed: %s", c->broker->errstr);
        if (r->type == REDIS_REPLY_ARRAY && r->elements == 2) {
            idle = 0;
            handle(c, r->element[1]->str, r->element[1]->len);
        } else if (r->type == REDIS_REPLY_NIL) {
            if (o->idle_exit_s > 0 && ++idle >= o->idle_exit_s)
                stop_flag = 1;
        } else {
            die("unexpected BRPOP reply type %d", r->type);
        }
        freeReplyObject(r);
    }
    redisFree(c->broker);
}

/* ---- amqp:// ----------------------------------------------------------------- */

static void amqp_check(amqp_rpc_reply_t r, const char *what)
{
    if (r.reply_type == AMQP_RESPONSE_NORMAL)
        return;
    if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION)
        die("%s failed: %s", what, amqp_error_string2(r.library_error));
    die("%s failed: the server closed the %s", what,
        r.reply.id == AMQP_CONNECTION_CLOSE_METHOD ? "connection" : "channel");
}

/* Connects, logs in, opens channel 1 and consumes o->queue with acks, prefetch 1. */
static void amqp_open(struct child *c)
{
    struct amqp_connection_info u;
    char *url = strdup(c->o->broker), *path;
    amqp_socket_t *sock;

    if (!url)
        die("out of memory");
    /* kombu's rule: a path of "//" or "/" (or none) is the vhost "/"; rabbitmq-c
     * wants that one written %2f, so it gets no path and takes its default "/". */
    path = strchr(url + strlen("amqp://"), '/');
    if (path && (!strcmp(path, "/") || !strcmp(path, "//")))
        *path = '\0';
    if (amqp_parse_url(url, &u) != AMQP_STATUS_OK)
        die("bad amqp url '%s'", c->o->broker);
    c->amqp = amqp_new_connection();
    sock = c->amqp ? amqp_tcp_socket_new(c->amqp) : NULL;
    if (!sock)
        die("out of memory");
    if (amqp_socket_open(sock, u.host, u.port) != AMQP_STATUS_OK)
        die("connect to '%s:%d' failed", u.host, u.port);
    /* No heartbeats: the least traffic; a bench run is short. */
    amqp_check(amqp_login(c->amqp, u.vhost, 0, AMQP_DEFAULT_FRAME_SIZE, 0,
                          AMQP_SASL_METHOD_PLAIN, u.user, u.password),
               "login");
    free(url);
    amqp_channel_open(c->amqp, 1);
    amqp_check(amqp_get_rpc_reply(c->amqp), "channel.open");
    amqp_basic_qos(c->amqp, 1, 0, 1, 0);
    amqp_check(amqp_get_rpc_reply(c->amqp), "basic.qos");
    amqp_basic_consume(c->amqp, 1, amqp_cstring_bytes(c->o->queue), amqp_empty_bytes, 0, 0, 0,
                       amqp_empty_table);
    amqp_check(amqp_get_rpc_reply(c->amqp), "basic.consume");
}

/* Copies the long-string header `key` into out, NUL-terminated. */
static void amqp_header(const amqp_basic_properties_t *p, const char *key, char *out,
                        size_t size)
{
    size_t klen = strlen(key);

    if (p->_flags & AMQP_BASIC_HEADERS_FLAG)
        for (int i = 0; i < p->headers.num_entries; i++) {
            const amqp_table_entry_t *h = &p->headers.entries[i];

            if (h->key.len == klen && !memcmp(h->key.bytes, key, klen) &&
                h->value.kind == AMQP_FIELD_KIND_UTF8) {
                if (h->value.value.bytes.len >= size)
                    die("header '%s' too long", key);
                memcpy(out, h->value.value.bytes.bytes, h->value.value.bytes.len);
                out[h->value.value.bytes.len] = '\0';
                return;
            }
        }
    die("message lacks header '%s'", key);
}

static void amqp_loop(struct child *c)
{
    const struct options *o = c->o;
    int idle = 0;

    amqp_open(c);
    while (!stop_flag) {
        /* 1 s, as BRPOP's: TERM is seen within a second, idle time counted in seconds. */
        struct timeval tv = {.tv_sec = 1, .tv_usec = 0};
        amqp_envelope_t e;
        amqp_rpc_reply_t r;
        char id[64], task[256];
        json_error_t jerr;
        json_t *body;

        amqp_maybe_release_buffers(c->amqp);
        r = amqp_consume_message(c->amqp, &e, &tv, 0);
        if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
            r.library_error == AMQP_STATUS_TIMEOUT) {
            if (o->idle_exit_s > 0 && ++idle >= o->idle_exit_s)
                stop_flag = 1;
            continue;
        }
        amqp_check(r, "basic.consume (a delivery)");
        idle = 0;
        amqp_header(&e.message.properties, "id", id, sizeof(id));
        amqp_header(&e.message.properties, "task", task, sizeof(task));
        /* Early ack, sent now and never awaited (basic.ack has no reply). */
        if (amqp_basic_ack(c->amqp, 1, e.delivery_tag, 0) != AMQP_STATUS_OK)
            die("basic.ack failed");
        body = json_loadb(e.message.body.bytes, e.message.body.len, 0, &jerr);
        if (!body)
            die("task %s: body is not JSON: %s", id, jerr.text);
        run_and_store(c, id, task, body);
        json_decref(body);
        amqp_destroy_envelope(&e);
    }
    amqp_connection_close(c->amqp, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(c->amqp);
}

/* ---- sqla+postgresql:// ------------------------------------------------------- */

/* Reads the results of n commands sent in pipeline mode, each of which must end
 * with want[k], then the sync, and leaves pipeline mode (the task's statement
 * runs outside it). Returns command `keep`'s result (caller clears). */
static PGresult *pipe_read(struct child *c, const char *what, int n, const ExecStatusType *want,
                           int keep)
{
    PGresult *kept = NULL, *r;

    for (int k = 0; k < n; k++) {
        r = PQgetResult(c->pg);
        if (!r || PQresultStatus(r) != want[k])
            die("%s: %s", what, r ? PQresultErrorMessage(r) : PQerrorMessage(c->pg));
        if (k == keep)
            kept = r;
        else
            PQclear(r);
        if ((r = PQgetResult(c->pg)) != NULL) /* NULL ends each command's results */
            die("%s: more results than expected", what);
    }
    r = PQgetResult(c->pg);
    if (!r || PQresultStatus(r) != PGRES_PIPELINE_SYNC)
        die("%s: no pipeline sync: %s", what, PQerrorMessage(c->pg));
    PQclear(r);
    if (!PQexitPipelineMode(c->pg))
        die("%s: leaving pipeline mode: %s", what, PQerrorMessage(c->pg));
    return kept;
}

/* Round trip 1: BEGIN + the lock, pipelined. Returns the locked row's result
 * (one row, the transaction open) or NULL (none: rolled back). */
static PGresult *sql_lock(struct child *c)
{
    static const ExecStatusType want[2] = {PGRES_COMMAND_OK, PGRES_TUPLES_OK};
    const char *params[1] = {c->queue_id};
    PGresult *r;

    if (!PQenterPipelineMode(c->pg) ||
        !PQsendQueryParams(c->pg, "BEGIN", 0, NULL, NULL, NULL, NULL, 0) ||
        !PQsendQueryPrepared(c->pg, SQL_LOCK_STMT, 1, params, NULL, NULL, 0) ||
        !PQpipelineSync(c->pg))
        die("taking a message: %s", PQerrorMessage(c->pg));
    r = pipe_read(c, "taking a message", 2, want, 1);
    if (PQntuples(r) == 1)
        return r;
    PQclear(r);
    r = PQexec(c->pg, "ROLLBACK");
    if (PQresultStatus(r) != PGRES_COMMAND_OK)
        die("ROLLBACK failed: %s", PQerrorMessage(c->pg));
    PQclear(r);
    return NULL;
}

/* Round trip 2: the early ack, DELETE of the locked row + COMMIT, pipelined. */
static void sql_remove(struct child *c, const char *id)
{
    static const ExecStatusType want[2] = {PGRES_COMMAND_OK, PGRES_COMMAND_OK};
    const char *params[1] = {id};
    PGresult *r;

    if (!PQenterPipelineMode(c->pg) ||
        !PQsendQueryPrepared(c->pg, SQL_REMOVE_STMT, 1, params, NULL, NULL, 0) ||
        !PQsendQueryParams(c->pg, "COMMIT", 0, NULL, NULL, NULL, NULL, 0) ||
        !PQpipelineSync(c->pg))
        die("acking a message: %s", PQerrorMessage(c->pg));
    r = pipe_read(c, "acking a message", 2, want, 1);
    /* A COMMIT that ends a failed transaction answers ROLLBACK. */
    if (strcmp(PQcmdStatus(r), "COMMIT") != 0)
        die("acking a message: the transaction was rolled back");
    PQclear(r);
}

/* LISTENs on the channel celeriac's trigger NOTIFYs when a row of this queue
 * becomes ready; dies if the trigger is missing (the floor would then wait
 * forever on an empty queue where celeriac is woken). */
static void sql_listen(struct child *c)
{
    char sql[64];
    PGresult *r;

    r = PQexec(c->pg, "SELECT 1 FROM pg_trigger WHERE tgname = 'celeriac_kombu_notify'");
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1)
        die("no celeriac trigger on kombu_message (run celeriac on this database once): %s",
            PQerrorMessage(c->pg));
    PQclear(r);
    snprintf(sql, sizeof(sql), "LISTEN celeriac_q%s", c->queue_id);
    r = PQexec(c->pg, sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK)
        die("%s: %s", sql, PQerrorMessage(c->pg));
    PQclear(r);
}

/* Drops every notification libpq has read; true if there was one. */
static bool sql_drain_notifies(struct child *c)
{
    PGnotify *n;
    bool any = false;

    while ((n = PQnotifies(c->pg)) != NULL) {
        PQfreemem(n);
        any = true;
    }
    return any;
}

/* Waits up to ms for a NOTIFY: one wake-up is one more try at the lock. A
 * NOTIFY that came with the empty lock's results is already in libpq's list,
 * not on the socket, so that list is looked at before poll(). */
static void sql_wait(struct child *c, int ms)
{
    struct pollfd p = {.fd = PQsocket(c->pg), .events = POLLIN};

    if (sql_drain_notifies(c))
        return;
    if (poll(&p, 1, ms) < 0 && errno != EINTR)
        die("poll: %s", strerror(errno));
    if (!PQconsumeInput(c->pg))
        die("waiting for a message: %s", PQerrorMessage(c->pg));
    sql_drain_notifies(c);
}

static void sql_loop(struct child *c)
{
    const struct options *o = c->o;
    const char *params[1] = {o->queue};
    double idle_since = mono_s();
    PGresult *r;

    r = PQexecParams(c->pg, "SELECT id FROM kombu_queue WHERE name = $1", 1, NULL, params, NULL,
                     NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1)
        die("no queue '%s' in kombu_queue: %s", o->queue, PQerrorMessage(c->pg));
    snprintf(c->queue_id, sizeof(c->queue_id), "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    pg_prepare(c, SQL_LOCK_STMT, SQL_LOCK_SQL);
    pg_prepare(c, SQL_REMOVE_STMT, SQL_REMOVE_SQL);
    sql_listen(c);

    while (!stop_flag) {
        struct envelope m;
        json_t *body;

        r = sql_lock(c);
        if (!r) {
            /* An empty queue: wait for the trigger's NOTIFY, in slices so
             * that a stop or the idle exit is seen. */
            if (o->idle_exit_s > 0 && mono_s() - idle_since >= o->idle_exit_s)
                stop_flag = 1;
            else
                sql_wait(c, 100);
            continue;
        }
        /* column 0: id, 3: payload */
        sql_remove(c, PQgetvalue(r, 0, 0));
        envelope_parse(&m, PQgetvalue(r, 0, 3), (size_t)PQgetlength(r, 0, 3));
        body = envelope_body(c, &m);
        run_and_store(c, m.id, m.task, body);
        json_decref(body);
        json_decref(m.env);
        PQclear(r);
        idle_since = mono_s();
    }
}

__attribute__((noreturn)) static void child_main(const struct options *o)
{
    struct child c;

    install_handlers(true);
    memset(&c, 0, sizeof(c));
    c.o = o;
    if (o->kind == BROKER_REDIS) /* first, as before the other brokers came */
        c.broker = redis_open(o->broker);
    c.backend = redis_open(o->backend);
    /* On sqla+ the broker's connection runs the task's statement too. */
    c.pg = PQconnectdb(o->kind == BROKER_SQL ? o->broker + strlen(SQL_SCHEME) : o->db);
    if (PQstatus(c.pg) != CONNECTION_OK)
        die("connect to the database failed: %s", PQerrorMessage(c.pg));
    pg_prepare(&c, GET_BOOK_STMT, GET_BOOK_SQL);

    if (o->kind == BROKER_AMQP)
        amqp_loop(&c);
    else if (o->kind == BROKER_SQL)
        sql_loop(&c);
    else
        redis_loop(&c);
    PQfinish(c.pg);
    redisFree(c.backend);
    free(c.body);
    free(c.unacked);
    _exit(0);
}

static void usage(void)
{
    fprintf(stderr, "usage: floor -c N -b redis://HOST:PORT/DB -r redis://HOST:PORT/DB "
                    "--db CONNINFO [-Q QUEUE] [--idle-exit SECONDS] [--kombu-ack]\n"
                    "       floor -c N -b amqp://USER:PASS@HOST:PORT/VHOST -r REDIS_URL "
                    "--db CONNINFO [-Q QUEUE] [--idle-exit SECONDS]\n"
                    "       floor -c N -b sqla+postgresql://... -r REDIS_URL "
                    "[-Q QUEUE] [--idle-exit SECONDS]\n");
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
    if (o.concurrency < 1 || o.concurrency > 256 || !o.broker || !o.backend ||
        strlen(o.queue) > 100)
        usage();
    if (!strncmp(o.broker, "amqp://", 7))
        o.kind = BROKER_AMQP;
    else if (!strncmp(o.broker, SQL_SCHEME, strlen(SQL_SCHEME)))
        o.kind = BROKER_SQL;
    else
        o.kind = BROKER_REDIS;
    /* On sqla+ the one connection is the broker's: a --db would be a second one. */
    if ((o.kind == BROKER_SQL) == (o.db != NULL))
        usage();
    /* kombu's bookkeeping is the Redis transport's. */
    if (o.kombu_ack && o.kind != BROKER_REDIS)
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
