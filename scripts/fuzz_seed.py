#!/usr/bin/env python3
"""Seeds fuzz/corpus/ from docs/PROTOCOL.md's hex vectors, a few HTTP requests and a few
journal record bodies (docs/DURABILITY.md's kinds 4, 7, 13 and 14).

Run from the repository root; it rewrites only the seed files (seed-*), so what the
fuzzers added to the corpus stays.
"""
import os
import re
import struct

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


def varint(n):
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def zigzag(step):
    """A difference of two u64s, wrapped to i64, zigzag-encoded."""
    step &= (1 << 64) - 1
    signed = step - (1 << 64) if step >= 1 << 63 else step
    return ((signed << 1) ^ (signed >> 63)) & ((1 << 64) - 1)


# Journal record bodies (what follows a frame whose checksum matched): a run of three
# orders (kind 13) and of three holds taken (kind 14), a Sale (kind 4), a Cancelled
# (kind 7).
shard_ids = 3 << 44
orders = [
    (shard_ids + 1, 1, 1_000_001, 1, 1_765_000_000_000),
    (shard_ids + 2, 1, 1_007_920, 1, 1_765_000_000_000),
    (shard_ids + 3, 2, 42, 4, 1_765_000_000_003),
]
run = bytearray([13]) + struct.pack(">H", len(orders))
before = (0, 0, 0)
for order_id, event, user, qty, ms in orders:
    run += varint(user) + varint(zigzag(order_id - before[0])) + varint(zigzag(event - before[1]))
    run += varint(qty) + varint(zigzag(ms - before[2]))
    before = (order_id, event, ms)
write("journal_record", "run-of-three", bytes(run))
# The same entries as a run of holds taken (kind 14): the time is each hold's deadline.
write("journal_record", "holds-run-of-three", bytes([14]) + bytes(run[1:]))
write("journal_record", "sale", bytes([4]) + struct.pack(">QIQHQ", shard_ids + 9, 1, 77, 2, 1_765_000_000_000))
write("journal_record", "cancelled", bytes([7]) + struct.pack(">QQ", shard_ids + 10, 1_765_000_000_001))
print(f"{len(vectors)} protocol vectors, {len(http)} HTTP requests, 4 journal records")
