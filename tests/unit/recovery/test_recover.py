"""Recovery = newest valid snapshot + WAL delta, on real engines and files."""

from __future__ import annotations

import os

import pytest

from tests.support.files import flip_byte
from hypothesis import HealthCheck, given, settings, strategies as st

from engine.core import AddSymbol, CancelOrder, Matcher, PlaceOrder
from engine.io.synthetic import SyntheticSource
from engine.service import Engine, EngineConfig
from eventstore import CorruptRecordError, list_segments
from recovery import ReplayMismatchError, open_data_dir, recover, verify
from snapshot import list_snapshots


def run_engine(data_dir, n, seed=1, **cfg):
    engine = Engine(EngineConfig(data_dir=str(data_dir), control_socket=False, **cfg))
    engine.open()
    return engine.run(SyntheticSource(n, seed))


def full_replay_hash(n, seed=1):
    m = Matcher()
    for cmd in SyntheticSource(n, seed).commands(m, None):
        m.apply(m.last_seq + 1, cmd)
    return m


def test_recovery_from_snapshot_plus_delta_equals_full_replay(tmp_path):
    summary = run_engine(tmp_path, 30_000, snapshot_every=7_000)
    assert summary.snapshots >= 3
    rec = recover(str(tmp_path))
    assert rec.snapshot is not None and rec.snapshot.seq > 0
    assert rec.replayed_events < summary.last_seq
    assert rec.matcher.state_hash() == summary.state_hash == full_replay_hash(30_000).state_hash()


def test_restart_resumes_source_after_last_logged_position(tmp_path):
    first = run_engine(tmp_path, 5_000)
    again = run_engine(tmp_path, 5_000)          # a finished run: nothing more
    assert again.commands == 0 and again.state_hash == first.state_hash
    more = run_engine(tmp_path, 8_000)           # the same flow, longer: only the tail
    assert more.commands == 3_000
    assert more.state_hash == full_replay_hash(8_000).state_hash()


def test_damaged_newest_snapshot_is_skipped(tmp_path):
    summary = run_engine(tmp_path, 20_000, snapshot_every=5_000)
    snaps = list_snapshots(str(tmp_path / "snapshots"))
    newest = snaps[-1].path
    flip_byte(newest, 100, 0xFF)
    rec = recover(str(tmp_path))
    assert rec.snapshot.seq == snaps[-2].seq
    assert rec.skipped_snapshots and rec.skipped_snapshots[0][0] == newest
    assert rec.matcher.state_hash() == summary.state_hash


def test_corruption_in_wal_stops_recovery_with_offset(tmp_path):
    run_engine(tmp_path, 5_000, batch_max=64)
    seg = list_segments(str(tmp_path / "wal"))[-1].path
    flip_byte(seg, 200, 0x01)
    with pytest.raises(CorruptRecordError) as info:
        recover(str(tmp_path))
    assert info.value.segment == seg


def test_torn_tail_cut_and_engine_goes_on(tmp_path):
    first = run_engine(tmp_path, 5_000, batch_max=64)
    seg = list_segments(str(tmp_path / "wal"))[-1].path
    size = os.path.getsize(seg)
    with open(seg, "r+b") as f:
        f.truncate(size - 7)
    rec = recover(str(tmp_path))
    assert rec.torn_tail is not None
    assert rec.matcher.last_seq < first.last_seq
    # Restart: the source resumes after the last position that survived.
    again = run_engine(tmp_path, 5_000)
    assert again.state_hash == first.state_hash


def test_replay_mismatch_is_detected(tmp_path):
    """A WAL whose logged trade differs from what replay produces is refused."""
    from eventstore import WalWriter
    w = WalWriter(str(tmp_path / "wal"), 1)
    w.append(AddSymbol.new("X"))
    w.append(PlaceOrder.new("X", 1, 2, 100, 5))
    w.append(PlaceOrder.new("X", 2, 1, 100, 5))
    w.append((64, 1, 0, "X", 100, 4, 1, 1, 2, 0, 0, 3))   # qty 4: replay says 5
    w.close()
    with pytest.raises(ReplayMismatchError) as info:
        recover(str(tmp_path))
    assert info.value.seq == 4
    assert verify(str(tmp_path))["mismatches"] == 1


def test_time_travel_book_at_any_seq(tmp_path):
    run_engine(tmp_path, 10_000, snapshot_every=3_000)
    history = open_data_dir(str(tmp_path))
    reference = Matcher()
    targets = {500, 2_999, 3_000, 7_777, history.last_seq}
    seq_of = {}
    from eventstore import WalReader
    from recovery import Replayer
    rp = Replayer(reference)
    for seq, payload in WalReader(str(tmp_path / "wal")).read():
        rp.feed(seq, payload)
        if seq in targets:
            seq_of[seq] = (reference.books["SYN"].depth(1, 5), reference.books["SYN"].depth(2, 5)) if "SYN" in reference.books else None
    for seq in targets:
        book = history.book_at(seq, "SYN", depth=5)
        assert (book["bids"], book["asks"]) == seq_of[seq]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(200, 3_000), every=st.integers(50, 1_000), seed=st.integers(0, 10_000))
def test_property_snapshot_plus_delta_equals_full_replay(tmp_path_factory, n, every, seed):
    d = tmp_path_factory.mktemp("prop")
    summary = run_engine(d, n, seed, snapshot_every=every, batch_max=32)
    rec = recover(str(d))
    assert rec.matcher.state_hash() == summary.state_hash == full_replay_hash(n, seed).state_hash()
    assert verify(str(d))["snapshot_mismatches"] == []


class MultiCommandRows:
    """A source whose every row gives three commands (like a LOBSTER sweep)."""

    name = "multi"
    total = None

    def __init__(self, rows):
        self.rows = rows

    def commands(self, matcher, after):
        if "M" not in matcher.books:
            yield AddSymbol.new("M")
        start = -1 if after is None else after
        for row in range(start + 1, self.rows):
            for k in range(3):
                yield PlaceOrder.new("M", row * 3 + k + 1, 1 + (row + k) % 2, 100 + k, 1, source=self.name, source_pos=row)

    def close(self):
        pass


def test_batches_never_split_the_commands_of_one_row(tmp_path):
    from eventstore import WalReader
    from eventstore.segment import list_segments, scan_frames, load_segment_bytes
    engine = Engine(EngineConfig(data_dir=str(tmp_path), control_socket=False, batch_max=10))
    engine.open()
    engine.run(MultiCommandRows(100))
    from eventstore.reader import decode_frame
    frames = 0
    for info in list_segments(str(tmp_path / "wal")):
        data = load_segment_bytes(info)
        for frame in scan_frames(data, info.path, is_last=True):
            rows = [p[-1] for p in decode_frame(frame, info.path) if p[0] == 2]
            # every row in a frame (the unit a crash keeps or loses) is whole
            assert all(rows.count(r) == 3 for r in set(rows)), rows
            frames += 1
    assert frames > 20


def test_unencodable_command_is_logged_as_bad_input_and_nothing_is_lost(tmp_path):
    """A command with a 2**70 price (msgpack cannot encode it) is rejected and
    logged as bad input; the commands around it in the same batch survive."""

    class Source:
        name = "odd"
        total = None

        def commands(self, matcher, after):
            if "X" not in matcher.books:
                yield AddSymbol.new("X")
            yield PlaceOrder.new("X", 1, 2, 100, 5, source="odd", source_pos=0)
            yield PlaceOrder.new("X", 2, 2, 2**70, 5, source="odd", source_pos=1)
            yield PlaceOrder.new("X", 10**30, 1, 100, 5, source="odd", source_pos=2)
            yield PlaceOrder.new("X", 3, 1, 100, 2, source="odd", source_pos=3)

        def close(self):
            pass

    engine = Engine(EngineConfig(data_dir=str(tmp_path), control_socket=False))
    engine.open()
    summary = engine.run(Source())
    kinds = [obj[0] for _, obj in open_data_dir(str(tmp_path)).events()]
    assert kinds == [1, 2, 5, 65, 5, 65, 2, 64]
    assert recover(str(tmp_path)).matcher.state_hash() == summary.state_hash
    assert engine.matcher.positions["odd"] == 3


def test_engine_reads_only_durable_events_from_buffer_or_disk(tmp_path):
    engine = Engine(EngineConfig(data_dir=str(tmp_path), control_socket=False, buffer_capacity=50))
    engine.open()
    try:
        for cmd in SyntheticSource(300, 3).commands(engine.matcher, None):
            engine.submit(cmd)
        assert engine.read_events(1) == [] or engine.read_events(1)[-1][0] <= engine.wal.durable_seq
        engine.end_batch()
        engine.wal.wait_durable(engine.wal.next_seq - 1, timeout=10)
        assert engine.wal.next_seq == engine.next_seq
        last = engine.wal.durable_seq
        recent = engine.read_events(last - 10)          # from the buffer
        old = engine.read_events(1, 20)                  # left the buffer: from disk
        assert [s for s, _ in recent] == list(range(last - 10, last + 1))
        assert [s for s, _ in old] == list(range(1, 21))
        assert tuple(old[0][1]) == tuple(AddSymbol.new("SYN"))
    finally:
        engine.close()


def test_engine_makes_no_reference_cycles(tmp_path):
    """The engine pauses the cyclic GC while open (its full collections stall
    the loop); that is only sound if nothing it does creates cycles."""
    import gc
    gc.collect()
    engine = Engine(EngineConfig(data_dir=str(tmp_path), snapshot_every=4_000))
    engine.open()
    assert not gc.isenabled()
    engine.run(SyntheticSource(20_000, 9))
    assert gc.isenabled()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        found = gc.collect()
        kinds = sorted({type(o).__name__ for o in gc.garbage})
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert found == 0, kinds


def test_tail_cut_between_command_and_its_trades_is_completed_on_start(tmp_path):
    """A crash can leave a command durable without the trades it caused (they
    may sit in the next frame). Recovery re-derives them and the engine logs
    them before anything else."""
    from eventstore import WalWriter
    w = WalWriter(str(tmp_path / "wal"), 1)
    w.append(AddSymbol.new("X"))
    w.append(PlaceOrder.new("X", 1, 2, 100, 5, source="s", source_pos=0))
    w.append(PlaceOrder.new("X", 2, 1, 100, 3, source="s", source_pos=1))   # trades 3 lots: trade not logged
    w.close()
    rec = recover(str(tmp_path))
    assert len(rec.pending) == 1 and rec.pending[0].qty == 3 and rec.next_seq == 4
    engine = Engine(EngineConfig(data_dir=str(tmp_path), control_socket=False))
    engine.open()
    engine.close()
    events = list(open_data_dir(str(tmp_path)).events())
    assert [s for s, _ in events] == [1, 2, 3, 4] and events[-1][1].match_id == 1
    report = verify(str(tmp_path))
    assert report["mismatches"] == 0 and report["trades_checked"] == 1
