#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""hostile_amqp_server.py: a fake AMQP 0-9-1 server for test_amqp_hostile.sh.

Speaks just enough of the protocol, by hand (socket + struct, no library),
for a celeriac worker to log in, declare Celery's topology, consume and ack,
and then misbehaves in one scenario per run. Connections are served one at a
time, in order; the scenario may do something different on each (connection
N gets step N of its list, the last step repeats).

    hostile_amqp_server.py SCENARIO PORT_FILE RECORD_FILE

It binds 127.0.0.1 on a free port (or $HOSTILE_PORT) and writes the port to
PORT_FILE. Every
connection, every method the client sends and every action of the server is
appended to RECORD_FILE, one line each, flushed at once:

    conn N                          a connection was accepted
    recv N class.method [detail]    a method from the client (ack/reject
                                    carry the tag, start-ok the vhost later)
    do N what                       the server misbehaved (or delivered)
    eof N                           the client closed its socket

It is not a RabbitMQ: it answers every declare with declare-ok (a passive
declare finds the queue), and knows nothing of routing or persistence.
"""
import json
import os
import socket
import struct
import sys
import threading
import time
import uuid

FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT = 1, 2, 3, 8
FRAME_END = 0xCE
FRAME_MAX = 131072

NAMES = {
    (10, 10): "connection.start", (10, 11): "connection.start-ok",
    (10, 30): "connection.tune", (10, 31): "connection.tune-ok",
    (10, 40): "connection.open", (10, 41): "connection.open-ok",
    (10, 50): "connection.close", (10, 51): "connection.close-ok",
    (20, 10): "channel.open", (20, 11): "channel.open-ok",
    (20, 40): "channel.close", (20, 41): "channel.close-ok",
    (40, 10): "exchange.declare", (40, 11): "exchange.declare-ok",
    (50, 10): "queue.declare", (50, 11): "queue.declare-ok",
    (50, 20): "queue.bind", (50, 21): "queue.bind-ok",
    (60, 10): "basic.qos", (60, 11): "basic.qos-ok",
    (60, 20): "basic.consume", (60, 21): "basic.consume-ok",
    (60, 30): "basic.cancel", (60, 31): "basic.cancel-ok",
    (60, 40): "basic.publish", (60, 50): "basic.return", (60, 60): "basic.deliver",
    (60, 80): "basic.ack", (60, 90): "basic.reject", (60, 120): "basic.nack",
    (85, 10): "confirm.select", (85, 11): "confirm.select-ok",
}

RECORD = None
RECORD_LOCK = threading.Lock()


def record(line):
    with RECORD_LOCK:
        RECORD.write(line + "\n")
        RECORD.flush()


# ---- encoding ---------------------------------------------------------------
def shortstr(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack(">B", len(b)) + b


def longstr(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack(">I", len(b)) + b


def field(v):
    """One field-table value, as py-amqp writes it."""
    if v is None:
        return b"V"
    if isinstance(v, bool):
        return b"t" + struct.pack(">B", v)
    if isinstance(v, int):
        return b"I" + struct.pack(">i", v)
    if isinstance(v, (str, bytes)):
        return b"S" + longstr(v)
    if isinstance(v, dict):
        return b"F" + table(v)
    if isinstance(v, (list, tuple)):
        items = b"".join(field(x) for x in v)
        return b"A" + struct.pack(">I", len(items)) + items
    raise TypeError(type(v))


def table(d):
    items = b"".join(shortstr(k) + field(v) for k, v in d.items())
    return struct.pack(">I", len(items)) + items


def frame(ftype, channel, payload, size=None, end=FRAME_END):
    """A frame; size overrides the length field (a lie), end the end octet."""
    n = len(payload) if size is None else size
    return struct.pack(">BHI", ftype, channel, n) + payload + bytes([end])


def method(channel, cm, args=b""):
    return frame(FRAME_METHOD, channel, struct.pack(">HH", *cm) + args)


def content_header(channel, body_size, props=b"\x00\x00"):
    return frame(FRAME_HEADER, channel, struct.pack(">HHQ", 60, 0, body_size) + props)


def celery_properties(task_id, headers):
    """content_type, content_encoding, headers, delivery_mode, priority,
    correlation_id, reply_to: the flags and list kombu sends."""
    flags = (1 << 15) | (1 << 14) | (1 << 13) | (1 << 12) | (1 << 11) | (1 << 10) | (1 << 9)
    return (struct.pack(">H", flags) + shortstr("application/json") + shortstr("utf-8") +
            table(headers) + struct.pack(">BB", 2, 0) + shortstr(task_id) +
            shortstr(str(uuid.uuid4())))


def celery_task(name, args):
    """A protocol-2 task message as Celery 5.2 sends it: (properties, body)."""
    task_id = str(uuid.uuid4())
    headers = {
        "lang": "py", "task": name, "id": task_id, "shadow": None, "eta": None,
        "expires": None, "group": None, "group_index": None, "retries": 0,
        "timelimit": [None, None], "root_id": task_id, "parent_id": None,
        "argsrepr": repr(tuple(args)), "kwargsrepr": "{}", "origin": "gen1@hostile",
        "ignore_result": False,
    }
    body = json.dumps([args, {}, {"callbacks": None, "errbacks": None, "chain": None,
                                  "chord": None}]).encode()
    return task_id, celery_properties(task_id, headers), body


# ---- decoding ---------------------------------------------------------------
class Reader:
    def __init__(self, b):
        self.b, self.i = b, 0

    def take(self, n):
        v = self.b[self.i:self.i + n]
        self.i += n
        return v

    def u8(self):
        return struct.unpack(">B", self.take(1))[0]

    def u16(self):
        return struct.unpack(">H", self.take(2))[0]

    def u32(self):
        return struct.unpack(">I", self.take(4))[0]

    def u64(self):
        return struct.unpack(">Q", self.take(8))[0]

    def shortstr(self):
        return self.take(self.u8()).decode(errors="replace")

    def longstr(self):
        return self.take(self.u32())

    def table(self):
        return self.take(self.u32())  # kept raw: nothing here needs its contents


class Closed(Exception):
    pass


class Conn:
    """One client connection: frame I/O and the method handshake."""

    def __init__(self, sock, n, scenario):
        self.s, self.n, self.scenario = sock, n, scenario
        self.buf = b""
        self.consumer = None       # (channel, tag) of the last basic.consume
        self.channels = set()
        self.confirming = set()
        self.publish_seq = {}
        self.next_tag = 1
        self.consumers = 0

    def read(self, n):
        while len(self.buf) < n:
            try:
                got = self.s.recv(65536)
            except OSError:
                got = b""
            if not got:
                raise Closed()
            self.buf += got
        v, self.buf = self.buf[:n], self.buf[n:]
        return v

    def read_frame(self):
        ftype, ch, size = struct.unpack(">BHI", self.read(7))
        payload = self.read(size)
        if self.read(1) != bytes([FRAME_END]):
            raise Closed()
        return ftype, ch, payload

    def send(self, data):
        try:
            self.s.sendall(data)
        except OSError:
            raise Closed()

    def do(self, what):
        record("do %d %s" % (self.n, what))

    def deliver(self, channel, props, body, body_size=None, chunk=FRAME_MAX - 8):
        """basic.deliver + header + body frames; returns the delivery tag."""
        tag = self.next_tag
        self.next_tag += 1
        ctag = self.consumer[1] if self.consumer else "ctag"
        args = (shortstr(ctag) + struct.pack(">QB", tag, 0) + shortstr("celery") +
                shortstr("celery"))
        out = method(channel, (60, 60), args)
        out += frame(FRAME_HEADER, channel, struct.pack(
            ">HHQ", 60, 0, len(body) if body_size is None else body_size) + props)
        for i in range(0, len(body), chunk):
            out += frame(FRAME_BODY, channel, body[i:i + chunk])
        self.send(out)
        return tag

    def deliver_task(self, channel, name="amqpt.mark", args=("hostile", 0)):
        task_id, props, body = celery_task(name, list(args))
        tag = self.deliver(channel, props, body)
        self.do("deliver %d %s %s" % (tag, name, task_id))
        return tag

    def handshake(self, vhost_ok=True):
        if self.read(8) != b"AMQP\x00\x00\x09\x01":
            raise Closed()
        props = {"product": "hostile", "version": "0",
                 "capabilities": {"publisher_confirms": True, "consumer_cancel_notify": True,
                                  "authentication_failure_close": True,
                                  "basic.nack": True}}
        self.send(method(0, (10, 10), struct.pack(">BB", 0, 9) + table(props) +
                         longstr("PLAIN AMQPLAIN") + longstr("en_US")))
        self.expect((10, 11))
        self.send(method(0, (10, 30), struct.pack(">HIH", 2047, FRAME_MAX, 0)))
        self.expect((10, 31))
        _, _, args = self.expect((10, 40))
        vhost = Reader(args).shortstr()
        record("recv %d connection.open vhost=%s" % (self.n, vhost))
        if not vhost_ok:
            return vhost
        self.send(method(0, (10, 41), shortstr("")))
        return vhost

    def expect(self, cm):
        while True:
            ftype, ch, payload = self.read_frame()
            if ftype != FRAME_METHOD:
                continue
            got = struct.unpack(">HH", payload[:4])
            record("recv %d %s" % (self.n, NAMES.get(got, "%d.%d" % got)))
            if got != cm:
                raise Closed()
            return ftype, ch, payload[4:]

    def close_connection(self, code, text, cm=(0, 0)):
        self.send(method(0, (10, 50), struct.pack(">H", code) + shortstr(text) +
                         struct.pack(">HH", *cm)))
        self.do("connection.close %d %s" % (code, text))

    def close_channel(self, ch, code, text, cm=(0, 0)):
        self.send(method(ch, (20, 40), struct.pack(">H", code) + shortstr(text) +
                         struct.pack(">HH", *cm)))
        self.channels.discard(ch)
        self.do("channel.close %d %d %s" % (ch, code, text))

    def serve(self, on_consume, on_ack=None):
        """Answers the client's methods until it goes; on_consume(ch) runs
        after each consume-ok, on_ack(tag) after each basic.ack."""
        while True:
            ftype, ch, payload = self.read_frame()
            if ftype == FRAME_HEARTBEAT:
                continue
            if ftype != FRAME_METHOD:
                continue  # content of a publish: consumed with its method below
            cm = struct.unpack(">HH", payload[:4])
            r = Reader(payload[4:])
            name = NAMES.get(cm, "%d.%d" % cm)
            detail = ""
            if cm == (20, 10):
                self.channels.add(ch)
                self.send(method(ch, (20, 11), longstr("")))
            elif cm == (20, 40):
                self.channels.discard(ch)
                self.send(method(ch, (20, 41)))
            elif cm == (20, 41):
                pass
            elif cm == (85, 10):
                self.confirming.add(ch)
                self.publish_seq[ch] = 0
                if not r.u8() & 1:
                    self.send(method(ch, (85, 11)))
            elif cm == (40, 10):
                r.u16(); detail = r.shortstr(); r.shortstr()
                if not r.u8() & 16:
                    self.send(method(ch, (40, 11)))
            elif cm == (50, 10):
                r.u16(); q = r.shortstr(); bits = r.u8()
                detail = q + (" passive" if bits & 1 else "")
                if not bits & 16:
                    self.send(method(ch, (50, 11), shortstr(q) + struct.pack(">II", 0, 0)))
            elif cm == (50, 20):
                r.u16(); detail = r.shortstr()
                r.shortstr(); r.shortstr()
                if not r.u8() & 1:
                    self.send(method(ch, (50, 21)))
            elif cm == (60, 10):
                r.u32(); detail = "prefetch=%d" % r.u16()
                self.send(method(ch, (60, 11)))
            elif cm == (60, 20):
                r.u16(); q = r.shortstr(); tag = r.shortstr(); bits = r.u8()
                self.consumers += 1
                tag = tag or "ctag-%d.%d" % (self.n, self.consumers)
                self.consumer = (ch, tag)
                detail = "%s %s" % (q, tag)
                if not bits & 8:
                    self.send(method(ch, (60, 21), shortstr(tag)))
            elif cm == (60, 30):
                tag = r.shortstr()
                detail = tag
                if not r.u8() & 1:
                    self.send(method(ch, (60, 31), shortstr(tag)))
            elif cm == (60, 80):
                tag = r.u64(); detail = "%d multiple=%d" % (tag, r.u8() & 1)
            elif cm == (60, 90):
                tag = r.u64(); detail = "%d requeue=%d" % (tag, r.u8() & 1)
            elif cm == (60, 120):
                tag = r.u64(); bits = r.u8()
                detail = "%d multiple=%d requeue=%d" % (tag, bits & 1, (bits >> 1) & 1)
            elif cm == (60, 40):
                r.u16(); ex = r.shortstr(); rk = r.shortstr()
                detail = "%s %s" % (ex, rk)
                _, _, hdr = self.read_frame()
                size = struct.unpack(">Q", hdr[4:12])[0]
                got = 0
                while got < size:
                    _, _, body = self.read_frame()
                    got += len(body)
                if ch in self.confirming:
                    self.publish_seq[ch] += 1
                    self.send(method(ch, (60, 80), struct.pack(">QB", self.publish_seq[ch], 0)))
            elif cm == (10, 50):
                record("recv %d %s" % (self.n, name))
                self.send(method(0, (10, 51)))
                raise Closed()
            elif cm == (10, 51):
                record("recv %d %s" % (self.n, name))
                raise Closed()
            record("recv %d %s%s" % (self.n, name, " " + detail if detail else ""))
            if cm == (60, 20):
                on_consume(ch)
            elif cm == (60, 80) and on_ack:
                on_ack(tag)


# ---- scenarios ----------------------------------------------------------------
# Each is a function (conn) -> None, run after accept; it returns or raises
# Closed when the connection is over.

def sc_ok(c):
    """Well behaved: one valid task after the first consume, then idle."""
    c.handshake()
    c.serve(lambda ch: c.consumers == 1 and c.deliver_task(ch, args=("ok", 0)))


def sc_bigframe(c):
    """Tunes frame_max 131072, then sends a 1 MiB method frame."""
    c.handshake()

    def big(ch):
        c.do("frame of 1 MiB on channel %d" % ch)
        c.send(method(ch, (60, 60), b"\x00" * (1 << 20)))
        time.sleep(0.5)
        raise Closed()
    c.serve(big)


def trickle(c, ch, seconds, chunk=65536, pause=0.02):
    end = time.monotonic() + seconds
    sent = 0
    while time.monotonic() < end:
        c.send(frame(FRAME_BODY, ch, b"\x00" * chunk))
        sent += chunk
        time.sleep(pause)
    c.do("trickled %d bytes" % sent)


def sc_hugebody(c):
    """Conn 1: a content header of 2^62 bytes, a trickle of body for 2 s,
    then a hang-up. Conn 2 on: a header of 512 MiB + 1 byte, the whole body
    sent, then a valid task."""
    c.handshake()

    def huge(ch):
        if c.consumers > 1:
            return
        _, props, _ = celery_task("amqpt.mark", ["huge", 0])
        if c.n == 1:
            tag = c.deliver(ch, props, b"", body_size=1 << 62)
            c.do("deliver %d body_size=2^62 trickle" % tag)
            trickle(c, ch, 2.0)
            raise Closed()
        size = 512 * 1024 * 1024 + 1
        tag = c.deliver(ch, props, b"", body_size=size)
        c.do("deliver %d body_size=%d" % (tag, size))
        piece = frame(FRAME_BODY, ch, b"\x00" * (FRAME_MAX - 8))
        left = size
        while left >= FRAME_MAX - 8:
            c.send(piece)
            left -= FRAME_MAX - 8
        c.send(frame(FRAME_BODY, ch, b"\x00" * left))
        c.do("sent the whole body")
        c.deliver_task(ch, args=("after-huge", 0))
    c.serve(huge)


def garbage_steps():
    """(name, action(c, ch)) run after consume-ok, one per connection."""
    def random_bytes(c, ch):
        c.send(bytes([0x01, 0x00, 0x01]) + os.urandom(4093))
        raise Closed()

    def bad_frame_end(c, ch):
        c.send(method(ch, (60, 80), struct.pack(">QB", 1, 0))[:-1] + b"\x00")
        time.sleep(0.3)
        raise Closed()

    def unknown_frame_type(c, ch):
        # rabbitmq-c ignores frame types it does not know: the link lives
        c.send(frame(9, ch, b"what is this"))
        c.deliver_task(ch, args=("after-unknown-type", 0))

    def unknown_method(c, ch):
        c.send(method(ch, (77, 77), b"\x00" * 16))
        time.sleep(0.3)
        raise Closed()

    def deliver_unopened_channel(c, ch):
        # a small message on channel 7, never opened: skipped; then a task
        _, props, body = celery_task("amqpt.mark", ["on-channel-7", 0])
        c.deliver(7, props, body)
        c.deliver_task(ch, args=("after-channel-7", 0))

    def deliver_unopened_channel_huge(c, ch):
        # a content header of 2^62 bytes on channel 9, never opened
        _, props, _ = celery_task("amqpt.mark", ["huge-on-9", 0])
        c.deliver(9, props, b"", body_size=1 << 62)
        trickle(c, 9, 1.0)
        raise Closed()

    def return_huge(c, ch):
        # a basic.return nobody asked for, announcing 2^62 bytes
        args = struct.pack(">H", 312) + shortstr("NO_ROUTE") + shortstr("") + shortstr("x")
        c.send(method(ch, (60, 50), args) + content_header(ch, 1 << 62))
        trickle(c, ch, 1.0)
        raise Closed()

    def truncated(c, ch):
        c.send(method(ch, (60, 60), b"\x00" * 64)[:20])
        raise Closed()

    return [("random bytes", random_bytes), ("bad frame end", bad_frame_end),
            ("unknown frame type", unknown_frame_type), ("unknown method", unknown_method),
            ("deliver on unopened channel", deliver_unopened_channel),
            ("huge deliver on unopened channel", deliver_unopened_channel_huge),
            ("huge basic.return", return_huge), ("truncated frame", truncated)]


def sc_garbage(c):
    """Connection N gets garbage step N; past the last, one valid task."""
    steps = garbage_steps()
    c.handshake()

    def act(ch):
        if c.consumers > 1:
            return
        if c.n > len(steps):
            c.deliver_task(ch, args=("after-garbage", 0))
            return
        name, fn = steps[c.n - 1]
        c.do("garbage %s" % name)
        fn(c, ch)

    def acked(tag):
        if c.n <= len(steps):  # the step delivered a task and got its ack: next step
            time.sleep(0.1)
            raise Closed()
    c.serve(act, acked)


def sc_close(c):
    """Conn 1: connection.close 320 after consume. Conn 2: channel.close 406;
    on the new channel a task, and once it is acked, channel.close 404; on
    the third channel another task."""
    c.handshake()

    def act(ch):
        if c.n == 1:
            c.close_connection(320, "CONNECTION_FORCED - broker forced connection closure "
                               "with reason 'shutdown'")
            return
        if c.consumers == 1:
            c.close_channel(ch, 406, "PRECONDITION_FAILED - unknown delivery tag 42", (60, 80))
        elif c.consumers == 2:
            c.deliver_task(ch, args=("after-406", 0))
        elif c.consumers == 3:
            c.deliver_task(ch, args=("after-404", 0))

    def acked(tag):
        if c.consumers == 2:
            time.sleep(1.5)  # the worker's fetch finds the channel quiet: a new episode
            c.close_channel(c.consumer[0], 404, "NOT_FOUND - no queue 'celery' in vhost '/'",
                            (50, 10))
    c.serve(act, acked)


def sc_vhost(c):
    """connection.open refused: 530 NOT_ALLOWED."""
    vhost = c.handshake(vhost_ok=False)
    c.close_connection(530, "NOT_ALLOWED - vhost %s not found" % vhost, (10, 40))
    try:
        c.expect((10, 51))
    except Closed:
        pass


SCENARIOS = {"ok": sc_ok, "bigframe": sc_bigframe, "hugebody": sc_hugebody,
             "garbage": sc_garbage, "close": sc_close, "vhost": sc_vhost}


def main():
    global RECORD
    if len(sys.argv) != 4 or sys.argv[1] not in SCENARIOS:
        sys.exit("usage: hostile_amqp_server.py {%s} PORT_FILE RECORD_FILE"
                 % "|".join(SCENARIOS))
    scenario = SCENARIOS[sys.argv[1]]
    RECORD = open(sys.argv[3], "a")
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", int(os.environ.get("HOSTILE_PORT", "0"))))
    ls.listen(16)
    tmp = sys.argv[2] + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d\n" % ls.getsockname()[1])
    os.rename(tmp, sys.argv[2])
    n = 0
    while True:
        s, _ = ls.accept()
        n += 1
        record("conn %d" % n)
        c = Conn(s, n, sys.argv[1])
        try:
            scenario(c)
        except Closed:
            pass
        except Exception as e:  # a bug here must show, not hang the test
            record("server-error %d %r" % (n, e))
        record("eof %d" % n)
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()


if __name__ == "__main__":
    main()
