#!/usr/bin/env python3
"""Seeds fuzz/corpus/ from docs/PROTOCOL.md's hex vectors and a few HTTP requests.

Run from the repository root; it rewrites only the seed files (seed-*), so what the
fuzzers added to the corpus stays.
"""
import os
import re

doc = open("docs/PROTOCOL.md").read()
vectors = [bytes.fromhex(m.replace(" ", "")) for m in re.findall(r"^    ((?:[0-9A-F]{2} )*[0-9A-F]{2})$", doc, re.M)]


def write(target, name, data):
    folder = os.path.join("fuzz", "corpus", target)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"seed-{name}"), "wb") as f:
        f.write(data)


for i, v in enumerate(vectors):
    write("request_decoder", f"vector-{i:02}", v)
# The state machine: a split seed byte, then streams of several frames.
everything = b"".join(vectors)
write("binary_stream", "all-vectors", b"\x07" + everything)
for i, v in enumerate(vectors):
    write("binary_stream", f"vector-{i:02}-twice", bytes([i]) + v + v)
http = [
    b"GET /buy/ticket?event=1&user=42 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /buy/ticket HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"POST /buy/ticket HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
    b"GET /buy/ticket HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"GET /other?user=x HTTP/1.1\r\n\r\n",
]
for i, h in enumerate(http):
    write("http_parser", f"request-{i}", h)
print(f"{len(vectors)} protocol vectors, {len(http)} HTTP requests")
