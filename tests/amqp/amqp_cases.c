/* SPDX-License-Identifier: MIT
 * amqp_cases.c: the C side of test_amqp_link.sh. Each subcommand runs one
 * case against the RabbitMQ at argv[2] through util/amqp_link.h and prints
 * "# " diagnostics; exit 0 means the case held. Data for the Python side
 * goes to stdout as one JSON line.
 */
#include "common.h"
#include "protocol/message.h"
#include "util/amqp_declare.h"
#include "util/amqp_link.h"
#include "util/amqp_msg.h"
#include "util/amqp_url.h"
#include "util/buf.h"
#include "util/self.h"
#include "util/time.h"

#include <sys/wait.h>

static int fail(const char *fmt, ...) ATTR_PRINTF(1, 2);
static int fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("# FAIL: ");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    return 1;
}

static int open_url(struct amqp_link *l, const char *url, struct err *e)
{
    struct amqp_url u;
    int rc = amqp_url_parse(&u, url, e);
    if (!rc)
        rc = amqp_link_open(l, &u, e);
    amqp_url_release(&u);
    return rc;
}

static int must_open(struct amqp_link *l, const char *url)
{
    struct err e = {0};
    amqp_link_init(l, "test");
    if (open_url(l, url, &e))
        return fail("open: %d %s", e.code, e.msg);
    return 0;
}

/* expect-error URL CODE WORDS...: open fails with CODE, message has WORDS. */
static int cmd_expect_error(int argc, char **argv)
{
    struct amqp_link l;
    struct err e = {0};
    amqp_link_init(&l, "test");
    int64_t t0 = time_mono_ms();
    int rc = open_url(&l, argv[2], &e);
    int64_t took = time_mono_ms() - t0;
    printf("# rc %d after %" PRId64 " ms: %s\n", rc, took, e.msg);
    int want = !strcmp(argv[3], "E_CONFIG") ? E_CONFIG : E_CONN_LOST;
    if (rc != want || e.code != want || amqp_link_is_open(&l))
        return fail("want %s", argv[3]);
    for (int i = 4; i < argc; i++)
        if (!strstr(e.msg, argv[i]))
            return fail("message lacks '%s'", argv[i]);
    if (strstr(e.msg, "guest") || strstr(e.msg, "wrongpass"))
        return fail("message shows credentials");
    return 0;
}

/* connect URL: opens, prints the heartbeat, closes cleanly. */
static int cmd_connect(char **argv)
{
    struct amqp_link l;
    if (must_open(&l, argv[2]))
        return 1;
    printf("{\"heartbeat\": %d, \"channel\": %d}\n", l.heartbeat, l.channel);
    amqp_link_close(&l, NULL);
    return 0;
}

/* declare-celery URL: Celery's topology over what Python declared. */
static int cmd_declare_celery(char **argv)
{
    struct amqp_link l;
    struct err e = {0};
    if (must_open(&l, argv[2]))
        return 1;
    bool existed = false;
    struct amqp_declare_queue qq = {.name = "qq", .durable = true, .queue_type = "quorum"};
    if (amqp_declare_task_queue(&l, "celery", 0, NULL, 0, &e) ||
        amqp_declare_task_queue(&l, "pq", 10, NULL, 0, &e) ||
        amqp_declare_task_queue(&l, "qq", 0, "quorum", 0, &e) ||
        amqp_declare_queue(&l, &qq, AMQP_DECLARE_ADOPT, &existed, &e) ||
        amqp_declare_pidbox(&l, "py@test", NULL, &e) || amqp_declare_events(&l, &e))
        return fail("declare: %s", e.msg);
    if (!existed)
        return fail("adopting 'qq' did not find it");
    /* A quorum queue made by someone else, declared by us without a type. */
    if (amqp_declare_task_queue(&l, "qq", 0, NULL, AMQP_DECLARE_ADOPT, &e))
        return fail("adopt qq without type: %s", e.msg);
    amqp_link_close(&l, NULL);
    return 0;
}

/* declare-mismatch URL: "pq" exists with x-max-priority 10; ours says 5. */
static int cmd_declare_mismatch(char **argv)
{
    struct amqp_link l;
    struct err e = {0};
    if (must_open(&l, argv[2]))
        return 1;
    amqp_channel_t before = l.channel;
    int rc = amqp_declare_task_queue(&l, "pq", 5, NULL, 0, &e);
    printf("# rc %d: %s\n", rc, e.msg);
    if (rc != E_PROTOCOL || !strstr(e.msg, "PRECONDITION_FAILED") ||
        !strstr(e.msg, "x-max-priority") || !strstr(e.msg, "vhost '/'") || l.reply_code != 406)
        return fail("want E_PROTOCOL 406 naming x-max-priority and the vhost");
    if (!amqp_link_is_open(&l) || l.channel == before)
        return fail("channel not recovered (channel %d, before %d)", l.channel, before);
    struct err e2 = {0};
    rc = amqp_declare_exists(&l, "pq", NULL, NULL, &e2);
    if (rc)
        return fail("after recovery: %s", e2.msg);
    rc = amqp_declare_exists(&l, "no-such-queue", NULL, NULL, &e2);
    if (rc != -ENOENT || !amqp_link_is_open(&l))
        return fail("passive declare of a missing queue: %d %s", rc, e2.msg);
    amqp_link_close(&l, NULL);
    return 0;
}

static int publish_text(struct amqp_link *l, const char *queue, const char *text, bool mandatory,
                        struct err *e)
{
    amqp_basic_properties_t p = {0};
    p._flags = AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_CONTENT_TYPE_FLAG;
    p.delivery_mode = 2;
    p.content_type = amqp_cstring_bytes("text/plain");
    return amqp_link_publish(l, "", queue, mandatory, &p, amqp_cstring_bytes(text), 5000, e);
}

/* Next delivery within ms; its body must be want. */
static int expect_body(struct amqp_link *l, struct amqp_link_delivery *d, const char *want, int ms)
{
    struct err e = {0};
    int rc = amqp_link_next(l, ms, d, &e);
    if (rc)
        return fail("next: %d %s", rc, e.msg);
    if (d->env.message.body.len != strlen(want) || memcmp(d->env.message.body.bytes, want, strlen(want)))
        return fail("got body '%.*s', want '%s'", (int)d->env.message.body.len,
                    (char *)d->env.message.body.bytes, want);
    return 0;
}

/* pubsub URL: confirms, prefetch 1, ack, reject-requeue, reject-drop, return. */
static int cmd_pubsub(char **argv)
{
    struct amqp_link l;
    struct err e = {0};
    struct amqp_link_delivery d;
    if (must_open(&l, argv[2]))
        return 1;
    struct amqp_declare_queue q = {.name = "work", .durable = true};
    if (amqp_declare_queue(&l, &q, 0, NULL, &e) || publish_text(&l, "work", "m1", true, &e) ||
        publish_text(&l, "work", "m2", true, &e) || publish_text(&l, "work", "m3", true, &e))
        return fail("publish: %s", e.msg);
    int rc = publish_text(&l, "no-such-queue", "lost", true, &e);
    if (rc != -ENOENT || !strstr(e.msg, "NO_ROUTE"))
        return fail("mandatory publish to nowhere: %d %s", rc, e.msg);
    if (amqp_link_qos(&l, 1, &e) || amqp_link_consume(&l, "work", false, &e))
        return fail("consume: %s", e.msg);
    if (expect_body(&l, &d, "m1", 2000))
        return 1;
    /* prefetch 1: nothing more before the ack */
    struct amqp_link_delivery extra;
    if ((rc = amqp_link_next(&l, 300, &extra, &e)) != -EAGAIN)
        return fail("prefetch 1 let a second delivery through: %d", rc);
    if (amqp_link_ack(&l, d.env.channel, d.env.delivery_tag, &e))
        return fail("ack: %s", e.msg);
    amqp_link_delivery_release(&d);
    if (expect_body(&l, &d, "m2", 2000) || d.env.redelivered)
        return fail("m2 first delivery");
    amqp_link_reject(&l, d.env.channel, d.env.delivery_tag, true, &e);
    amqp_link_delivery_release(&d);
    if (expect_body(&l, &d, "m2", 2000) || !d.env.redelivered)
        return fail("m2 requeued: redelivered %d", d.env.redelivered);
    amqp_link_ack(&l, d.env.channel, d.env.delivery_tag, &e);
    amqp_link_delivery_release(&d);
    if (expect_body(&l, &d, "m3", 2000))
        return 1;
    amqp_link_reject(&l, d.env.channel, d.env.delivery_tag, false, &e);
    amqp_link_delivery_release(&d);
    if ((rc = amqp_link_next(&l, 300, &d, &e)) != -EAGAIN)
        return fail("after reject-drop: %d %s", rc, e.msg);
    uint32_t n = 99;
    if (amqp_declare_exists(&l, "work", &n, NULL, &e) || n != 0)
        return fail("queue not empty: %u %s", n, e.msg);
    if (amqp_link_ack(&l, 999, 1, &e) != -ESTALE)
        return fail("ack on a stale channel accepted");
    amqp_link_close(&l, NULL);
    return 0;
}

/* recv-envelope URL QUEUE: one delivery -> envelope -> Celery decoder; prints
 * the decoded fields as JSON for the Python side to compare. */
static int cmd_recv_envelope(char **argv)
{
    struct amqp_link l;
    struct err e = {0};
    struct amqp_link_delivery d;
    if (must_open(&l, argv[2]))
        return 1;
    if (amqp_link_qos(&l, 1, &e) || amqp_link_consume(&l, argv[3], false, &e) ||
        amqp_link_next(&l, 5000, &d, &e))
        return fail("receive: %s", e.msg);
    struct buf env = BUF_INIT;
    if (amqp_msg_to_envelope(&env, &d.env, &e))
        return fail("to envelope: %s", e.msg);
    printf("# envelope %s\n", env.data);
    struct message m;
    enum message_settle settle;
    message_init(&m);
    if (message_decode_envelope(&m, env.data, env.len, argv[3], &settle, &e) ||
        message_decode_task(&m, &settle, &e))
        return fail("decode: %s", e.msg);
    json_t *props = json_object_get(m.envelope, "properties");
    json_t *out = json_pack("{s:s, s:s, s:O, s:O, s:i, s:O, s:O, s:s, s:s, s:O}", "task",
                            m.task_name, "id", m.task_id, "args", m.args, "kwargs", m.kwargs,
                            "priority", m.priority, "correlation_id",
                            json_object_get(props, "correlation_id"), "reply_to",
                            json_object_get(props, "reply_to"), "routing_key", m.routing_key,
                            "delivery_tag", m.delivery_tag, "headers",
                            json_object_get(m.envelope, "headers"));
    char *text = json_dumps(out, JSON_COMPACT | JSON_SORT_KEYS);
    printf("%s\n", text);
    free(text);
    json_decref(out);
    int rc = amqp_link_ack(&l, d.env.channel, d.env.delivery_tag, &e);
    message_release(&m);
    buf_release(&env);
    amqp_link_delivery_release(&d);
    amqp_link_close(&l, NULL);
    return rc ? fail("ack: %s", e.msg) : 0;
}

/* send-task URL QUEUE: a task message as celeriac encodes it, through
 * amqp_msg_from_envelope, published with a confirm. Prints its id. */
static int cmd_send_task(char **argv)
{
    struct amqp_link l;
    struct err e = {0};
    if (must_open(&l, argv[2]))
        return 1;
    json_t *args = json_pack("[i, s, {s:[f, b, n]}]", 7, "\xc3\xa9t\xc3\xa9", "deep", 2.5, 1);
    json_t *kwargs = json_pack("{s:s}", "who", "celeriac");
    struct task_send t = {.name = "books.add", .queue = argv[3], .args = args,
                          .kwargs = kwargs, .priority = 6};
    struct buf out = BUF_INIT;
    char id[40];
    message_encode_task(&out, &t, id);
    json_error_t jerr;
    json_t *env = json_loads(out.data, 0, &jerr);
    struct amqp_msg_outgoing o;
    int rc = amqp_msg_from_envelope(&o, env, &e);
    if (!rc) {
        /* kombu's envelope carries a Redis-style delivery_info; AMQP wants
         * the default exchange and the queue as routing key. */
        rc = amqp_link_publish(&l, "", argv[3], true, &o.props, o.body, 5000, &e);
    }
    amqp_msg_outgoing_release(&o);
    json_decref(env);
    json_decref(args);
    json_decref(kwargs);
    buf_release(&out);
    amqp_link_close(&l, NULL);
    if (rc)
        return fail("send: %s", e.msg);
    printf("{\"id\": \"%s\"}\n", id);
    return 0;
}

/* heartbeat URL(with heartbeat=2): idle 7 s servicing heartbeats, then a
 * message published by a second link is seen. */
static int cmd_heartbeat(char **argv)
{
    struct amqp_link l, p;
    struct err e = {0};
    struct amqp_link_delivery d;
    if (must_open(&l, argv[2]))
        return 1;
    if (l.heartbeat != 2)
        return fail("negotiated heartbeat %d, want 2", l.heartbeat);
    struct amqp_declare_queue q = {.name = "hb", .durable = true};
    if (amqp_declare_queue(&l, &q, 0, NULL, &e) || amqp_link_consume(&l, "hb", false, &e))
        return fail("consume: %s", e.msg);
    int64_t end = time_mono_ms() + 7000;
    while (time_mono_ms() < end) {
        int rc = amqp_link_next(&l, 1000, &d, &e);
        if (rc != -EAGAIN)
            return fail("idle wait: %d %s", rc, e.msg);
    }
    if (must_open(&p, argv[2]) || publish_text(&p, "hb", "after", false, &e))
        return fail("publish: %s", e.msg);
    amqp_link_close(&p, NULL);
    if (expect_body(&l, &d, "after", 3000))
        return 1;
    amqp_link_ack(&l, d.env.channel, d.env.delivery_tag, &e);
    amqp_link_delivery_release(&d);
    amqp_link_close(&l, NULL);
    return 0;
}

/* cancel URL: the queue is deleted under its consumer -> -ECANCELED. */
static int cmd_cancel(char **argv)
{
    struct amqp_link l, o;
    struct err e = {0};
    struct amqp_link_delivery d;
    if (must_open(&l, argv[2]) || must_open(&o, argv[2]))
        return 1;
    struct amqp_declare_queue q = {.name = "doomed", .durable = true};
    struct amqp_declare_queue q2 = {.name = "survivor", .durable = true};
    if (amqp_declare_queue(&l, &q, 0, NULL, &e) || amqp_declare_queue(&l, &q2, 0, NULL, &e) ||
        amqp_link_consume(&l, "doomed", false, &e) || amqp_link_consume(&l, "survivor", false, &e))
        return fail("consume: %s", e.msg);
    if (amqp_declare_delete(&o, "doomed", &e))
        return fail("delete: %s", e.msg);
    int rc = amqp_link_next(&l, 3000, &d, &e);
    printf("# rc %d: %s\n", rc, e.msg);
    if (rc != -ECANCELED || !strstr(e.msg, "'doomed'"))
        return fail("want -ECANCELED naming the queue");
    if (publish_text(&o, "survivor", "still here", false, &e) || expect_body(&l, &d, "still here", 3000))
        return fail("the other consumer stopped: %s", e.msg);
    amqp_link_delivery_release(&d);
    amqp_link_close(&o, NULL);
    amqp_link_close(&l, NULL);
    return 0;
}

/* fork URL: a child must not use its parent's link. */
static int cmd_fork(char **argv)
{
    struct amqp_link l;
    struct err e = {0};
    if (must_open(&l, argv[2]))
        return 1;
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        self_pid_reset();
        struct amqp_link_delivery d;
        int rc = amqp_link_next(&l, 100, &d, &e);
        amqp_link_close(&l, NULL);
        _exit(rc == E_CONN_LOST && strstr(e.msg, "used from pid") ? 0 : 1);
    }
    int st;
    waitpid(pid, &st, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st))
        return fail("the child could use the parent's link");
    if (amqp_declare_events(&l, &e))
        return fail("parent's link broken by the child: %s", e.msg);
    amqp_link_close(&l, NULL);
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 3)
        return fail("usage: amqp_cases CASE URL [ARGS]");
    const char *c = argv[1];
    if (!strcmp(c, "connect"))
        return cmd_connect(argv);
    if (!strcmp(c, "expect-error") && argc >= 4)
        return cmd_expect_error(argc, argv);
    if (!strcmp(c, "declare-celery"))
        return cmd_declare_celery(argv);
    if (!strcmp(c, "declare-mismatch"))
        return cmd_declare_mismatch(argv);
    if (!strcmp(c, "pubsub"))
        return cmd_pubsub(argv);
    if (!strcmp(c, "recv-envelope") && argc >= 4)
        return cmd_recv_envelope(argv);
    if (!strcmp(c, "send-task") && argc >= 4)
        return cmd_send_task(argv);
    if (!strcmp(c, "heartbeat"))
        return cmd_heartbeat(argv);
    if (!strcmp(c, "cancel"))
        return cmd_cancel(argv);
    if (!strcmp(c, "fork"))
        return cmd_fork(argv);
    return fail("unknown case '%s'", c);
}
