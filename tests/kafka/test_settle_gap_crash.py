"""`evengine settle` killed while it fills a gap from the engine's WAL.

The ``ledger`` and ``trades`` topics hold what the Kafka bridge publishes for
a real funded engine run, with records left out (a ledger entry, a run of
trades): real gaps. A first `evengine settle --data-dir` is SIGKILLed by its
``settle-during-gap-fill`` hook, inside the transaction that derives the
missing records from the WAL; a second run, unhooked, must end exact: every
balance equal to the engine's, every trade once, `settlement verify` clean,
the gaps recorded as filled from the WAL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from engine.consumers.settlement import verify
from engine.consumers.sql import connect
from tests.support.kafka import produce
from tests.support.settlement import engine_balances, funded_run, store_balances, stream_records

ROOT = Path(__file__).resolve().parents[2]


def settle(boot: str, db: str, topics: dict, data_dir: Path, log: Path, **env: str) -> subprocess.CompletedProcess:
    with open(log, "a") as err:
        return subprocess.run(
            [sys.executable, "-m", "engine.cli", "settle", "--kafka", boot, "--db", db, "--data-dir", str(data_dir),
             "--ledger-topic", topics["ledger"], "--trades-topic", topics["trades"], "--max-records", "500",
             "--idle-exit-s", "4", "--group", f"g-{topics['ledger']}"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True, timeout=240, env={**os.environ, **env})


def test_a_kill_while_a_gap_is_filled_from_the_wal_leaves_nothing_half_done(tmp_path, kafka_bootstrap, make_topics):
    d = tmp_path / "engine"
    funded_run(d, n=8000, seed=9, accounts=60)
    ledger, trades = stream_records(d, 1, 1)
    t = make_topics("ledger", "trades")
    lost_ledger = {len(ledger) // 2}
    lost_trades = set(range(len(trades) // 3, len(trades) // 3 + 5))
    produce(kafka_bootstrap, t["ledger"], [r.value for i, r in enumerate(ledger) if i not in lost_ledger], key=b"0")
    produce(kafka_bootstrap, t["trades"], [r.value for i, r in enumerate(trades) if i not in lost_trades],
            key=b"SYN")
    db = f"sqlite:///{tmp_path / 'settle.db'}"
    log = tmp_path / "settle.log"
    first = settle(kafka_bootstrap, db, t, d, log, EVENGINE_CRASH_AT="settle-during-gap-fill")
    assert first.returncode == -signal.SIGKILL, log.read_text()[-2000:]
    store = connect(db)
    try:
        settled = store.query("SELECT COALESCE(MAX(last_id), 0) FROM watermarks")[0][0]
        filled = store.query("SELECT COUNT(*) FROM gaps WHERE filled_ns IS NOT NULL")[0][0]
    finally:
        store.close()
    assert filled == 0 and settled <= max(lost_ledger)    # the killed transaction left no trace of the fill
    second = settle(kafka_bootstrap, db, t, d, log)
    assert second.returncode == 0, log.read_text()[-2000:]
    store = connect(db)
    try:
        assert store_balances(store) == engine_balances(d)
        report = verify(store, str(d))
        assert (report["differences"], report["ledger_lag"], report["trades_lag"]) == ([], 0, 0)
        gaps = store.query("SELECT stream, how FROM gaps ORDER BY stream")
        assert gaps == [("ledger:0", "wal"), ("trades:SYN", "wal")]
        assert store.query("SELECT COUNT(*), COUNT(DISTINCT match_id) FROM settled_trades")[0] == \
            (len(trades), len(trades))
    finally:
        store.close()
