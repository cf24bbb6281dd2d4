-- SPDX-License-Identifier: MIT
-- schema-postgres.sql: the table books.get_book_info reads and updates (PostgreSQL).
-- Safe to run again: it creates only what is missing and touches no rows.
CREATE TABLE IF NOT EXISTS books (
    id         bigint PRIMARY KEY,
    url        text,
    title      text,
    fetched_at timestamptz
);
