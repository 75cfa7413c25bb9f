#!/usr/bin/env python3
"""Server memory per connection that never reads its answers, and whether it comes back.

Usage: scripts/conn_memory.py PATH/TO/ticketd

Starts the binary (2 shards, --http, a temp data dir), opens 400 binary connections that
pipeline STOCK requests until the server stops reading them, reads the server's VmRSS,
closes them, reads it again two seconds later; then the same with HTTP GETs. Used to
compare builds (docs/BENCHMARKS.md); tests/memory.rs asserts the bound.
"""
import re
import socket
import struct
import subprocess
import sys
import tempfile
import time

CONNS = 400


def rss(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise SystemExit("no VmRSS")


def fill(target, batch):
    host, port = target.rsplit(":", 1)
    streams = []
    for _ in range(CONNS):
        s = socket.create_connection((host, int(port)))
        s.setblocking(False)
        streams.append(s)
    quiet = 0
    while quiet < 5:
        sent = 0
        for s in streams:
            while True:
                try:
                    sent += s.send(batch)
                except BlockingIOError:
                    break
        quiet = quiet + 1 if sent == 0 else 0
        time.sleep(0.05)
    return streams


def main():
    binary = sys.argv[1]
    server = subprocess.Popen(
        [binary, "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--event", "1:1000",
         "--shards", "2", "--data-dir", tempfile.mkdtemp()],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    log = ""
    while "ticketd started" not in log:
        line = server.stderr.readline()
        if not line:
            raise SystemExit(f"ticketd did not start:\n{log}")
        log += line
    addr = re.search(r"addr=(\S+)", log).group(1)
    http = re.search(r"http=(?:Some\()?([0-9.]+:\d+)", log).group(1)
    stock = struct.pack(">IBQI", 13, 0x06, 1, 1) * 2048
    get = b"GET /buy/ticket?user=1 HTTP/1.1\r\nHost: t\r\n\r\n" * 512
    baseline = rss(server.pid)
    for name, target, batch in [("binary", addr, stock), ("http", http, get)]:
        before = rss(server.pid)
        streams = fill(target, batch)
        peak = rss(server.pid)
        for s in streams:
            s.close()
        time.sleep(2)
        after = rss(server.pid)
        print(f"{name}: {CONNS} connections that never read: RSS {before} -> {peak} KiB "
              f"({(peak - before) // CONNS} KiB each); 2 s after they closed {after} KiB "
              f"(started at {baseline} KiB)")
    server.terminate()
    server.wait()


if __name__ == "__main__":
    main()
