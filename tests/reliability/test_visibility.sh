#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_visibility.sh (issue 3, point 1): the visibility sweep. An unacked
# entry older than --visibility-timeout is restored to its queue under
# kombu's unacked_mutex and then runs; a younger one is left alone until it
# is old enough; a mutex held by another process (Python or C) is respected;
# the orphan of a real kombu consumer that died is restored by celeriac.
. "$(dirname "$0")/lib.sh"

start_redis
build_rel_lib || tap_done
W=(-A "$REL_LIB" -b "$REDIS_URL" --result-backend "$REDIS_URL" -l debug
    --visibility-timeout 5 --sweep-interval 1)

restored_lines() { log_count "restored [0-9]+ unacknowledged messages? older than 5 s"; }

# ---- an old hand-written entry is restored at child start and runs once -------------
tag=$(cat /proc/sys/kernel/random/uuid)
id=$(rel handwrite "$tag" 4000 --task rel.pid --args '[0]')
expect_eq "setup: one entry in unacked (score now-4000), queue empty" "1 1 0" \
    "$(unacked_count) $(queue_len)"
start_worker "${W[@]}" -c 2 -n sweep@localhost
m=$(meta_of "$id" 20)
expect_eq "an unacked entry older than --visibility-timeout is restored and runs" SUCCESS \
    "$(jget status <<<"$m")" "$m" "$(worker_log_tail 15)"
expect_eq "after the restore: unacked empty, queue empty" "0 0 0" "$(unacked_count) $(queue_len)"
if log_has "restored 1 unacknowledged message older than 5 s"; then
    ok "the sweep is logged ($(grep -oE 'restored 1 unacknowledged message older than 5 s' "$WORKER_LOG" | head -1))"
else
    not_ok "the sweep is logged" "$(worker_log_tail 15)"
fi
expect_eq "two children sweeping: the entry is restored once and runs once" "1 1" \
    "$(restored_lines) $(log_count "rel\.pid\[$id\] succeeded")" "$(worker_log_tail 15)"
mutex=$(redis_cli exists unacked_mutex)
expect_eq "the sweeper released unacked_mutex" 0 "$mutex"

# ---- a young entry waits for the visibility timeout -----------------------------------
tag=$(cat /proc/sys/kernel/random/uuid)
t0=$(date +%s.%N)
id=$(rel handwrite "$tag" 0 --task rel.pid --args '[0]')
sleep 2.5
expect_eq "an entry younger than --visibility-timeout 5 is left alone (2.5 s later)" "1 1 none" \
    "$(unacked_count) $(meta_of "$id" 0 | summary)"
m=$(meta_of "$id" 15)
t1=$(date +%s.%N)
age=$("$PY" -c "print(round($t1 - $t0, 1))")
expect_eq "... and restored and run once it is older (after ${age} s)" SUCCESS "$(jget status <<<"$m")" \
    "$(worker_log_tail 10)"
if "$PY" -c "import sys; sys.exit(0 if $age >= 4.9 else 1)"; then
    ok "... not before the timeout (${age} s >= 5 s)"
else
    not_ok "... not before the timeout" "ran after ${age} s"
fi

# ---- kombu's mutex is respected ---------------------------------------------------------
redis_cli set unacked_mutex someone-elses-token PX 60000 >/dev/null
tag=$(cat /proc/sys/kernel/random/uuid)
id=$(rel handwrite "$tag" 4000 --task rel.pid --args '[0]')
sleep 3
expect_eq "while another process holds unacked_mutex, no sweep restores (3 s, sweep every 1 s)" \
    "1 1 someone-elses-token" "$(unacked_count) $(redis_cli get unacked_mutex)" "$(worker_log_tail 10)"
redis_cli del unacked_mutex >/dev/null
m=$(meta_of "$id" 15)
expect_eq "once the mutex is released, the entry is restored and runs" SUCCESS "$(jget status <<<"$m")" \
    "$(worker_log_tail 10)"
stop_worker TERM 20
expect_eq "sweeping worker exits 0" 0 "$WORKER_RC" "$(worker_log_tail)"

# ---- the orphan of a Python (kombu) consumer ----------------------------------------------
# No worker runs: a kombu consumer takes the message (kombu's QoS.append
# writes unacked/unacked_index) and dies without acking or closing.
id=$(send rel.pid '[0]')
tag=$(rel orphan)
if [[ -n $tag && $(unacked_count) == "1 1" && $(queue_len) == 0 ]]; then
    ok "a kombu consumer died holding the message: it is only in kombu's unacked entry ($tag)"
else
    not_ok "a kombu consumer died holding the message" "tag '$tag', unacked $(unacked_count), queue $(queue_len)"
fi
start_worker "${W[@]}" -c 1 -n orphan@localhost
sleep 2
expect_eq "celeriac leaves the kombu orphan alone while it is young (2 s)" "1 1 none" \
    "$(unacked_count) $(meta_of "$id" 0 | summary)"
m=$(meta_of "$id" 15)
expect_eq "celeriac restores the kombu consumer's orphan after the timeout and runs it" \
    SUCCESS "$(jget status <<<"$m")" "$m" "$(worker_log_tail 10)"
expect_eq "after that: unacked empty, queue empty" "0 0 0" "$(unacked_count) $(queue_len)"

# ---- a kombu-written orphan of priority 6 -------------------------------------------------
tag=$(cat /proc/sys/kernel/random/uuid)
id=$(rel handwrite "$tag" 4000 --task rel.pid --args '[0]' --priority 6)
m=$(meta_of "$id" 15)
expect_eq "an old entry with priority 6 is restored and runs" SUCCESS "$(jget status <<<"$m")" \
    "$(worker_log_tail 10)"
stop_worker TERM 20

check_worker_logs_clean
tap_done
