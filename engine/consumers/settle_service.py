"""``evengine settle``: settlement fed from Kafka by the shared loop.

:class:`~engine.consumers.kafka_loop.StoreConsumer` reads ``ledger`` and
``trades`` (every partition, from the offsets in the database) into a
:class:`~engine.consumers.settlement.SettlementStore`, one transaction a
batch. Crash hooks for tests: ``EVENGINE_CRASH_AT=settle-after-db-commit``
or ``settle-before-db-commit`` (:mod:`engine.consumers.kafka_loop`).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, dataclass
from typing import Any, Optional

from .kafka_loop import LoopConfig, LoopStats, StoreConsumer
from .settlement import SettleCounts, SettlementStore
from .sql import connect

__all__ = ["SettleConfig", "settle_consumer", "run_settle"]


@dataclass
class SettleConfig:
    """Settings of ``evengine settle``.

    Attributes:
        bootstrap_servers: Kafka, ``host:port[,...]``.
        db_url: ``sqlite:///PATH`` or ``postgresql://...`` (:func:`engine.consumers.sql.connect`).
        data_dirs: the engines' data directories on this machine (one per
            shard), to fill gaps from their WALs.
        ledger_topic / trades_topic: the topics.
        group: the consumer group the offsets are committed to (lag monitoring only).
        max_records: most records per batch (one transaction).
        poll_timeout_ms: how long one poll waits (also the longest a stop waits).
        idle_exit_s: stop after this long without a record (``None``: until a signal).
    """

    bootstrap_servers: str
    db_url: str = "sqlite:///data/settlement.sqlite"
    data_dirs: tuple = ()
    ledger_topic: str = "ledger"
    trades_topic: str = "trades"
    group: str = "settlement"
    max_records: int = 5000
    poll_timeout_ms: int = 200
    idle_exit_s: Optional[float] = None


def _add(total: Any, counts: SettleCounts) -> SettleCounts:
    total = total or SettleCounts()
    total.add(counts)
    return total


def settle_consumer(config: SettleConfig) -> StoreConsumer:
    """The :class:`StoreConsumer` of one settlement service."""
    def open_store() -> SettlementStore:
        return SettlementStore(connect(config.db_url), config.ledger_topic, config.trades_topic, config.data_dirs)
    loop = LoopConfig(name="settle", bootstrap_servers=config.bootstrap_servers,
                      topics=(config.ledger_topic, config.trades_topic), group=config.group,
                      max_records=config.max_records, poll_timeout_ms=config.poll_timeout_ms,
                      idle_exit_s=config.idle_exit_s)
    return StoreConsumer(loop, open_store, _add)


def run_settle(config: SettleConfig, metrics: Optional[str] = None) -> LoopStats:
    """Run the settlement until SIGTERM/SIGINT (or idle); print its stats as
    one JSON line to stdout and return them. ``metrics``: serve Prometheus
    metrics on that ``HOST:PORT`` meanwhile (``engine.consumers.metrics``).

    Raises:
        engine.prom.MetricsBindError: the metrics address cannot be bound.
    """
    from .metrics import serve_metrics
    consumer = settle_consumer(config)
    with serve_metrics(consumer, metrics):
        stats = asyncio.run(consumer.run())
    out = stats.as_dict()
    out.update(asdict(stats.counts) if isinstance(stats.counts, SettleCounts) else {})
    print(json.dumps(out), flush=True)
    return stats
