"""The WAL syncer process: fdatasync what the engine wrote, publish the watermark.

Started by :class:`eventstore.writer.WalWriter` as a fresh interpreter
(``python -I -S eventstore/syncer.py ...``), not forked from the engine: a
fork would share the engine's (large, growing) address space copy-on-write,
and the page-table and copy work of that sharing showed up here as
multi-millisecond stalls of the syncer. This file imports the standard
library only.

Protocol (all integers little-endian):
    requests, on ``req_fd``: 16-byte messages ``(segment first_seq u64,
        last seq written u64)``; EOF means the engine is gone: sync and exit.
    state, in the 4096-byte shared page of ``shm_fd`` (the file
        ``<wal>/watermark``, eventstore/watermark.py) at byte ``STATE``:
        ``durable_seq u64, errno u64 (0: healthy), fsyncs u64, ns spent in fsync u64``.
    wake-ups, on ``ack_fd`` (non-blocking): one byte per published watermark.

Usage: syncer.py WAL_DIR REQ_FD ACK_FD SHM_FD CPU (CPU -1: no pinning)
"""

import errno
import mmap
import os
import struct
import sys
import time

MSG = struct.Struct("<QQ")
SHM = struct.Struct("<QQQQ")
STATE = 24      # eventstore.watermark.STATE_OFFSET (this file imports the standard library only)


def segment_path(wal_dir: str, first_seq: int) -> str:
    # Same naming as eventstore.segment.segment_name (FORMAT.md, file names).
    return os.path.join(wal_dir, f"wal-{first_seq:020d}.seg")


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def run(wal_dir: str, req_fd: int, ack_fd: int, shm: mmap.mmap) -> None:
    fd = -1
    seg = -1
    pending = b""
    syncs = 0
    sync_ns = 0
    durable = SHM.unpack_from(shm, STATE)[0]
    while True:
        data = os.read(req_fd, 1 << 16)
        if not data:
            break
        pending += data
        n = len(pending) // MSG.size
        upto = None
        for i in range(n):
            msg_seg, msg_upto = MSG.unpack_from(pending, i * MSG.size)
            if msg_seg != seg:
                if fd >= 0:
                    os.fdatasync(fd)   # everything of the old segment was written before this message
                    os.close(fd)
                fd = os.open(segment_path(wal_dir, msg_seg), os.O_RDONLY)
                fsync_dir(wal_dir)     # the new segment's directory entry
                seg = msg_seg
            upto = msg_upto
        pending = pending[n * MSG.size:]
        if upto is None:
            continue
        t0 = time.perf_counter_ns()
        os.fdatasync(fd)
        syncs += 1
        sync_ns += time.perf_counter_ns() - t0
        durable = max(durable, upto)
        shm[STATE:STATE + SHM.size] = SHM.pack(durable, 0, syncs, sync_ns)
        try:
            os.write(ack_fd, b"\x01")
        except BlockingIOError:
            pass
    if fd >= 0:
        os.fdatasync(fd)


def main(argv: list) -> int:
    wal_dir, req_fd, ack_fd, shm_fd, cpu = argv[1], int(argv[2]), int(argv[3]), int(argv[4]), int(argv[5])
    shm = mmap.mmap(shm_fd, mmap.PAGESIZE)
    try:
        if cpu >= 0:
            os.sched_setaffinity(0, {cpu})
        try:
            # Wake ahead of the matching thread when both want a CPU. Needs
            # CAP_SYS_NICE (root); without it the syncer runs at normal priority.
            os.nice(-10)
        except OSError:
            pass
        os.set_blocking(ack_fd, False)
        run(wal_dir, req_fd, ack_fd, shm)
    except OSError as exc:
        shm[STATE + 8:STATE + 16] = struct.pack("<Q", exc.errno or errno.EIO)
        return 1
    except BaseException:
        shm[STATE + 8:STATE + 16] = struct.pack("<Q", errno.EIO)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
