"""`evengine start --kafka` on a real, full tmpfs: it stops fetching (the
records wait in Kafka), says why on its status, and once there is space goes
on; every record becomes exactly one command and every trade is published."""

from __future__ import annotations

import time

import pytest

from engine.io.messages import decode_trade
from recovery.time_travel import open_data_dir
from tests.support.crash import eventually
from tests.support.kafka import EngineProcess, produce, read_topic, synthetic_orders, wal_trade_messages
from tests.support.tmpfs import Ballast, tmpfs

pytestmark = pytest.mark.kafka


def test_a_kafka_engine_on_a_full_disk_stops_fetching_and_goes_on_with_space(tmp_path, kafka_bootstrap,
                                                                             make_topics):
    t = make_topics("orders", "trades")
    values = synthetic_orders(6000, seed=9)
    source = f"kafka:{t['orders']}:0"
    with tmpfs(tmp_path / "mnt", "16m") as data:   # the mount is the data directory; the engine log is outside
        first = produce(kafka_bootstrap, t["orders"], values[:1000])
        eng = EngineProcess(data, kafka_bootstrap, t["orders"], t["trades"])
        try:
            eng.wait_position(source, first[-1])
            ballast = Ballast(data)
            ballast.fill()
            rest = produce(kafka_bootstrap, t["orders"], values[1000:])
            st = eventually(lambda: (s := eng.status())["degraded"] and s, timeout=60, what="degraded")
            assert "No space left on device" in st["degraded"] and "free space" in st["degraded"]
            time.sleep(1.0)
            later = eng.status()
            assert later["positions"][source] == st["positions"][source] < rest[-1]   # fetching stopped
            assert later["durable_seq"] < later["last_seq"]                          # the frame not written

            ballast.free(-1)
            st = eng.wait_position(source, rest[-1], timeout_s=120)
            assert st["degraded"] is None
            summary = eng.stop()
        finally:
            if eng.proc.poll() is None:
                eng.kill()
        log = eng.stderr()
        assert "Traceback" not in log
        assert log.count("WAL write failed: No space left on device") == 1, log[-3000:]
        cmds = [obj for _, obj in open_data_dir(str(data)).events() if obj[0] < 64]
        assert [c.source_pos for c in cmds] == first + rest          # each record once, in order
        assert summary["kafka"]["orders"] == len(values)
        wal = wal_trade_messages(data)
        seen = {}
        for r in read_topic(kafka_bootstrap, t["trades"]):
            msg = decode_trade(r.value)
            assert wal.get(msg["match_id"]) == msg
            seen[msg["match_id"]] = msg
        assert sorted(seen) == sorted(wal) == list(range(1, len(wal) + 1))
