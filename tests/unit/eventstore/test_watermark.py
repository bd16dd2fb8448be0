"""The durable watermark file: readers see nothing past the live writer's
fsync, and everything whole once no writer runs. Real syncer processes,
stopped with SIGSTOP and killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from eventstore import CorruptRecordError, WalWriter, read_durable_seq
from eventstore.watermark import WATERMARK_NAME
from recovery.walindex import WalIndex

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def test_the_watermark_follows_the_syncer_and_is_released_at_close(tmp_path):
    w = WalWriter(str(tmp_path), 1)
    assert os.path.getsize(tmp_path / WATERMARK_NAME) == os.sysconf("SC_PAGE_SIZE")
    assert read_durable_seq(str(tmp_path)) == 0
    for i in range(1, 101):
        w.append(("e", i))
    w.flush()
    assert w.wait_durable(100, 10)
    assert read_durable_seq(str(tmp_path)) == 100 == w.durable_seq
    w.close()
    assert read_durable_seq(str(tmp_path)) is None          # no writer: every whole frame counts
    w2 = WalWriter(str(tmp_path), 101)                       # a restart takes the file over
    assert read_durable_seq(str(tmp_path)) == 100
    w2.close()


def test_a_reader_sees_nothing_written_but_not_yet_fsynced(tmp_path):
    w = WalWriter(str(tmp_path), 1, compress_sealed=False)
    try:
        for i in range(1, 51):
            w.append(("e", i))
        w.flush()
        assert w.wait_durable(50, 10)
        idx = WalIndex(str(tmp_path))
        assert idx.refresh() == 50
        os.kill(w.syncer_pid, signal.SIGSTOP)               # the disk "hangs": no fsync completes
        try:
            for i in range(51, 81):
                w.append(("e", i))
            w.flush()                                       # written (writev) but not durable
            assert w.written_seq == 80
            assert idx.refresh() == 50 and idx.whole_seq == 80
            assert [s for s, _ in idx.read(1)][-1] == 50
            fresh = WalIndex(str(tmp_path))
            assert fresh.refresh() == 50
        finally:
            os.kill(w.syncer_pid, signal.SIGCONT)
        assert w.wait_durable(80, 10)
        assert idx.refresh() == 80 and [s for s, _ in idx.read(51)] == list(range(51, 81))
    finally:
        w.close()


def test_a_killed_writer_leaves_every_whole_frame_to_the_readers(tmp_path):
    script = textwrap.dedent(f"""
        import os, signal, sys, time
        sys.path.insert(0, {ROOT!r})
        from eventstore import WalWriter
        w = WalWriter({str(tmp_path)!r}, 1, compress_sealed=False)
        for i in range(1, 41):
            w.append(("e", i))
        w.flush()
        w.wait_durable(40, 10)
        os.kill(w.syncer_pid, signal.SIGSTOP)
        for i in range(41, 61):
            w.append(("e", i))
        w.flush()
        print(w.syncer_pid, flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        syncer = int(proc.stdout.readline())
        assert read_durable_seq(str(tmp_path)) == 40
        assert WalIndex(str(tmp_path)).refresh() == 40
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert read_durable_seq(str(tmp_path)) is None      # its writer is gone
        assert WalIndex(str(tmp_path)).refresh() == 60      # what recovery keeps: every whole frame
    finally:
        if proc.poll() is None:
            proc.kill()
        try:
            os.kill(syncer, signal.SIGCONT)                 # let the orphaned syncer see EOF and exit
        except (ProcessLookupError, UnboundLocalError):
            pass
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(syncer, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)


def test_a_damaged_watermark_is_named(tmp_path):
    (tmp_path / WATERMARK_NAME).write_bytes(b"garbage!" + bytes(100))
    with pytest.raises(CorruptRecordError) as exc:
        read_durable_seq(str(tmp_path))
    assert WATERMARK_NAME in str(exc.value)
    assert read_durable_seq(str(tmp_path / "nowhere")) is None
