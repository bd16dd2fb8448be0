"""The settlement store on a real PostgreSQL server: the same book of record as on SQLite.

Records are the ones the Kafka bridge publishes for a real engine run
(``tests/support/settlement.py``); the database is a fresh one per test on
the session's server (``tests/postgres/conftest.py``). The server is killed
with SIGKILL mid-stream in one test: the batch in flight must leave nothing,
and settlement must resume exactly once it is back.
"""

from __future__ import annotations

import pytest

from engine.consumers.settlement import ConflictError, SettlementStore, verify
from engine.consumers.sql import TransientDatabaseError, connect
from tests.support import postgres as pg
from tests.support.settlement import engine_balances, funded_run, store_balances, stream_records


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("engine")
    funded_run(d, n=5000, seed=21, accounts=40)
    ledger, trades = stream_records(d, ledger_partitions=2, trade_partitions=1)
    return d, ledger, trades


def batches(records: list, size: int) -> list:
    return [records[i:i + size] for i in range(0, len(records), size)]


def test_a_funded_run_settles_on_postgresql_as_on_sqlite(tmp_path, run, postgres_db):
    d, ledger, trades = run
    pg_store = SettlementStore(connect(postgres_db))
    lite = SettlementStore(connect(f"sqlite:///{tmp_path / 's.db'}"))
    for batch in batches(ledger + trades, 900):
        pg_store.apply(batch)
        lite.apply(batch)
    assert store_balances(pg_store.db) == engine_balances(d) == store_balances(lite.db)
    report = verify(pg_store.db, str(d))
    assert (report["differences"], report["ledger_lag"], report["trades_lag"]) == ([], 0, 0)
    assert set(report["posting_sums"].values()) == {0}
    for table in ("postings", "settled_trades", "consumer_positions", "watermarks"):
        q = f"SELECT * FROM {table}"
        assert sorted(pg_store.db.query(q), key=repr) == sorted(lite.db.query(q), key=repr), table
    again = pg_store.apply(ledger[:500])
    assert again.repeats == 500 and again.ledger_applied == 0


def test_a_conflicting_repeat_rolls_the_whole_batch_back(run, postgres_db):
    import json

    from engine.consumers.kafka_loop import Record
    d, ledger, trades = run
    store = SettlementStore(connect(postgres_db))
    store.apply(ledger[:1000])
    before = store.db.query("SELECT COUNT(*), MAX(ledger_seq) FROM postings")
    msg = json.loads(ledger[10].value)
    msg["ref"] += 1
    with pytest.raises(ConflictError):
        store.apply(ledger[1000:1500] + [Record("ledger", 0, 10**6, json.dumps(msg).encode())])
    assert store.db.query("SELECT COUNT(*), MAX(ledger_seq) FROM postings") == before
    assert store.ledger_seq == 1000


def test_settlement_survives_the_database_being_killed_mid_stream(run, postgres_db):
    if not pg.can_control_server():
        pg.missing("the PostgreSQL server was not started by this test session", "no control of the server")
    d, ledger, trades = run
    parts = batches(ledger + trades, 700)
    store = SettlementStore(connect(postgres_db))
    for batch in parts[:3]:
        store.apply(batch)
    committed = store.ledger_seq
    pg.kill_server()
    with pytest.raises(TransientDatabaseError):
        store.apply(parts[3])
    pg.restart_server()
    store.db.reconnect()
    store.load()                                  # what the database kept: the three batches, not the fourth
    assert store.ledger_seq == committed
    positions = dict(store.positions)
    rest = [r for r in ledger + trades if r.offset >= positions.get((r.topic, r.partition), 0)]
    for batch in batches(rest, 700):
        store.apply(batch)
    assert store_balances(store.db) == engine_balances(d)
    assert verify(store.db, str(d))["differences"] == []
