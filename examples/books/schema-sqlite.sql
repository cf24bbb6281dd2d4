-- SPDX-License-Identifier: MIT
-- schema-sqlite.sql: the table books.get_book_info reads and updates (SQLite).
-- Same columns as the PostgreSQL schema; fetched_at holds ISO-8601 UTC text
-- ('2026-01-31T12:00:00.000Z'), which SQLite's date functions understand.
-- "bigint PRIMARY KEY" is not an alias of the rowid (only "INTEGER PRIMARY KEY"
-- is), so the id is declared INTEGER to make lookups by id a rowid search.
PRAGMA journal_mode = WAL;
CREATE TABLE IF NOT EXISTS books (
    id         INTEGER PRIMARY KEY,
    url        text,
    title      text,
    fetched_at timestamptz
);
