/* SPDX-License-Identifier: MIT
 * worker/held.c: ETA / countdown messages a child holds unacked until due,
 * described on its board in shared memory (inspect scheduled), kept fresh in
 * kombu's unacked hash, and restored to their queues at shutdown or by the
 * next child of the slot.
 */
#include "common.h"
#include "util/time.h"
#include "worker/child_internal.h"
#include "worker/signals.h"

/* Describes held message i on this child's board (if it has room). */
static void board_fill(struct child *c, size_t i)
{
    if (i >= HELD_BOARD_MAX)
        return;
    struct held_entry *b = &c->sb->held[c->index].e[i];
    const struct message *m = &c->held[i].m;
    char *args = json_dumps(m->args, JSON_COMPACT | JSON_ENCODE_ANY);
    char *kwargs = json_dumps(m->kwargs, JSON_COMPACT);
    snprintf(b->tag, sizeof(b->tag), "%s", m->delivery_tag);
    snprintf(b->task_id, sizeof(b->task_id), "%s", m->task_id);
    snprintf(b->task_name, sizeof(b->task_name), "%s", m->task_name);
    snprintf(b->routing_key, sizeof(b->routing_key), "%s", m->routing_key);
    snprintf(b->argsrepr, sizeof(b->argsrepr), "%s", args ? args : "[]");
    snprintf(b->kwargsrepr, sizeof(b->kwargsrepr), "%s", kwargs ? kwargs : "{}");
    b->eta = m->eta;
    b->priority = m->priority;
    b->redelivered = m->redelivered;
    free(args);
    free(kwargs);
}

static void board_count(struct child *c)
{
    size_t n = c->n_held < HELD_BOARD_MAX ? c->n_held : HELD_BOARD_MAX;
    atomic_store(&c->sb->held[c->index].n, (int)n);
    atomic_store(&c->slot->scheduled, (int)c->n_held);
}

/* Takes m (its ownership moves) into the held list: there is no limit but
 * memory, so ordinary tasks behind any number of ETA messages keep flowing. */
void held_add(struct child *c, struct message *m, const struct celeriac_task_def *def)
{
    if (c->n_held == c->held_cap) {
        c->held_cap = c->held_cap ? c->held_cap * 2 : 16;
        c->held = xrealloc(c->held, c->held_cap * sizeof(*c->held));
    }
    struct held *h = &c->held[c->n_held++];
    h->m = *m;
    h->def = def;
    message_init(m);
    board_fill(c, c->n_held - 1);
    board_count(c);
    log_debug("task %s[%s] scheduled for later", h->m.task_name, h->m.task_id);
}

/* Seconds until the earliest held message is due (a large number if none). */
double held_next_due(const struct child *c)
{
    double best = 1e9, now = time_now();
    for (size_t i = 0; i < c->n_held; i++)
        if (c->held[i].m.eta - now < best)
            best = c->held[i].m.eta - now;
    return best;
}

void held_run_due(struct child *c)
{
    for (size_t i = 0; i < c->n_held && !sig_stop;) {
        if (c->held[i].m.eta > time_now()) {
            i++;
            continue;
        }
        struct held h = c->held[i];
        c->held[i] = c->held[--c->n_held];
        if (i < c->n_held)
            board_fill(c, i); /* the last one moved here */
        board_count(c);
        if (c->broker.ops->holds && !c->broker.ops->holds(&c->broker, &h.m))
            log_info("task %s[%s]: its delivery was given back to the queue when the channel "
                     "closed; it runs from there, not here", h.m.task_name, h.m.task_id);
        else
            execute_accepted(c, &h.m, h.def);
        message_release(&h.m);
    }
}

/* A held message's unacked score is its delivery time; keep it fresh so the
 * visibility sweep does not hand it to another worker while we hold it. */
void held_refresh(struct child *c)
{
    int64_t now = time_mono_ms();
    int64_t every = (int64_t)(c->cfg->visibility_timeout * 1000) / 4;
    if (!c->n_held || now < c->next_refresh_ms)
        return;
    c->next_refresh_ms = now + (every > 1000 ? every : 1000);
    struct message **held = xcalloc(c->n_held, sizeof(*held));
    for (size_t i = 0; i < c->n_held; i++)
        held[i] = &c->held[i].m;
    struct err e = {0};
    if (c->broker.ops->keepalive(&c->broker, held, c->n_held, &e))
        log_warning("refreshing %zu held messages in unacked: %s", c->n_held, e.msg);
    free(held);
}

/* Stopping: every held message goes back to its queue now. */
void held_restore(struct child *c)
{
    for (size_t i = 0; i < c->n_held; i++) {
        struct err e = {0};
        struct message *m = &c->held[i].m;
        if (c->broker.ops->is_open(&c->broker) && c->broker.ops->requeue(&c->broker, m, &e) >= 0)
            log_info("task %s[%s] not due before shutdown; restored to its queue", m->task_name,
                     m->task_id);
        else
            log_warning("task %s[%s] left unacked for the visibility sweep", m->task_name,
                        m->task_id);
        message_release(m);
    }
    c->n_held = 0;
    board_count(c);
    free(c->held);
    c->held = NULL;
    c->held_cap = 0;
}
