"""The metrics collectors on real components: an Engine on tmp_path (real WAL,
syncer, snapshots), a TradeStore on a real SQLite file; collected through a
real registry, rendered in the exposition format and parsed back with
prometheus_client's parser. Plus the plumbing: buckets, --metrics addresses,
the server thread, CommitStats in constant memory."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client import generate_latest

from engine.consumers.kafka_loop import LoopConfig, Record, StoreConsumer
from engine.consumers.metrics import ConsumerCollector
from engine.consumers.trade_history import ApplyCounts, TradeStore, open_database
from engine.io.messages import encode_trade
from engine.io.synthetic import SyntheticSource
from engine.prom import (Buckets, MetricsBindError, MetricsServer, histogram_family, new_registry,
                         parse_metrics_addr, start_metrics_server)
from engine.service.engine import Engine, EngineConfig
from engine.service.metrics import EngineCollector
from eventstore import CommitStats
from tests.support.metrics import families, parse, series, value
from tests.support.trades import run_engine, wal_trades


def scrape_registry(*collectors) -> dict:
    return parse(generate_latest(new_registry(*collectors)).decode())


def engine(tmp_path, **kw) -> Engine:
    cfg = dict(data_dir=str(tmp_path / "data"), snapshot_every=0, control_socket=False, pause_cyclic_gc=False,
               pin_cpus=False)
    cfg.update(kw)
    return Engine(EngineConfig(**cfg))


# ------------------------------------------------------------------ plumbing
def test_buckets_count_each_value_in_the_first_bound_at_or_above_it():
    b = Buckets((1, 2, 5))
    for v in (0.5, 1, 1.5, 2, 5, 5.01, 100):
        b.observe(v)
    assert b.counts == [2, 2, 1, 2] and b.count == 7 and b.sum == pytest.approx(115.01)
    fam = histogram_family("x_seconds", "doc", b.bounds, b.counts, b.sum)
    samples = {(s.name, s.labels.get("le")): s.value for s in fam.samples}
    assert samples[("x_seconds_bucket", "1.0")] == 2 and samples[("x_seconds_bucket", "2.0")] == 4
    assert samples[("x_seconds_bucket", "5.0")] == 5 and samples[("x_seconds_bucket", "+Inf")] == 7
    assert samples[("x_seconds_count", None)] == 7
    with pytest.raises(ValueError):
        Buckets((1, 1, 2))


@pytest.mark.parametrize("text, want", [("127.0.0.1:9100", ("127.0.0.1", 9100)), ("0.0.0.0:0", ("0.0.0.0", 0)),
                                        ("localhost:65535", ("localhost", 65535)), ("[::1]:9", ("::1", 9))])
def test_metrics_addresses(text, want):
    assert parse_metrics_addr(text) == want


@pytest.mark.parametrize("text", ["9100", ":9100", "127.0.0.1:", "127.0.0.1:65536", "h:-1", "h:x", ""])
def test_bad_metrics_addresses(text):
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_metrics_addr(text)


def test_the_server_picks_a_free_port_serves_its_own_registry_and_stops(capsys):
    class One:
        def collect(self):
            from prometheus_client.core import GaugeMetricFamily
            yield GaugeMetricFamily("evengine_test_value", "a test gauge", value=42)
    server = start_metrics_server("127.0.0.1:0", One())
    try:
        assert server.port > 0 and server.url == f"http://127.0.0.1:{server.port}/metrics"
        assert capsys.readouterr().err.strip() == f"metrics on {server.url}"
        with urllib.request.urlopen(server.url, timeout=10) as r:
            m = parse(r.read().decode())
        assert value(m, "evengine_test_value") == 42 and value(m, "process_open_fds") > 0
        with pytest.raises(MetricsBindError, match="cannot serve metrics"):
            start_metrics_server(f"127.0.0.1:{server.port}", announce=False)
        other = MetricsServer(new_registry(), "127.0.0.1", 0)      # a second registry: nothing global clashes
        other.close()
    finally:
        server.close()
    with pytest.raises(OSError):
        urllib.request.urlopen(server.url, timeout=5)


def test_commit_stats_keep_constant_memory_and_recent_percentiles():
    st = CommitStats(window=100)
    for i in range(1, 1001):       # 1..1000 ms
        st.record(i * 1_000_000, i % 300)
    assert len(st.latencies_ns) == 100 and st.batches == 1000 and st.events == sum(i % 300 for i in range(1, 1001))
    assert st.percentile_ms(50) == 951.0 and st.percentile_ms(99) == 1000.0    # the last 100: 901..1000 ms
    assert sum(st.latency_counts) == 1000 and sum(st.batch_counts) == 1000
    assert st.latency_sum_ns == sum(i * 1_000_000 for i in range(1, 1001))
    bounds = st.LATENCY_BOUNDS_NS
    assert st.latency_counts[bounds.index(1_000_000)] == 1                     # exactly 1 ms
    assert st.latency_counts[-1] == 0 and st.latency_counts[bounds.index(1_000_000_000)] == 500   # 501..1000 ms
    assert st.batch_counts[0] == 7          # at or below 1 event: i % 300 == 0 (3 times) or 1 (4 times)
    assert CommitStats().percentile_ms(99) == 0.0


# --------------------------------------------------------------------- engine
def test_engine_collector_agrees_with_the_run_summary(tmp_path):
    e = engine(tmp_path, snapshot_every=3000)
    e.open()
    collector = EngineCollector(e)
    s = e.run(SyntheticSource(8000, 5, accounts=30))
    text = generate_latest(new_registry(collector)).decode()
    m = parse(text)
    commands = series(m, "evengine_commands_total")
    assert sum(commands.values()) == s.commands == 8000 + 2 * 30 + 3
    assert value(m, "evengine_commands_total", kind="deposit") == 60
    assert value(m, "evengine_commands_total", kind="add_asset") == 2
    assert value(m, "evengine_commands_total", kind="add_symbol") == 1
    # rejects by reason sum to the summary's, and a reason the flow has is there
    assert sum(series(m, "evengine_rejects_total").values()) == s.rejects > 0
    assert value(m, "evengine_rejects_total", reason="INSUFFICIENT_FUNDS") > 0
    assert value(m, "evengine_rejects_total", reason="POST_ONLY_WOULD_TAKE") == 0     # every reason, zero or not
    assert value(m, "evengine_events_total", kind="trade") == s.trades > 0
    assert value(m, "evengine_events_total", kind="rejected") == s.rejects
    assert value(m, "evengine_last_seq") == value(m, "evengine_durable_seq") == s.last_seq == s.events
    assert value(m, "evengine_match_sequence") == s.match_sequence
    assert value(m, "evengine_ledger_seq") == e.matcher.accounts.ledger_seq > 0
    assert value(m, "evengine_batch_events_sum") == s.events
    assert value(m, "evengine_commit_latency_seconds_count") == e.wal.stats.batches > 0
    assert value(m, "evengine_commit_latency_seconds_sum") == pytest.approx(e.wal.stats.latency_sum_ns / 1e9)
    assert value(m, "evengine_fsyncs_total") == s.fsyncs
    assert value(m, "evengine_fork_pause_seconds_count") == s.snapshots == len(s.fork_pauses_ms) >= 1   # a snapshot is skipped while the last one still runs
    assert value(m, "evengine_snapshot_duration_seconds_count") == s.snapshots
    assert value(m, "evengine_snapshot_duration_seconds_sum") > 0
    assert value(m, "evengine_snapshot_running") == 0 and value(m, "evengine_snapshot_failures_total") == 0
    assert value(m, "evengine_snapshot_seq") == max(int(p.name[5:25]) for p in (tmp_path / "data" / "snapshots")
                                                    .glob("snap-*.evsnap"))
    assert value(m, "evengine_wal_segments") >= 1 and value(m, "evengine_wal_bytes") > 0
    assert value(m, "evengine_event_buffer_events") == s.events
    assert value(m, "evengine_engine_info", shard="0", data_dir=str(tmp_path / "data")) == 1
    kinds = families(text)
    for name, kind in (("evengine_commands", "counter"), ("evengine_rejects", "counter"),
                       ("evengine_commit_latency_seconds", "histogram"), ("evengine_batch_events", "histogram"),
                       ("evengine_fork_pause_seconds", "histogram"), ("evengine_snapshot_age_seconds", "gauge"),
                       ("evengine_fsync_seconds", "counter"), ("evengine_wal_bytes", "gauge")):
        assert kinds[name] == kind, name
    assert not any(n.startswith("evengine_kafka") for n in kinds)          # no bridge, no Kafka metrics


def test_counts_are_of_this_process_after_a_restart(tmp_path):
    first = engine(tmp_path)
    first.open()
    first.run(SyntheticSource(2000, 3))
    again = engine(tmp_path)
    again.open()
    collector = EngineCollector(again)
    s = again.run(SyntheticSource(3000, 3))     # resumes after the 2,000 commands: 1,000 more
    m = scrape_registry(collector)
    assert s.commands == 1000 and sum(series(m, "evengine_commands_total").values()) == 1000
    assert value(m, "evengine_events_total", kind="trade") == s.trades
    assert value(m, "evengine_last_seq") == s.last_seq > s.events


def test_a_command_the_matcher_cannot_read_is_counted_as_unknown(tmp_path):
    e = engine(tmp_path)
    e.open()
    try:
        e.submit((99, 1, "x", None, 0))              # an unknown kind: rejected MALFORMED
        e.submit(("place", 1, "x", None, 0))         # not even an int
        e.end_batch()
        m = scrape_registry(EngineCollector(e))
    finally:
        e.close()
    assert value(m, "evengine_commands_total", kind="unknown") == 2
    assert value(m, "evengine_rejects_total", reason="MALFORMED") == 2


def test_an_engine_not_yet_open_still_answers_a_scrape(tmp_path):
    m = scrape_registry(EngineCollector(engine(tmp_path)))
    assert value(m, "evengine_commands_total", kind="place") == 0
    assert ("evengine_last_seq", ()) not in m


# ------------------------------------------------------------------ consumers
def test_consumer_collector_reads_the_loop_and_its_store(tmp_path):
    run_engine(tmp_path / "eng", [("AAA", 1, 1500)])
    values = [encode_trade(*t) for t in wal_trades(tmp_path / "eng")]
    assert len(values) > 100
    db_url = f"sqlite:///{tmp_path / 'th.sqlite'}"
    loop = StoreConsumer(LoopConfig(name="trades-consumer", bootstrap_servers="127.0.0.1:1", topics=("trades",),
                                    group="g"), lambda: TradeStore(open_database(db_url)))
    m = scrape_registry(ConsumerCollector(loop))            # before it runs: zeros, no partitions
    assert value(m, "evengine_consumer_batches_total", consumer="trades-consumer") == 0
    assert series(m, "evengine_consumer_position") == {}

    # What the loop does per batch, done here with the real store (no broker): apply, count, time.
    store = loop.store = loop.open_store()
    try:
        total = ApplyCounts()
        half = len(values) // 2
        for batch in (values[:half], values[half:] + [b"not a trade"]):
            first = store.positions.get(("trades", 0), 0)
            records = [Record("trades", 0, first + i, v) for i, v in enumerate(batch)]
            counts = store.apply(records)
            loop.stats.records += len(records)
            loop.stats.batches += 1
            total.add(counts)
            loop.stats.counts = total
            loop.apply_seconds.observe(0.004)
        m = scrape_registry(ConsumerCollector(loop))
    finally:
        store.close()
    c = {"consumer": "trades-consumer"}
    assert value(m, "evengine_consumer_position", topic="trades", partition="0", **c) == len(values) + 1
    assert value(m, "evengine_consumer_applied_total", what="stored", **c) == len(values)
    assert value(m, "evengine_consumer_applied_total", what="malformed", **c) == 1
    assert value(m, "evengine_consumer_records_total", **c) == len(values) + 1
    assert value(m, "evengine_consumer_db_commit_seconds_count", **c) == 2
    assert value(m, "evengine_consumer_db_commit_seconds_bucket", le="0.005", **c) == 2
    assert value(m, "evengine_consumer_db_commit_seconds_bucket", le="0.0025", **c) == 0
    assert value(m, "evengine_consumer_gaps_open", **c) == 0
    assert series(m, "evengine_kafka_consumer_lag") == {}        # no Kafka consumer: no high watermark known
