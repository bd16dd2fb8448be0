"""``evengine wal prune`` and ``evengine start --wal-retain`` as a user runs
them: real processes, real files, an engine running (and SIGKILLed) while
the WAL is pruned under it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from tests.support.crash import ROOT, eventually, run_to_end, start
from tests.support.files import flip_byte

EV = [sys.executable, "-m", "engine.cli"]
SMALL = ("--segment-size-mb", "0.015", "--snapshot-every", "3000")


def ev(*args, check=True):
    proc = subprocess.run([*EV, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def seg_names(d):
    return sorted(n for n in os.listdir(d / "wal") if n.startswith("wal-"))


def test_wal_prune_dry_run_json_then_prune_and_pruned_ranges_exit_3(tmp_path):
    summary = run_to_end(tmp_path, "synthetic:15000:4", *SMALL)
    before = seg_names(tmp_path)
    dry = json.loads(ev("wal", "prune", "--data-dir", str(tmp_path), "--before-seq", "1000000000", "--dry-run",
                        "--json").stdout)
    assert dry["dry_run"] and not dry["applied"] and dry["would_remove"] and seg_names(tmp_path) == before
    assert dry["removed"] == [] and dry["bytes_freed"] == 0
    assert dry["bytes_to_free"] == sum(s["bytes"] for s in dry["would_remove"]) > 0
    assert dry["rule"] == "oldest valid snapshot" and dry["floor"] == dry["base_snapshot_seq"] + 1
    done = json.loads(ev("wal", "prune", "--data-dir", str(tmp_path), "--before-seq", "1000000000",
                         "--json").stdout)
    assert done["applied"] and done["removed"] == dry["would_remove"] and done["bytes_freed"] == dry["bytes_to_free"]
    assert seg_names(tmp_path) == sorted(set(before) - {s["segment"] for s in done["removed"]})
    first = done["pruned_before_seq"]
    assert first > 1 and json.load(open(tmp_path / "wal" / "retention.json"))["pruned_before_seq"] == first
    # Pruned ranges: one line, exit 3, no traceback.
    for args in (("replay", "--from-seq", "1", "--to-seq", "5"),
                 ("inspect", "--at-seq", "10", "--symbol", "SYN")):
        proc = ev(*args, "--data-dir", str(tmp_path), check=False)
        assert proc.returncode == 3, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: PrunedRangeError: seqs 1..")
        assert "earliest seq" in lines[0] and "retention.json" in lines[0]
    out = ev("replay", "--data-dir", str(tmp_path), "--to-seq", str(first + 2)).stdout.splitlines()
    assert [json.loads(x)["seq"] for x in out] == [first, first + 1, first + 2]
    book = json.loads(ev("inspect", "--data-dir", str(tmp_path), "--at-seq", str(summary["last_seq"]),
                         "--symbol", "SYN", "--json").stdout)
    assert book["seq"] == summary["last_seq"]
    report = json.loads(ev("verify", "--data-dir", str(tmp_path), "--json").stdout)
    assert report["mismatches"] == 0 and report["state_hash"] == summary["state_hash"]
    assert report["pruned_before_seq"] == first and report["wal_problems"] == []
    human = ev("wal", "prune", "--data-dir", str(tmp_path), "--before-seq", "1000000000").stdout
    assert "nothing to remove" in human and "rule: oldest valid snapshot" in human
    # Restarting on the pruned directory resumes where it was.
    again = run_to_end(tmp_path, "synthetic:15000:4", *SMALL)
    assert again["commands"] == 0 and again["state_hash"] == summary["state_hash"]


def test_wal_prune_needs_a_bound_and_a_valid_policy(tmp_path):
    run_to_end(tmp_path, "synthetic:2000:4")
    assert ev("wal", "prune", "--data-dir", str(tmp_path), check=False).returncode == 2
    bad = ev("wal", "prune", "--data-dir", str(tmp_path), "--wal-retain", "3 weeks", check=False)
    assert bad.returncode == 2 and "--wal-retain" in bad.stderr
    bad = ev("start", "--source", "synthetic:10", "--data-dir", str(tmp_path), "--wal-retain", "x", check=False)
    assert bad.returncode == 2 and "--wal-retain" in bad.stderr and "Traceback" not in bad.stderr


def test_all_snapshots_damaged_after_a_prune_start_fails_naming_the_pruned_range(tmp_path):
    run_to_end(tmp_path, "synthetic:15000:4", *SMALL)
    ev("wal", "prune", "--data-dir", str(tmp_path), "--before-seq", "1000000000")
    for name in os.listdir(tmp_path / "snapshots"):
        flip_byte(tmp_path / "snapshots" / name, 100, 0xFF)
    proc = ev("start", "--source", "synthetic:15000:4", "--data-dir", str(tmp_path), "--no-progress", check=False)
    assert proc.returncode == 1
    assert "were pruned" in proc.stderr and "retention.json" in proc.stderr and "Traceback" not in proc.stderr
    report = json.loads(ev("verify", "--data-dir", str(tmp_path), "--json", check=False).stdout)
    assert report["wal_problems"] and report["pruned_before_seq"] > 1


def test_start_with_wal_retain_prunes_after_snapshots(tmp_path):
    summary = run_to_end(tmp_path, "synthetic:30000:4", *SMALL, "--wal-retain", "4000")
    assert summary["wal_segments_pruned"] > 0 and summary["wal_bytes_freed"] > 0
    rec = json.load(open(tmp_path / "wal" / "retention.json"))
    assert rec["version"] == 1 and rec["pruned_before_seq"] <= summary["last_seq"] - 4000 + 1
    assert os.path.exists(tmp_path / "snapshots" / f"snap-{rec['base_snapshot_seq']:020d}.evsnap")
    ref = run_to_end(tmp_path / "ref", "synthetic:30000:4", *SMALL)
    assert summary["state_hash"] == ref["state_hash"]
    report = json.loads(ev("verify", "--data-dir", str(tmp_path), "--json").stdout)
    assert report["mismatches"] == 0 and report["wal_problems"] == [] and report["snapshots_checked"] >= 1


def test_prune_while_the_engine_writes_then_sigkill_and_recover(tmp_path):
    src = "synthetic:40000:6"
    ref = run_to_end(tmp_path / "ref", src, *SMALL)
    d = tmp_path / "live"
    # 0.004 x a 1 us clock: ~4,000 commands/s, about 10 s for the flow.
    eng = start(d, src, *SMALL, "--speed", "0.004")
    removed = 0
    try:
        eventually(lambda: (d / "control.sock").exists(), timeout=60, what="the engine")
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            out = ev("wal", "prune", "--data-dir", str(d), "--wal-retain", "1500", "--json")
            removed += len(json.loads(out.stdout)["removed"])
            time.sleep(0.3)
        assert eng.poll() is None, "the engine must still be running when killed"
        eng.send_signal(signal.SIGKILL)
        eng.communicate(timeout=60)
    finally:
        if eng.poll() is None:
            eng.kill()
            eng.communicate()
    assert removed > 0, "the online prunes must have removed segments"
    rec = json.load(open(d / "wal" / "retention.json"))
    assert seg_names(d)[0] == f"wal-{rec['pruned_before_seq']:020d}.seg.zst"
    report = json.loads(ev("verify", "--data-dir", str(d), "--json").stdout)
    assert report["mismatches"] == 0 and report["wal_problems"] == [] and report["damaged_snapshots"] == []
    # Recover and finish the flow: the same state as a run that was never pruned or killed.
    end = run_to_end(d, src, *SMALL)
    assert end["state_hash"] == ref["state_hash"] and end["last_seq"] == ref["last_seq"]
