"""`evengine settle` while its PostgreSQL server is SIGKILLed mid-stream.

A real broker (tests/kafka/conftest.py), a real PostgreSQL server
(tests/support/postgres.py) and a real `evengine settle` process. The
``ledger`` and ``trades`` topics hold exactly what the engine's Kafka bridge
publishes for a real funded engine run (tests/support/settlement.py). While
settle runs, the database server is killed with SIGKILL and restarted a
moment later: the service must wait, reconnect, and end with every balance
equal to the engine's, each trade once, `settlement verify` clean.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.consumers.settlement import verify
from engine.consumers.sql import connect
from tests.support import postgres as pg
from tests.support.kafka import produce
from tests.support.settlement import engine_balances, funded_run, store_balances, stream_records

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("down_s, idle_exit_s", [(2.0, 6), (8.0, 3)], ids=["short", "longer-than-idle-exit"])
def test_settle_waits_out_a_killed_database_and_loses_nothing(tmp_path, kafka_bootstrap, make_topics, down_s,
                                                               idle_exit_s):
    url = pg.server_url()
    if not pg.can_control_server():
        pg.missing("the PostgreSQL server was not started by this test session", "no control of the server")
    db_url = pg.fresh_database(url)
    d = tmp_path / "engine"
    funded_run(d, n=20_000, seed=5, accounts=200)
    ledger, trades = stream_records(d, 1, 1)
    t = make_topics("ledger", "trades")
    produce(kafka_bootstrap, t["ledger"], [r.value for r in ledger], key=b"0")
    produce(kafka_bootstrap, t["trades"], [r.value for r in trades], key=b"SYN")
    log = open(tmp_path / "settle.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "settle", "--kafka", kafka_bootstrap, "--db", db_url,
         "--ledger-topic", t["ledger"], "--trades-topic", t["trades"], "--max-records", "300",
         "--idle-exit-s", str(idle_exit_s), "--group", f"settle-{t['ledger']}"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        # wait until it has settled part of the stream, then kill the database under it
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                db = connect(db_url)
                n = db.query("SELECT COALESCE(MAX(last_id), 0) FROM watermarks")[0][0]
                db.close()
            except Exception:   # noqa: BLE001 - the schema may not exist yet
                n = 0
            if n > len(ledger) // 10:
                break
            time.sleep(0.05)
        assert 0 < n < len(ledger), "settle made no progress, or finished before the kill"
        pg.kill_server()
        # settle keeps polling Kafka and retrying the database; waiting for it is not idleness
        time.sleep(down_s)
        pg.restart_server()
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    assert proc.returncode == 0, (tmp_path / "settle.log").read_text()[-3000:]
    stats = json.loads(out.strip().splitlines()[-1])
    assert stats["db_reconnects"] >= 1 or "database unavailable" in (tmp_path / "settle.log").read_text()
    db = connect(db_url)
    try:
        assert store_balances(db) == engine_balances(d)
        report = verify(db, str(d))
        assert (report["differences"], report["ledger_lag"], report["trades_lag"]) == ([], 0, 0)
        rows = db.query("SELECT COUNT(*), COUNT(DISTINCT match_id) FROM settled_trades")[0]
        assert rows == (len(trades), len(trades))
    finally:
        db.close()
        pg.drop_database(db_url)
