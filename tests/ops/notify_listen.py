# SPDX-License-Identifier: MIT
"""notify_listen.py SOCKET OUT: what systemd's end of sd_notify sees. Binds
a datagram socket at SOCKET and appends each datagram to OUT as one JSON
line {"t": monotonic seconds, "msg": text}, until killed."""
import json
import os
import socket
import sys
import time

path, out = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
with open(out, "a", buffering=1) as f:
    f.write(json.dumps({"t": time.monotonic(), "msg": "LISTENING"}) + "\n")
    while True:
        data = s.recv(4096)
        f.write(json.dumps({"t": time.monotonic(), "msg": data.decode("utf-8", "replace")}) + "\n")
