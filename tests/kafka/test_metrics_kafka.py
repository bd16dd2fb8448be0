"""`/metrics` of `evengine start --kafka` and `evengine trades-consumer`
against a real broker: per-partition consumer lag and positions, the
published watermarks' lag, what the consumer applied and its database
commits, scraped over HTTP and parsed with prometheus_client's parser."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys

from tests.support.crash import eventually
from tests.support.kafka import ROOT, EngineProcess, produce, synthetic_orders
from tests.support.metrics import Lines, parse, scrape, series, value

DEADLINE = 120.0


def test_engine_and_trades_consumer_export_lag_positions_and_watermarks(tmp_path, kafka_bootstrap, make_topics):
    t = make_topics("orders", "trades", "ledger")
    values = synthetic_orders(3000, seed=11)
    offsets = produce(kafka_bootstrap, t["orders"], values)
    eng = EngineProcess(tmp_path / "d", kafka_bootstrap, t["orders"], t["trades"], "--ledger-topic", t["ledger"],
                        "--metrics", "127.0.0.1:0")
    url = eng.ready["metrics_url"]
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/metrics", url)
    part = {"topic": t["orders"], "partition": "0"}
    try:
        st = eng.wait_position(f"kafka:{t['orders']}:0", offsets[-1])

        def caught_up() -> dict:
            m = parse(scrape(url))
            done = (value(m, "evengine_published_watermark_lag", topic=t["trades"]) == 0
                    and value(m, "evengine_published_id", topic=t["trades"]) == st["match_sequence"]
                    and value(m, "evengine_kafka_high_watermark", **part) == len(values))
            return m if done else {}
        m = eventually(caught_up, timeout=DEADLINE, interval=0.1, what="the trades published and the lag known")
    finally:
        summary = eng.stop()
    assert st["match_sequence"] > 100
    assert value(m, "evengine_kafka_consumer_position", **part) == offsets[-1] + 1 == len(values)
    assert value(m, "evengine_kafka_consumer_lag", **part) == 0
    assert value(m, "evengine_published_records_total", topic=t["trades"]) == st["match_sequence"]
    assert value(m, "evengine_published_watermark_lag", topic=t["ledger"]) == 0
    assert value(m, "evengine_kafka_orders_total") == len(values) == summary["kafka"]["orders"]
    assert sum(series(m, "evengine_commands_total").values()) == len(values)
    assert value(m, "evengine_durable_seq") == value(m, "evengine_last_seq") == summary["last_seq"]

    # The trade history reads the trades topic; it must end with no lag and every trade stored once.
    db = tmp_path / "trades.sqlite"
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "trades-consumer", "--kafka", kafka_bootstrap,
                             "--topic", t["trades"], "--group", f"th-{t['trades']}", "--db", str(db),
                             "--max-records", "200", "--poll-ms", "100", "--metrics", "127.0.0.1:0"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = Lines(proc.stdout), Lines(proc.stderr)
    trades = summary["match_sequence"]
    tpart = {"consumer": "trades-consumer", "topic": t["trades"], "partition": "0"}
    try:
        curl = err.metrics_url()

        def stored() -> dict:
            m = parse(scrape(curl))
            done = (m.get(("evengine_consumer_applied_total", (("consumer", "trades-consumer"), ("what", "stored"))))
                    == trades and value(m, "evengine_consumer_position", **tpart) > 0
                    and ("evengine_kafka_consumer_lag", tuple(sorted(tpart.items()))) in m)
            return m if done else {}
        cm = eventually(stored, timeout=DEADLINE, interval=0.1, what=f"{trades} trades stored")
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    assert code == 0, "".join(err.lines)[-3000:]
    end = json.loads(out.wait_for(re.compile(r"^\{.*\}$"), timeout=30).group(0))
    assert end["stored"] == trades
    c = {"consumer": "trades-consumer"}
    assert value(cm, "evengine_consumer_position", **tpart) == end["positions"][f"{t['trades']}:0"]
    assert value(cm, "evengine_kafka_consumer_lag", **tpart) == 0
    assert value(cm, "evengine_consumer_records_total", **c) >= trades
    batches = value(cm, "evengine_consumer_batches_total", **c)
    assert batches >= trades / 200 and value(cm, "evengine_consumer_db_commit_seconds_count", **c) == batches
    assert value(cm, "evengine_consumer_db_commit_seconds_sum", **c) > 0
    assert value(cm, "evengine_consumer_applied_total", what="malformed", **c) == 0
    assert value(cm, "evengine_consumer_gaps_open", **c) == 0
    assert value(cm, "evengine_consumer_stopped_by_error", **c) == 0
    assert value(cm, "evengine_consumer_db_reconnects_total", **c) == 0
    assert "process_cpu_seconds_total" in {n for n, _ in cm}
