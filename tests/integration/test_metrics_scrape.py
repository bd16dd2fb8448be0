"""`/metrics` of real `evengine start` processes, scraped over HTTP and parsed
with prometheus_client's parser: a paced file run (scraped while it runs and
after its summary, kept up by --metrics-linger) and the embedded HTTP
gateway (requests counted by route template and status)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from tests.support.crash import ROOT
from tests.support.metrics import Lines, families, parse, scrape, series, value

EV = [sys.executable, "-m", "engine.cli"]


def _start(*args: str) -> tuple[subprocess.Popen, Lines, Lines]:
    proc = subprocess.Popen([*EV, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, Lines(proc.stdout), Lines(proc.stderr)


def _stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


def test_a_paced_file_run_exports_what_its_summary_says(tmp_path):
    # 6,000 commands of 1 us each at speed 0.001: about 6 s of pacing, risk on (rejects for funds).
    proc, out, err = _start("start", "--source", "synthetic:6000:7", "--accounts", "20", "--speed", "0.001",
                            "--data-dir", str(tmp_path), "--snapshot-every", "2000", "--json", "--no-progress",
                            "--metrics", "127.0.0.1:0", "--metrics-linger", "60")
    try:
        url = err.metrics_url()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/metrics", url) and not url.endswith(":0/metrics")
        # While it runs: the sequence numbers rise and never pass each other the wrong way.
        seen = []
        deadline = time.monotonic() + 60
        while len(seen) < 3 and time.monotonic() < deadline:
            m = parse(scrape(url))
            durable, last = value(m, "evengine_durable_seq"), value(m, "evengine_last_seq")
            assert durable <= value(m, "evengine_written_seq") <= last
            if not seen or last > seen[-1]:
                seen.append(last)
            time.sleep(0.3)
        assert len(seen) >= 3, f"last_seq did not rise while the run was paced: {seen}"

        summary = json.loads(out.wait_for(re.compile(r"^\{.*\}$"), timeout=120).group(0))
        text = scrape(url)
        m = parse(text)
        kinds = families(text)
        assert proc.poll() is None, "the process left before --metrics-linger ran out"
    finally:
        assert _stop(proc) == 0, "".join(err.lines)[-3000:]

    assert summary["durable_seq"] == summary["last_seq"] > 0
    assert value(m, "evengine_durable_seq") == value(m, "evengine_last_seq") == summary["last_seq"]
    assert value(m, "evengine_match_sequence") == summary["match_sequence"]
    commands = series(m, "evengine_commands_total")
    assert sum(commands.values()) == summary["commands"] == 6000 + 2 * 20 + 3   # deposits, assets, symbol
    assert value(m, "evengine_commands_total", kind="deposit") == 40
    assert value(m, "evengine_commands_total", kind="place") > 0 and value(m, "evengine_commands_total",
                                                                           kind="cancel") > 0
    rejects = series(m, "evengine_rejects_total")
    assert sum(rejects.values()) == summary["rejects"] > 0
    assert value(m, "evengine_rejects_total", reason="INSUFFICIENT_FUNDS") > 0
    assert value(m, "evengine_events_total", kind="trade") == summary["trades"] > 0
    # Every WAL event of the run is a command, a trade or a reject, and every one was committed in a frame.
    assert (sum(commands.values()) + value(m, "evengine_events_total", kind="trade")
            + value(m, "evengine_events_total", kind="rejected")) == summary["events"]
    assert value(m, "evengine_batch_events_sum") == summary["events"]
    assert value(m, "evengine_commit_latency_seconds_count") == value(m, "evengine_batch_events_count") > 0
    assert value(m, "evengine_commit_latency_seconds_bucket", le="+Inf") == value(m,
                                                                                  "evengine_commit_latency_seconds_count")
    assert value(m, "evengine_fsyncs_total") == summary["fsyncs"] > 0
    assert value(m, "evengine_fsync_seconds_total") > 0
    assert value(m, "evengine_fork_pause_seconds_count") == len(summary["fork_pauses_ms"]) == summary["snapshots"] > 0
    assert value(m, "evengine_fork_pause_seconds_sum") == pytest.approx(sum(summary["fork_pauses_ms"]) / 1e3,
                                                                        abs=1e-5 * summary["snapshots"])
    assert value(m, "evengine_snapshot_duration_seconds_count") == summary["snapshots"]
    assert 0 <= value(m, "evengine_snapshot_age_seconds") < 120
    assert value(m, "evengine_snapshot_seq") <= summary["last_seq"]
    wal_files = [p for p in (tmp_path / "wal").iterdir() if p.name.endswith((".seg", ".seg.zst"))]
    assert value(m, "evengine_wal_segments") == len(wal_files) >= 1
    assert value(m, "evengine_wal_bytes") == sum(p.stat().st_size for p in wal_files)
    assert value(m, "evengine_event_buffer_events") == min(summary["events"], value(m,
                                                                                    "evengine_event_buffer_capacity"))
    assert kinds["evengine_commands"] == "counter"  # the parser names a counter without _total
    assert kinds["evengine_commit_latency_seconds"] == "histogram"
    assert kinds["evengine_durable_seq"] == "gauge"
    assert value(m, "process_resident_memory_bytes") > 0 and "python_info" in kinds


def test_bad_metrics_addresses_are_refused_before_anything_runs(tmp_path):
    for bad in ("9100", "127.0.0.1:", ":9100", "127.0.0.1:99999", "127.0.0.1:http"):
        proc = subprocess.run([*EV, "start", "--source", "synthetic:10", "--data-dir", str(tmp_path / "d"),
                               "--metrics", bad], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and "--metrics wants HOST:PORT" in proc.stderr, (bad, proc.stderr)
        assert not (tmp_path / "d").exists()
    # the consumers check it before they connect anywhere (no broker here)
    for cmd in (["trades-consumer", "--db", str(tmp_path / "t.db")], ["settle", "--db", str(tmp_path / "s.db")]):
        proc = subprocess.run([*EV, *cmd, "--kafka", "127.0.0.1:1", "--metrics", "9100"], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and proc.stderr.startswith("error:") and "HOST:PORT" in proc.stderr, \
            (cmd, proc.stderr)


def test_the_embedded_gateway_counts_requests_by_route_template_and_status(tmp_path):
    proc, out, err = _start("start", "--http", "127.0.0.1:0", "--data-dir", str(tmp_path), "--add-symbol", "AAA",
                            "--metrics", "127.0.0.1:0", "--no-pin-cpus", "--snapshot-every", "0")
    try:
        ready = json.loads(out.wait_for(re.compile(r"^\{.*\"ready\".*\}$"), timeout=120).group(0))
        base = f"http://127.0.0.1:{ready['http_port']}"
        url = ready["metrics_url"]
        assert url == err.metrics_url()

        def call(method: str, path: str, body=None) -> int:
            data = json.dumps(body).encode() if body is not None else None
            req = urllib.request.Request(base + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    return r.status
            except urllib.error.HTTPError as exc:
                return exc.code

        placed = [call("POST", "/orders", {"symbol": "AAA", "side": side, "price": 100, "qty": 5})
                  for side in ("buy", "sell", "buy")]
        assert placed == [200, 200, 200]
        assert call("POST", "/orders", {"symbol": "AAA", "side": "buy", "price": 100}) == 422      # no qty
        assert call("GET", "/books/AAA") == 200
        assert call("GET", "/books/BBB") == 404
        assert call("GET", "/health") == 200
        assert call("GET", "/no/such/path") == 404
        m = parse(scrape(url))
    finally:
        assert _stop(proc) == 0, "".join(err.lines)[-3000:]

    def requests(route: str, method: str, status: str) -> float:
        return value(m, "evengine_http_requests_total", route=route, method=method, status=status)
    assert requests("/orders", "POST", "200") == 3
    assert requests("/orders", "POST", "422") == 1
    assert requests("/books/{symbol}", "GET", "200") == 1
    assert requests("/books/{symbol}", "GET", "404") == 1
    assert requests("/health", "GET", "200") == 1
    assert requests("unmatched", "GET", "404") == 1
    routes = {dict(labels)["route"] for labels in series(m, "evengine_http_requests_total")}
    assert not any("AAA" in r or "BBB" in r for r in routes), routes      # templates, not raw paths
    assert value(m, "evengine_http_request_duration_seconds_count", route="/orders", method="POST") == 4
    assert value(m, "evengine_commands_total", kind="place") == 3       # the 422 never reached the engine
    assert value(m, "evengine_commands_total", kind="add_symbol") == 1
    assert value(m, "evengine_events_total", kind="trade") == 1
    assert value(m, "evengine_durable_seq") == value(m, "evengine_last_seq")
