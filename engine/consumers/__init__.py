"""Consumers of the engine's Kafka topics (``engine/io/MESSAGES.md``).

``trade_history``: the ``trades`` topic into SQLite, each trade once, gaps
filled from the engine's WAL (``evengine trades-consumer``).
"""

from .trade_history import (ApplyCounts, ConsumerConfig, ConsumerStats, TradeHistoryConsumer, TradeStore,
                            run_consumer)

__all__ = ["ApplyCounts", "ConsumerConfig", "ConsumerStats", "TradeHistoryConsumer", "TradeStore", "run_consumer"]
