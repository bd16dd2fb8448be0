"""Consumers of the engine's Kafka topics (``engine/io/MESSAGES.md``).

All run on one loop (``kafka_loop``: offsets kept in their own database,
one transaction a batch) over one SQL layer (``sql``: SQLite or PostgreSQL):

- ``trade_history``: the ``trades`` topic, each trade once, gaps filled from
  the engine's WAL (``evengine trades-consumer``);
- ``settlement``: ``ledger`` and ``trades`` into the book of record,
  balances and double-entry postings (``evengine settle``; ``FORMAT.md``).
"""

from .trade_history import (ApplyCounts, ConsumerConfig, ConsumerStats, TradeHistoryConsumer, TradeStore,
                            run_consumer)

__all__ = ["ApplyCounts", "ConsumerConfig", "ConsumerStats", "TradeHistoryConsumer", "TradeStore", "run_consumer"]
