"""Kafka test helpers: produce, read a topic to its end, run `evengine start --kafka` as a real process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable, Optional

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from engine.core import Matcher
from engine.io.messages import encode_order, order_from_command
from engine.io.synthetic import SyntheticSource

ROOT = Path(__file__).resolve().parents[2]


def synthetic_orders(n: int, seed: int, symbol: str = "SYN") -> list[bytes]:
    """``n`` seeded commands (first an ``add_symbol``) as ``orders`` values."""
    src = SyntheticSource(n, seed, symbol=symbol)
    return [encode_order(order_from_command(c)) for c in src.commands(Matcher(), None)]


def produce(boot: str, topic: str, values: Iterable[bytes], key: bytes = b"SYN",
            partition: Optional[int] = None) -> list[int]:
    """Produce ``values`` in order (idempotent producer); return their offsets."""
    async def run() -> list[int]:
        p = AIOKafkaProducer(bootstrap_servers=boot, enable_idempotence=True, linger_ms=5)
        await p.start()
        try:
            futs = [await p.send(topic, v, key=key, partition=partition) for v in values]
            return [(await f).offset for f in futs]
        finally:
            await p.stop()
    return asyncio.run(run())


async def partitions_of(boot: str, topic: str) -> list[int]:
    from aiokafka.admin import AIOKafkaAdminClient
    admin = AIOKafkaAdminClient(bootstrap_servers=boot)
    await admin.start()
    try:
        (desc,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    assert desc["error_code"] == 0, desc
    return sorted(p["partition"] for p in desc["partitions"])


def read_topic(boot: str, topic: str, timeout_s: float = 60.0) -> list:
    """Every record of every partition of ``topic``, up to its end offsets now."""
    async def run() -> list:
        c = AIOKafkaConsumer(bootstrap_servers=boot, enable_auto_commit=False, isolation_level="read_committed")
        await c.start()
        try:
            deadline = time.monotonic() + timeout_s
            tps = [TopicPartition(topic, p) for p in await partitions_of(boot, topic)]
            c.assign(tps)
            end = await c.end_offsets(tps)
            for tp in tps:
                c.seek(tp, 0)
            out = []
            while True:
                behind = [tp for tp in tps if await c.position(tp) < end[tp]]
                if not behind:
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(f"could not read {topic} to its end in {timeout_s} s")
                batch = await c.getmany(timeout_ms=500)
                for recs in batch.values():
                    out.extend(r for r in recs if r.offset < end[TopicPartition(r.topic, r.partition)])
            return out
        finally:
            await c.stop()
    return asyncio.run(run())


class EngineProcess:
    """``evengine start --kafka ...`` as a real child process. Every instance
    is remembered in :attr:`running` so a fixture can kill what a failed test
    left behind."""

    running: list = []

    def __init__(self, data_dir: Path, boot: str, orders: str, trades: str, *extra: str,
                 env: Optional[dict] = None) -> None:
        self.data_dir = data_dir
        args = [sys.executable, "-m", "engine.cli", "start", "--kafka", boot, "--orders-topic", orders,
                "--trades-topic", trades, "--data-dir", str(data_dir), "--group", f"g-{orders}",
                "--json", "--snapshot-every", "0", *extra]
        # stderr to a file: a pipe nobody reads would fill and block the engine
        self.log_path = data_dir.parent / f"{data_dir.name}-engine-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "w+")
        self.proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=self._log,
                                     text=True, env=dict(os.environ, **(env or {})))
        EngineProcess.running.append(self)
        self.ready = json.loads(self._line(120.0))
        assert self.ready.get("ready"), self.ready

    def _line(self, timeout_s: float) -> str:
        import selectors
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout_s):
            self.proc.kill()
            raise AssertionError(f"engine said nothing in {timeout_s} s: {self.stderr()[-3000:]}")
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"engine exited {self.proc.wait()}: {self.stderr()[-3000:]}")
        return line

    def stderr(self) -> str:
        return self.log_path.read_text()

    def status(self) -> dict:
        from engine.service import request
        return request(str(self.data_dir / "control.sock"), {"op": "status"}, 10.0)

    def wait_position(self, source: str, offset: int, timeout_s: float = 60.0) -> dict:
        """Poll the control socket until ``positions[source] >= offset`` and it is durable."""
        deadline = time.monotonic() + timeout_s
        while True:
            st = self.status()
            if st["positions"].get(source, -1) >= offset and st["durable_seq"] >= st["last_seq"]:
                return st
            if time.monotonic() > deadline:
                raise AssertionError(f"engine at {st['positions']} after {timeout_s} s, want {source} >= {offset}")
            time.sleep(0.05)

    def stop(self, timeout_s: float = 60.0) -> dict:
        """SIGTERM; wait; return the JSON summary."""
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=timeout_s)
        assert self.proc.returncode == 0, self.stderr()[-3000:]
        return json.loads(out.strip().splitlines()[-1])

    def kill(self) -> str:
        """SIGKILL; return what it logged."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.communicate(timeout=30)
        assert self.proc.returncode == -signal.SIGKILL
        return self.stderr()


def durable_view(data_dir: Path, seq: int, timeout_s: float = 30.0):
    """A History of ``data_dir`` that sees event ``seq``: readers show only what the
    running engine has fsynced, and a status's ``last_seq`` may be a moment ahead."""
    from recovery.time_travel import open_data_dir
    deadline = time.monotonic() + timeout_s
    while True:
        h = open_data_dir(str(data_dir))
        if h.last_seq >= seq:
            return h
        assert time.monotonic() < deadline, f"{data_dir}: durable seq {h.last_seq} never reached {seq}"
        time.sleep(0.01)


def wal_trade_messages(data_dir: Path) -> dict[int, dict]:
    """``{match_id: trades message}`` made from the WAL (what Kafka should hold)."""
    from engine.io.messages import trade_message
    from recovery.time_travel import open_data_dir
    return {t.match_id: trade_message(seq, t, source, pos)
            for seq, t, source, pos in open_data_dir(str(data_dir)).trades_with_input()}


def trade_history_equals_wal(boot: str, topic: str, db: Path, data_dir: Path, log_path: Path,
                             timeout_s: float = 120.0) -> int:
    """Run ``evengine trades-consumer`` on ``topic`` until its SQLite file holds
    as many trades as the WAL, stop it, and assert the rows equal the WAL's
    trades, each once. Returns the number of trades."""
    wal = wal_trade_messages(data_dir)
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "trades-consumer", "--kafka", boot, "--topic", topic,
                             "--group", f"th-{topic}-{time.monotonic_ns()}", "--db", str(db),
                             "--data-dir", str(data_dir)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=open(log_path, "w"))
    try:
        deadline = time.monotonic() + timeout_s
        while stored_trades(db) < len(wal):
            assert time.monotonic() < deadline, f"consumer stored {stored_trades(db)} of {len(wal)} trades"
            assert proc.poll() is None, log_path.read_text()[-3000:]
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode == 0, log_path.read_text()[-3000:]
    assert_trade_history_equals_wal(db, data_dir)
    return len(wal)


def stored_trades(db: Path) -> int:
    """Rows in the trade-history database (0 before it exists)."""
    import sqlite3
    if not db.exists():
        return 0
    with sqlite3.connect(db) as con:
        try:
            return con.execute("SELECT count(*) FROM trades").fetchone()[0]
        except sqlite3.OperationalError:
            return 0


def assert_trade_history_equals_wal(db: Path, data_dir: Path) -> None:
    """The trade-history rows are the WAL's trades, each once, every field equal."""
    import sqlite3
    wal = wal_trade_messages(data_dir)
    with sqlite3.connect(db) as con:
        con.row_factory = sqlite3.Row
        rows = {r["match_id"]: dict(r) for r in con.execute("SELECT * FROM trades")}
    assert sorted(rows) == sorted(wal)
    for match_id, msg in wal.items():
        assert rows[match_id] == {**{k: v for k, v in msg.items() if k != "input"},
                                  "input_source": msg["input"]["source"], "input_offset": msg["input"]["offset"]}
