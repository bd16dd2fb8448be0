"""Torn tails are cut; flipped bytes anywhere else are errors naming segment and offset."""

from __future__ import annotations

import os

import pytest

from tests.support.files import flip_byte

from eventstore import CorruptRecordError, WalReader, WalWriter, list_segments
from eventstore.segment import FRAME_HEADER_SIZE, SEGMENT_HEADER_SIZE, scan_frames


def make_wal(path, n=300, per_frame=50, **kw):
    w = WalWriter(str(path), 1, compress_sealed=kw.pop("compress_sealed", False), **kw)
    for i in range(1, n + 1):
        w.append(("event", i))
        if i % per_frame == 0:
            w.flush()
    w.close()
    segs = list_segments(str(path))
    return segs


def frame_offsets(path):
    data = open(path, "rb").read()
    return [f.file_offset for f in scan_frames(data, path, is_last=True)], len(data)


@pytest.mark.parametrize("cut", [1, 10, FRAME_HEADER_SIZE - 1, FRAME_HEADER_SIZE + 3, "payload-1"])
def test_torn_tail_is_cut_at_last_whole_frame(tmp_path, cut):
    seg = make_wal(tmp_path)[-1].path
    offsets, size = frame_offsets(seg)
    last = offsets[-1]
    new_size = size - 1 if cut == "payload-1" else last + cut
    with open(seg, "r+b") as f:
        f.truncate(new_size)
    scan = WalReader(str(tmp_path)).scan()
    assert scan.last_seq == 250
    assert scan.torn_tail is not None and scan.torn_tail.file_offset == last
    assert [s for s, _ in WalReader(str(tmp_path)).read()][-1] == 250


def test_zero_filled_tail_is_torn(tmp_path):
    seg = make_wal(tmp_path)[-1].path
    with open(seg, "ab") as f:
        f.write(b"\0" * 100)
    scan = WalReader(str(tmp_path)).scan()
    assert scan.last_seq == 300 and scan.torn_tail.reason.startswith("zero-filled")


def test_garbled_last_frame_payload_is_torn(tmp_path):
    seg = make_wal(tmp_path)[-1].path
    with open(seg, "r+b") as f:
        f.seek(-2, os.SEEK_END)
        f.write(b"\xff\xff")
    scan = WalReader(str(tmp_path)).scan()
    assert scan.last_seq == 250 and scan.torn_tail is not None


@pytest.mark.parametrize("where", ["header", "payload"])
def test_flipped_byte_before_tail_names_segment_and_offset(tmp_path, where):
    seg = make_wal(tmp_path)[-1].path
    offsets, _ = frame_offsets(seg)
    target = offsets[2]
    pos = target + (5 if where == "header" else FRAME_HEADER_SIZE + 7)
    flip_byte(seg, pos, 0x40)
    with pytest.raises(CorruptRecordError) as info:
        WalReader(str(tmp_path)).scan()
    assert info.value.segment == seg and info.value.file_offset == target
    assert seg in str(info.value) and str(target) in str(info.value)


def test_flipped_byte_in_earlier_raw_segment_is_corruption_not_tail(tmp_path):
    segs = make_wal(tmp_path, n=2000, segment_size_bytes=2048)
    first = segs[0].path
    flip_byte(first, -3, 1)
    with pytest.raises(CorruptRecordError) as info:
        WalReader(str(tmp_path)).scan()
    assert info.value.segment == first


def test_flipped_byte_in_sealed_segment_is_corruption(tmp_path):
    segs = make_wal(tmp_path, n=2000, segment_size_bytes=2048, compress_sealed=True)
    sealed = [s for s in segs if s.sealed]
    assert sealed
    path = sealed[0].path
    flip_byte(path, 20, 0x10)
    with pytest.raises(CorruptRecordError) as info:
        WalReader(str(tmp_path)).scan()
    assert info.value.segment == path


def test_bad_segment_magic_is_named(tmp_path):
    seg = make_wal(tmp_path)[-1].path
    with open(seg, "r+b") as f:
        f.write(b"NOTAWAL!")
    with pytest.raises(CorruptRecordError, match="bad magic"):
        WalReader(str(tmp_path)).scan()


@pytest.mark.parametrize("header_bytes", [0, 7, 31])
def test_new_segment_with_incomplete_header_is_a_torn_tail(tmp_path, header_bytes):
    """A crash right after a rotation created the next segment, before its
    header was whole: recovery cuts it and the writer reuses the name."""
    from eventstore.segment import encode_segment_header, segment_name
    make_wal(tmp_path)
    (tmp_path / segment_name(301)).write_bytes(encode_segment_header(301)[:header_bytes])
    scan = WalReader(str(tmp_path)).scan()
    assert scan.last_seq == 300 and scan.torn_tail.file_offset == 0
    w = WalWriter(str(tmp_path), 301)
    w.append(("event", 301))
    w.close()
    assert [s for s, _ in WalReader(str(tmp_path)).read(299)] == [299, 300, 301]
