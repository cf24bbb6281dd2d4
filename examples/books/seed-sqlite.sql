-- SPDX-License-Identifier: MIT
-- seed-sqlite.sql: books 1..n (url 'https://example.org/books/<id>', title 'Book <id>').
-- sqlite3 -cmd '.parameter set @n 5000' books.db < seed-sqlite.sql; n defaults to 10000.
-- Rows that exist are kept. "WHERE true" is needed before ON CONFLICT after a
-- SELECT (SQLite's parser would otherwise read ON as a join constraint).
WITH RECURSIVE seq(i) AS (
    SELECT 1
    UNION ALL
    SELECT i + 1 FROM seq WHERE i < coalesce(@n, 10000)
)
INSERT INTO books (id, url, title)
SELECT i, 'https://example.org/books/' || i, 'Book ' || i FROM seq WHERE true
ON CONFLICT (id) DO NOTHING;
