"""History.trades_with_input: each WAL trade with the input position of its command."""

from __future__ import annotations

from engine.core.commands import AddSymbol, PlaceOrder
from engine.service.engine import Engine, EngineConfig
from recovery.time_travel import open_data_dir


def test_each_trade_carries_its_commands_source_even_when_the_range_starts_after_it(tmp_path):
    engine = Engine(EngineConfig(data_dir=str(tmp_path), snapshot_every=0, control_socket=False,
                                 pin_cpus=False, pause_cyclic_gc=False))
    engine.open()
    try:
        engine.submit(AddSymbol.new("X"))
        for i in range(1, 4):   # three resting asks from "a"
            engine.submit(PlaceOrder.new("X", i, 2, 100 + i, 5, source="a", source_pos=i))
        engine.submit(PlaceOrder.new("X", 9, 1, 103, 12, source="b", source_pos=77))   # sweeps them: 3 trades
        engine.submit(PlaceOrder.new("X", 10, 1, 90, 1))                              # no source, no trade
        engine.end_batch()
    finally:
        engine.close()
    history = open_data_dir(str(tmp_path))
    got = list(history.trades_with_input())
    assert [(seq, t.match_id, src, pos) for seq, t, src, pos in got] == [
        (6, 1, "b", 77), (7, 2, "b", 77), (8, 3, "b", 77)]
    # starting between the command (seq 5) and its trades: the command is looked up
    assert [(t.match_id, src, pos) for _, t, src, pos in history.trades_with_input(7)] == [(2, "b", 77), (3, "b", 77)]
