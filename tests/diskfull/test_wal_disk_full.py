"""The WAL writer on a real, full tmpfs: a failed frame is cut off the segment,
kept, and written again once there is space; nothing is lost, repeated or
reordered, and nothing becomes durable that was not written."""

from __future__ import annotations

import errno
import os

import pytest

from eventstore import WalReader, WalWriteError, WalWriter, list_segments
from tests.support.tmpfs import PAGE, Ballast, free_bytes, tmpfs


@pytest.fixture
def disk(tmp_path):
    with tmpfs(tmp_path / "mnt", "1m") as where:
        yield where


def event(i: int) -> tuple:
    return (2, i, "S", i, "x" * 40)


def test_a_frame_that_does_not_fit_is_cut_off_kept_and_written_when_space_comes_back(disk):
    wal = disk / "wal"
    w = WalWriter(str(wal), 1, compress_sealed=False)
    ballast = Ballast(disk)
    try:
        for i in range(1, 11):
            w.append(event(i))
        w.flush()
        assert w.wait_durable(10, timeout=10)
        ballast.fill()
        seg = wal / list_segments(str(wal))[-1].path.split("/")[-1]
        size_before = os.path.getsize(seg)
        # A frame larger than the free slack of the segment's last page.
        for i in range(11, 11 + 2 * PAGE // 60):
            w.append(event(i))
        last = w.next_seq - 1
        with pytest.raises(WalWriteError) as info:
            w.flush()
        err = info.value
        assert err.errno == errno.ENOSPC
        assert err.path == str(seg) and err.file_offset == size_before
        assert (err.first_seq, err.last_seq, err.durable_seq) == (11, last, 10)
        assert err.free_bytes is not None and err.free_bytes < PAGE
        assert "No space left on device" in str(err) and str(seg) in str(err)
        # cut back to the last whole frame: the WAL on disk is whole
        assert os.path.getsize(seg) == size_before
        scan = WalReader(str(wal)).scan()
        assert scan.last_seq == 10 and scan.torn_tail is None
        assert w.write_error is err and w.unwritten_events == last - 10
        assert w.durable_seq == 10
        # a retry on a still-full disk fails the same way and changes nothing
        with pytest.raises(WalWriteError):
            w.flush()
        assert os.path.getsize(seg) == size_before
        # events appended meanwhile queue behind the failed frame
        w.append(event(last + 1))
        ballast.free(-1)
        w.flush()
        assert w.write_error is None
        assert w.wait_durable(last + 1, timeout=10)
    finally:
        w.close()
    got = list(WalReader(str(wal)).read())
    assert [s for s, _ in got] == list(range(1, last + 2))
    assert all(tuple(p) == event(s) for s, p in got)


def test_a_segment_that_cannot_be_started_is_retried_and_the_old_one_stays_active(disk):
    wal = disk / "wal"
    # Segments of ~3 frames, all inside the first page: the rotation's new file
    # needs a page the frames do not.
    w = WalWriter(str(wal), 1, segment_size_bytes=PAGE // 2, compress_sealed=False)
    ballast = Ballast(disk)
    try:
        ballast.fill()
        err = None
        seq = 0
        while err is None:
            for _ in range(5):
                seq += 1
                w.append(event(seq))
            try:
                w.flush()
            except WalWriteError as exc:
                err = exc
        assert err.errno == errno.ENOSPC
        assert err.last_seq < err.first_seq, "the failure must be the new segment's, not a frame's"
        assert len(list_segments(str(wal))) == 1          # the half-made segment was removed
        assert WalReader(str(wal)).scan().last_seq == err.first_seq - 1
        ballast.free(-1)
        for _ in range(40):
            seq += 1
            w.append(event(seq))
            w.flush()
        assert w.wait_durable(seq, timeout=10)
    finally:
        w.close()
    assert len(list_segments(str(wal))) > 2
    assert [s for s, _ in WalReader(str(wal)).read()] == list(range(1, seq + 1))
    assert WalReader(str(wal)).scan().torn_tail is None


def test_many_stalls_lose_nothing(disk):
    """Space given back a page at a time, failing at every kind of point
    (frames, rotations, sealing a segment): the log reads back exactly."""
    wal = disk / "wal"
    w = WalWriter(str(wal), 1, segment_size_bytes=3 * PAGE, compress_sealed=True)
    ballast = Ballast(disk)
    failures = {"frame": 0, "segment": 0}
    seq = 0
    try:
        ballast.fill()
        ballast.free(4)
        for round_ in range(300):
            for _ in range(1 + round_ % 7):
                seq += 1
                w.append(event(seq))
            try:
                w.flush()
            except WalWriteError as exc:
                failures["frame" if exc.last_seq >= exc.first_seq else "segment"] += 1
                if ballast.files:
                    ballast.free(1)
                assert WalReader(str(wal)).scan().torn_tail is None
        ballast.free(-1)
        w.flush()
        assert w.wait_durable(seq, timeout=10)
    finally:
        w.close()
    assert failures["frame"] > 0 and failures["segment"] > 0, failures
    assert [s for s, _ in WalReader(str(wal)).read()] == list(range(1, seq + 1))
    assert free_bytes(disk) > 0
