"""The broker stops while the engine runs: nothing acknowledged, nothing lost, and it resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from recovery.time_travel import open_data_dir
from tests.kafka.conftest import BROKER_SCRIPT
from tests.kafka.test_engine_kafka import assert_trades_topic_matches_wal
from tests.support.kafka import EngineProcess, produce, synthetic_orders


@pytest.fixture
def private_broker(tmp_path, kafka_bootstrap):
    """A broker of this test's own (the shared one must stay up): ``(bootstrap, env)``."""
    env = dict(os.environ, KAFKA_RUN_DIR=str(tmp_path / "broker"))
    out = subprocess.run([str(BROKER_SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    boot = next(l.split("=", 1)[1] for l in out.stdout.splitlines() if l.startswith("KAFKA_BOOTSTRAP_SERVERS="))
    try:
        yield boot, env
    finally:
        subprocess.run([str(BROKER_SCRIPT), "stop"], env=env, capture_output=True, timeout=120)


def wait_published(data_dir: Path, match_id: int, timeout_s: float = 120.0) -> None:
    """Poll the engine's published watermark until Kafka acknowledged ``match_id``."""
    path = data_dir / "kafka-published.json"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if json.loads(path.read_text())["match_id"] >= match_id:
                return
        except (OSError, ValueError, KeyError):
            pass
        assert time.monotonic() < deadline, f"trades up to match_id {match_id} not acknowledged in {timeout_s} s"
        time.sleep(0.1)


def _broker_pid(env: dict) -> int:
    text = (Path(env["KAFKA_RUN_DIR"]) / "env").read_text()
    return int(next(l.split("=", 1)[1] for l in text.splitlines() if l.startswith("KAFKA_PID=")))


@pytest.mark.parametrize("how", ["stopped", "killed"])
def test_broker_down_then_back_loses_nothing(tmp_path, private_broker, how):
    """The broker is stopped (SIGTERM, clean) or killed (SIGKILL) right while
    the engine works through a backlog: the engine stays up, applies nothing
    new while it is away, and once it is back resumes and gets every trade
    out; nothing lost, nothing applied twice."""
    boot, env = private_broker
    orders, trades = "orders", "trades"
    values = synthetic_orders(100_000, seed=11)
    offsets = produce(boot, orders, values[:90_000])
    eng = EngineProcess(tmp_path / "d", boot, orders, trades)
    eng.wait_position(f"kafka:{orders}:0", 2000)     # it is working through the backlog
    if how == "stopped":
        subprocess.run([str(BROKER_SCRIPT), "pause"], env=env, check=True, capture_output=True, timeout=120)
    else:
        os.kill(_broker_pid(env), signal.SIGKILL)
        deadline = time.monotonic() + 30
        while subprocess.run([str(BROKER_SCRIPT), "status"], env=env, capture_output=True).returncode == 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    # the engine keeps running: it applies what it had already fetched, then
    # nothing more while the broker is away
    deadline = time.monotonic() + 30
    stalled = eng.status()
    while True:
        time.sleep(0.5)
        now = eng.status()
        if now["positions"] == stalled["positions"]:
            break
        assert time.monotonic() < deadline, "the engine kept applying orders with no broker"
        stalled = now
    time.sleep(1.5)
    during = eng.status()
    assert eng.proc.poll() is None
    assert during["positions"] == stalled["positions"]
    assert during["last_seq"] == stalled["last_seq"] == during["durable_seq"]
    subprocess.run([str(BROKER_SCRIPT), "resume"], env=env, check=True, capture_output=True, timeout=120)
    offsets += produce(boot, orders, values[90_000:])
    st = eng.wait_position(f"kafka:{orders}:0", offsets[-1], timeout_s=120)
    # and its trades flow again: Kafka acknowledges every one (the published watermark)
    wait_published(tmp_path / "d", st["match_sequence"])
    summary = eng.stop()
    assert offsets == list(range(len(values)))
    assert summary["kafka"]["orders"] == len(values)
    cmds = [obj.source_pos for _, obj in open_data_dir(str(tmp_path / "d")).events() if obj[0] < 64]
    assert cmds == offsets
    # every trade reached `trades` (some maybe twice), none lost
    assert_trades_topic_matches_wal(boot, trades, tmp_path / "d")


def test_engine_stopped_while_the_broker_is_down_publishes_the_rest_at_next_start(tmp_path, private_broker):
    """SIGTERM with the broker gone: the engine exits cleanly (bounded wait),
    trades it could not get out stay above the published watermark, and the
    next start publishes them again from the WAL."""
    boot, env = private_broker
    values = synthetic_orders(60_000, seed=12)
    offsets = produce(boot, "orders", values)
    eng = EngineProcess(tmp_path / "d", boot, "orders", "trades")
    eng.wait_position("kafka:orders:0", 5000)
    os.kill(_broker_pid(env), signal.SIGKILL)
    summary = eng.stop(timeout_s=120)
    assert summary["kafka"]["trades_published"] < summary["trades"]   # some never got out
    subprocess.run([str(BROKER_SCRIPT), "resume"], env=env, check=True, capture_output=True, timeout=120)
    eng = EngineProcess(tmp_path / "d", boot, "orders", "trades")
    eng.wait_position("kafka:orders:0", offsets[-1], timeout_s=120)
    second = eng.stop()
    assert second["kafka"]["republished"] > 0
    assert "republishing" in eng.stderr()
    assert_trades_topic_matches_wal(boot, "trades", tmp_path / "d")
