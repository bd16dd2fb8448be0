"""The engine driven from Kafka: ``orders`` in, ``trades`` and ``ledger`` out.

The delivery rules (exactly once in, at least once out, the published
watermarks) are in ``engine/io/kafka.py``'s docstring and
``engine/io/MESSAGES.md``. This module is the loop that keeps them: a consume
task that submits each fetch as one WAL frame, one :class:`TopicPublisher`
per output topic fed by the output gate (so only durable events leave), a
watermark saver and a monitoring-only offset committer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import deque
from typing import Any, Callable, Optional

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError, KafkaTimeoutError
from aiokafka.partitioner import DefaultPartitioner

from engine.core.types import Kind
from engine.io.kafka import (PUBLISHED_FILE, KafkaConfig, quiet_aiokafka_logs, read_published,
                             read_published_ledger, stop_client)
from engine.io.messages import decode_record, encode_ledger, encode_trade
from eventstore.fsio import atomic_write

from .runtime import EngineRuntime

__all__ = ["KafkaBridge", "TopicPublisher"]

log = logging.getLogger("evengine.kafka")

_TRADE = Kind.TRADE.value
_REJECTED = Kind.REJECTED.value
_BALANCE = Kind.BALANCE_CHANGED.value


class TopicPublisher:
    """One output topic: an outbox of durable records in order, an idempotent
    producer, and the watermark of what Kafka acknowledged.

    Outbox entries are ``[id, cmd_seq, key, value, future-or-None, monotonic
    time handed over]``; ``id`` (``match_id`` or ``ledger_seq``) rises by one
    along the outbox. :attr:`published_id` / :attr:`published_cmd_seq` are
    the id and command of the newest entry below which every entry was
    acknowledged.
    """

    def __init__(self, topic: str, what: str, config: KafkaConfig, published: tuple[int, int],
                 stopping: Callable[[], bool]) -> None:
        self.topic = topic
        self.what = what
        self.cfg = config
        self.outbox: deque = deque()
        self.producer: Optional[AIOKafkaProducer] = None
        self._unsent = 0              # index of the first outbox entry not handed to the producer
        self.wake = asyncio.Event()
        self.published_id, self.published_cmd_seq = published
        self._stopping = stopping
        self._ack_timeout_s = max(15.0, 1.5 * config.request_timeout_ms / 1000)
        self.published = 0
        self.producer_restarts = 0

    def add(self, ident: int, cmd_seq: int, key: bytes, value: bytes) -> None:
        self.outbox.append([ident, cmd_seq, key, value, None, 0.0])

    async def _new_producer(self) -> AIOKafkaProducer:
        cfg = self.cfg
        producer = AIOKafkaProducer(bootstrap_servers=cfg.bootstrap, enable_idempotence=True, acks="all",
                                    linger_ms=cfg.linger_ms, request_timeout_ms=cfg.request_timeout_ms,
                                    max_batch_size=1 << 20)
        await producer.start()
        return producer

    async def run(self) -> None:
        """Hand the outbox to the producer in order, in record batches (one
        per partition at a time: about 5x cheaper per record than ``send``);
        retire acknowledged entries from its head; on a failure rebuild the
        producer and resend from the oldest unacknowledged entry. Returns
        once stopping and the outbox is empty."""
        backoff = 0.1
        topic = self.topic
        partitioner = DefaultPartitioner()
        partition_of: dict = {}
        parts: list = []
        while True:
            try:
                outbox = self.outbox
                self._retire()
                if self._unsent >= len(outbox):
                    if self._stopping() and not outbox:
                        return
                    self.wake.clear()
                    try:
                        await asyncio.wait_for(self.wake.wait(), 1.0)
                    except asyncio.TimeoutError:
                        pass
                    self._check_stuck()
                    continue
                if self.producer is None:
                    timeout_s = self.cfg.request_timeout_ms / 1000
                    self.producer = await asyncio.wait_for(self._new_producer(), timeout_s)
                    parts = sorted(await asyncio.wait_for(self.producer.partitions_for(topic), timeout_s))
                    partition_of = {}
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
                        await self._send_batch(part, *pending)
                        pending = batches[part] = (producer.create_batch(), [])
                        pending[0].append(key=key, value=entry[3], timestamp=None)
                    pending[1].append(entry)
                    i += 1
                for part, pending in batches.items():
                    await self._send_batch(part, *pending)
                self._unsent = i
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any send failure: rebuild and resend
                log.warning("publishing %ss to %s failed: %s; rebuilding the producer, %d to resend",
                            self.what, topic, exc, len(self.outbox))
                await self.drop_producer()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def _send_batch(self, partition: int, builder: Any, entries: list) -> None:
        fut = await self.producer.send_batch(builder, self.topic, partition=partition)
        fut.add_done_callback(self._on_ack)
        now = time.monotonic()
        for entry in entries:
            entry[4] = fut
            entry[5] = now

    def _check_stuck(self) -> None:
        """Watchdog: the oldest entry handed to the producer has had no answer,
        neither an acknowledgement nor an error, for longer than the producer's
        own timeouts allow. Seen with aiokafka 0.14 after a broker restart: the
        idempotent producer's InitProducerId keeps going to a node it never
        finds again, and its batches never expire. Rebuild it."""
        outbox = self.outbox
        if outbox and outbox[0][4] is not None and not outbox[0][4].done():
            waited = time.monotonic() - outbox[0][5]
            if waited > self._ack_timeout_s:
                raise KafkaTimeoutError(f"no acknowledgement of {self.what} {outbox[0][0]} for {waited:.0f} s")

    def _on_ack(self, fut: asyncio.Future) -> None:
        self.wake.set()

    def _retire(self) -> None:
        outbox = self.outbox
        n = 0
        while outbox and outbox[0][4] is not None and outbox[0][4].done():
            fut = outbox[0][4]
            if fut.cancelled():
                raise KafkaError("send cancelled")
            if fut.exception() is not None:
                raise fut.exception()
            self.published_id, self.published_cmd_seq = outbox[0][0], outbox[0][1]
            outbox.popleft()
            self._unsent -= 1
            n += 1
        self.published += n

    def retire_quietly(self) -> None:
        try:
            self._retire()
        except Exception:  # noqa: BLE001 - what failed stays above the watermark
            pass

    async def drop_producer(self) -> None:
        producer, self.producer = self.producer, None
        for entry in self.outbox:
            entry[4] = None
        self._unsent = 0
        self.producer_restarts += 1
        if producer is not None:
            await stop_client(producer, 5)      # it is being thrown away

    async def stop_producer(self) -> None:
        if self.producer is not None:
            await stop_client(self.producer, 10)


class KafkaBridge:
    """Consume ``orders`` into an :class:`EngineRuntime`; publish its trades
    and its balance changes.

    ``await bridge.run()`` until ``runtime.stopping`` is set, then it flushes,
    waits for the outboxes to drain (bounded) and closes the clients.
    :attr:`stats` counts orders, redeliveries skipped, records published and
    republished, producer restarts.
    """

    def __init__(self, runtime: EngineRuntime, config: KafkaConfig) -> None:
        self.rt = runtime
        self.cfg = config
        self.data_dir = runtime.engine.config.data_dir
        self.consumer: Optional[AIOKafkaConsumer] = None
        stopping = runtime.stopping.is_set
        self.trades = TopicPublisher(config.trades_topic, "trade", config,
                                     read_published(self.data_dir, config.trades_topic), stopping)
        self.ledger = TopicPublisher(config.ledger_topic, "balance change", config,
                                     read_published_ledger(self.data_dir, config.ledger_topic), stopping)
        self._saved = (self.trades.published_id, self.ledger.published_id)
        self._orders = 0
        self._skipped = 0
        self._republished = [0, 0]

    @property
    def stats(self) -> dict:
        return {"orders": self._orders, "redelivered_skipped": self._skipped,
                "trades_published": self.trades.published, "republished": self._republished[0],
                "ledger_published": self.ledger.published, "ledger_republished": self._republished[1],
                "producer_restarts": self.trades.producer_restarts + self.ledger.producer_restarts}

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
        decode = decode_record
        consumer = self.consumer
        trades, ledger = self.trades.outbox, self.ledger.outbox
        outbox_max = self.cfg.outbox_max
        wal = rt.engine.wal
        while not rt.stopping.is_set() and rt.failed is None:
            if len(trades) > outbox_max or len(ledger) > outbox_max:
                await asyncio.sleep(0.01)     # back-pressure: Kafka is not taking our output
                continue
            if wal.write_error is not None:
                # The WAL cannot be written (a full disk): fetch nothing more;
                # the records stay in Kafka and are read once it can.
                await asyncio.sleep(0.05)
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
                        self._skipped += 1
                        continue
                    submit(decode(rec.value, source, rec.offset, rec.timestamp * 1_000_000))
                    last = rec.offset
                    n += 1
            self._orders += n
            if n:
                rt.commands += n
                rt.flush()   # one WAL frame per fetch
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
        """Output-gate sink: the command and everything it caused are durable."""
        k = 0          # logged events (trades, a reject) take the seqs after the command
        ledger = False
        shard = self.rt.engine.shard
        for ev in events:
            kind = ev[0]
            if kind == _TRADE:
                k += 1
                self.trades.add(ev[1], seq, ev[3].encode(), encode_trade(seq + k, ev, cmd[-2], cmd[-1], shard))
            elif kind == _BALANCE:
                ledger = True
                self.ledger.add(ev[1], seq, str(ev[3]).encode(), encode_ledger(ev, cmd[1], shard))
            elif kind == _REJECTED:
                k += 1
        if k:
            self.trades.wake.set()
        if ledger:
            self.ledger.wake.set()

    def _republish_from_wal(self) -> tuple[int, int]:
        """Queue every WAL trade and balance change above its published
        watermark (after a restart), oldest first, before anything new.
        Trades are read from the WAL; balance changes, which are not logged,
        are derived again by replaying the commands from the one that caused
        the last change acknowledged.

        A pruned WAL (``evengine wal prune``) starts later than a watermark's
        command when the prune's base was not ahead of the watermarks (its
        rule): reading starts at the first event kept (trades) or at the base
        state (ledger), and the first record republished must follow the
        watermark, else :class:`eventstore.PrunedRangeError` (records Kafka
        never acknowledged were pruned: nothing is published out of order)."""
        from recovery.time_travel import open_data_dir
        matcher = self.rt.engine.matcher
        shard = self.rt.engine.shard
        history = open_data_dir(self.data_dir)
        n_trades = 0
        trades = self.trades
        first = history.pruned_before_seq
        trades_from = max(trades.published_cmd_seq, first)
        for seq, trade, source, pos in history.trades_with_input(trades_from, matcher.last_seq):
            if trade.match_id > trades.published_id:
                if not n_trades and trade.match_id != trades.published_id + 1:
                    self._lost("trades", trades.published_id, trade.match_id, trades.published_cmd_seq, history)
                trades.add(trade.match_id, trade.cmd_seq, trade.symbol.encode(), encode_trade(seq, trade, source, pos, shard))
                n_trades += 1
        if not n_trades and matcher.match_sequence > trades.published_id:
            self._lost("trades", trades.published_id, matcher.match_sequence, trades.published_cmd_seq, history)
        n_ledger = 0
        ledger = self.ledger
        if matcher.accounts.ledger_seq > ledger.published_id:
            ledger_from = ledger.published_cmd_seq
            earliest = history.earliest_seq if history.retention() is not None else 0
            if earliest is not None and ledger_from - 1 < earliest:
                ledger_from = earliest + 1
            for seq, ts_ns, ev in history.balance_changes(ledger_from, matcher.last_seq):
                if ev[1] > ledger.published_id:
                    if not n_ledger and ev[1] != ledger.published_id + 1:
                        self._lost("ledger", ledger.published_id, ev[1], ledger.published_cmd_seq, history)
                    ledger.add(ev[1], seq, str(ev[3]).encode(), encode_ledger(ev, ts_ns, shard))
                    n_ledger += 1
        return n_trades, n_ledger

    def _lost(self, what: str, published: int, found: int, cmd_seq: int, history: Any) -> None:
        """Records above the ``what`` watermark are not in the WAL any more."""
        from eventstore import PrunedRangeError
        rec = history.retention()
        if rec is None:
            raise RuntimeError(f"republishing {what}: Kafka acknowledged up to {published} but the WAL's next "
                               f"is {found}: the WAL does not hold what is left to publish")
        raise PrunedRangeError(self.data_dir, cmd_seq, rec.pruned_before_seq, rec.pruned_before_seq,
                               rec.pruned_at, rec.path,
                               f"seq available, and {what} {published + 1}..{found - 1} above the Kafka "
                               f"watermark were in the pruned range; first event")

    def _save_watermark(self) -> None:
        now = (self.trades.published_id, self.ledger.published_id)
        if now != self._saved:
            doc = {"trades_topic": self.cfg.trades_topic, "match_id": self.trades.published_id,
                   "cmd_seq": self.trades.published_cmd_seq,
                   "ledger_topic": self.cfg.ledger_topic, "ledger_seq": self.ledger.published_id,
                   "ledger_cmd_seq": self.ledger.published_cmd_seq}
            atomic_write(os.path.join(self.data_dir, PUBLISHED_FILE), json.dumps(doc).encode())
            self._saved = now

    async def _watermark_loop(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(0.5)
            try:
                self._save_watermark()
            except Exception as exc:  # noqa: BLE001 - a full disk: the file stays behind, which only republishes more
                if not failing:
                    log.error("cannot save %s: %s; retrying (after a restart the trades above the old "
                              "watermark are published again, which consumers drop as repeats)", PUBLISHED_FILE, exc)
                    failing = True
                continue
            if failing:
                log.warning("%s saved again", PUBLISHED_FILE)
                failing = False

    # ------------------------------------------------------------- lifecycle
    async def run(self, drain_timeout_s: float = 10.0) -> None:
        rt = self.rt
        quiet_aiokafka_logs()
        self._republished = list(self._republish_from_wal())
        if any(self._republished):
            log.info("republishing %d trade(s) above match_id %d and %d balance change(s) above ledger_seq %d",
                     self._republished[0], self.trades.published_id, self._republished[1],
                     self.ledger.published_id)
        rt.add_sink(self._sink)
        publishers = [asyncio.create_task(self.trades.run(), name="evengine-kafka-trades"),
                      asyncio.create_task(self.ledger.run(), name="evengine-kafka-ledger")]
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
                    await stop_client(self.consumer)
                    self.consumer = None
                    await asyncio.sleep(1.0)
            if not rt.stopping.is_set():
                await self._consume()
        finally:
            await rt.stop()   # everything durable and released into the outboxes
            self.trades.wake.set()
            self.ledger.wake.set()
            try:
                await asyncio.wait_for(asyncio.shield(asyncio.gather(*publishers)), drain_timeout_s)
            except asyncio.TimeoutError:
                log.warning("stopping with %d trade(s) and %d balance change(s) not acknowledged by Kafka; "
                            "they are published again at the next start",
                            len(self.trades.outbox), len(self.ledger.outbox))
            except Exception:  # noqa: BLE001 - a publisher failed: its outbox stays above the watermark
                pass
            for task in (*publishers, saver, committer):
                task.cancel()
            for task in (*publishers, saver, committer):
                try:
                    await task
                except (asyncio.CancelledError, Exception):  # noqa: BLE001
                    pass
            self.trades.retire_quietly()
            self.ledger.retire_quietly()
            try:
                self._save_watermark()
            except Exception as exc:  # noqa: BLE001 - the file stays behind: the next start republishes more
                log.error("cannot save %s at stop: %s", PUBLISHED_FILE, exc)
            if self.consumer is not None:
                await self._commit_offsets(timeout_s=5.0)
                await stop_client(self.consumer, 10)
            await self.trades.stop_producer()
            await self.ledger.stop_producer()
