"""The whole flow of seed 000, with real processes and a real broker:
HTTP orders -> gateway -> `orders` -> engine -> `trades` -> trade-history consumer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx

from engine.core import Matcher
from engine.io.messages import order_from_command
from engine.io.synthetic import SyntheticSource
from recovery.time_travel import open_data_dir
from tests.support.kafka import (ROOT, EngineProcess, assert_trade_history_equals_wal, stored_trades,
                                 wal_trade_messages)


def _start(args: list[str], log_path) -> tuple[subprocess.Popen, dict]:
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=log, text=True)
    line = proc.stdout.readline()
    assert line, f"{args[0]} exited {proc.wait()}: {open(log_path).read()[-3000:]}"
    return proc, json.loads(line)


def _http_requests(n: int, seed: int, symbol: str) -> list[tuple[str, str, dict | None]]:
    """A seeded flow of one symbol as gateway requests ``(method, path, body)``."""
    out = []
    for cmd in SyntheticSource(n, seed, symbol=symbol).commands(Matcher(), None):
        order = order_from_command(cmd)
        kind = order.pop("type")
        order.pop("ts_ns", None)
        if kind == "add_symbol":
            out.append(("POST", "/symbols", {"symbol": symbol, "tick_size": order["tick_size"]}))
        elif kind == "place":
            out.append(("POST", "/orders", order))
        elif kind == "cancel":
            out.append(("DELETE", f"/orders/{symbol}/{order['order_id']}", None))
        else:
            out.append(("PATCH", f"/orders/{symbol}/{order['order_id']}", {"price": order["price"], "qty": order["qty"]}))
    return out


def test_http_to_kafka_to_engine_to_trade_history(tmp_path, kafka_bootstrap, make_topics):
    t = make_topics("orders", "trades", partitions=2)
    data, db = tmp_path / "engine", tmp_path / "trades.sqlite"
    engine = EngineProcess(data, kafka_bootstrap, t["orders"], t["trades"])
    gateway, ready = _start(["gateway", "--kafka", kafka_bootstrap, "--orders-topic", t["orders"],
                             "--http", "127.0.0.1:0"], tmp_path / "gateway.log")
    consumer = subprocess.Popen([sys.executable, "-m", "engine.cli", "trades-consumer", "--kafka", kafka_bootstrap,
                                 "--topic", t["trades"], "--group", f"th-{t['trades']}", "--db", str(db),
                                 "--data-dir", str(data)], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=open(tmp_path / "consumer.log", "w"), text=True)
    try:
        # two symbols, interleaved; each symbol's requests in order (one key, one partition)
        flows = [_http_requests(1500, 31, "AAA"), _http_requests(1500, 32, "BBB")]
        last_offset: dict[int, int] = {}
        statuses: dict[int, int] = {}
        with httpx.Client(base_url=f"http://127.0.0.1:{ready['http_port']}", timeout=30) as http:
            for i in range(max(map(len, flows))):
                for flow in flows:
                    if i < len(flow):
                        method, path, body = flow[i]
                        r = http.request(method, path, json=body)
                        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                        if r.status_code == 202:
                            ans = r.json()
                            assert ans["status"] == "queued" and ans["topic"] == t["orders"]
                            last_offset[ans["partition"]] = max(ans["offset"], last_offset.get(ans["partition"], -1))
                        else:
                            assert r.status_code == 422, r.text   # refused at the door, never sent
        assert statuses.get(202, 0) > 2500
        for partition, offset in last_offset.items():
            engine.wait_position(f"kafka:{t['orders']}:{partition}", offset, timeout_s=120)
        summary = engine.stop()
        assert summary["trades"] > 200
        wal = wal_trade_messages(data)
        assert len(wal) == summary["trades"]

        deadline = time.monotonic() + 120
        while stored_trades(db) < len(wal):
            assert time.monotonic() < deadline, f"consumer stored {stored_trades(db)} of {len(wal)} trades"
            assert consumer.poll() is None, open(tmp_path / "consumer.log").read()[-3000:]
            time.sleep(0.1)
        assert_trade_history_equals_wal(db, data)
        # every command the engine logged came from the topic, with its offset
        cmds = [obj for _, obj in open_data_dir(str(data)).events() if obj[0] < 64]
        assert len(cmds) == statuses[202]
        assert all(c.source.startswith(f"kafka:{t['orders']}:") for c in cmds)
    finally:
        for proc in (gateway, consumer):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
    assert gateway.returncode == 0 and consumer.returncode == 0
    assert os.path.getsize(db) > 0
