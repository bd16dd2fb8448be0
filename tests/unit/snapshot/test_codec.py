"""Snapshot codec, catalog and forked writer on real files and a real fork."""

from __future__ import annotations

import os

import pytest

from engine.core import AddSymbol, Matcher, PlaceOrder
from snapshot import (SnapshotChecksumError, SnapshotFormatError, SnapshotInfo, SnapshotWriter, decode_snapshot,
                      encode_snapshot, list_snapshots, load_snapshot, newest_valid, prune, snapshot_name)


def tiny_matcher() -> Matcher:
    m = Matcher()
    m.apply(1, AddSymbol.new("X"))
    m.apply(2, PlaceOrder.new("X", 7, 2, 100, 5))
    return m


def test_header_bytes_match_format_md():
    data = encode_snapshot(tiny_matcher().export_state())
    assert data[:24] == bytes.fromhex("4556534e41500d0a0300000030000000" "0200000000000000")


def test_roundtrip_restores_same_state_hash():
    m = tiny_matcher()
    state = decode_snapshot(encode_snapshot(m.export_state()))
    assert Matcher.from_state(state).state_hash() == m.state_hash()


@pytest.mark.parametrize("offset", [3, 20, 45, 60, -1])
def test_flipped_byte_fails_checksum(offset):
    data = bytearray(encode_snapshot(tiny_matcher().export_state()))
    data[offset] ^= 0x20
    with pytest.raises(SnapshotFormatError):
        decode_snapshot(bytes(data), "x.evsnap")


def test_truncated_snapshot_fails():
    data = encode_snapshot(tiny_matcher().export_state())
    with pytest.raises(SnapshotChecksumError):
        decode_snapshot(data[:-5], "x.evsnap")


def test_newest_valid_skips_damaged(tmp_path):
    good = encode_snapshot(tiny_matcher().export_state())
    (tmp_path / snapshot_name(2)).write_bytes(good)
    m = tiny_matcher()
    m.apply(3, PlaceOrder.new("X", 8, 2, 101, 5))
    bad = bytearray(encode_snapshot(m.export_state()))
    bad[-3] ^= 1
    (tmp_path / snapshot_name(3)).write_bytes(bytes(bad))
    skipped = []
    info, state = newest_valid(str(tmp_path), on_skip=lambda i, e: skipped.append(i.seq))
    assert info.seq == 2 and skipped == [3]
    assert newest_valid(str(tmp_path), at_or_before=1) is None


def test_prune_keeps_newest(tmp_path):
    for seq in (1, 2, 3, 4):
        (tmp_path / snapshot_name(seq)).write_bytes(b"x")
    (tmp_path / (snapshot_name(5) + ".tmp")).write_bytes(b"x")
    prune(str(tmp_path), 2, clean_tmp=True)
    assert [s.seq for s in list_snapshots(str(tmp_path))] == [3, 4]
    assert not list(tmp_path.glob("*.tmp"))


def test_fork_writer_writes_state_and_measures_pause(tmp_path):
    m = tiny_matcher()
    w = SnapshotWriter(str(tmp_path), retain=2)
    job = w.start(m.last_seq, m.export_state, lambda seq: True)
    m.apply(3, PlaceOrder.new("X", 9, 2, 102, 1))   # the parent goes on; the child keeps its copy
    job = w.poll(block=True)
    assert job.ok and job.fork_pause_ns > 0
    state = load_snapshot(SnapshotInfo(2, job.path))
    assert Matcher.from_state(state).state_hash() == tiny_matcher().state_hash()


def test_fork_writer_never_lists_snapshot_ahead_of_wal(tmp_path):
    m = tiny_matcher()
    w = SnapshotWriter(str(tmp_path))
    w.start(m.last_seq, m.export_state, lambda seq: False)
    job = w.poll(block=True)
    assert not job.ok and list_snapshots(str(tmp_path)) == []
    assert not list(tmp_path.glob("*"))
