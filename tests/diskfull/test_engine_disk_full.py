"""``evengine start`` on a real, full tmpfs.

A file run exits 74 with one line naming the path, the error and the free
space; its directory is whole and a run with space finishes it exactly. A
service stops acknowledging, says why on ``/health``, refuses new commands,
waits, and goes on by itself once there is space; every order it
acknowledged survives a SIGKILL. A snapshot that does not fit fails cleanly
(nothing half published) and the next one succeeds. A dead WAL syncer stops
the service with the same one line and exit 74.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from recovery import open_data_dir
from tests.support.crash import ROOT, children, engine_cmd, eventually, run_to_end
from tests.support.tmpfs import Ballast, resize, tmpfs

EXIT_IO = 74
SOURCE = "synthetic:150000:11"


def _verify(data_dir: Path) -> dict:
    proc = subprocess.run([sys.executable, "-m", "engine.cli", "verify", "--data-dir", str(data_dir), "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def test_a_file_run_on_a_full_disk_exits_74_with_one_line_and_finishes_exactly_with_space(tmp_path):
    ref = run_to_end(tmp_path / "ref", SOURCE, "--snapshot-every", "0")
    with tmpfs(tmp_path / "mnt", "2m") as disk:
        data = disk / "d"
        proc = subprocess.run(engine_cmd(data, SOURCE, "--snapshot-every", "0", "--segment-size-mb", "0.5"),
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert proc.returncode == EXIT_IO, proc.stderr
        assert "Traceback" not in proc.stderr
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, proc.stderr
        line = errors[0]
        assert line.startswith("error: WAL write failed: No space left on device (errno 28, ENOSPC) writing "
                               f"{data / 'wal'}/wal-"), line
        assert "free space: " in line and "bytes" in line and "nothing after seq" in line
        assert proc.stdout == ""

        # the directory is whole: no torn frame to cut, replay agrees with the log
        resize(disk, "256m")
        report = _verify(data)
        assert report["torn_tail"] is None and report["mismatches"] == 0
        assert 0 < report["last_seq"] < ref["last_seq"]
        # with space the run resumes after the last durable row and ends exactly as on a big disk
        done = run_to_end(data, SOURCE, "--snapshot-every", "0")
        assert (done["last_seq"], done["match_sequence"], done["state_hash"]) == \
            (ref["last_seq"], ref["match_sequence"], ref["state_hash"])


class Service:
    """``evengine start --http`` on a data directory, stderr to a file."""

    def __init__(self, data_dir: Path, log: Path, *extra: str) -> None:
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "engine.cli", "start", "--http", "127.0.0.1:0", "--data-dir", str(data_dir),
             "--add-symbol", "AAA", "--snapshot-every", "0", "--no-verbose", *extra],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=open(log, "w"), text=True)
        line = self.proc.stdout.readline()
        assert line, f"the engine did not start: {log.read_text()[-3000:]}"
        ready = json.loads(line)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{ready['http_port']}", timeout=60)

    def order(self, i: int) -> httpx.Response:
        # resting bids, never crossing: every acknowledged one stays in the book
        return self.http.post("/orders", json={"symbol": "AAA", "side": "buy", "price": 1000 + i * 7919 % 500,
                                               "qty": 1, "order_id": i})

    def health(self) -> httpx.Response:
        return self.http.get("/health")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.http.close()


def _order_ids_in_wal(data_dir: Path) -> list[int]:
    return [obj.order_id for _, obj in open_data_dir(str(data_dir)).events()
            if obj[0] < 64 and getattr(obj, "order_id", None) is not None and obj.__class__.__name__ == "PlaceOrder"]


def test_a_service_on_a_full_disk_waits_says_why_and_goes_on_by_itself(tmp_path):
    with tmpfs(tmp_path / "mnt", "8m") as disk:
        data = disk / "d"
        svc = Service(data, tmp_path / "engine.log")
        pool = cf.ThreadPoolExecutor(2)
        acked: list[int] = []
        try:
            assert svc.order(1).status_code == 200
            acked.append(1)
            ballast = Ballast(disk)
            ballast.fill()
            stalled = None
            for i in range(2, 2000):
                fut = pool.submit(svc.order, i)
                try:
                    r = fut.result(timeout=2.0)
                except cf.TimeoutError:
                    stalled = (i, fut)      # matched, not written: no answer yet
                    break
                assert r.status_code == 200, r.text
                acked.append(i)
            assert stalled is not None, "the disk never filled"

            health = svc.health()
            assert health.status_code == 503
            body = health.json()
            assert body["status"] == "degraded"
            assert "No space left on device" in body["reason"] and f"{data / 'wal'}/wal-" in body["reason"]
            assert "free space" in body["reason"]
            assert body["durable_seq"] < body["last_seq"]
            refused = svc.order(9_999)
            assert refused.status_code == 503 and "takes no commands" in refused.text
            assert svc.http.get("/books/AAA").status_code == 503
            time.sleep(0.5)          # several retries, still one log line
            assert not stalled[1].done()

            ballast.free(-1)
            r = stalled[1].result(timeout=30)
            assert r.status_code == 200, r.text
            acked.append(stalled[0])
            eventually(lambda: svc.health().status_code == 200, timeout=10, what="healthy again")
            assert svc.health().json()["reason"] is None
            for i in range(stalled[0] + 1, stalled[0] + 20):
                r = svc.order(i)
                assert r.status_code == 200, r.text
                acked.append(i)
            book = svc.http.get("/books/AAA", params={"depth": 100}).json()
            assert sum(level[1] for level in book["bids"]) == len(acked)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
            svc.kill()
        log = (tmp_path / "engine.log").read_text()
        assert "Traceback" not in log
        assert log.count("WAL write failed: No space left on device") == 1, log
        assert log.count("the WAL is writable again") == 1, log
        # SIGKILLed: every acknowledged order is in the WAL, the refused one is not
        assert sorted(_order_ids_in_wal(data)) == sorted(acked)
        report = _verify(data)
        assert report["mismatches"] == 0


def test_a_snapshot_that_does_not_fit_fails_cleanly_and_the_next_one_succeeds(tmp_path):
    with tmpfs(tmp_path / "mnt", "16m") as disk:
        data = disk / "d"
        svc = Service(data, tmp_path / "engine.log")
        try:
            for i in range(1, 1501):       # a book whose snapshot needs many pages
                assert svc.order(i).status_code == 200
            ballast = Ballast(disk)
            ballast.fill()
            ballast.free(1)                # room for the WAL's next frames, not for a snapshot
            snap = subprocess.run([sys.executable, "-m", "engine.cli", "snapshot", "--now", "--data-dir", str(data)],
                                  cwd=ROOT, capture_output=True, text=True, timeout=120)
            assert snap.returncode != 0
            assert "No space left on device" in snap.stdout + snap.stderr, snap.stdout + snap.stderr
            snaps = os.listdir(data / "snapshots")
            assert snaps == [], snaps      # nothing half published, no temp file left
            assert svc.health().status_code == 200       # the engine goes on
            assert svc.order(1501).status_code == 200

            ballast.free(-1)
            snap = subprocess.run([sys.executable, "-m", "engine.cli", "snapshot", "--now", "--data-dir", str(data)],
                                  cwd=ROOT, capture_output=True, text=True, timeout=120)
            assert snap.returncode == 0, snap.stdout + snap.stderr
            assert [n for n in os.listdir(data / "snapshots") if n.endswith(".evsnap")]
        finally:
            svc.kill()
        log = (tmp_path / "engine.log").read_text()
        assert "snapshot at seq" in log and "No space left on device" in log and "free space" in log, log
        report = _verify(data)
        assert report["snapshots_checked"] == 1 and report["snapshot_mismatches"] == []


def test_a_dead_wal_syncer_stops_the_service_with_one_line_and_exit_74(tmp_path):
    data = tmp_path / "d"
    svc = Service(data, tmp_path / "engine.log")
    try:
        assert svc.order(1).status_code == 200
        syncer = children(svc.proc.pid)[0]
        os.kill(syncer, signal.SIGKILL)
        r = svc.order(2)
        assert r.status_code == 503, r.text
        assert svc.proc.wait(timeout=30) == EXIT_IO
    finally:
        if svc.proc.poll() is None:
            svc.kill()
    log = (tmp_path / "engine.log").read_text()
    assert "Traceback" not in log, log
    errors = [line for line in log.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "syncer" in errors[0], log
    assert _order_ids_in_wal(data)[:1] == [1]
