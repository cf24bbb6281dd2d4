/* SPDX-License-Identifier: MIT
 * worker/budget.c: the database connection budget (see budget.h): what the
 * worker plans, the master's check before the first fork, child 0's recount.
 * Only counts and reports; the children's connect retries live in db/conn.c.
 */
#include "common.h"
#include "worker/budget.h"
#include "util/log.h"
#include "util/time.h"

/* Length of the "host:port" part of a db_config's where ("host:port/db"):
 * up to the end of the last ':' followed by digits that end the string or
 * precede '/'. Hosts may be socket directories or IPv6 addresses. */
static size_t server_len(const char *where)
{
    size_t best = strlen(where);
    for (const char *p = where; (p = strchr(p, ':')); p++) {
        const char *q = p + 1;
        while (*q >= '0' && *q <= '9')
            q++;
        if (q > p + 1 && (*q == '/' || !*q))
            best = (size_t)(q - where);
    }
    return best;
}

static bool same_server(const struct db_config *a, const struct db_config *b)
{
    if (a->kind != DB_POSTGRES || b->kind != DB_POSTGRES || !a->where || !b->where)
        return false;
    size_t n = server_len(a->where);
    return n == server_len(b->where) && !strncmp(a->where, b->where, n);
}

int budget_planned(const struct worker_config *cfg, const struct db_config **server)
{
    const struct db_config *cand[3] = {
        &cfg->db,
        cfg->broker.kind == BROKER_SQL && !cfg->broker_shares_db ? &cfg->broker.sql : NULL,
        cfg->backend.kind == BACKEND_DB && cfg->backend.enabled ? &cfg->backend.db : NULL,
    };
    *server = NULL;
    for (int i = 0; i < 3 && !*server; i++)
        if (cand[i] && cand[i]->kind == DB_POSTGRES)
            *server = cand[i];
    if (!*server)
        return 0;
    int per_child = 0;
    for (int i = 0; i < 3; i++)
        per_child += cand[i] && same_server(cand[i], *server);
    int children = cfg->autoscale_max ? cfg->autoscale_max : cfg->concurrency;
    return per_child * children;
}

/* A count waits for the server as long as a connect may. */
static int64_t census_timeout_ms(const struct db_config *d)
{
    return (int64_t)(d->connect_timeout_s > 0 ? d->connect_timeout_s : 5) * 1000;
}

static void board_write(struct scoreboard *sb, const struct db_census *n, int planned)
{
    struct budget_board *b = &sb->shared->budget;
    atomic_store(&b->max_connections, n->max_connections);
    atomic_store(&b->available, n->max_connections - n->reserved);
    atomic_store(&b->planned, planned);
    atomic_store(&b->fleet, n->celeriac);
    atomic_store(&b->others, n->others);
    atomic_store(&b->checked_at, (int64_t)time_now());
    atomic_store(&b->checked, 1);
}

int budget_check(const struct worker_config *cfg, struct scoreboard *sb)
{
    const struct db_config *server;
    int planned = budget_planned(cfg, &server);
    if (!server || cfg->db_budget == DB_BUDGET_OFF)
        return 0;
    if (server->pooled) {
        /* The children's connections end at the pooler; its pool size, not
         * this worker, decides how many server slots are used. */
        log_info("connection budget not checked: '%s' is a transaction pooler (--db-pooler "
                 "transaction); its pool size bounds the server connections", server->where);
        return 0;
    }
    atomic_store(&sb->shared->budget.planned, planned);
    struct db_conn c;
    db_conn_init(&c, server, "celeriac budget check");
    c.quiet = true;
    struct err e = {0};
    struct db_census n = {0};
    int rc = db_conn_open(&c, 1, NULL, &e);
    if (!rc)
        rc = db_pg_census(&c, census_timeout_ms(server), &n, &e);
    db_conn_close(&c, NULL);
    if (rc && db_pg_message_is_full(e.msg)) {
        if (cfg->db_budget == DB_BUDGET_STRICT) {
            fprintf(stderr, "celeriac worker: connection budget: '%s' refuses new connections "
                    "now (too many clients), this worker needs %d: %s\n", server->where,
                    planned, e.msg);
            return EXIT_USAGE;
        }
        log_warning("connection budget: '%s' refuses new connections now (too many clients); "
                    "this worker needs %d; its children wait for free slots with backoff: %s",
                    server->where, planned, e.msg);
        return 0;
    }
    if (rc) {
        /* The children report an unreachable server, once per outage. */
        log_debug("connection budget not checked: %s", e.msg);
        return 0;
    }
    board_write(sb, &n, planned);
    int available = n.max_connections - n.reserved;
    int over = planned + n.celeriac - available;
    char numbers[320];
    snprintf(numbers, sizeof(numbers),
             "this worker opens up to %d connection%s to '%s', other celeriac workers hold %d "
             "(fleet total %d), the server allows %d (max_connections %d minus %d reserved); "
             "%d other client%s connected",
             planned, planned == 1 ? "" : "s", server->where, n.celeriac, planned + n.celeriac,
             available, n.max_connections, n.reserved, n.others, n.others == 1 ? "" : "s");
    if (over <= 0) {
        log_info("connection budget: %s", numbers);
        return 0;
    }
    if (cfg->db_budget == DB_BUDGET_STRICT) {
        fprintf(stderr, "celeriac worker: connection budget exceeded by %d (--db-budget "
                "strict): %s\n", over, numbers);
        return EXIT_USAGE;
    }
    log_warning("connection budget exceeded by %d: %s; children beyond it wait for free slots "
                "(raise max_connections, lower -c, or pool with PgBouncer; --db-budget strict "
                "refuses to start)", over, numbers);
    return 0;
}

void budget_recount(const struct worker_config *cfg, struct db_conn *c, struct scoreboard *sb,
                    int64_t *next_ms)
{
    const struct db_config *server;
    int64_t now = time_mono_ms();
    if (cfg->db_budget == DB_BUDGET_OFF || now < *next_ms || c->cfg != &cfg->db ||
        !db_conn_is_open(c) || c->broker_txn)
        return; /* (a transaction the broker holds: the count waits for the next loop) */
    int planned = budget_planned(cfg, &server);
    if (server != &cfg->db || server->pooled)
        return;
    *next_ms = now + BUDGET_RECOUNT_MS;
    struct db_census n = {0};
    struct err e = {0};
    int rc = db_pg_census(c, census_timeout_ms(&cfg->db), &n, &e);
    if (rc == E_CONN_LOST) {
        db_conn_close(c, e.msg); /* in an unknown state: the serve loop opens a new one */
        return;
    }
    if (rc) {
        log_debug("%s", e.msg);
        return;
    }
    n.celeriac++; /* the count leaves out the session that counts */
    board_write(sb, &n, planned);
}
