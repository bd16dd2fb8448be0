"""Real engine runs that leave trades in a WAL, for the trade-history tests."""

from __future__ import annotations

from pathlib import Path

from engine.io.messages import trade_message
from engine.io.synthetic import SyntheticSource
from engine.service.engine import Engine, EngineConfig
from recovery.time_travel import open_data_dir


def run_engine(data_dir: Path, plan: list) -> None:
    """One engine run per ``(symbol, seed, n)`` of ``plan``, all on ``data_dir``
    (a resumed synthetic source carries on where its last run stopped)."""
    for symbol, seed, n in plan:
        engine = Engine(EngineConfig(data_dir=str(data_dir), snapshot_every=0, control_socket=False,
                                     pin_cpus=False, pause_cyclic_gc=False))
        engine.open()
        engine.run(SyntheticSource(n, seed, symbol=symbol))


def wal_trades(data_dir: Path) -> list[tuple]:
    """``[(seq, Trade, source, source_pos), ...]``: every trade of the WAL and
    the input position of its command, in WAL order."""
    return list(open_data_dir(str(data_dir)).trades_with_input())


def wal_messages(data_dir: Path) -> list[dict]:
    """Every trade of the WAL as its ``trades`` message, in WAL order."""
    return [trade_message(*t) for t in wal_trades(data_dir)]
