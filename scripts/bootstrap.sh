#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# bootstrap.sh: install on Debian 12 whatever celeriac needs to build, test and
# run its demo. Idempotent: when every package is present it only asks dpkg
# and exits (no apt-get at all). Uses sudo when not root and sudo exists.
set -euo pipefail

PACKAGES=(
    # build
    gcc make pkg-config libpq-dev libhiredis-dev libjansson-dev libsqlite3-dev librabbitmq-dev
    libmsgpack-dev libssl-dev libmicrohttpd-dev
    # services the tests and the demo start privately
    redis-server redis-sentinel postgresql sqlite3 rabbitmq-server pgbouncer
    # throwaway certificates for the TLS listener of the RabbitMQ tests
    openssl
    # the Python Celery client the interop tests drive
    python3 python3-celery python3-redis python3-psycopg2 python3-amqp python3-kombu
    python3-msgpack python3-sqlalchemy
    # make deb, and the install tests (man -l, readelf, nm)
    debhelper dpkg-dev man-db binutils
    # make fleet builds network namespaces (ip) and cuts them apart with nft
    iproute2 nftables
    # make bench draws its plots with it
    gnuplot-nox
)

missing=()
for pkg in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null || true)
    # "ii " = installed and configured
    if [[ "$status" != ii* ]]; then
        missing+=("$pkg")
    fi
done

if ((${#missing[@]} == 0)); then
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: missing packages (${missing[*]}) and no apt-get: install them by hand" >&2
    exit 1
fi

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    else
        echo "bootstrap: missing packages (${missing[*]}); run as root or install sudo" >&2
        exit 1
    fi
fi

echo "bootstrap: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -q >&2
# --no-install-recommends keeps it small; policy-rc.d is not touched: the
# Debian packages may start their system services, which the tests do not use
# (they start private instances on free ports).
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
echo "bootstrap: done" >&2
