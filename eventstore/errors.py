"""Errors of the event store. Each names the file, the byte offset and what to
do next, so an operator can act on the message alone."""

from __future__ import annotations

import errno
import os
from typing import Optional

__all__ = ["EventStoreError", "CorruptRecordError", "WalSequenceError", "WriterDiedError",
           "AtomicWriteError", "WalWriteError", "describe_os_error", "PrunedRangeError"]


def describe_os_error(exc: BaseException) -> str:
    """``"No space left on device (errno 28, ENOSPC)"`` for an ``OSError``;
    the exception's text otherwise."""
    code = getattr(exc, "errno", None)
    if isinstance(code, int) and code:
        return f"{os.strerror(code)} (errno {code}, {errno.errorcode.get(code, '?')})"
    return str(exc) or type(exc).__name__


class EventStoreError(Exception):
    """Base of every error raised by ``eventstore``."""

    retriable = False


class CorruptRecordError(EventStoreError):
    """A batch frame before the WAL's tail fails its checks.

    Attributes:
        segment: path of the segment file.
        file_offset: byte offset of the bad frame inside the (decompressed) segment.
        reason: what failed (header checksum, payload checksum, length, decode).
    """

    def __init__(self, segment: str, file_offset: int, reason: str) -> None:
        super().__init__(
            f"corrupt WAL record in {segment} at byte {file_offset}: {reason}. "
            f"Data before this offset is intact; run `evengine verify` to see the extent, "
            f"restore the segment from a replica or backup, or move it (and every later "
            f"segment) aside to recover up to the previous record")
        self.segment = segment
        self.file_offset = file_offset
        self.reason = reason


class WalSequenceError(EventStoreError):
    """Sequence numbers in the WAL (or given to the writer) are not gap-free."""

    def __init__(self, segment: str, file_offset: int, expected: int, actual: int) -> None:
        super().__init__(f"WAL sequence gap in {segment} at byte {file_offset}: expected seq {expected}, found {actual}")
        self.segment = segment
        self.file_offset = file_offset
        self.expected = expected
        self.actual = actual


class WriterDiedError(EventStoreError):
    """The group-commit syncer failed or exited: nothing more can become durable.
    Every waiter for ``durable_seq`` gets this error; the engine must stop.

    An ``fdatasync`` that failed is one of these, never retried: after a failed
    writeback Linux may mark the dirty pages clean (or drop them), so a second
    fsync can succeed with the data lost ("fsyncgate", PostgreSQL 2018; its
    answer, and ours, is to stop and recover from what is on disk)."""


class WalWriteError(EventStoreError):
    """Handing a frame (or a new segment's header) to the OS failed: a full
    disk (ENOSPC), a quota (EDQUOT), an I/O error (EIO), or a short write.

    Nothing of the frame stays in the file: the writer cut the segment back to
    where the frame began, so the WAL on disk is whole. The frame stays queued
    in the writer, and the next :meth:`~eventstore.writer.WalWriter.flush`
    writes it again (``retriable``): an engine stops acknowledging, and a
    service waits for space. Its events were never durable, so nothing was
    acknowledged for them.

    Attributes:
        path: the segment file.
        file_offset: byte offset where the frame was to go (its size is that again).
        errno / strerror: the OS error (``errno.EIO`` for a short write).
        free_bytes: bytes free to unprivileged users on that file system
            (``statvfs``), or None if unknown.
        first_seq, last_seq: the events not written (``first_seq > last_seq``
            for a segment header).
        durable_seq: the watermark when it failed: everything acknowledged.
    """

    retriable = True

    def __init__(self, path: str, file_offset: int, cause: BaseException, *, first_seq: int, last_seq: int,
                 durable_seq: int, free_bytes: Optional[int]) -> None:
        code = getattr(cause, "errno", None) or errno.EIO
        what = (f"events {first_seq}..{last_seq} are not on disk" if last_seq >= first_seq
                else "a new segment could not be started")
        free = "unknown" if free_bytes is None else f"{free_bytes:,} bytes"
        text = (f"WAL write failed: {describe_os_error(cause) if getattr(cause, 'errno', None) else cause} "
                f"writing {path} at byte {file_offset}; free space: {free}; {what}; "
                f"nothing after seq {durable_seq} was acknowledged")
        super().__init__(text)
        self.errno = code
        self.strerror = os.strerror(code)
        self.path = path
        self.file_offset = file_offset
        self.free_bytes = free_bytes
        self.first_seq = first_seq
        self.last_seq = last_seq
        self.durable_seq = durable_seq
        self.message = text

    def __str__(self) -> str:
        return self.message


class AtomicWriteError(EventStoreError):
    """``atomic_write`` failed at the named step (write, fsync, rename, fsync dir)."""

    def __init__(self, path: str, step: str, cause: BaseException) -> None:
        super().__init__(f"atomic write of {path} failed at step {step!r}: {cause}")
        self.path = path
        self.step = step
        self.cause = cause


class PrunedRangeError(EventStoreError):
    """A read asked for sequence numbers that a WAL prune removed on purpose
    (``wal/retention.json``, see ``FORMAT.md``), or a state before the
    earliest one the retained WAL and snapshots can rebuild.

    Attributes:
        where: the WAL (or data) directory.
        requested_seq: the seq asked for.
        earliest_seq: the earliest seq available for this kind of read.
        pruned_before_seq: every seq below it was pruned.
        pruned_at: when (ISO 8601 UTC).
        record: path of the retention record.
    """

    def __init__(self, where: str, requested_seq: int, earliest_seq: int, pruned_before_seq: int,
                 pruned_at: str, record: str, what: str = "seq available") -> None:
        super().__init__(
            f"seqs 1..{pruned_before_seq - 1} of {where} were pruned ({os.path.basename(record) or record}, "
            f"{pruned_at}); the earliest {what} is {earliest_seq} (asked for seq {requested_seq})")
        self.where = where
        self.requested_seq = requested_seq
        self.earliest_seq = earliest_seq
        self.pruned_before_seq = pruned_before_seq
        self.pruned_at = pruned_at
        self.record = record
        self.what = what
