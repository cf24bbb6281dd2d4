/* SPDX-License-Identifier: MIT
 * test_db_pg.c: what db/pg.c decides without a server: the loggable name
 * of a conninfo (multi-host URLs included) and which SQLSTATEs mean "open a
 * new session".
 */
#include "common.h"
#include "db/conn.h"

#include "harness.h"

static void check_where(const char *conninfo, const char *want)
{
    char *where = NULL;
    struct err e = {0};
    ASSERT_EQ_INT(db_pg_describe(conninfo, &where, &e), 0);
    ASSERT_EQ_STR(where, want);
    free(where);
}

TEST(where_one_host)
{
    check_where("postgresql://app:secret@db.local:5433/books", "db.local:5433/books");
    check_where("postgresql://db.local/books", "db.local:5432/books");
    check_where("host=db.local dbname=books", "db.local:5432/books");
}

TEST(where_multi_host_names_every_host_without_credentials)
{
    check_where("postgresql://app:secret@h1:5432,h2:5433/db?target_session_attrs=read-write",
                "h1:5432,h2:5433/db");
    check_where("postgresql://h1,h2,h3/db", "h1:5432,h2:5432,h3:5432/db");
    check_where("host=h1,h2 port=6000 dbname=db", "h1:6000,h2:6000/db");
}

TEST(where_bad_conninfo)
{
    char *where = NULL;
    struct err e = {0};
    ASSERT_EQ_INT(db_pg_describe("postgresql://h1/db?nosuchoption=1", &where, &e), -EINVAL);
    ASSERT_TRUE(where == NULL);
}

TEST(read_only_transaction_means_new_session)
{
    ASSERT_TRUE(db_pg_sqlstate_is_loss("25006"));
    ASSERT_TRUE(db_pg_sqlstate_is_loss("08006"));
    ASSERT_TRUE(db_pg_sqlstate_is_loss("57P01"));
    ASSERT_FALSE(db_pg_sqlstate_is_loss("25001"));
    ASSERT_FALSE(db_pg_sqlstate_is_loss("23505"));
    ASSERT_FALSE(db_pg_sqlstate_is_loss(NULL));
}

RUN_TESTS()
