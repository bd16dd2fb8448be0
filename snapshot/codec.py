"""Snapshot file encoding. The layout is in ``snapshot/FORMAT.md``."""

from __future__ import annotations

import struct
import zlib
from typing import Any

import msgpack
import zstandard

from .errors import SnapshotChecksumError, SnapshotFormatError

__all__ = ["SNAPSHOT_MAGIC", "SNAPSHOT_VERSION", "READABLE_VERSIONS", "HEADER_SIZE", "encode_snapshot", "decode_snapshot",
           "read_header"]

SNAPSHOT_MAGIC = b"EVSNAP\r\n"
SNAPSHOT_VERSION = 3
READABLE_VERSIONS = (2, 3)   # version 2: no accounts, books of four fields
HEADER_SIZE = 48
_HEAD = struct.Struct("<8sHHIQQQII")  # magic, version, flags, header size, seq, match_sequence, body_len, body_crc, header_crc


def encode_snapshot(state: dict, zstd_level: int = 1) -> bytes:
    """Serialise a matcher state (``Matcher.export_state()`` plus extra keys)
    into the bytes of a snapshot file: header + zstd(msgpack(state))."""
    body = zstandard.ZstdCompressor(level=zstd_level, write_checksum=True).compress(
        msgpack.packb(state, use_bin_type=True))
    head = _HEAD.pack(SNAPSHOT_MAGIC, SNAPSHOT_VERSION, 0, HEADER_SIZE, state["last_seq"],
                      state["match_sequence"], len(body), zlib.crc32(body), 0)
    head = head[:-4] + struct.pack("<I", zlib.crc32(head[:-4]))
    return head + body


def read_header(data: bytes, path: str) -> tuple[int, int, int, int]:
    """Check the 48-byte header; return ``(seq, match_sequence, body_len, body_crc)``.

    Raises:
        SnapshotFormatError: wrong magic or version.
        SnapshotChecksumError: header CRC mismatch.
    """
    if len(data) < HEADER_SIZE:
        raise SnapshotChecksumError(path, f"file is {len(data)} bytes, shorter than the {HEADER_SIZE}-byte header")
    magic, version, _flags, size, seq, match_seq, body_len, body_crc, head_crc = _HEAD.unpack_from(data)
    if magic != SNAPSHOT_MAGIC:
        raise SnapshotFormatError(path, f"bad magic {magic!r}: not an evengine snapshot")
    if zlib.crc32(data[:HEADER_SIZE - 4]) != head_crc:
        raise SnapshotChecksumError(path, "header CRC mismatch")
    if version not in READABLE_VERSIONS or size != HEADER_SIZE:
        raise SnapshotFormatError(path, f"unsupported snapshot version {version}; this build reads "
                                  f"{', '.join(map(str, READABLE_VERSIONS))}")
    return seq, match_seq, body_len, body_crc


def decode_snapshot(data: bytes, path: str = "<bytes>") -> dict[str, Any]:
    """Check and decode a whole snapshot file's bytes into its state dict.

    Raises:
        SnapshotFormatError: not a snapshot, unknown version.
        SnapshotChecksumError: a CRC fails or the body is truncated or undecodable.
    """
    seq, match_seq, body_len, body_crc = read_header(data, path)
    body = memoryview(data)[HEADER_SIZE:]
    if len(body) != body_len:
        raise SnapshotChecksumError(path, f"body is {len(body)} bytes, header says {body_len}")
    if zlib.crc32(body) != body_crc:
        raise SnapshotChecksumError(path, f"body CRC mismatch (body at byte {HEADER_SIZE})")
    try:
        raw = zstandard.ZstdDecompressor().decompress(body)
        state = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except (zstandard.ZstdError, ValueError, msgpack.UnpackException) as exc:
        raise SnapshotChecksumError(path, f"body does not decode: {exc}") from exc
    if state.get("last_seq") != seq or state.get("match_sequence") != match_seq:
        raise SnapshotChecksumError(path, "header and body disagree on seq / match_sequence")
    return state
