# SPDX-License-Identifier: MIT
"""free_port.py: prints a TCP port on 127.0.0.1 that nothing listens on right
now, for a test or bench service (tests/integration/services.sh,
tests/lib/rabbitmq.sh, bench/run.sh).

Taken below the kernel's ephemeral range when there is room. A port from
that range, while unbound (a server stopped to be restarted on the same port,
a test that frees a port and waits for a server to take it again), can become
the source port of any outgoing connection; a client's TIME_WAIT on it, or a
connection to itself, then makes bind() fail with EADDRINUSE for a minute,
SO_REUSEADDR or not. connect() never picks a port below the range."""
import random
import socket


def range_low():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def bindable(port):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def main():
    low = range_low()
    if low > 12000:
        for _ in range(100):
            port = random.randrange(10000, low)
            if bindable(port):
                print(port)
                return
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    print(s.getsockname()[1])
    s.close()


if __name__ == "__main__":
    main()
