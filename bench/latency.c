/* SPDX-License-Identifier: MIT
 * latency.c: the benchmark's clock for W3. It watches results as they are
 * published (PSUBSCRIBE celery-task-meta-*) and stamps each when it is read: the
 * workers SETEX and PUBLISH in one MULTI or script, so a published result is a
 * readable one. In C so that, on a small machine, measuring takes next to no CPU
 * from the workers being measured.
 *
 *   latency pace  HOST PORT LIST RATE COUNT OUTFILE
 *       moves COUNT messages, one every 1/RATE s on a fixed schedule, from LIST
 *       (pre-enqueued by Celery's send_task) to the queue `celery` with
 *       LMOVE LIST celery RIGHT LEFT (what send_task's LPUSH does), stamping each
 *       just before the move; waits up to 30 s for every result; writes
 *       "<task id> <sent> <received>" lines (CLOCK_REALTIME seconds, received -1
 *       when it never came).
 *   latency pace-sql HOST PORT CONNINFO TABLE FIRST RATE COUNT OUTFILE
 *       the same on kombu's SQL transport in PostgreSQL: releases rows FIRST ..
 *       FIRST + COUNT - 1 of TABLE (ord, payload, queue_id, task_id: messages
 *       sent in advance by Celery's send_task on sqla+postgresql) into
 *       kombu_message, one INSERT (its own transaction) each, as kombu's _put
 *       inserts them; stamps each just before its INSERT.
 *   latency watch HOST PORT OUTFILE READYFILE
 *       only watches: creates READYFILE once subscribed, writes "<task id>
 *       <received>" lines, and exits when celery-task-meta-__end__ is published.
 * Nothing here is part of celeriac; it talks to db 0 of the bench's own Redis.
 */
#define _GNU_SOURCE /* ppoll */

#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <hiredis.h>
#include <jansson.h>
#include <libpq-fe.h>

#define PREFIX "celery-task-meta-"
#define ID_MAX 64
#define WAIT_AFTER_S 30.0

struct sample {
    char id[ID_MAX];  /* task id, "" for an empty hash slot */
    double sent;      /* CLOCK_REALTIME seconds, 0 until sent */
    double received;  /* CLOCK_REALTIME seconds, 0 until published */
};

struct table {
    struct sample *slots;
    size_t cap;       /* power of two, at least twice the samples */
    size_t used;
};

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what, const char *detail)
{
    fprintf(stderr, "latency: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
    exit(1);
}

static redisContext *connect_or_die(const char *host, int port)
{
    redisContext *c = redisConnect(host, port);

    if (!c || c->err)
        die("connect failed", c ? c->errstr : "out of memory");
    return c;
}

/* Finds or inserts id (FNV-1a, linear probing); NULL when the table is full. */
static struct sample *lookup(struct table *t, const char *id, size_t len)
{
    uint64_t h = 1469598103934665603ULL;
    size_t i;

    if (len == 0 || len >= ID_MAX)
        return NULL;
    for (size_t k = 0; k < len; k++)
        h = (h ^ (unsigned char)id[k]) * 1099511628211ULL;
    for (i = h & (t->cap - 1);; i = (i + 1) & (t->cap - 1)) {
        struct sample *s = &t->slots[i];

        if (!s->id[0]) {
            if (2 * (t->used + 1) > t->cap)
                return NULL;
            memcpy(s->id, id, len);
            s->id[len] = '\0';
            t->used++;
            return s;
        }
        if (strlen(s->id) == len && memcmp(s->id, id, len) == 0)
            return s;
    }
}

/* Stamps one pub/sub reply; returns 1 when it is the end marker. */
static int take_message(struct table *t, redisReply *r, double when)
{
    size_t plen = strlen(PREFIX);
    const char *chan;
    size_t clen;
    struct sample *s;

    /* ["pmessage", pattern, channel, payload] */
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 4 ||
        r->element[2]->type != REDIS_REPLY_STRING || r->element[2]->len <= plen)
        return 0;
    chan = r->element[2]->str + plen;
    clen = r->element[2]->len - plen;
    if (clen == 7 && memcmp(chan, "__end__", 7) == 0)
        return 1;
    s = lookup(t, chan, clen);
    if (s && s->received == 0)
        s->received = when;
    return 0;
}

/* Reads what the subscription has, waiting at most timeout seconds for it.
 * Returns 1 when the end marker came. */
static int pump(redisContext *sub, struct table *t, double timeout)
{
    struct pollfd p = {.fd = sub->fd, .events = POLLIN};
    struct timespec ts;
    void *reply;
    int end = 0;

    if (timeout < 0)
        timeout = 0;
    ts.tv_sec = (time_t)timeout;
    ts.tv_nsec = (long)((timeout - (double)ts.tv_sec) * 1e9);
    if (ppoll(&p, 1, &ts, NULL) < 0) {
        if (errno == EINTR)
            return 0;
        die("poll failed", strerror(errno));
    }
    if (p.revents) {
        double when = now_s();

        if (redisBufferRead(sub) != REDIS_OK)
            die("reading the subscription failed", sub->errstr);
        while (redisGetReplyFromReader(sub, &reply) == REDIS_OK && reply) {
            end |= take_message(t, reply, when);
            freeReplyObject(reply);
        }
        if (sub->err)
            die("bad reply on the subscription", sub->errstr);
    }
    return end;
}

static redisContext *subscribe(const char *host, int port)
{
    redisContext *sub = connect_or_die(host, port);
    redisReply *r = redisCommand(sub, "PSUBSCRIBE " PREFIX "*");

    if (!r || r->type != REDIS_REPLY_ARRAY)
        die("PSUBSCRIBE failed", sub->errstr);
    freeReplyObject(r);
    return sub;
}

static void table_init(struct table *t, size_t n)
{
    t->cap = 1024;
    while (t->cap < 2 * n + 2)
        t->cap *= 2;
    t->slots = calloc(t->cap, sizeof(*t->slots));
    t->used = 0;
    if (!t->slots)
        die("out of memory", NULL);
}

/* headers.id of a kombu envelope, or NULL. */
static const char *envelope_id(json_t *env)
{
    return json_string_value(json_object_get(json_object_get(env, "headers"), "id"));
}

/* Where the paced messages come from and how one is released: a Redis list
 * (LMOVE), or a template table in PostgreSQL (INSERT into kombu_message). */
struct source {
    redisContext *cmd;   /* Redis: the list's connection */
    const char *list;
    PGconn *pg;          /* PostgreSQL: the template's connection */
    char **ids;          /* task ids of the rows to release, in order */
    long first;          /* ord of ids[0] */
};

#define SQL_RELEASE                                                                           \
    "INSERT INTO kombu_message (id, visible, timestamp, payload, version, queue_id)"          \
    " SELECT nextval('message_id_sequence'), true, NULL, payload, 1, queue_id FROM %s"       \
    " WHERE ord = $1"

static void source_sql_open(struct source *src, const char *conninfo, const char *table,
                            long first, long count)
{
    char sql[512];
    PGresult *r;

    src->pg = PQconnectdb(conninfo);
    if (PQstatus(src->pg) != CONNECTION_OK)
        die("connect to PostgreSQL failed", PQerrorMessage(src->pg));
    snprintf(sql, sizeof(sql), "SELECT task_id FROM %s WHERE ord >= $1 ORDER BY ord LIMIT $2",
             table);
    {
        char a[24], b[24];
        const char *params[2] = {a, b};

        snprintf(a, sizeof(a), "%ld", first);
        snprintf(b, sizeof(b), "%ld", count);
        r = PQexecParams(src->pg, sql, 2, NULL, params, NULL, NULL, 0);
    }
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != count)
        die("the template table has too few rows", PQresultErrorMessage(r));
    src->ids = calloc((size_t)count, sizeof(*src->ids));
    if (!src->ids)
        die("out of memory", NULL);
    for (long i = 0; i < count; i++)
        src->ids[i] = strdup(PQgetvalue(r, (int)i, 0));
    PQclear(r);
    snprintf(sql, sizeof(sql), SQL_RELEASE, table);
    r = PQprepare(src->pg, "release", sql, 1, NULL);
    if (PQresultStatus(r) != PGRES_COMMAND_OK)
        die("PREPARE failed", PQresultErrorMessage(r));
    PQclear(r);
    src->first = first;
}

/* Releases message i of the source; returns its task id (valid until the
 * source is closed). */
static const char *release(struct source *src, long i, json_t **env)
{
    *env = NULL;
    if (src->pg) {
        char ord[24];
        const char *params[1] = {ord};
        PGresult *r;

        snprintf(ord, sizeof(ord), "%ld", src->first + i);
        r = PQexecPrepared(src->pg, "release", 1, params, NULL, NULL, 0);
        if (PQresultStatus(r) != PGRES_COMMAND_OK || strcmp(PQcmdTuples(r), "1") != 0)
            die("releasing a row failed", PQresultErrorMessage(r));
        PQclear(r);
        return src->ids[i];
    }
    {
        redisReply *r = redisCommand(src->cmd, "LMOVE %s celery RIGHT LEFT", src->list);
        const char *id;

        if (!r || r->type != REDIS_REPLY_STRING)
            die("LMOVE gave no message (list too short?)", src->cmd->errstr);
        *env = json_loadb(r->str, r->len, 0, NULL);
        freeReplyObject(r);
        id = *env ? envelope_id(*env) : NULL;
        if (!id)
            die("a paced message has no headers.id", NULL);
        return id;
    }
}

static int pace(const char *host, int port, struct source *src, double rate, long count,
                const char *outfile)
{
    redisContext *sub = subscribe(host, port);
    struct sample **order = calloc((size_t)count + 1, sizeof(*order));
    struct table t;
    double start, deadline;
    long sent = 0, got = 0;
    FILE *out;

    table_init(&t, (size_t)count);
    if (!order)
        die("out of memory", NULL);
    start = now_s();
    while (sent < count) {
        double due = start + (double)sent / rate, now = now_s();

        if (now < due) {
            pump(sub, &t, due - now); /* wait for the slot, reading results */
            continue;
        }
        {
            double when = now_s();
            json_t *env;
            const char *id = release(src, sent, &env);
            struct sample *s = lookup(&t, id, strlen(id));

            if (!s)
                die("task id too long or table full", id);
            s->sent = when;
            order[sent++] = s;
            json_decref(env);
        }
        pump(sub, &t, 0);
    }
    deadline = now_s() + WAIT_AFTER_S;
    for (;;) {
        got = 0;
        for (long i = 0; i < count; i++)
            got += order[i]->received != 0;
        if (got == count || now_s() > deadline)
            break;
        pump(sub, &t, 0.05);
    }
    out = fopen(outfile, "w");
    if (!out)
        die("cannot open the output", outfile);
    for (long i = 0; i < count; i++)
        fprintf(out, "%s %.6f %.6f\n", order[i]->id, order[i]->sent,
                order[i]->received ? order[i]->received : -1.0);
    if (fclose(out) != 0)
        die("writing the output failed", outfile);
    fprintf(stderr, "latency: paced %ld messages at %.0f/s over %.2f s, %ld results seen\n",
            count, rate, (double)(count - 1) / rate, got);
    redisFree(sub);
    free(order);
    free(t.slots);
    return got == count ? 0 : 1;
}

static int watch(const char *host, int port, const char *outfile, const char *readyfile)
{
    redisContext *sub = subscribe(host, port);
    struct table t;
    FILE *ready, *out;

    table_init(&t, 1u << 15);
    ready = fopen(readyfile, "w");
    if (!ready)
        die("cannot create the ready file", readyfile);
    fclose(ready);
    while (!pump(sub, &t, 1.0))
        ;
    out = fopen(outfile, "w");
    if (!out)
        die("cannot open the output", outfile);
    for (size_t i = 0; i < t.cap; i++)
        if (t.slots[i].id[0])
            fprintf(out, "%s %.6f\n", t.slots[i].id, t.slots[i].received);
    if (fclose(out) != 0)
        die("writing the output failed", outfile);
    redisFree(sub);
    free(t.slots);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 8 && strcmp(argv[1], "pace") == 0 && atof(argv[5]) > 0 && atol(argv[6]) > 0) {
        struct source src = {.list = argv[4]};

        src.cmd = connect_or_die(argv[2], atoi(argv[3]));
        return pace(argv[2], atoi(argv[3]), &src, atof(argv[5]), atol(argv[6]), argv[7]);
    }
    if (argc == 10 && strcmp(argv[1], "pace-sql") == 0 && atol(argv[6]) > 0 &&
        atof(argv[7]) > 0 && atol(argv[8]) > 0) {
        struct source src = {0};

        source_sql_open(&src, argv[4], argv[5], atol(argv[6]), atol(argv[8]));
        return pace(argv[2], atoi(argv[3]), &src, atof(argv[7]), atol(argv[8]), argv[9]);
    }
    if (argc == 6 && strcmp(argv[1], "watch") == 0)
        return watch(argv[2], atoi(argv[3]), argv[4], argv[5]);
    fprintf(stderr, "usage: latency pace HOST PORT LIST RATE COUNT OUTFILE\n"
                    "       latency pace-sql HOST PORT CONNINFO TABLE FIRST RATE COUNT OUTFILE\n"
                    "       latency watch HOST PORT OUTFILE READYFILE\n");
    return 2;
}
