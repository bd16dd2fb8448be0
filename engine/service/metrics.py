"""The engine's Prometheus metrics (``evengine start --metrics HOST:PORT``).

Almost everything is read at scrape time by :class:`EngineCollector` from
state the engine keeps anyway (sequence numbers, the WAL's counters, the
files on disk), so matching pays nothing for it. What needs counting as it
happens lives in :class:`EngineCounters`, which the engine feeds: an
accepted command costs one list increment in ``Engine.submit``; rejects,
snapshots and fork pauses, which take slow paths already, a little more.

The scrape runs in the metrics server's thread while the engine's thread
matches: the collector only reads (``WalWriter.peek_durable``, never
``durable_seq``, whose bookkeeping belongs to the matching thread) and
copies what it reads in single operations. Every metric is listed in
``docs/METRICS.md``.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Iterator, Optional

from engine.core import Kind, RejectReason
from engine.io.names import kind_name, reason_name
from engine.prom import Buckets, histogram_family

__all__ = ["EngineCounters", "EngineCollector", "FORK_PAUSE_BOUNDS_S", "SNAPSHOT_BOUNDS_S"]

log = logging.getLogger("evengine.metrics")

FORK_PAUSE_BOUNDS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
SNAPSHOT_BOUNDS_S = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)

_REJECTED = Kind.REJECTED.value
_COMMAND_KINDS = [k for k in Kind if k < 64]


class EngineCounters:
    """What the engine counts as it runs, for :class:`EngineCollector`.

    Attributes:
        commands: accepted commands by kind code (a list indexed by the code,
            1..63): ``commands[Kind.PLACE]``.
        rejects: rejected commands, ``{(command kind code or 0 when it has
            none, reject reason code): count}``.
        fork_pause_s: the engine's pause in ``os.fork`` per snapshot, seconds.
        snapshot_s: how long each snapshot child took to write its file, seconds.
        snapshot_failures: snapshot children that failed.
    """

    __slots__ = ("commands", "rejects", "fork_pause_s", "snapshot_s", "snapshot_failures")

    def __init__(self) -> None:
        self.commands = [0] * 64
        self.rejects: dict = {}
        self.fork_pause_s = Buckets(FORK_PAUSE_BOUNDS_S)
        self.snapshot_s = Buckets(SNAPSHOT_BOUNDS_S)
        self.snapshot_failures = 0

    def count_reject(self, cmd: Any, reject: Any) -> None:
        """``cmd`` was refused with the event ``reject`` (an ``OrderRejected``)."""
        kind = cmd[0] if type(cmd[0]) is int and 0 < cmd[0] < 64 else 0
        key = (kind, reject[3])
        self.rejects[key] = self.rejects.get(key, 0) + 1

    def snapshot_done(self, job: Any) -> None:
        """A ``SnapshotJob`` finished well."""
        self.snapshot_s.observe((job.finished_ns - job.started_ns) / 1e9)

    def commands_by_kind(self) -> dict:
        """``{kind code: commands submitted}``, accepted and rejected."""
        out = {k: self.commands[k] for k in range(64) if self.commands[k]}
        for (kind, _), n in list(self.rejects.items()):
            out[kind] = out.get(kind, 0) + n
        return out

    def rejects_by_reason(self) -> dict:
        """``{reason code: rejects}``."""
        out: dict = {}
        for (_, reason), n in list(self.rejects.items()):
            out[reason] = out.get(reason, 0) + n
        return out


def _dir_usage(path: str, suffixes: tuple) -> tuple[int, int]:
    """``(files, bytes)`` of the files in ``path`` ending with one of ``suffixes``."""
    files = size = 0
    try:
        with os.scandir(path) as it:
            for entry in it:
                if entry.name.endswith(suffixes):
                    try:
                        size += entry.stat().st_size
                    except FileNotFoundError:   # sealed and unlinked meanwhile
                        continue
                    files += 1
    except FileNotFoundError:
        pass
    return files, size


class EngineCollector:
    """A ``prometheus_client`` collector of one :class:`~engine.service.Engine`.

    Register it in a registry (``engine.prom.new_registry``); every scrape
    calls :meth:`collect`. Set :attr:`bridge` to the running
    ``KafkaBridge`` (``engine.service.serve`` does) for the Kafka metrics.
    Shapes and units are in ``docs/METRICS.md``; in short:

    - counters: ``evengine_commands_total{kind}``, ``evengine_rejects_total{reason}``,
      ``evengine_events_total{kind}`` (trades, rejects: the WAL events a command
      caused), ``evengine_fsyncs_total``, ``evengine_fsync_seconds_total``,
      ``evengine_snapshot_failures_total``;
    - gauges: ``evengine_last_seq``, ``evengine_durable_seq``, ``evengine_written_seq``,
      ``evengine_match_sequence``, ``evengine_ledger_seq``, ``evengine_wal_bytes``,
      ``evengine_wal_segments``, ``evengine_event_buffer_events``,
      ``evengine_event_buffer_capacity``, ``evengine_snapshot_age_seconds``,
      ``evengine_snapshot_seq``, ``evengine_snapshot_running``;
    - histograms: ``evengine_commit_latency_seconds``, ``evengine_batch_events``,
      ``evengine_fork_pause_seconds``, ``evengine_snapshot_duration_seconds``;
    - with Kafka: ``evengine_kafka_consumer_lag{topic,partition}``,
      ``evengine_kafka_consumer_position{topic,partition}``,
      ``evengine_kafka_high_watermark{topic,partition}``,
      ``evengine_published_watermark_lag{topic}``, ``evengine_published_id{topic}``,
      ``evengine_published_records_total{topic}``,
      ``evengine_producer_restarts_total{topic}``.
    """

    def __init__(self, engine: Any, bridge: Any = None) -> None:
        self.engine = engine
        self.bridge = bridge
        self._start: Optional[tuple[int, int]] = None   # (next seq, match_sequence) when first seen open
        self._baseline()   # make it right after Engine.open: evengine_events_total counts from here

    def _baseline(self) -> tuple[int, int]:
        e = self.engine
        if self._start is None and e.wal is not None and e.matcher is not None:
            self._start = (e.next_seq, e.matcher.match_sequence)
        return self._start or (1, 0)

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        e = self.engine
        c = e.counters
        info = GaugeMetricFamily("evengine_engine_info", "The engine of this process (value 1).",
                                 labels=["shard", "data_dir"])
        info.add_metric([str(e.shard), os.path.abspath(e.config.data_dir)], 1)
        yield info

        commands = CounterMetricFamily("evengine_commands_total",
                                       "Commands submitted to the engine by this process, by kind (accepted and "
                                       "rejected).", labels=["kind"])
        by_kind = c.commands_by_kind()
        for kind in [k.value for k in _COMMAND_KINDS] + sorted(k for k in by_kind if k not in Kind._value2member_map_):
            commands.add_metric([kind_name(kind) if kind else "unknown"], by_kind.get(kind, 0))
        yield commands
        rejects = CounterMetricFamily("evengine_rejects_total", "Commands rejected by this process, by reason.",
                                      labels=["reason"])
        by_reason = c.rejects_by_reason()
        for code in sorted(set(r.value for r in RejectReason) | set(by_reason)):
            rejects.add_metric([reason_name(_REJECTED, code)], by_reason.get(code, 0))
        yield rejects

        m, wal = e.matcher, e.wal
        if m is not None and wal is not None:
            start_seq, start_match = self._baseline()
            trades = m.match_sequence - start_match
            events = CounterMetricFamily("evengine_events_total",
                                         "WAL events that commands of this process caused, by kind (a command "
                                         "is an event too: evengine_commands_total).", labels=["kind"])
            events.add_metric(["trade"], trades)
            events.add_metric(["rejected"], sum(by_reason.values()))
            yield events
            for name, doc, value in (
                    ("evengine_last_seq", "Sequence number of the last event matched (not necessarily durable).",
                     m.last_seq),
                    ("evengine_durable_seq", "The WAL watermark: every event up to it is on disk.",
                     wal.peek_durable()),
                    ("evengine_written_seq", "Last sequence number written to the OS (page cache).",
                     wal.written_seq),
                    ("evengine_match_sequence", "match_id of the last trade.", m.match_sequence),
                    ("evengine_ledger_seq", "ledger_seq of the last balance change.",
                     getattr(getattr(m, "accounts", None), "ledger_seq", 0)),
                    ("evengine_books", "Order books open.", len(m.books))):
                yield GaugeMetricFamily(name, doc, value=value)
            yield from self._wal(wal)
        yield from self._snapshots(c)
        if self.bridge is not None:
            try:
                yield from self._kafka(self.bridge)
            except Exception as exc:  # noqa: BLE001 - a scrape never fails on the bridge's state
                log.debug("kafka metrics skipped: %r", exc)

    def _wal(self, wal: Any) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        st = wal.stats
        yield histogram_family("evengine_commit_latency_seconds",
                               "Group commit latency per WAL frame: first append to durable as the engine saw it.",
                               st.LATENCY_BOUNDS_NS, st.latency_counts, st.latency_sum_ns, scale=1e-9)
        yield histogram_family("evengine_batch_events", "Events per WAL frame (group-commit batch) made durable.",
                               st.BATCH_BOUNDS, st.batch_counts, st.events)
        syncs, sync_ns = wal.sync_counters()
        yield CounterMetricFamily("evengine_fsyncs_total", "fdatasync calls by the WAL syncer process.", value=syncs)
        yield CounterMetricFamily("evengine_fsync_seconds_total", "Time the WAL syncer spent in fdatasync.",
                                  value=sync_ns / 1e9)
        segments, size = _dir_usage(wal.wal_dir, (".seg", ".seg.zst"))
        yield GaugeMetricFamily("evengine_wal_bytes", "Bytes of WAL segments on disk (sealed ones compressed).",
                                value=size)
        yield GaugeMetricFamily("evengine_wal_segments", "WAL segment files on disk (sealed and open).",
                                value=segments)
        buf = wal.buffer
        yield GaugeMetricFamily("evengine_event_buffer_events", "Events held in the in-memory event buffer.",
                                value=buf.last_seq - buf.first_seq + 1)
        yield GaugeMetricFamily("evengine_event_buffer_capacity", "Capacity of the in-memory event buffer (events).",
                                value=buf.capacity)

    def _snapshots(self, c: EngineCounters) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        from recovery import snapshot_dir
        from snapshot import list_snapshots
        e = self.engine
        yield histogram_family("evengine_fork_pause_seconds", "The engine's pause in fork() per snapshot.",
                               c.fork_pause_s.bounds, c.fork_pause_s.counts, c.fork_pause_s.sum)
        yield histogram_family("evengine_snapshot_duration_seconds",
                               "Time a snapshot child took to write its file (successful snapshots).",
                               c.snapshot_s.bounds, c.snapshot_s.counts, c.snapshot_s.sum)
        yield CounterMetricFamily("evengine_snapshot_failures_total", "Snapshot children that failed.",
                                  value=c.snapshot_failures)
        snaps = e.snapshots
        yield GaugeMetricFamily("evengine_snapshot_running", "1 while a snapshot child is writing.",
                                value=1 if snaps is not None and snaps.running is not None else 0)
        newest = list_snapshots(snapshot_dir(e.config.data_dir))
        if newest:
            try:
                age = max(0.0, time.time() - os.stat(newest[-1].path).st_mtime)
            except FileNotFoundError:    # pruned meanwhile
                return
            yield GaugeMetricFamily("evengine_snapshot_age_seconds", "Age of the newest snapshot file.", value=age)
            yield GaugeMetricFamily("evengine_snapshot_seq", "Sequence number of the newest snapshot file.",
                                    value=newest[-1].seq)

    def _kafka(self, bridge: Any) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        lag = GaugeMetricFamily("evengine_kafka_consumer_lag",
                                "Records of an orders partition not yet applied: the end of the partition "
                                "(last stable offset, else high watermark, as of the last fetch) minus the "
                                "next offset to apply.", labels=["topic", "partition"])
        position = GaugeMetricFamily("evengine_kafka_consumer_position",
                                     "Next offset of an orders partition to apply (logged offset + 1).",
                                     labels=["topic", "partition"])
        high = GaugeMetricFamily("evengine_kafka_high_watermark",
                                 "End of an orders partition as of the last fetch (next offset to be written).",
                                 labels=["topic", "partition"])
        consumer = bridge.consumer
        positions = dict(self.engine.matcher.positions)
        if consumer is not None:
            for tp in sorted(consumer.assignment(), key=lambda t: (t.topic, t.partition)):
                labels = [tp.topic, str(tp.partition)]
                logged = positions.get(f"kafka:{tp.topic}:{tp.partition}")
                nxt = logged + 1 if isinstance(logged, int) else 0
                position.add_metric(labels, nxt)
                try:
                    end = consumer.last_stable_offset(tp)
                    if end is None or end < 0:
                        end = consumer.highwater(tp)
                    hw = consumer.highwater(tp)
                except AssertionError:    # no longer assigned
                    continue
                if hw is not None:
                    high.add_metric(labels, hw)
                if end is not None and end >= 0:
                    lag.add_metric(labels, max(0, end - nxt))
        yield lag
        yield position
        yield high
        wm_lag = GaugeMetricFamily("evengine_published_watermark_lag",
                                   "Durable records of an output topic not yet acknowledged by Kafka: the newest "
                                   "id handed to the publisher (match_id, ledger_seq) minus the published "
                                   "watermark.", labels=["topic"])
        wm = GaugeMetricFamily("evengine_published_id",
                               "The published watermark: every record up to this id (match_id, ledger_seq) was "
                               "acknowledged by Kafka.", labels=["topic"])
        published = CounterMetricFamily("evengine_published_records_total",
                                        "Records acknowledged by Kafka since this process started.", labels=["topic"])
        restarts = CounterMetricFamily("evengine_producer_restarts_total",
                                       "Kafka producers rebuilt after a failure.", labels=["topic"])
        for pub in (bridge.trades, bridge.ledger):
            outbox = pub.outbox
            try:
                newest = outbox[-1][0]
            except IndexError:
                newest = pub.published_id
            wm_lag.add_metric([pub.topic], max(0, newest - pub.published_id))
            wm.add_metric([pub.topic], pub.published_id)
            published.add_metric([pub.topic], pub.published)
            restarts.add_metric([pub.topic], pub.producer_restarts)
        yield wm_lag
        yield wm
        yield published
        yield restarts
        stats = bridge.stats
        yield CounterMetricFamily("evengine_kafka_orders_total", "Order records consumed and submitted.",
                                  value=stats["orders"])
        yield CounterMetricFamily("evengine_kafka_redelivered_total",
                                  "Order records skipped as already applied (redelivered after a restart).",
                                  value=stats["redelivered_skipped"])
