"""The Kafka loop every downstream consumer shares: offsets kept in its own database.

:class:`StoreConsumer` reads its topics with a consumer that *assigns*
itself every partition (no group rebalancing: the positions live in the
store's database) and, per batch::

    getmany -> store.apply(records)      # one database transaction, offsets inside
            -> consumer.commit(offsets)  # the group's offsets: lag monitoring only

A store (:class:`Store`) keeps ``positions`` (``(topic, partition) -> next
offset``, as committed), applies a batch of :class:`Record` in one
transaction, says whether records wait behind a gap, and closes. The
settlement (:mod:`engine.consumers.settlement`) and the trade history
(:mod:`engine.consumers.trade_history`) are two.

On start, and after any failed transaction, every partition is sought to the
offset stored in the database (the beginning when none). A database that
goes away (PostgreSQL restarted, the network) is waited for: the loop
reconnects with a capped backoff and goes on from the database's offsets. A
:class:`StoreError` (the stream contradicts the store) stops it with the
error named in :attr:`LoopStats.error`.

Test hooks: ``EVENGINE_CRASH_AT`` = ``<name>-after-db-commit`` or
``<name>-before-db-commit`` (``name`` the consumer's, e.g. ``settle``) with
``EVENGINE_CRASH_AFTER_BATCHES=N`` SIGKILLs the process at batch N, right
after the database commit (before the Kafka commit) or inside the
transaction before it commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, NamedTuple, Optional, Protocol

from engine.io.kafka import stop_client
from engine.prom import LATENCY_BOUNDS_S, Buckets

from .sql import TransientDatabaseError

__all__ = ["Record", "Store", "StoreError", "LoopConfig", "LoopStats", "StoreConsumer", "CRASH_ENV",
           "CRASH_AFTER_ENV"]

log = logging.getLogger("evengine.consumers")

CRASH_ENV = "EVENGINE_CRASH_AT"
CRASH_AFTER_ENV = "EVENGINE_CRASH_AFTER_BATCHES"


class Record(NamedTuple):
    """One Kafka record as a store sees it."""

    topic: str
    partition: int
    offset: int
    value: Optional[bytes]


class StoreError(Exception):
    """The stream contradicts the store: the consumer stops, the batch is
    rolled back, nothing of it is applied."""


class Store(Protocol):
    positions: dict

    def apply(self, records: list) -> Any: ...

    def waiting(self) -> bool: ...

    def close(self) -> None: ...


@dataclass
class LoopConfig:
    """Settings of one :class:`StoreConsumer`.

    Attributes:
        name: the consumer's name (client id, logs, crash hooks): ``settle``, ``trades-consumer``.
        bootstrap_servers: Kafka, ``host:port[,...]``.
        topics: the topics whose every partition is read.
        group: the consumer group the offsets are committed to (lag monitoring only).
        max_records: most records per batch (one transaction).
        poll_timeout_ms: how long one poll waits (also the longest a stop waits).
        idle_exit_s: stop after this long without a record (``None``: until a signal).
        retry_waiting_s: while records wait behind a gap, call ``apply([])`` this
            often (the gap may be fillable by now).
    """

    name: str
    bootstrap_servers: str
    topics: tuple
    group: str
    max_records: int = 5000
    poll_timeout_ms: int = 200
    idle_exit_s: Optional[float] = None
    retry_waiting_s: float = 1.0


@dataclass
class LoopStats:
    batches: int = 0
    records: int = 0
    db_reconnects: int = 0
    commit_failures: int = 0
    stopped_by: str = ""
    error: Optional[str] = None
    counts: Any = None

    def as_dict(self) -> dict:
        d = asdict(self)
        counts = d.pop("counts")
        if isinstance(counts, dict):
            d.update(counts)
        return d


class StoreConsumer:
    """Feed one store from Kafka until stopped (see the module docstring).

    Args:
        config: the loop's settings.
        open_store: connects and loads a store; may raise
            :class:`TransientDatabaseError` (retried until the database is back).
        add_counts: folds one ``apply`` result into the running total
            (``None``: totals are not kept).
    """

    def __init__(self, config: LoopConfig, open_store: Callable[[], Store],
                 add_counts: Optional[Callable[[Any, Any], Any]] = None) -> None:
        self.config = config
        self.open_store = open_store
        self.add_counts = add_counts
        self.stats = LoopStats()
        self.apply_seconds = Buckets(LATENCY_BOUNDS_S)   # per batch applied: the database transaction
        self.store: Optional[Store] = None               # the store open now (engine.consumers.metrics)
        self.kafka: Any = None                           # the AIOKafkaConsumer while running
        self._stop: Optional[asyncio.Event] = None
        self._stop_reason: Optional[str] = None
        crash = os.environ.get(CRASH_ENV, "")
        points = (f"{config.name}-after-db-commit", f"{config.name}-before-db-commit")
        self._crash = crash if crash in points else None
        self._crash_after = int(os.environ.get(CRASH_AFTER_ENV, "1"))

    def request_stop(self, reason: str = "stop requested") -> None:
        self._stop_reason = self._stop_reason or reason
        if self._stop is not None:
            self._stop.set()

    async def _open(self) -> Store:
        delay = 0.2
        while True:
            try:
                return await asyncio.to_thread(self.open_store)
            except TransientDatabaseError as exc:
                if self._stop.is_set():
                    raise
                log.warning("%s: database unavailable (%s); retrying in %.1f s", self.config.name, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _assign(self, consumer: Any, store: Store) -> list:
        """Assign every partition of the topics (waiting for them to exist:
        an engine creates them when it first publishes) and seek each to the
        database's offset."""
        from aiokafka import TopicPartition
        from aiokafka.admin import AIOKafkaAdminClient
        admin = AIOKafkaAdminClient(bootstrap_servers=self.config.bootstrap_servers,
                                    client_id=f"evengine-{self.config.name}-admin-{os.getpid()}")
        await admin.start()
        try:
            while True:
                described = await admin.describe_topics(list(self.config.topics))
                found = {d["topic"]: sorted(p["partition"] for p in d["partitions"])
                         for d in described if d["error_code"] == 0 and d["partitions"]}
                if set(found) == set(self.config.topics):
                    break
                if self._stop.is_set():
                    return []
                await asyncio.sleep(0.5)
        finally:
            await admin.close()
        tps = [TopicPartition(t, p) for t in self.config.topics for p in found[t]]
        consumer.assign(tps)
        self._seek(consumer, store, tps)
        return tps

    @staticmethod
    def _seek(consumer: Any, store: Store, tps: list) -> None:
        for tp in tps:
            consumer.seek(tp, store.positions.get((tp.topic, tp.partition), 0))

    async def run(self, install_signal_handlers: bool = True) -> LoopStats:
        """Consume until stopped; return the stats (``error`` set when a
        :class:`StoreError` stopped it).

        Raises:
            aiokafka.errors.KafkaError: the broker cannot be reached at start.
        """
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
        store = self.store = await self._open()
        consumer = AIOKafkaConsumer(bootstrap_servers=cfg.bootstrap_servers, group_id=cfg.group,
                                    enable_auto_commit=False, auto_offset_reset="earliest",
                                    isolation_level="read_committed", client_id=f"evengine-{cfg.name}-{os.getpid()}")
        self.kafka = consumer
        last_record = last_retry = time.monotonic()
        try:
            await consumer.start()
            tps = await self._assign(consumer, store)
            last_record = time.monotonic()      # idle from now: waiting for the topics was not
            log.info("%s: reading %s (%d partitions) from the offsets in its database", cfg.name,
                     ", ".join(cfg.topics), len(tps))
            while not self._stop.is_set():
                batches = await consumer.getmany(timeout_ms=cfg.poll_timeout_ms, max_records=cfg.max_records)
                records = [Record(r.topic, r.partition, r.offset, r.value)
                           for tp, rs in sorted(batches.items(), key=lambda kv: (kv[0].topic, kv[0].partition))
                           for r in rs]
                if records:
                    last_record = time.monotonic()
                else:
                    if cfg.idle_exit_s is not None and time.monotonic() - last_record >= cfg.idle_exit_s:
                        self.request_stop(f"idle for {cfg.idle_exit_s} s")
                        break
                    if not (store.waiting() and time.monotonic() - last_retry >= cfg.retry_waiting_s):
                        continue
                    last_retry = time.monotonic()   # retry the gaps: they may be fillable by now
                self.stats.records += len(records)
                t0 = time.perf_counter()
                try:
                    counts = await asyncio.to_thread(self._apply, store, records)
                except TransientDatabaseError as exc:
                    self.stats.db_reconnects += 1
                    log.warning("%s: database lost mid-batch (%s); nothing of the batch stayed: reconnecting",
                                cfg.name, exc)
                    with contextlib.suppress(Exception):
                        store.close()
                    store = self.store = await self._open()
                    self._seek(consumer, store, tps)
                    # Idle time counts from here: the wait for the database is not
                    # idleness, and the records after the seek are still to come (an
                    # --idle-exit-s run stopped with them unapplied when the outage
                    # outlasted it).
                    last_record = time.monotonic()
                    continue
                except StoreError as exc:
                    self.stats.error = f"{type(exc).__name__}: {exc}"
                    log.error("%s stopped: %s", cfg.name, self.stats.error)
                    self.request_stop("error")
                    break
                self.apply_seconds.observe(time.perf_counter() - t0)
                self.stats.batches += 1
                if self.add_counts is not None:
                    self.stats.counts = self.add_counts(self.stats.counts, counts)
                if self._crash and self._crash.endswith("after-db-commit") and self.stats.batches >= self._crash_after:
                    log.warning("%s=%s: SIGKILL after the database commit", CRASH_ENV, self._crash)
                    os.kill(os.getpid(), signal.SIGKILL)
                offsets = {TopicPartition(t, p): OffsetAndMetadata(o, "") for (t, p), o in store.positions.items()}
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
                await stop_client(consumer)
            finally:
                store.close()
        self.stats.stopped_by = self._stop_reason or "stop requested"
        return self.stats

    def _apply(self, store: Any, records: list) -> Any:
        if self._crash and self._crash.endswith("before-db-commit") and self.stats.batches + 1 >= self._crash_after:
            # Kill inside the transaction: the database must roll it back.
            db = store.db
            original = db.transaction

            @contextlib.contextmanager
            def dying():
                with original():
                    yield
                    log.warning("%s=%s: SIGKILL before the database commit", CRASH_ENV, self._crash)
                    os.kill(os.getpid(), signal.SIGKILL)
            db.transaction = dying
        return store.apply(records)
