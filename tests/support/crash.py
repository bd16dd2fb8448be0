"""Crash harness: run ``evengine start`` as a real process, SIGKILL it, restart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[2]


def engine_cmd(data_dir: Path, source: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "engine.cli", "start", "--source", source, "--data-dir", str(data_dir),
            "--json", "--no-progress", "--no-verbose", *extra]


def run_to_end(data_dir: Path, source: str, *extra: str, timeout: float = 600) -> dict:
    """Run the engine until its source ends; return the JSON summary."""
    proc = subprocess.run(engine_cmd(data_dir, source, *extra), cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"engine failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def start(data_dir: Path, source: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(engine_cmd(data_dir, source, *extra), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def children(pid: int) -> list[int]:
    """Child pids of ``pid`` (the WAL syncer first, then snapshot writers)."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return sorted(int(x) for x in out.split())


def kill_after(proc: subprocess.Popen, delay: float, seen: Optional[dict] = None) -> Optional[dict]:
    """SIGKILL ``proc`` after ``delay`` seconds; if it ended by itself first,
    return its JSON summary (else None). ``seen["children"]`` gets the number
    of its child processes just before the kill (> 1: a snapshot was being written)."""
    try:
        out, err = proc.communicate(timeout=delay)
    except subprocess.TimeoutExpired:
        if seen is not None:
            seen["children"] = len(children(proc.pid))
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        return None
    assert proc.returncode == 0, f"engine failed ({proc.returncode}):\n{err[-3000:]}"
    return json.loads(out.strip().splitlines()[-1])


def eventually(predicate, timeout: float = 30.0, interval: float = 0.01, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value (returned) or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def wal_state(data_dir: Path) -> dict:
    """What a kill left behind: unsealed closed segments (a rotation in
    flight) and snapshot temp files (a snapshot in flight)."""
    wal = data_dir / "wal"
    snaps = data_dir / "snapshots"
    raw = sorted(p.name for p in wal.glob("wal-*.seg")) if wal.exists() else []
    tmp = sorted(p.name for p in snaps.glob("*.tmp")) if snaps.exists() else []
    return {"raw_segments": raw, "snapshot_tmp": tmp}
