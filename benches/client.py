#!/usr/bin/env python3
"""The proxy benchmark's outside client: a separate Python process with
blocking sockets and one thread per stream, as a bot written without
nsproxy in mind would be. Same modes and output as the Rust client of
benches/proxy.rs:

    client.py TARGET_IP [--socks IP:PORT USER PASSFILE] MODE ARGS...
    MODE: down STREAMS DECISECONDS | up STREAMS DECISECONDS | lat COUNT
          | conn PARALLEL COUNT

With --socks the client speaks SOCKS5 itself (username/password) to the
proxy: the baseline. Without it, it connects directly (inside an nsproxy
account). Only the standard library.
"""
import socket
import struct
import sys
import threading
import time

BULK_DOWN, BULK_UP, HTTP = 9001, 9002, 9003
REQUEST = b"GET / HTTP/1.1\r\nHost: b\r\n\r\n"
RESPONSE_LEN = 40


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed by peer")
        buf += chunk
    return buf


class Client:
    def __init__(self, target, socks):
        self.target = target
        self.socks = socks  # (host, port, user, password) or None

    def connect(self, port):
        if self.socks is None:
            s = socket.create_connection((self.target, port))
        else:
            host, pport, user, pw = self.socks
            s = socket.create_connection((host, pport))
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.sendall(b"\x05\x01\x02")
            if recv_exact(s, 2) != b"\x05\x02":
                raise ConnectionError("SOCKS5: username/password refused")
            u, p = user.encode(), pw.encode()
            s.sendall(bytes([1, len(u)]) + u + bytes([len(p)]) + p)
            if recv_exact(s, 2)[1] != 0:
                raise ConnectionError("SOCKS5: authentication failed")
            s.sendall(b"\x05\x01\x00\x01" + socket.inet_aton(self.target) + struct.pack(">H", port))
            head = recv_exact(s, 4)
            if head[1] != 0:
                raise ConnectionError(f"SOCKS5: connect refused ({head[1]})")
            recv_exact(s, {1: 4, 4: 16}.get(head[3], 4) + 2)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    def bulk(self, down, streams, dur):
        socks = [self.connect(BULK_DOWN if down else BULK_UP) for _ in range(streams)]
        totals = [0] * streams
        start = time.monotonic()

        def pump(i, s):
            buf = bytearray(256 * 1024)
            view = memoryview(buf)
            while time.monotonic() - start < dur:
                try:
                    n = s.recv_into(view) if down else s.send(view)
                except OSError:
                    break
                if n == 0:
                    break
                totals[i] += n

        threads = [threading.Thread(target=pump, args=(i, s)) for i, s in enumerate(socks)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - start
        for s in socks:
            s.close()
        return f"{sum(totals) / elapsed / 1e6:.1f}"

    def latency(self, count):
        s = self.connect(HTTP)
        v = []
        for i in range(count + 100):
            t = time.perf_counter()
            s.sendall(REQUEST)
            recv_exact(s, RESPONSE_LEN)
            if i >= 100:
                v.append((time.perf_counter() - t) * 1e6)
        s.close()
        return f"{pct(v, 0.5):.0f} {pct(v, 0.99):.0f}"

    def connections(self, par, count):
        results = []
        lock = threading.Lock()

        def worker():
            mine = []
            for _ in range(count // par):
                t = time.perf_counter()
                s = self.connect(HTTP)
                c = time.perf_counter()
                s.sendall(REQUEST)
                recv_exact(s, RESPONSE_LEN)
                w = time.perf_counter()
                s.close()
                mine.append(((w - t) * 1e6, (c - t) * 1e6, (w - c) * 1e6))
            with lock:
                results.extend(mine)

        start = time.monotonic()
        threads = [threading.Thread(target=worker) for _ in range(par)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rate = len(results) / (time.monotonic() - start)
        whole = [r[0] for r in results]
        conn = [r[1] for r in results]
        req = [r[2] for r in results]
        return f"{rate:.0f} {pct(whole, 0.5):.0f} {pct(whole, 0.99):.0f} {pct(conn, 0.5):.0f} {pct(req, 0.5):.0f}"


def pct(v, p):
    if not v:
        return 0
    v = sorted(v)
    return v[round((len(v) - 1) * p)]


def main(argv):
    target = argv[0]
    rest = argv[1:]
    socks = None
    if rest and rest[0] == "--socks":
        host, port = rest[1].rsplit(":", 1)
        with open(rest[3]) as f:
            socks = (host, int(port), rest[2], f.read().strip())
        rest = rest[4:]
    c = Client(target, socks)
    mode, nums = rest[0], [int(x) for x in rest[1:]]
    if mode == "down":
        out = c.bulk(True, nums[0], nums[1] / 10)
    elif mode == "up":
        out = c.bulk(False, nums[0], nums[1] / 10)
    elif mode == "lat":
        out = c.latency(nums[0])
    elif mode == "conn":
        out = c.connections(nums[0], nums[1])
    else:
        sys.exit(f"unknown mode {mode}")
    print(out)


if __name__ == "__main__":
    main(sys.argv[1:])
