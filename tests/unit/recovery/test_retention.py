"""WAL retention (``recovery.retention``, ``evengine wal prune``) on real
engines and files: what is removed, counted against the rules; recovery,
verify and time travel afterwards; the record written before the unlinks."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import recovery.retention as retention
from engine.core import Matcher
from engine.io.synthetic import SyntheticSource
from engine.service import Engine, EngineConfig
from eventstore import PrunedRangeError, SegmentInfo, WalReader, list_segments, read_retention, retention_lock
from recovery import PrunedWalGapError, open_data_dir, recover, verify
from recovery.retention import KafkaMarks, RetainPolicy, SnapFact, parse_policy, plan_prune, prune_wal
from snapshot import SnapshotWriter, list_snapshots, load_snapshot
from tests.support.files import flip_byte

SEG = 16_000   # bytes: ~1,400 events a segment


def run_engine(data_dir, n, seed=1, accounts=0, **cfg):
    cfg.setdefault("segment_size_bytes", SEG)
    cfg.setdefault("snapshot_every", 4_000)
    engine = Engine(EngineConfig(data_dir=str(data_dir), control_socket=False, pin_cpus=False, **cfg))
    engine.open()
    return engine.run(SyntheticSource(n, seed, accounts=accounts), on_batch=_wait_snapshot)


def _wait_snapshot(e):
    """Finish each snapshot before the next batch (a busy machine would skip
    some while one is written): snapshots every ``snapshot_every`` events."""
    if e.snapshots.running is not None:
        e._snapshot_done(e.snapshots.poll(block=True))


def wal(d):
    return os.path.join(str(d), "wal")


def snaps(d):
    return list_snapshots(os.path.join(str(d), "snapshots"))


def expected_removed(d, floor):
    """The rule, plainly: the longest prefix of sealed segments whose successor starts at or before ``floor``."""
    segs = list_segments(wal(d))
    out = []
    for a, b in zip(segs, segs[1:]):
        if not a.sealed or b.first_seq > floor:
            break
        out.append(os.path.basename(a.path))
    return out


def names(d):
    return sorted(n for n in os.listdir(wal(d)) if n.startswith("wal-"))


def recovered_hash(d):
    return recover(str(d), repair=False).matcher.state_hash()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One engine run, copied per test (an engine run costs a second or two)."""
    d = tmp_path_factory.mktemp("built")
    summary = run_engine(d, 20_000)
    assert summary.snapshots >= 4 and len(list_segments(wal(d))) >= 10
    return d, summary


@pytest.fixture
def data(built, tmp_path):
    import shutil
    src, summary = built
    dst = tmp_path / "data"
    shutil.copytree(src, dst)
    return dst, summary


def test_prune_removes_exactly_the_sealed_segments_before_the_oldest_snapshot(data):
    d, summary = data
    before = names(d)
    oldest = snaps(d)[0].seq
    want = expected_removed(d, oldest + 1)
    assert want, "the run must leave segments before the oldest snapshot"
    h0 = recovered_hash(d)
    dry = prune_wal(str(d), before_seq=10**12, dry_run=True)
    assert [os.path.basename(s.path) for s in dry.remove] == want and names(d) == before
    assert not os.path.exists(os.path.join(wal(d), "retention.json"))
    plan = prune_wal(str(d), before_seq=10**12)
    assert plan.applied and plan.floor == oldest + 1 and plan.base_snapshot_seq == oldest
    assert plan.rule == "oldest valid snapshot"
    assert names(d) == sorted(set(before) - set(want))
    assert plan.bytes_freed == dry.bytes_to_free > 0
    rec = read_retention(wal(d))
    assert rec.pruned_before_seq == list_segments(wal(d))[0].first_seq <= oldest + 1
    assert rec.base_snapshot_seq == oldest and sorted(rec.removed) == want
    # Recovery: the same state; the newest snapshot plus the WAL after it.
    r = recover(str(d), repair=False)
    assert r.matcher.state_hash() == h0 == summary.state_hash and r.snapshot.seq == snaps(d)[-1].seq
    v = verify(str(d))
    assert v["mismatches"] == 0 and v["wal_problems"] == [] and v["state_hash"] == h0
    assert v["pruned_before_seq"] == rec.pruned_before_seq and v["base_snapshot_seq"] == oldest
    assert v["snapshots_checked"] == len(snaps(d)) - 1     # all but the base it started from
    # A second prune with nothing new to remove changes nothing.
    again = prune_wal(str(d), before_seq=10**12)
    assert not again.remove and not again.applied and read_retention(wal(d)) == rec


def test_before_seq_bounds_the_floor_at_the_newest_snapshot_below_it(tmp_path):
    summary = run_engine(tmp_path, 20_000, snapshot_retain=50)
    ss = [s.seq for s in snaps(tmp_path)]
    assert len(ss) >= 4
    n = ss[2] + 10                       # between the third and the fourth snapshot
    want = expected_removed(tmp_path, ss[2] + 1)
    assert want
    every = prune_wal(str(tmp_path), before_seq=n, snapshot_retain=50, dry_run=True)
    assert every.base_snapshot_seq == ss[0] and every.rule == "oldest valid snapshot"   # all 50 are fallbacks
    plan = prune_wal(str(tmp_path), before_seq=n, snapshot_retain=1)   # only the newest is a fallback
    assert plan.base_snapshot_seq == ss[2] and plan.floor == ss[2] + 1
    assert plan.rule.startswith("before-seq")
    assert [os.path.basename(s.path) for s in plan.remove] == want
    assert list_segments(wal(tmp_path))[0].first_seq <= ss[2] + 1
    low = prune_wal(str(tmp_path), before_seq=ss[0], snapshot_retain=1)   # no snapshot below it
    assert low.floor is None and not low.remove and low.rule == "before-seq"
    assert recovered_hash(tmp_path) == summary.state_hash


def test_damaged_newest_snapshot_keeps_the_floor_at_the_oldest(data):
    d, summary = data
    ss = snaps(d)
    flip_byte(ss[-1].path, 100, 0xFF)
    want = expected_removed(d, ss[0].seq + 1)
    plan = prune_wal(str(d), before_seq=10**12)
    assert plan.base_snapshot_seq == ss[0].seq and sorted(os.path.basename(s.path) for s in plan.remove) == want
    r = recover(str(d), repair=False)                   # falls back to the second newest, whose WAL is kept
    assert r.snapshot.seq == ss[-2].seq and r.skipped_snapshots
    assert r.matcher.state_hash() == summary.state_hash


def test_damaged_oldest_snapshot_moves_the_floor_to_the_next_valid(data):
    d, summary = data
    ss = snaps(d)
    flip_byte(ss[0].path, 100, 0xFF)
    want = expected_removed(d, ss[1].seq + 1)
    assert len(want) > len(expected_removed(d, ss[0].seq + 1))
    plan = prune_wal(str(d), before_seq=10**12)
    assert plan.base_snapshot_seq == ss[1].seq and plan.floor == ss[1].seq + 1
    assert sorted(os.path.basename(s.path) for s in plan.remove) == want
    assert any("damaged" in n for n in plan.notes)
    assert recovered_hash(d) == summary.state_hash


def test_no_valid_snapshot_prunes_nothing(data):
    d, _ = data
    for s in snaps(d):
        flip_byte(s.path, 100, 0xFF)
    before = names(d)
    plan = prune_wal(str(d), before_seq=10**12)
    assert plan.floor is None and plan.rule == "no valid snapshot" and not plan.remove
    assert names(d) == before and read_retention(wal(d)) is None


def test_all_snapshots_damaged_after_a_prune_recovery_says_the_range_is_pruned(data):
    d, _ = data
    prune_wal(str(d), before_seq=10**12)
    first = list_segments(wal(d))[0].first_seq
    for s in snaps(d):
        flip_byte(s.path, 100, 0xFF)
    with pytest.raises(PrunedWalGapError) as err:
        recover(str(d), repair=False)
    msg = str(err.value)
    assert f"seqs 1..{first - 1} were pruned" in msg and "retention.json" in msg
    assert f"earliest seq available is {first}" in msg and "Restore the snapshot" in msg
    v = verify(str(d))
    assert v["wal_problems"] and len(v["damaged_snapshots"]) == len(snaps(d))


def test_kafka_trades_watermark_holds_the_floor(data):
    d, summary = data
    ss = snaps(d)
    marks = [Matcher.from_state(load_snapshot(s)).match_sequence for s in ss]
    assert marks == sorted(marks) and marks[0] < marks[-1]
    # Kafka acknowledged up to the second snapshot's trades: bases after it are ahead of the watermark.
    doc = {"trades_topic": "trades", "match_id": marks[1], "cmd_seq": 1, "ledger_topic": "ledger",
           "ledger_seq": 0, "ledger_cmd_seq": 1}
    (d / "kafka-published.json").write_text(json.dumps(doc))
    plan = prune_wal(str(d), before_seq=10**12, snapshot_retain=1)   # only the newest would be a fallback
    assert plan.base_snapshot_seq == ss[1].seq and plan.rule == "kafka trades watermark"
    # Every trade above the watermark is still in the WAL.
    first = list_segments(wal(d))[0].first_seq
    trades = [t for t in open_data_dir(str(d)).trade_events(first) if t.match_id > marks[1]]
    assert [t.match_id for t in trades] == list(range(marks[1] + 1, summary.match_sequence + 1))
    # A watermark below every snapshot: nothing can go.
    doc["match_id"] = 0
    (d / "kafka-published.json").write_text(json.dumps(doc))
    assert prune_wal(str(d), before_seq=10**12, snapshot_retain=1, dry_run=True).floor is None


def test_kafka_ledger_watermark_holds_the_floor(tmp_path):
    summary = run_engine(tmp_path, 12_000, accounts=20, snapshot_every=2_500)
    ss = snaps(tmp_path)
    assert len(ss) >= 3
    states = [Matcher.from_state(load_snapshot(s)) for s in ss]
    ledger = [m.accounts.ledger_seq for m in states]
    assert ledger[0] < ledger[-1]
    doc = {"trades_topic": "trades", "match_id": summary.match_sequence, "cmd_seq": summary.last_seq,
           "ledger_topic": "ledger", "ledger_seq": ledger[0], "ledger_cmd_seq": 1}
    (tmp_path / "kafka-published.json").write_text(json.dumps(doc))
    plan = prune_wal(str(tmp_path), before_seq=10**12, snapshot_retain=1)
    assert plan.base_snapshot_seq == ss[0].seq and plan.rule == "kafka ledger watermark"
    # The ledger above the watermark can be derived again from the pinned base.
    h = open_data_dir(str(tmp_path))
    assert h.earliest_seq == ss[0].seq
    got = [ev[1] for _, _, ev in h.balance_changes(h.earliest_seq + 1) if ev[1] > ledger[0]]
    final = recover(str(tmp_path), repair=False).matcher.accounts.ledger_seq
    assert got == list(range(ledger[0] + 1, final + 1)) and final > ledger[-1]


def test_time_travel_before_and_after_the_floor(data):
    d, summary = data
    h0 = open_data_dir(str(d))
    oldest = snaps(d)[0].seq
    probe = [oldest, oldest + 1, oldest + 777, summary.last_seq]
    books = {s: h0.book_at(s, "SYN", 5) for s in probe}
    hashes = {s: h0.state_hash(s) for s in probe}
    plan = prune_wal(str(d), before_seq=10**12)
    first = plan.pruned_before_seq
    h = open_data_dir(str(d))
    assert h.earliest_seq == oldest and h.pruned_before_seq == first < oldest + 1
    for s in probe:
        assert h.book_at(s, "SYN", 5) == books[s] and h.state_hash(s) == hashes[s]
    with pytest.raises(PrunedRangeError) as err:
        h.book_at(oldest - 1, "SYN")
    assert err.value.earliest_seq == oldest and f"seqs 1..{first - 1}" in str(err.value)
    with pytest.raises(PrunedRangeError):
        h.matcher_at(3)
    with pytest.raises(PrunedRangeError):
        list(h.events(first - 1, first + 5))
    assert next(h.events())[0] == first and next(h.events(first))[0] == first
    # A History opened before the prune: retained seqs still answer, pruned ones raise.
    assert h0.book_at(oldest + 500, "SYN", 5) == h.book_at(oldest + 500, "SYN", 5)
    with pytest.raises(PrunedRangeError):
        h0.book_at(10, "SYN")
    h.build_index()                      # laid from the pinned base
    with pytest.raises(PrunedRangeError):
        list(WalReader(wal(d)).read(1, 10))


def test_crash_between_the_record_and_the_unlinks(data, monkeypatch):
    d, summary = data
    before = names(d)
    h0 = recovered_hash(d)
    monkeypatch.setattr(retention, "finish_prune", lambda data_dir, plan: 0)   # killed after the record
    plan = prune_wal(str(d), before_seq=10**12)
    monkeypatch.undo()
    gone = [os.path.basename(s.path) for s in plan.remove]
    assert gone and names(d) == before                        # nothing unlinked yet
    rec = read_retention(wal(d))
    assert rec.pruned_before_seq == plan.pruned_before_seq
    # Readers already see the WAL the record describes.
    scan = WalReader(wal(d)).scan()
    assert scan.first_seq == rec.pruned_before_seq and not scan.problems
    assert [os.path.basename(s.path) for s in scan.segments] == sorted(set(before) - set(gone))
    assert recovered_hash(d) == h0
    v = verify(str(d))
    assert v["mismatches"] == 0 and v["wal_problems"] == [] and v["pruned_before_seq"] == rec.pruned_before_seq
    with pytest.raises(PrunedRangeError):
        list(WalReader(wal(d)).read(1))
    h = open_data_dir(str(d))
    assert next(h.events())[0] == rec.pruned_before_seq
    # The next prune, even one allowed nothing new, finishes the job.
    nxt = prune_wal(str(d), before_seq=1)
    assert nxt.floor is None and sorted(os.path.basename(s.path) for s in nxt.leftovers) == sorted(gone)
    assert nxt.applied and nxt.bytes_freed > 0 and names(d) == sorted(set(before) - set(gone))
    assert read_retention(wal(d)) == rec and recovered_hash(d) == h0


def test_a_segment_missing_after_the_record_is_damage_not_pruning(data):
    d, _ = data
    prune_wal(str(d), before_seq=10**12)
    os.unlink(list_segments(wal(d))[0].path)
    assert WalReader(wal(d)).scan().problems
    assert verify(str(d))["wal_problems"]


def test_the_pinned_base_survives_snapshot_retention(data):
    d, summary = data
    plan = prune_wal(str(d), before_seq=10**12)
    base = plan.base_snapshot_seq
    more = run_engine(d, 40_000)                 # the same flow, longer: more snapshots, retain 3
    assert more.snapshots >= 3
    seqs = [s.seq for s in snaps(d)]
    assert base in seqs and len(seqs) == 4        # the 3 newest and the pinned base
    assert recovered_hash(d) == more.state_hash
    assert verify(str(d))["mismatches"] == 0
    # Pruning again moves the base on; the old base is no longer pinned.
    plan2 = prune_wal(str(d), before_seq=10**12)
    assert plan2.base_snapshot_seq == seqs[1] and plan2.remove
    assert recovered_hash(d) == more.state_hash


def test_snapshot_pruning_waits_for_no_wal_prune(tmp_path):
    run_engine(tmp_path, 12_000, snapshot_retain=50, snapshot_every=2_000)
    n = len(snaps(tmp_path))
    assert n >= 4
    guard = retention.snapshot_prune_guard(str(tmp_path))
    writer = SnapshotWriter(str(tmp_path / "snapshots"), retain=50, prune_guard=guard)
    writer.retain = 1
    with retention_lock(wal(tmp_path)):
        assert writer._prune() == [] and len(snaps(tmp_path)) == n      # a WAL prune holds the lock: skipped
    assert len(writer._prune()) == n - 1


def test_engine_wal_retain_policy_prunes_after_snapshots(tmp_path):
    summary = run_engine(tmp_path, 30_000, wal_retain="3000")
    assert summary.wal_segments_pruned > 0 and summary.wal_bytes_freed > 0
    rec = read_retention(wal(tmp_path))
    first = list_segments(wal(tmp_path))[0].first_seq
    assert rec.pruned_before_seq == first <= summary.last_seq - 3000 + 1
    assert rec.base_snapshot_seq in [s.seq for s in snaps(tmp_path)]
    m = Matcher()
    for cmd in SyntheticSource(30_000, 1).commands(m, None):
        m.apply(m.last_seq + 1, cmd)
    assert recovered_hash(tmp_path) == summary.state_hash == m.state_hash()
    v = verify(str(tmp_path))
    assert v["mismatches"] == 0 and v["wal_problems"] == [] and v["pruned_before_seq"] == first
    # Restarted with the policy on: nothing needed is removed, nothing more to do.
    again = run_engine(tmp_path, 30_000, wal_retain="3000")
    assert again.commands == 0 and again.state_hash == summary.state_hash


def test_engine_without_a_policy_keeps_the_whole_wal(tmp_path):
    summary = run_engine(tmp_path, 10_000)
    assert summary.wal_segments_pruned == 0 and list_segments(wal(tmp_path))[0].first_seq == 1
    assert read_retention(wal(tmp_path)) is None


def test_parse_policy():
    assert parse_policy(None) is None and parse_policy("off") is None and parse_policy("") is None
    assert parse_policy("1000") == RetainPolicy(1000, None, "1000")
    assert parse_policy("7d").duration_ns == 7 * 86_400 * 10**9
    p = parse_policy("1000000,12h")
    assert p.events == 1_000_000 and p.duration_ns == 12 * 3600 * 10**9
    for bad in ("1w", "x", "1,2", "1h,2h", "-5"):
        with pytest.raises(ValueError):
            parse_policy(bad)
    with pytest.raises(ValueError):
        Engine(EngineConfig(data_dir="/nonexistent", wal_retain="7 weeks"))


def _segs(starts, raw_last=True):
    return [SegmentInfo(s, f"/x/wal-{s:020d}.seg" + ("" if raw_last and i == len(starts) - 1 else ".zst"),
                        not (raw_last and i == len(starts) - 1)) for i, s in enumerate(starts)]


def test_duration_rule_keeps_the_window():
    segs = _segs([1, 101, 201, 301, 401])
    ts = {100: 1_000, 200: 2_000, 300: 3_000}
    facts = [SnapFact(s, True, 0, 0, t) for s, t in ts.items()]
    pol = RetainPolicy(None, 1_500, "d")
    plan = plan_prune(segs, facts, 450, 4_000, policy=pol, snapshot_retain=1)
    assert plan.base_snapshot_seq == 200 and plan.rule == "wal-retain duration"   # 300 is inside the window
    assert [s.first_seq for s in plan.remove] == [1, 101]
    assert plan_prune(segs, facts, 450, None, policy=pol, snapshot_retain=1).floor is None   # no newest time
    assert plan_prune(segs, facts, 450, 4_000, policy=RetainPolicy(200, None, "200"),
                      snapshot_retain=1).base_snapshot_seq == 200
    assert plan_prune(segs, facts, 450, 4_000, policy=pol).base_snapshot_seq == 100      # every one a fallback


@st.composite
def layouts(draw):
    n = draw(st.integers(2, 12))
    sizes = draw(st.lists(st.integers(1, 50), min_size=n, max_size=n))
    starts, s = [], 1
    for k in sizes:
        starts.append(s)
        s += k
    last_seq = s - 1 - draw(st.integers(0, sizes[-1] - 1))
    sealed = [draw(st.booleans()) if draw(st.integers(0, 9)) == 0 else True for _ in range(n)]
    sealed[-1] = False
    segs = [SegmentInfo(a, f"/x/{a}", z) for a, z in zip(starts, sealed)]
    seqs = sorted(set(draw(st.lists(st.integers(1, last_seq + 5), max_size=8))))
    facts = []
    for q in seqs:
        valid = draw(st.sampled_from([True, True, True, False, None]))
        facts.append(SnapFact(q, valid, q // 3, q // 7, q * 10))
    kafka = None
    if draw(st.booleans()):
        kafka = KafkaMarks(draw(st.integers(0, last_seq)), 1, draw(st.integers(0, last_seq)), 1, "k")
    before = draw(st.none() | st.integers(1, last_seq + 10))
    policy = draw(st.none() | st.builds(RetainPolicy, st.none() | st.integers(0, last_seq),
                                        st.none() | st.integers(0, last_seq * 10), st.just("p")))
    if before is None and policy is None:
        before = last_seq + 1
    retain = draw(st.none() | st.integers(1, 5))
    return segs, facts, last_seq, kafka, before, policy, retain


@given(layouts())
@settings(max_examples=400, deadline=None)
def test_planner_never_removes_what_a_rule_needs(layout):
    segs, facts, last_seq, kafka, before, policy, retain = layout
    plan = plan_prune(segs, facts, last_seq, last_seq * 10, before_seq=before, policy=policy, kafka=kafka,
                      snapshot_retain=retain)
    k = len(plan.remove)
    assert plan.remove == segs[:k] and k < len(segs) and all(s.sealed for s in plan.remove)
    if plan.floor is None:
        assert k == 0 and plan.base_snapshot_seq is None
        return
    base = next(f for f in facts if f.seq == plan.base_snapshot_seq)
    assert base.valid is True and plan.floor == base.seq + 1 <= last_seq
    for a, b in zip(plan.remove, segs[1:]):
        assert b.first_seq <= plan.floor                   # wholly before the floor
    usable = [f for f in facts if f.seq <= last_seq]
    window = [f for f in (facts[-retain:] if retain else facts) if f.seq <= last_seq and f.valid is not False]
    fallback = window or [f for f in usable if f.valid is not False]
    assert plan.floor <= fallback[0].seq + 1
    if before is not None:
        assert plan.floor <= before
    if kafka is not None:
        assert base.match_sequence <= kafka.match_id and base.ledger_seq <= kafka.ledger_seq
    if policy is not None and policy.events is not None:
        assert plan.floor <= last_seq - policy.events + 1
    if policy is not None and policy.duration_ns is not None:
        assert base.ts_ns <= last_seq * 10 - policy.duration_ns
    # The newest base allowed: no newer known-valid snapshot meets every rule.
    for f in usable:
        if f.valid is True and f.seq > base.seq:
            ok = f.seq + 1 <= min(x for x in [before, fallback[0].seq + 1, last_seq,
                                               None if policy is None or policy.events is None
                                               else last_seq - policy.events + 1] if x is not None)
            ok = ok and (kafka is None or (f.match_sequence <= kafka.match_id and f.ledger_seq <= kafka.ledger_seq))
            ok = ok and (policy is None or policy.duration_ns is None or f.ts_ns <= last_seq * 10 - policy.duration_ns)
            assert not ok, f"snapshot {f.seq} was a better base than {base.seq}"


@given(st.integers(6_000, 16_000), st.integers(8_000, 40_000), st.integers(1_500, 5_000), st.integers(1, 4),
       st.integers(0, 3))
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_random_layouts_recovery_equal_and_nothing_needed_removed(tmp_path_factory, n, seg, every, retain, cut):
    d = tmp_path_factory.mktemp("hyp")
    summary = run_engine(d, n, seed=n % 7 + 1, segment_size_bytes=seg, snapshot_every=every, snapshot_retain=retain)
    ss = snaps(d)
    before = names(d)
    bound = ss[max(0, len(ss) - 1 - cut)].seq + 1 if ss and cut else 10**12
    plan = prune_wal(str(d), before_seq=bound, snapshot_retain=retain)
    if ss:
        assert plan.floor is None or plan.floor <= min(bound, ss[-retain:][0].seq + 1, summary.last_seq)
    else:
        assert plan.floor is None
    for name in set(before) - set(names(d)):
        seq = int(name[4:24])
        nxt = min(int(x[4:24]) for x in names(d))
        assert seq < nxt <= (plan.floor or 0)               # wholly before the floor, before what is kept
    assert recovered_hash(d) == summary.state_hash
    v = verify(str(d))
    assert v["mismatches"] == 0 and v["wal_problems"] == [] and v["state_hash"] == summary.state_hash


def test_a_damaged_record_stops_snapshot_pruning_rather_than_unpin(data):
    d, _ = data
    prune_wal(str(d), before_seq=10**12)
    rec_path = os.path.join(wal(d), "retention.json")
    with open(rec_path, "w") as f:
        f.write("{not json")
    writer = SnapshotWriter(str(d / "snapshots"), retain=3, prune_guard=retention.snapshot_prune_guard(str(d)))
    writer.retain = 1
    n = len(snaps(d))
    assert writer._prune() == [] and len(snaps(d)) == n
    from eventstore.retention import RetentionFormatError
    with pytest.raises(RetentionFormatError, match="unreadable"):
        WalReader(wal(d)).scan()
    with pytest.raises(RetentionFormatError):
        prune_wal(str(d), before_seq=10**12)


def test_duration_policy_on_real_timestamps(data):
    """The synthetic flow's clock: 1 us per command. ``1s`` covers the whole
    run (nothing may go); 5 ms keeps every state of the last 5 ms queryable."""
    d, summary = data
    whole = prune_wal(str(d), policy=parse_policy("1s"), dry_run=True)
    assert whole.floor is None and whole.rule == "wal-retain duration"
    h = open_data_dir(str(d))
    last_ts = h.timeline.ts_of(summary.last_seq)
    ss = [x.seq for x in snaps(d)]
    window = last_ts - h.timeline.ts_of(ss[1]) + 1       # the second snapshot lies just inside the window
    plan = prune_wal(str(d), policy=RetainPolicy(None, window, "w"), snapshot_retain=1)
    assert plan.applied and plan.rule == "wal-retain duration" and plan.base_snapshot_seq == ss[0]
    h = open_data_dir(str(d))
    assert h.timeline.ts_of(plan.base_snapshot_seq) <= last_ts - window
    cutoff_seq = h.seq_at_time(last_ts - window)
    assert h.earliest_seq == ss[0] <= cutoff_seq
    h.book_at(cutoff_seq, "SYN", 3)                       # the window's first state answers


def test_a_prune_during_a_scan_or_a_history_refresh_is_followed(data, monkeypatch):
    """A reader that listed the segments before a prune unlinked some: the
    scan starts over on the new listing; recovery gives the same state."""
    import eventstore.reader as reader_mod
    d, summary = data
    real = reader_mod.load_segment_bytes
    fired = []

    def racing(info):
        if not fired:
            fired.append(prune_wal(str(d), before_seq=10**12))   # runs between the listing and the read
        return real(info)
    monkeypatch.setattr(reader_mod, "load_segment_bytes", racing)
    r = recover(str(d), repair=False)
    assert fired and fired[0].applied
    assert r.scan.first_seq == fired[0].pruned_before_seq and r.matcher.state_hash() == summary.state_hash
    monkeypatch.undo()
    # A reader in the middle of a range that gets pruned is told so.
    it = WalReader(wal(d)).read(fired[0].pruned_before_seq)
    next(it)
    h = open_data_dir(str(d))
    h.build_index()
    more = run_engine(d, 30_000)                   # more segments and snapshots, then a further prune
    plan = prune_wal(str(d), before_seq=10**12)
    assert plan.applied
    assert h.refresh() == more.last_seq and h.wal.first_seq == plan.pruned_before_seq
    assert h.state_hash(more.last_seq) == more.state_hash
