/* SPDX-License-Identifier: MIT
 * broker/redis.c: kombu-compatible consumption from Redis (see redis.h).
 * When some task acks late, the pop and the unacked write happen in one
 * server-side script, so a child killed at that instant cannot lose the
 * message. When every task acks early, the pop moves the message into the
 * child's hand instead (see redis.h): a native LMOVE, as cheap as BRPOP, and
 * still no moment in which a message exists only in a socket.
 */
#include "common.h"
#include "broker/redis.h"
#include "protocol/message.h"
#include "util/buf.h"
#include "util/hash.h"
#include "util/log.h"
#include "util/time.h"
#include "util/uuid.h"

#define UNACKED_KEY "unacked"
#define UNACKED_INDEX_KEY "unacked_index"
#define UNACKED_MUTEX_KEY "unacked_mutex"
#define HANDS_MUTEX_KEY "celeriac.hands_mutex"
#define PRIORITY_SEP "\x06\x16"

/* KEYS: unacked, unacked_index, lists...; ARGV: now, max envelope size.
 * Pops from the first non-empty list and records it as unacked in the same
 * atomic step. The tag, exchange and routing key are found by pattern after
 * the "properties" key rather than by decoding the whole envelope in Lua
 * (which cost most of the script's time); they are returned, and the child
 * checks them against its full decode and corrects the record if a hostile
 * envelope fooled the patterns. Values with escapes are not matched: such a
 * message is recorded by the child instead. */
static struct redis_script pop_and_record = {
    .body =
    "for i = 3, #KEYS do\n"
    "  local v = redis.call('RPOP', KEYS[i])\n"
    "  if v then\n"
    "    if #v > tonumber(ARGV[2]) then return {KEYS[i], v} end\n"
    "    local from = string.find(v, '\"properties\"%s*:') or 1\n"
    "    local tag = string.match(v, '\"delivery_tag\"%s*:%s*\"([^\"\\\\]+)\"', from)\n"
    "    local ex = string.match(v, '\"exchange\"%s*:%s*\"([^\"\\\\]*)\"', from)\n"
    "    local rk = string.match(v, '\"routing_key\"%s*:%s*\"([^\"\\\\]*)\"', from)\n"
    "    if not (tag and ex and rk) then return {KEYS[i], v} end\n"
    "    redis.call('ZADD', KEYS[2], ARGV[1], tag)\n"
    "    redis.call('HSET', KEYS[1], tag, '[' .. v .. ',\"' .. ex .. '\",\"' .. rk .. '\"]')\n"
    "    return {KEYS[i], v, tag, ex, rk}\n"
    "  end\n"
    "end\n"
    "return false\n",
};

/* KEYS: unacked, unacked_index, list; ARGV: tag, value read, new payload
 * ("" = drop), "L" or "R". Removes the entry and pushes the payload only if
 * the entry still holds the value read: 1 done, 0 already gone, -1 changed. */
static struct redis_script restore_script = {
    .body =
    "local cur = redis.call('HGET', KEYS[1], ARGV[1])\n"
    "if not cur then redis.call('ZREM', KEYS[2], ARGV[1]) return 0 end\n"
    "if cur ~= ARGV[2] then return -1 end\n"
    "redis.call('ZREM', KEYS[2], ARGV[1])\n"
    "redis.call('HDEL', KEYS[1], ARGV[1])\n"
    "if ARGV[3] ~= '' then\n"
    "  if ARGV[4] == 'L' then redis.call('LPUSH', KEYS[3], ARGV[3])\n"
    "  else redis.call('RPUSH', KEYS[3], ARGV[3]) end\n"
    "end\n"
    "return 1\n",
};

/* KEYS: hand, list[, alive]; ARGV: the message read from the hand, the
 * payload to push. Puts a hand's message back at the consumer end of its list
 * and empties the hand in one step, only if the hand still holds what was
 * read (a sweeper and a same-name adoption may race for a dead worker's
 * hand: exactly one of them returns it) and, given an alive key, only while
 * that key is missing (the owner is still gone). 1 done, 0 the owner is
 * alive, -1 the hand changed. */
static struct redis_script return_hand = {
    .body =
    "if KEYS[3] and redis.call('EXISTS', KEYS[3]) == 1 then return 0 end\n"
    "if redis.call('LINDEX', KEYS[1], 0) ~= ARGV[1] then return -1 end\n"
    "redis.call('RPUSH', KEYS[2], ARGV[2])\n"
    "redis.call('DEL', KEYS[1])\n"
    "return 1\n",
};

/* Compare-and-delete, so we never release a mutex another process took after
 * ours expired. */
static struct redis_script release_mutex = {
    .body =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end\n"
    "return 0\n",
};

/* KEYS: the hand, then lists in kombu's order; ARGV: "1" to empty the hand
 * first (its message was settled). Moves the first message found into the
 * hand: one command for any number of queues, where a LMOVE per list cost
 * an idle worker with ten queues forty commands per poll. */
static struct redis_script move_to_hand = {
    .body =
    "if ARGV[1] == '1' then redis.call('DEL', KEYS[1]) end\n"
    "for i = 2, #KEYS do\n"
    "  local v = redis.call('LMOVE', KEYS[i], KEYS[1], 'RIGHT', 'LEFT')\n"
    "  if v then return {KEYS[i], v} end\n"
    "end\n"
    "return false\n",
};

void broker_redis_init(struct broker_redis *b, const struct broker_config *cfg)
{
    memset(b, 0, sizeof(*b));
    static struct redis_script *const scripts[] = {&pop_and_record, &release_mutex,
                                                   &restore_script, &move_to_hand,
                                                   &return_hand, NULL};
    redis_link_init(&b->link, "broker");
    b->link.scripts = scripts;
    b->cfg = cfg;
    broker_redis_set_queues(b, cfg->queues, cfg->n_queues);
}

static void free_keys(struct broker_redis *b)
{
    for (size_t i = 0; b->keys && i < b->n_keys; i++)
        free((char *)b->keys[i]);
    free(b->keys);
    free(b->key_lens);
    b->keys = NULL;
    b->key_lens = NULL;
    b->n_keys = 0;
}

void broker_redis_set_queues(struct broker_redis *b, char *const *queues, size_t n)
{
    free_keys(b);
    /* kombu's order: for each priority step, for each queue. */
    static const int steps[] = {0, 3, 6, 9};
    b->n_keys = 2 + n * ARRAY_SIZE(steps);
    b->keys = xcalloc(b->n_keys, sizeof(*b->keys));
    b->key_lens = xcalloc(b->n_keys, sizeof(*b->key_lens));
    b->keys[0] = xstrdup(UNACKED_KEY);
    b->keys[1] = xstrdup(UNACKED_INDEX_KEY);
    size_t k = 2;
    for (size_t s = 0; s < ARRAY_SIZE(steps); s++) {
        for (size_t q = 0; q < n; q++) {
            struct buf name = BUF_INIT;
            message_priority_list(&name, queues[q], steps[s]);
            b->keys[k++] = buf_detach(&name, NULL);
        }
    }
    for (size_t i = 0; i < b->n_keys; i++)
        b->key_lens[i] = strlen(b->keys[i]);
    b->waited = false;
}

/* The list a message of unknown origin goes back to: the first consumed,
 * or Celery's default queue when none is. */
static const char *first_list(const struct broker_redis *b)
{
    return b->n_keys > 2 ? b->keys[2] : "celery";
}

void broker_redis_set_hand(struct broker_redis *b, const char *node, pid_t owner, int slot)
{
    struct buf key = BUF_INIT;
    buf_addf(&key, "celeriac.hand.%s.%d.%d", node, (int)owner, slot);
    free(b->hand);
    b->hand = buf_detach(&key, NULL);
}

void broker_redis_release(struct broker_redis *b, const char *reason)
{
    redis_link_close(&b->link, reason);
    free(b->hand);
    b->hand = NULL;
    free_keys(b);
}

int broker_redis_open(struct broker_redis *b, struct err *e)
{
    int rc = redis_link_open(&b->link, &b->cfg->url, e);
    if (!rc && b->hand)
        b->hand_unknown = true; /* a pop may have moved a message we never saw */
    if (rc || !b->unconfirmed_ack[0])
        return rc;
    /* An ack whose reply we never saw may not have run: ZREM/HDEL of a tag
     * already gone is harmless, so send it again. */
    rc = broker_redis_ack(b, b->unconfirmed_ack, e);
    if (!rc)
        b->unconfirmed_ack[0] = '\0';
    return rc;
}

int broker_redis_confirm(struct broker_redis *b, struct err *e)
{
    int rc = 0;
    if (b->link.pending)
        rc = redis_link_drain(&b->link, e);
    else if (b->unconfirmed_ack[0]) /* refused before: send it again */
        rc = broker_redis_ack(b, b->unconfirmed_ack, e);
    if (rc == E_CONN_LOST || rc == E_REFUSED)
        return rc; /* the ack stays due */
    b->unconfirmed_ack[0] = '\0';
    return 0;
}

/* An ack is HDEL then ZREM, pipelined but not in MULTI: Redis refuses every
 * command queued in a MULTI while it is over maxmemory, but not these, and
 * acks are what frees its memory. A death between the two leaves an index
 * entry without a payload, which any sweep (kombu's too) simply removes. */
static int append_ack(struct broker_redis *b, const char *tag)
{
    const char *hdel[] = {"HDEL", UNACKED_KEY, tag};
    const char *zrem[] = {"ZREM", UNACKED_INDEX_KEY, tag};
    if (redis_link_append_argv(&b->link, 3, hdel, NULL) ||
        redis_link_append_argv(&b->link, 3, zrem, NULL))
        return E_CONN_LOST;
    return 0;
}

int broker_redis_ack_send(struct broker_redis *b, const char *tag, struct err *e)
{
    /* One unconfirmed ack at a time (held messages run back to back): the
     * earlier one's reply has had a task's time to arrive. */
    if (b->unconfirmed_ack[0] && broker_redis_confirm(b, e))
        return E_CONN_LOST;
    snprintf(b->unconfirmed_ack, sizeof(b->unconfirmed_ack), "%s", tag);
    if (append_ack(b, tag))
        return err_set(e, E_CONN_LOST, "broker connection is not usable");
    b->link.pending += 2;
    return redis_link_flush(&b->link, e);
}

void broker_redis_delivery_release(struct delivery *d)
{
    if (d->owner)
        freeReplyObject(d->owner);
    memset(d, 0, sizeof(*d));
}

/* d->queue: the list's name without its priority suffix. */
static void set_queue(struct delivery *d, const char *key, size_t klen)
{
    const char *sep = NULL;
    for (size_t i = 0; i + 1 < klen; i++)
        if (key[i] == PRIORITY_SEP[0] && key[i + 1] == PRIORITY_SEP[1])
            sep = key + i;
    if (sep)
        klen = (size_t)(sep - key);
    snprintf(d->queue, sizeof(d->queue), "%.*s", (int)klen, key);
}

/* Fills d from a [key, value, tag-or-nil] reply, taking ownership of r. */
static int take_reply(struct delivery *d, redisReply *r, struct err *e)
{
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 2 ||
        r->element[0]->type != REDIS_REPLY_STRING || r->element[1]->type != REDIS_REPLY_STRING) {
        err_set(e, E_PROTOCOL, "unexpected reply to a pop (type %d)", r->type);
        freeReplyObject(r);
        return E_PROTOCOL;
    }
    d->owner = r;
    d->raw = r->element[1]->str;
    d->len = r->element[1]->len;
    bool recorded = r->elements == 5 && r->element[2]->type == REDIS_REPLY_STRING &&
                    r->element[3]->type == REDIS_REPLY_STRING &&
                    r->element[4]->type == REDIS_REPLY_STRING;
    d->recorded.tag = recorded ? r->element[2]->str : NULL;
    d->recorded.exchange = recorded ? r->element[3]->str : NULL;
    d->recorded.routing_key = recorded ? r->element[4]->str : NULL;
    set_queue(d, r->element[0]->str, r->element[0]->len);
    return 0;
}

/* Runs a popping script over the keys first_key (if not NULL) and
 * b->keys[from..], followed by the n_extra arguments extra. The script returns
 * [list, message, ...] or nil. 1 with d filled, 0 when nothing was popped,
 * or a negative code. */
static int run_pop_script(struct broker_redis *b, const struct redis_script *script,
                          const char *first_key, size_t from, const char *const *extra,
                          size_t n_extra, struct delivery *d, struct err *e)
{
    size_t n_lists = b->n_keys - from, head = first_key != NULL;
    size_t n = head + n_lists + n_extra;
    const char **args = xcalloc(n, sizeof(*args));
    size_t *lens = xcalloc(n, sizeof(*lens));
    if (head) {
        args[0] = first_key;
        lens[0] = strlen(first_key);
    }
    memcpy(args + head, b->keys + from, n_lists * sizeof(*args));
    memcpy(lens + head, b->key_lens + from, n_lists * sizeof(*lens));
    for (size_t i = 0; i < n_extra; i++) {
        args[head + n_lists + i] = extra[i];
        lens[head + n_lists + i] = strlen(extra[i]);
    }
    int rc = redis_link_append_script(&b->link, script, (int)n, args, lens,
                                      (int)(head + n_lists));
    free(args);
    free(lens);
    if (rc)
        return err_set(e, E_CONN_LOST, "broker connection is not usable");
    redisReply *r = redis_link_read(&b->link, e);
    if (!r)
        return E_CONN_LOST;
    if (r->type == REDIS_REPLY_ARRAY) {
        rc = take_reply(d, r, e);
        return rc ? rc : 1;
    }
    rc = r->type == REDIS_REPLY_ERROR ? redis_link_reply_error(e, "pop script", r->str) : 0;
    freeReplyObject(r);
    return rc;
}

/* Runs the pop-and-record script once. Returns 0 with d filled or empty. */
static int pop_script(struct broker_redis *b, struct delivery *d, struct err *e)
{
    char now[32], max[32];
    snprintf(now, sizeof(now), "%.7f", time_now());
    snprintf(max, sizeof(max), "%zu", b->cfg->max_message);
    const char *extra[] = {now, max};
    int rc = run_pop_script(b, &pop_and_record, NULL, 0, extra, 2, d, e);
    return rc < 0 ? rc : 0;
}

/* How long a blocking pop may wait on the first list: the other lists
 * (priorities, further queues) are only polled between waits, so with
 * several of them the wait is kept short. */
static double block_seconds(const struct broker_redis *b, double timeout_s)
{
    return b->n_keys > 2 + 4 && timeout_s > 0.2 ? 0.2 : timeout_s;
}

/* Blocks until the first queue's base list holds a message, without popping
 * it: BLMOVE of a list onto its own tail changes nothing. Returns 1 when
 * something arrived, 0 on timeout, or a negative code. */
static int wait_for_message(struct broker_redis *b, double timeout_s, struct err *e)
{
    double block_s = block_seconds(b, timeout_s);
    char tmo[16];
    snprintf(tmo, sizeof(tmo), "%.2f", block_s);
    const char *argv[] = {"BLMOVE", b->keys[2], b->keys[2], "RIGHT", "RIGHT", tmo};
    size_t alens[] = {6, b->key_lens[2], b->key_lens[2], 5, 5, strlen(tmo)};
    redisReply *r = redis_link_blocking_argv(&b->link, block_s, e, 6, argv, alens);
    if (!r)
        return E_CONN_LOST;
    int rc = r->type == REDIS_REPLY_STRING;
    if (r->type == REDIS_REPLY_ERROR)
        rc = redis_link_reply_error(e, "BLMOVE", r->str);
    freeReplyObject(r);
    return rc;
}

/* ---- the hand (early ack; see redis.h) */

uint64_t broker_redis_hand_hash(const char *raw, size_t len)
{
    return hash_nonzero(raw, len); /* never 0: 0 means "nothing settled" */
}

void broker_redis_hand_settled(struct broker_redis *b, uint64_t hash)
{
    b->hand_release = true;
    b->hand_settled_hash = hash;
}

/* Fills d from a bulk string reply (the moved message), taking r. */
static void take_moved(struct delivery *d, redisReply *r, const char *list, size_t list_len)
{
    d->owner = r;
    d->raw = r->str;
    d->len = r->len;
    set_queue(d, list, list_len);
}

/* After a reconnect: a message in the hand that is not the one we settled
 * was moved by a pop whose reply was lost with the connection: it is ours to
 * deliver now. Returns 0 (d filled or not) or E_CONN_LOST. */
static int hand_recover(struct broker_redis *b, struct delivery *d, struct err *e)
{
    const char *argv[] = {"LINDEX", b->hand, "0"};
    redisReply *r = redis_link_argv(&b->link, e, 3, argv, NULL);
    if (!r)
        return E_CONN_LOST;
    b->hand_unknown = false;
    if (r->type != REDIS_REPLY_STRING) {
        b->hand_release = false; /* empty */
        freeReplyObject(r);
        return 0;
    }
    if (b->hand_release && broker_redis_hand_hash(r->str, r->len) == b->hand_settled_hash) {
        freeReplyObject(r); /* ours, settled: the next pop empties it */
        return 0;
    }
    b->hand_release = false;
    take_moved(d, r, first_list(b), strlen(first_list(b)));
    return 0;
}

/* One LMOVE from list k into the hand, pipelined behind the DEL of the
 * settled message (one write for both). 1 with d filled, 0 when the list is
 * empty, or a negative code. */
static int move_one(struct broker_redis *b, size_t k, struct delivery *d, struct err *e)
{
    const char *del[] = {"DEL", b->hand};
    const char *move[] = {"LMOVE", b->keys[k], b->hand, "RIGHT", "LEFT"};
    const size_t move_lens[] = {5, b->key_lens[k], strlen(b->hand), 5, 4};
    bool release = b->hand_release;
    if ((release && redis_link_append_argv(&b->link, 2, del, NULL)) ||
        redis_link_append_argv(&b->link, 5, move, move_lens))
        return err_set(e, E_CONN_LOST, "broker connection is not usable");
    if (release) {
        redisReply *r = redis_link_read(&b->link, e);
        if (!r)
            return E_CONN_LOST;
        freeReplyObject(r);
        b->hand_release = false;
    }
    redisReply *r = redis_link_read(&b->link, e);
    if (!r)
        return E_CONN_LOST;
    if (r->type == REDIS_REPLY_STRING) {
        take_moved(d, r, b->keys[k], b->key_lens[k]);
        return 1;
    }
    int rc = r->type == REDIS_REPLY_ERROR ? redis_link_reply_error(e, "LMOVE", r->str) : 0;
    freeReplyObject(r);
    return rc;
}

/* The move_to_hand script over the lists from index `from` on. 1 with d
 * filled, 0 when every list is empty, or a negative code. */
static int move_first(struct broker_redis *b, size_t from, struct delivery *d, struct err *e)
{
    const char *extra[] = {b->hand_release ? "1" : "0"};
    int rc = run_pop_script(b, &move_to_hand, b->hand, from, extra, 1, d, e);
    if (rc >= 0)
        b->hand_release = false; /* the script emptied it first */
    return rc;
}

/* Fills the hand from the lists in kombu's order: a busy worker finds its
 * message with one LMOVE of the first list; otherwise one script looks at
 * every list; when all are empty, a blocking move from the first. After a
 * fetch that had to wait, the next starts with the script: at a moderate
 * rate the lists are empty again by then, and an LMOVE that finds nothing
 * would cost a round trip per message before the script and the wait. */
static int pop_hand(struct broker_redis *b, double timeout_s, struct delivery *d, struct err *e)
{
    if (b->hand_unknown) {
        int rc = hand_recover(b, d, e);
        if (rc || d->raw)
            return rc;
    }
    size_t from = 2;
    if (!b->waited || b->n_keys == 3) {
        int rc = move_one(b, 2, d, e);
        if (rc)
            return rc < 0 ? rc : 0;
        from = 3;
    }
    if (from < b->n_keys) {
        int rc = move_first(b, from, d, e);
        if (rc) {
            b->waited = false;
            return rc < 0 ? rc : 0;
        }
    }
    double block_s = block_seconds(b, timeout_s);
    char tmo[16];
    snprintf(tmo, sizeof(tmo), "%.2f", block_s);
    const char *argv[] = {"BLMOVE", b->keys[2], b->hand, "RIGHT", "LEFT", tmo};
    size_t alens[] = {6, b->key_lens[2], strlen(b->hand), 5, 4, strlen(tmo)};
    redisReply *r = redis_link_blocking_argv(&b->link, block_s, e, 6, argv, alens);
    if (!r)
        return E_CONN_LOST;
    if (r->type == REDIS_REPLY_STRING) {
        b->waited = true;
        take_moved(d, r, b->keys[2], b->key_lens[2]);
        return 0;
    }
    b->waited = r->type == REDIS_REPLY_NIL;
    int rc = r->type == REDIS_REPLY_ERROR ? redis_link_reply_error(e, "BLMOVE", r->str) : 0;
    freeReplyObject(r);
    return rc;
}

int broker_redis_fetch(struct broker_redis *b, double timeout_s, struct delivery *d,
                       struct err *e)
{
    memset(d, 0, sizeof(*d));
    int rc = broker_redis_confirm(b, e);
    if (rc)
        return rc;
    if (b->n_keys <= 2) { /* every queue cancelled (cancel_consumer): nothing to pop */
        time_sleep_ms((int64_t)(timeout_s * 1000), NULL);
        return 0;
    }
    if (b->hand && (!b->record_next || b->hand_unknown))
        return pop_hand(b, timeout_s, d, e);
    /* Recording from now on: the hand's settled message goes first, or a
     * worker killed whole would leave it for its successor to put back. */
    rc = broker_redis_hand_clear(b, e);
    if (rc)
        return rc;
    /* Pop and record happen in one script, so there is no moment in which a
     * message is neither in a list nor in the unacked hash. */
    rc = pop_script(b, d, e);
    if (rc || d->raw)
        return rc;
    rc = wait_for_message(b, timeout_s, e);
    if (rc <= 0)
        return rc;
    return pop_script(b, d, e); /* may find nothing: another consumer won the race */
}

/* Sends a MULTI ... EXEC block of n commands and checks EXEC's reply. */
static int transaction(struct broker_redis *b, int n, const char *const *argvs[],
                       const size_t *lens[], const int *argcs, struct err *e)
{
    const char *multi[] = {"MULTI"}, *exec[] = {"EXEC"};
    int rc = redis_link_append_argv(&b->link, 1, multi, NULL);
    for (int i = 0; !rc && i < n; i++)
        rc = redis_link_append_argv(&b->link, argcs[i], (const char **)argvs[i], lens[i]);
    if (!rc)
        rc = redis_link_append_argv(&b->link, 1, exec, NULL);
    if (rc)
        return err_set(e, E_CONN_LOST, "broker connection is not usable");
    int result = 0;
    for (int i = 0; i < n + 2; i++) {
        redisReply *r = redis_link_read(&b->link, e);
        if (!r)
            return E_CONN_LOST;
        if (r->type == REDIS_REPLY_ERROR && !result)
            result = redis_link_reply_error(e, "broker transaction", r->str);
        if (i == n + 1 && r->type != REDIS_REPLY_ARRAY && !result)
            result = err_set(e, E_PROTOCOL, "broker transaction aborted");
        freeReplyObject(r);
    }
    return result;
}

int broker_redis_record(struct broker_redis *b, const char *tag, const char *envelope_json,
                        const char *exchange, const char *routing_key, struct err *e)
{
    /* Payload is kombu's [envelope, exchange, routing_key]. */
    json_t *ex = json_string(exchange), *rk = json_string(routing_key);
    char *exs = json_dumps(ex, JSON_ENCODE_ANY), *rks = json_dumps(rk, JSON_ENCODE_ANY);
    json_decref(ex);
    json_decref(rk);
    struct buf payload = BUF_INIT;
    buf_addf(&payload, "[%s,%s,%s]", envelope_json, exs ? exs : "\"\"", rks ? rks : "\"\"");
    free(exs);
    free(rks);
    char score[32];
    snprintf(score, sizeof(score), "%.7f", time_now());
    const char *zadd[] = {"ZADD", UNACKED_INDEX_KEY, score, tag};
    const char *hset[] = {"HSET", UNACKED_KEY, tag, payload.data};
    size_t hlens[] = {4, strlen(UNACKED_KEY), strlen(tag), payload.len};
    const char *del[] = {"DEL", b->hand ? b->hand : ""};
    const char *const *argvs[] = {zadd, hset, del};
    const size_t *lens[] = {NULL, hlens, NULL};
    int argcs[] = {4, 4, 2};
    int rc = transaction(b, b->hand ? 3 : 2, argvs, lens, argcs, e);
    if (!rc)
        b->hand_release = false;
    buf_release(&payload);
    return rc;
}

int broker_redis_ack(struct broker_redis *b, const char *tag, struct err *e)
{
    if (append_ack(b, tag))
        return err_set(e, E_CONN_LOST, "broker connection is not usable");
    int rc = 0;
    for (int i = 0; i < 2; i++) {
        redisReply *r = redis_link_read(&b->link, e);
        if (!r)
            return E_CONN_LOST;
        if (r->type == REDIS_REPLY_ERROR && !rc)
            rc = redis_link_reply_error(e, "ack", r->str);
        freeReplyObject(r);
    }
    return rc;
}

int broker_redis_touch(struct broker_redis *b, const char **tags, size_t n, struct err *e)
{
    char score[32];
    snprintf(score, sizeof(score), "%.7f", time_now());
    /* Pipelined in batches: thousands of held messages cost a few round trips. */
    for (size_t done = 0; done < n;) {
        size_t batch = n - done < 512 ? n - done : 512;
        for (size_t i = 0; i < batch; i++) {
            const char *argv[] = {"ZADD", UNACKED_INDEX_KEY, "XX", score, tags[done + i]};
            if (redis_link_append_argv(&b->link, 5, argv, NULL))
                return err_set(e, E_CONN_LOST, "broker connection is not usable");
        }
        b->link.pending += (int)batch;
        int rc = redis_link_flush(&b->link, e);
        if (!rc)
            rc = redis_link_drain(&b->link, e);
        if (rc)
            return rc;
        done += batch;
    }
    return 0;
}

int broker_redis_publish(struct broker_redis *b, const char *queue, int priority,
                         const char *envelope, size_t len, struct err *e)
{
    struct buf list = BUF_INIT, member = BUF_INIT;
    message_priority_list(&list, queue, priority);
    buf_addf(&member, "%s" PRIORITY_SEP PRIORITY_SEP "%s", queue, queue);
    redisReply *r = redis_link_command(&b->link, e, "SADD _kombu.binding.%s %b", queue,
                                       member.data, member.len);
    if (r) {
        freeReplyObject(r);
        r = redis_link_command(&b->link, e, "LPUSH %b %b", list.data, list.len, envelope, len);
    }
    buf_release(&list);
    buf_release(&member);
    if (!r)
        return E_CONN_LOST;
    int rc = r->type == REDIS_REPLY_ERROR ? redis_link_reply_error(e, "LPUSH", r->str) : 0;
    freeReplyObject(r);
    return rc;
}

/* Marks a payload redelivered the way kombu does before pushing it back. */
/* The queue a restored message goes to: the routing key for the anonymous
 * exchange (what Celery uses for tasks), else the first queue bound to the
 * exchange with that routing key. */
static char *restore_queue(struct broker_redis *b, const char *exchange, const char *rk,
                           struct err *e)
{
    if (!*exchange)
        return xstrdup(rk);
    redisReply *r = redis_link_command(&b->link, e, "SMEMBERS _kombu.binding.%s", exchange);
    if (!r)
        return NULL;
    char *queue = NULL;
    for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i < r->elements && !queue; i++) {
        const char *m = r->element[i]->str;
        const char *sep1 = m ? strstr(m, PRIORITY_SEP) : NULL;
        const char *sep2 = sep1 ? strstr(sep1 + 2, PRIORITY_SEP) : NULL;
        if (sep2 && (size_t)(sep1 - m) == strlen(rk) && !strncmp(m, rk, strlen(rk)))
            queue = xstrdup(sep2 + 2);
    }
    freeReplyObject(r);
    return queue ? queue : xstrdup(rk);
}

/* The payload and list a restore pushes, from the stored [envelope,
 * exchange, routing_key]: the envelope marked redelivered and, when
 * lost_limit >= 0 (a requeue after a worker loss), its loss count
 * incremented (*losses gets the new count). Returns 0 (*payload NULL for a
 * malformed entry, which is dropped), BROKER_EXHAUSTED when the message was
 * already requeued lost_limit times (nothing filled), or E_CONN_LOST. */
static int restore_payload(struct broker_redis *b, const char *stored_raw, size_t len,
                           int lost_limit, int *losses, char **payload, struct buf *list,
                           struct err *e)
{
    json_t *stored = json_loadb(stored_raw, len, 0, NULL);
    json_t *env = json_array_get(stored, 0);
    const char *exchange = json_string_value(json_array_get(stored, 1));
    const char *rk = json_string_value(json_array_get(stored, 2));
    int rc = 0;
    *payload = NULL;
    json_t *props = json_object_get(env, "properties");
    if (!json_is_object(env) || !exchange || !rk) {
        /* left with no payload: the caller drops it */
    } else if (lost_limit >= 0 && message_envelope_lost_count(env) >= lost_limit) {
        *losses = message_envelope_lost_count(env) + 1;
        rc = BROKER_EXHAUSTED;
    } else {
        if (lost_limit >= 0 && json_is_object(props)) {
            *losses = message_envelope_lost_count(env) + 1;
            message_envelope_mark_lost(env, *losses);
        }
        message_envelope_mark_redelivered(env);
        char *queue = restore_queue(b, exchange, rk, e);
        if (queue) {
            json_int_t prio = json_integer_value(json_object_get(props, "priority"));
            message_priority_list(list, queue, prio < 0 ? 0 : prio > 9 ? 9 : (int)prio);
            free(queue);
            *payload = json_dumps(env, JSON_COMPACT);
        } else {
            rc = E_CONN_LOST;
        }
    }
    json_decref(stored);
    return rc;
}

/* One restore attempt: HGET, edit in C, then a compare-and-swap script that
 * removes the entry and pushes the edited payload only if the entry still
 * holds what we read (the spec's alternative to WATCH: a WATCH on the whole
 * hash fails whenever any other delivery is recorded or acked, which on a
 * busy queue is all the time). Returns 1 when done (restored, or the tag was
 * no longer held), 0 when the entry changed under us, 3 when the loss limit
 * is reached (the entry is left as it is), or a negative code. */
static int restore_once(struct broker_redis *b, const char *tag, bool to_back, int lost_limit,
                        int *losses, struct err *e)
{
    redisReply *r = redis_link_command(&b->link, e, "HGET %s %s", UNACKED_KEY, tag);
    if (!r)
        return E_CONN_LOST;
    if (r->type != REDIS_REPLY_STRING) {
        freeReplyObject(r);
        r = redis_link_command(&b->link, e, "ZREM %s %s", UNACKED_INDEX_KEY, tag);
        if (!r)
            return E_CONN_LOST;
        freeReplyObject(r);
        return 1; /* not held any more: acked or restored by someone else */
    }
    char *payload;
    struct buf list = BUF_INIT;
    int rc = restore_payload(b, r->str, r->len, lost_limit, losses, &payload, &list, e);
    if (rc) {
        freeReplyObject(r);
        buf_release(&list);
        return rc == BROKER_EXHAUSTED ? 3 : rc;
    }
    if (!payload)
        log_error("unacked entry %s is not [envelope, exchange, routing_key]; dropped it", tag);
    const char *args[] = {UNACKED_KEY, UNACKED_INDEX_KEY, list.len ? list.data : "-", tag, r->str,
                          payload ? payload : "", to_back ? "L" : "R"};
    size_t lens[] = {strlen(UNACKED_KEY), strlen(UNACKED_INDEX_KEY), list.len ? list.len : 1,
                     strlen(tag), r->len, payload ? strlen(payload) : 0, 1};
    rc = redis_link_append_script(&b->link, &restore_script, 7, args, lens, 3);
    freeReplyObject(r);
    free(payload);
    buf_release(&list);
    if (rc)
        return err_set(e, E_CONN_LOST, "broker connection is not usable");
    r = redis_link_read(&b->link, e);
    if (!r)
        return E_CONN_LOST;
    /* script: 1 restored, 0 gone, -1 changed -> 2 restored, 1 gone, 0 retry */
    int result = r->type == REDIS_REPLY_INTEGER ? (int)r->integer + 1 : 1;
    if (r->type == REDIS_REPLY_ERROR)
        result = redis_link_reply_error(e, "restore script", r->str);
    freeReplyObject(r);
    return result;
}

static int restore_retrying(struct broker_redis *b, const char *tag, bool to_back,
                            int lost_limit, int *losses, struct err *e)
{
    for (int attempt = 0; attempt < 16; attempt++) {
        int rc = restore_once(b, tag, to_back, lost_limit, losses, e);
        if (rc)
            return rc < 0 ? rc : rc == 3 ? BROKER_EXHAUSTED
                                 : rc == 2 ? BROKER_RESTORED : BROKER_NOT_HELD;
    }
    return err_set(e, E_PROTOCOL, "restore of %s kept conflicting; left for the sweep", tag);
}

int broker_redis_restore(struct broker_redis *b, const char *tag, bool to_back, struct err *e)
{
    int unused = 0;
    return restore_retrying(b, tag, to_back, -1, &unused, e);
}

int broker_redis_requeue_lost(struct broker_redis *b, const char *tag, int max_requeues,
                              int *losses, struct err *e)
{
    *losses = 0;
    return restore_retrying(b, tag, true, max_requeues < 0 ? 0 : max_requeues, losses, e);
}

/* SCANs every key matching the glob pattern, calling found(key, arg) for
 * each (SCAN may report a key twice). 0 or a negative code. */
static int scan_keys(struct broker_redis *b, const char *pattern,
                     void (*found)(const char *key, void *arg), void *arg, struct err *e)
{
    char cursor[32] = "0";
    do {
        const char *argv[] = {"SCAN", cursor, "MATCH", pattern, "COUNT", "1000"};
        redisReply *r = redis_link_argv(&b->link, e, 6, argv, NULL);
        if (!r)
            return E_CONN_LOST;
        if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
            r->element[0]->type != REDIS_REPLY_STRING ||
            r->element[1]->type != REDIS_REPLY_ARRAY) {
            freeReplyObject(r);
            return err_set(e, E_PROTOCOL, "unexpected reply to SCAN");
        }
        snprintf(cursor, sizeof(cursor), "%s", r->element[0]->str);
        for (size_t i = 0; i < r->element[1]->elements; i++)
            if (r->element[1]->element[i]->type == REDIS_REPLY_STRING)
                found(r->element[1]->element[i]->str, arg);
        freeReplyObject(r);
    } while (strcmp(cursor, "0"));
    return 0;
}

int broker_redis_scan_hands(struct broker_redis *b, const char *node, int slot,
                            void (*found)(const char *key, void *arg), void *arg,
                            struct err *e)
{
    /* MATCH is a glob: a node name's own glob characters are escaped. */
    struct buf pattern = BUF_INIT;
    buf_adds(&pattern, "celeriac.hand.");
    for (const char *p = node; *p; p++) {
        if (strchr("*?[]\\", *p))
            buf_addch(&pattern, '\\');
        buf_addch(&pattern, *p);
    }
    buf_addf(&pattern, ".*.%d", slot);
    int rc = scan_keys(b, pattern.data, found, arg, e);
    buf_release(&pattern);
    return rc;
}

int broker_redis_hand_clear(struct broker_redis *b, struct err *e)
{
    if (!b->hand || !b->hand_release)
        return 0;
    const char *argv[] = {"DEL", b->hand};
    redisReply *r = redis_link_argv(&b->link, e, 2, argv, NULL);
    if (!r)
        return E_CONN_LOST;
    freeReplyObject(r);
    b->hand_release = false;
    return 0;
}

/* The list a message goes back to: its routing key's queue (through the
 * exchange's bindings) at its priority, as a restore by kombu. */
static char *return_list(struct broker_redis *b, json_t *env, struct err *e)
{
    json_t *props = json_object_get(env, "properties");
    json_t *info = json_object_get(props, "delivery_info");
    const char *exchange = json_string_value(json_object_get(info, "exchange"));
    const char *rk = json_string_value(json_object_get(info, "routing_key"));
    if (!exchange || !rk || !*rk)
        return xstrdup(first_list(b));
    char *queue = restore_queue(b, exchange, rk, e);
    if (!queue)
        return NULL;
    json_int_t prio = json_integer_value(json_object_get(props, "priority"));
    struct buf list = BUF_INIT;
    message_priority_list(&list, queue, prio < 0 ? 0 : prio > 9 ? 9 : (int)prio);
    free(queue);
    return buf_detach(&list, NULL);
}

/* Puts the message raw (read from hand) back on its queue, marked
 * redelivered, through the return_hand script (alive: NULL, or the owner's
 * alive key, which must still be missing). list (if not NULL, size 264) gets
 * the list's name. 1 returned, 0 not (the hand changed, or its owner is
 * alive), or a negative code. */
static int return_from_hand(struct broker_redis *b, const char *hand, const char *alive,
                            const char *raw, size_t len, char *list, struct err *e)
{
    json_t *env = json_loadb(raw, len, 0, NULL);
    char *edited = NULL, *to = NULL;
    if (json_is_object(env)) {
        message_envelope_mark_redelivered(env);
        edited = json_dumps(env, JSON_COMPACT);
        to = return_list(b, env, e);
    } else {
        to = xstrdup(first_list(b));
    }
    json_decref(env);
    if (!to) {
        free(edited);
        return E_CONN_LOST;
    }
    if (list)
        snprintf(list, 264, "%s", to);
    /* KEYS hand, list and (if given) alive, then ARGV. */
    const char *argv[5] = {hand, to};
    size_t argl[5] = {strlen(hand), strlen(to)};
    int n = 2;
    if (alive) {
        argv[n] = alive;
        argl[n++] = strlen(alive);
    }
    int nkeys = n;
    argv[n] = raw;
    argl[n++] = len;
    argv[n] = edited ? edited : raw;
    argl[n++] = edited ? strlen(edited) : len;
    int rc = redis_link_append_script(&b->link, &return_hand, n, argv, argl, nkeys);
    free(edited);
    free(to);
    if (rc)
        return err_set(e, E_CONN_LOST, "broker connection is not usable");
    redisReply *r = redis_link_read(&b->link, e);
    if (!r)
        return E_CONN_LOST;
    rc = r->type == REDIS_REPLY_INTEGER && r->integer == 1;
    if (r->type == REDIS_REPLY_ERROR)
        rc = err_set(e, E_PROTOCOL, "returning the message in %s failed: %s", hand, r->str);
    freeReplyObject(r);
    return rc;
}

int broker_redis_hand_return(struct broker_redis *b, uint64_t settled_hash, char *list,
                             struct err *e)
{
    if (!b->hand)
        return 0;
    const char *get[] = {"LINDEX", b->hand, "0"};
    redisReply *r = redis_link_argv(&b->link, e, 3, get, NULL);
    if (!r)
        return E_CONN_LOST;
    if (r->type != REDIS_REPLY_STRING) {
        freeReplyObject(r);
        return 0; /* empty */
    }
    if (settled_hash && broker_redis_hand_hash(r->str, r->len) == settled_hash) {
        freeReplyObject(r); /* started or settled before its holder died */
        b->hand_release = true;
        return broker_redis_hand_clear(b, e);
    }
    int rc = return_from_hand(b, b->hand, NULL, r->str, r->len, list, e);
    freeReplyObject(r);
    if (rc >= 0)
        b->hand_release = false; /* returned, or emptied by someone else */
    return rc;
}

/* ---- the visibility rule for hands */

void broker_redis_alive_key(struct buf *out, const char *node, pid_t master)
{
    buf_addf(out, "celeriac.alive.%s.%d", node, (int)master);
}

int broker_redis_advertise_alive(struct redis_link *l, const char *node, pid_t master,
                                 int ttl_s, struct err *e)
{
    struct buf key = BUF_INIT;
    broker_redis_alive_key(&key, node, master);
    char ttl[16];
    snprintf(ttl, sizeof(ttl), "%d", ttl_s);
    const char *argv[] = {"SET", key.data, "1", "EX", ttl};
    redisReply *r = redis_link_argv(l, e, 5, argv, NULL);
    buf_release(&key);
    if (!r)
        return E_CONN_LOST;
    int rc = r->type == REDIS_REPLY_ERROR ? err_set(e, E_PROTOCOL, "SET failed: %s", r->str) : 0;
    freeReplyObject(r);
    return rc;
}

/* The alive key of the worker that owns hand "celeriac.hand.<node>.<pid>.<slot>":
 * "celeriac.alive.<node>.<pid>" (the node may hold dots: the slot is cut
 * from the end). NULL for a key not of that shape. Caller frees. */
static char *owner_alive_key(const char *hand)
{
    static const char prefix[] = "celeriac.hand.";
    const char *slot = strrchr(hand, '.');
    if (strncmp(hand, prefix, sizeof(prefix) - 1) || !slot || !slot[1] ||
        slot <= hand + sizeof(prefix) - 1 || strspn(slot + 1, "0123456789") != strlen(slot + 1))
        return NULL;
    struct buf key = BUF_INIT;
    buf_addf(&key, "celeriac.alive.%.*s", (int)(slot - hand - (sizeof(prefix) - 1)),
             hand + sizeof(prefix) - 1);
    return buf_detach(&key, NULL);
}

/* Takes a fleet-wide mutex for ttl_ms (SET NX PX) with a fresh token.
 * 1 taken, 0 someone holds it, or E_CONN_LOST. */
static int take_mutex(struct broker_redis *b, const char *key, int64_t ttl_ms, char *token,
                      struct err *e)
{
    uuid_generate(token);
    redisReply *r = redis_link_command(&b->link, e, "SET %s %s PX %lld NX", key, token,
                                       (long long)ttl_ms);
    if (!r)
        return E_CONN_LOST;
    int locked = r->type == REDIS_REPLY_STATUS;
    freeReplyObject(r);
    return locked;
}

/* Idle seconds of key (OBJECT IDLETIME does not touch it), -1 when it is
 * gone, or a negative code; E_PROTOCOL when the server does not track it
 * (an LFU maxmemory-policy). */
static long long key_idle_s(struct broker_redis *b, const char *key, struct err *e)
{
    const char *argv[] = {"OBJECT", "IDLETIME", key};
    redisReply *r = redis_link_argv(&b->link, e, 3, argv, NULL);
    if (!r)
        return E_CONN_LOST;
    long long idle = r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
    if (r->type == REDIS_REPLY_ERROR)
        idle = err_set(e, E_PROTOCOL, "OBJECT IDLETIME failed: %s", r->str);
    freeReplyObject(r);
    return idle;
}

/* Whether the hand's owner advertises itself alive: 1 yes, 0 no, or a
 * negative code. */
static int owner_is_alive(struct broker_redis *b, const char *alive, struct err *e)
{
    redisReply *r = redis_link_command(&b->link, e, "EXISTS %s", alive);
    if (!r)
        return E_CONN_LOST;
    int rc = r->type == REDIS_REPLY_INTEGER && r->integer > 0;
    freeReplyObject(r);
    return rc;
}

/* One hand found by the sweep: returned when its owner's alive key is
 * missing and the hand has sat untouched longer than the visibility
 * timeout. The owner's death also lost the shared memory that told a
 * started message from an unstarted one, so a message whose task had
 * started (early ack: already acked) is returned too and may run again, as
 * the same-name adoption does (hand_adopt_orphans): at least once, never
 * lost. 1 returned, 0 left alone, or a negative code. */
static int sweep_one_hand(struct broker_redis *b, const char *hand, double visibility_timeout,
                          struct err *e)
{
    char *alive = owner_alive_key(hand);
    if (!alive || (b->hand && !strcmp(hand, b->hand))) {
        free(alive);
        return 0; /* not a hand, or our own */
    }
    int rc = owner_is_alive(b, alive, e);
    long long idle = 0;
    if (!rc) {
        /* Checked after the alive key: a live owner's hand is never read,
         * and reading it (LINDEX) would reset its idle time. */
        idle = key_idle_s(b, hand, e);
        rc = idle < -1 ? (int)idle : 0;
    }
    if (rc || idle < 0 || (double)idle <= visibility_timeout) {
        free(alive);
        return rc < 0 ? rc : 0;
    }
    const char *get[] = {"LINDEX", hand, "0"};
    redisReply *r = redis_link_argv(&b->link, e, 3, get, NULL);
    if (!r)
        rc = E_CONN_LOST;
    else if (r->type == REDIS_REPLY_STRING)
        rc = return_from_hand(b, hand, alive, r->str, r->len, NULL, e);
    if (rc == 1)
        log_warning("returned the message left %lld s in the hand %s of a worker that is gone "
                    "(no %s) to its queue, marked redelivered", idle, hand, alive);
    freeReplyObject(r);
    free(alive);
    return rc;
}

struct key_list {
    char **v;
    size_t n;
};

static void collect_key(const char *key, void *arg)
{
    struct key_list *keys = arg;
    keys->v = xrealloc(keys->v, (keys->n + 1) * sizeof(*keys->v));
    keys->v[keys->n++] = xstrdup(key);
}

int broker_redis_sweep_hands(struct broker_redis *b, double visibility_timeout,
                             int64_t period_ms, struct err *e)
{
    /* The mutex is not released: it expires after period_ms, so the whole
     * fleet SCANs the keyspace once per period, not once per child. */
    char token[UUID_STR_LEN];
    int rc = take_mutex(b, HANDS_MUTEX_KEY, period_ms, token, e);
    if (rc <= 0)
        return rc;
    struct key_list keys = {NULL, 0};
    rc = scan_keys(b, "celeriac.hand.*", collect_key, &keys, e);
    if (rc == E_PROTOCOL)
        log_warning("hand sweep: %s", e ? e->msg : "SCAN failed");
    int returned = 0;
    for (size_t i = 0; i < keys.n; i++) {
        int got = rc == E_CONN_LOST ? 0 : sweep_one_hand(b, keys.v[i], visibility_timeout, e);
        if (got == E_CONN_LOST)
            rc = got;
        else if (got < 0)
            log_warning("hand sweep: %s", e ? e->msg : "protocol error");
        else
            returned += got;
        free(keys.v[i]);
    }
    free(keys.v);
    return rc == E_CONN_LOST ? rc : returned;
}

int broker_redis_sweep(struct broker_redis *b, double visibility_timeout, struct err *e)
{
    char token[UUID_STR_LEN];
    int locked = take_mutex(b, UNACKED_MUTEX_KEY, 300000, token, e);
    if (locked <= 0)
        return locked;
    char ceil[32];
    redisReply *r;
    snprintf(ceil, sizeof(ceil), "%.7f", time_now() - visibility_timeout);
    r = redis_link_command(&b->link, e, "ZREVRANGEBYSCORE %s %s 0 WITHSCORES",
                           UNACKED_INDEX_KEY, ceil);
    if (!r)
        return E_CONN_LOST;
    int restored = 0, rc = 0;
    for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i + 1 < r->elements; i += 2) {
        const char *tag = r->element[i]->str;
        if (!tag)
            continue;
        rc = broker_redis_restore(b, tag, false, e);
        if (rc == E_CONN_LOST)
            break;
        if (rc < 0)
            log_warning("%s", e ? e->msg : "restore failed");
        else if (rc == BROKER_RESTORED)
            restored++;
        rc = 0;
    }
    freeReplyObject(r);
    if (rc)
        return rc;
    const char *args[] = {UNACKED_MUTEX_KEY, token};
    if (redis_link_append_script(&b->link, &release_mutex, 2, args, NULL, 1))
        return err_set(e, E_CONN_LOST, "broker connection is not usable");
    r = redis_link_read(&b->link, e);
    if (!r)
        return E_CONN_LOST;
    freeReplyObject(r);
    if (restored)
        log_warning("restored %d unacknowledged message%s older than %.0f s", restored,
                    restored == 1 ? "" : "s", visibility_timeout);
    return restored;
}
