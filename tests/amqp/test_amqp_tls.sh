#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# test_amqp_tls.sh (issue 11): amqps:// end to end. A private RabbitMQ with a
# TLS listener that requires a client certificate (tests/lib/rabbitmq.sh,
# RABBITMQ_TLS=1: throwaway EC CA, server certificate for localhost and
# 127.0.0.1, client certificate), results in a throwaway Redis. Python's
# Celery sends over TLS (broker_use_ssl, amqp_worker_py.py) to a celeriac
# worker on amqps:// with CA, client certificate and ssl_cert_reqs=required;
# `celeriac call` sends over amqps:// too, by name and by IP address. Then
# what must fail, fail clearly, without spinning and without the password: a
# CA that did not sign the server's certificate, a CA file that does not
# exist, plain amqp:// at the TLS port (workers, measured together); a server
# certificate for another name, no client certificate, amqps:// at the plain
# port (celeriac call); and ssl_cert_reqs=none without a CA, which works.
. "$(dirname "$0")/lib.sh"
start_redis
RABBITMQ_TLS=1 RABBITMQ_TLS_FAIL_IF_NO_PEER_CERT=true rabbitmq_test_start
diag "rabbitmq started in ${RABBITMQ_START_MS} ms; TLS on port $RABBITMQ_TLS_PORT"
export AMQPT_RUNS=$TEST_TMP/runs
: >"$AMQPT_RUNS"

TLS_PORT=$RABBITMQ_TLS_PORT
CA=$RABBITMQ_TLS_CA
CLIENT="ssl_certfile=$RABBITMQ_TLS_CLIENT_CERT&ssl_keyfile=$RABBITMQ_TLS_CLIENT_KEY"
tls_url() { # HOST [QUERY]: amqps:// to the TLS listener with the client certificate
    echo "amqps://guest:guest@$1:$TLS_PORT//?$CLIENT${2:+&$2}"
}
AMQPS=$(tls_url localhost "ssl_ca_certs=$CA&ssl_cert_reqs=required")

# Python: plain amqp:// plus broker_use_ssl, as a Celery app configures TLS.
export AMQPT_TLS_CA=$CA AMQPT_TLS_CERT=$RABBITMQ_TLS_CLIENT_CERT AMQPT_TLS_KEY=$RABBITMQ_TLS_CLIENT_KEY
PY_TLS="amqp://guest:guest@localhost:$TLS_PORT//"
py() { "$PY" "$HERE/amqp_worker_py.py" "$@"; }

# call URL ARGS...: `celeriac call` with the result backend; output and status in OUT, RC.
call() {
    local url=$1
    shift
    OUT=$(timeout 30 "$CELERIAC_BIN" call -b "$url" --result-backend "$REDIS_URL" "$@" 2>&1)
    RC=$?
}
# call_fails NAME URL PATTERN: one line, exit status 1, matching PATTERN, in time.
call_fails() {
    local t0=$SECONDS
    call "$2" amqpt.add 1 1
    if [[ $RC == 1 && $(wc -l <<<"$OUT") == 1 && $OUT =~ $3 ]] && ((SECONDS - t0 < 10)); then
        ok "$1: $OUT"
    else
        not_ok "$1" "rc $RC after $((SECONDS - t0)) s, want one line matching: $3" "$OUT"
    fi
}

# ---- (a) verified TLS with a client certificate ---------------------------------------
start_worker -A "$LIB" -b "$AMQPS" --result-backend "$REDIS_URL" -c 2 -n amqps@localhost
wait_children 2 20 || not_ok "worker -c 2 on amqps:// started" "$(worker_log_tail)"
out=$(py basic "$PY_TLS" "$REDIS_URL" 2>&1)
expect_eq "python over TLS (broker_use_ssl, client certificate) to a worker on amqps://: six adds, a failure, a retry, a chain" \
    ok "$out" "$(worker_log_tail 8)"
call "$AMQPS" amqpt.add 2 3 --wait
expect_eq "celeriac call over amqps://localhost (CA, client certificate, required) --wait" "0 5" "$RC $OUT"
call "$(tls_url 127.0.0.1 "ssl_ca_certs=$CA")" amqpt.add 4 5 --wait
expect_eq "celeriac call over amqps://127.0.0.1: verified against the certificate's IP entry" "0 9" "$RC $OUT"
call "$(tls_url localhost ssl_cert_reqs=none)" amqpt.add 1 1 --wait
expect_eq "celeriac call with ssl_cert_reqs=none and no CA" "0 2" "$RC $OUT"
if ! log_has 'connect.* failed|TLS|SSL'; then
    ok "no connection errors in the worker log"
else
    not_ok "no connection errors in the worker log" "$(worker_log_tail 8)"
fi
stop_worker TERM 20
expect_eq "warm shutdown over TLS: exit status" 0 "$WORKER_RC"

# ---- (d) ssl_cert_reqs=none without a CA: a worker ------------------------------------
start_worker -A "$LIB" -b "$(tls_url localhost ssl_cert_reqs=none)" --result-backend "$REDIS_URL" \
    -c 1 -n amqps-none@localhost
wait_children 1 20
call "$AMQPS" amqpt.add 20 22 --wait
expect_eq "a worker with ssl_cert_reqs=none and no CA runs a task" "0 42" "$RC $OUT" "$(worker_log_tail 8)"
stop_worker TERM 20

# ---- (b) wrong CA, (c) missing CA file, (e) plain amqp:// at the TLS port: workers ------
# Each retries with backoff: one line per process (child, control process),
# little CPU, a log that stops growing, never the password. The three run
# at once; each is measured on its own.
PW=Tls-s3cret-pw
rabbitmq_tls_ca "$TEST_TMP" other-ca
declare -A W_PID W_LOG
bad_worker() { # KEY URL
    start_worker -A "$LIB" -b "$2" --result-backend "$REDIS_URL" -c 1 -n "amqps-$1@localhost"
    W_PID[$1]=$WORKER_PID
    W_LOG[$1]=$WORKER_LOG
}
bad_worker wrongca "amqps://guest:$PW@localhost:$TLS_PORT//?ssl_ca_certs=$TEST_TMP/other-ca.pem&$CLIENT"
bad_worker noca "amqps://guest:$PW@localhost:$TLS_PORT//?ssl_ca_certs=$TEST_TMP/no-such-ca.pem&$CLIENT"
bad_worker plain "amqp://guest:$PW@localhost:$TLS_PORT//"
for k in wrongca noca plain; do
    WORKER_PID=${W_PID[$k]} wait_children 1 20
done
sleep 1.5
declare -A T0 B0 PROCS
for k in wrongca noca plain; do
    PROCS[$k]="${W_PID[$k]} $(worker_all_children "${W_PID[$k]}")"
    # shellcheck disable=SC2086
    T0[$k]=$(cpu_ticks ${PROCS[$k]})
    B0[$k]=$(log_bytes "${W_LOG[$k]}")
done
sleep 4
bad_case() { # KEY NAME LINE_REGEX
    local k=$1 log=${W_LOG[$1]} ticks grown lines
    # shellcheck disable=SC2086
    ticks=$(($(cpu_ticks ${PROCS[$k]}) - T0[$k]))
    grown=$(($(log_bytes "$log") - B0[$k]))
    if ((ticks <= 20 && grown <= 400)); then
        ok "$2: $((ticks * 10)) ms CPU and $grown log bytes in 4 s"
    else
        not_ok "$2: at most 5 % CPU and 400 log bytes in 4 s" "$((ticks * 10)) ms CPU, $grown bytes" \
            "$(worker_log_tail 6 "$log")"
    fi
    lines=$(grep -cE "$3" "$log")
    if [[ $lines == 2 ]] && log_has "ForkPoolWorker-1\].*$3" "$log" &&
        log_has "ControlProcess\].*$3" "$log"; then
        ok "$2: one line from the child and one from the control process: $(grep -m1 -E "$3" "$log" | sed 's/^[^]]*] //')"
    else
        not_ok "$2: one line from the child and one from the control process" "$lines lines match $3" \
            "$(worker_log_tail 6 "$log")"
    fi
    if grep -q "$PW" "$log"; then
        not_ok "$2: the password is never logged" "$(grep "$PW" "$log" | head -3)"
    else
        ok "$2: the password is never logged"
    fi
    if worker_alive "${W_PID[$k]}"; then
        ok "$2: the worker is still running (retrying)"
    else
        not_ok "$2: the worker is still running (retrying)" "$(worker_log_tail 6 "$log")"
    fi
}
bad_case wrongca "(b) a CA that did not sign the server's certificate" \
    "localhost:$TLS_PORT vhost '/' failed: the server's TLS certificate could not be verified with CA file '$TEST_TMP/other-ca.pem': "
bad_case noca "(c) a CA file that does not exist" \
    "load TLS CA file '$TEST_TMP/no-such-ca.pem' for localhost:$TLS_PORT vhost '/' failed: No such file or directory"
bad_case plain "(e) plain amqp:// at the TLS port" \
    "login on localhost:$TLS_PORT vhost '/' failed: .*use amqps://"
for k in wrongca noca plain; do
    WORKER_PID=${W_PID[$k]}
    stop_worker TERM 20
    expect_eq "$k: warm shutdown while retrying: exit status" 0 "$WORKER_RC"
done

# ---- what the client says at once ---------------------------------------------------------
call_fails "(e) celeriac call with plain amqp:// at the TLS port" "amqp://guest:$PW@localhost:$TLS_PORT//" \
    "^celeriac: login on localhost:$TLS_PORT vhost '/' failed: .*use amqps://"
call_fails "amqps:// at the plain port" "$(tls_url localhost "ssl_ca_certs=$CA" | sed "s/:$TLS_PORT/:$RABBITMQ_PORT/")" \
    "^celeriac: connect to localhost:$RABBITMQ_PORT vhost '/' failed: SSL handshake failed \(.+\)$"
# The server's alert may arrive before or after our first write: either
# OpenSSL names it, or the message asks about a client certificate.
call_fails "no client certificate where the server requires one" \
    "amqps://guest:guest@localhost:$TLS_PORT//?ssl_ca_certs=$CA" \
    "^celeriac: login on localhost:$TLS_PORT vhost '/' failed: .*(client certificate\?|alert certificate required)"
call_fails "(b) celeriac call with the wrong CA" \
    "amqps://guest:$PW@localhost:$TLS_PORT//?ssl_ca_certs=$TEST_TMP/other-ca.pem&$CLIENT" \
    "^celeriac: connect to localhost:$TLS_PORT vhost '/' failed: the server's TLS certificate could not be verified"

# A server certificate for another name, signed by the right CA: openssl's
# own TLS server stands in for RabbitMQ (the check fails in the handshake).
tls_dir=$(dirname "$CA")
other_port=$(free_port)
if _rmq_tls_leaf "$tls_dir" elsewhere elsewhere.invalid \
    'subjectAltName = DNS:elsewhere.invalid, IP:192.0.2.1\nextendedKeyUsage = serverAuth\n'; then
    openssl s_server -www -accept "127.0.0.1:$other_port" -cert "$tls_dir/elsewhere.pem" \
        -key "$tls_dir/elsewhere.key" </dev/null >/dev/null 2>&1 &
    s_pid=$!
    _svc_record_pid "$s_pid" openssl
    wait_for 10 bash -c "exec 3<>/dev/tcp/127.0.0.1/$other_port" 2>/dev/null
    call_fails "a certificate for another host name is refused" \
        "amqps://guest:guest@localhost:$other_port//?ssl_ca_certs=$CA&$CLIENT" \
        "failed: the server's TLS certificate is not for host 'localhost' \(hostname mismatch\)"
    call_fails "a certificate for another IP address is refused" \
        "amqps://guest:guest@127.0.0.1:$other_port//?ssl_ca_certs=$CA&$CLIENT" \
        "failed: the server's TLS certificate is not for host '127.0.0.1' \(IP address mismatch\)"
    _svc_pid_is "$s_pid" openssl && kill -TERM "$s_pid"
    wait "$s_pid" 2>/dev/null
else
    not_ok "make a certificate for another host name"
fi

check_worker_logs_clean
tap_done
