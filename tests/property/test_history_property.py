"""History (recovery.history) against a brute-force full replay, on real data
directories written by the engine: random histories over a few symbols with
snapshots and segment rotations, random seqs."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import pandas as pd  # noqa: E402 - in the test extra: a missing one fails, never skips

from engine.core import AddSymbol, AmendOrder, CancelOrder, Matcher, PlaceOrder, Trade  # noqa: E402
from engine.service import Engine, EngineConfig  # noqa: E402
from eventstore import WalReader  # noqa: E402
from recovery import Replayer, open_data_dir  # noqa: E402

SYMBOLS = ("AAA", "BBB", "CCC")


def write_history(data_dir: str, seed: int, n: int, snapshot_every: int) -> None:
    """A random flow through the real engine: places (some marketable, IOC,
    FOK, post-only), cancels, amends (keep and lose priority), bad ids."""
    rng = random.Random(seed)
    engine = Engine(EngineConfig(data_dir=data_dir, snapshot_every=snapshot_every, control_socket=False,
                                 pin_cpus=False, pause_cyclic_gc=False, segment_size_bytes=4_000,
                                 snapshot_retain=50))
    engine.open()
    try:
        for s in SYMBOLS:
            engine.submit(AddSymbol.new(s, 1, ts_ns=1))
        live: list = []
        next_id = 1
        ts = 1_000_000_000
        for i in range(n):
            ts += rng.choice((0, 1_000, 50_000_000, 400_000_000))
            r = rng.random()
            sym = rng.choice(SYMBOLS)
            if r < 0.55 or not live:
                side = rng.choice((1, 2))
                price = 100 + rng.randint(-6, 6)
                tif = rng.choice((1, 1, 1, 1, 2, 3))
                engine.submit(PlaceOrder.new(sym, next_id, side, price, rng.randint(1, 20), tif=tif,
                                             post_only=tif == 1 and rng.random() < 0.1,
                                             account=rng.randint(1, 4), ts_ns=ts, source="t", source_pos=i))
                live.append((sym, next_id))
                next_id += 1
            elif r < 0.75:
                sym, oid = live.pop(rng.randrange(len(live)))
                engine.submit(CancelOrder.new(sym, oid, ts_ns=ts, source="t", source_pos=i))
            elif r < 0.92:
                sym, oid = rng.choice(live)
                engine.submit(AmendOrder.new(sym, oid, 100 + rng.randint(-6, 6), rng.randint(1, 20), ts_ns=ts,
                                             source="t", source_pos=i))
            else:
                engine.submit(PlaceOrder.new(sym, next_id, rng.choice((1, 2)), 0, rng.randint(5, 60),
                                             order_type=2, tif=2, ts_ns=ts, source="t", source_pos=i))
                next_id += 1
            if rng.random() < 0.1:
                engine.end_batch()
        engine.end_batch()
    finally:
        engine.close()


def reference_states(data_dir: str, targets: set) -> dict:
    """Full replay from seq 1 with a fresh matcher: at each target seq, per
    symbol, L2 and L3 rows, with entry seqs tracked from OrderRested."""
    m = Matcher()
    rp = Replayer(m)
    placed: dict = {}
    out: dict = {}

    def capture(seq):
        books = {}
        for s, b in m.books.items():
            l2 = [(side, lvl.price, lvl.qty, lvl.count) for side in (1, 2) for lvl in b.levels(side)]
            l3 = [(side, lvl.price, o.order_id, o.qty, placed[(s, o.order_id)])
                  for side in (1, 2) for lvl in b.levels(side) for o in lvl.live()]
            books[s] = (l2, l3)
        out[seq] = (books, m.state_hash())

    pending = sorted(targets)
    for seq, payload in WalReader(data_dir + "/wal").read():
        evs = rp.feed(seq, payload)
        if evs:
            for ev in evs:
                if ev[0] == 66:
                    placed[(payload[2], ev[1])] = seq
        while pending and pending[0] <= m.last_seq and pending[0] <= seq:
            capture(pending.pop(0))
    if 0 in targets:
        out[0] = ({}, Matcher().state_hash())
    return out


def l2_tuples(df):
    return [(1 if s == "bid" else 2, p, q, n) for s, p, q, n in zip(df.side, df.price, df.qty, df.orders)]


def l3_tuples(df):
    return [(1 if s == "bid" else 2, p, o, q, None if pd.isna(ps) else int(ps))
            for s, p, o, q, ps in zip(df.side, df.price, df.order_id, df.qty, df.placed_seq)]


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), n=st.integers(150, 900), every=st.integers(40, 400),
       picks=st.lists(st.floats(0, 1), min_size=3, max_size=8))
def test_history_equals_full_replay(tmp_path_factory, seed, n, every, picks):
    print("seed", seed, "n", n, "every", every)
    d = str(tmp_path_factory.mktemp("hist"))
    write_history(d, seed, n, every)
    h = open_data_dir(d, keyframe_every=100, max_replay=300)
    last = h.last_seq
    seqs = sorted({max(3, int(p * last)) for p in picks} | {3, last})
    ref = reference_states(d, set(seqs) | {s + 1 for s in seqs if s < last})
    for seq in seqs:
        books, state_hash = ref[seq]
        for sym in SYMBOLS:
            l2 = h.book(seq, sym)
            assert h.stats.last_replayed <= 300 + 100
            assert l2_tuples(l2) == books[sym][0]
            l3 = h.book(seq, sym, level="L3")
            assert l3_tuples(l3) == books[sym][1]
            assert list(l3["rank"]) == list(l3.groupby(["side", "price"], sort=False).cumcount())
            bids = l2[l2.side == "bid"].price.tolist()
            asks = l2[l2.side == "ask"].price.tolist()
            assert not bids or not asks or max(bids) < min(asks)      # never crossed
        assert h.state_hash(seq) == state_hash
        if seq < last:                                  # stepping reuses the matcher
            h.book(seq + 1, SYMBOLS[0])
            assert h.stats.last_base[0] == "cursor" and h.stats.last_replayed <= 1 + 64
            assert l2_tuples(h.book(seq + 1, SYMBOLS[0])) == ref[seq + 1][0][SYMBOLS[0]][0]
    # trades equal the WAL's
    wal_trades = [(s, t) for s, t in h.events() if isinstance(t, Trade)]
    tr = h.trades()
    assert list(tr.seq) == [s for s, _ in wal_trades]
    assert list(tr.match_id) == [t.match_id for _, t in wal_trades]
    assert list(tr.price) == [t.price for _, t in wal_trades]
    assert (tr.source == "t").all() and tr.source_pos.notna().all()
    # bbo consistent with the books
    a, b = seqs[0], seqs[-1]
    bb = h.bbo(a, b, "AAA")
    for row in bb.sample(min(len(bb), 5), random_state=seed).itertuples():
        top = h.book(int(row.seq), "AAA", depth=1)
        bid = top[top.side == "bid"].price.tolist()
        ask = top[top.side == "ask"].price.tolist()
        assert (bid[0] if bid else None) == (None if pd.isna(row.bid) else int(row.bid))
        assert (ask[0] if ask else None) == (None if pd.isna(row.ask) else int(row.ask))
    # diff consistent with two books
    x, y = seqs[len(seqs) // 2], seqs[-1]
    dd = h.diff(x, y, "BBB")
    la, lb = h.book(x, "BBB", level="L3"), h.book(y, "BBB", level="L3")
    assert set(dd.added.order_id) == set(lb.order_id) - set(la.order_id)
    assert set(dd.removed.order_id) == set(la.order_id) - set(lb.order_id)
    qa = la.groupby(["side", "price"]).qty.sum()
    qb = lb.groupby(["side", "price"]).qty.sum()
    delta = qb.sub(qa, fill_value=0)
    assert {k: v for k, v in delta.items() if v} == {(r.side, r.price): r.delta for r in dd.levels.itertuples()}
    assert list(dd.trades.match_id) == [t.match_id for s, t in wal_trades if x < s <= y and t.symbol == "BBB"]
    # order lives consistent with the book at each point
    for oid in list(la.order_id[:2]) + list(tr[tr.symbol == "BBB"].maker_order_id[:1]):
        life = h.order(int(oid), "BBB")
        assert len(life) and life.event.iloc[0] == "placed"
        for r in life.itertuples():
            book = h.book(int(r.seq), "BBB", level="L3")
            mine = book[book.order_id == oid]
            if pd.isna(r.rank):
                assert mine.empty or r.event in ("placed", "fill")
            else:
                assert int(mine["rank"].iloc[0]) == r.rank and int(mine.qty_ahead.iloc[0]) == r.qty_ahead
    # what-if: nothing added equals history; a crossing order diverges at at_seq
    at = seqs[len(seqs) // 2]
    w = h.what_if(at, until_seq=min(last, at + 200))
    assert w.diverged_at is None and w.history_trades.empty and w.whatif_trades.empty
    books_at = h.book(at, "CCC", depth=1)
    if (books_at.side == "ask").any():
        w = h.what_if(at, add=[PlaceOrder.new("CCC", 10**12, 1, 10_000, 1, account=99)],
                      until_seq=min(last, at + 200))
        assert w.diverged_at == at
        assert w.whatif_trades.added.any()


def test_book_at_time_picks_the_last_step_at_or_before(tmp_path):
    write_history(str(tmp_path), 7, 400, 100)
    h = open_data_dir(str(tmp_path))
    cmds = [(s, e.ts_ns) for s, e in h.events() if e[0] < 64]
    rng = random.Random(3)
    for _ in range(20):
        i = rng.randrange(1, len(cmds))
        ts = cmds[i][1]
        # the last command with ts <= ts (ts only grows in this flow), to its step's end
        j = max(k for k, (_, t) in enumerate(cmds) if t <= ts)
        want = cmds[j + 1][0] - 1 if j + 1 < len(cmds) else h.last_seq
        df = h.book_at_time(pd.Timestamp(ts, unit="ns", tz="UTC"), "AAA")
        assert df.attrs["seq"] == want
        assert h.seq_at_time(ts) == want == h.seq_at_time(pd.Timestamp(ts, unit="ns", tz="UTC").isoformat())
