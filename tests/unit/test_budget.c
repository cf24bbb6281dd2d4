/* SPDX-License-Identifier: MIT
 * test_budget.c: the connection budget's arithmetic (worker/budget.c): which
 * server is counted, how many connections a child opens to it, the "server
 * full" message test, and the budget gauges in the metrics exposition. The
 * count on a live server is tests/ops/test_db_budget.sh.
 */
#include "common.h"
#include "metrics/exposition.h"
#include "util/buf.h"
#include "worker/budget.h"

#include "harness.h"

static void pg(struct db_config *d, const char *where)
{
    d->kind = DB_POSTGRES;
    d->where = xstrdup(where);
}

TEST(db_only)
{
    struct worker_config cfg;
    worker_config_init(&cfg);
    const struct db_config *server;
    cfg.concurrency = 8;
    ASSERT_EQ_INT(budget_planned(&cfg, &server), 0);
    ASSERT_TRUE(server == NULL);
    pg(&cfg.db, "127.0.0.1:5432/app");
    ASSERT_EQ_INT(budget_planned(&cfg, &server), 8);
    ASSERT_TRUE(server == &cfg.db);
    cfg.autoscale_max = 12; /* the pool may grow there */
    ASSERT_EQ_INT(budget_planned(&cfg, &server), 12);
    worker_config_release(&cfg);
}

TEST(broker_and_results_on_the_same_server)
{
    struct worker_config cfg;
    worker_config_init(&cfg);
    const struct db_config *server;
    cfg.concurrency = 4;
    pg(&cfg.db, "db.example:5432/app");
    cfg.broker.kind = BROKER_SQL;
    pg(&cfg.broker.sql, "db.example:5432/queue"); /* another database, the same server */
    ASSERT_EQ_INT(budget_planned(&cfg, &server), 8);
    cfg.backend.kind = BACKEND_DB;
    cfg.backend.enabled = true;
    pg(&cfg.backend.db, "db.example:5433/results"); /* another server: not counted */
    ASSERT_EQ_INT(budget_planned(&cfg, &server), 8);
    free(cfg.backend.db.where);
    cfg.backend.db.where = xstrdup("db.example:5432");
    ASSERT_EQ_INT(budget_planned(&cfg, &server), 12);
    worker_config_release(&cfg);
}

TEST(without_db_the_broker_server_is_counted)
{
    struct worker_config cfg;
    worker_config_init(&cfg);
    const struct db_config *server;
    cfg.concurrency = 3;
    cfg.db.kind = DB_SQLITE;
    cfg.db.where = xstrdup("/tmp/x.db");
    cfg.broker.kind = BROKER_SQL;
    pg(&cfg.broker.sql, "/var/run/postgresql:5432/queue");
    ASSERT_EQ_INT(budget_planned(&cfg, &server), 3);
    ASSERT_TRUE(server == &cfg.broker.sql);
    worker_config_release(&cfg);
}

TEST(ipv6_hosts_compare_by_port)
{
    struct worker_config cfg;
    worker_config_init(&cfg);
    const struct db_config *server;
    cfg.concurrency = 2;
    pg(&cfg.db, "::1:5432/app");
    cfg.broker.kind = BROKER_SQL;
    pg(&cfg.broker.sql, "::1:5433/app");
    ASSERT_EQ_INT(budget_planned(&cfg, &server), 2);
    free(cfg.broker.sql.where);
    cfg.broker.sql.where = xstrdup("::1:5432/queue");
    ASSERT_EQ_INT(budget_planned(&cfg, &server), 4);
    worker_config_release(&cfg);
}

TEST(server_full_messages)
{
    ASSERT_TRUE(db_pg_message_is_full("connection to server at \"h\", port 5 failed: FATAL:  "
                                      "sorry, too many clients already"));
    ASSERT_TRUE(db_pg_message_is_full("FATAL:  too many connections for role \"capped\""));
    ASSERT_TRUE(db_pg_message_is_full("FATAL:  remaining connection slots are reserved for "
                                      "roles with the SUPERUSER attribute"));
    ASSERT_FALSE(db_pg_message_is_full("Connection refused"));
    ASSERT_FALSE(db_pg_message_is_full(NULL));
}

TEST(pooler_messages)
{
    /* what books.c passes to celeriac_fail_db behind PgBouncer 1.18 */
    ASSERT_TRUE(db_pg_message_is_pooled("prepared statement \"books_get_book_info\" does not "
                                        "exist"));
    ASSERT_TRUE(db_pg_message_is_pooled("ERROR:  prepared statement \"s1\" already exists"));
    ASSERT_FALSE(db_pg_message_is_pooled("relation \"books\" does not exist"));
    ASSERT_FALSE(db_pg_message_is_pooled("prepared statement is fine"));
    ASSERT_FALSE(db_pg_message_is_pooled(NULL));
}

TEST(gauges_only_once_counted)
{
    struct scoreboard sb;
    ASSERT_EQ_INT(scoreboard_create(&sb, 1, 1), 0);
    const char *names[] = {"t"};
    struct exposition x = {.sb = &sb, .hostname = "w@h", .task_names = names, .n_tasks = 1};
    struct buf out = BUF_INIT;
    exposition_render(&out, &x);
    ASSERT_TRUE(strstr(out.data, "celeriac_db_connections_fleet") == NULL);
    buf_release(&out);
    atomic_store(&sb.shared->budget.fleet, 8);
    atomic_store(&sb.shared->budget.max_connections, 10);
    atomic_store(&sb.shared->budget.checked, 1);
    exposition_render(&out, &x);
    ASSERT_TRUE(strstr(out.data, "\nceleriac_db_connections_fleet{hostname=\"w@h\"} 8\n") != NULL);
    ASSERT_TRUE(strstr(out.data, "\nceleriac_db_max_connections{hostname=\"w@h\"} 10\n") != NULL);
    buf_release(&out);
    scoreboard_destroy(&sb);
}

RUN_TESTS()
