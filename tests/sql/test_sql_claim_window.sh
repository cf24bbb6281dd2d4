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
blocked() { [[ $(psql_db -c "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'celeriac %' AND query LIKE '%version = -(abs(version) + 1)%' AND state = 'active'") == 1 ]]; }
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

# ---- the lock path: an early-ack task's child killed inside its ack ----------------------
# An early-ack worker takes rows by lock and acks with DELETE and COMMIT in
# one round trip, at the task's start. A BEFORE DELETE trigger holds the
# DELETE 3 s; the child is killed meanwhile. The COMMIT has already reached
# the server, so the ack commits: the task counts as started and lost, as
# on Redis, and its replacement stores WorkerLostError. It never runs.
id=$(sqlc send tasks.add --args '[20, 22]')
psql_db -c "CREATE FUNCTION slow_ack() RETURNS trigger LANGUAGE plpgsql AS \$\$BEGIN PERFORM pg_sleep(3); RETURN OLD; END\$\$;
  CREATE TRIGGER slow_ack BEFORE DELETE ON kombu_message FOR EACH ROW EXECUTE FUNCTION slow_ack();"
start_worker -c 1 -b "$SQL_BROKER" --result-backend "$REDIS_URL" --db "$PG_URL" -n lock@localhost
acking() { [[ $(psql_db -c "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'celeriac %' AND query LIKE 'DELETE FROM kombu_message WHERE id = \$1' AND state = 'active'") == 1 ]]; }
wait_for 10 acking || not_ok "the child is inside its ack" "$(worker_log_tail 5)"
expect_eq "while it acks, the row is unchanged (taken by lock, never claimed)" "t|1" \
    "$(psql_db -c "SELECT visible, version FROM kombu_message")"
kill -KILL "$(worker_children)"
out=$(sqlc wait "$id" --timeout 20)
psql_db -c "DROP TRIGGER slow_ack ON kombu_message" >/dev/null
expect_eq "killed inside its ack: WorkerLostError stored by the replacement, the row gone" \
    "FAILURE=1 WorkerLostError 0" \
    "$(states <<<"$out") $(grep -o WorkerLostError <<<"$out" | head -1) $(psql_db -c "SELECT count(*) FROM kombu_message")" \
    "$out" "$(worker_log_tail 6)"
stop_worker
tap_done
