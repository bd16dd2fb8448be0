"""An incremental frame index over the WAL, for random access by sequence number.

:class:`eventstore.WalReader` reads (and for a sealed segment decompresses)
a whole segment and checks every frame before the one asked for, on every
call. Time travel asks for short ranges many times, so this index remembers,
per batch frame, its ``first_seq``, event count, byte position and payload
CRC; reading a range then touches only the frames that hold it.

Safe while an engine appends to the same directory: :meth:`WalIndex.refresh`
scans only the bytes added since the last scan (of the newest segment) and
stops at the first incomplete frame (a write in progress or a torn tail), so
only whole, checksummed frames are ever returned; and while an engine runs,
nothing past its durable seq (``eventstore.read_durable_seq``: a frame
written but not yet fsynced is not shown, since a power loss or a failed
write could still take it back). A segment sealed meanwhile
(its raw file renamed to ``.zst``) is followed. Every frame read back is
checked against the CRC recorded when it was indexed.

Sealed segments with a seek table (FORMAT.md, "Sealed segments") are indexed
from their table alone (one ``pread`` of the file's end): one entry per chunk
of about 1 MiB of frames, not per frame, and reading a seq decompresses only
the chunk that holds it. Older single-frame sealed files are decompressed
whole, once, and indexed per frame.

Memory: 6 integers per frame of a raw segment (a frame holds up to
``batch_max`` events; the Bitstamp sample's 313,762 events are 831 frames)
and per chunk of a seekable sealed segment, the decompressed bytes of at
most ``cached_chunks`` chunks (about 1 MiB each) and of at most
``cached_segments`` single-frame sealed segments (each up to the engine's
``segment_size_bytes``, 64 MiB by default). Raw segments are read with
``pread`` and not kept.
"""

from __future__ import annotations

import bisect
import os
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterator, Optional

from eventstore import (CorruptRecordError, PrunedRangeError, SegmentInfo, read_durable_seq, read_retention,
                        retained_segments)
from eventstore.reader import decode_frame
from eventstore import WalSequenceError
from eventstore.segment import (SEGMENT_HEADER_SIZE, Frame, SeekTable, TornTail, encode_segment_header,
                                load_segment_bytes, read_seek_table, read_sealed_chunk, scan_frames)

__all__ = ["WalIndex"]


@dataclass
class _Segment:
    info: SegmentInfo
    scanned_end: int = 0        # bytes of the (raw) segment covered by whole frames
    next_seq: int = 0           # seq the next frame of this segment must start with
    complete: bool = False      # not the newest segment any more: no frame will be added


class WalIndex:
    """Random access to the WAL in ``wal_dir`` by sequence number.

    Args:
        wal_dir: ``<data-dir>/wal``.
        cached_segments: single-frame (older) sealed segments kept decompressed in memory (LRU).
        cached_chunks: chunks of seekable sealed segments kept decompressed (LRU).

    Attributes:
        first_seq: first seq held (``None`` while the WAL is empty).
        last_seq: last seq readers see: the last whole frame's, or while an
            engine runs the durable seq if lower (0 while empty).
        whole_seq: last seq of the last whole frame on disk.
        torn_tail: the incomplete bytes after it in the newest segment, if any
            (while an engine runs: usually a frame being written).
    """

    def __init__(self, wal_dir: str, cached_segments: int = 2, cached_chunks: int = 16) -> None:
        self.wal_dir = wal_dir
        self.cached_segments = cached_segments
        self.cached_chunks = cached_chunks
        self.chunks_read = 0            # chunks decompressed (a measure of the work done)
        self._reset()

    def _reset(self) -> None:
        self._segments: list[_Segment] = []
        self._starts: list[int] = []      # first_seq of every frame, ascending
        # Per unit: (segment index, count, payload offset, length, crc) for a frame;
        # (segment index, count, chunk index, -1, 0) for a chunk of a seekable sealed segment.
        self._frames: list[tuple[int, int, int, int, int]] = []
        self._sealed_bytes: OrderedDict[str, bytes] = OrderedDict()
        self._tables: dict[str, Optional[SeekTable]] = {}
        self._chunks: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self.first_seq: Optional[int] = None
        self.last_seq = 0
        self.whole_seq = 0
        self.torn_tail: Optional[TornTail] = None

    # ---------------------------------------------------------------- scanning
    def refresh(self) -> int:
        """Index whatever whole frames were added since the last call; return
        :attr:`last_seq`.

        Raises:
            CorruptRecordError, WalSequenceError: damage before the WAL's tail.
        """
        try:
            return self._refresh()
        except PrunedRangeError:
            self._reset()              # a prune removed segments while they were indexed: start over
            return self._refresh()

    def _refresh(self) -> int:
        infos = retained_segments(self.wal_dir)   # a crashed prune's leftovers are not read
        if len(infos) < len(self._segments) or any(
                seg.info.first_seq != info.first_seq for seg, info in zip(self._segments, infos)):
            self._reset()    # segments were removed or replaced: start over
        for i, info in enumerate(infos):
            is_last = i == len(infos) - 1
            if i == len(self._segments):
                expect = self._segments[-1].next_seq if self._segments else None
                self._segments.append(_Segment(info, next_seq=expect or 0))
            seg = self._segments[i]
            if info.sealed and not seg.info.sealed:
                seg.info = info
            if seg.complete:
                continue
            self._scan(i, seg, is_last)
            if not is_last:
                seg.complete = True
        durable = read_durable_seq(self.wal_dir)
        self.last_seq = self.whole_seq if durable is None else min(self.whole_seq, max(durable, self.last_seq))
        return self.last_seq

    def _scan(self, index: int, seg: _Segment, is_last: bool) -> None:
        info = seg.info
        start = seg.scanned_end
        try:
            table = self._table(info) if info.sealed else None
            if table is not None:
                if not start:
                    return self._index_chunks(index, seg, table)
                if start >= table.raw_size:
                    return

            if info.sealed:
                data = self._sealed_from(info, start)
            else:
                with open(info.path, "rb") as f:
                    f.seek(start)
                    data = f.read()
        except FileNotFoundError:
            if info.sealed:
                raise
            seg.info = SegmentInfo(info.first_seq, info.path + ".zst", True)   # sealed meanwhile
            return self._scan(index, seg, is_last)
        if start:
            # Scan the new bytes behind a synthetic header that continues the sequence.
            data = encode_segment_header(seg.next_seq) + data
            shift = start - SEGMENT_HEADER_SIZE
            expect = None
        else:
            shift = 0
            expect = seg.next_seq or None
        if start and len(data) == SEGMENT_HEADER_SIZE:
            self.torn_tail = None if is_last else self.torn_tail
            return
        tail: list = []
        for frame in scan_frames(data, info.path, is_last=is_last, expect_seq=expect, tail=tail):
            if self.first_seq is None:
                self.first_seq = frame.first_seq
            self._starts.append(frame.first_seq)
            self._frames.append((index, frame.count, frame.file_offset + shift + 24, len(frame.payload),
                                 zlib.crc32(frame.payload)))
            seg.scanned_end = frame.end_offset + shift
            seg.next_seq = frame.first_seq + frame.count
            self.whole_seq = seg.next_seq - 1
        if not start and not seg.next_seq and len(data) >= SEGMENT_HEADER_SIZE:
            seg.next_seq = int.from_bytes(data[16:24], "little")    # a segment with a header only
        if seg.scanned_end == 0 and len(data) >= SEGMENT_HEADER_SIZE and not tail:
            seg.scanned_end = SEGMENT_HEADER_SIZE
        if is_last:
            t = tail[0] if tail else None
            self.torn_tail = None if t is None else TornTail(info.path, t.file_offset + shift,
                                                             t.dropped_bytes, t.reason)

    def _index_chunks(self, index: int, seg: _Segment, table: SeekTable) -> None:
        """Index a seekable sealed segment from its seek table: one unit per chunk."""
        info = seg.info
        expect = seg.next_seq or None
        if table.first_seq != info.first_seq or (expect is not None and table.first_seq != expect):
            raise WalSequenceError(info.path, 0, expect or info.first_seq, table.first_seq)
        for ci, (fseq, n) in enumerate(zip(table.first_seqs, table.chunk_events)):
            if n == 0:
                continue
            if self.first_seq is None:
                self.first_seq = fseq
            self._starts.append(fseq)
            self._frames.append((index, n, ci, -1, 0))
        seg.next_seq = table.first_seq + table.events
        seg.scanned_end = table.raw_size
        if table.events:
            self.whole_seq = seg.next_seq - 1

    def _table(self, info: SegmentInfo) -> Optional[SeekTable]:
        if info.path not in self._tables:
            try:
                self._tables[info.path] = read_seek_table(info.path)
            except FileNotFoundError:
                self._pruned(info)
                raise
        return self._tables[info.path]

    def _pruned(self, info: SegmentInfo) -> None:
        """Raise PrunedRangeError if ``info`` is gone because a prune removed it."""
        rec = read_retention(self.wal_dir)
        if rec is not None and info.first_seq < rec.pruned_before_seq:
            raise PrunedRangeError(self.wal_dir, info.first_seq, rec.pruned_before_seq,
                                   rec.pruned_before_seq, rec.pruned_at, rec.path) from None

    def _chunk(self, info: SegmentInfo, ci: int) -> bytes:
        key = (info.path, ci)
        data = self._chunks.get(key)
        if data is not None:
            self._chunks.move_to_end(key)
            return data
        try:
            data = read_sealed_chunk(info.path, self._table(info), ci)
        except FileNotFoundError:
            self._pruned(info)
            raise
        self.chunks_read += 1
        self._chunks[key] = data
        while len(self._chunks) > max(1, self.cached_chunks):
            self._chunks.popitem(last=False)
        return data

    def _sealed_from(self, info: SegmentInfo, start: int) -> bytes:
        """A sealed segment's raw bytes from ``start`` to its end (only the chunks
        holding them, when it has a seek table)."""
        table = self._table(info)
        if table is None:
            data = self._sealed(info)
            return data[start:] if start else data
        i = max(0, bisect.bisect_right(table.raw_offsets, start) - 1)
        parts = [self._chunk(info, j) for j in range(i, len(table.raw_offsets))]
        return b"".join(parts)[start - table.raw_offsets[i]:]

    def _sealed_slice(self, info: SegmentInfo, pos: int, length: int) -> bytes:
        table = self._table(info)
        if table is None:
            return self._sealed(info)[pos:pos + length]
        i = max(0, bisect.bisect_right(table.raw_offsets, pos) - 1)
        off = pos - table.raw_offsets[i]
        return self._chunk(info, i)[off:off + length]   # a frame lies inside one chunk

    def _chunk_frames(self, k: int) -> tuple[list[Frame], str]:
        """The frames of chunk unit ``k``, checked (CRCs, gap-free, the count the table gives)."""
        index, count, ci, _, _ = self._frames[k]
        info = self._segments[index].info
        table = self._table(info)
        data = self._chunk(info, ci)
        roff = table.raw_offsets[ci]
        shift = roff - SEGMENT_HEADER_SIZE
        if roff:
            data = encode_segment_header(table.first_seqs[ci]) + data
        else:
            shift = 0
        try:
            frames = list(scan_frames(data, info.path, is_last=False, expect_seq=table.first_seqs[ci]))
        except CorruptRecordError as exc:
            raise CorruptRecordError(info.path, exc.file_offset + shift, exc.reason) from None
        if sum(f.count for f in frames) != count:
            raise CorruptRecordError(info.path, roff, f"sealed chunk {ci} holds {sum(f.count for f in frames)} "
                                     f"events, its seek table says {count}")
        return frames, info.path

    def _sealed(self, info: SegmentInfo) -> bytes:
        data = self._sealed_bytes.get(info.path)
        if data is None:
            try:
                data = load_segment_bytes(info)
            except FileNotFoundError:
                self._pruned(info)     # pruned while this index was open
                raise
            self._sealed_bytes[info.path] = data
            while len(self._sealed_bytes) > max(1, self.cached_segments):
                self._sealed_bytes.popitem(last=False)
        else:
            self._sealed_bytes.move_to_end(info.path)
        return data

    # ----------------------------------------------------------------- reading
    def _payload(self, k: int) -> tuple[Frame, str]:
        index, count, pos, length, crc = self._frames[k]
        seg = self._segments[index]
        info = seg.info
        if info.sealed:
            body = self._sealed_slice(info, pos, length)
        else:
            try:
                fd = os.open(info.path, os.O_RDONLY)
            except FileNotFoundError:
                seg.info = SegmentInfo(info.first_seq, info.path + ".zst", True)
                return self._payload(k)
            try:
                body = os.pread(fd, length, pos)
            finally:
                os.close(fd)
        if len(body) != length or zlib.crc32(body) != crc:
            raise CorruptRecordError(info.path, pos - 24, "frame changed on disk after it was indexed "
                                     "(the WAL was rewritten under a reader); reopen the data directory")
        return Frame(self._starts[k], count, pos - 24, pos + length, memoryview(body)), info.path

    def read(self, from_seq: int = 1, to_seq: Optional[int] = None) -> Iterator[tuple[int, Any]]:
        """``(seq, payload)`` for ``from_seq <= seq <= to_seq`` (inclusive; ``None``:
        to the last indexed event), payloads as msgpack gives them (tuples).
        Reads only indexed frames: call :meth:`refresh` to see newer ones.

        Raises:
            CorruptRecordError: a frame no longer matches its CRC, or does not decode.
        """
        last = self.last_seq if to_seq is None else min(to_seq, self.last_seq)
        if not self._starts or from_seq > last:
            return
        k = max(0, bisect.bisect_right(self._starts, from_seq) - 1)
        n = len(self._starts)
        while k < n and self._starts[k] <= last:
            if self._frames[k][3] < 0:
                frames, path = self._chunk_frames(k)
            else:
                frame, path = self._payload(k)
                frames = [frame]
            for frame in frames:
                seq = frame.first_seq
                if seq > last:
                    return
                if seq + frame.count - 1 < from_seq:
                    continue
                values = decode_frame(frame, path)
                if seq >= from_seq and seq + frame.count - 1 <= last:
                    for value in values:
                        yield seq, value
                        seq += 1
                else:
                    for value in values:
                        if from_seq <= seq <= last:
                            yield seq, value
                        seq += 1
            k += 1

    def frame_identity(self, seq: int) -> Optional[tuple[int, int, int]]:
        """``(first_seq, count, payload CRC-32)`` of the batch frame holding event
        ``seq``, or ``None`` if no indexed frame holds it (derived data such as a
        persisted keyframe names the frame it was built after, and is used only
        while the WAL still holds that very frame).

        Raises:
            CorruptRecordError: the frame's chunk is damaged.
        """
        if not self._starts or seq < self._starts[0] or seq > self.last_seq:
            return None
        k = bisect.bisect_right(self._starts, seq) - 1
        index, count, pos, length, crc = self._frames[k]
        if length >= 0:
            return self._starts[k], count, crc
        frames, _path = self._chunk_frames(k)
        for f in frames:
            if f.first_seq <= seq < f.first_seq + f.count:
                return f.first_seq, f.count, zlib.crc32(f.payload)
        return None

    @property
    def frames(self) -> int:
        """Number of units indexed: whole frames of raw (and older sealed) segments,
        chunks of seekable sealed segments."""
        return len(self._starts)
