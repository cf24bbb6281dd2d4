#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# repro_claim_window.sh: NOT part of make test (no test_ prefix): reproduces
# an open defect of the SQL transport found by the chaos run. A child
# SIGKILLed after PostgreSQL committed its claim (UPDATE ... RETURNING) and
# before it read the reply has recorded nothing in its slot, so its
# replacement gives nothing back: the row stays claimed (visible false, a
# negative version) until the visibility timeout (default 3600 s). A BEFORE
# UPDATE trigger holds the claim 3 s in the server; the child is stopped
# meanwhile, then killed once the claim has committed. Expected once fixed:
# SUCCESS within a second or two of the kill; today: a timeout, row f|-2.
# Run: BUILD=build bash tests/sql/repro_claim_window.sh
cd "$(dirname "$0")/../.." || exit 1
. tests/sql/lib.sh
start_redis; start_pg; seed_books_pg
SQL_BROKER="sqla+postgresql://postgres@127.0.0.1:$PG_PORT/celeriac"
start_worker -c 1 -b "$SQL_BROKER" --result-backend "$REDIS_URL" --db "$PG_URL" -n r0@localhost
wait_children 1 20; sleep 1; stop_worker
id=$(sqlc send tasks.add --args '[2, 3]')
psql_db -c "CREATE FUNCTION slow_claim() RETURNS trigger LANGUAGE plpgsql AS \$\$BEGIN PERFORM pg_sleep(3); RETURN NEW; END\$\$;
  CREATE TRIGGER slow_claim BEFORE UPDATE ON kombu_message FOR EACH ROW WHEN (NOT NEW.visible AND OLD.visible) EXECUTE FUNCTION slow_claim();"
start_worker -c 1 -b "$SQL_BROKER" --result-backend "$REDIS_URL" --db "$PG_URL" --visibility-timeout 60 --sweep-interval 1 -n r@localhost
blocked() { [[ $(psql_db -c "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'celeriac broker%' AND query LIKE '%SKIP LOCKED%' AND state = 'active'") == 1 ]]; }
wait_for 10 blocked && echo "# child blocked in its claim"
kid=$(worker_children); kill -STOP $kid
sleep 3.5
echo "# rows after the claim committed: $(psql_db -c "SELECT visible, version FROM kombu_message")"
kill -KILL $kid
t0=$SECONDS
out=$(sqlc wait "$id" --timeout 20)
echo "# after the kill: $(jget state <<<"$out") in $((SECONDS - t0)) s; rows: $(psql_db -c "SELECT visible, version FROM kombu_message")"
worker_log_tail 4
stop_worker
