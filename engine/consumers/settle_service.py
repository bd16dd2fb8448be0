"""``evengine settle``: the Kafka side of settlement.

Reads ``ledger`` and ``trades`` with a consumer that *assigns* itself every
partition of both topics (no group rebalancing: the positions live in the
database, :mod:`engine.consumers.settlement`) and, per batch::

    getmany -> SettlementStore.apply (one database transaction, offsets inside)
            -> consumer.commit(offsets)     # the group's offsets: lag monitoring only

On start, and after any failed transaction, it seeks every partition to the
offset stored in the database (the beginning when none). A database that
goes away (PostgreSQL restarted, the network) is waited for: the service
reconnects with a capped backoff and goes on from the database's offsets; a
contradiction in the streams (:class:`~engine.consumers.settlement.SettlementError`)
stops it with the error named and exit code 3.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from .settlement import Record, SettleCounts, SettlementError, SettlementStore
from .sql import TransientDatabaseError, connect, describe_url

__all__ = ["SettleConfig", "SettleStats", "SettleService", "run_settle", "CRASH_ENV", "CRASH_POINTS"]

log = logging.getLogger("evengine.settle")

CRASH_ENV = "EVENGINE_CRASH_AT"
CRASH_AFTER_ENV = "EVENGINE_CRASH_AFTER_BATCHES"
CRASH_POINTS = ("settle-after-db-commit", "settle-before-db-commit")
"""Test hooks: with ``EVENGINE_CRASH_AT`` one of these, the service SIGKILLs
itself at batch N (``EVENGINE_CRASH_AFTER_BATCHES``, default 1): right after
the database commit and before the Kafka commit, or inside the transaction
before it commits."""


@dataclass
class SettleConfig:
    """Settings of one :class:`SettleService`.

    Attributes:
        bootstrap_servers: Kafka, ``host:port[,...]``.
        db_url: ``sqlite:///PATH`` or ``postgresql://...`` (:func:`engine.consumers.sql.connect`).
        data_dir: the engine's data directory, to fill gaps from its WAL.
        ledger_topic / trades_topic: the topics.
        group: the consumer group the offsets are committed to (for lag monitoring).
        max_records: most records per batch (one transaction).
        poll_timeout_ms: how long one poll waits (also the longest a stop waits).
        idle_exit_s: stop after this long without a record (``None``: run until a signal).
    """

    bootstrap_servers: str
    db_url: str = "sqlite:///data/settlement.sqlite"
    data_dir: Optional[str] = None
    ledger_topic: str = "ledger"
    trades_topic: str = "trades"
    group: str = "settlement"
    max_records: int = 5000
    poll_timeout_ms: int = 200
    idle_exit_s: Optional[float] = None


@dataclass
class SettleStats:
    batches: int = 0
    records: int = 0
    db_reconnects: int = 0
    commit_failures: int = 0
    counts: SettleCounts = field(default_factory=SettleCounts)
    ledger_seq: int = 0
    stopped_by: str = ""
    error: Optional[str] = None

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(d.pop("counts"))
        return d


class SettleService:
    """One settlement consumer; :meth:`run` until stopped."""

    def __init__(self, config: SettleConfig) -> None:
        self.config = config
        self.stats = SettleStats()
        self._stop: Optional[asyncio.Event] = None
        self._stop_reason: Optional[str] = None
        crash = os.environ.get(CRASH_ENV)
        self._crash = crash if crash in CRASH_POINTS else None
        self._crash_after = int(os.environ.get(CRASH_AFTER_ENV, "1"))

    def request_stop(self, reason: str = "stop requested") -> None:
        self._stop_reason = self._stop_reason or reason
        if self._stop is not None:
            self._stop.set()

    # ---------------------------------------------------------------- store
    async def _open_store(self) -> SettlementStore:
        """Connect (waiting for the database while it is away) and load."""
        delay = 0.2
        while True:
            try:
                db = await asyncio.to_thread(connect, self.config.db_url)
                return await asyncio.to_thread(SettlementStore, db, self.config.ledger_topic,
                                               self.config.trades_topic, self.config.data_dir)
            except TransientDatabaseError as exc:
                if self._stop.is_set():
                    raise
                log.warning("database unavailable (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    # ---------------------------------------------------------------- kafka
    async def _assign(self, consumer: Any, store: SettlementStore) -> list:
        """Assign every partition of both topics (waiting for them to exist)
        and seek each to the database's offset."""
        from aiokafka import TopicPartition
        cfg = self.config
        while True:
            await consumer.topics()          # a metadata request: topics created since are seen
            tps = [TopicPartition(t, p) for t in (cfg.ledger_topic, cfg.trades_topic)
                   for p in sorted(consumer.partitions_for_topic(t) or ())]
            have = {tp.topic for tp in tps}
            if cfg.ledger_topic in have and cfg.trades_topic in have:
                break
            if self._stop.is_set():
                return []
            await asyncio.sleep(0.5)
        consumer.assign(tps)
        self._seek(consumer, store, tps)
        return tps

    @staticmethod
    def _seek(consumer: Any, store: SettlementStore, tps: list) -> None:
        for tp in tps:
            pos = store.positions.get((tp.topic, tp.partition))
            if pos is None:
                consumer.seek(tp, 0)
            else:
                consumer.seek(tp, pos)

    # ------------------------------------------------------------------ run
    async def run(self, install_signal_handlers: bool = True) -> SettleStats:
        """Consume until stopped; return the stats (``error`` set when a
        :class:`SettlementError` stopped it)."""
        from aiokafka import AIOKafkaConsumer, TopicPartition
        from aiokafka.errors import KafkaError
        from aiokafka.structs import OffsetAndMetadata

        cfg = self.config
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if self._stop_reason is not None:
            self._stop.set()
        if install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.request_stop, sig.name)
        store = await self._open_store()
        consumer = AIOKafkaConsumer(bootstrap_servers=cfg.bootstrap_servers, group_id=cfg.group,
                                    enable_auto_commit=False, auto_offset_reset="earliest",
                                    isolation_level="read_committed", client_id=f"evengine-settle-{os.getpid()}")
        last_record = last_retry = time.monotonic()
        try:
            await consumer.start()
            tps = await self._assign(consumer, store)
            log.info("settling %s and %s into %s from ledger_seq %d (%d partitions)", cfg.ledger_topic,
                     cfg.trades_topic, describe_url(cfg.db_url), store.ledger_seq, len(tps))
            while not self._stop.is_set():
                batches = await consumer.getmany(timeout_ms=cfg.poll_timeout_ms, max_records=cfg.max_records)
                records = [Record(r.topic, r.partition, r.offset, r.value)
                           for tp, rs in sorted(batches.items(), key=lambda kv: (kv[0].topic, kv[0].partition))
                           for r in rs]
                if not records:
                    if cfg.idle_exit_s is not None and time.monotonic() - last_record >= cfg.idle_exit_s:
                        self.request_stop(f"idle for {cfg.idle_exit_s} s")
                    waiting = store.pending_ledger or store.pending_trades
                    if not (waiting and cfg.data_dir and time.monotonic() - last_retry >= 1.0):
                        continue
                    last_retry = time.monotonic()   # retry the gaps: the WAL may hold them by now
                else:
                    last_record = time.monotonic()
                self.stats.records += len(records)
                try:
                    counts = await asyncio.to_thread(self._apply, store, records)
                except TransientDatabaseError as exc:
                    self.stats.db_reconnects += 1
                    log.warning("database lost mid-batch (%s); nothing of the batch stayed: reconnecting", exc)
                    store.close()
                    store = await self._open_store()
                    self._seek(consumer, store, tps)
                    continue
                except SettlementError as exc:
                    self.stats.error = f"{type(exc).__name__}: {exc}"
                    log.error("settlement stopped: %s", self.stats.error)
                    self.request_stop("error")
                    break
                self.stats.batches += 1
                self.stats.counts.add(counts)
                self.stats.ledger_seq = store.ledger_seq
                if self._crash == "settle-after-db-commit" and self.stats.batches >= self._crash_after:
                    log.warning("%s=%s: SIGKILL after the database commit", CRASH_ENV, self._crash)
                    os.kill(os.getpid(), signal.SIGKILL)
                offsets = {TopicPartition(t, p): OffsetAndMetadata(o, "")
                           for (t, p), o in store.positions.items()}
                try:
                    await consumer.commit(offsets)
                except KafkaError as exc:
                    self.stats.commit_failures += 1
                    log.debug("group offset commit failed (%s): lag monitoring only, nothing lost", exc)
        finally:
            if install_signal_handlers:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
            try:
                await consumer.stop()
            finally:
                store.close()
        self.stats.stopped_by = self._stop_reason or "stop requested"
        return self.stats

    def _apply(self, store: SettlementStore, records: list) -> SettleCounts:
        if self._crash == "settle-before-db-commit" and self.stats.batches + 1 >= self._crash_after:
            # Kill inside the transaction: the database must roll it back.
            original = store.db.transaction

            def dying():
                import contextlib

                @contextlib.contextmanager
                def tx():
                    with original():
                        yield
                        log.warning("%s=%s: SIGKILL before the database commit", CRASH_ENV, self._crash)
                        os.kill(os.getpid(), signal.SIGKILL)
                return tx()
            store.db.transaction = dying
        return store.apply(records)


def run_settle(config: SettleConfig) -> SettleStats:
    """Run a :class:`SettleService` in a new event loop until SIGTERM/SIGINT
    (or idle); print its stats as one JSON line to stdout and return them."""
    stats = asyncio.run(SettleService(config).run())
    print(json.dumps(stats.as_dict()), flush=True)
    return stats
