"""Errors of the event store. Each names the file, the byte offset and what to
do next, so an operator can act on the message alone."""

from __future__ import annotations

import os

__all__ = ["EventStoreError", "CorruptRecordError", "WalSequenceError", "WriterDiedError",
           "AtomicWriteError", "PrunedRangeError"]


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
    Every waiter for ``durable_seq`` gets this error; the engine must stop."""


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
