"""recovery.history / keyframes / walindex on real engine directories."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import pandas as pd  # noqa: E402 - in the test extra: a missing one fails, never skips

from engine.core import Matcher, PlaceOrder  # noqa: E402
from engine.io.synthetic import SyntheticSource  # noqa: E402
from engine.service import Engine, EngineConfig  # noqa: E402
from eventstore import WalReader, list_segments  # noqa: E402
from recovery import Replayer, open_data_dir  # noqa: E402


def run_engine(data_dir, n, seed=1, **cfg):
    engine = Engine(EngineConfig(data_dir=str(data_dir), control_socket=False, pin_cpus=False,
                                 pause_cyclic_gc=False, **cfg))
    engine.open()
    return engine.run(SyntheticSource(n, seed))


def full_replay(data_dir, upto):
    m = Matcher()
    rp = Replayer(m)
    for seq, payload in WalReader(os.path.join(str(data_dir), "wal")).read(1, upto):
        rp.feed(seq, payload)
    return m


def test_recovery_imports_without_pandas():
    code = ("import sys; sys.modules['pandas'] = None; sys.modules['numpy'] = None\n"
            "import recovery, engine.service\nh = recovery.open_data_dir('/nonexistent')\nprint(h.last_seq)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=os.getcwd())
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0"


def test_point_queries_replay_at_most_the_bound_after_one_index_pass(tmp_path):
    run_engine(tmp_path, 30_000, segment_size_bytes=100_000)     # no snapshots, many segments
    assert len(list_segments(str(tmp_path / "wal"))) > 3
    h = open_data_dir(str(tmp_path), keyframe_every=2_000, max_replay=5_000)
    last = h.last_seq
    h.book(last - 10, "SYN")                  # far from any base: an index pass lays keyframes
    assert h.stats.index_events > 0 and h.stats.last_replayed <= 2_000 + 64
    for seq in (last // 3, 17, last // 2 + 5, last - 1, 2_999):
        got = h.book(seq, "SYN", level="L3")
        assert h.stats.last_replayed <= 5_000
        assert h.stats.last_base[0] in ("keyframe", "cursor", "genesis")
        book = full_replay(tmp_path, seq).books["SYN"]
        assert list(got.order_id) == [o[0] for o in book.export_orders()]
    assert h.timeline.keyframe_bytes() > 0


def test_stepping_continues_from_the_previous_state(tmp_path):
    run_engine(tmp_path, 5_000)
    h = open_data_dir(str(tmp_path))
    h.book(3_000, "SYN")
    total = h.stats.replayed_events
    for seq in range(3_001, 3_101):
        h.book(seq, "SYN", depth=3)
        assert h.stats.last_base[0] == "cursor"
    assert h.stats.replayed_events - total <= 100
    assert h.state_hash(3_100) == full_replay(tmp_path, 3_100).state_hash()


def test_entry_seqs_of_orders_from_a_snapshot_are_found_by_scanning_back(tmp_path):
    run_engine(tmp_path, 12_000, snapshot_every=4_000, snapshot_retain=5)
    # Only snapshots as bases: a huge keyframe spacing and a fresh history.
    h = open_data_dir(str(tmp_path), keyframe_every=50_000, max_replay=50_000)
    seq = h.last_seq - 3
    got = h.book(seq, "SYN", level="L3")
    assert h.stats.last_base[0] == "snapshot"
    ref = open_data_dir(str(tmp_path), keyframe_every=50_000, max_replay=10**9)
    ref.timeline._snapshot_base = lambda s: None        # force genesis: every entry seen
    want = ref.book(seq, "SYN", level="L3")
    assert ref.stats.last_base[0] == "genesis"
    assert got.placed_seq.notna().all()
    assert list(got.placed_seq) == list(want.placed_seq)


def test_a_reader_sees_only_whole_frames_while_the_engine_writes(tmp_path):
    engine = Engine(EngineConfig(data_dir=str(tmp_path), control_socket=False, pin_cpus=False,
                                 pause_cyclic_gc=False, segment_size_bytes=50_000))
    engine.open()
    h = open_data_dir(str(tmp_path))
    try:
        src = SyntheticSource(3_000, 5)
        seen = []
        for i, cmd in enumerate(src.commands(engine.matcher, None)):
            engine.submit(cmd)
            if i % 97 == 0:
                before = h.refresh()
                engine.end_batch()
                # a batch submitted but not flushed is not on disk: not seen
                assert before <= engine.wal.next_seq - 1
                last = h.refresh()
                seen.append(last)
                if last:
                    assert h.state_hash(last) == full_replay(tmp_path, last).state_hash()
        engine.end_batch()
        engine.wal.wait_durable(engine.wal.next_seq - 1)
        final = engine.matcher.state_hash()
    finally:
        engine.close()
    assert seen == sorted(seen) and seen[-1] > 0
    # A write in progress (a frame cut short) at the tail is ignored.
    seg = list_segments(str(tmp_path / "wal"))[-1].path
    last = h.refresh()
    with open(seg, "ab") as f:
        f.write(b"\x40\x00\x00\x00\x02\x00\x00\x00" + (last + 1).to_bytes(8, "little") + b"\x01\x02")
    assert h.refresh() == last
    assert h.state_hash(last) == final
    assert h.wal.torn_tail is not None


def test_trade_events_and_trades_table_agree(tmp_path):
    run_engine(tmp_path, 2_000)
    h = open_data_dir(str(tmp_path), scales={"SYN": (100, 1)})
    tuples = h.trade_events(1, 800)
    df = h.trades(1, 800)
    assert list(df.match_id) == [t.match_id for t in tuples]
    assert set(df.taker_side) <= {"buy", "sell"}
    assert (df.price_decimal * 100 == df.price).all()
    assert str(df.ts.dt.tz) == "UTC"
    assert (df.source == "synthetic:SYN:1").all()


def test_what_if_crossing_order_diverges_at_once(tmp_path):
    run_engine(tmp_path, 3_000)
    h = open_data_dir(str(tmp_path))
    at = 1_500
    top = h.book(at, "SYN", depth=1)
    ask = int(top[top.side == "ask"].price.iloc[0])
    w = h.what_if(at, add=[PlaceOrder.new("SYN", 10**15, 1, ask, 1, tif=2)], until_seq=2_500)
    assert w.diverged_at == at
    assert w.whatif_trades.added.sum() == 1
    same = h.what_if(at, until_seq=2_500)
    assert same.diverged_at is None and same.trades_diverged_at is None
    assert same.whatif_books["SYN"].equals(same.history_books["SYN"])


def test_heatmap_pivot_matches_books_at_bin_ends(tmp_path):
    run_engine(tmp_path, 4_000)
    h = open_data_dir(str(tmp_path))
    hm = h.depth_heatmap(2, 3_000, "SYN", time_bin="100us")
    grid = hm.pivot_table(index=["side", "price"], columns="time", values="qty", aggfunc="sum",
                          fill_value=0, observed=True)
    seqs, ts, _ = h.timeline.command_seqs()
    for col in list(grid.columns)[1:-1:7]:
        end_ns = col.value + 100_000 - 1
        seq = h.seq_at_time(end_ns)
        book = h.book(seq, "SYN")
        want = {(r.side, r.price): r.qty for r in book.itertuples()}
        got = {k: v for k, v in grid[col].items() if v}
        assert got == want


def test_bbo_after_a_heatmap_of_the_same_range_is_the_bbo_a_fresh_replay_gives(tmp_path):
    """depth_heatmap() keeps the top-of-book rows of its replay for bbo() of the
    same whole range (the mid on a heatmap): the same table, without a replay."""
    run_engine(tmp_path, 4_000)
    last = open_data_dir(str(tmp_path)).last_seq
    for lo, hi, every in [(1, last, None), (2, 3_000, "100us"), (1_500, 1_500, None), (10, 2_000, None)]:
        want = open_data_dir(str(tmp_path)).bbo(lo, hi, "SYN", every=every)
        h = open_data_dir(str(tmp_path))
        h.depth_heatmap(lo, hi, "SYN", time_bin="100us", price_bin=3)
        replayed = h.stats.replayed_events
        got = h.bbo(lo, hi, "SYN", every=every)
        assert h.stats.replayed_events == replayed            # no second replay
        pd.testing.assert_frame_equal(got, want)
        assert len(got) > (0 if lo == hi else 10)
    # a range beyond the durable end is never kept: the next bbo replays
    h = open_data_dir(str(tmp_path))
    h.depth_heatmap(1, last + 100, "SYN", time_bin="100us")
    replayed = h.stats.replayed_events
    h.bbo(1, last + 100, "SYN")
    assert h.stats.replayed_events > replayed


def test_balances_and_ledger_tables_of_a_funded_run(tmp_path):
    """``balances(seq)`` is the matcher's balances at any seq; ``ledger``
    lists every change in ledger_seq order, each row's balances the running
    sum of its deltas, and summing a range's deltas moves one table to the
    next."""
    d = str(tmp_path / "d")
    with Engine(EngineConfig(data_dir=d, control_socket=False, snapshot_every=2500)) as eng:
        eng.run(SyntheticSource(6000, 5, accounts=40))
    h = open_data_dir(d)
    last = h.last_seq
    mid = last // 2
    for seq in (mid, last):
        df = h.balances(seq)
        expect = {(a, asset): tuple(b) for a, per in full_replay(d, seq).accounts.balances.items()
                  for asset, b in per.items()}
        assert {(r.account, r.asset): (r.available, r.held) for r in df.itertuples()} == expect
        assert (df["total"] == df["available"] + df["held"]).all()
        assert df.attrs["seq"] == seq
    usd = h.balances(last).query("asset == 'USD'")
    assert (usd["scale"] == 2).all() and (usd["available_dec"] * 100).round().astype("int64").equals(usd["available"])
    led = h.ledger(1, last)
    assert list(led["ledger_seq"]) == list(range(1, len(led) + 1))
    assert set(led["reason"]) == {"deposit", "hold", "release", "fill", "fee"}
    running: dict = {}
    for r in led.itertuples():
        a, hd = running.get((r.account, r.asset), (0, 0))
        running[(r.account, r.asset)] = (a + r.available_delta, hd + r.held_delta)
        assert running[(r.account, r.asset)] == (r.available, r.held)
    fills = led[led["reason"].isin(["fill", "fee"])]
    assert (fills.groupby(["ref", "asset"])[["available_delta", "held_delta"]].sum().sum(axis=1) == 0).all()
    # the changes of the second half take the balances at mid to those at the end
    part = h.ledger(mid + 1, last, account=7)
    assert set(part["account"]) <= {7} and len(part) > 0
    before = h.balances(mid, account=7).set_index("asset")
    after = h.balances(last, account=7).set_index("asset")
    for asset, g in part.groupby("asset"):
        assert before.loc[asset, "available"] + g["available_delta"].sum() == after.loc[asset, "available"]
        assert before.loc[asset, "held"] + g["held_delta"].sum() == after.loc[asset, "held"]
