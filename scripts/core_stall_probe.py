#!/usr/bin/env python3
"""How much of a core disk writes submitted from it take away (docs/BENCHMARKS.md,
"why writing from the server's core stalls it").

    python3 scripts/core_stall_probe.py SPIN_CORE WRITE_CORE PIECE_KIB [MODE]

A spinner pinned to SPIN_CORE times its own iterations for 3 s; 0.3 s in, a writer
pinned to WRITE_CORE writes 300 MB to a file in the current directory in PIECE_KIB
pieces, 0.5 ms apart, in MODE: `sfr` (sync_file_range after each piece, the journal
rotation's pattern; the default), `none` (one fdatasync at the end) or `direct`
(O_DIRECT). Prints the spinner's worst gap between two iterations and the total of its
gaps over 1 ms: time the core was not the spinner's. Run from a directory on the disk
under test; the file is deleted afterwards.
"""
import ctypes
import mmap
import os
import sys
import time

SYNC_FILE_RANGE_WRITE = 2


def spin(seconds):
    end = time.time() + seconds
    last = time.perf_counter()
    worst = gaps = 0.0
    while time.time() < end:
        now = time.perf_counter()
        gap = now - last
        last = now
        worst = max(worst, gap)
        if gap > 0.001:
            gaps += gap
    print(f"spinner: worst gap {worst * 1e3:.2f} ms, time in gaps > 1 ms {gaps * 1e3:.1f} ms")


def write(piece_kib, mode):
    size = piece_kib * 1024
    pieces = 300_000 // piece_kib
    flags = os.O_CREAT | os.O_WRONLY | os.O_TRUNC
    if mode == "direct":
        flags |= os.O_DIRECT
        buf = mmap.mmap(-1, size)  # page-aligned, as O_DIRECT needs
        buf.write(os.urandom(size))
    else:
        buf = os.urandom(size)
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    fd = os.open("core-stall-probe.tmp", flags)
    try:
        offset = 0
        for _ in range(pieces):
            os.write(fd, buf)
            if mode == "sfr":
                libc.sync_file_range(fd, ctypes.c_longlong(offset), ctypes.c_longlong(size),
                                     SYNC_FILE_RANGE_WRITE)
            offset += size
            time.sleep(0.0005)
        started = time.perf_counter()
        os.fdatasync(fd)
        print(f"writer: {pieces} x {piece_kib} KiB ({mode}), final sync "
              f"{(time.perf_counter() - started) * 1e3:.1f} ms")
    finally:
        os.close(fd)
        os.unlink("core-stall-probe.tmp")


def main():
    if len(sys.argv) < 4 or (len(sys.argv) > 4 and sys.argv[4] not in ("sfr", "none", "direct")):
        sys.exit(__doc__)
    try:
        spin_core, write_core, piece_kib = (int(a) for a in sys.argv[1:4])
    except ValueError:
        sys.exit(f"SPIN_CORE, WRITE_CORE and PIECE_KIB are whole numbers\n{__doc__}")
    mode = sys.argv[4] if len(sys.argv) > 4 else "sfr"
    if piece_kib <= 0 or piece_kib > 300_000:
        sys.exit("PIECE_KIB must be between 1 and 300000")
    spinner = os.fork()
    if spinner == 0:
        os.sched_setaffinity(0, {spin_core})
        spin(3.0)
        os._exit(0)
    time.sleep(0.3)
    os.sched_setaffinity(0, {write_core})
    write(piece_kib, mode)
    os.waitpid(spinner, 0)


if __name__ == "__main__":
    main()
