"""Kafka in and out: orders from the topic ``orders``, trades to ``trades``.

Exactly once in, at least once out, nothing lost (DESIGN.md invariant 6):

- **In.** Each ``orders`` record becomes one command whose ``source`` is
  ``kafka:<topic>:<partition>`` and ``source_pos`` its offset
  (``engine/io/MESSAGES.md``). The matcher keeps the last offset applied per
  partition; it is in the WAL and in every snapshot, so after a restart the
  engine seeks each partition it is assigned to just after that offset (to the
  beginning when it never applied one: the topic is the history). A record at
  or below the logged offset (a redelivery) is skipped. The consumer group's
  committed offsets are written too, only after the fsync, but only for lag
  monitoring: the WAL is the truth.
- **Out.** Each trade is published after the fsync that made it durable
  (released by the output gate), keyed by symbol, by an idempotent producer.
  The highest ``match_id`` below which Kafka acknowledged every trade is the
  *published watermark*, kept in ``<data_dir>/kafka-published.json``. After a
  restart every trade above it is published again from the WAL before any new
  one; consumers recognise the repeats by ``symbol_seq``/``match_id``.
- **Broker down.** Fetches return nothing and sends fail: nothing new is
  applied, trades wait in the outbox (nothing acknowledged), and the producer
  is rebuilt and the outbox resent from its oldest unacknowledged trade until
  the broker answers again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import deque
from typing import Any, Optional

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.errors import KafkaError, KafkaTimeoutError

from engine.core.types import Kind
from engine.io.messages import _decode, encode_trade
from engine.service.runtime import EngineRuntime
from eventstore.fsio import atomic_write

__all__ = ["KafkaConfig", "KafkaBridge", "PUBLISHED_FILE", "read_published"]

log = logging.getLogger("evengine.kafka")

PUBLISHED_FILE = "kafka-published.json"
_TRADE = Kind.TRADE.value
_REJECTED = Kind.REJECTED.value


class KafkaConfig:
    """Where and how the engine talks to Kafka.

    Args:
        bootstrap: ``host:port[,host:port...]``.
        orders_topic / trades_topic: topic names.
        group_id: the consumer group the engine commits its offsets under (for
            lag monitoring; the engine does not join the group: see ``partitions``).
        partitions: the ``orders`` partitions this engine owns (its shard);
            ``None``: all of them. Assignment is explicit, never by a group
            rebalance: a partition's books live in one engine's WAL, so moving
            the partition to another engine would lose them.
        max_records: records per fetch (one WAL frame at most per fetch).
        linger_ms: producer linger (batches trades into fewer requests).
        request_timeout_ms: producer and consumer request timeout.
        outbox_max: trades waiting for Kafka before the engine stops fetching orders.
    """

    def __init__(self, bootstrap: str, *, orders_topic: str = "orders", trades_topic: str = "trades",
                 group_id: str = "evengine", partitions: Optional[list[int]] = None, max_records: int = 2000, linger_ms: int = 2,
                 request_timeout_ms: int = 10_000, outbox_max: int = 500_000) -> None:
        self.bootstrap = bootstrap
        self.orders_topic = orders_topic
        self.trades_topic = trades_topic
        self.group_id = group_id
        self.partitions = partitions
        self.max_records = max_records
        self.linger_ms = linger_ms
        self.request_timeout_ms = request_timeout_ms
        self.outbox_max = outbox_max


class _RateLimit(logging.Filter):
    """Let each distinct aiokafka message template through at most once per
    ``every_s``: with the broker down it logs every failed connect, tens per
    second, which would drown the engine's own log."""

    def __init__(self, every_s: float = 10.0) -> None:
        super().__init__()
        self.every_s = every_s
        self.last: dict = {}

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        key = (record.name, record.msg)
        if now - self.last.get(key, -1e9) < self.every_s:
            return False
        self.last[key] = now
        return True


def quiet_aiokafka_logs(every_s: float = 10.0) -> None:
    """Rate-limit aiokafka's log records (see :class:`_RateLimit`)."""
    flt = _RateLimit(every_s)
    for name in ("aiokafka", "aiokafka.conn", "aiokafka.cluster", "aiokafka.consumer.fetcher",
                 "aiokafka.consumer.group_coordinator", "aiokafka.producer.sender", "aiokafka.producer.producer"):
        logging.getLogger(name).addFilter(flt)


def read_published(data_dir: str, trades_topic: str) -> tuple[int, int]:
    """``(match_id, cmd_seq)`` of the published watermark for ``trades_topic``
    (``(0, 1)`` when unknown: everything is published again)."""
    try:
        with open(os.path.join(data_dir, PUBLISHED_FILE)) as f:
            doc = json.load(f)
        if doc.get("trades_topic") == trades_topic:
            return int(doc["match_id"]), int(doc["cmd_seq"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return 0, 1


class KafkaBridge:
    """Consume ``orders`` into an :class:`EngineRuntime`; publish its trades.

    ``await bridge.run()`` until ``runtime.stopping`` is set, then it flushes,
    waits for the outbox to drain (bounded) and closes the clients.
    """

    def __init__(self, runtime: EngineRuntime, config: KafkaConfig) -> None:
        self.rt = runtime
        self.cfg = config
        self.data_dir = runtime.engine.config.data_dir
        self.consumer: Optional[AIOKafkaConsumer] = None
        self.producer: Optional[AIOKafkaProducer] = None
        # outbox entries: [match_id, cmd_seq, key, value, future-or-None, monotonic time handed over]
        self.outbox: deque = deque()
        self._unsent = 0              # index of the first outbox entry not handed to the producer
        self._wake = asyncio.Event()
        self.published_match_id, self._published_cmd_seq = read_published(self.data_dir, config.trades_topic)
        self._watermark_saved = self.published_match_id
        self._ack_timeout_s = max(15.0, 1.5 * config.request_timeout_ms / 1000)
        self.stats = {"orders": 0, "redelivered_skipped": 0, "trades_published": 0, "republished": 0,
                      "producer_restarts": 0}

    # ------------------------------------------------------------------ in
    async def _partitions(self) -> list[int]:
        """The ``orders`` partitions to own; waits (logging) until the topic exists."""
        cfg = self.cfg
        warned = False
        while not self.rt.stopping.is_set():
            admin = AIOKafkaAdminClient(bootstrap_servers=cfg.bootstrap, request_timeout_ms=cfg.request_timeout_ms)
            try:
                await admin.start()
                try:
                    (desc,) = await admin.describe_topics([cfg.orders_topic])
                finally:
                    await admin.close()
                if desc["error_code"] == 0 and desc["partitions"]:
                    existing = sorted(p["partition"] for p in desc["partitions"])
                    if cfg.partitions is None:
                        return existing
                    missing = sorted(set(cfg.partitions) - set(existing))
                    if not missing:
                        return sorted(cfg.partitions)
                    why = f"partition(s) {missing} of {cfg.orders_topic} do not exist (it has {existing})"
                else:
                    why = f"topic {cfg.orders_topic} does not exist (error code {desc['error_code']})"
            except Exception as exc:  # noqa: BLE001 - unreachable broker and the like: retry
                why = f"cannot reach Kafka at {cfg.bootstrap}: {exc}"
            if not warned:
                log.warning("%s; waiting", why)
                warned = True
            await asyncio.sleep(1.0)
        return []

    def _seek_logged(self, assigned: Any) -> None:
        positions = self.rt.engine.matcher.positions
        for tp in assigned:
            pos = positions.get(f"kafka:{tp.topic}:{tp.partition}")
            if pos is None:
                self.consumer.seek(tp, 0)
                log.info("partition %s:%d: no offset logged, reading from the beginning", tp.topic, tp.partition)
            else:
                self.consumer.seek(tp, pos + 1)
                log.info("partition %s:%d: resuming after logged offset %d", tp.topic, tp.partition, pos)

    async def _consume(self) -> None:
        rt = self.rt
        positions = rt.engine.matcher.positions
        submit = rt.engine.submit    # the runtime's own submit adds nothing a fetch loop needs
        decode = _decode
        consumer = self.consumer
        while not rt.stopping.is_set() and rt.failed is None:
            if len(self.outbox) > self.cfg.outbox_max:
                await asyncio.sleep(0.01)     # back-pressure: Kafka is not taking our trades
                continue
            try:
                batch = await consumer.getmany(timeout_ms=100, max_records=self.cfg.max_records)
            except KafkaError as exc:
                log.warning("fetch from %s failed: %s; retrying", self.cfg.orders_topic, exc)
                await asyncio.sleep(0.2)
                continue
            n = 0
            for tp, records in batch.items():
                source = f"kafka:{tp.topic}:{tp.partition}"
                last = positions.get(source, -1)
                for rec in records:
                    if rec.offset <= last:
                        self.stats["redelivered_skipped"] += 1
                        continue
                    submit(decode(rec.value, source, rec.offset, rec.timestamp * 1_000_000))
                    last = rec.offset
                    n += 1
            self.stats["orders"] += n
            if n:
                rt.commands += n
                rt._flush()   # one WAL frame per fetch
            await asyncio.sleep(0)

    async def _commit_loop(self) -> None:
        """Once a second, off the consume loop (a commit waits for the group
        coordinator, which may be away)."""
        while True:
            await asyncio.sleep(1.0)
            await self._commit_offsets()

    async def _commit_offsets(self, timeout_s: float = 10.0) -> None:
        """Commit the group offsets of durable commands (monitoring only)."""
        if self.consumer is None:
            return
        positions = self.rt.engine.matcher.positions
        durable = self.rt.engine.wal.peek_durable()
        if durable < self.rt.engine.matcher.last_seq:
            return   # the positions include commands not yet durable: next time
        offsets = {}
        for tp in self.consumer.assignment():
            pos = positions.get(f"kafka:{tp.topic}:{tp.partition}")
            if pos is not None:
                offsets[tp] = pos + 1
        if offsets:
            try:
                await asyncio.wait_for(self.consumer.commit(offsets), timeout_s)
            except (KafkaError, asyncio.TimeoutError) as exc:
                log.info("offset commit failed (monitoring only): %r", exc)

    # ----------------------------------------------------------------- out
    def _sink(self, seq: int, cmd: Any, events: list) -> None:
        """Output-gate sink: the command and its trades are durable."""
        k = 0          # logged events (trades, a reject) take the seqs after the command
        for ev in events:
            kind = ev[0]
            if kind == _TRADE:
                k += 1
                self.outbox.append([ev[1], seq, ev[3].encode(), encode_trade(seq + k, ev, cmd[-2], cmd[-1]), None, 0.0])
            elif kind == _REJECTED:
                k += 1
        if k:
            self._wake.set()

    def _republish_from_wal(self) -> int:
        """Queue every WAL trade above the published watermark (after a restart),
        oldest first, before anything new."""
        from recovery.time_travel import open_data_dir
        n = 0
        history = open_data_dir(self.data_dir)
        for seq, trade, source, pos in history.trades_with_input(self._published_cmd_seq,
                                                                 self.rt.engine.matcher.last_seq):
            if trade.match_id > self.published_match_id:
                self.outbox.append([trade.match_id, trade.cmd_seq, trade.symbol.encode(),
                                    encode_trade(seq, trade, source, pos), None, 0.0])
                n += 1
        return n

    async def _new_producer(self) -> AIOKafkaProducer:
        producer = AIOKafkaProducer(bootstrap_servers=self.cfg.bootstrap, enable_idempotence=True, acks="all",
                                    linger_ms=self.cfg.linger_ms, request_timeout_ms=self.cfg.request_timeout_ms,
                                    max_batch_size=1 << 20)
        await producer.start()
        return producer

    async def _publish(self) -> None:
        """Hand the outbox to the producer in order, in record batches (one
        per partition at a time: about 5x cheaper per trade than ``send``);
        retire acknowledged trades from its head; on a failure rebuild the
        producer and resend from the oldest unacknowledged trade."""
        backoff = 0.1
        topic = self.cfg.trades_topic
        partitioner = DefaultPartitioner()
        while True:
            try:
                outbox = self.outbox
                self._retire()
                if self._unsent >= len(outbox):
                    if self.rt.stopping.is_set() and not outbox:
                        return
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), 1.0)
                    except asyncio.TimeoutError:
                        pass
                    self._check_stuck()
                    continue
                if self.producer is None:
                    timeout_s = self.cfg.request_timeout_ms / 1000
                    self.producer = await asyncio.wait_for(self._new_producer(), timeout_s)
                    parts = sorted(await asyncio.wait_for(self.producer.partitions_for(topic), timeout_s))
                    partition_of: dict = {}
                    backoff = 0.1
                producer = self.producer
                batches: dict = {}       # partition -> (builder, entries)
                i, n = self._unsent, len(outbox)
                while i < n:
                    entry = outbox[i]
                    key = entry[2]
                    part = partition_of.get(key)
                    if part is None:
                        part = partition_of[key] = partitioner(key, parts, parts)
                    pending = batches.get(part)
                    if pending is None:
                        pending = batches[part] = (producer.create_batch(), [])
                    if pending[0].append(key=key, value=entry[3], timestamp=None) is None:   # full
                        await self._send_batch(topic, part, *pending)
                        pending = batches[part] = (producer.create_batch(), [])
                        pending[0].append(key=key, value=entry[3], timestamp=None)
                    pending[1].append(entry)
                    i += 1
                for part, pending in batches.items():
                    await self._send_batch(topic, part, *pending)
                self._unsent = i
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any send failure: rebuild and resend
                log.warning("publishing trades failed: %s; rebuilding the producer, %d trade(s) to resend",
                            exc, len(self.outbox))
                await self._drop_producer()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def _send_batch(self, topic: str, partition: int, builder: Any, entries: list) -> None:
        fut = await self.producer.send_batch(builder, topic, partition=partition)
        fut.add_done_callback(self._on_ack)
        now = time.monotonic()
        for entry in entries:
            entry[4] = fut
            entry[5] = now

    def _check_stuck(self) -> None:
        """Watchdog: the oldest trade handed to the producer has had no answer,
        neither an acknowledgement nor an error, for longer than the producer's
        own timeouts allow. Seen with aiokafka 0.14 after a broker restart: the
        idempotent producer's InitProducerId keeps going to a node it never
        finds again, and its batches never expire. Rebuild it."""
        outbox = self.outbox
        if outbox and outbox[0][4] is not None and not outbox[0][4].done():
            waited = time.monotonic() - outbox[0][5]
            if waited > self._ack_timeout_s:
                raise KafkaTimeoutError(f"no acknowledgement of match_id {outbox[0][0]} for {waited:.0f} s")

    def _on_ack(self, fut: asyncio.Future) -> None:
        self._wake.set()

    def _retire(self) -> None:
        outbox = self.outbox
        n = 0
        while outbox and outbox[0][4] is not None and outbox[0][4].done():
            fut = outbox[0][4]
            if fut.cancelled():
                raise KafkaError("send cancelled")
            if fut.exception() is not None:
                raise fut.exception()
            match_id, cmd_seq = outbox[0][0], outbox[0][1]
            outbox.popleft()
            self._unsent -= 1
            self.published_match_id, self._published_cmd_seq = match_id, cmd_seq
            n += 1
        self.stats["trades_published"] += n

    async def _drop_producer(self) -> None:
        producer, self.producer = self.producer, None
        for entry in self.outbox:
            entry[4] = None
        self._unsent = 0
        self.stats["producer_restarts"] += 1
        if producer is not None:
            try:
                await asyncio.wait_for(producer.stop(), 5)
            except Exception:  # noqa: BLE001 - it is being thrown away
                pass

    def _save_watermark(self) -> None:
        if self.published_match_id != self._watermark_saved:
            doc = {"trades_topic": self.cfg.trades_topic, "match_id": self.published_match_id,
                   "cmd_seq": self._published_cmd_seq}
            atomic_write(os.path.join(self.data_dir, PUBLISHED_FILE), json.dumps(doc).encode())
            self._watermark_saved = self.published_match_id

    async def _watermark_loop(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            self._save_watermark()

    # ------------------------------------------------------------- lifecycle
    async def run(self, drain_timeout_s: float = 10.0) -> None:
        rt = self.rt
        quiet_aiokafka_logs()
        self.stats["republished"] = self._republish_from_wal()
        if self.stats["republished"]:
            log.info("republishing %d trade(s) above the published watermark (match_id %d)",
                     self.stats["republished"], self.published_match_id)
        rt.add_sink(self._sink)
        publisher = asyncio.create_task(self._publish(), name="evengine-kafka-publish")
        saver = asyncio.create_task(self._watermark_loop(), name="evengine-kafka-watermark")
        committer = asyncio.create_task(self._commit_loop(), name="evengine-kafka-commit")
        cfg = self.cfg
        try:
            parts = await self._partitions()
            while not rt.stopping.is_set():
                self.consumer = AIOKafkaConsumer(
                    bootstrap_servers=cfg.bootstrap, group_id=cfg.group_id, enable_auto_commit=False,
                    auto_offset_reset="earliest", isolation_level="read_committed",
                    request_timeout_ms=max(cfg.request_timeout_ms, 40_000),
                    max_partition_fetch_bytes=4 << 20, fetch_max_bytes=16 << 20)
                try:
                    await self.consumer.start()
                    assigned = [TopicPartition(cfg.orders_topic, p) for p in parts]
                    self.consumer.assign(assigned)
                    self._seek_logged(assigned)
                    break
                except Exception as exc:  # noqa: BLE001 - retry until reachable or stopped
                    log.warning("cannot start the consumer on %s: %s; retrying", cfg.bootstrap, exc)
                    try:
                        await self.consumer.stop()
                    except Exception:  # noqa: BLE001
                        pass
                    self.consumer = None
                    await asyncio.sleep(1.0)
            if not rt.stopping.is_set():
                await self._consume()
        finally:
            await rt.stop()   # everything durable and released into the outbox
            self._wake.set()
            try:
                await asyncio.wait_for(asyncio.shield(publisher), drain_timeout_s)
            except asyncio.TimeoutError:
                log.warning("stopping with %d trade(s) not acknowledged by Kafka; they are published "
                            "again at the next start", len(self.outbox))
            publisher.cancel()
            saver.cancel()
            committer.cancel()
            for task in (publisher, saver, committer):
                try:
                    await task
                except (asyncio.CancelledError, Exception):  # noqa: BLE001
                    pass
            self._retire_quietly()
            self._save_watermark()
            if self.consumer is not None:
                await self._commit_offsets(timeout_s=5.0)
                try:
                    await asyncio.wait_for(self.consumer.stop(), 10)
                except Exception:  # noqa: BLE001 - stopping anyway
                    pass
            if self.producer is not None:
                try:
                    await asyncio.wait_for(self.producer.stop(), 10)
                except Exception:  # noqa: BLE001
                    pass

    def _retire_quietly(self) -> None:
        try:
            self._retire()
        except Exception:  # noqa: BLE001 - what failed stays above the watermark
            pass
