"""Segment files and batch frames: encoding, naming and scanning.

The byte layout is specified in ``eventstore/FORMAT.md``; this module is its
only implementation. A segment holds events ``first_seq ..`` in batch frames;
a batch frame holds ``count`` consecutive events as concatenated msgpack
values, and is checked by two CRC-32s (header and payload).
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import zstandard

from .errors import CorruptRecordError, WalSequenceError

__all__ = [
    "SEGMENT_MAGIC", "FORMAT_VERSION", "READABLE_VERSIONS", "SEGMENT_HEADER_SIZE", "FRAME_HEADER_SIZE", "MAX_FRAME_PAYLOAD",
    "encode_segment_header", "decode_segment_header", "encode_frame_header", "segment_name",
    "SegmentInfo", "list_segments", "Frame", "TornTail", "scan_frames", "load_segment_bytes",
    "SEALED_CHUNK_BYTES", "SeekTable", "encode_sealed", "read_seek_table", "read_sealed_chunk",
]

SEGMENT_MAGIC = b"EVWAL\x00\r\n"
FORMAT_VERSION = 3
READABLE_VERSIONS = (2, 3)   # version 2 segments hold shorter place/add-symbol records; see FORMAT.md
SEGMENT_HEADER_SIZE = 32
FRAME_HEADER_SIZE = 24
MAX_FRAME_PAYLOAD = 64 * 1024 * 1024

_SEG_HEAD = struct.Struct("<8sHHIQ4xI")      # magic, version, flags, header_size, first_seq, pad, crc
_FRAME_HEAD = struct.Struct("<IIQII")        # payload_len, count, first_seq, payload_crc, header_crc
_NAME_RE = re.compile(r"^wal-(\d{20})\.seg(\.zst)?$")


def encode_segment_header(first_seq: int) -> bytes:
    """The 32-byte header of a segment whose first event is ``first_seq``."""
    body = _SEG_HEAD.pack(SEGMENT_MAGIC, FORMAT_VERSION, 0, SEGMENT_HEADER_SIZE, first_seq, 0)
    return body[:-4] + struct.pack("<I", zlib.crc32(body[:28]))


def decode_segment_header(data: bytes, segment: str) -> int:
    """Check a segment header; return its ``first_seq``.

    Raises:
        CorruptRecordError: bad magic, unknown version or bad header CRC (offset 0).
    """
    if len(data) < SEGMENT_HEADER_SIZE:
        raise CorruptRecordError(segment, 0, f"segment header is {len(data)} bytes, expected {SEGMENT_HEADER_SIZE}")
    magic, version, _flags, size, first_seq, crc = _SEG_HEAD.unpack_from(data)
    if magic != SEGMENT_MAGIC:
        raise CorruptRecordError(segment, 0, f"bad magic {magic!r}: not an evengine WAL segment")
    if zlib.crc32(data[:28]) != crc:
        raise CorruptRecordError(segment, 0, "segment header CRC mismatch")
    if version not in READABLE_VERSIONS or size != SEGMENT_HEADER_SIZE:
        raise CorruptRecordError(segment, 0, f"unsupported WAL format version {version}; this build reads "
                                 f"{', '.join(map(str, READABLE_VERSIONS))}")
    return first_seq


def encode_frame_header(payload: bytes, first_seq: int, count: int) -> bytes:
    """The 24-byte header of a batch frame carrying ``count`` events from ``first_seq``."""
    head = struct.pack("<IIQI", len(payload), count, first_seq, zlib.crc32(payload))
    return head + struct.pack("<I", zlib.crc32(head))


def segment_name(first_seq: int, sealed: bool = False) -> str:
    """File name of the segment starting at ``first_seq``: ``wal-<20 digits>.seg[.zst]``."""
    return f"wal-{first_seq:020d}.seg" + (".zst" if sealed else "")


@dataclass(frozen=True)
class SegmentInfo:
    """One segment on disk. ``sealed``: zstd-compressed and immutable."""

    first_seq: int
    path: str
    sealed: bool


def list_segments(wal_dir: str) -> list[SegmentInfo]:
    """Segments in ``wal_dir`` by ``first_seq``. Where both the raw and the sealed
    file of one segment exist (a crash between sealing and unlinking the raw
    file), the sealed one is listed: it was renamed into place only once whole.
    Temp files (``*.tmp``) are ignored."""
    found: dict[int, SegmentInfo] = {}
    try:
        names = os.listdir(wal_dir)
    except FileNotFoundError:
        return []
    for name in names:
        m = _NAME_RE.match(name)
        if not m:
            continue
        seq = int(m.group(1))
        sealed = m.group(2) is not None
        if seq in found and found[seq].sealed and not sealed:
            continue
        found[seq] = SegmentInfo(seq, os.path.join(wal_dir, name), sealed)
    return [found[k] for k in sorted(found)]


def load_segment_bytes(info: SegmentInfo) -> bytes:
    """The segment's raw bytes (decompressed if sealed; a seekable sealed file
    chunk by chunk, an older single-frame one whole).

    Raises:
        CorruptRecordError: the zstd data or the seek table is damaged (names the
            sealed file and the byte offset inside it).
    """
    try:
        with open(info.path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        if info.sealed:
            raise
        # Sealed meanwhile: the raw file is unlinked only after the .zst is in place.
        info = SegmentInfo(info.first_seq, info.path + ".zst", True)
        with open(info.path, "rb") as f:
            data = f.read()
    if not info.sealed:
        return data
    table = _parse_seek_table(data, info.path)
    if table is not None:
        return b"".join(_decompress_chunk(memoryview(data)[off:off + csize], info.path, off, rsize)
                        for off, csize, rsize in zip(table.comp_offsets, table.comp_sizes, table.raw_sizes))
    try:
        return zstandard.ZstdDecompressor().decompress(data)
    except zstandard.ZstdError as exc:
        raise CorruptRecordError(info.path, 0, f"sealed segment does not decompress: {exc}") from exc


# ------------------------------------------------------------ seekable sealed segments
SEALED_CHUNK_BYTES = 1 << 20
"""Raw bytes per independently compressed chunk of a sealed segment (a chunk is
cut after the first whole frame that reaches this size)."""

_SKIPPABLE_MAGIC = 0x184D2A5E                  # a zstd skippable frame (RFC 8878, section 3.1.2)
_SEEK_HEAD = struct.Struct("<8sHHIQQ")         # magic, version, pad, chunks, segment first_seq, events
_SEEK_ENTRY = struct.Struct("<QIIQI4x")        # raw offset, raw size, compressed size, first_seq, events
_SEEK_TRAILER = struct.Struct("<II8s")         # table bytes (head + entries), CRC-32 of them, magic
_SEEK_MAGIC = b"EVSEEK\x00\x01"
_TRAILER_MAGIC = b"EVSEEKT\x00"
SEEK_TABLE_VERSION = 1


@dataclass(frozen=True)
class SeekTable:
    """Where each chunk of a seekable sealed segment lies (FORMAT.md, "Sealed segments").

    All lists have one entry per chunk, in order: ``raw_offsets``/``raw_sizes`` in the
    decompressed segment, ``comp_offsets``/``comp_sizes`` in the sealed file,
    ``first_seqs``/``events`` the events whose frames start in the chunk (a chunk holds
    whole frames only; ``events`` may be 0 for the chunk holding only the header).
    """

    first_seq: int
    events: int
    raw_offsets: list
    raw_sizes: list
    comp_offsets: list
    comp_sizes: list
    first_seqs: list
    chunk_events: list

    @property
    def raw_size(self) -> int:
        return self.raw_offsets[-1] + self.raw_sizes[-1] if self.raw_offsets else 0


def _chunk_bounds(raw: bytes, chunk_bytes: int) -> list[tuple[int, int, int, int]]:
    """``(raw offset, raw size, first_seq, events)`` per chunk of a raw segment, cut
    after whole frames. Walks frame headers only (the sealer seals what the writer
    wrote and the syncer made durable); anything unexpected ends the walk and the
    rest goes into one last chunk."""
    end = len(raw)
    first = int.from_bytes(raw[16:24], "little") if end >= SEGMENT_HEADER_SIZE else 0
    out = []
    start, pos, seq, chunk_first, events = 0, min(SEGMENT_HEADER_SIZE, end), first, first, 0
    while pos + FRAME_HEADER_SIZE <= end:
        length, count, fseq, _pcrc, _hcrc = _FRAME_HEAD.unpack_from(raw, pos)
        if count == 0 or fseq != seq or pos + FRAME_HEADER_SIZE + length > end:
            break
        pos += FRAME_HEADER_SIZE + length
        seq += count
        events += count
        if pos - start >= chunk_bytes:
            out.append((start, pos - start, chunk_first, events))
            start, chunk_first, events = pos, seq, 0
    if end > start or not out:
        out.append((start, end - start, chunk_first, events))
    return out


def encode_sealed(raw: bytes, level: int = 1, chunk_bytes: int = SEALED_CHUNK_BYTES) -> bytes:
    """The sealed (``.seg.zst``) bytes of one raw segment: zstd frames of whole batch
    frames (each with its content size and checksum) and a skippable frame holding
    the seek table. ``zstd -d`` restores ``raw`` exactly. Format: FORMAT.md."""
    cctx = zstandard.ZstdCompressor(level=level, write_checksum=True, write_content_size=True)
    view = memoryview(raw)
    parts = []
    entries = []
    total = 0
    for off, size, fseq, events in _chunk_bounds(raw, chunk_bytes):
        comp = cctx.compress(view[off:off + size])
        parts.append(comp)
        entries.append(_SEEK_ENTRY.pack(off, size, len(comp), fseq, events))
        total += events
    first = int.from_bytes(raw[16:24], "little") if len(raw) >= SEGMENT_HEADER_SIZE else 0
    table = _SEEK_HEAD.pack(_SEEK_MAGIC, SEEK_TABLE_VERSION, 0, len(entries), first, total) + b"".join(entries)
    body = table + _SEEK_TRAILER.pack(len(table), zlib.crc32(table), _TRAILER_MAGIC)
    parts.append(struct.pack("<II", _SKIPPABLE_MAGIC, len(body)) + body)
    return b"".join(parts)


def _parse_seek_table(tail: bytes, path: str, file_size: Optional[int] = None) -> Optional[SeekTable]:
    """The seek table from the end of a sealed file (``tail``: its last bytes, or all
    of it; ``file_size``: the whole file's size when ``tail`` is not the whole file).
    None for a sealed file without one (written before seek tables, a single zstd frame)."""
    size = len(tail) if file_size is None else file_size
    if len(tail) < _SEEK_TRAILER.size:
        return None
    tlen, tcrc, magic = _SEEK_TRAILER.unpack_from(tail, len(tail) - _SEEK_TRAILER.size)
    if magic != _TRAILER_MAGIC:
        return None
    start = len(tail) - _SEEK_TRAILER.size - tlen
    where = size - _SEEK_TRAILER.size - tlen
    if start < 8 or tlen < _SEEK_HEAD.size:
        if file_size is not None and len(tail) < size and tlen < size:
            raise _SeekTableShort(tlen + _SEEK_TRAILER.size + 8)
        raise CorruptRecordError(path, max(0, where), f"seek table of {tlen} bytes does not fit the sealed file")
    if bytes(tail[start - 8:start]) != struct.pack("<II", _SKIPPABLE_MAGIC, tlen + _SEEK_TRAILER.size):
        raise CorruptRecordError(path, where - 8, "seek table is not in a zstd skippable frame")
    table = bytes(tail[start:start + tlen])
    if zlib.crc32(table) != tcrc:
        raise CorruptRecordError(path, where, "seek table CRC mismatch (sealed file)")
    smagic, version, _pad, chunks, first, events = _SEEK_HEAD.unpack_from(table)
    if smagic != _SEEK_MAGIC or version != SEEK_TABLE_VERSION:
        raise CorruptRecordError(path, where, f"unknown seek table (magic {smagic!r}, version {version}); "
                                 f"this build reads version {SEEK_TABLE_VERSION}")
    if len(table) != _SEEK_HEAD.size + chunks * _SEEK_ENTRY.size:
        raise CorruptRecordError(path, where, f"seek table of {len(table)} bytes for {chunks} chunks")
    raw_offsets, raw_sizes, comp_offsets, comp_sizes, first_seqs, counts = [], [], [], [], [], []
    coff = 0
    expect_raw, expect_seq = 0, first
    for i in range(chunks):
        roff, rsize, csize, fseq, n = _SEEK_ENTRY.unpack_from(table, _SEEK_HEAD.size + i * _SEEK_ENTRY.size)
        if roff != expect_raw or fseq != expect_seq:
            raise CorruptRecordError(path, where, f"seek table chunk {i} does not continue the previous one "
                                     f"(raw offset {roff}, first seq {fseq}; expected {expect_raw}, {expect_seq})")
        raw_offsets.append(roff)
        raw_sizes.append(rsize)
        comp_offsets.append(coff)
        comp_sizes.append(csize)
        first_seqs.append(fseq)
        counts.append(n)
        coff += csize
        expect_raw += rsize
        expect_seq += n
    if coff + 8 + tlen + _SEEK_TRAILER.size != size or expect_seq - first != events:
        raise CorruptRecordError(path, where, f"seek table does not match the file ({chunks} chunks of "
                                 f"{coff} compressed bytes in a file of {size} bytes)")
    return SeekTable(first, events, raw_offsets, raw_sizes, comp_offsets, comp_sizes, first_seqs, counts)


class _SeekTableShort(Exception):
    """The tail read was too short for the table; read this many bytes."""

    def __init__(self, need: int) -> None:
        super().__init__(need)
        self.need = need


def read_seek_table(path: str) -> Optional[SeekTable]:
    """The seek table of a sealed segment file, reading only its end (one or two
    ``pread``s). None for a single-frame sealed file (no table).

    Raises:
        CorruptRecordError: the table is damaged (names the file and offset).
        FileNotFoundError: no such file.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        want = min(size, 4096)
        while True:
            tail = os.pread(fd, want, size - want)
            try:
                return _parse_seek_table(tail, path, size)
            except _SeekTableShort as short:
                if want >= size or short.need > size:
                    raise CorruptRecordError(path, 0, "seek table longer than the sealed file") from None
                want = min(size, short.need)
    finally:
        os.close(fd)


def _decompress_chunk(comp: Any, path: str, comp_offset: int, raw_size: int) -> bytes:
    try:
        out = zstandard.ZstdDecompressor().decompress(comp)
    except zstandard.ZstdError as exc:
        raise CorruptRecordError(path, comp_offset, f"sealed chunk does not decompress: {exc}") from exc
    if len(out) != raw_size:
        raise CorruptRecordError(path, comp_offset, f"sealed chunk holds {len(out)} bytes, its seek table "
                                 f"says {raw_size}")
    return out


def read_sealed_chunk(path: str, table: SeekTable, i: int, fd: Optional[int] = None) -> bytes:
    """Chunk ``i`` of a seekable sealed segment, decompressed: raw bytes
    ``table.raw_offsets[i] ..`` (one ``pread`` and one zstd frame).

    Raises:
        CorruptRecordError: the chunk does not decompress or has the wrong size.
    """
    own = fd is None
    if own:
        fd = os.open(path, os.O_RDONLY)
    try:
        comp = os.pread(fd, table.comp_sizes[i], table.comp_offsets[i])
    finally:
        if own:
            os.close(fd)
    return _decompress_chunk(comp, path, table.comp_offsets[i], table.raw_sizes[i])


@dataclass(frozen=True)
class Frame:
    """A valid batch frame: events ``first_seq .. first_seq + count - 1``.
    ``file_offset`` is where its header starts; ``end_offset`` where it ends."""

    first_seq: int
    count: int
    file_offset: int
    end_offset: int
    payload: memoryview


@dataclass(frozen=True)
class TornTail:
    """An incomplete write at the end of the last segment, to be cut off."""

    segment: str
    file_offset: int
    dropped_bytes: int
    reason: str


def scan_frames(data: bytes, segment: str, *, is_last: bool, expect_seq: Optional[int] = None,
                tail: Optional[list] = None) -> Iterator[Frame]:
    """Yield the valid frames of one segment's bytes, in order.

    The torn-tail rule (FORMAT.md): only in the last segment, and only at its
    end, a segment header cut short or all zero, a frame whose header is cut short or all zero, whose payload is cut
    short, or which is the file's final frame and fails its payload CRC, is a
    torn tail: scanning stops there and a :class:`TornTail` is appended to
    ``tail``. Anything else that fails is corruption.

    Args:
        data: whole segment bytes (decompressed).
        segment: its path, for messages.
        is_last: whether this is the newest segment (the only one with a tail).
        expect_seq: the first sequence number this segment must hold.
        tail: receives a ``TornTail`` if one is found.

    Raises:
        CorruptRecordError: a bad frame that is not a torn tail (names the offset).
        WalSequenceError: frames are not gap-free.
    """
    if is_last and (len(data) < SEGMENT_HEADER_SIZE or not any(data[:SEGMENT_HEADER_SIZE])):
        # A crash right after the segment was created, before its header was
        # written: nothing in it was ever durable.
        if tail is not None:
            tail.append(TornTail(segment, 0, len(data), "segment header incomplete"))
        return
    first_seq = decode_segment_header(data, segment)
    if expect_seq is not None and first_seq != expect_seq:
        raise WalSequenceError(segment, 0, expect_seq, first_seq)
    next_seq = first_seq
    pos = SEGMENT_HEADER_SIZE
    end = len(data)
    view = memoryview(data)
    unpack = _FRAME_HEAD.unpack_from
    while pos < end:
        reason = None
        torn = False
        if end - pos < FRAME_HEADER_SIZE:
            reason, torn = f"frame header cut short ({end - pos} of {FRAME_HEADER_SIZE} bytes)", True
        else:
            length, count, seq, payload_crc, header_crc = unpack(data, pos)
            if zlib.crc32(view[pos:pos + 20]) != header_crc:
                if not any(view[pos:pos + FRAME_HEADER_SIZE]):
                    reason, torn = "zero-filled frame header", True
                else:
                    reason = "frame header CRC mismatch"
            elif length > MAX_FRAME_PAYLOAD or count == 0:
                reason = f"implausible frame (length {length}, count {count})"
            elif pos + FRAME_HEADER_SIZE + length > end:
                reason, torn = f"frame payload cut short ({end - pos - FRAME_HEADER_SIZE} of {length} bytes)", True
            else:
                body = view[pos + FRAME_HEADER_SIZE:pos + FRAME_HEADER_SIZE + length]
                if zlib.crc32(body) != payload_crc:
                    reason = "frame payload CRC mismatch"
                    torn = pos + FRAME_HEADER_SIZE + length == end
                elif seq != next_seq:
                    raise WalSequenceError(segment, pos, next_seq, seq)
                else:
                    frame_end = pos + FRAME_HEADER_SIZE + length
                    yield Frame(seq, count, pos, frame_end, body)
                    next_seq += count
                    pos = frame_end
                    continue
        if torn and is_last:
            if tail is not None:
                tail.append(TornTail(segment, pos, end - pos, reason))
            return
        raise CorruptRecordError(segment, pos, reason)
