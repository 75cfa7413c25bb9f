"""Redis's FCALL time at the moment an event sells out (make bench's ledger baseline rows).

usage: fcall_usec_at_sellout.py PORT EVENT_ID STOCK [TIMEOUT_S]

Polls Redis on 127.0.0.1:PORT every 2 ms and prints, as JSON, INFO commandstats'
`cmdstat_fcall` usec and calls as they stood when the event's meta hash first said
`sold` >= STOCK: the rush's selling calls, without what the client does after the sale
(loadgen reads ORDERS of a sample of buyers, which are FCALLs too). Prints
{"usec": null, ...} if the event has not sold out within TIMEOUT_S (default 60) seconds.
Plain sockets, so it runs where the redis Python package is not installed.
"""
import json
import socket
import sys
import time


def command(sock, reader, *words):
    """Sends one command and returns its reply: a string, or None for a nil bulk."""
    parts = [b"*%d\r\n" % len(words)]
    for word in words:
        data = word.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    sock.sendall(b"".join(parts))
    line = reader.readline()
    if not line:
        raise ConnectionError("Redis closed the connection")
    kind, rest = line[:1], line[1:].strip()
    if kind == b"$":
        length = int(rest)
        if length < 0:
            return None
        return reader.read(length + 2)[:-2].decode()
    if kind == b"-":
        raise RuntimeError(rest.decode())
    return rest.decode()


def fcall_stats(info):
    for line in info.splitlines():
        if line.startswith("cmdstat_fcall:"):
            fields = dict(part.split("=", 1) for part in line.split(":", 1)[1].split(","))
            return int(fields["usec"]), int(fields["calls"])
    return 0, 0


def main():
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__)
    try:
        port, event, stock = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
        timeout = float(sys.argv[4]) if len(sys.argv) == 5 else 60.0
    except ValueError:
        sys.exit("fcall_usec_at_sellout.py: PORT, EVENT_ID and STOCK must be whole numbers\n" + __doc__)
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    except OSError as e:
        sys.exit(f"fcall_usec_at_sellout.py: no Redis on 127.0.0.1:{port}: {e}")
    reader = sock.makefile("rb")
    meta = "{ev:%d}:meta" % event
    deadline = time.monotonic() + timeout
    result = {"usec": None, "calls": None, "stock": stock}
    while time.monotonic() < deadline:
        sold = command(sock, reader, "HGET", meta, "sold")
        if sold is not None and int(sold) >= stock:
            # Read after `sold`: every selling call has ended by then, and at most the
            # few calls of the last 2 ms after the sale (refusals, STOCK asks) come along.
            usec, calls = fcall_stats(command(sock, reader, "INFO", "commandstats"))
            result.update(usec=usec, calls=calls)
            break
        time.sleep(0.002)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
