"""TradeStore (engine/consumers/trade_history.py): each trade stored once, one
SQLite transaction per batch, gaps recorded and filled from the engine's WAL.

The trades are real: a synthetic engine run on a temporary data directory,
read back from its WAL as trade messages.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

from engine.consumers.trade_history import COLUMNS, TradeStore, trade_row
from engine.core import Trade
from engine.io.messages import decode_trade, encode_trade
from recovery.time_travel import open_data_dir
from tests.support.trades import run_engine, wal_messages

# Two symbols, interleaved in the WAL (a resumed synthetic source goes on where it stopped).
PLAN = [("AAA", 1, 1200), ("BBB", 2, 1200), ("AAA", 1, 2400)]


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("engine")
    run_engine(d, PLAN)
    return d


@pytest.fixture(scope="module")
def trades(engine_dir) -> list[dict]:
    out = wal_messages(engine_dir)
    assert {t["symbol"] for t in out} == {"AAA", "BBB"} and len(out) > 500
    # the symbols really interleave in match_id order
    assert [t["symbol"] for t in out].index("BBB") < max(i for i, t in enumerate(out) if t["symbol"] == "AAA")
    return out


def rows(path) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute(f"SELECT {', '.join(COLUMNS)} FROM trades ORDER BY match_id").fetchall()


def gaps(path) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT symbol, from_symbol_seq, to_symbol_seq, filled FROM gaps "
                          "ORDER BY symbol, from_symbol_seq").fetchall()


def expected(trades: list[dict]) -> list[tuple]:
    return sorted(trade_row(t) for t in trades)


def test_stores_every_trade_with_all_its_fields(tmp_path, trades):
    db = tmp_path / "t.sqlite"
    with TradeStore(db) as store:
        c = store.apply(trades[:300])
        c2 = store.apply(trades[300:])
        assert (c.stored + c2.stored, c.repeats + c2.repeats, c.gaps + c2.gaps) == (len(trades), 0, 0)
        assert store.count() == len(trades)
        for sym in ("AAA", "BBB"):
            assert store.last_symbol_seq(sym) == max(t["symbol_seq"] for t in trades if t["symbol"] == sym)
    assert rows(db) == expected(trades)
    first = rows(db)[0]
    assert first[COLUMNS.index("input_source")] == "synthetic:AAA:1"
    assert isinstance(first[COLUMNS.index("input_offset")], int)
    assert first[COLUMNS.index("taker_side")] in ("buy", "sell")


def test_wire_round_trip_is_what_is_stored(tmp_path, engine_dir, trades):
    """decode_trade(encode_trade(...)) is what the consumer hands to apply."""
    sources: dict = {}
    decoded = []
    for seq, obj in open_data_dir(str(engine_dir)).events():
        if isinstance(obj, Trade):
            decoded.append(decode_trade(encode_trade(seq, obj, *sources[obj.cmd_seq])))
        elif hasattr(obj, "source_pos"):
            sources[seq] = (obj.source, obj.source_pos)
    with TradeStore(tmp_path / "t.sqlite") as store:
        store.apply(decoded)
    assert rows(tmp_path / "t.sqlite") == expected(trades)


def test_repeats_are_skipped_and_counted(tmp_path, trades):
    db = tmp_path / "t.sqlite"
    with TradeStore(db) as store:
        assert store.apply(trades[:200]).stored == 200
        again = store.apply(trades[:200])
        assert (again.stored, again.repeats) == (0, 200)
        # overlapping batch: the old half are repeats, the new half stored
        mixed = store.apply(trades[100:400])
        assert (mixed.stored, mixed.repeats, mixed.gaps) == (200, 100, 0)
        # a repeat inside the batch itself
        dup = store.apply([trades[400], trades[401], trades[400], trades[401]])
        assert (dup.stored, dup.repeats) == (2, 2)
    assert rows(db) == expected(trades[:402])


def test_repeat_is_recognised_after_reopening(tmp_path, trades):
    db = tmp_path / "t.sqlite"
    with TradeStore(db) as store:
        store.apply(trades[:100])
    with TradeStore(db) as store:
        c = store.apply(trades[:150])
        assert (c.stored, c.repeats) == (50, 100)
    assert rows(db) == expected(trades[:150])


def test_a_known_match_id_under_a_new_symbol_seq_is_a_repeat(tmp_path, trades):
    with TradeStore(tmp_path / "t.sqlite") as store:
        store.apply(trades[:10])
        odd = dict(trades[5], symbol_seq=10_000)
        c = store.apply([odd])
        assert (c.stored, c.repeats, c.gaps) == (0, 1, 0)
        assert store.last_symbol_seq(odd["symbol"]) == max(t["symbol_seq"] for t in trades[:10]
                                                           if t["symbol"] == odd["symbol"])


def _drop(trades, symbol, lo, hi):
    """``trades`` without ``symbol``'s symbol_seq lo..hi, and the ones left out."""
    keep = [t for t in trades if not (t["symbol"] == symbol and lo <= t["symbol_seq"] <= hi)]
    gone = [t for t in trades if t["symbol"] == symbol and lo <= t["symbol_seq"] <= hi]
    assert len(gone) == hi - lo + 1
    return keep, gone


def test_gap_without_wal_is_recorded_unfilled_and_the_trade_still_stored(tmp_path, trades, caplog):
    db = tmp_path / "t.sqlite"
    keep, gone = _drop(trades, "BBB", 20, 24)
    with TradeStore(db) as store, caplog.at_level(logging.WARNING, logger="evengine.trades_consumer"):
        c = store.apply(keep)
        assert (c.stored, c.gaps, c.gaps_filled, c.filled_trades) == (len(keep), 1, 0, 0)
        assert store.open_gaps == [("BBB", 20, 24)]
        assert store.retry_gaps().gaps_filled == 0          # no data_dir: nothing to retry from
    assert any("BBB" in r.getMessage() and "20..24" in r.getMessage() for r in caplog.records)
    assert gaps(db) == [("BBB", 20, 24, 0)]
    assert rows(db) == expected(keep)


def test_gap_filled_later_by_the_missing_records_themselves(tmp_path, trades):
    db = tmp_path / "t.sqlite"
    keep, gone = _drop(trades, "AAA", 7, 9)
    with TradeStore(db) as store:
        store.apply(keep)
        part = store.apply(gone[:2] + gone[:1])
        assert (part.stored, part.repeats, part.gaps_filled) == (2, 1, 0)
        assert gaps(db) == [("AAA", 7, 9, 0)]
        rest = store.apply(gone)
        assert (rest.stored, rest.repeats, rest.gaps_filled) == (1, 2, 1)
        assert store.open_gaps == []
    assert gaps(db) == [("AAA", 7, 9, 1)]
    assert rows(db) == expected(trades)


def test_gap_is_filled_from_the_wal(tmp_path, engine_dir, trades):
    db = tmp_path / "t.sqlite"
    keep, gone = _drop(trades, "AAA", 1, 3)              # the symbol's very first trades
    keep, gone2 = _drop(keep, "BBB", 50, 61)
    keep, gone3 = _drop(keep, "AAA", 100, 100)
    with TradeStore(db, data_dir=engine_dir) as store:
        c = store.apply(keep)
        assert (c.gaps, c.gaps_filled, c.filled_trades) == (3, 3, len(gone) + len(gone2) + len(gone3))
        assert c.stored == len(keep)
        assert store.open_gaps == []
    assert rows(db) == expected(trades)
    assert gaps(db) == [("AAA", 1, 3, 1), ("AAA", 100, 100, 1), ("BBB", 50, 61, 1)]


def test_gap_at_the_end_of_a_batch_is_filled_from_the_wal(tmp_path, engine_dir, trades):
    """The trade after the gap lacks ``seq``: the WAL is read to its end."""
    db = tmp_path / "t.sqlite"
    keep, gone = _drop(trades, "BBB", 30, 40)
    keep = [dict(t, seq=None) if (t["symbol"], t["symbol_seq"]) == ("BBB", 41) else t for t in keep]
    with TradeStore(db, data_dir=engine_dir) as store:
        c = store.apply(keep)
        assert (c.gaps, c.gaps_filled, c.filled_trades) == (1, 1, 11)
    got = {r[0]: r for r in rows(db)}
    assert len(got) == len(trades)
    assert [got[t["match_id"]] for t in gone] == [trade_row(t) for t in gone]


def test_gap_the_wal_does_not_hold_yet_is_filled_on_retry(tmp_path, trades):
    """The WAL on disk is behind (its engine has not got there): the gap stays
    open; once the engine has written the trades, retry_gaps fills it."""
    short = tmp_path / "engine"
    run_engine(short, [("AAA", 1, 1200), ("BBB", 2, 1200)])          # a prefix of PLAN
    have = len(wal_messages(short))
    assert 0 < have < len(trades) and wal_messages(short) == trades[:have]
    aaa_have = max(t["symbol_seq"] for t in trades[:have] if t["symbol"] == "AAA")
    db = tmp_path / "t.sqlite"
    keep, gone = _drop(trades, "AAA", aaa_have - 2, aaa_have + 5)    # 3 trades on disk, 5 not yet
    with TradeStore(db, data_dir=short) as store:
        c = store.apply(keep)
        assert (c.gaps, c.gaps_filled, c.filled_trades) == (1, 0, 3)
        assert store.open_gaps == [("AAA", aaa_have - 2, aaa_have + 5)]
        assert store.retry_gaps().gaps_filled == 0
        run_engine(short, PLAN[2:])                                   # the engine goes on
        r = store.retry_gaps()
        assert (r.gaps_filled, r.filled_trades) == (1, 5)
        assert store.open_gaps == []
    assert rows(db) == expected(trades)
    assert gaps(db) == [("AAA", aaa_have - 2, aaa_have + 5, 1)]


def test_gap_with_a_missing_data_dir_stays_open(tmp_path, trades):
    keep, _ = _drop(trades, "BBB", 3, 4)
    with TradeStore(tmp_path / "t.sqlite", data_dir=tmp_path / "nowhere") as store:
        c = store.apply(keep)
        assert (c.stored, c.gaps, c.gaps_filled) == (len(keep), 1, 0)
        assert store.open_gaps == [("BBB", 3, 4)]


def test_open_gaps_survive_a_restart(tmp_path, engine_dir, trades):
    db = tmp_path / "t.sqlite"
    keep, _ = _drop(trades, "BBB", 10, 12)
    with TradeStore(db) as store:
        store.apply(keep)
    with TradeStore(db, data_dir=engine_dir) as store:
        assert store.open_gaps == [("BBB", 10, 12)]
        assert store.retry_gaps().gaps_filled == 1
    assert rows(db) == expected(trades)


def test_one_transaction_per_batch(tmp_path, trades):
    """A failure in the middle of a batch (the database refuses the 50th
    insert) leaves nothing of that batch; the store goes on afterwards."""
    db = tmp_path / "t.sqlite"
    with TradeStore(db) as store:
        store.apply(trades[:100])
        bad = trades[149]["match_id"]
        with sqlite3.connect(db) as other:
            other.execute(f"CREATE TRIGGER refuse BEFORE INSERT ON trades WHEN NEW.match_id = {bad} "
                          "BEGIN SELECT RAISE(ABORT, 'disk on fire'); END")
        keep, _ = _drop(trades[100:200], trades[120]["symbol"], trades[120]["symbol_seq"],
                        trades[120]["symbol_seq"])                    # a gap in the failing batch too
        with pytest.raises(sqlite3.IntegrityError, match="disk on fire"):
            store.apply(keep)
        assert rows(db) == expected(trades[:100])
        assert gaps(db) == []
        assert store.open_gaps == []
        assert {s: store.last_symbol_seq(s) for s in ("AAA", "BBB")} == {
            s: max([t["symbol_seq"] for t in trades[:100] if t["symbol"] == s], default=0) for s in ("AAA", "BBB")}
        with sqlite3.connect(db) as other:
            other.execute("DROP TRIGGER refuse")
        c = store.apply(trades[100:200])
        assert (c.stored, c.repeats, c.gaps) == (100, 0, 0)
    assert rows(db) == expected(trades[:200])


def test_a_malformed_trade_fails_the_batch_before_anything_is_written(tmp_path, trades):
    db = tmp_path / "t.sqlite"
    with TradeStore(db) as store:
        with pytest.raises(ValueError, match="price"):
            store.apply(trades[:5] + [dict(trades[5], price={"x": 1})])
        assert store.count() == 0
        assert store.apply(trades[:6]).stored == 6


@pytest.mark.parametrize("change, what", [
    ({"match_id": 0}, "match_id"),
    ({"match_id": "7"}, "match_id"),
    ({"symbol_seq": -1}, "symbol_seq"),
    ({"symbol_seq": True}, "symbol_seq"),
    ({"symbol": 5}, "symbol"),
    ({"price": 1.5}, "price"),
    ({"qty": 1 << 64}, "qty"),
    ({"taker_side": 1}, "taker_side"),
    ({"input": "kafka"}, "input"),
    ({"input": {"source": 3, "offset": 1}}, "input_source"),
])
def test_trade_row_refuses_what_sqlite_should_not_hold(trades, change, what):
    with pytest.raises(ValueError, match=what):
        trade_row(dict(trades[0], **change))


def test_trade_row_accepts_a_minimal_trade():
    row = trade_row({"match_id": 1, "symbol": "X", "symbol_seq": 1})
    assert row[:3] == (1, "X", 1) and set(row[3:]) == {None}


def test_database_is_wal_mode_with_full_sync(tmp_path):
    with TradeStore(tmp_path / "sub" / "t.sqlite") as store:
        assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store.db.execute("PRAGMA synchronous").fetchone()[0] == 2      # FULL
