"""Seekable sealed segments: zstd frames of whole batch frames and a seek table.

The sealed file must restore the raw segment exactly (with this build's reader,
with a streaming zstd reader and with the ``zstd`` tool), its seek table must
cut only at frame boundaries and name every event, a reader of one seq must
decompress one chunk, older single-frame sealed files must still read, and any
damage must be an error naming the file and an offset.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess

import pytest
import zstandard
from hypothesis import given, settings, strategies as st

from tests.support.files import flip_byte

from eventstore import CorruptRecordError, WalReader, WalWriter, list_segments, seal_segment
from eventstore.segment import (SEGMENT_HEADER_SIZE, SegmentInfo, encode_frame_header, encode_sealed,
                                encode_segment_header, load_segment_bytes, read_seek_table, scan_frames,
                                segment_name)
from recovery.walindex import WalIndex

import msgpack


def raw_segment(first_seq: int, frame_sizes: list[int]) -> bytes:
    """A raw segment whose frames hold ``frame_sizes`` events each (payloads of varied length)."""
    parts = [encode_segment_header(first_seq)]
    seq = first_seq
    for n in frame_sizes:
        payload = msgpack.packb([["e", s, "x" * (s % 37)] for s in range(seq, seq + n)])
        parts += [encode_frame_header(payload, seq, n), payload]
        seq += n
    return b"".join(parts)


@settings(max_examples=60, deadline=None)
@given(first=st.integers(1, 10**12), sizes=st.lists(st.integers(1, 300), max_size=60),
       chunk=st.sampled_from([1, 64, 1000, 4096, 1 << 20]), level=st.sampled_from([1, 3]))
def test_sealed_bytes_restore_the_raw_segment_and_the_table_cuts_at_frames(first, sizes, chunk, level):
    raw = raw_segment(first, sizes)
    sealed = encode_sealed(raw, level, chunk_bytes=chunk)
    path = "/nonexistent/x.seg.zst"
    # a streaming zstd reader (any zstd decoder) skips the table's skippable frame
    out = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(sealed), read_across_frames=True).read()
    assert out == raw
    from eventstore.segment import _parse_seek_table  # noqa: PLC0415 - the parser behind read_seek_table
    table = _parse_seek_table(sealed, path)
    assert table.first_seq == first and table.events == sum(sizes) and table.raw_size == len(raw)
    starts = {f.file_offset for f in scan_frames(raw, path, is_last=False)} | {len(raw)}
    for i, off in enumerate(table.raw_offsets):
        end = off + table.raw_sizes[i]
        assert end in starts or end == len(raw)                       # chunks end at frame boundaries
        chunk_bytes = zstandard.ZstdDecompressor().decompress(
            sealed[table.comp_offsets[i]:table.comp_offsets[i] + table.comp_sizes[i]])
        assert chunk_bytes == raw[off:end]
    # every chunk but the last holds at least chunk_bytes of raw data
    assert all(size >= min(chunk, len(raw)) for size in table.raw_sizes[:-1])


def test_zstd_tool_decompresses_a_sealed_segment(tmp_path):
    if shutil.which("zstd") is None:
        if os.environ.get("EVENGINE_REQUIRE_ZSTD") == "1":      # CI installs it: never skip there
            pytest.fail("the zstd command is not installed (apt-get install zstd)")
        pytest.skip("the zstd command is not installed (apt-get install zstd)")
    raw = raw_segment(5, [100] * 400)
    p = tmp_path / "s.zst"
    p.write_bytes(encode_sealed(raw, 1, chunk_bytes=50_000))
    assert subprocess.run(["zstd", "-dc", str(p)], capture_output=True, check=True).stdout == raw


def make_sealed_wal(path, n=60_000, per_frame=100):
    w = WalWriter(str(path), 1, segment_size_bytes=1 << 20, sealed_chunk_bytes=64 << 10)
    for i in range(1, n + 1):
        w.append(("event", i, "p" * (i % 50)))
        if i % per_frame == 0:
            w.flush()
    w.close()
    return list_segments(str(path))


def test_writer_seals_seekable_segments_and_readers_agree(tmp_path):
    segs = make_sealed_wal(tmp_path)
    sealed = [s for s in segs if s.sealed]
    assert len(sealed) >= 2
    for info in sealed:
        t = read_seek_table(info.path)
        assert t is not None and len(t.raw_offsets) >= 2 and t.first_seq == info.first_seq
    expect = [(i, ["event", i, "p" * (i % 50)]) for i in range(1, 60_001)]
    got = [(s, list(v)) for s, v in WalReader(str(tmp_path)).read(1)]
    assert got == expect
    idx = WalIndex(str(tmp_path))
    idx.refresh()
    assert idx.first_seq == 1 and idx.last_seq == 60_000
    assert [(s, list(v)) for s, v in idx.read(1)] == expect


def test_one_seq_from_a_sealed_segment_decompresses_one_chunk(tmp_path):
    segs = make_sealed_wal(tmp_path)
    info = next(s for s in segs if s.sealed)
    t = read_seek_table(info.path)
    idx = WalIndex(str(tmp_path))
    idx.refresh()
    assert idx.chunks_read == 0                      # indexing reads the tables only
    mid = t.first_seqs[len(t.first_seqs) // 2] + 3
    assert [s for s, _ in idx.read(mid, mid)] == [mid]
    assert idx.chunks_read == 1
    list(idx.read(mid + 1, mid + 2))
    assert idx.chunks_read == 1                      # the chunk is cached


def test_single_frame_sealed_segments_written_before_seek_tables_still_read(tmp_path):
    segs = make_sealed_wal(tmp_path)
    for info in segs:
        if info.sealed:
            raw = load_segment_bytes(info)
            with open(info.path, "wb") as f:       # the old form: one zstd frame, no table
                f.write(zstandard.ZstdCompressor(write_checksum=True, write_content_size=True).compress(raw))
            assert read_seek_table(info.path) is None
    expect = [(i, ["event", i, "p" * (i % 50)]) for i in range(1, 60_001)]
    assert [(s, list(v)) for s, v in WalReader(str(tmp_path)).read(1)] == expect
    idx = WalIndex(str(tmp_path))
    idx.refresh()
    assert [(s, list(v)) for s, v in idx.read(30_000, 30_010)] == expect[29_999:30_010]


def test_a_segment_sealed_under_an_open_index_is_followed(tmp_path):
    w = WalWriter(str(tmp_path), 1, compress_sealed=False)
    for i in range(1, 5001):
        w.append(("event", i))
        if i % 100 == 0:
            w.flush()
    w.close()
    idx = WalIndex(str(tmp_path))
    idx.refresh()
    assert idx.last_seq == 5000
    seal_segment(str(tmp_path), 1)
    assert list_segments(str(tmp_path))[0].sealed
    assert [s for s, _ in idx.read(4990, 5000)] == list(range(4990, 5001))
    idx.refresh()
    assert idx.last_seq == 5000


def test_damage_in_a_chunk_or_the_table_names_the_file_and_offset(tmp_path):
    segs = make_sealed_wal(tmp_path)
    info = next(s for s in segs if s.sealed)
    t = read_seek_table(info.path)
    size = os.path.getsize(info.path)
    # a byte inside chunk 1's compressed data
    flip_byte(info.path, t.comp_offsets[1] + t.comp_sizes[1] // 2)
    idx = WalIndex(str(tmp_path))
    idx.refresh()                                    # the table is intact
    with pytest.raises(CorruptRecordError) as exc:
        list(idx.read(t.first_seqs[1], t.first_seqs[1]))
    assert exc.value.segment == info.path and exc.value.file_offset == t.comp_offsets[1]
    with pytest.raises(CorruptRecordError):
        WalReader(str(tmp_path)).scan()
    flip_byte(info.path, t.comp_offsets[1] + t.comp_sizes[1] // 2)   # undo
    # a byte inside the table itself
    flip_byte(info.path, size - 40)
    with pytest.raises(CorruptRecordError) as exc:
        WalIndex(str(tmp_path)).refresh()
    assert exc.value.segment == info.path and "seek table" in str(exc.value)
    with pytest.raises(CorruptRecordError):
        load_segment_bytes(SegmentInfo(info.first_seq, info.path, True))


def test_a_seek_table_whose_segment_name_disagrees_is_a_sequence_error(tmp_path):
    raw = raw_segment(101, [10, 10])
    other = raw_segment(1, [100])
    (tmp_path / segment_name(1, True)).write_bytes(encode_sealed(other))
    (tmp_path / segment_name(101, True)).write_bytes(encode_sealed(raw))
    idx = WalIndex(str(tmp_path))
    assert idx.refresh() == 120
    os.rename(tmp_path / segment_name(101, True), tmp_path / segment_name(102, True))
    from eventstore import WalSequenceError
    with pytest.raises(WalSequenceError):
        WalIndex(str(tmp_path)).refresh()
    assert SEGMENT_HEADER_SIZE == 32
