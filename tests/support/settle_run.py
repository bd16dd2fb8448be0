"""`evengine settle` as real processes against a real broker, and what the
settlement tests compare its database with (tests/kafka/test_settle.py).

Everything goes through the CLI as a user would run it
(``python -m engine.cli settle|settlement verify|balances`` from the
checkout, so the code under test is this clone's whatever ``pip install -e``
points at); the database is read with :func:`engine.consumers.sql.connect`
(SQLite file or PostgreSQL server alike).
"""

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

from engine.consumers.sql import connect
from tests.support.kafka import ROOT, read_topic

SETTLE_TABLES = ("balances", "postings", "settled_trades", "symbols", "consumer_positions", "watermarks", "gaps",
                 "assets")


def cli(*args: str, timeout_s: float = 180.0) -> subprocess.CompletedProcess:
    """``python -m engine.cli ARGS`` from the checkout, output captured."""
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout_s, stdin=subprocess.DEVNULL)


class SettleProcess:
    """One ``evengine settle`` child process; stderr goes to its own log file
    (a pipe nobody reads would fill and block it), stdout holds the JSON
    summary it prints when it stops. Every instance is remembered in
    :attr:`running` so a fixture can kill what a failed test left behind."""

    running: list = []

    def __init__(self, boot: str, db_url: str, topics: dict, log_dir: Path, *, data_dir: Optional[Path] = None,
                 max_records: Optional[int] = None, idle_exit_s: Optional[float] = None,
                 group: Optional[str] = None, env: Optional[dict] = None, extra: Iterable[str] = ()) -> None:
        args = [sys.executable, "-m", "engine.cli", "settle", "--kafka", boot, "--db", db_url,
                "--ledger-topic", topics["ledger"], "--trades-topic", topics["trades"],
                "--group", group or f"settle-{topics['ledger']}"]
        if data_dir is not None:
            args += ["--data-dir", str(data_dir)]
        if max_records is not None:
            args += ["--max-records", str(max_records)]
        if idle_exit_s is not None:
            args += ["--idle-exit-s", str(idle_exit_s)]
        args += list(extra)
        self.args = args
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"settle-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "w")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=self._log, text=True,
                                     stdin=subprocess.DEVNULL, env=dict(os.environ, **(env or {})))
        SettleProcess.running.append(self)
        self.out = ""

    def stderr(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout_s: float = 240.0) -> int:
        """Wait for it to exit by itself; return its exit code (``-9``: SIGKILLed)."""
        try:
            self.out, _ = self.proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate(timeout=30)
            raise AssertionError(f"settle still running after {timeout_s} s: {self.stderr()[-3000:]}")
        self._log.close()
        return self.proc.returncode

    def kill(self) -> int:
        """SIGKILL from outside; return the exit code (``-9`` unless it had exited already)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        return self.wait(60)

    def stop(self, timeout_s: float = 120.0) -> int:
        """SIGTERM (a clean stop after the batch in hand); return the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout_s)

    def summary(self) -> dict:
        """The one-line JSON summary it printed when it stopped."""
        lines = [line for line in self.out.strip().splitlines() if line.startswith("{")]
        assert lines, f"settle printed no summary (exit {self.proc.returncode}): {self.out[-1000:]!r} " \
                      f"{self.stderr()[-3000:]}"
        return json.loads(lines[-1])


def settle_once(boot: str, db_url: str, topics: dict, log_dir: Path, *, expect_rc: int = 0,
                idle_exit_s: float = 3.0, **kw) -> tuple[dict, str]:
    """Run settle until it stops by itself (idle); assert its exit code;
    return its summary (``{}`` when it printed none) and its log."""
    p = SettleProcess(boot, db_url, topics, log_dir, idle_exit_s=idle_exit_s, **kw)
    rc = p.wait()
    log = p.stderr()
    assert rc == expect_rc, f"settle exited {rc}, want {expect_rc}: {log[-4000:]}"
    return (p.summary() if rc >= 0 and p.out.strip() else {}), log


def verify(db_url: str, data_dir: Path) -> tuple[int, dict]:
    """``evengine settlement verify --json``: its exit code and report."""
    out = cli("settlement", "verify", "--db", db_url, "--data-dir", str(data_dir), "--json")
    assert out.stdout.strip(), f"verify printed nothing (exit {out.returncode}): {out.stderr[-3000:]}"
    return out.returncode, json.loads(out.stdout.strip().splitlines()[-1])


def assert_verified(db_url: str, data_dir: Path, *, ledger_lag: int = 0, trades_lag: int = 0) -> dict:
    """verify exits 0 with no difference, the supply equal, and the lags given."""
    rc, report = verify(db_url, data_dir)
    assert report["differences"] == [] and report["supply_differences"] == {}, report
    assert rc == 0, report
    assert (report["ledger_lag"], report["trades_lag"]) == (ledger_lag, trades_lag), report
    return report


def engine_report(data_dir: Path) -> dict:
    """``evengine balances --json`` on the engine's data directory."""
    out = cli("balances", "--json", "--data-dir", str(data_dir))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return json.loads(out.stdout)


def nonzero(balances: dict) -> dict:
    return {k: v for k, v in balances.items() if v != (0, 0)}


# ----------------------------------------------------------- the database
class Db:
    """Read access to a settlement database (SQLite or PostgreSQL)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, sql: str, params: tuple = ()) -> list:
        db = connect(self.url)
        try:
            return db.query(sql, params)
        finally:
            db.close()

    def exists(self) -> bool:
        try:
            self.query("SELECT COUNT(*) FROM watermarks")
            return True
        except Exception:   # noqa: BLE001 - no schema yet (sqlite3/psycopg errors alike)
            return False

    def balances(self) -> dict:
        """``{(account, asset): (available, held)}``."""
        return {(a, s): (int(av), int(h)) for a, s, av, h in
                self.query("SELECT account, asset, available, held FROM balances")}

    def positions(self) -> dict:
        return {(t, p): int(o) for t, p, o in self.query("SELECT topic, partition_id, next_offset FROM "
                                                          "consumer_positions")}

    def watermarks(self) -> dict:
        return {s: int(i) for s, i in self.query("SELECT stream, last_id FROM watermarks")}

    def ledger_seq(self) -> int:
        return sum(v for k, v in self.watermarks().items() if k.startswith("ledger"))

    def trades(self) -> int:
        return int(self.query("SELECT COUNT(*) FROM settled_trades")[0][0])

    def gaps(self) -> list:
        """``[(stream, first_id, last_id, filled, how)]`` ordered."""
        return sorted((s, int(f), int(lst), fn is not None, how) for s, f, lst, fn, how in
                      self.query("SELECT stream, first_id, last_id, filled_ns, how FROM gaps"))

    def fingerprint(self) -> tuple:
        """A cheap summary of the whole state: equal fingerprints, equal book."""
        q = self.query
        return (sorted(self.watermarks().items()), sorted(self.positions().items()),
                tuple(q("SELECT COUNT(*), COALESCE(SUM(available_delta + held_delta), 0), COALESCE(SUM(ledger_seq), 0) "
                        "FROM postings")[0]),
                tuple(q("SELECT COUNT(*), COALESCE(SUM(match_id), 0), COALESCE(SUM(qty), 0) FROM settled_trades")[0]),
                tuple(q("SELECT COUNT(*), COALESCE(SUM(available), 0), COALESCE(SUM(held), 0) FROM balances")[0]),
                self.gaps())

    def dump(self) -> dict:
        """Every row of every settlement table, sorted (for "unchanged" checks)."""
        return {t: sorted((tuple(r) for r in self.query(f"SELECT * FROM {t}")), key=repr) for t in SETTLE_TABLES}


def group_offsets(boot: str, group: str, positions: dict) -> dict:
    """The consumer group's committed offset of each ``(topic, partition)`` in
    ``positions`` (``None`` where nothing is committed)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def run() -> dict:
        c = AIOKafkaConsumer(bootstrap_servers=boot, group_id=group, enable_auto_commit=False)
        await c.start()
        try:
            return {k: await c.committed(TopicPartition(*k)) for k in positions}
        finally:
            await c.stop()
    return asyncio.run(run())


def topic_end_offsets(boot: str, topic: str) -> dict:
    """``{(topic, partition): end offset}`` now."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from tests.support.kafka import partitions_of

    async def run() -> dict:
        c = AIOKafkaConsumer(bootstrap_servers=boot, enable_auto_commit=False)
        await c.start()
        try:
            tps = [TopicPartition(topic, p) for p in await partitions_of(boot, topic)]
            end = await c.end_offsets(tps)
            return {(tp.topic, tp.partition): o for tp, o in end.items()}
        finally:
            await c.stop()
    return asyncio.run(run())


def produce_records(boot: str, topic: str, records: Iterable, key_of=None) -> list[tuple[int, int]]:
    """Produce ``(partition, key, value)`` triples in order, each to its
    partition (idempotent producer); return their ``(partition, offset)``."""
    from aiokafka import AIOKafkaProducer

    async def run() -> list:
        p = AIOKafkaProducer(bootstrap_servers=boot, enable_idempotence=True, linger_ms=5)
        await p.start()
        try:
            futs = [await p.send(topic, value, key=key, partition=part) for part, key, value in records]
            return [((m := await f).partition, m.offset) for f in futs]
        finally:
            await p.stop()
    return asyncio.run(run())


def topic_repeats(boot: str, topics: dict) -> tuple[int, int]:
    """How many records of the ledger and of the trades topic repeat an
    earlier one (same ``(shard, ledger_seq)``; same ``(symbol, symbol_seq)``),
    asserting every copy is byte for byte the first."""
    from engine.io.messages import decode_ledger, decode_trade
    out = []
    for name, decode, key in (("ledger", decode_ledger, lambda m: (m["shard"], m["ledger_seq"])),
                              ("trades", decode_trade, lambda m: (m["symbol"], m["symbol_seq"]))):
        first: dict = {}
        repeats = 0
        for r in read_topic(boot, topics[name]):
            k = key(decode(r.value))
            if k in first:
                assert first[k] == r.value, (name, k, first[k], r.value)
                repeats += 1
            else:
                first[k] = r.value
        out.append(repeats)
    return out[0], out[1]
