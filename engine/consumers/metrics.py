"""Prometheus metrics of a downstream consumer (``evengine trades-consumer``,
``evengine settle``): ``--metrics HOST:PORT``.

:class:`ConsumerCollector` reads a running
:class:`~engine.consumers.kafka_loop.StoreConsumer` at scrape time: its
:class:`~engine.consumers.kafka_loop.LoopStats`, the database transaction
times it keeps (``apply_seconds``), its store's positions and gaps, and
the Kafka consumer's high watermarks. Every series has a ``consumer``
label (``trades-consumer``, ``settle``). The list is in ``docs/METRICS.md``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Iterator, Optional

from engine.prom import histogram_family, start_metrics_server

__all__ = ["ConsumerCollector", "serve_metrics"]


@contextlib.contextmanager
def serve_metrics(loop: Any, addr: Optional[str]) -> Iterator[Any]:
    """``/metrics`` of ``loop`` (a ``StoreConsumer``) on ``addr`` (``HOST:PORT``)
    while the block runs; nothing without an address. Yields the
    ``engine.prom.MetricsServer`` (or None).

    Raises:
        ValueError: ``addr`` is not ``HOST:PORT``.
        engine.prom.MetricsBindError: it cannot be bound.
    """
    if addr is None:
        yield None
        return
    server = start_metrics_server(addr, ConsumerCollector(loop))
    try:
        yield server
    finally:
        server.close()

_STATE_FIELDS = {"gaps_open": "evengine_consumer_gaps_open", "held": "evengine_consumer_held_records"}
_STATE_DOCS = {"gaps_open": "Gaps not yet filled (trade history).",
               "held": "Records waiting behind a gap (settlement)."}


class ConsumerCollector:
    """A ``prometheus_client`` collector of one ``StoreConsumer`` (``loop``).

    - counters: ``evengine_consumer_records_total``, ``evengine_consumer_batches_total``
      (database transactions committed), ``evengine_consumer_db_reconnects_total``,
      ``evengine_consumer_offset_commit_failures_total``,
      ``evengine_consumer_applied_total{what}`` (the store's counts: ``stored``,
      ``repeats``, ``malformed``, ``gaps``, ...);
    - histogram: ``evengine_consumer_db_commit_seconds`` (one batch's transaction);
    - gauges: ``evengine_consumer_position{topic,partition}`` (next offset, as
      committed in the database), ``evengine_kafka_consumer_lag{topic,partition}``
      (high watermark of the last fetch minus that), ``evengine_consumer_gaps_open``,
      ``evengine_consumer_held_records``, ``evengine_consumer_stopped_by_error``
      (1 once a contradiction stopped it).
    """

    def __init__(self, loop: Any) -> None:
        self.loop = loop

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        loop = self.loop
        name = loop.config.name
        st = loop.stats
        for metric, doc, v in (
                ("evengine_consumer_records_total", "Kafka records read into batches.", st.records),
                ("evengine_consumer_batches_total", "Batches applied (one database transaction each).", st.batches),
                ("evengine_consumer_db_reconnects_total", "Database connections lost mid-batch and reopened.",
                 st.db_reconnects),
                ("evengine_consumer_offset_commit_failures_total",
                 "Group offset commits to Kafka that failed (lag monitoring only).", st.commit_failures)):
            f = CounterMetricFamily(metric, doc, labels=["consumer"])
            f.add_metric([name], v)
            yield f
        err = GaugeMetricFamily("evengine_consumer_stopped_by_error",
                                "1 once the stream contradicted the store and the consumer stopped.",
                                labels=["consumer"])
        err.add_metric([name], 1 if st.error else 0)
        yield err
        b = loop.apply_seconds
        yield histogram_family("evengine_consumer_db_commit_seconds",
                               "Time one batch took to apply and commit in the database.",
                               b.bounds, b.counts, b.sum, labels={"consumer": name})
        applied = CounterMetricFamily("evengine_consumer_applied_total",
                                      "What the store did with the records, by outcome (its counts).",
                                      labels=["consumer", "what"])
        states = {}
        counts = st.counts
        if dataclasses.is_dataclass(counts):
            for fld in dataclasses.fields(counts):
                v = getattr(counts, fld.name)
                if fld.name in _STATE_FIELDS:
                    states[fld.name] = v
                else:
                    applied.add_metric([name, fld.name], v)
        yield applied
        store = loop.store
        if store is not None:
            gaps = _open_gaps(store)
            if gaps is not None:
                states["gaps_open"] = gaps
        for fld, v in sorted(states.items()):
            g = GaugeMetricFamily(_STATE_FIELDS[fld], _STATE_DOCS[fld], labels=["consumer"])
            g.add_metric([name], v)
            yield g
        yield from self._partitions(name, store, loop.kafka)

    def _partitions(self, name: str, store: Any, kafka: Any) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily
        position = GaugeMetricFamily("evengine_consumer_position",
                                     "Next offset to read of a partition, as committed in the database.",
                                     labels=["consumer", "topic", "partition"])
        lag = GaugeMetricFamily("evengine_kafka_consumer_lag",
                                "Records of a partition not yet applied: its high watermark (as of the last "
                                "fetch) minus the database's next offset.", labels=["consumer", "topic", "partition"])
        positions = dict(store.positions) if store is not None else {}
        assigned: dict = {}
        if kafka is not None:
            try:
                assigned = {(tp.topic, tp.partition): tp for tp in kafka.assignment()}
            except Exception:  # noqa: BLE001 - not started, or stopped
                assigned = {}
        for key in sorted(set(positions) | set(assigned)):
            topic, part = key
            labels = [name, topic, str(part)]
            nxt = positions.get(key, 0)
            position.add_metric(labels, nxt)
            tp = assigned.get(key)
            if tp is None:
                continue
            try:
                hw = kafka.highwater(tp)
            except AssertionError:   # no longer assigned
                continue
            if hw is not None:
                lag.add_metric(labels, max(0, hw - nxt))
        yield position
        yield lag


def _open_gaps(store: Any) -> Any:
    """How many gaps ``store`` has open (``None``: it does not say). The
    store may be changing them in its transaction thread: one retry."""
    for _ in range(2):
        try:
            return len(store.open_gaps)
        except AttributeError:
            return None
        except RuntimeError:    # changed size while read
            continue
    return None
