"""Two engine shards on one `trades` and one `ledger` topic, settled by one `evengine settle`.

Real processes all along: a real broker, two `evengine start --kafka
--shard` engines, each owning one partition of `orders` (its own symbol,
its own funded accounts), publishing into the same `trades` and `ledger`
topics, so their `match_id` and `ledger_seq` repeat each other's; then one
`evengine settle --data-dir A --data-dir B`. Each shard's balances must equal
its engine's, every trade be settled once under `(shard, match_id)`, and
`settlement verify` over both directories find no difference.
"""

from __future__ import annotations

import json
import subprocess
import sys

from engine.consumers.settlement import verify
from engine.consumers.sql import connect
from engine.core import Matcher
from engine.io.messages import encode_order, order_from_command
from engine.io.synthetic import SyntheticSource
from recovery.time_travel import open_data_dir
from tests.support.kafka import ROOT, EngineProcess, produce
from tests.support.settlement import engine_balances, store_balances


def orders(n: int, seed: int, symbol: str, accounts: int) -> list[bytes]:
    return [encode_order(order_from_command(c))
            for c in SyntheticSource(n, seed, symbol=symbol, accounts=accounts).commands(Matcher(), None)]


def test_two_shards_settle_into_one_book_of_record(tmp_path, kafka_bootstrap, make_topics):
    t = make_topics("orders", partitions=2)
    t.update(make_topics("trades", "ledger"))
    flows = {"a": orders(6000, 1, "AAA", 80), "b": orders(6000, 2, "BBB", 80)}
    last = {}
    for part, shard in enumerate(("a", "b")):
        offsets = produce(kafka_bootstrap, t["orders"], flows[shard], key=shard.encode(), partition=part)
        last[shard] = offsets[-1]
    dirs = {s: tmp_path / s for s in ("a", "b")}
    engines = {s: EngineProcess(dirs[s], kafka_bootstrap, t["orders"], t["trades"], "--ledger-topic", t["ledger"],
                                "--partitions", str(p), "--shard", s)
               for p, s in enumerate(("a", "b"))}
    for p, (s, eng) in enumerate(engines.items()):
        eng.wait_position(f"kafka:{t['orders']}:{p}", last[s], timeout_s=180)
    for eng in engines.values():
        eng.stop()
    trades = {s: list(open_data_dir(str(d)).trades_with_input()) for s, d in dirs.items()}
    ids = {s: {tr.match_id for _, tr, _, _ in v} for s, v in trades.items()}
    assert len(ids["a"]) > 100 and ids["a"] & ids["b"]          # the shards' match_ids repeat each other's
    db = f"sqlite:///{tmp_path / 'settle.db'}"
    proc = subprocess.run([sys.executable, "-m", "engine.cli", "settle", "--kafka", kafka_bootstrap, "--db", db,
                           "--ledger-topic", t["ledger"], "--trades-topic", t["trades"], "--data-dir", str(dirs["a"]),
                           "--data-dir", str(dirs["b"]), "--idle-exit-s", "5", "--group", f"g-{t['ledger']}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    assert stats["gaps"] == 0 and stats["malformed"] == 0
    store = connect(db)
    try:
        for s, d in dirs.items():
            assert store_balances(store, s) == engine_balances(d), s
        counted = dict(store.query("SELECT shard, COUNT(*) FROM settled_trades GROUP BY shard"))
        assert counted == {s: len(v) for s, v in trades.items()}
        report = verify(store, [str(dirs["a"]), str(dirs["b"])])
        assert (report["differences"], report["ledger_lag"], report["trades_lag"]) == ([], 0, 0)
        assert sorted(report["shards"]) == ["a", "b"]
    finally:
        store.close()
    out = subprocess.run([sys.executable, "-m", "engine.cli", "settlement", "verify", "--db", db, "--data-dir",
                          str(dirs["a"]), "--data-dir", str(dirs["b"]), "--json"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0 and json.loads(out.stdout)["differences"] == [], out.stderr[-2000:]
