#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_sql_claim_window.sh (issue 12): a child SIGKILLed after PostgreSQL
# committed its claim (UPDATE ... RETURNING) and before it read the reply.
# The slot names the claim by its stamp before the statement runs, so the
# replacement gives the row back at once, not after the visibility timeout
# (found by the SQL chaos run). A BEFORE UPDATE trigger holds the claim 3 s
# in the server; the child is stopped meanwhile, then killed once the claim
# has committed. The worker acks late (--acks-late), so the row it takes
# by lock is claimed (the same UPDATE, then COMMIT in the same round trip)
# before the task starts.
. "$(dirname "$0")/lib.sh"

start_redis
start_pg
seed_books_pg || { not_ok "seed the books table"; tap_done; }
SQL_BROKER="sqla+postgresql://postgres@127.0.0.1:$PG_PORT/celeriac"
start_worker -c 1 -b "$SQL_BROKER" --result-backend "$REDIS_URL" --db "$PG_URL" -n r0@localhost
wait_children 1 20
sleep 1 # the tables exist
stop_worker
id=$(sqlc send tasks.add --args '[2, 3]')
psql_db -c "CREATE FUNCTION slow_claim() RETURNS trigger LANGUAGE plpgsql AS \$\$BEGIN PERFORM pg_sleep(3); RETURN NEW; END\$\$;
  CREATE TRIGGER slow_claim BEFORE UPDATE ON kombu_message FOR EACH ROW WHEN (NOT NEW.visible AND OLD.visible) EXECUTE FUNCTION slow_claim();"
start_worker -c 1 -b "$SQL_BROKER" --result-backend "$REDIS_URL" --db "$PG_URL" --acks-late --visibility-timeout 60 --sweep-interval 1 -n r@localhost
blocked() { [[ $(psql_db -c "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'celeriac broker%' AND query LIKE '%version = -(abs(version) + 1)%' AND state = 'active'") == 1 ]]; }
wait_for 10 blocked || not_ok "the child is blocked in its claim" "$(worker_log_tail 5)"
kid=$(worker_children); kill -STOP $kid
sleep 3.5
expect_eq "the claim committed while the child was stopped" "f|-2" \
    "$(psql_db -c "SELECT visible, version FROM kombu_message")"
kill -KILL $kid
t0=$SECONDS
out=$(sqlc wait "$id" --timeout 20)
psql_db -c "DROP TRIGGER slow_claim ON kombu_message" >/dev/null
expect_eq "the claim of a child killed inside its claim statement is given back and runs" \
    5 "$(results <<<"$out")" "$out" "$(worker_log_tail 6)"
if ((SECONDS - t0 < 15)); then
    ok "given back by the replacement ($((SECONDS - t0)) s), not by the 60 s visibility timeout"
else
    not_ok "given back by the replacement, not by the visibility timeout" "$((SECONDS - t0)) s"
fi
if grep -q "its child died before starting it; restored to its queue" "$WORKER_LOG"; then
    ok "the replacement's log says it restored the claim"
else
    not_ok "the replacement's log says it restored the claim" "$(worker_log_tail 6)"
fi
stop_worker
expect_eq "nothing left in kombu_message" 0 "$(psql_db -c "SELECT count(*) FROM kombu_message")"
tap_done
