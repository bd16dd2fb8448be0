"""scripts/load.py as a user runs it: a small synthetic flow into a real topic, read back and decoded."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from engine.core.commands import BadInput
from engine.io.messages import decode_order, order_from_command
from tests.support.kafka import ROOT, read_topic

LOAD = ROOT / "scripts" / "load.py"


def _load_module():
    spec = importlib.util.spec_from_file_location("evengine_load_script", LOAD)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_load(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(LOAD), *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
def test_synthetic_flow_reaches_the_topic_and_decodes(kafka_bootstrap, make_topics, fmt):
    topic = make_topics("orders", partitions=2)["orders"]
    out = run_load("--source", "synthetic:600:5", "--symbols", "3", "--to", f"kafka:{kafka_bootstrap}:{topic}",
                   "--format", fmt, "--stamp-now", "--json", "--no-progress")
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["orders"] == 603 and summary["format"] == fmt      # 600 orders + 3 add_symbol

    records = read_topic(kafka_bootstrap, topic)
    assert len(records) == 603
    assert {int(p): o for p, o in summary["last_offsets"].items()} == \
        {p: max(r.offset for r in records if r.partition == p) for p in {r.partition for r in records}}
    expected = list(_load_module().synthetic_flow(600, 5, 3))
    by_symbol: dict = {}
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        cmd = decode_order(r.value, source=f"kafka:{topic}:{r.partition}", offset=r.offset, ts_ns=0)
        assert not isinstance(cmd, BadInput), cmd
        assert r.key == cmd.symbol.encode()
        by_symbol.setdefault(cmd.symbol, []).append(cmd)
    assert sorted(by_symbol) == ["SYN0", "SYN1", "SYN2"]
    for symbol, cmds in by_symbol.items():
        want = [o for o in expected if o["symbol"] == symbol]
        got = [order_from_command(c) for c in cmds]
        # one symbol's records stay in order on one partition, the same orders as the flow
        assert [{k: v for k, v in o.items() if k != "ts_ns"} for o in got] == \
            [{k: v for k, v in o.items() if k != "ts_ns"} for o in want]
        stamps = [c.ts_ns for c in cmds]
        # --stamp-now: send-time stamps (ns since the epoch), not the source's (i * 1000 ns)
        assert stamps == sorted(stamps) and min(stamps) > 10**15


def test_bad_source_and_target_are_usage_errors(kafka_bootstrap):
    bad_source = run_load("--source", "nasdaq:foo", "--to", f"kafka:{kafka_bootstrap}")
    assert bad_source.returncode == 2 and "unknown kind 'nasdaq'" in bad_source.stderr
    bad_target = run_load("--source", "synthetic:10", "--to", "ftp://x")
    assert bad_target.returncode == 2 and "--to 'ftp://x'" in bad_target.stderr
