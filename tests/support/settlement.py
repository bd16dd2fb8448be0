"""Funded engine runs and the ``ledger``/``trades`` records they publish, for
the settlement tests (no broker: the records are what the Kafka bridge sends,
built by the same encoders from the same WAL)."""

from __future__ import annotations

import zlib
from pathlib import Path

from engine.consumers.settlement import Record
from engine.io.messages import encode_ledger, encode_trade
from engine.io.shard import read_shard
from engine.io.synthetic import SyntheticSource
from engine.service.engine import Engine, EngineConfig
from recovery.time_travel import open_data_dir

LEDGER, TRADES = "ledger", "trades"


def funded_run(data_dir: Path, n: int = 3000, seed: int = 7, accounts: int = 30, symbol: str = "SYN",
               shard: str = None) -> None:
    """A durable engine run of the funded synthetic flow (risk on)."""
    engine = Engine(EngineConfig(data_dir=str(data_dir), snapshot_every=0, control_socket=False,
                                 pin_cpus=False, pause_cyclic_gc=False, shard=shard))
    engine.open()
    engine.run(SyntheticSource(n, seed, symbol=symbol, accounts=accounts))


def _partition(key: bytes, partitions: int) -> int:
    return zlib.crc32(key) % partitions


def stream_records(data_dir: Path, ledger_partitions: int = 1, trade_partitions: int = 1,
                   offsets: dict = None) -> tuple[list, list]:
    """``(ledger, trades)``: every record the bridge would publish for the
    run in ``data_dir``, keyed as it keys them (account; symbol) onto
    partitions, offsets counted per partition, in publishing order."""
    h = open_data_dir(str(data_dir))
    shard = read_shard(str(data_dir))
    offsets = {} if offsets is None else offsets     # share it to put two engines on one topic

    def record(topic: str, key: bytes, parts: int, value: bytes) -> Record:
        p = _partition(key, parts)
        off = offsets.get((topic, p), 0)
        offsets[(topic, p)] = off + 1
        return Record(topic, p, off, value)

    ledger = [record(LEDGER, str(ev[3]).encode(), ledger_partitions, encode_ledger(ev, ts, shard))
              for _, ts, ev in h.balance_changes(1)]
    trades = [record(TRADES, t.symbol.encode(), trade_partitions, encode_trade(seq, t, src, pos, shard))
              for seq, t, src, pos in h.trades_with_input()]
    return ledger, trades


def engine_balances(data_dir: Path) -> dict:
    """``{(shard, account, asset): (available, held)}`` of the engine at the end of its WAL."""
    h = open_data_dir(str(data_dir))
    shard = read_shard(str(data_dir))
    report = h.balance_report(h.last_seq)
    return {(shard, r["account"], r["asset"]): (r["available"], r["held"]) for r in report["balances"]}


def store_balances(db, shard=None) -> dict:
    """The same shape from a settlement database (one shard's, when given)."""
    return {(sh, a, s): (av, h) for sh, a, s, av, h in db.query(
        "SELECT shard, account, asset, available, held FROM balances") if shard is None or sh == shard}
