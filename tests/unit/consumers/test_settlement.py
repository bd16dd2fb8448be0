"""SettlementStore on a real engine's streams: exactly once, gaps, repeats, conflicts.

The records are the ones the Kafka bridge publishes for a real durable
engine run (``tests/support/settlement.py``: same encoders, same keys onto
partitions, offsets per partition), fed in batches as a consumer would get
them. The truth to compare with is the engine's own WAL replayed
(``open_data_dir(...).balance_report``). The database is a real SQLite file
with ``synchronous=FULL``; ``tests/postgres`` runs the same on PostgreSQL.
"""

from __future__ import annotations

import json
import random

import pytest

from engine.consumers.settlement import ConflictError, LedgerMismatchError, Record, SettlementStore
from engine.consumers.sql import connect
from tests.support.settlement import engine_balances, funded_run, store_balances, stream_records


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One funded engine run and its records (3 ledger partitions, 2 trade partitions)."""
    d = tmp_path_factory.mktemp("engine")
    funded_run(d, n=6000, seed=11, accounts=40)
    ledger, trades = stream_records(d, ledger_partitions=3, trade_partitions=2)
    assert len(ledger) > 2000 and len(trades) > 300
    return d, ledger, trades


def open_store(tmp_path, data_dir=None, name="settle.db", gap_grace_s=0.0) -> SettlementStore:
    return SettlementStore(connect(f"sqlite:///{tmp_path / name}"),
                           data_dirs=None if data_dir is None else [str(data_dir)], gap_grace_s=gap_grace_s)


def batches(records: list, size: int) -> list:
    return [records[i:i + size] for i in range(0, len(records), size)]


def dump(store: SettlementStore) -> dict:
    q = store.db.query
    return {t: sorted(q(f"SELECT * FROM {t}"), key=repr) for t in
            ("balances", "postings", "settled_trades", "symbols", "consumer_positions", "watermarks", "gaps", "assets")}


def assert_settled(store: SettlementStore, data_dir, trades: list) -> None:
    assert store_balances(store.db) == engine_balances(data_dir)
    assert set(store.posting_sums().values()) == {0}
    for asset, (available, held, supply) in store.totals().items():
        assert available + held == supply, asset
    assert store.db.query("SELECT COUNT(*) FROM settled_trades")[0][0] == len(trades)
    want = sorted((json.loads(r.value)["match_id"], json.loads(r.value)["symbol_seq"]) for r in trades)
    assert sorted(store.db.query("SELECT match_id, symbol_seq FROM settled_trades")) == want


def in_partition_order(records: list, seed: int) -> list:
    """Records of all partitions interleaved at random, each partition in offset order."""
    rng = random.Random(seed)
    queues = {}
    for rec in records:
        queues.setdefault((rec.topic, rec.partition), []).append(rec)
    keys = sorted(queues)
    out = []
    while keys:
        k = rng.choice(keys)
        take = rng.randint(1, 40)
        out.extend(queues[k][:take])
        del queues[k][:take]
        keys = [k for k in keys if queues[k]]
    return out


@pytest.mark.parametrize("size", [1, 97, 5000])
def test_a_funded_run_settles_to_the_engines_balances(tmp_path, run, size):
    d, ledger, trades = run
    store = open_store(tmp_path, gap_grace_s=60)
    for batch in batches(in_partition_order(ledger + trades, size), size):
        store.apply(batch)
    assert_settled(store, d, trades)
    assert not store.pending_ledger and not store.pending_trades
    assert store.db.query("SELECT COUNT(*) FROM gaps")[0][0] == 0   # partitions interleave: no gap
    assert store.ledger_seq == len(ledger)
    # every partition's stored offset is just past its last record
    last = {}
    for rec in ledger + trades:
        last[(rec.topic, rec.partition)] = rec.offset + 1
    assert store.positions == last


def test_a_republished_stream_is_recognised_and_changes_nothing(tmp_path, run):
    d, ledger, trades = run
    store = open_store(tmp_path)
    records = in_partition_order(ledger + trades, 1)
    for batch in batches(records, 800):
        store.apply(batch)
    before = dump(store)
    again = store.apply(records[:3000])
    assert again.repeats == 3000 and again.ledger_applied == again.trades_settled == 0
    assert {k: v for k, v in dump(store).items() if k != "consumer_positions"} == \
        {k: v for k, v in before.items() if k != "consumer_positions"}


def test_a_restart_resumes_from_the_offsets_in_the_database(tmp_path, run):
    d, ledger, trades = run
    records = in_partition_order(ledger + trades, 2)
    store = open_store(tmp_path)
    for batch in batches(records[: len(records) // 2], 500):
        store.apply(batch)
    store.close()
    store = open_store(tmp_path)                    # a new process: only the database is known
    positions = dict(store.positions)
    rest = [r for r in records if r.offset >= positions.get((r.topic, r.partition), 0)]
    assert 0 < len(rest) < len(records)
    for batch in batches(rest, 500):
        store.apply(batch)
    assert_settled(store, d, trades)


def test_a_gap_without_the_wal_waits_and_is_filled_by_the_late_record(tmp_path, run):
    d, ledger, trades = run
    missing = ledger[1000]
    held_from = next(r for r in ledger[1001:] if r.partition == missing.partition)
    store = open_store(tmp_path)
    counts = store.apply([r for r in ledger if r is not missing])
    assert counts.gaps == 1 and store.ledger_seq == 1000       # nothing after the gap
    assert counts.held == len(ledger) - 1001
    gap = store.db.query("SELECT stream, first_id, last_id, filled_ns FROM gaps")
    assert gap == [("ledger:0", 1001, 1001, None)]
    # every partition's stored offset stays at its first record waiting behind the gap
    for p in range(3):
        first_held = next(r for r in ledger[1001:] if r.partition == p)
        assert store.positions[("ledger", p)] == first_held.offset
    assert held_from.partition == missing.partition
    store.apply([missing])
    assert store.ledger_seq == len(ledger) and not store.pending_ledger
    assert store.db.query("SELECT filled_ns IS NOT NULL, how FROM gaps") == [(1, "late records")]
    store.apply(trades)
    assert_settled(store, d, trades)


def test_a_restart_with_records_held_behind_a_gap_reads_them_again(tmp_path, run):
    d, ledger, trades = run
    missing = ledger[500]
    store = open_store(tmp_path)
    store.apply([r for r in ledger if r is not missing] + trades)
    assert store.ledger_seq == 500
    store.close()
    store = open_store(tmp_path)
    assert not store.pending_ledger                  # memory is gone; the offsets say where to read
    rest = [r for r in ledger if r.offset >= store.positions.get((r.topic, r.partition), 0)]
    assert all(r in rest for r in ledger[501:])      # every record behind the gap is read again
    store.apply(rest + [missing])                    # ... and the missing one arrives late
    assert_settled(store, d, trades)


def test_gaps_are_filled_from_the_engines_wal(tmp_path, run):
    d, ledger, trades = run
    drop = set(range(700, 900)) | {5, len(ledger) - 2}     # a missing tail is not a gap: nothing says it exists
    keep_ledger = [r for i, r in enumerate(ledger) if i not in drop]
    keep_trades = [r for i, r in enumerate(trades) if i % 7 != 3]
    store = open_store(tmp_path, data_dir=d)
    for batch in batches(keep_ledger + keep_trades, 1500):
        store.apply(batch)
    assert_settled(store, d, trades)
    assert store.db.query("SELECT COUNT(*) FROM gaps WHERE filled_ns IS NULL")[0][0] == 0
    # the derived entries carry the same digests the records would have: a late copy is a plain repeat
    late = store.apply([ledger[i] for i in sorted(drop)])
    assert late.repeats == len(drop)


def test_a_repeat_with_another_body_stops_settlement_and_applies_nothing(tmp_path, run):
    d, ledger, trades = run
    store = open_store(tmp_path)
    store.apply(ledger[:2000])
    before = dump(store)
    msg = json.loads(ledger[100].value)
    msg["ts_ns"] += 1
    forged = Record("ledger", ledger[100].partition, ledger[100].offset, json.dumps(msg).encode())
    with pytest.raises(ConflictError, match="ledger_seq 101"):
        store.apply(ledger[2000:2500] + [forged])
    assert dump(store) == before and store.ledger_seq == 2000
    t = json.loads(trades[0].value)
    t["qty"] += 1
    store.apply(trades[:10])
    with pytest.raises(ConflictError):
        store.apply([Record("trades", trades[0].partition, trades[0].offset, json.dumps(t).encode())])


def test_an_entry_whose_running_balance_disagrees_is_refused(tmp_path, run):
    d, ledger, _ = run
    store = open_store(tmp_path)
    store.apply(ledger[:300])
    before = dump(store)
    msg = json.loads(ledger[300].value)
    msg["available"] += 1
    with pytest.raises(LedgerMismatchError, match="ledger_seq 301"):
        store.apply([Record("ledger", 0, 10**6, json.dumps(msg).encode())] + ledger[301:400])
    assert dump(store) == before


def test_malformed_records_are_skipped_and_their_offsets_pass(tmp_path, run, caplog):
    d, ledger, trades = run
    store = open_store(tmp_path)
    junk = [Record("ledger", 0, 10_000_000, b"\x00not json"), Record("trades", 1, 10_000_000, b'{"match_id": "x"}'),
            Record("ledger", 2, 10_000_000, None)]
    counts = store.apply(ledger + junk + trades)
    assert counts.malformed == 3
    assert store.positions[("ledger", 0)] == 10_000_001 and store.positions[("trades", 1)] == 10_000_001
    assert "offset 10000000" in caplog.text
    assert_settled(store, d, trades)


def test_verify_recomputes_every_balance_from_the_wal(tmp_path, run):
    from engine.consumers.settlement import verify
    d, ledger, trades = run
    store = open_store(tmp_path)
    store.apply(ledger[:1500])
    lagging = verify(store.db, str(d))
    assert lagging["differences"] == [] and lagging["ledger_lag"] == len(ledger) - 1500
    assert lagging["trades_lag"] == len(trades)
    store.apply(ledger[1500:] + trades)
    report = verify(store.db, str(d))
    assert (report["differences"], report["ledger_lag"], report["trades_lag"]) == ([], 0, 0)
    assert set(report["posting_sums"].values()) == {0} and report["supply_differences"] == {}
    account, asset = store.db.query("SELECT account, asset FROM balances WHERE available > 0 LIMIT 1")[0]
    with store.db.transaction():
        store.db.execute("UPDATE balances SET available = available - 1 WHERE account = ? AND asset = ?",
                         (account, asset))
    (diff,) = verify(store.db, str(d))["differences"]
    assert (diff["account"], diff["asset"]) == (account, asset)
    assert diff["settled"][0] == diff["engine"][0] - 1


def test_two_shards_on_one_topic_settle_apart_though_their_ids_repeat(tmp_path):
    from engine.consumers.settlement import verify
    a, b = tmp_path / "a", tmp_path / "b"
    funded_run(a, n=2500, seed=3, accounts=20, symbol="AAA", shard="a")
    funded_run(b, n=2500, seed=4, accounts=20, symbol="BBB", shard="b")
    offsets: dict = {}
    la, ta = stream_records(a, 2, 1, offsets)
    lb, tb = stream_records(b, 2, 1, offsets)       # the same topics: offsets go on
    ids = lambda recs: {json.loads(r.value)["match_id"] for r in recs}  # noqa: E731
    assert ids(ta) & ids(tb)                          # match_id repeats across shards
    missing = lb[300]
    records = in_partition_order([r for r in la + lb if r is not missing] + ta + tb, 5)
    store = SettlementStore(connect(f"sqlite:///{tmp_path / 's.db'}"), data_dirs=[str(a), str(b)], gap_grace_s=60)
    for batch in batches(records, 700):
        store.apply(batch)
    # the partitions' interleaving is waited out; only the record that never came is a gap, once it is overdue
    assert store.db.query("SELECT COUNT(*) FROM gaps")[0][0] == 0 and store.waiting()
    store.gap_grace_s = 0
    store.apply([])
    assert store.ledgers["a"].ledger_seq == len(la) and store.ledgers["b"].ledger_seq == len(lb)
    assert store_balances(store.db, "a") == engine_balances(a)
    assert store_balances(store.db, "b") == engine_balances(b)
    assert store.db.query("SELECT shard, COUNT(*) FROM settled_trades GROUP BY shard ORDER BY shard") == \
        [("a", len(ta)), ("b", len(tb))]
    assert store.db.query("SELECT how FROM gaps") == [("wal",)]    # shard b's gap, from b's WAL
    report = verify(store.db, [str(a), str(b)])
    assert (report["differences"], report["ledger_lag"], report["trades_lag"]) == ([], 0, 0)
    assert sorted(report["shards"]) == ["a", "b"]


def test_a_gap_the_given_wal_cannot_fill_stops_settlement_with_nothing_applied(tmp_path, run):
    from engine.consumers.settlement import GapError
    d, ledger, trades = run
    other = tmp_path / "other"
    funded_run(other, n=300, seed=99, accounts=5)      # shard 0 too, but another engine: a short WAL
    store = SettlementStore(connect(f"sqlite:///{tmp_path / 's.db'}"), data_dirs=[str(other)], gap_grace_s=0)
    store.apply(ledger[:2000])
    before = dump(store)
    with pytest.raises(GapError, match="ledger_seq 2001..2001 of shard 0"):
        store.apply(ledger[2001:3000])
    assert dump(store) == before
