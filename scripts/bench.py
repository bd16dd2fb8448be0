#!/usr/bin/env python3
"""evengine benchmark: prints its figures next to baselines measured in the same run.

    python scripts/bench.py [--commands 1000000] [--seed 42] [--dir data/bench] [--skip-goog]

Figures (machines here are shared and noisy: compare ratios within one run):
  1. matching only: commands/s of Matcher.apply on the seeded synthetic flow
     (70% limit, 25% cancel, 5% marketable), against a bare book (SortedDict of
     price -> deque, dict id -> order, no events: the CPython ceiling). Both
     with the cyclic GC paused, as the engine runs.
  2. durable: commands/s of the whole engine (sequence, match, WAL append,
     group commit through the syncer process, output release), with p50/p99
     commit latency; against raw write+fdatasync of the same bytes.
  3. fork pause: the parent's os.fork() time with 100,000 and 1,000,000
     resting orders, against a fork of the same process before the book exists.
  4. replay: events/s of recovery (read, CRC, decode, re-match, check trades),
     against reading and decoding alone.
  5. GOOG day end to end: `evengine start` on the LOBSTER GOOG file (recovery,
     matching, WAL, snapshots every 20,000 events), wall time.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sortedcontainers import SortedDict  # noqa: E402

from engine.core import Matcher, RestingOrder  # noqa: E402
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


def durable(commands, data_dir: Path, batch_max: int) -> dict:
    shutil.rmtree(data_dir, ignore_errors=True)
    engine = Engine(EngineConfig(data_dir=str(data_dir), control_socket=False, batch_max=batch_max))
    engine.open()
    released = [0]
    engine.add_sink(lambda seq, cmd, events: released.__setitem__(0, released[0] + 1))
    s = engine.run(ListSource(commands, "bench"))
    return {"seconds": s.seconds, "commands": s.commands, "p50": s.commit_p50_ms, "p99": s.commit_p99_ms,
            "fsyncs": s.fsyncs, "events": s.events, "released": released[0], "hash": s.state_hash}


def raw_fdatasync(data_dir: Path, total_bytes: int, chunk: int) -> float:
    path = data_dir / "raw.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    buf = b"x" * chunk
    t0 = time.perf_counter()
    written = 0
    while written < total_bytes:
        os.write(fd, buf)
        os.fdatasync(fd)
        written += chunk
    os.close(fd)
    os.unlink(path)
    return time.perf_counter() - t0


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


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description="evengine benchmark")
    ap.add_argument("--commands", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--dir", default=str(ROOT / "data" / "bench"))
    ap.add_argument("--batch-max", type=int, default=256)
    ap.add_argument("--skip-goog", action="store_true")
    args = ap.parse_args()
    work = Path(args.dir)
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"seed": args.seed, "commands": args.commands}
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
    match_hash = m.state_hash()
    del m
    gc.collect()

    d = durable(commands, work / "durable", args.batch_max)
    assert d["hash"] == match_hash, "durable run and matching-only run disagree"
    assert d["released"] == d["commands"], "not every command's output was released"
    wal_bytes = sum(p.stat().st_size for p in (work / "durable" / "wal").glob("*"))
    raw_bytes = d["events"] * 40
    t_raw = raw_fdatasync(work, raw_bytes, max(4096, raw_bytes // max(1, d["fsyncs"])))
    print(f"\n2. durable (WAL fsync before any output; batch_max {args.batch_max})")
    print(f"   evengine             {d['commands'] / d['seconds']:>12,.0f} commands/s  commit p50 {d['p50']:.2f} ms, "
          f"p99 {d['p99']:.2f} ms, {d['fsyncs']:,} fsyncs, {d['events']:,} events, WAL {wal_bytes / 1e6:.1f} MB on disk")
    print(f"   baseline: write+fdatasync of ~{raw_bytes / 1e6:.0f} MB in as many syncs on one thread: {t_raw:.2f} s "
          f"(engine: {d['seconds']:.2f} s; matching alone: {t_match:.2f} s)")
    results.update(durable_per_s=round(d["commands"] / d["seconds"]), commit_p50_ms=d["p50"], commit_p99_ms=d["p99"])

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
    results["replay_events_per_s"] = round(rec.replayed_events / t_rec)
    del rec
    gc.collect()

    print("\n3. fork pause (median of 7 forks; child exits at once)")
    base = fork_pause()
    print(f"   baseline (no book, RSS {rss_mb():.0f} MB)        {base:6.2f} ms")
    for n in (100_000, 1_000_000):
        mm = book_with(n)
        gc.collect()
        p = fork_pause()
        print(f"   {n:>9,} resting orders (RSS {rss_mb():.0f} MB)  {p:6.2f} ms")
        results[f"fork_pause_ms_{n}"] = round(p, 2)
        del mm
        gc.collect()

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
    print("\n" + json.dumps(results))
    shutil.rmtree(work / "durable", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
