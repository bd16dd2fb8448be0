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
from typing import Iterator, Optional

import zstandard

from .errors import CorruptRecordError, WalSequenceError

__all__ = [
    "SEGMENT_MAGIC", "FORMAT_VERSION", "READABLE_VERSIONS", "SEGMENT_HEADER_SIZE", "FRAME_HEADER_SIZE", "MAX_FRAME_PAYLOAD",
    "encode_segment_header", "decode_segment_header", "encode_frame_header", "segment_name",
    "SegmentInfo", "list_segments", "Frame", "TornTail", "scan_frames", "load_segment_bytes",
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
    """The segment's raw bytes (decompressed if sealed).

    Raises:
        CorruptRecordError: the zstd frame is damaged (offset 0 of the sealed file).
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
    try:
        return zstandard.ZstdDecompressor().decompress(data)
    except zstandard.ZstdError as exc:
        raise CorruptRecordError(info.path, 0, f"sealed segment does not decompress: {exc}") from exc


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
