"""The durable watermark file: how far the WAL is on disk, for every reader.

The engine's syncer process publishes ``durable_seq`` (the last sequence
number fdatasync'ed) after every fsync into one shared page. That page is the
file ``<wal-dir>/watermark`` (format: FORMAT.md, "The watermark file"),
mapped ``MAP_SHARED`` by the writer and the syncer, so a reader in any
process can tell which whole frames are durable and show nothing past them
(time travel must never show an event a power loss could still take back).

The file is preallocated (``posix_fallocate``) when created, so stores into
its mapping never need a new block: a full disk cannot turn them into SIGBUS.
It names the writer's pid and that process's start time; a reader trusts the
watermark only while that very process lives. Once it is gone (closed, or
killed), every whole frame on disk is what recovery keeps, and readers take
them all.
"""

from __future__ import annotations

import mmap
import os
import struct
from typing import Optional

from .errors import CorruptRecordError

__all__ = ["WATERMARK_NAME", "WATERMARK_VERSION", "create_watermark", "read_durable_seq", "release_watermark"]

WATERMARK_NAME = "watermark"
WATERMARK_VERSION = 1
_MAGIC = b"EVWMARK\x00"
_HEAD = struct.Struct("<8sHHIQ")          # magic, version, pad, writer pid, writer start time (clock ticks)
STATE_OFFSET = 24
"""Where ``durable_seq u64, errno u64, fsyncs u64, fsync ns u64`` start (the syncer's fields)."""
_STATE = struct.Struct("<QQQQ")


def _start_time(pid: int) -> Optional[int]:
    """Field 22 of ``/proc/<pid>/stat`` (start time in clock ticks since boot), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may hold spaces
    fields = stat[stat.rindex(b")") + 2:].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def create_watermark(wal_dir: str, durable_seq: int) -> tuple[int, mmap.mmap]:
    """Create (or take over) ``<wal_dir>/watermark`` for this process as the
    writer, with ``durable_seq``; return ``(fd, shared mapping of one page)``.

    Raises:
        OSError: the file cannot be created or its page reserved (a full disk).
    """
    path = os.path.join(wal_dir, WATERMARK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.posix_fallocate(fd, 0, mmap.PAGESIZE)
        page = mmap.mmap(fd, mmap.PAGESIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    except BaseException:
        os.close(fd)
        raise
    pid = os.getpid()
    page[STATE_OFFSET:STATE_OFFSET + _STATE.size] = _STATE.pack(durable_seq, 0, 0, 0)
    page[0:_HEAD.size] = _HEAD.pack(_MAGIC, WATERMARK_VERSION, 0, pid, _start_time(pid) or 0)
    return fd, page


def release_watermark(page: mmap.mmap) -> None:
    """Say no writer owns the watermark any more (after the final fsync)."""
    page[16:24] = struct.pack("<Q", 0)
    page[12:16] = struct.pack("<I", 0)


def read_durable_seq(wal_dir: str) -> Optional[int]:
    """The durable seq a live writer publishes for ``wal_dir``, or ``None`` when no
    writer runs (no file, released, or its process is gone or is another one
    with the same pid): then every whole frame on disk is durable as far as
    recovery goes. Cost: one open and one 64-byte read.

    Raises:
        CorruptRecordError: the file is not a watermark this build reads (names it, offset 0).
    """
    path = os.path.join(wal_dir, WATERMARK_NAME)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        while True:
            raw = os.pread(fd, 64, 0)
            if len(raw) < STATE_OFFSET + 8:
                return None               # being created
            again = os.pread(fd, 64, 0)
            if again == raw:              # not torn by a store in progress
                break
    finally:
        os.close(fd)
    magic, version, _pad, pid, started = _HEAD.unpack_from(raw)
    if magic == b"\x00" * 8:
        return None                       # being created
    if magic != _MAGIC or version != WATERMARK_VERSION:
        raise CorruptRecordError(path, 0, f"not an evengine watermark file of version {WATERMARK_VERSION} "
                                 f"(magic {magic!r}, version {version})")
    if pid == 0 or _start_time(pid) != started:
        return None
    return _STATE.unpack_from(raw, STATE_OFFSET)[0]
