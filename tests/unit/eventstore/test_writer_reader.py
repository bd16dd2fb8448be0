"""WAL writer and reader on real files with real fsync and a real syncer process."""

from __future__ import annotations

import os

import pytest

from eventstore import (CorruptRecordError, EventBuffer, WalReader, WalSequenceError, WalWriter,
                        list_segments)


def write_events(wal_dir, n, start=1, **kw):
    w = WalWriter(str(wal_dir), start, **kw)
    for i in range(start, start + n):
        w.append((2, i, "S", i))
        if i % 100 == 0:
            w.flush()
    w.close()
    return w


def test_events_read_back_in_order_from_any_seq(tmp_path):
    write_events(tmp_path, 1000)
    r = WalReader(str(tmp_path))
    assert [s for s, _ in r.read()] == list(range(1, 1001))
    assert list(r.read(500, 502)) == [(500, (2, 500, "S", 500)), (501, (2, 501, "S", 501)), (502, (2, 502, "S", 502))]
    assert list(r.read(1001)) == []


def test_close_makes_everything_durable(tmp_path):
    w = write_events(tmp_path, 10)
    assert w.peek_durable() == 10
    syncs, _ = w.sync_counters()
    assert syncs >= 1


def test_wait_durable_flushes_and_waits(tmp_path):
    w = WalWriter(str(tmp_path), 1)
    try:
        w.append((1,))
        w.append((2,))
        assert w.durable_seq == 0 or w.durable_seq <= 2
        assert w.wait_durable(2, timeout=10)
        assert w.durable_seq == 2
    finally:
        w.close()


def test_segments_rotate_and_seal_with_zstd(tmp_path):
    write_events(tmp_path, 5000, segment_size_bytes=4096)
    segs = list_segments(str(tmp_path))
    assert len(segs) > 3
    assert all(s.sealed for s in segs[:-1]) and not segs[-1].sealed
    assert [s for s, _ in WalReader(str(tmp_path)).read()] == list(range(1, 5001))
    scan = WalReader(str(tmp_path)).scan()
    assert scan.last_seq == 5000 and scan.torn_tail is None


def test_writer_continues_after_reopen(tmp_path):
    write_events(tmp_path, 100)
    write_events(tmp_path, 50, start=101)
    assert [s for s, _ in WalReader(str(tmp_path)).read(95, 105)] == list(range(95, 106))


def test_append_at_wrong_seq_raises(tmp_path):
    w = WalWriter(str(tmp_path), 1)
    try:
        with pytest.raises(WalSequenceError):
            w.append_at(5, (1,))
    finally:
        w.close()


def test_extend_at_takes_a_batch_whole_and_refuses_one_out_of_line(tmp_path):
    w = WalWriter(str(tmp_path), 1)
    try:
        w.append((0, "first"))
        w.extend_at(2, [(1, i) for i in range(10)], 0)        # joins the open frame
        with pytest.raises(WalSequenceError):
            w.extend_at(13, [(2, 0)], 0)                        # seq 12 is next: refused, nothing taken
        assert w.next_seq == 12
        w.flush()
        w.extend_at(12, [(3, i) for i in range(5)], 0)         # starts a frame of its own
        w.wait_durable(16)
    finally:
        w.close()
    assert [p for _, p in WalReader(str(tmp_path)).read()] == (
        [(0, "first")] + [(1, i) for i in range(10)] + [(3, i) for i in range(5)])
    assert [s for s, _ in WalReader(str(tmp_path)).read()] == list(range(1, 17))


def test_event_buffer_serves_only_durable_events():
    b = EventBuffer(3, next_seq=1)
    for i in range(5):
        b.append(i)
    assert b.first_seq == 3 and b.last_seq == 5
    assert b.read(3, durable_seq=4) == [(3, 2), (4, 3)]
    with pytest.raises(KeyError):
        b.read(1, durable_seq=5)


def test_writer_buffer_holds_recent_events(tmp_path):
    w = WalWriter(str(tmp_path), 1, buffer_capacity=10)
    try:
        for i in range(20):
            w.append(("e", i))
        w.wait_durable(20, timeout=10)
        assert w.buffer.read(18, durable_seq=w.durable_seq) == [(18, ("e", 17)), (19, ("e", 18)), (20, ("e", 19))]
    finally:
        w.close()


def test_dead_syncer_fails_waiters(tmp_path):
    from eventstore import WriterDiedError
    import signal
    w = WalWriter(str(tmp_path), 1)
    w.append((1,))
    os.kill(w.syncer_pid, signal.SIGKILL)
    with pytest.raises(WriterDiedError):
        for _ in range(1000):
            w.append((1,))
            w.flush()
            w.wait_durable(w.next_seq - 1, timeout=0.5)
    w._closed = True  # its syncer is gone; nothing more to close cleanly


def test_a_syncer_that_dies_after_taking_a_frame_is_seen_by_a_caller_that_only_waits_on_the_wakeup_fd(tmp_path):
    """The service's event loop only selects on ``wakeup_fd``; a frame written
    into the request pipe just before the syncer died meets no ``EPIPE``, so
    the end of file on the wake-up pipe is how the death shows."""
    import select
    import signal
    from eventstore import WriterDiedError
    w = WalWriter(str(tmp_path), 1)
    try:
        w.append((1,))
        w.wait_durable(1, timeout=10)
        os.kill(w.syncer_pid, signal.SIGSTOP)
        w.append((2,))
        w.flush()                          # into the pipe: the syncer is alive, only stopped
        os.kill(w.syncer_pid, signal.SIGKILL)
        with pytest.raises(WriterDiedError, match="syncer process exited"):
            for _ in range(100):
                ready, _, _ = select.select([w.wakeup_fd], [], [], 0.1)
                if ready:
                    w.drain_wakeups()
        assert w.peek_durable() == 1
        with pytest.raises(WriterDiedError):
            w.durable_seq
    finally:
        w._closed = True  # its syncer is gone; nothing more to close cleanly


def test_a_writer_opened_after_a_crash_syncs_the_earlier_segments_before_it_claims_them_durable(tmp_path, monkeypatch):
    """A killed process may leave frames in the page cache only; the next
    writer's watermark starts at ``next_seq - 1``, so it fdatasyncs those
    segments (the real call, recorded) before it creates the watermark."""
    from eventstore import writer as writer_mod
    write_events(tmp_path, 300, compress_sealed=False)
    raw = [s.path for s in list_segments(str(tmp_path)) if not s.sealed]
    assert raw
    order = []
    real_sync, real_create = os.fdatasync, writer_mod.create_watermark

    def recording_sync(fd):
        order.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real_sync(fd)

    def recording_create(*args):
        order.append("watermark")
        return real_create(*args)

    monkeypatch.setattr(writer_mod.os, "fdatasync", recording_sync)
    monkeypatch.setattr(writer_mod, "create_watermark", recording_create)
    w = WalWriter(str(tmp_path), 301, compress_sealed=False)
    w.close()
    assert order[:len(raw) + 1] == raw + ["watermark"]
