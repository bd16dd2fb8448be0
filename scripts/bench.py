#!/usr/bin/env python3
"""evengine benchmark: prints its figures next to baselines measured in the same run.

    python scripts/bench.py [--commands 1000000] [--seed 42] [--dir data/bench] [--skip-goog]
                            [--only real] [--repeat 3] [--no-profile]

Figures (machines here are shared and noisy: compare ratios within one run). The first
line says which build of ``engine/core`` ran (``engine.core.COMPILED``: mypyc or pure
Python), and so does the final JSON line's ``build`` field:
  1. matching only: commands/s of Matcher.apply on the seeded synthetic flow
     (70% limit, 25% cancel, 5% marketable), against a bare book (SortedDict of
     price -> deque, dict id -> order, no events: the CPython ceiling). Both
     with the cyclic GC paused, as the engine runs.
  2. durable: commands/s of the whole engine (sequence, match, WAL append,
     group commit through the syncer process, output release), with p50/p99
     commit latency; against raw write+fdatasync of the same bytes.
  3. fork pause: the parent's os.fork() time with 100,000 and 1,000,000
     resting orders, against a fork of the same process before the book exists,
     in a fresh interpreter that holds the book only (as the engine's process
     does; this one also holds the pre-generated commands); then the same with
     transparent huge pages through glibc's malloc, an operator's option.
  4. replay: events/s of recovery (read, CRC, decode, re-match, check trades),
     against reading and decoding alone, and its commands/s against the live
     matching of the same commands (section 1).
  5. GOOG day end to end: `evengine start` on the LOBSTER GOOG file (recovery,
     matching, WAL, snapshots every 20,000 events), wall time.
  6. real flow (``--only real`` runs just this): the GOOG day through
     `evengine start` with and without its orderbook file, in process
     (``Engine.run``) and through lobster-check (reconstruct), each against a
     bare in-memory rebuild of the message file (csv + SortedDict, no WAL);
     the Bitstamp capture against a bare rebuild of it. Then where the time
     goes: each part of ``Engine.run`` timed around its calls (source,
     matching, WAL append, encode, os.writev per frame, gate, waiting), and
     cProfile's largest functions of the sources. A missing data file skips
     its part with a message.
  7. accounts (``--only risk`` runs just this): the funded synthetic flow
     (``SyntheticSource(accounts=1000)``: deposits, then the same mix with an
     account per order and market buys with a budget), matching only and
     durable, with pre-trade risk on and, as the baseline, the very same
     commands with the book's risk switched off.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sortedcontainers import SortedDict  # noqa: E402

from engine.core import COMPILED, Matcher, RestingOrder  # noqa: E402
from engine.io.synthetic import SyntheticSource  # noqa: E402
from engine.service import Engine, EngineConfig  # noqa: E402
from eventstore import WalReader  # noqa: E402
from recovery import recover  # noqa: E402


class ListSource:
    """Pre-generated commands, so the benchmark times the engine, not the generator."""

    def __init__(self, commands, name):
        self.cmds = commands
        self.name = name
        self.total = len(commands)

    def commands(self, matcher, after):
        return iter(self.cmds)

    def close(self):
        pass


def bare_book(commands) -> float:
    """The baseline: the simplest fast CPython book, no events, no validation."""
    bids, asks, index = SortedDict(), SortedDict(), {}
    t0 = time.perf_counter()
    for c in commands:
        kind = c[0]
        if kind == 2:
            side, price, qty, oid = c[4], c[7], c[8], c[3]
            book, other = (bids, asks) if side == 1 else (asks, bids)
            while qty and other:
                best = other.peekitem(0 if side == 1 else -1)[0]
                if (best > price) if side == 1 else (best < price):
                    break
                q = other[best]
                while q and qty:
                    o = q[0]
                    if o[1] == 0:
                        q.popleft()
                        continue
                    f = min(qty, o[1])
                    o[1] -= f
                    qty -= f
                    if o[1] == 0:
                        q.popleft()
                        index.pop(o[0], None)
                if not q:
                    del other[best]
            if qty and c[6] == 1:
                o = [oid, qty, price, side]
                book.setdefault(price, deque()).append(o)
                index[oid] = o
        elif kind == 3:
            o = index.pop(c[3], None)
            if o is not None:
                o[1] = 0
                book = bids if o[3] == 1 else asks
                q = book.get(o[2])
                if q is not None and not any(x[1] for x in q):
                    del book[o[2]]
    return time.perf_counter() - t0


def matching_only(commands) -> tuple[float, Matcher]:
    m = Matcher()
    apply = m.apply
    t0 = time.perf_counter()
    for c in commands:
        apply(m.last_seq + 1, c)
    return time.perf_counter() - t0, m


def durable(commands, data_dir: Path, batch_max: int, batching: str = "latency") -> dict:
    """The whole engine on the pre-generated commands. ``batching="latency"``:
    batches also end after ``batch_linger_ms`` (a live source's commit
    latency); ``"bulk"``: after ``bulk_linger_ms`` (how a file source runs)."""
    shutil.rmtree(data_dir, ignore_errors=True)
    engine = Engine(EngineConfig(data_dir=str(data_dir), control_socket=False, batch_max=batch_max))
    engine.open()
    released = [0]
    engine.add_sink(lambda seq, cmd, events: released.__setitem__(0, released[0] + 1))
    s = engine.run(ListSource(commands, "bench"), batching=batching)
    return {"seconds": s.seconds, "commands": s.commands, "p50": s.commit_p50_ms, "p99": s.commit_p99_ms,
            "fsyncs": s.fsyncs, "events": s.events, "released": released[0], "hash": s.state_hash}


def raw_fdatasync(data_dir: Path, total_bytes: int, chunk: int) -> tuple[float, float, float]:
    """The disk alone: append ``chunk`` bytes and fdatasync, until ``total_bytes``.
    Returns (seconds, p50 ms, p99 ms of one fdatasync): the floor under the
    engine's commit latency, measured in the same run."""
    path = data_dir / "raw.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    buf = b"x" * chunk
    syncs = []
    clock = time.perf_counter_ns
    t0 = time.perf_counter()
    written = 0
    while written < total_bytes:
        os.write(fd, buf)
        t = clock()
        os.fdatasync(fd)
        syncs.append(clock() - t)
        written += chunk
    seconds = time.perf_counter() - t0
    os.close(fd)
    os.unlink(path)
    syncs.sort()
    return seconds, syncs[len(syncs) // 2] / 1e6, syncs[min(len(syncs) - 1, len(syncs) * 99 // 100)] / 1e6


def fork_pause(samples: int = 7) -> float:
    pauses = []
    for _ in range(samples):
        t0 = time.perf_counter_ns()
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        pauses.append(time.perf_counter_ns() - t0)
        os.waitpid(pid, 0)
    return statistics.median(pauses) / 1e6


def book_with(n: int) -> Matcher:
    m = Matcher()
    from engine.core import OrderBook
    book = m.books["B"] = OrderBook("B", 1)
    for i in range(n):
        side = 1 if i % 2 else 2
        price = 100_000 - 1 - (i % 5000) if side == 1 else 100_000 + (i % 5000)
        book.rest(RestingOrder(i + 1, side, price, 10, 0))
    return m


def fork_child() -> int:
    """Section 3 in a fresh interpreter: fork pauses before the book exists and
    with 100,000 and 1,000,000 resting orders; one JSON line."""
    gc.disable()
    out: dict = {"pause_ms_0": round(fork_pause(), 2), "rss_mb_0": round(rss_mb())}
    commands = list(SyntheticSource(200_000, 7, symbol="SYN").commands(Matcher(), None))
    out["matching_per_s"] = round(len(commands) / min(matching_only(commands)[0] for _ in range(3)))
    del commands
    for n in (100_000, 1_000_000):
        m = book_with(n)
        out[f"pause_ms_{n}"] = round(fork_pause(), 2)
        out[f"rss_mb_{n}"] = round(rss_mb())
        del m
    print(json.dumps(out))
    return 0


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


# ------------------------------------------------------------- real flow (6)
SHARED = ROOT.parent / "shared" / "data"
GOOG_MSG = SHARED / "lobster" / "GOOG_2012-06-21_34200000_57600000_message_10.csv"
GOOG_OB = SHARED / "lobster" / "GOOG_2012-06-21_34200000_57600000_orderbook_10.csv"
BITSTAMP = SHARED / "bitstamp" / "orders.csv.gz"


def bare_lobster(messages: Path) -> tuple[float, int]:
    """The baseline for a LOBSTER day: the csv module reading rows, a SortedDict
    per side (price -> total size), a dict order id -> (side, price, size).
    Type 1 adds; 2, 3 and 4 reduce by the row's size (an unknown id reduces
    the level at the row's price); no WAL, no events. Returns (s, rows)."""
    import csv
    t0 = time.perf_counter()
    bids, asks, orders = SortedDict(), SortedDict(), {}
    rows = 0
    with open(messages, newline="") as f:
        for row in csv.reader(f):
            rows += 1
            kind = int(row[1])
            if kind == 1:
                oid, size, price = int(row[2]), int(row[3]), int(row[4])
                side = int(row[5])
                book = bids if side == 1 else asks
                book[price] = book.get(price, 0) + size
                orders[oid] = (side, price, size)
            elif 2 <= kind <= 4:
                oid, size, price = int(row[2]), int(row[3]), int(row[4])
                o = orders.get(oid)
                if o is None:
                    book = bids if int(row[5]) == 1 else asks
                else:
                    side, price, left = o
                    book = bids if side == 1 else asks
                    if size >= left:
                        del orders[oid]
                    else:
                        orders[oid] = (side, price, left - size)
                level = book.get(price)
                if level is not None:
                    if level > size:
                        book[price] = level - size
                    else:
                        del book[price]
    return time.perf_counter() - t0, rows


def bare_bitstamp(path: Path) -> tuple[float, int]:
    """The baseline for the Bitstamp capture: csv over gzip, a dict id ->
    (side, price, volume) and a SortedDict per side (price -> total volume);
    prices in cents, volumes in 1e-8 BTC. Returns (s, rows)."""
    import csv
    import gzip
    t0 = time.perf_counter()
    bids, asks, orders = SortedDict(), SortedDict(), {}
    rows = 0
    with gzip.open(path, "rt", newline="") as f:
        r = csv.reader(f)
        next(r)
        for oid, _ts, _xts, price_text, volume_text, action, direction in r:
            rows += 1
            price = round(float(price_text) * 100)
            volume = round(float(volume_text) * 1e8)
            book = bids if direction == "bid" else asks
            old = orders.pop(oid, None)
            if old is not None:
                level = old[0][old[1]] - old[2]
                if level > 0:
                    old[0][old[1]] = level
                else:
                    del old[0][old[1]]
            if action != "deleted":
                orders[oid] = (book, price, volume)
                book[price] = book.get(price, 0) + volume
    return time.perf_counter() - t0, rows


def cli_start(spec: str, data_dir: Path) -> tuple[float, dict]:
    """``evengine start --source SPEC`` in a fresh data dir: (wall s, summary)."""
    shutil.rmtree(data_dir, ignore_errors=True)
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "engine.cli", "start", "--source", spec, "--data-dir", str(data_dir),
                          "--json", "--no-progress", "--no-verbose"], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    wall = time.perf_counter() - t0
    shutil.rmtree(data_dir, ignore_errors=True)
    return wall, json.loads(out.stdout.strip().splitlines()[-1])


class _Timed:
    """Wall time of calls to one bound method, accumulated in ``self.ns``."""

    def __init__(self, fn, clock=time.perf_counter_ns):
        self.fn, self.ns, self.calls, self.clock = fn, 0, 0, clock

    def __call__(self, *args):
        t0 = self.clock()
        try:
            return self.fn(*args)
        finally:
            self.ns += self.clock() - t0
            self.calls += 1


class _TimedSource:
    """A source whose iterator's ``next`` is timed (the source's own work)."""

    def __init__(self, source):
        self.source, self.ns = source, 0
        self.name, self.total = source.name, getattr(source, "total", None)

    def commands(self, matcher, after):
        it = self.source.commands(matcher, after)
        clock = time.perf_counter_ns
        while True:
            t0 = clock()
            try:
                cmd = next(it)
            except StopIteration:
                self.ns += clock() - t0
                return
            self.ns += clock() - t0
            yield cmd

    def close(self):
        self.source.close()


def _writev_recorder():
    """Patch ``os.writev`` to record (ns, bytes) per call; returns (samples, undo)."""
    real = os.writev
    samples: list = []
    clock = time.perf_counter_ns

    def writev(fd, bufs):
        t0 = clock()
        n = real(fd, bufs)
        samples.append((clock() - t0, n))
        return n
    os.writev = writev

    def undo():
        os.writev = real
    return samples, undo


def engine_plain(make_source, data_dir: Path, batching: Optional[str] = None) -> tuple[float, Any]:
    """``Engine.run`` in this process, uninstrumented: (run s, summary)."""
    shutil.rmtree(data_dir, ignore_errors=True)
    engine = Engine(EngineConfig(data_dir=str(data_dir)))
    engine.open()
    s = engine.run(make_source(), batching=batching)
    shutil.rmtree(data_dir, ignore_errors=True)
    return s.seconds, s


class _TimedMatcher:
    """The engine's matcher with ``apply`` timed, every other attribute read and
    written through: for a compiled ``Matcher``, whose methods cannot be replaced
    on the instance (the split then also times this indirection, in ``loop``)."""

    def __init__(self, matcher, apply) -> None:
        object.__setattr__(self, "_matcher", matcher)
        object.__setattr__(self, "apply", apply)

    def __getattr__(self, name):
        return getattr(self._matcher, name)

    def __setattr__(self, name, value) -> None:
        setattr(self._matcher, name, value)


def engine_split(make_source, data_dir: Path, batching: Optional[str] = None) -> dict:
    """``Engine.run`` in this process with each part timed around its calls:
    the source's ``next``, ``Matcher.apply``, WAL append (the batch handed over),
    WAL flush (msgpack encode, CRC, event buffer) with ``os.writev`` apart,
    the output gate, snapshot/control housekeeping, and the final wait for
    the last fsync. ``loop`` is what is left: the run loop itself and the
    timing wrappers. Seconds, plus ``writev_ns`` (per frame) and ``frame_bytes``."""
    shutil.rmtree(data_dir, ignore_errors=True)
    engine = Engine(EngineConfig(data_dir=str(data_dir)))
    engine.open()
    m, wal, gate = engine.matcher, engine.wal, engine.gate
    parts = {"apply": _Timed(m.apply), "append": _Timed(wal.append), "extend": _Timed(wal.extend_at),
             "flush": _Timed(wal.flush), "wait": _Timed(wal.wait_durable), "hold": _Timed(gate.hold),
             "release": _Timed(gate.release), "housekeeping": _Timed(engine._housekeeping)}
    try:
        m.apply = parts["apply"]
    except AttributeError:   # a compiled Matcher (mypyc): no method is replaced on the instance
        engine.matcher = _TimedMatcher(m, parts["apply"])
    wal.append, wal.extend_at, wal.flush = parts["append"], parts["extend"], parts["flush"]
    wal.wait_durable, gate.hold, gate.release = parts["wait"], parts["hold"], parts["release"]
    engine._housekeeping = parts["housekeeping"]
    src = _TimedSource(make_source())
    samples, undo = _writev_recorder()
    try:
        s = engine.run(src, batching=batching)
    finally:
        undo()
    shutil.rmtree(data_dir, ignore_errors=True)
    writev_s = sum(ns for ns, _ in samples) / 1e9
    sec = {k: t.ns / 1e9 for k, t in parts.items()}
    out = {"total": s.seconds, "source": src.ns / 1e9, "matching": sec["apply"],
           "wal_append": sec["append"] + sec["extend"],
           "wal_encode": sec["flush"] - writev_s, "writev": writev_s,
           "gate": sec["hold"] + sec["release"], "housekeeping": sec["housekeeping"], "waiting": sec["wait"]}
    # wait_durable flushes the last frame first; that flush is counted in both.
    out["loop"] = s.seconds - sum(v for k, v in out.items() if k != "total")
    out["writev_ns"] = sorted(ns for ns, _ in samples)
    out["frame_bytes"] = [n for _, n in samples]
    out["summary"] = s
    return out


def writev_alone(frame_bytes: list, path: Path) -> list:
    """The same frame sizes written with ``os.writev`` to a fresh file with no
    syncer (no fdatasync at all): per-call ns, sorted."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
    head = b"h" * 24
    times = []
    clock = time.perf_counter_ns
    try:
        for n in frame_bytes:
            body = b"p" * max(0, n - 24)
            t0 = clock()
            os.writev(fd, [head, body])
            times.append(clock() - t0)
    finally:
        os.close(fd)
        os.unlink(path)
    return sorted(times)


def _pct(sorted_ns: list, p: float) -> float:
    return sorted_ns[min(len(sorted_ns) - 1, int(p / 100 * len(sorted_ns)))] / 1e3 if sorted_ns else 0.0


def profile_top(make_source, data_dir: Path, prefix: str, n: int = 8) -> list[tuple[str, float, float]]:
    """cProfile of ``Engine.run``: the ``n`` functions under ``prefix`` (a
    path fragment) with the most own time, as (name, own s, cumulative s),
    plus the share of the run they account for."""
    import cProfile
    import pstats
    shutil.rmtree(data_dir, ignore_errors=True)
    engine = Engine(EngineConfig(data_dir=str(data_dir)))
    engine.open()
    source = make_source()
    prof = cProfile.Profile()
    prof.enable()
    engine.run(source)
    prof.disable()
    shutil.rmtree(data_dir, ignore_errors=True)
    st = pstats.Stats(prof).stats
    total = sum(v[2] for v in st.values())
    mine = [(f"{Path(k[0]).name}:{k[1]} {k[2]}", v[2], v[3]) for k, v in st.items() if prefix in k[0]]
    mine.sort(key=lambda x: -x[1])
    own = sum(x[1] for x in mine)
    writev = [(f"os.writev as cProfile sees it: {v[1]:,} calls, {v[2] / max(1, v[1]) * 1e6:.1f} us each", v[2], v[3])
              for k, v in st.items() if k[2] == "<built-in method posix.writev>"]
    return [("(all of " + prefix + ")", own, total)] + mine[:n] + writev


def _median_runs(fn, repeat: int):
    runs = [fn() for _ in range(repeat)]
    return runs[sorted(range(repeat), key=lambda i: runs[i][0])[repeat // 2]]


def _print_split(label: str, sp: dict, bare: float) -> None:
    total = sp["total"]
    order = ("source", "matching", "wal_append", "wal_encode", "writev", "gate", "housekeeping", "waiting", "loop")
    print(f"   where the time goes, {label} (in process, each part timed around its calls; total {total:.2f} s, "
          f"{total / bare:.1f}x the bare rebuild):")
    print("     " + "  ".join(f"{k} {sp[k]:.2f} s ({sp[k] / total:.0%})" for k in order))
    w = sp["writev_ns"]
    if w:
        fb = sp["frame_bytes"]
        print(f"     os.writev: {len(w):,} frames (mean {statistics.mean(fb):,.0f} B, "
              f"{sp['summary'].commands / len(w):,.0f} commands per frame); per frame mean {statistics.mean(w) / 1e3:.1f} us, "
              f"p50 {_pct(w, 50):.1f} us, p99 {_pct(w, 99):.1f} us, max {w[-1] / 1e3:.0f} us")


def _print_inprocess(make_source, work: Path, bare: float, repeat: int, results: dict, key: str) -> None:
    """``Engine.run`` both ways (bulk batching, as a file source runs now, and
    latency batching, as every pull source ran before ``bulk_linger_ms``)."""
    for batching in ("bulk", "latency"):
        t, s = _median_runs(lambda: engine_plain(make_source, work, batching), repeat)
        print(f"     in process Engine.run, {batching:7s} batching: {t:5.2f} s ({t / bare:4.1f}x), "
              f"{s.commands / t:,.0f} commands/s, {s.fsyncs:,} fsyncs, commit p50 {s.commit_p50_ms} ms, "
              f"p99 {s.commit_p99_ms} ms")
        results[f"{key}_run_{batching}_s"] = round(t, 2)
        results[f"{key}_{batching}_commit_p99_ms"] = s.commit_p99_ms


def real_flow(work: Path, repeat: int, profile: bool, results: dict) -> None:
    print("\n6. real flow: the GOOG LOBSTER day and the Bitstamp capture, against bare in-memory rebuilds")
    from engine.cli import make_source
    if GOOG_MSG.exists() and GOOG_OB.exists():
        from engine.io.lobster_check import lobster_check
        t_bare, rows = _median_runs(lambda: bare_lobster(GOOG_MSG), repeat)
        with_ob, without_ob = f"lobster:{GOOG_MSG}:{GOOG_OB}", f"lobster:{GOOG_MSG}"

        def check():
            t0 = time.perf_counter()
            r = lobster_check(GOOG_MSG, GOOG_OB, mode="reconstruct")
            return time.perf_counter() - t0, r
        print(f"   GOOG 2012-06-21, {rows:,} message rows; medians of {repeat}")
        print(f"   bare rebuild baseline (csv + SortedDict per side + dict, no WAL)  {t_bare:6.2f} s   1.0x")
        for label, spec, key in (("with orderbook", with_ob, "goog_ob"), ("without orderbook", without_ob, "goog_noob")):
            wall, s = _median_runs(lambda: cli_start(spec, work / "goog"), repeat)
            print(f"   evengine start, {label}: {wall:6.2f} s wall ({wall / t_bare:4.1f}x); {s['commands']:,} commands "
                  f"in {s['seconds']:.2f} s in the run loop, {s['fsyncs']:,} fsyncs, commit p50 {s['commit_p50_ms']} ms, "
                  f"p99 {s['commit_p99_ms']} ms")
            results[f"{key}_start_wall_s"] = round(wall, 2)
            results[f"{key}_ratio"] = round(wall / t_bare, 1)
            _print_inprocess(lambda: make_source(spec), work / "goog", t_bare, repeat, results, key)
        t_chk, chk = _median_runs(check, repeat)
        print(f"   lobster-check (reconstruct): {t_chk:6.2f} s ({t_chk / t_bare:4.1f}x); "
              f"{chk['mismatched_rows']} mismatched rows of {chk['rows_compared']:,}")
        print("   goal: engine with orderbook and lobster-check within 2x the bare rebuild")
        results.update(goog_bare_s=round(t_bare, 3), goog_check_s=round(t_chk, 2), goog_check_ratio=round(t_chk / t_bare, 1))
        for batching in ("bulk", "latency"):
            sp = engine_split(lambda: make_source(with_ob), work / "goog", batching)
            _print_split(f"GOOG with orderbook, {batching} batching", sp, t_bare)
            results[f"goog_ob_{batching}_frames"] = len(sp["writev_ns"])
            results[f"goog_ob_{batching}_writev_mean_us"] = round(statistics.mean(sp["writev_ns"]) / 1e3, 1)
            alone = writev_alone(sp["frame_bytes"], work / "writev.bin")
            print(f"     the same frames written with no syncer running: mean {statistics.mean(alone) / 1e3:.1f} us, "
                  f"p50 {_pct(alone, 50):.1f} us, p99 {_pct(alone, 99):.1f} us")
        sp = engine_split(lambda: make_source(without_ob), work / "goog")
        _print_split("GOOG without orderbook, bulk batching", sp, t_bare)
        if profile:
            _print_profile("GOOG with orderbook", profile_top(lambda: make_source(with_ob), work / "goog", "engine/io/"))
    else:
        print(f"   GOOG day: skipped ({GOOG_MSG} or its orderbook file is missing)")
    if BITSTAMP.exists():
        spec = f"bitstamp:{BITSTAMP}"
        t_bare, rows = _median_runs(lambda: bare_bitstamp(BITSTAMP), repeat)
        wall, s = _median_runs(lambda: cli_start(spec, work / "bitstamp"), repeat)
        print(f"   Bitstamp orders.csv.gz, {rows:,} rows; medians of {repeat}")
        print(f"   bare rebuild baseline (csv over gzip + dict + SortedDict per side)  {t_bare:6.2f} s   1.0x "
              f"({rows / t_bare:,.0f} rows/s)")
        print(f"   evengine start: {wall:6.2f} s wall ({wall / t_bare:4.1f}x); {s['commands']:,} commands, "
              f"{s['durable_commands_per_s']:,} commands/s in the run loop ({s['commands'] / wall:,.0f}/s over the "
              f"wall time), {s['fsyncs']:,} fsyncs, commit p50 {s['commit_p50_ms']} ms, p99 {s['commit_p99_ms']} ms")
        results.update(bitstamp_bare_s=round(t_bare, 3), bitstamp_start_wall_s=round(wall, 2),
                       bitstamp_commands_per_s=s["durable_commands_per_s"], bitstamp_ratio=round(wall / t_bare, 1))
        _print_inprocess(lambda: make_source(spec), work / "bitstamp", t_bare, repeat, results, "bitstamp")
        for batching in ("bulk", "latency"):
            sp = engine_split(lambda: make_source(spec), work / "bitstamp", batching)
            _print_split(f"Bitstamp, {batching} batching", sp, t_bare)
        if profile:
            _print_profile("Bitstamp", profile_top(lambda: make_source(spec), work / "bitstamp", "engine/io/"))
    else:
        print(f"   Bitstamp: skipped ({BITSTAMP} is missing)")


def _print_profile(label: str, rows: list) -> None:
    (_, own, total), rest = rows[0], rows[1:]
    print(f"   cProfile, {label}: engine/io/ functions' own time {own:.2f} s of {total:.2f} s profiled "
          f"({own / total:.0%}); the largest:")
    for name, tt, ct in rest:
        print(f"     {tt:6.2f} s own {ct:6.2f} s cumulative  {name}")


def risk_flow(work: Path, n: int, seed: int, batch_max: int, repeat: int, results: dict) -> None:
    """Section 7: the same funded commands with risk on and off."""
    from engine.core import Kind
    src = SyntheticSource(n, seed, symbol="SYN", accounts=1000)
    on = list(src.commands(Matcher(), None))
    off = [c._replace(risk=False) if c[0] == Kind.ADD_SYMBOL.value else c for c in on]
    print(f"\n7. accounts: {len(on):,} commands ({2 * 1000:,} deposits, then the mix over 1,000 accounts), "
          f"median of {repeat}")
    rows = {}
    for label, cmds in (("risk off", off), ("risk on", on)):
        gc.collect()
        gc.freeze()
        gc.disable()
        t_match, m = _median_runs(lambda: matching_only(cmds), repeat)
        gc.enable()

        def timed_durable(cmds=cmds):
            r = durable(cmds, work / "durable", batch_max)
            return r["seconds"], r
        d = _median_runs(timed_durable, repeat)[1]
        assert d["hash"] == m.state_hash() and d["released"] == d["commands"]
        rows[label] = (len(cmds) / t_match, d["commands"] / d["seconds"], m)
        print(f"   {label:<9} matching {len(cmds) / t_match:>10,.0f} commands/s   durable "
              f"{d['commands'] / d['seconds']:>10,.0f} commands/s (commit p50 {d['p50']:.2f} ms, p99 {d['p99']:.2f} ms)"
              f"   {m.match_sequence:,} trades, ledger_seq {m.accounts.ledger_seq:,}")
        del m
    (m_off, d_off, _), (m_on, d_on, m) = rows["risk off"], rows["risk on"]
    print(f"   risk on / risk off: matching {m_on / m_off:.2f}x, durable {d_on / d_off:.2f}x (aim: 0.8x)")
    results.update(risk_off_matching_per_s=round(m_off), risk_on_matching_per_s=round(m_on),
                   risk_off_durable_per_s=round(d_off), risk_on_durable_per_s=round(d_on),
                   risk_on_matching_ratio=round(m_on / m_off, 2), risk_on_durable_ratio=round(d_on / d_off, 2))


def main() -> int:
    ap = argparse.ArgumentParser(description="evengine benchmark")
    ap.add_argument("--commands", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--dir", default=str(ROOT / "data" / "bench"))
    ap.add_argument("--batch-max", type=int, default=256)
    ap.add_argument("--skip-goog", action="store_true")
    ap.add_argument("--only", choices=("all", "real", "risk"), default="all",
                    help="real: only section 6 (the GOOG day and the Bitstamp capture); risk: only section 7")
    ap.add_argument("--repeat", type=int, default=3, help="runs per real-flow timing (the median is shown)")
    ap.add_argument("--no-profile", action="store_true", help="section 6 without its cProfile runs")
    ap.add_argument("--fork-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.fork_child:
        return fork_child()
    work = Path(args.dir)
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"seed": args.seed, "commands": args.commands, "build": "compiled" if COMPILED else "pure"}
    # which build of engine/core ran (setup.py: mypyc when a C compiler works, EVENGINE_PURE_PYTHON=1 not)
    print("build: compiled (mypyc)" if COMPILED else "build: pure Python")
    if args.only == "real":
        real_flow(work, args.repeat, not args.no_profile, results)
        print("\n" + json.dumps(results))
        return 0
    if args.only == "risk":
        risk_flow(work, args.commands, args.seed, args.batch_max, args.repeat, results)
        print("\n" + json.dumps(results))
        return 0
    print(f"seed {args.seed}, {args.commands:,} commands (70% limit, 25% cancel, 5% marketable)")

    src = SyntheticSource(args.commands, args.seed, symbol="SYN")
    commands = list(src.commands(Matcher(), None))

    # The engine runs with the cyclic GC paused (EngineConfig.pause_cyclic_gc);
    # the in-process runs here get the same treatment, the baseline too.
    gc.collect()
    gc.freeze()
    gc.disable()
    t_bare = bare_book(commands)
    t_match, m = matching_only(commands)
    gc.enable()
    trades = m.match_sequence
    print("\n1. matching only")
    print(f"   bare book baseline   {len(commands) / t_bare:>12,.0f} commands/s")
    print(f"   evengine Matcher     {len(commands) / t_match:>12,.0f} commands/s  ({t_bare / t_match:.2f}x baseline; "
          f"{trades / len(commands):.2f} trades/command, {len(m.books['SYN'].orders):,} resting at the end)")
    results["matching_per_s"] = round(len(commands) / t_match)
    results["bare_book_per_s"] = round(len(commands) / t_bare)
    results["matching_ratio"] = round(t_bare / t_match, 2)
    match_hash = m.state_hash()
    del m
    gc.collect()

    d = durable(commands, work / "durable", args.batch_max)
    assert d["hash"] == match_hash, "durable run and matching-only run disagree"
    assert d["released"] == d["commands"], "not every command's output was released"
    wal_bytes = sum(p.stat().st_size for p in (work / "durable" / "wal").glob("*"))
    raw_bytes = d["events"] * 40
    t_raw, sync_p50, sync_p99 = raw_fdatasync(work, raw_bytes, max(4096, raw_bytes // max(1, d["fsyncs"])))
    print(f"\n2. durable (WAL fsync before any output; batch_max {args.batch_max}, latency batching)")
    print(f"   evengine             {d['commands'] / d['seconds']:>12,.0f} commands/s  commit p50 {d['p50']:.2f} ms, "
          f"p99 {d['p99']:.2f} ms, {d['fsyncs']:,} fsyncs, {d['events']:,} events, WAL {wal_bytes / 1e6:.1f} MB on disk")
    print(f"   baseline: write+fdatasync of ~{raw_bytes / 1e6:.0f} MB in as many syncs on one thread: {t_raw:.2f} s "
          f"(engine: {d['seconds']:.2f} s; matching alone: {t_match:.2f} s); one fdatasync p50 {sync_p50:.2f} ms, "
          f"p99 {sync_p99:.2f} ms (the floor under commit latency)")
    print(f"   durable / bare book  {t_bare / d['seconds']:>12.2f}x  (goal 0.5x, p99 commit at most 2 ms)")
    results.update(durable_per_s=round(d["commands"] / d["seconds"]), commit_p50_ms=d["p50"], commit_p99_ms=d["p99"],
                   durable_ratio=round(t_bare / d["seconds"], 2), disk_fdatasync_p50_ms=round(sync_p50, 3),
                   disk_fdatasync_p99_ms=round(sync_p99, 3))
    b = durable(commands, work / "durable", args.batch_max, "bulk")
    assert b["hash"] == match_hash and b["released"] == b["commands"]
    print(f"   bulk batching        {b['commands'] / b['seconds']:>12,.0f} commands/s  commit p50 {b['p50']:.2f} ms, "
          f"p99 {b['p99']:.2f} ms, {b['fsyncs']:,} fsyncs (how a file source runs: batches end at batch_max or "
          f"after bulk_linger_ms; the line above is latency batching, as a live source's)")
    results.update(durable_bulk_per_s=round(b["commands"] / b["seconds"]), bulk_commit_p50_ms=b["p50"],
                   bulk_commit_p99_ms=b["p99"])

    gc.disable()   # as Engine.open does around recovery
    t0 = time.perf_counter()
    rec = recover(str(work / "durable"))
    t_rec = time.perf_counter() - t0
    gc.enable()
    assert rec.matcher.state_hash() == match_hash
    t0 = time.perf_counter()
    n_read = sum(1 for _ in WalReader(str(work / "durable" / "wal")).read())
    t_read = time.perf_counter() - t0
    print("\n4. replay (recovery from an empty snapshot: read, check, decode, re-match, compare trades)")
    print(f"   read + decode only   {n_read / t_read:>12,.0f} events/s")
    print(f"   full replay          {rec.replayed_events / t_rec:>12,.0f} events/s  ({rec.replayed_events:,} events, "
          f"{rec.trades_checked:,} trades/rejects checked)")
    print(f"   replay / matching    {t_match / t_rec:>12.2f}x  (the same {len(commands):,} commands: replay "
          f"{len(commands) / t_rec:,.0f}/s, live matching {len(commands) / t_match:,.0f}/s; goal 0.8x)")
    results["replay_events_per_s"] = round(rec.replayed_events / t_rec)
    results["replay_commands_per_s"] = round(len(commands) / t_rec)
    results["replay_ratio"] = round(t_match / t_rec, 2)
    del rec
    gc.collect()

    print("\n3. fork pause (median of 7 forks; child exits at once), in a fresh process holding the book only")
    print("   (this process holds the pre-generated commands: its own fork would time them too)")
    for label, env in (("", {}), ("with transparent huge pages (PYTHONMALLOC=malloc, "
                                  "GLIBC_TUNABLES=glibc.malloc.hugetlb=1)",
                                  {"PYTHONMALLOC": "malloc", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"})):
        out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--fork-child"], cwd=ROOT,
                             env={**os.environ, **env}, capture_output=True, text=True, check=True)
        f = json.loads(out.stdout.strip().splitlines()[-1])
        if label:
            print(f"   {label}:")
        print(f"   matching in that process (200,000 commands, best of 3): {f['matching_per_s']:,} commands/s")
        results[f"fork_child_matching_per_s{'_thp' if label else ''}"] = f["matching_per_s"]
        print(f"   baseline (no book, RSS {f['rss_mb_0']:.0f} MB)          {f['pause_ms_0']:6.2f} ms")
        for n in (100_000, 1_000_000):
            print(f"   {n:>9,} resting orders (RSS {f[f'rss_mb_{n}']:.0f} MB)  {f[f'pause_ms_{n}']:6.2f} ms")
            results[f"fork_pause_ms_{n}{'_thp' if label else ''}"] = f[f"pause_ms_{n}"]
    print("   goal: at most 5 ms at 1,000,000 resting orders")

    goog = ROOT.parent / "shared" / "data" / "lobster"
    msg = goog / "GOOG_2012-06-21_34200000_57600000_message_10.csv"
    ob = goog / "GOOG_2012-06-21_34200000_57600000_orderbook_10.csv"
    if not args.skip_goog and msg.exists():
        dd = work / "goog"
        shutil.rmtree(dd, ignore_errors=True)
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "engine.cli", "start", "--source", f"lobster:{msg}:{ob}",
                              "--data-dir", str(dd), "--snapshot-every", "20000", "--json", "--no-progress",
                              "--no-verbose"], cwd=ROOT, capture_output=True, text=True, check=True)
        wall = time.perf_counter() - t0
        s = json.loads(out.stdout.strip().splitlines()[-1])
        print("\n5. GOOG 2012-06-21 day end to end (`evengine start`, snapshot every 20,000 events)")
        print(f"   {wall:.2f} s wall ({s['seconds']:.2f} s in the run loop): {s['commands']:,} commands, "
              f"{s['events']:,} events, {s['trades']:,} trades, {s['snapshots']} snapshots, "
              f"fork pauses max {max(s['fork_pauses_ms'] or [0]):.2f} ms, commit p99 {s['commit_p99_ms']} ms")
        results["goog_wall_s"] = round(wall, 2)
    else:
        print("\n5. GOOG day: skipped (no ../shared/data/lobster or --skip-goog)")
    real_flow(work, args.repeat, not args.no_profile, results)
    risk_flow(work, args.commands, args.seed, args.batch_max, args.repeat, results)
    print("\n" + json.dumps(results))
    shutil.rmtree(work / "durable", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
