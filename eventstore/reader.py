"""Read events back from the WAL, from any sequence number."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import msgpack

from .errors import CorruptRecordError
from .retention import RetentionRecord, check_not_pruned, read_retention, retained_segments
from .segment import (SEGMENT_HEADER_SIZE, Frame, SegmentInfo, TornTail, load_segment_bytes,
                      scan_frames)

__all__ = ["WalReader", "WalScan", "decode_frame"]


def decode_frame(frame: Frame, segment: str) -> tuple:
    """The ``frame.count`` payloads of one frame, as msgpack-decoded values
    (arrays become tuples).

    Raises:
        CorruptRecordError: the payload is not one array of exactly ``count`` values.
    """
    try:
        values = msgpack.unpackb(frame.payload, use_list=False, raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise CorruptRecordError(segment, frame.file_offset, f"payload does not decode: {exc}") from exc
    if type(values) is not tuple or len(values) != frame.count:
        raise CorruptRecordError(segment, frame.file_offset,
                                 f"frame declares {frame.count} events, payload holds "
                                 f"{len(values) if type(values) is tuple else 'no array'}")
    return values


@dataclass
class WalScan:
    """What a full scan of the WAL found.

    Attributes:
        first_seq: first sequence number held (1 for a WAL never truncated), or
            ``None`` if the WAL is empty.
        last_seq: last valid sequence number; for a WAL holding no event,
            the seq before its first segment's (0 for a new WAL).
        segments: the segments, oldest first.
        torn_tail: the incomplete write cut off the last segment, if any.
        frames: number of valid frames.
        retention: the prune record (``wal/retention.json``), if the WAL was pruned.
        problems: what does not add up without being corruption of a frame
            (a WAL that starts after the seq its retention record says).
    """

    first_seq: Optional[int]
    last_seq: int
    segments: list[SegmentInfo]
    torn_tail: Optional[TornTail]
    frames: int
    tail_end_offset: int = 0
    problems: list[str] = field(default_factory=list)
    retention: Optional[RetentionRecord] = None

    @property
    def pruned_before_seq(self) -> Optional[int]:
        """Every seq below it was pruned on purpose (``None``: never pruned)."""
        return None if self.retention is None else self.retention.pruned_before_seq


class WalReader:
    """Reads the WAL in ``wal_dir``.

    Readers see what is on disk: use it on a WAL no engine writes to, or read
    only up to the writer's ``durable_seq`` (later bytes may be a torn tail).

    A pruned WAL (``wal/retention.json``) starts at the record's
    ``pruned_before_seq``; segments wholly before it that a crash left are
    not read, and reading below it raises :class:`PrunedRangeError`.
    """

    def __init__(self, wal_dir: str) -> None:
        self.wal_dir = wal_dir

    def retention(self) -> Optional[RetentionRecord]:
        """The prune record, or ``None`` if the WAL was never pruned."""
        return read_retention(self.wal_dir)

    def segments(self, record: Optional[RetentionRecord] = None) -> list[SegmentInfo]:
        """The segments readers use: :func:`list_segments` minus those already pruned."""
        return retained_segments(self.wal_dir, record if record is not None else self.retention())

    def scan(self) -> WalScan:
        """Check every frame of every segment (CRCs, gap-free seqs) without decoding.

        Raises:
            CorruptRecordError, WalSequenceError: corruption anywhere but the tail.
            RetentionFormatError: ``retention.json`` is damaged.

        A prune running meanwhile (``evengine wal prune`` beside a starting
        engine) may unlink a sealed segment listed here: the scan starts over
        on the new listing (the pruned segments were not needed).
        """
        attempt = 0
        while True:
            record = self.retention()
            try:
                return self._scan(record)
            except FileNotFoundError:
                now = self.retention()
                moved = now is not None and (record is None or now.pruned_before_seq > record.pruned_before_seq)
                attempt += 1
                if not moved or attempt >= 5:
                    raise

    def _scan(self, record: Optional[RetentionRecord]) -> WalScan:
        segs = self.segments(record)
        tail: list[TornTail] = []
        frames = 0
        expect: Optional[int] = None
        first: Optional[int] = None
        last = 0
        tail_end = 0
        for i, info in enumerate(segs):
            data = load_segment_bytes(info)
            is_last = i == len(segs) - 1
            end = SEGMENT_HEADER_SIZE
            for frame in scan_frames(data, info.path, is_last=is_last, expect_seq=expect, tail=tail):
                frames += 1
                if first is None:
                    first = frame.first_seq
                last = frame.first_seq + frame.count - 1
                end = frame.end_offset
            if last:
                expect = last + 1
            elif len(data) >= SEGMENT_HEADER_SIZE:
                expect = int.from_bytes(data[16:24], "little")
            if is_last:
                tail_end = end
        if not last and expect is not None:
            last = expect - 1          # segments with a header only: the WAL ends before their first seq
        problems = []
        if record is not None and segs and segs[0].first_seq != record.pruned_before_seq:
            problems.append(f"the WAL starts at seq {segs[0].first_seq} but {record.path} says only seqs below "
                            f"{record.pruned_before_seq} were pruned: segments are missing")
        return WalScan(first, last, segs, tail[0] if tail else None, frames, tail_end, problems, record)

    def read(self, from_seq: int = 1, to_seq: Optional[int] = None) -> Iterator[tuple[int, Any]]:
        """Yield ``(seq, payload)`` for ``from_seq <= seq <= to_seq`` (both inclusive;
        ``to_seq=None``: to the end). A torn tail ends the stream quietly.

        Raises:
            PrunedRangeError: ``from_seq`` lies in a range a prune removed.
            CorruptRecordError, WalSequenceError: corruption in a frame read.
        """
        for seq, values in self.read_frames(from_seq, to_seq):
            for value in values:
                yield seq, value
                seq += 1

    def read_frames(self, from_seq: int = 1, to_seq: Optional[int] = None) -> Iterator[tuple[int, tuple]]:
        """:meth:`read` a frame at a time: yield ``(first seq, payloads)``, the
        payloads of consecutive seqs, cut to ``from_seq..to_seq`` (inclusive;
        ``None``: to the end). The unit of a bulk replay: no generator step
        per event.

        Raises:
            PrunedRangeError: ``from_seq`` lies in a range a prune removed.
            CorruptRecordError, WalSequenceError: corruption in a frame read.
        """
        record = self.retention()
        check_not_pruned(self.wal_dir, record, from_seq)
        segs = self.segments(record)
        if not segs:
            return
        starts = [s.first_seq for s in segs]
        i = max(0, bisect.bisect_right(starts, from_seq) - 1)
        for j in range(i, len(segs)):
            info = segs[j]
            if to_seq is not None and info.first_seq > to_seq:
                return
            try:
                data = load_segment_bytes(info)
            except FileNotFoundError:
                # Pruned while reading (it holds seqs below the new record): say so.
                check_not_pruned(self.wal_dir, self.retention(), info.first_seq)
                raise
            for frame in scan_frames(data, info.path, is_last=j == len(segs) - 1):
                first = frame.first_seq
                last = first + frame.count - 1
                if last < from_seq:
                    continue
                if to_seq is not None and first > to_seq:
                    return
                values = decode_frame(frame, info.path)
                if first < from_seq or (to_seq is not None and last > to_seq):
                    lo = max(first, from_seq)
                    hi = last if to_seq is None else min(last, to_seq)
                    values = values[lo - first:hi - first + 1]
                    first = lo
                yield first, values
