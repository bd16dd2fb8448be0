"""Kafka settings and the published watermark file; the bridge that drives
the engine from Kafka is ``engine.service.kafka_bridge`` (it drives the
runtime, so it lives beside it). Orders come from the topic ``orders``;
trades go to ``trades`` and balance changes to ``ledger``.

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
  one; consumers recognise the repeats by ``symbol_seq``/``match_id``. Balance
  changes go to ``ledger`` the same way, keyed by account, with their own
  watermark (``ledger_seq``); after a restart those above it are derived again
  by replaying the WAL from the command of the last one acknowledged.
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
from typing import Any, Optional

__all__ = ["KafkaConfig", "PUBLISHED_FILE", "read_published", "read_published_ledger", "quiet_aiokafka_logs",
           "stop_client"]

log = logging.getLogger("evengine.kafka")

PUBLISHED_FILE = "kafka-published.json"


class KafkaConfig:
    """Where and how the engine talks to Kafka.

    Args:
        bootstrap: ``host:port[,host:port...]``.
        orders_topic / trades_topic / ledger_topic: topic names.
        group_id: the consumer group the engine commits its offsets under (for
            lag monitoring; the engine does not join the group: see ``partitions``).
        partitions: the ``orders`` partitions this engine owns (its shard);
            ``None``: all of them. Assignment is explicit, never by a group
            rebalance: a partition's books live in one engine's WAL, so moving
            the partition to another engine would lose them.
        max_records: records per fetch (one WAL frame at most per fetch).
        linger_ms: producer linger (batches trades into fewer requests).
        request_timeout_ms: producer and consumer request timeout.
        outbox_max: trades (or balance changes) waiting for Kafka before the
            engine stops fetching orders.
    """

    def __init__(self, bootstrap: str, *, orders_topic: str = "orders", trades_topic: str = "trades",
                 ledger_topic: str = "ledger", group_id: str = "evengine", partitions: Optional[list[int]] = None, max_records: int = 2000, linger_ms: int = 2,
                 request_timeout_ms: int = 10_000, outbox_max: int = 500_000) -> None:
        self.bootstrap = bootstrap
        self.orders_topic = orders_topic
        self.trades_topic = trades_topic
        self.ledger_topic = ledger_topic
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


async def stop_client(client: Any, timeout_s: Optional[float] = None) -> None:
    """``await client.stop()`` (an aiokafka consumer or producer) for a caller
    that stops anyway: an error, a timeout, or the ``CancelledError`` that
    aiokafka 0.14's ``Fetcher.close()`` lets out of its own cancelled fetch
    task (seen when that task sleeps its retry backoff, the broker gone) is
    logged at debug and swallowed. A cancellation of the calling task itself
    is re-raised.
    """
    try:
        if timeout_s is None:
            await client.stop()
        else:
            await asyncio.wait_for(client.stop(), timeout_s)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        log.debug("stopping %s: aiokafka let a cancelled inner task's CancelledError out", type(client).__name__)
    except Exception as exc:  # noqa: BLE001 - stopping anyway
        log.debug("stopping %s: %s", type(client).__name__, exc)


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


def read_published_ledger(data_dir: str, ledger_topic: str) -> tuple[int, int]:
    """``(ledger_seq, cmd_seq)`` of the published watermark for
    ``ledger_topic`` (``(0, 1)`` when unknown: everything again)."""
    try:
        with open(os.path.join(data_dir, PUBLISHED_FILE)) as f:
            doc = json.load(f)
        if doc.get("ledger_topic") == ledger_topic:
            return int(doc["ledger_seq"]), int(doc["ledger_cmd_seq"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return 0, 1
