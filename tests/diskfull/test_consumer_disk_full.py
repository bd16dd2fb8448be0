"""The trade history on a SQLite file on a real, full tmpfs: a batch that does
not fit is rolled back whole and reported as transient (the consumer
reconnects and applies it again); with space it goes in exactly once."""

from __future__ import annotations

import json
import sqlite3

import pytest

from engine.consumers.kafka_loop import Record
from engine.consumers.sql import TransientDatabaseError, connect
from engine.consumers.trade_history import COLUMNS, TradeStore
from tests.support.tmpfs import Ballast, tmpfs
from tests.support.trades import run_engine, wal_messages


def records(trades: list) -> list[Record]:
    return [Record("trades", 0, i, json.dumps(t, separators=(",", ":")).encode()) for i, t in enumerate(trades)]


def stored(path) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute(f"SELECT {', '.join(COLUMNS)} FROM trades ORDER BY shard, match_id").fetchall()


def test_a_batch_that_does_not_fit_is_rolled_back_whole_and_goes_in_once_with_space(tmp_path):
    run_engine(tmp_path / "engine", [("AAA", 5, 4000)])
    trades = wal_messages(tmp_path / "engine")
    assert len(trades) > 1000
    recs = records(trades)
    head, tail = recs[:200], recs[200:]
    with tmpfs(tmp_path / "mnt", "4m") as disk:
        db = disk / "trades.sqlite"
        store = TradeStore(connect(f"sqlite:///{db}"))
        store.apply(head)
        before = stored(db)
        assert len(before) == 200
        ballast = Ballast(disk)
        ballast.fill()
        with pytest.raises(TransientDatabaseError) as info:
            store.apply(tail)
        assert "database or disk is full" in str(info.value) and "free" in str(info.value)
        store.close()
        assert stored(db) == before                      # nothing of the batch stayed
        ballast.free(-1)
        store = TradeStore(connect(f"sqlite:///{db}"))   # what the consumer loop does: reconnect, re-apply
        store.apply(tail)
        store.close()
        assert len(stored(db)) == len(trades)
        assert [r[COLUMNS.index("match_id")] for r in stored(db)] == list(range(1, len(trades) + 1))
