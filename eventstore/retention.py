"""WAL retention: the record of a prune (``wal/retention.json``), the lock
that serialises pruning, and the removal of whole sealed segments.

What may be removed (the floor: snapshots, Kafka watermarks, the retention
policy) is decided in ``recovery.retention``; this module only knows
sequence numbers and files. The file format is in ``FORMAT.md``
("Retention").

Crash safety: a prune first writes ``retention.json`` (``atomic_write``:
temp file, fsync, rename, fsync dir) naming ``pruned_before_seq``, the first
seq kept, and only then unlinks the segments wholly before it, then fsyncs
the directory. A crash in between leaves segments the record already counts
as pruned: readers ignore them (:func:`retained_segments`) and the next prune
removes them. So readers tell "pruned on purpose" (below
``pruned_before_seq``) from "missing" (a WAL that starts later than the
record says: damage).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import time
from dataclasses import dataclass, field
from typing import Iterator, Optional

from .errors import EventStoreError, PrunedRangeError
from .fsio import atomic_write, fsync_dir
from .segment import SegmentInfo, list_segments

__all__ = ["RETENTION_FILE", "RETENTION_LOCK", "RETENTION_VERSION", "RetentionRecord", "read_retention",
           "write_retention", "retained_segments", "retention_lock", "check_not_pruned",
           "RetentionFormatError", "remove_segments"]

RETENTION_FILE = "retention.json"
RETENTION_LOCK = "retention.lock"
RETENTION_FORMAT = "evengine-wal-retention"
RETENTION_VERSION = 1


class RetentionFormatError(EventStoreError):
    """``retention.json`` exists but cannot be read: refuse to guess what was pruned."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"WAL retention record {path} is unreadable ({reason}); it says which seqs were "
                         f"pruned on purpose: restore it from a backup (or, if no segment was ever pruned, "
                         f"remove it)")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class RetentionRecord:
    """What the last prune recorded.

    Attributes:
        pruned_before_seq: the first seq kept: every seq below it was pruned on
            purpose (the WAL's first retained segment starts there).
        base_snapshot_seq: the snapshot the retained WAL continues (kept by
            snapshot retention as long as this record names it), or ``None``.
        pruned_at_ns: wall-clock time of the prune (ns since the epoch, UTC).
        rule: which rule set the floor (for operators).
        path: the file it was read from.
    """

    pruned_before_seq: int
    base_snapshot_seq: Optional[int]
    pruned_at_ns: int
    rule: str = ""
    removed: tuple = field(default_factory=tuple)
    path: str = ""

    @property
    def pruned_at(self) -> str:
        """``pruned_at_ns`` as ISO 8601 UTC."""
        return (_dt.datetime.fromtimestamp(self.pruned_at_ns / 1e9, _dt.timezone.utc)
                .isoformat(timespec="seconds").replace("+00:00", "Z"))


def _path(wal_dir: str) -> str:
    return os.path.join(wal_dir, RETENTION_FILE)


def read_retention(wal_dir: str) -> Optional[RetentionRecord]:
    """The retention record of ``wal_dir``, or ``None`` if nothing was ever pruned.

    Raises:
        RetentionFormatError: the file exists but is damaged or of an unknown version.
    """
    path = _path(wal_dir)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise RetentionFormatError(path, f"not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != RETENTION_FORMAT:
        raise RetentionFormatError(path, "not an evengine retention record")
    if doc.get("version") != RETENTION_VERSION:
        raise RetentionFormatError(path, f"version {doc.get('version')!r}; this build reads {RETENTION_VERSION}")
    try:
        before = int(doc["pruned_before_seq"])
        base = doc.get("base_snapshot_seq")
        base = None if base is None else int(base)
        at = int(doc["pruned_at_ns"])
    except (KeyError, TypeError, ValueError) as exc:
        raise RetentionFormatError(path, f"field missing or not an integer: {exc}") from None
    if before < 1 or (base is not None and base + 1 < before):
        raise RetentionFormatError(path, f"inconsistent: pruned_before_seq {before}, base_snapshot_seq {base}")
    return RetentionRecord(before, base, at, str(doc.get("rule", "")), tuple(doc.get("removed", ())), path)


def write_retention(wal_dir: str, pruned_before_seq: int, base_snapshot_seq: Optional[int], *,
                    rule: str = "", removed: tuple = (), pruned_at_ns: Optional[int] = None) -> RetentionRecord:
    """Record (durably, atomically) that every seq below ``pruned_before_seq`` is pruned.
    Call it before unlinking anything."""
    at = time.time_ns() if pruned_at_ns is None else pruned_at_ns
    doc = {"format": RETENTION_FORMAT, "version": RETENTION_VERSION, "pruned_before_seq": pruned_before_seq,
           "base_snapshot_seq": base_snapshot_seq, "pruned_at_ns": at, "rule": rule,
           "removed": list(removed)}
    rec = RetentionRecord(pruned_before_seq, base_snapshot_seq, at, rule, tuple(removed), _path(wal_dir))
    doc["pruned_at"] = rec.pruned_at
    atomic_write(_path(wal_dir), (json.dumps(doc, indent=1) + "\n").encode())
    return rec


def retained_segments(wal_dir: str, record: Optional[RetentionRecord] = None) -> list[SegmentInfo]:
    """:func:`list_segments` without the segments a prune already counts as
    removed (wholly before ``pruned_before_seq``; left by a crash between the
    record and the unlinks)."""
    segs = list_segments(wal_dir)
    if record is None:
        record = read_retention(wal_dir)
    if record is None:
        return segs
    k = 0
    while k + 1 < len(segs) and segs[k + 1].first_seq <= record.pruned_before_seq:
        k += 1
    return segs[k:]


def check_not_pruned(where: str, record: Optional[RetentionRecord], seq: int,
                     earliest: Optional[int] = None) -> None:
    """Raise :class:`PrunedRangeError` if ``seq`` lies in the pruned range
    (below ``earliest``, by default the record's ``pruned_before_seq``)."""
    if record is None:
        return
    first = record.pruned_before_seq if earliest is None else earliest
    if seq < first:
        raise PrunedRangeError(where, seq, first, record.pruned_before_seq, record.pruned_at, record.path)


@contextlib.contextmanager
def retention_lock(wal_dir: str, *, blocking: bool = True) -> Iterator[bool]:
    """Hold ``wal/retention.lock`` (``flock``): a WAL prune and the engine's
    snapshot pruning take it, so that neither removes what the other is
    about to rely on. Yields True when held; with ``blocking=False`` yields
    False at once if another process holds it (the caller skips its prune)."""
    os.makedirs(wal_dir, exist_ok=True)
    fd = os.open(os.path.join(wal_dir, RETENTION_LOCK), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def remove_segments(wal_dir: str, segments: list[SegmentInfo]) -> int:
    """Unlink sealed segments (already recorded as pruned), then fsync the
    directory. Returns the bytes freed. Refuses raw segments."""
    freed = 0
    for info in segments:
        if not info.sealed:
            raise ValueError(f"refusing to remove {info.path}: only sealed segments are pruned")
        try:
            freed += os.stat(info.path).st_size
            os.unlink(info.path)
        except FileNotFoundError:
            pass
    if segments:
        fsync_dir(wal_dir)
    return freed
