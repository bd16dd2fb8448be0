"""Persisted time-travel keyframes (``evengine index``) against a brute-force
full replay: random histories written by the real engine, keyframes written at
random spacings (some with the engine still appending afterwards), then fresh
processes' views at random seqs and times."""

from __future__ import annotations

import os
import random
import shutil

from hypothesis import HealthCheck, given, settings, strategies as st

from recovery import open_data_dir
from tests.property.test_history_property import SYMBOLS, l2_tuples, l3_tuples, reference_states, write_history
from tests.support.files import flip_byte


def books_of(h, seq):
    return {s: (l2_tuples(h.book(seq, s)), l3_tuples(h.book(seq, s, level="L3"))) for s in SYMBOLS}


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), n=st.integers(200, 900), every=st.integers(20, 400),
       picks=st.lists(st.floats(0, 1), min_size=3, max_size=8))
def test_fresh_views_from_keyframe_files_equal_a_full_replay(tmp_path_factory, seed, n, every, picks):
    d = str(tmp_path_factory.mktemp("kf"))
    write_history(d, seed, n, 10**9)               # no engine snapshots: every base is a keyframe file
    writer = open_data_dir(d)
    writer.timeline.orders_factor = 0              # exactly every `every` events (not by book size)
    written = writer.write_index(every)
    h0 = open_data_dir(d)
    last = h0.last_seq
    assert written == len(h0.timeline.files.seqs) >= last // every - 1
    seqs = sorted({max(3, int(p * last)) for p in picks} | {last})     # the symbols are added by seq 3
    ref = reference_states(d, set(seqs))
    for seq in seqs:
        h = open_data_dir(d, max_replay=10**9)     # a fresh process: nothing in memory
        h.timeline.seek(seq)
        kind, base = h.stats.last_base
        assert books_of(h, seq) == ref[seq][0]
        assert h.state_hash(seq) == ref[seq][1]
        if h.timeline.files.seqs and seq >= h.timeline.files.seqs[0]:
            assert kind == "keyframe file" and 0 <= seq - base
        # at most one spacing (plus the rest of the step it ended in) replayed
        assert seq - base <= every + 64


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), every=st.integers(20, 300), probes=st.lists(st.floats(0, 1), min_size=5,
                                                                                   max_size=20))
def test_seq_at_time_from_keyframe_headers_equals_the_full_time_index(tmp_path_factory, seed, every, probes):
    d = str(tmp_path_factory.mktemp("kft"))
    write_history(d, seed, 500, 10**9)
    writer = open_data_dir(d)
    writer.timeline.orders_factor = 0
    writer.write_index(every)
    full = open_data_dir(d)
    full.timeline.files = None                    # the whole-WAL time index only
    cmds = [e.ts_ns for _, e in full.events() if e[0] < 64]
    lo, hi = min(cmds) - 10, max(cmds) + 10
    for p in probes:
        ts = int(lo + p * (hi - lo))
        h = open_data_dir(d)
        assert h.seq_at_time(ts) == full.seq_at_time(ts)
        assert h.stats.scanned_events <= every + 64 + 1      # one interval scanned, not the WAL


def test_incremental_index_damaged_and_foreign_files_fall_back_to_the_truth(tmp_path):
    d, other = str(tmp_path / "d"), str(tmp_path / "other")
    write_history(d, 1, 400, 10**9)
    assert open_data_dir(d).write_index(100) >= 3
    first = list(open_data_dir(d).timeline.files.seqs)
    write_history(d, 2, 400, 10**9)                # the engine appends more (same directory)
    h = open_data_dir(d)
    added = h.write_index(100)
    assert added >= 3 and h.timeline.files.seqs[:len(first)] == first
    assert h.stats.keyframe_files_written == added and h.stats.index_events < h.last_seq
    last = h.last_seq
    seqs = [first[1] + 5, h.timeline.files.seqs[-1] + 3, last]
    ref = reference_states(d, set(seqs))
    # a damaged payload: rejected, the next older base answers, exact
    victim = open_data_dir(d).timeline.files
    target = max(q for q in victim.seqs if q <= seqs[1])
    flip_byte(victim.path(target), -10)
    h = open_data_dir(d)
    h.timeline.seek(seqs[1])
    assert h.stats.keyframe_files_rejected == 1 and h.stats.last_base[1] < target
    assert books_of(h, seqs[1]) == ref[seqs[1]][0]
    # another WAL's keyframes: every one rejected (the frame each names differs)
    write_history(other, 3, 800, 10**9)
    shutil.rmtree(os.path.join(other, "index"), ignore_errors=True)
    shutil.copytree(os.path.join(d, "index"), os.path.join(other, "index"))
    ref_other = reference_states(other, {400, 700})
    for seq in (400, 700):
        h = open_data_dir(other)
        assert books_of(h, seq) == ref_other[seq][0]
        assert h.stats.keyframe_files_used == 0 and h.stats.keyframe_files_rejected >= 1
    # rebuilding over them replaces what does not check
    h = open_data_dir(other)
    h.write_index(100)
    h = open_data_dir(other)
    h.timeline.seek(700)
    assert h.stats.last_base[0] == "keyframe file" and books_of(h, 700) == ref_other[700][0]
    rng = random.Random(0)
    for seq in rng.sample(range(1, last), 5):
        assert open_data_dir(d).state_hash(seq) == reference_states(d, {seq})[seq][1]


def test_a_wal_prune_removes_the_keyframes_of_pruned_events(tmp_path):
    from recovery.retention import prune_wal
    from engine.service import Engine, EngineConfig
    from engine.io.synthetic import SyntheticSource
    d = str(tmp_path)
    cfg = EngineConfig(data_dir=d, snapshot_every=20_000, control_socket=False, pin_cpus=False,
                       segment_size_bytes=200_000, snapshot_retain=2)
    with Engine(cfg) as e:
        e.run(SyntheticSource(60_000, 3))
    h = open_data_dir(d)
    h.write_index(5_000)
    before = list(h.timeline.files.seqs)
    result = prune_wal(d, before_seq=10**9)
    floor = open_data_dir(d).pruned_before_seq
    assert floor > 5_000 and result is not None
    left = open_data_dir(d).timeline.files
    left.rescan()
    assert left.seqs == [q for q in before if q >= floor] and left.seqs
    h = open_data_dir(d, max_replay=10**9)
    seq = max(left.seqs[-1], h.earliest_seq) + 100     # states before the base snapshot are refused
    h.timeline.seek(seq)
    assert h.stats.last_base[0] in ("keyframe file", "snapshot") and h.stats.keyframe_files_rejected == 0
