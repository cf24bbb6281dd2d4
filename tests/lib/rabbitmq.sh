# SPDX-License-Identifier: MIT
# rabbitmq.sh: sourced by tests that need a real RabbitMQ. rabbitmq_start runs
# a private node (Debian's rabbitmq-server, no plugins) on free loopback ports
# with its own epmd, data, logs, config and Erlang cookie in a temporary
# directory; rabbitmq_stop stops exactly the two processes it started (beam and
# epmd), by pid, and removes that directory. One node per test file: start it
# once and let every case use it. Works as root and as any other user; it never
# touches the system's rabbitmq-server service, /etc/rabbitmq or ~/.erlang.cookie.
#
#   . tests/lib/rabbitmq.sh
#   rabbitmq_start || exit 1     # exports RABBITMQ_URL, RABBITMQ_PORT, RABBITMQ_START_MS
#   ...
#   rabbitmq_restart 2           # stop, 2 s down, start again on the same data
#   rabbitmq_ctl close_all_connections why   # rabbitmqctl against this node
#   rabbitmq_stop                # also run by the EXIT trap it installs
#
# A caller with an EXIT trap of its own (bench/run.sh) sets RMQ_EXIT_TRAP=0
# before rabbitmq_start and calls rabbitmq_stop from that trap.
#
# When CELERIAC_PIDS_FILE is set (tests/run-all.sh), the pids are recorded
# there as "pid beam.smp" / "pid epmd" so a test killed by its timeout leaves
# nothing running.
#
# TLS, opt-in: `RABBITMQ_TLS=1 rabbitmq_start` also opens an amqps listener
# with a throwaway CA, server certificate (CN localhost, SAN DNS:localhost and
# IP:127.0.0.1) and client certificate made in the node's directory
# (rabbitmq_tls_certs), ssl_options.verify = verify_peer, and
# fail_if_no_peer_cert = $RABBITMQ_TLS_FAIL_IF_NO_PEER_CERT (default false).
# Exports RABBITMQ_TLS_PORT, RABBITMQ_TLS_CA, RABBITMQ_TLS_CLIENT_CERT and
# RABBITMQ_TLS_CLIENT_KEY. The plain listener is the same either way.

RMQ_SCRIPTS=${RMQ_SCRIPTS:-/usr/lib/rabbitmq/bin}
RMQ_DIR=
RMQ_BEAM_PID=
RMQ_EPMD_PID=
RMQ_DIST_PORT=
RMQ_EPMD_PORT=

# below the ephemeral range, so that a restart on the same ports finds them free
_rmq_free_port() { /usr/bin/python3 "$(dirname "${BASH_SOURCE[0]}")/free_port.py"; }

_rmq_record() { # pid kind
    [[ -n ${CELERIAC_PIDS_FILE:-} ]] && echo "$1 $2" >>"$CELERIAC_PIDS_FILE"
    return 0
}

# True while pid runs the program we started (guards against pid reuse).
_rmq_pid_is() { # pid word
    local cmd
    [[ -n $1 && -r /proc/$1/cmdline ]] || return 1
    cmd=$(tr '\0' ' ' 2>/dev/null <"/proc/$1/cmdline") || return 1
    [[ $cmd == *"$2"* ]]
}

_rmq_stop_pid() { # pid word
    local pid=$1 i
    _rmq_pid_is "$pid" "$2" || { wait "$pid" 2>/dev/null; return 0; }
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < 100; i++)); do
        _rmq_pid_is "$pid" "$2" || break
        [[ $(ps -o stat= -p "$pid" 2>/dev/null) == Z* ]] && break
        sleep 0.1
    done
    _rmq_pid_is "$pid" "$2" && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    return 0
}

# _rmq_ec_key FILE: a prime256v1 private key (fast, unlike RSA).
_rmq_ec_key() {
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
}

# rabbitmq_tls_ca DIR NAME: a self-signed CA, DIR/NAME.pem and DIR/NAME.key.
rabbitmq_tls_ca() {
    _rmq_ec_key "$1/$2.key" &&
        openssl req -x509 -new -key "$1/$2.key" -out "$1/$2.pem" -days 2 \
            -subj "/CN=celeriac test $2" 2>/dev/null
}

# _rmq_tls_leaf DIR NAME CN EXTENSIONS: DIR/NAME.{key,pem} signed by DIR/ca.
_rmq_tls_leaf() {
    local d=$1
    _rmq_ec_key "$d/$2.key" &&
        openssl req -new -key "$d/$2.key" -out "$d/$2.csr" -subj "/CN=$3" 2>/dev/null &&
        printf '%b' "$4" >"$d/$2.ext" &&
        openssl x509 -req -in "$d/$2.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" \
            -CAcreateserial -days 2 -extfile "$d/$2.ext" -out "$d/$2.pem" 2>/dev/null
}

# rabbitmq_tls_certs DIR: ca, server and client key and certificate in DIR.
rabbitmq_tls_certs() {
    rabbitmq_tls_ca "$1" ca &&
        _rmq_tls_leaf "$1" server localhost \
            'subjectAltName = DNS:localhost, IP:127.0.0.1\nextendedKeyUsage = serverAuth\n' &&
        _rmq_tls_leaf "$1" client celeriac-test-client 'extendedKeyUsage = clientAuth\n'
}

# True once the node completes an AMQP handshake and login as guest.
_rmq_answers() {
    /usr/bin/python3 - "$RABBITMQ_PORT" <<'EOF' >/dev/null 2>&1
import sys, amqp
c = amqp.Connection(host="127.0.0.1:%s" % sys.argv[1], connect_timeout=1)
c.connect()
c.close()
EOF
}

# rabbitmq_start: starts the node and waits (up to 60 s) until it accepts
# AMQP. Exports RABBITMQ_URL (amqp://guest:guest@127.0.0.1:PORT//),
# RABBITMQ_PORT, RABBITMQ_NODENAME and RABBITMQ_START_MS (boot time); with
# RABBITMQ_TLS=1 also the RABBITMQ_TLS_* above, once the TLS port accepts too.
rabbitmq_start() {
    local t0 i
    t0=$(date +%s%N)
    RABBITMQ_TLS_PORT=
    RMQ_DIR=$(mktemp -d "${TMPDIR:-/tmp}/celeriac-rmq.XXXXXX")
    mkdir -p "$RMQ_DIR/home" "$RMQ_DIR/mnesia" "$RMQ_DIR/log"
    RABBITMQ_PORT=$(_rmq_free_port)
    RMQ_DIST_PORT=$(_rmq_free_port)
    RMQ_EPMD_PORT=$(_rmq_free_port)
    RABBITMQ_NODENAME="celeriac-$$-${RANDOM}@localhost"
    echo '[].' >"$RMQ_DIR/enabled_plugins"
    : >"$RMQ_DIR/rabbitmq-env.conf"
    {
        # a nearly full disk on a build machine must not block publishers
        echo "disk_free_limit.absolute = 1MB"
        echo "log.console = false"
        echo "log.file.level = warning"
    } >"$RMQ_DIR/rabbitmq.conf"
    if [[ ${RABBITMQ_TLS:-0} == 1 ]]; then
        local tls=$RMQ_DIR/tls
        mkdir -p "$tls"
        if ! rabbitmq_tls_certs "$tls"; then
            echo "# rabbitmq_start: openssl could not make the test certificates"
            rabbitmq_stop
            return 1
        fi
        RABBITMQ_TLS_PORT=$(_rmq_free_port)
        RABBITMQ_TLS_CA=$tls/ca.pem
        RABBITMQ_TLS_CLIENT_CERT=$tls/client.pem
        RABBITMQ_TLS_CLIENT_KEY=$tls/client.key
        export RABBITMQ_TLS_PORT RABBITMQ_TLS_CA RABBITMQ_TLS_CLIENT_CERT RABBITMQ_TLS_CLIENT_KEY
        {
            echo "listeners.ssl.default = 127.0.0.1:$RABBITMQ_TLS_PORT"
            echo "ssl_options.cacertfile = $tls/ca.pem"
            echo "ssl_options.certfile = $tls/server.pem"
            echo "ssl_options.keyfile = $tls/server.key"
            echo "ssl_options.verify = verify_peer"
            echo "ssl_options.fail_if_no_peer_cert = ${RABBITMQ_TLS_FAIL_IF_NO_PEER_CERT:-false}"
        } >>"$RMQ_DIR/rabbitmq.conf"
    fi

    # epmd first, in the foreground, loopback only: erl then uses it instead
    # of daemonising one we could not stop by pid.
    ERL_EPMD_ADDRESS=127.0.0.1 epmd -port "$RMQ_EPMD_PORT" -address 127.0.0.1 \
        </dev/null >"$RMQ_DIR/log/epmd.log" 2>&1 &
    RMQ_EPMD_PID=$!
    _rmq_record "$RMQ_EPMD_PID" epmd
    for ((i = 0; i < 50; i++)); do
        (exec 3<>"/dev/tcp/127.0.0.1/$RMQ_EPMD_PORT") 2>/dev/null && break
        sleep 0.05
    done
    [[ ${RMQ_EXIT_TRAP:-1} == 0 ]] || trap rabbitmq_stop EXIT
    RABBITMQ_URL="amqp://guest:guest@127.0.0.1:$RABBITMQ_PORT//"
    export RABBITMQ_URL RABBITMQ_PORT RABBITMQ_NODENAME
    _rmq_launch || return 1
    RABBITMQ_START_MS=$((($(date +%s%N) - t0) / 1000000))
    export RABBITMQ_START_MS
}

# _rmq_launch: starts beam for the node rabbitmq_start set up (ports, data,
# name) and waits (up to 60 s) until it accepts AMQP; on failure, shows its
# logs and stops everything.
_rmq_launch() {
    # RABBITMQ_ALLOW_INPUT makes the script exec erl (so $! is beam's pid)
    # instead of waiting on it from a shell; -noinput keeps it from reading stdin.
    # +S 1 and no busy-waiting schedulers: the test machine is small and shared.
    env HOME="$RMQ_DIR/home" \
        ERL_EPMD_PORT="$RMQ_EPMD_PORT" ERL_EPMD_ADDRESS=127.0.0.1 \
        RABBITMQ_CONF_ENV_FILE="$RMQ_DIR/rabbitmq-env.conf" \
        RABBITMQ_NODENAME="$RABBITMQ_NODENAME" \
        RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT="$RABBITMQ_PORT" \
        RABBITMQ_DIST_PORT="$RMQ_DIST_PORT" \
        RABBITMQ_MNESIA_BASE="$RMQ_DIR/mnesia" RABBITMQ_LOG_BASE="$RMQ_DIR/log" \
        RABBITMQ_CONFIG_FILE="$RMQ_DIR/rabbitmq.conf" \
        RABBITMQ_ADVANCED_CONFIG_FILE="$RMQ_DIR/advanced.config" \
        RABBITMQ_ENABLED_PLUGINS_FILE="$RMQ_DIR/enabled_plugins" \
        RABBITMQ_PID_FILE="$RMQ_DIR/rabbit.pid" \
        RABBITMQ_ALLOW_INPUT=1 \
        RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-noinput -kernel inet_dist_use_interface {127,0,0,1} +S 1:1 +sbwt none +sbwtdcpu none +sbwtdio none" \
        "$RMQ_SCRIPTS/rabbitmq-server" </dev/null >>"$RMQ_DIR/log/stdout.log" 2>&1 &
    RMQ_BEAM_PID=$!
    _rmq_record "$RMQ_BEAM_PID" beam.smp

    local deadline=$((SECONDS + 60))
    until (exec 3<>"/dev/tcp/127.0.0.1/$RABBITMQ_PORT") 2>/dev/null && _rmq_answers &&
        { [[ -z ${RABBITMQ_TLS_PORT:-} ]] || (exec 3<>"/dev/tcp/127.0.0.1/$RABBITMQ_TLS_PORT") 2>/dev/null; }; do
        if ((SECONDS >= deadline)) || ! kill -0 "$RMQ_BEAM_PID" 2>/dev/null; then
            echo "# rabbitmq_start: node did not accept AMQP on 127.0.0.1:$RABBITMQ_PORT${RABBITMQ_TLS_PORT:+ (TLS $RABBITMQ_TLS_PORT)}"
            tail -20 "$RMQ_DIR/log/stdout.log" "$RMQ_DIR"/log/*.log 2>/dev/null | sed 's/^/#   /'
            rabbitmq_stop
            return 1
        fi
        sleep 0.1
    done
}

# rabbitmq_restart [DOWN_SECONDS]: stops the node (TERM: a clean shutdown,
# which writes out durable queues and persistent messages), stays down
# DOWN_SECONDS (default 1), then starts it again with the same name, ports
# and data directory, and waits until it accepts AMQP. epmd keeps running.
# Sets RABBITMQ_RESTART_MS (from the stop to accepting AMQP again).
rabbitmq_restart() {
    local t0
    t0=$(date +%s%N)
    [[ -n $RMQ_DIR && -n $RMQ_EPMD_PID ]] || return 1
    if [[ -n $RMQ_BEAM_PID ]]; then
        _rmq_stop_pid "$RMQ_BEAM_PID" beam
        RMQ_BEAM_PID=
    fi
    sleep "${1:-1}"
    _rmq_launch || return 1
    RABBITMQ_RESTART_MS=$((($(date +%s%N) - t0) / 1000000))
    export RABBITMQ_RESTART_MS
}

# rabbitmq_ctl ARGS...: rabbitmqctl against the node rabbitmq_start started
# (its cookie, epmd and name); about 0.4 s a call. E.g. rabbitmq_ctl
# list_queues -q name messages messages_unacknowledged.
rabbitmq_ctl() {
    env HOME="$RMQ_DIR/home" ERL_EPMD_PORT="$RMQ_EPMD_PORT" ERL_EPMD_ADDRESS=127.0.0.1 \
        "$RMQ_SCRIPTS/rabbitmqctl" -n "$RABBITMQ_NODENAME" "$@"
}


# rabbitmq_test_start: for a test file that sourced services.sh. Starts the
# node (rabbitmq_start's environment, e.g. RABBITMQ_TLS=1, passes through) or
# reports "not ok" and ends the test; from before the start, the EXIT trap
# stops the node and then everything services.sh started, keeping the status.
_rmq_test_cleanup() {
    local rc=$?
    rabbitmq_stop
    (exit "$rc")
    services_cleanup
}
rabbitmq_test_start() {
    trap _rmq_test_cleanup EXIT
    if ! RMQ_EXIT_TRAP=0 rabbitmq_start; then
        not_ok "start a private RabbitMQ${RABBITMQ_TLS:+ with a TLS listener}"
        tap_done
    fi
}

# rabbitmq_stop: stops the node and its epmd (ours only, by pid), removes the
# temporary directory. Idempotent.
rabbitmq_stop() {
    if [[ -n $RMQ_BEAM_PID ]]; then
        _rmq_stop_pid "$RMQ_BEAM_PID" beam
        RMQ_BEAM_PID=
    fi
    if [[ -n $RMQ_EPMD_PID ]]; then
        _rmq_stop_pid "$RMQ_EPMD_PID" epmd
        RMQ_EPMD_PID=
    fi
    if [[ -n $RMQ_DIR && -d $RMQ_DIR ]]; then
        rm -rf "$RMQ_DIR"
        RMQ_DIR=
    fi
    return 0
}
