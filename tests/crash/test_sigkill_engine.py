"""SIGKILL a running ``evengine start`` at random moments, restart it, and
check it ends exactly where an uninterrupted run ends (same state hash), with
a WAL whose every logged trade replay reproduces."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from recovery import open_data_dir, verify
from tests.support.crash import ROOT, eventually, kill_after, run_to_end, start, wal_state

# Small segments and frequent snapshots, so that kills land during segment
# rotations and while snapshot children are writing; 1,000 funded accounts with
# risk on, so that balances, holds and the ledger must come back exact too.
ARGS = ("--segment-size-mb", "0.25", "--snapshot-every", "8000", "--snapshot-retain", "2", "--accounts", "1000")
SOURCE = "synthetic:150000:11"


def test_sigkill_at_random_points_then_restart_matches_uninterrupted_run(tmp_path):
    seed = int(os.environ.get("EVENGINE_CRASH_SEED", random.randrange(1 << 30)))
    print(f"crash seed {seed}")
    rng = random.Random(seed)
    t0 = time.monotonic()
    reference = run_to_end(tmp_path / "reference", SOURCE, *ARGS)
    work = max(0.5, reference["seconds"])           # matching time, without start-up
    startup = max(0.1, time.monotonic() - t0 - work)

    data = tmp_path / "crashed"
    kills = 0
    during_rotation = during_snapshot = 0
    summary = None
    # At least 20 kills, at random moments spread over a run (recovery included).
    while summary is None:
        proc = start(data, SOURCE, *ARGS)
        # Some kills land in start-up and recovery, most while matching.
        delay = startup * rng.uniform(0.3, 1.0) + rng.uniform(0, work / 18) if kills < 30 else 600.0
        seen: dict = {}
        summary = kill_after(proc, delay, seen)
        if summary is None:
            kills += 1
            left = wal_state(data)
            during_rotation += len(left["raw_segments"]) > 1
            during_snapshot += bool(left["snapshot_tmp"]) or seen.get("children", 0) > 1
    print(f"kills {kills}, during rotation {during_rotation}, during snapshot {during_snapshot}")
    assert kills >= 20
    # Kill points are random; with 0.25 MB segments and a snapshot every 8,000
    # events, about two thirds land around a rotation and a quarter while a
    # snapshot child runs (0 of 30 would be a ~1e-4 event).
    assert during_rotation >= 1 and during_snapshot >= 1
    assert summary["state_hash"] == reference["state_hash"]
    assert summary["last_seq"] == reference["last_seq"]
    assert summary["match_sequence"] == reference["match_sequence"]
    report = verify(str(data))
    assert report["mismatches"] == 0 and report["state_hash"] == reference["state_hash"]
    assert report["snapshot_mismatches"] == []
    crashed, uninterrupted = (open_data_dir(str(d)) for d in (data, tmp_path / "reference"))
    got = crashed.balance_report(crashed.last_seq)
    assert got == uninterrupted.balance_report(uninterrupted.last_seq)
    assert got["totals_equal_supply"] and got["ledger_seq"] > 0 and len(got["balances"]) > 1000


def test_kill_during_snapshot_child_write_recovers(tmp_path):
    """Kill the engine while a snapshot child is writing (a large book makes
    the child take a while); the restart ignores the partial snapshot."""
    data = tmp_path / "d"
    reference = run_to_end(tmp_path / "ref", "synthetic:120000:5", "--snapshot-every", "0")
    proc = start(data, "synthetic:120000:5", "--snapshot-every", "30000")
    eventually(lambda: (data / "snapshots").exists() and any((data / "snapshots").glob("*.tmp"))
               or any((data / "snapshots").glob("*.evsnap")), timeout=60, interval=0.001,
               what="a snapshot being written")
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    summary = run_to_end(data, "synthetic:120000:5", "--snapshot-every", "30000")
    assert summary["state_hash"] == reference["state_hash"]


def test_killed_snapshot_child_leaves_engine_running(tmp_path):
    """SIGKILL the forked snapshot child: the engine logs the failure, keeps
    its previous snapshots and goes on to the end."""
    data = tmp_path / "d"
    reference = run_to_end(tmp_path / "ref", "synthetic:200000:3", "--snapshot-every", "0")
    proc = start(data, "synthetic:200000:3", "--snapshot-every", "25000")
    engine_pid = proc.pid

    def snapshot_child():
        out = subprocess.run(["ps", "-o", "pid=,ppid=", "--ppid", str(engine_pid)], capture_output=True, text=True).stdout
        pids = [int(line.split()[0]) for line in out.strip().splitlines()]
        # The first child is the WAL syncer (started at open); any later one is a snapshot writer.
        return sorted(pids)[1:] if len(pids) > 1 else None

    try:
        children = eventually(snapshot_child, timeout=60, interval=0.001, what="a snapshot child")
        for pid in children:
            os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["state_hash"] == reference["state_hash"]
