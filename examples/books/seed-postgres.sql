-- SPDX-License-Identifier: MIT
-- seed-postgres.sql: books 1..n (url 'https://example.org/books/<id>', title 'Book <id>').
-- psql -v n=5000 -f seed-postgres.sql; n defaults to 10000. Rows that exist are kept.
\if :{?n}
\else
\set n 10000
\endif
INSERT INTO books (id, url, title)
SELECT i, 'https://example.org/books/' || i, 'Book ' || i
FROM generate_series(1, :n) AS i
ON CONFLICT (id) DO NOTHING;
