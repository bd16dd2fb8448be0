"""TradeStore (engine/consumers/trade_history.py): each trade stored once, one
transaction per batch with the Kafka offsets past it, repeats verified, gaps
recorded and filled from the engine's WAL, two shards side by side.

The trades are real: synthetic engine runs on temporary data directories,
read back from their WALs and encoded as the engine publishes them
(``encode_trade``), handed to ``apply`` as Kafka records. The database is a
real SQLite file (``tests/postgres/test_trade_history_pg.py`` runs the core
of this on PostgreSQL).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

import pytest

from engine.consumers.kafka_loop import Record, StoreError
from engine.consumers.sql import connect
from engine.consumers.trade_history import (COLUMNS, SCHEMA_VERSION, ConflictError, SchemaError, TradeStore,
                                            trade_row)
from engine.io.messages import encode_trade, trade_message
from engine.io.synthetic import SyntheticSource
from engine.service.engine import Engine, EngineConfig
from tests.support.trades import run_engine, wal_messages, wal_trades

# Two symbols, interleaved in the WAL (a resumed synthetic source goes on where it stopped).
PLAN = [("AAA", 1, 1200), ("BBB", 2, 1200), ("AAA", 1, 2400)]
TOPIC = "trades"


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
    assert {t["shard"] for t in out} == {"0"}
    return out


def shard_run(data_dir: Path, shard: str, symbol: str, seed: int, n: int) -> list[dict]:
    """A real engine run as shard ``shard`` on ``symbol``; its trade messages."""
    engine = Engine(EngineConfig(data_dir=str(data_dir), snapshot_every=0, control_socket=False, pin_cpus=False,
                                 pause_cyclic_gc=False, shard=shard))
    engine.open()
    engine.run(SyntheticSource(n, seed, symbol=symbol))
    return [trade_message(*t, shard) for t in wal_trades(data_dir)]


class Topic:
    """Trades as Kafka records: one partition per symbol (keyed by symbol,
    as the engine publishes), offsets counted per partition."""

    def __init__(self, partitions: dict = None) -> None:
        self.partitions = partitions or {}
        self.next: dict = {}

    def records(self, trades: list) -> list[Record]:
        out = []
        for t in trades:
            p = self.partitions.setdefault(t["symbol"], len(self.partitions))
            off = self.next.get(p, 0)
            self.next[p] = off + 1
            out.append(Record(TOPIC, p, off, json.dumps(t, separators=(",", ":")).encode()))
        return out

    def raw(self, values: list, partition: int = 0) -> list[Record]:
        out = []
        for v in values:
            off = self.next.get(partition, 0)
            self.next[partition] = off + 1
            out.append(Record(TOPIC, partition, off, v))
        return out


def open_store(path, data_dir=None, **kw) -> TradeStore:
    return TradeStore(connect(f"sqlite:///{path}"), data_dir, **kw)


def apply(store: TradeStore, trades: list, topic: Topic = None):
    return store.apply((topic or Topic()).records(trades))


def rows(path) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute(f"SELECT {', '.join(COLUMNS)} FROM trades ORDER BY shard, match_id").fetchall()


def gaps(path) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT symbol, from_symbol_seq, to_symbol_seq, filled FROM gaps "
                          "ORDER BY symbol, from_symbol_seq").fetchall()


def positions(path) -> dict:
    with sqlite3.connect(path) as db:
        return {(t, p): o for t, p, o in db.execute("SELECT topic, partition_id, next_offset FROM trade_positions")}


def expected(trades: list[dict]) -> list[tuple]:
    return sorted(trade_row(t) for t in trades)


def _drop(trades, symbol, lo, hi):
    """``trades`` without ``symbol``'s symbol_seq lo..hi, and the ones left out."""
    keep = [t for t in trades if not (t["symbol"] == symbol and lo <= t["symbol_seq"] <= hi)]
    gone = [t for t in trades if t["symbol"] == symbol and lo <= t["symbol_seq"] <= hi]
    assert len(gone) == hi - lo + 1
    return keep, gone


# ------------------------------------------------------------------- storing
def test_stores_every_trade_with_all_its_fields(tmp_path, trades):
    db = tmp_path / "t.sqlite"
    topic = Topic()
    with open_store(db) as store:
        c = apply(store, trades[:300], topic)
        c2 = apply(store, trades[300:], topic)
        assert (c.stored + c2.stored, c.repeats + c2.repeats, c.gaps + c2.gaps) == (len(trades), 0, 0)
        assert store.count() == len(trades)
        for sym in ("AAA", "BBB"):
            assert store.last_symbol_seq(sym) == max(t["symbol_seq"] for t in trades if t["symbol"] == sym)
        assert store.positions == {(TOPIC, p): n for p, n in topic.next.items()}
    assert rows(db) == expected(trades)
    first = rows(db)[0]
    assert first[COLUMNS.index("shard")] == "0"
    assert first[COLUMNS.index("input_source")] == "synthetic:AAA:1"
    assert isinstance(first[COLUMNS.index("input_offset")], int)
    assert first[COLUMNS.index("taker_side")] in ("buy", "sell")


def test_wire_bytes_of_the_engine_are_what_is_stored(tmp_path, engine_dir, trades):
    """The values the engine publishes (encode_trade), as they come off Kafka."""
    values = [encode_trade(*t) for t in wal_trades(engine_dir)]
    # a record of MESSAGES.md version 2 has no shard: it is shard "0"
    old = json.loads(values[0])
    del old["shard"]
    values[0] = json.dumps(old).encode()
    with open_store(tmp_path / "t.sqlite") as store:
        c = store.apply(Topic().raw(values))
        assert (c.stored, c.malformed) == (len(trades), 0)
    assert rows(tmp_path / "t.sqlite") == expected(trades)


def test_repeats_are_verified_skipped_and_counted(tmp_path, trades):
    db = tmp_path / "t.sqlite"
    with open_store(db) as store:
        assert apply(store, trades[:200]).stored == 200
        again = apply(store, trades[:200])
        assert (again.stored, again.repeats) == (0, 200)
        # overlapping batch: the old half are repeats, the new half stored
        mixed = apply(store, trades[100:400])
        assert (mixed.stored, mixed.repeats, mixed.gaps) == (200, 100, 0)
        # a repeat inside the batch itself
        dup = apply(store, [trades[400], trades[401], trades[400], trades[401]])
        assert (dup.stored, dup.repeats) == (2, 2)
        # the same trade with its fields in another order and spacing is the same trade
        shuffled = json.dumps(dict(reversed(list(trades[5].items())))).encode()
        assert store.apply(Topic().raw([shuffled])).repeats == 1
    assert rows(db) == expected(trades[:402])


def test_repeat_is_recognised_after_reopening(tmp_path, trades):
    db = tmp_path / "t.sqlite"
    with open_store(db) as store:
        apply(store, trades[:100])
    with open_store(db) as store:
        c = apply(store, trades[:150])
        assert (c.stored, c.repeats) == (50, 100)
    assert rows(db) == expected(trades[:150])


# ----------------------------------------------------------------- positions
def test_positions_are_committed_with_the_trades_and_resume_after_a_restart(tmp_path, trades):
    """Offsets live in the database, in the batch's transaction: a reopened
    store starts from them, per partition."""
    db = tmp_path / "t.sqlite"
    topic = Topic()
    recs = topic.records(trades)
    by_part: dict = {}
    for r in recs:
        by_part.setdefault(r.partition, []).append(r)
    assert len(by_part) == 2
    with open_store(db) as store:
        assert store.positions == {}
        store.apply(by_part[0][:100] + by_part[1][:10])
        assert store.positions == {(TOPIC, 0): 100, (TOPIC, 1): 10}
    assert positions(db) == {(TOPIC, 0): 100, (TOPIC, 1): 10}
    with open_store(db) as store:
        assert store.positions == {(TOPIC, 0): 100, (TOPIC, 1): 10}
        # what a consumer reads after seeking there: nothing twice
        rest = [r for r in recs if r.offset >= store.positions[(TOPIC, r.partition)]]
        c = store.apply(rest)
        assert (c.stored, c.repeats) == (len(trades) - 110, 0)
        assert store.positions == {(TOPIC, p): len(rs) for p, rs in by_part.items()}
    assert rows(db) == expected(trades)
    assert positions(db) == {(TOPIC, p): len(rs) for p, rs in by_part.items()}


def test_malformed_records_are_skipped_logged_and_their_offsets_passed(tmp_path, trades, caplog):
    db = tmp_path / "t.sqlite"
    topic = Topic({"AAA": 0, "BBB": 1})
    bad = [b"not json at all", b'{"symbol": "AAA", "symbol_seq": 1, "price": 5}', b"\xff\xfe\x00garbage",
           b"[1, 2, 3]", b"", None,
           b'{"match_id": 999999999, "symbol": "ZZZ", "symbol_seq": 1, "price": {"x": 1}}',
           b'{"match_id": 999999998, "symbol": "ZZZ", "symbol_seq": 0}',
           json.dumps({"match_id": 999999997, "symbol": "ZZZ", "symbol_seq": 1, "qty": 1 << 70}).encode(),
           b'{"shard": "no spaces allowed", "match_id": 9, "symbol": "ZZZ", "symbol_seq": 1}']
    with open_store(db) as store, caplog.at_level(logging.WARNING, logger="evengine.trades_consumer"):
        first = topic.records(trades[:5])
        c = store.apply(first + topic.raw(bad, partition=2) + topic.records(trades[5:10]))
        assert (c.stored, c.malformed, c.repeats) == (10, len(bad), 0)
        assert store.positions[(TOPIC, 2)] == len(bad)
        # a batch of nothing but malformed records still moves its partition on
        assert store.apply(topic.raw([b"nope"], partition=2)).malformed == 1
        assert store.positions[(TOPIC, 2)] == len(bad) + 1
        assert "ZZZ" not in store._last
    for offset in range(len(bad) + 1):
        assert any(f"topic {TOPIC} partition 2 offset {offset}:" in r.getMessage() for r in caplog.records), offset
    assert rows(db) == expected(trades[:10])


# ----------------------------------------------------------------- conflicts
def test_a_conflicting_repeat_stops_it_with_nothing_of_the_batch_applied(tmp_path, trades):
    db = tmp_path / "t.sqlite"
    topic = Topic({"AAA": 0, "BBB": 1})
    with open_store(db) as store:
        apply(store, trades[:100], topic)
        before = (rows(db), positions(db), dict(store.positions), dict(store._last))
        forged = dict(trades[50], price=trades[50]["price"] + 1)
        batch = topic.records(trades[100:150] + [forged] + trades[150:200])
        with pytest.raises(ConflictError, match=rf"{forged['symbol']} symbol_seq {forged['symbol_seq']}.*price") as e:
            store.apply(batch)
        assert isinstance(e.value, StoreError)
        assert (rows(db), positions(db), store.positions, store._last) == before
        # the stream without the forgery goes on from where the database is
        c = store.apply([r for r in batch if json.loads(r.value) != forged])
        assert (c.stored, c.repeats) == (100, 0)
    assert rows(db) == expected(trades[:200])


def test_conflicts_inside_a_batch_and_on_the_match_id(tmp_path, trades):
    db = tmp_path / "t.sqlite"
    with open_store(db) as store:
        apply(store, trades[:10])
        before = rows(db)
        new = trades[10]
        # the same (symbol, symbol_seq) twice in one batch, with different bodies
        with pytest.raises(ConflictError, match="earlier in the batch"):
            apply(store, [new, dict(new, qty=new["qty"] + 1)])
        # a stored (shard, match_id) under a new symbol_seq (the old store called it a repeat)
        with pytest.raises(ConflictError, match=f"match_id {trades[5]['match_id']}"):
            apply(store, [dict(trades[5], symbol_seq=10_000)])
        # ... and under a new symbol
        with pytest.raises(ConflictError, match=f"match_id {trades[5]['match_id']}"):
            apply(store, [dict(trades[5], symbol="NEW", symbol_seq=1)])
        # the same key from another shard: a different trade
        with pytest.raises(ConflictError, match="shard: '0' there, 'B' here"):
            apply(store, [dict(trades[3], shard="B")])
        assert rows(db) == before
        assert store.last_symbol_seq("NEW") == 0
        assert apply(store, trades[10:20]).stored == 10


# ---------------------------------------------------------------------- gaps
def test_gap_without_wal_is_recorded_unfilled_and_the_trade_still_stored(tmp_path, trades, caplog):
    db = tmp_path / "t.sqlite"
    keep, gone = _drop(trades, "BBB", 20, 24)
    with open_store(db) as store, caplog.at_level(logging.WARNING, logger="evengine.trades_consumer"):
        c = apply(store, keep)
        assert (c.stored, c.gaps, c.gaps_filled, c.filled_trades, c.gaps_open) == (len(keep), 1, 0, 0, 1)
        assert store.open_gaps == [("BBB", 20, 24)]
        assert not store.waiting()                          # no data_dir: nothing to retry from
        assert store.retry_gaps().gaps_filled == 0
    assert any("BBB" in r.getMessage() and "20..24" in r.getMessage() for r in caplog.records)
    assert gaps(db) == [("BBB", 20, 24, 0)]
    assert rows(db) == expected(keep)


def test_gap_filled_later_by_the_missing_records_themselves(tmp_path, trades):
    db = tmp_path / "t.sqlite"
    keep, gone = _drop(trades, "AAA", 7, 9)
    with open_store(db) as store:
        apply(store, keep)
        part = apply(store, gone[:2] + gone[:1])
        assert (part.stored, part.repeats, part.gaps_filled) == (2, 1, 0)
        assert gaps(db) == [("AAA", 7, 9, 0)]
    with open_store(db) as store:                           # what was stored of the gap is known again
        rest = apply(store, gone)
        assert (rest.stored, rest.repeats, rest.gaps_filled) == (1, 2, 1)
        assert store.open_gaps == []
    assert gaps(db) == [("AAA", 7, 9, 1)]
    assert rows(db) == expected(trades)


def test_gap_is_filled_from_the_wal(tmp_path, engine_dir, trades):
    db = tmp_path / "t.sqlite"
    keep, gone = _drop(trades, "AAA", 1, 3)              # the symbol's very first trades
    keep, gone2 = _drop(keep, "BBB", 50, 61)
    keep, gone3 = _drop(keep, "AAA", 100, 100)
    with open_store(db, data_dir=engine_dir) as store:
        c = apply(store, keep)
        assert (c.gaps, c.gaps_filled, c.filled_trades) == (3, 3, len(gone) + len(gone2) + len(gone3))
        assert c.stored == len(keep)
        assert store.open_gaps == []
        # the late records of a filled gap are repeats, checked against what the WAL gave
        assert apply(store, gone + gone2).repeats == len(gone) + len(gone2)
    assert rows(db) == expected(trades)
    assert gaps(db) == [("AAA", 1, 3, 1), ("AAA", 100, 100, 1), ("BBB", 50, 61, 1)]


def test_gap_at_the_end_of_a_batch_is_filled_from_the_wal(tmp_path, engine_dir, trades):
    """The trade after the gap lacks ``seq``: the WAL is read to its end."""
    db = tmp_path / "t.sqlite"
    keep, gone = _drop(trades, "BBB", 30, 40)
    keep = [dict(t, seq=None) if (t["symbol"], t["symbol_seq"]) == ("BBB", 41) else t for t in keep]
    with open_store(db, data_dir=engine_dir) as store:
        c = apply(store, keep)
        assert (c.gaps, c.gaps_filled, c.filled_trades) == (1, 1, 11)
    got = {r[1]: r for r in rows(db)}
    assert len(got) == len(trades)
    assert [got[t["match_id"]] for t in gone] == [trade_row(t) for t in gone]


def test_a_wal_that_differs_from_the_records_is_a_conflict(tmp_path, engine_dir, trades):
    """A gap filled from the WAL and the late record of it disagree."""
    keep, gone = _drop(trades, "AAA", 20, 22)
    with open_store(tmp_path / "t.sqlite", data_dir=engine_dir) as store:
        apply(store, keep)
        with pytest.raises(ConflictError, match="AAA symbol_seq 21.*qty"):
            apply(store, [dict(gone[1], qty=gone[1]["qty"] + 7)])


def test_gap_the_wal_does_not_hold_yet_is_filled_on_retry(tmp_path, trades):
    """The WAL on disk is behind (its engine has not got there): the gap stays
    open (the store says it is waiting); once the engine has written the
    trades, ``apply([])`` fills it."""
    short = tmp_path / "engine"
    run_engine(short, [("AAA", 1, 1200), ("BBB", 2, 1200)])          # a prefix of PLAN
    have = len(wal_messages(short))
    assert 0 < have < len(trades) and wal_messages(short) == trades[:have]
    aaa_have = max(t["symbol_seq"] for t in trades[:have] if t["symbol"] == "AAA")
    db = tmp_path / "t.sqlite"
    keep, gone = _drop(trades, "AAA", aaa_have - 2, aaa_have + 5)    # 3 trades on disk, 5 not yet
    with open_store(db, data_dir=short) as store:
        c = apply(store, keep)
        assert (c.gaps, c.gaps_filled, c.filled_trades) == (1, 0, 3)
        assert store.open_gaps == [("AAA", aaa_have - 2, aaa_have + 5)]
        assert store.waiting()
        assert store.apply([]).gaps_filled == 0
        run_engine(short, PLAN[2:])                                   # the engine goes on
        r = store.apply([])
        assert (r.gaps_filled, r.filled_trades, r.gaps_open) == (1, 5, 0)
        assert store.open_gaps == [] and not store.waiting()
    assert rows(db) == expected(trades)
    assert gaps(db) == [("AAA", aaa_have - 2, aaa_have + 5, 1)]


def test_a_batch_retries_the_open_gaps_now_and_then(tmp_path, trades):
    """Records keep coming (the loop never idles): a batch retries the open
    gaps once ``gap_retry_s`` has passed since the last try."""
    short = tmp_path / "engine"
    run_engine(short, [("AAA", 1, 1200), ("BBB", 2, 1200)])
    have = len(wal_messages(short))
    aaa_have = max(t["symbol_seq"] for t in trades[:have] if t["symbol"] == "AAA")
    keep, gone = _drop(trades, "AAA", aaa_have, aaa_have + 3)
    bbb = [t for t in keep if t["symbol"] == "BBB"]
    keep = [t for t in keep if t["symbol"] == "AAA"]
    with open_store(tmp_path / "t.sqlite", data_dir=short, gap_retry_s=0.0) as store:
        assert apply(store, keep).gaps_open == 1
        run_engine(short, PLAN[2:])
        c = apply(store, bbb[:5])
        assert (c.stored, c.gaps_filled, c.filled_trades, c.gaps_open) == (5, 1, 3, 0)


def test_gap_with_a_missing_data_dir_stays_open(tmp_path, trades):
    keep, _ = _drop(trades, "BBB", 3, 4)
    with open_store(tmp_path / "t.sqlite", data_dir=tmp_path / "nowhere") as store:
        c = apply(store, keep)
        assert (c.stored, c.gaps, c.gaps_filled) == (len(keep), 1, 0)
        assert store.open_gaps == [("BBB", 3, 4)]


def test_open_gaps_survive_a_restart(tmp_path, engine_dir, trades):
    db = tmp_path / "t.sqlite"
    keep, _ = _drop(trades, "BBB", 10, 12)
    with open_store(db) as store:
        apply(store, keep)
    with open_store(db, data_dir=engine_dir) as store:
        assert store.open_gaps == [("BBB", 10, 12)]
        assert store.retry_gaps().gaps_filled == 1
    assert rows(db) == expected(trades)


# -------------------------------------------------------------------- shards
@pytest.fixture(scope="module")
def two_shards(tmp_path_factory) -> tuple:
    """Two engines, shards A (symbol AAA) and B (symbol BBB): the same match_ids."""
    a, b = tmp_path_factory.mktemp("shard-a"), tmp_path_factory.mktemp("shard-b")
    ta, tb = shard_run(a, "A", "AAA", 1, 1500), shard_run(b, "B", "BBB", 2, 1500)
    common = {t["match_id"] for t in ta} & {t["match_id"] for t in tb}
    assert len(common) > 300
    return a, ta, b, tb


def test_two_shards_into_one_store_are_kept_apart(tmp_path, two_shards):
    a, ta, b, tb = two_shards
    db = tmp_path / "t.sqlite"
    topic = Topic({"AAA": 0, "BBB": 1})
    mixed = [t for pair in zip(ta, tb) for t in pair] + ta[len(tb):] + tb[len(ta):]
    with open_store(db) as store:
        for i in range(0, len(mixed), 250):
            apply(store, mixed[i:i + 250], topic)
        again = apply(store, ta[:100] + tb[:100], topic)     # both engines republish after a restart
        assert (again.stored, again.repeats) == (0, 200)
        assert store.count() == len(ta) + len(tb)
    assert rows(db) == expected(ta + tb)
    with sqlite3.connect(db) as con:
        assert dict(con.execute("SELECT shard, COUNT(*) FROM trades GROUP BY shard")) == {"A": len(ta), "B": len(tb)}
        assert set(con.execute("SELECT DISTINCT shard, symbol FROM trades")) == {("A", "AAA"), ("B", "BBB")}


def test_a_gap_is_filled_only_from_the_wal_of_its_shard(tmp_path, two_shards, caplog):
    a, ta, b, tb = two_shards
    keep_a, gone_a = _drop(ta, "AAA", 30, 40)
    keep_b, gone_b = _drop(tb, "BBB", 30, 40)
    db = tmp_path / "t.sqlite"
    with open_store(db, data_dir=a) as store, caplog.at_level(logging.WARNING, logger="evengine.trades_consumer"):
        c = apply(store, keep_a + keep_b)
        assert (c.gaps, c.gaps_filled, c.filled_trades) == (2, 1, 11)
        assert store.open_gaps == [("BBB", 30, 40)]
    assert any("shard 'B'" in r.getMessage() and "shard 'A'" in r.getMessage() for r in caplog.records)
    assert rows(db) == expected(ta + keep_b)
    assert [r[0] for r in rows(db) if r[2] == "AAA" and 30 <= r[3] <= 40] == ["A"] * 11


# ---------------------------------------------------------------- atomicity
def test_one_transaction_per_batch(tmp_path, trades):
    """A failure in the middle of a batch (the database refuses one insert)
    leaves nothing of that batch, offsets included; the store goes on
    afterwards."""
    db = tmp_path / "t.sqlite"
    topic = Topic()
    with open_store(db) as store:
        apply(store, trades[:100], topic)
        pos = positions(db)
        bad = trades[149]["match_id"]
        with sqlite3.connect(db) as other:
            other.execute(f"CREATE TRIGGER refuse BEFORE INSERT ON trades WHEN NEW.match_id = {bad} "
                          "BEGIN SELECT RAISE(ABORT, 'disk on fire'); END")
        keep, _ = _drop(trades[100:200], trades[120]["symbol"], trades[120]["symbol_seq"],
                        trades[120]["symbol_seq"])                    # a gap in the failing batch too
        batch = topic.records(keep)
        with pytest.raises(sqlite3.IntegrityError, match="disk on fire"):
            store.apply(batch)
        assert rows(db) == expected(trades[:100])
        assert gaps(db) == [] and store.open_gaps == []
        assert positions(db) == pos and store.positions == pos
        assert {s: store.last_symbol_seq(s) for s in ("AAA", "BBB")} == {
            s: max([t["symbol_seq"] for t in trades[:100] if t["symbol"] == s], default=0) for s in ("AAA", "BBB")}
        with sqlite3.connect(db) as other:
            other.execute("DROP TRIGGER refuse")
        c = store.apply(batch)
        assert (c.stored, c.repeats, c.gaps) == (99, 0, 1)
    assert rows(db) == expected(trades[:100] + keep)


# ------------------------------------------------------------------- schema
_V1_SCHEMA = """
CREATE TABLE trades (
    match_id INTEGER PRIMARY KEY, symbol TEXT NOT NULL, symbol_seq INTEGER NOT NULL, seq INTEGER, cmd_seq INTEGER,
    ts_ns INTEGER, price INTEGER, qty INTEGER, taker_side TEXT, maker_order_id INTEGER, taker_order_id INTEGER,
    maker_account INTEGER, taker_account INTEGER, input_source TEXT, input_offset INTEGER,
    UNIQUE (symbol, symbol_seq));
CREATE TABLE symbols (symbol TEXT PRIMARY KEY, last_symbol_seq INTEGER NOT NULL);
CREATE TABLE gaps (symbol TEXT NOT NULL, from_symbol_seq INTEGER NOT NULL, to_symbol_seq INTEGER NOT NULL,
    detected_at_ns INTEGER NOT NULL, filled INTEGER NOT NULL DEFAULT 0, filled_at_ns INTEGER,
    PRIMARY KEY (symbol, from_symbol_seq));
"""


def test_a_file_of_schema_version_1_is_migrated(tmp_path, trades, caplog):
    """A trade-history file of evengine 0.2 (no shard, no positions): its
    trades become shard 0, the topic is read again from the start and comes
    back as verified repeats."""
    db = tmp_path / "old.sqlite"
    keep, gone = _drop(trades[:300], "AAA", 10, 12)
    with sqlite3.connect(db) as con:
        con.executescript(_V1_SCHEMA)
        con.executemany(f"INSERT INTO trades VALUES ({', '.join('?' * 15)})", [trade_row(t)[1:] for t in keep])
        last = {}
        for t in keep:
            last[t["symbol"]] = max(last.get(t["symbol"], 0), t["symbol_seq"])
        con.executemany("INSERT INTO symbols VALUES (?, ?)", last.items())
        con.execute("INSERT INTO gaps VALUES ('AAA', 10, 12, 1, 0, NULL)")
    with caplog.at_level(logging.WARNING, logger="evengine.trades_consumer"), open_store(db) as store:
        assert store.positions == {} and store.open_gaps == [("AAA", 10, 12)]
        assert store.count() == len(keep)
        c = apply(store, trades)
        assert (c.repeats, c.stored, c.gaps_filled) == (len(keep), len(trades) - len(keep), 1)
        assert store.db.query("SELECT value FROM trade_history_meta WHERE key = 'schema_version'") == [
            (str(SCHEMA_VERSION),)]
    assert any("migrated" in r.getMessage() and f"{len(keep)} trades" in r.getMessage() for r in caplog.records)
    assert rows(db) == expected(trades)
    with open_store(db) as store:                       # opened again: nothing to migrate
        assert store.count() == len(trades)


def test_databases_that_are_not_a_trade_history_are_refused(tmp_path):
    foreign = tmp_path / "foreign.sqlite"
    with sqlite3.connect(foreign) as con:
        con.execute("CREATE TABLE trades (id INTEGER PRIMARY KEY, what TEXT)")
    with pytest.raises(SchemaError, match="not a trade history"):
        open_store(foreign)
    settlement = tmp_path / "settlement.sqlite"
    with sqlite3.connect(settlement) as con:
        con.execute("CREATE TABLE settlement_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    with pytest.raises(SchemaError, match="settlement database"):
        open_store(settlement)
    future = tmp_path / "future.sqlite"
    open_store(future).close()
    with sqlite3.connect(future) as con:
        con.execute("UPDATE trade_history_meta SET value = '99'")
    with pytest.raises(SchemaError, match="version 99"):
        open_store(future)


def test_a_bare_path_or_a_url_opens_sqlite_in_wal_mode_with_full_sync(tmp_path, trades):
    for where in (tmp_path / "sub" / "t.sqlite", f"sqlite:///{tmp_path / 'sub2' / 't.sqlite'}"):
        with TradeStore(where) as store:
            assert store.db.query("PRAGMA journal_mode")[0][0] == "wal"
            assert store.db.query("PRAGMA synchronous")[0][0] == 2      # FULL
            assert apply(store, trades[:3]).stored == 3


# ----------------------------------------------------------------- trade_row
@pytest.mark.parametrize("change, what", [
    ({"match_id": 0}, "match_id"),
    ({"match_id": "7"}, "match_id"),
    ({"symbol_seq": -1}, "symbol_seq"),
    ({"symbol_seq": True}, "symbol_seq"),
    ({"symbol": 5}, "symbol"),
    ({"shard": ""}, "shard"),
    ({"shard": 3}, "shard"),
    ({"price": 1.5}, "price"),
    ({"qty": 1 << 64}, "qty"),
    ({"taker_side": 1}, "taker_side"),
    ({"input": "kafka"}, "input"),
    ({"input": {"source": 3, "offset": 1}}, "input_source"),
])
def test_trade_row_refuses_what_the_database_should_not_hold(trades, change, what):
    with pytest.raises(ValueError, match=what):
        trade_row(dict(trades[0], **change))


def test_trade_row_accepts_a_minimal_trade():
    row = trade_row({"match_id": 1, "symbol": "X", "symbol_seq": 1})
    assert row[:4] == ("0", 1, "X", 1) and set(row[4:]) == {None}
