"""Kafka tests: a real broker, found through ``KAFKA_BOOTSTRAP_SERVERS``.

When the variable is unset, the session starts one with the project's own
``scripts/kafka_broker.sh`` (Java 17 and Maven needed) and stops it at the
end. Under CI (``EVENGINE_REQUIRE_KAFKA=1``) a missing broker fails the Kafka
tests instead of skipping them.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BROKER_SCRIPT = ROOT / "scripts" / "kafka_broker.sh"


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/kafka/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.kafka)


def _missing(why: str):
    if os.environ.get("EVENGINE_REQUIRE_KAFKA") == "1":
        pytest.fail(f"no Kafka broker, and CI requires one: {why}")
    pytest.skip(f"no Kafka broker: {why}")


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory) -> str:
    """``host:port`` of a running broker."""
    boot = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if boot:
        yield boot
        return
    if os.environ.get("EVENGINE_NO_AUTO_BROKER") == "1":
        _missing("KAFKA_BOOTSTRAP_SERVERS is unset")
    run_dir = tmp_path_factory.mktemp("kafka-run")
    env = dict(os.environ, KAFKA_RUN_DIR=str(run_dir))
    try:
        out = subprocess.run([str(BROKER_SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        _missing(f"scripts/kafka_broker.sh start failed: {exc}")
    if out.returncode != 0:
        _missing(f"scripts/kafka_broker.sh start exited {out.returncode}: {out.stderr[-2000:]}")
    # The script prints its env file; read the file too (one run printed
    # nothing on stdout though it exited 0 and the broker was up).
    env_file = run_dir / "env"
    lines = out.stdout.splitlines() + (env_file.read_text().splitlines() if env_file.exists() else [])
    boot = next((line.split("=", 1)[1] for line in lines if line.startswith("KAFKA_BOOTSTRAP_SERVERS=")), None)
    if boot is None:
        subprocess.run([str(BROKER_SCRIPT), "stop"], env=env, capture_output=True, timeout=120)
        _missing(f"scripts/kafka_broker.sh start printed no KAFKA_BOOTSTRAP_SERVERS: stdout {out.stdout[-1000:]!r}, "
                 f"stderr {out.stderr[-1000:]!r}")
    os.environ["KAFKA_BOOTSTRAP_SERVERS"] = boot
    try:
        yield boot
    finally:
        subprocess.run([str(BROKER_SCRIPT), "stop"], env=env, capture_output=True, timeout=120)
        os.environ.pop("KAFKA_BOOTSTRAP_SERVERS", None)


async def _create_topics(boot: str, names: list[str], partitions: int) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    admin = AIOKafkaAdminClient(bootstrap_servers=boot)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, partitions, 1) for n in names])
    finally:
        await admin.close()


@pytest.fixture(autouse=True)
def _no_engine_left_behind():
    """Kill any ``evengine start`` a test started and did not stop (a failed test)."""
    from tests.support.kafka import EngineProcess
    yield
    for eng in EngineProcess.running:
        if eng.proc.poll() is None:
            eng.proc.kill()
            eng.proc.wait(timeout=30)
    EngineProcess.running.clear()


@pytest.fixture
def make_topics(kafka_bootstrap):
    """``make_topics(partitions=1, *bases) -> {base: unique topic name}``: fresh
    topics for one test, so tests never see each other's records."""
    def make(*bases: str, partitions: int = 1) -> dict:
        tag = uuid.uuid4().hex[:10]
        names = {b: f"{b}-{tag}" for b in bases}
        asyncio.run(_create_topics(kafka_bootstrap, list(names.values()), partitions))
        return names
    return make
