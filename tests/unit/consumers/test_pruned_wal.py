"""Consumers that fill gaps from an engine's WAL, and the Kafka bridge that
republishes from it, on a pruned WAL: what the prune kept still serves; a
range it removed fails with an error naming it (not a confusing one)."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from types import SimpleNamespace

import pytest

from engine.consumers.kafka_loop import Record
from engine.consumers.settlement import GapError, SettlementStore
from engine.consumers.sql import connect
from engine.consumers.trade_history import TradeStore
from engine.io.kafka import KafkaConfig
from engine.io.synthetic import SyntheticSource
from engine.service.engine import Engine, EngineConfig
from engine.core import Matcher
from eventstore import PrunedRangeError, read_retention
from snapshot import list_snapshots, load_snapshot
from recovery import recover
from recovery.retention import prune_wal
from tests.support.settlement import stream_records


def _run(d, n, seed, accounts):
    e = Engine(EngineConfig(data_dir=str(d), control_socket=False, pin_cpus=False, segment_size_bytes=12_000,
                            snapshot_every=1_500))
    e.open()

    def wait(eng):
        if eng.snapshots.running is not None:
            eng._snapshot_done(eng.snapshots.poll(block=True))
    return e.run(SyntheticSource(n, seed, accounts=accounts), on_batch=wait)


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    d = tmp_path_factory.mktemp("engine")
    summary = _run(d, 6000, 11, 40)
    ledger, trades = stream_records(d)                    # every record, read before the prune
    plan = prune_wal(str(d), before_seq=10**12)
    assert plan.applied and plan.pruned_before_seq > 1
    return d, summary, ledger, trades, plan


def _cmd(rec):
    return json.loads(rec.value)["cmd_seq"]


def test_settlement_gap_in_the_pruned_range_names_it(tmp_path, pruned):
    d, _, ledger, _, plan = pruned
    k = max(i for i, r in enumerate(ledger) if _cmd(r) < plan.pruned_before_seq - 1)
    assert 10 < k < len(ledger) - 10
    store = SettlementStore(connect(f"sqlite:///{tmp_path / 's.db'}"), data_dirs=[str(d)], gap_grace_s=0)
    store.apply(ledger[:k - 5])
    with pytest.raises(GapError) as err:
        store.apply(ledger[k - 3:])                        # two entries of the pruned range missing
    msg = str(err.value)
    assert "were pruned" in msg and "earliest" in msg and "retention.json" in msg


def test_settlement_gap_in_the_retained_range_is_filled(tmp_path, pruned):
    d, _, ledger, _, plan = pruned
    k = min(i for i, r in enumerate(ledger) if _cmd(r) > plan.base_snapshot_seq + 5)
    store = SettlementStore(connect(f"sqlite:///{tmp_path / 's.db'}"), data_dirs=[str(d)], gap_grace_s=0)
    store.apply(ledger[:k])
    c = store.apply(ledger[k + 3:])
    assert c.filled_from_wal == 3


def test_trade_store_gap_in_the_pruned_range_says_so_and_a_retained_one_fills(tmp_path, pruned, caplog):
    d, _, _, trades, plan = pruned
    msgs = [json.loads(r.value) for r in trades]
    old = [i for i, t in enumerate(msgs) if t["seq"] < plan.pruned_before_seq][5:8]
    new = [i for i, t in enumerate(msgs) if t["seq"] > plan.base_snapshot_seq + 5][3:6]
    assert len(old) == 3 and len(new) == 3
    drop = set(old) | set(new)
    keep = [Record("trades", 0, i, r.value) for i, r in enumerate(trades) if i not in drop]
    with caplog.at_level(logging.WARNING), TradeStore(connect(f"sqlite:///{tmp_path / 't.db'}"), str(d)) as store:
        c = store.apply(keep)
        assert (c.gaps, c.gaps_filled, c.filled_trades) == (2, 1, 3)
        assert len(store.open_gaps) == 1
    text = caplog.text
    assert "cannot fill it from the WAL" in text and "were pruned" in text
    with sqlite3.connect(tmp_path / "t.db") as db:
        assert db.execute("SELECT COUNT(*) FROM trades").fetchone()[0] == len(trades) - 3


def _bridge(d, doc):
    from engine.service.kafka_bridge import KafkaBridge
    (d / "kafka-published.json").write_text(json.dumps(doc))
    rec = recover(str(d), repair=False)
    rt = SimpleNamespace(engine=SimpleNamespace(config=SimpleNamespace(data_dir=str(d)), matcher=rec.matcher,
                                                shard="0"),
                         stopping=asyncio.Event())
    return KafkaBridge(rt, KafkaConfig("localhost:1")), rec.matcher


def test_bridge_republishes_from_a_pruned_wal_when_the_prune_kept_it(tmp_path):
    d = tmp_path / "e"
    _run(d, 6000, 5, 30)
    ledger, trades = stream_records(d)
    ts = [json.loads(r.value) for r in trades]
    ls = [json.loads(r.value) for r in ledger]
    # Kafka acknowledged the first 80% of each stream (the snapshots kept are the last three).
    kt, kl = len(ts) * 4 // 5, len(ls) * 4 // 5
    t0, l0 = ts[kt], ls[kl]
    doc = {"trades_topic": "trades", "match_id": t0["match_id"], "cmd_seq": t0["cmd_seq"],
           "ledger_topic": "ledger", "ledger_seq": l0["ledger_seq"], "ledger_cmd_seq": l0["cmd_seq"]}
    (d / "kafka-published.json").write_text(json.dumps(doc))
    plan = prune_wal(str(d), before_seq=10**12, snapshot_retain=1)
    assert plan.applied and plan.rule.startswith("kafka")
    rec = read_retention(str(d / "wal"))
    bridge, m = _bridge(d, doc)
    n_trades, n_ledger = bridge._republish_from_wal()
    assert [e[0] for e in bridge.trades.outbox] == list(range(t0["match_id"] + 1, m.match_sequence + 1))
    assert [e[0] for e in bridge.ledger.outbox] == list(range(l0["ledger_seq"] + 1, m.accounts.ledger_seq + 1))
    assert n_trades == len(ts) - kt - 1 and n_ledger == len(ls) - kl - 1
    # The same records, byte for byte, as the bridge would have sent from the whole WAL.
    assert [e[3] for e in bridge.trades.outbox] == [r.value for r in trades[kt + 1:]]
    assert [e[3] for e in bridge.ledger.outbox] == [r.value for r in ledger[kl + 1:]]
    # Watermarks exactly at the base, their commands in the pruned range: reading starts at the
    # first event kept (trades) and at the base state (ledger), and still gives every record after them.
    base = Matcher.from_state(load_snapshot(next(s for s in list_snapshots(str(d / "snapshots"))
                                                 if s.seq == rec.base_snapshot_seq)))
    at_base = dict(doc, match_id=base.match_sequence, cmd_seq=1, ledger_seq=base.accounts.ledger_seq,
                   ledger_cmd_seq=1)
    bridge, m = _bridge(d, at_base)
    bridge._republish_from_wal()
    assert [e[3] for e in bridge.trades.outbox] == [r.value for r in trades if
                                                     json.loads(r.value)["match_id"] > base.match_sequence]
    assert [e[3] for e in bridge.ledger.outbox] == [r.value for r in ledger if
                                                     json.loads(r.value)["ledger_seq"] > base.accounts.ledger_seq]
    assert bridge.ledger.outbox and bridge.trades.outbox
    # Watermarks behind what was pruned (say the file was lost): refused, naming the range.
    bridge, _ = _bridge(d, dict(doc, match_id=0, cmd_seq=1))
    with pytest.raises(PrunedRangeError, match=f"seqs 1..{rec.pruned_before_seq - 1}"):
        bridge._republish_from_wal()
    bridge, _ = _bridge(d, dict(doc, ledger_seq=0, ledger_cmd_seq=1))
    with pytest.raises(PrunedRangeError, match="ledger"):
        bridge._republish_from_wal()
