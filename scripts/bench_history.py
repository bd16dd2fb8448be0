#!/usr/bin/env python3
"""Time travel benchmark: how fast the history API answers, beside a full replay.

    python scripts/bench_history.py [--events 10000000] [--symbols 4] [--dir data/bench-history]
                                    [--skip-big] [--skip-goog] [--skip-bitstamp]

Figures (shared 2-core machines are noisy: compare within one run):
  1. A synthetic directory of ``--events`` WAL events over ``--symbols`` symbols
     (the seeded benchmark flow, interleaved; built once and reused):
     ``evengine index`` (persisted keyframes, seconds and bytes), then
     ``book()`` at random seqs, p50/p99 ms, cold (a fresh ``open_data_dir``
     per call, 20 samples, starting from the persisted keyframes) and warm
     (200 samples on one History after ``build_index()`` laid in-memory
     keyframes over the whole WAL); ``book_at_time()`` cold; stepping 1,000
     consecutive seqs, ms per step. Beside: ``evengine verify`` of the same
     directory (a full replay), and (``--cold-no-index N``) N cold queries
     without the index, as before it existed.
  2. The GOOG LOBSTER day (``evengine start`` into a fresh directory):
     ``bbo()`` over the whole day, seconds and peak RSS; a full replay.
  3. The Bitstamp sample: ``depth_heatmap()`` of the whole capture computed and
     drawn (``recovery.plots.liquidity_heatmap``, PNG), seconds and peak RSS; a
     full replay.
Peak RSS is measured in a child process per task (``ru_maxrss``), so each
figure is that task's alone.

Goals (issue 8): ``book()`` p99 <= 100 ms warm and <= 1 s cold in the 10M
directory, a step <= 2 ms, the Bitstamp heatmap within 3 s and 250 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"


COLD = 20
"""Cold samples (each a fresh open_data_dir: the costly case)."""


def pct(values: list, p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


class Interleaved:
    """K synthetic flows (one per symbol), round-robin, as one pull source."""

    name = "bench-history"

    def __init__(self, per_symbol: int, symbols: int, seed: int = 42) -> None:
        from engine.io.synthetic import SyntheticSource
        self.sources = [SyntheticSource(per_symbol, seed + k, symbol=f"SYN{k}") for k in range(symbols)]
        self.total = per_symbol * symbols

    def commands(self, matcher, after):
        its = [s.commands(matcher, None) for s in self.sources]
        while its:
            for it in list(its):
                cmd = next(it, None)
                if cmd is None:
                    its.remove(it)
                else:
                    yield cmd

    def close(self) -> None:
        pass


def build_synthetic(directory: Path, events: int, symbols: int) -> None:
    from engine.service import Engine, EngineConfig
    from recovery import open_data_dir
    if (directory / "wal").is_dir() and open_data_dir(str(directory)).last_seq >= events * 0.95:
        return
    shutil.rmtree(directory, ignore_errors=True)
    # The flow makes ~1.04 events per command (trades of the marketable 5%).
    per_symbol = int(events / 1.04 / symbols)
    cfg = EngineConfig(data_dir=str(directory), snapshot_every=1_000_000)
    t0 = time.perf_counter()
    with Engine(cfg) as engine:
        engine.run(Interleaved(per_symbol, symbols))
    print(f"   built {directory} in {time.perf_counter() - t0:.1f} s")


def full_replay_s(directory: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "engine.cli", "verify", "--data-dir", str(directory)], check=True,
                   capture_output=True, cwd=ROOT)
    return time.perf_counter() - t0


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM), MB. Not ``ru_maxrss``: Linux
    carries that over ``execve`` from the parent's memory (subprocess forks a
    copy of this script's parent), so a child started from a big parent would
    report the parent's size."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(task: str, *args: str) -> dict:
    """Run one task in a fresh interpreter; its printed JSON plus peak RSS (MB)."""
    out = subprocess.run([sys.executable, __file__, "--task", task, *args], check=True, capture_output=True,
                         text=True, cwd=ROOT, env=dict(os.environ, MPLBACKEND="Agg"))
    return json.loads(out.stdout.strip().splitlines()[-1])


def task(name: str, args: list) -> None:
    from recovery import open_data_dir
    result: dict = {}
    if name == "book":
        directory, symbols, no_index = args[0], int(args[1]), int(args[2])
        rnd = random.Random(7)
        last = open_data_dir(directory).last_seq
        seqs = [rnd.randint(1, last) for _ in range(200)]
        syms = [f"SYN{rnd.randrange(symbols)}" for _ in seqs]
        cold, replayed = [], []
        for seq, sym in zip(seqs[:COLD], syms[:COLD]):
            t0 = time.perf_counter()
            h = open_data_dir(directory)
            h.book(seq, sym, depth=10)
            cold.append((time.perf_counter() - t0) * 1e3)
            replayed.append(h.stats.replayed_events)
        bare = []
        for seq, sym in zip(seqs[COLD:COLD + no_index], syms[COLD:COLD + no_index]):
            t0 = time.perf_counter()
            h = open_data_dir(directory)
            h.timeline.files = None
            h.book(seq, sym, depth=10)
            bare.append((time.perf_counter() - t0) * 1e3)
        h = open_data_dir(directory)
        at_time = []
        top = next(iter(h.events(last, last)))[1]
        end_ts = getattr(top, "ts_ns", 0) or 0
        for _ in range(COLD):
            ts = rnd.randint(0, end_ts) if end_ts else 0
            t0 = time.perf_counter()
            open_data_dir(directory).book_at_time(ts, f"SYN{rnd.randrange(symbols)}", depth=10)
            at_time.append((time.perf_counter() - t0) * 1e3)
        h = open_data_dir(directory)
        h.build_index()          # keyframes over the whole WAL, once: "warm" is after this
        warm = []
        for seq, sym in zip(seqs, syms):
            t0 = time.perf_counter()
            h.book(seq, sym, depth=10)
            warm.append((time.perf_counter() - t0) * 1e3)
        start = seqs[1]
        h.book(start, "SYN0", depth=10)
        t0 = time.perf_counter()
        for seq in range(start + 1, min(start + 1001, last + 1)):
            h.book(seq, "SYN0", depth=10)
        step = (time.perf_counter() - t0) * 1e3 / 1000
        result = {"cold_p50_ms": statistics.median(cold), "cold_p99_ms": pct(cold, 99),
                  "cold_replayed_max": max(replayed), "cold_no_index_ms": bare,
                  "at_time_p50_ms": statistics.median(at_time), "at_time_p99_ms": pct(at_time, 99),
                  "warm_p50_ms": statistics.median(warm), "warm_p99_ms": pct(warm, 99), "step_ms": step,
                  "last_seq": last}
    elif name == "bbo":
        directory, symbol = args
        h = open_data_dir(directory)
        t0 = time.perf_counter()
        frame = h.bbo(1, h.last_seq, symbol)
        result = {"seconds": time.perf_counter() - t0, "rows": len(frame)}
    elif name == "heatmap":
        directory, symbol, png = args
        from recovery import plots
        h = open_data_dir(directory)
        t0 = time.perf_counter()
        heat = h.depth_heatmap(1, h.last_seq, symbol, time_bin="10s", price_bin=5)
        computed = time.perf_counter() - t0
        fig = plots.liquidity_heatmap(heat, bbo=h.bbo(1, h.last_seq, symbol, every="1s"),
                                      trades=h.trades(1, h.last_seq, symbol))
        fig.savefig(png, dpi=80)
        result = {"computed_s": computed, "seconds": time.perf_counter() - t0, "rows": len(heat)}
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--symbols", type=int, default=4)
    ap.add_argument("--dir", default=str(ROOT / "data" / "bench-history"))
    ap.add_argument("--skip-big", action="store_true")
    ap.add_argument("--cold-no-index", type=int, default=2, help="cold queries without the index (slow: up to a full replay each)")
    ap.add_argument("--skip-goog", action="store_true")
    ap.add_argument("--skip-bitstamp", action="store_true")
    ap.add_argument("--task", help=argparse.SUPPRESS)
    a, rest = ap.parse_known_args()
    if a.task:
        task(a.task, rest)
        return
    base = Path(a.dir)
    base.mkdir(parents=True, exist_ok=True)
    print("evengine history benchmark")
    if not a.skip_big:
        big = base / f"synthetic-{a.events}"
        print(f"1. synthetic, {a.events:,} events, {a.symbols} symbols")
        build_synthetic(big, a.events, a.symbols)
        from recovery import open_data_dir
        print(f"   the directory holds {open_data_dir(str(big)).last_seq:,} events")
        shutil.rmtree(big / "index", ignore_errors=True)
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "engine.cli", "index", "--data-dir", str(big), "--json"],
                             check=True, capture_output=True, text=True, cwd=ROOT).stdout
        ix = json.loads(out.strip().splitlines()[-1])
        wal_bytes = sum(p.stat().st_size for p in (big / "wal").iterdir())
        print(f"   evengine index: {time.perf_counter() - t0:.1f} s, {ix['keyframes']} keyframes every {ix['every']:,} "
              f"events, {ix['bytes'] / 1e6:.0f} MB (the WAL: {wal_bytes / 1e6:.0f} MB)")
        r = child("book", str(big), str(a.symbols), str(a.cold_no_index))
        replay = full_replay_s(big)
        print(f"   book() at 200 random seqs: cold p50 {r['cold_p50_ms']:.1f} ms, p99 {r['cold_p99_ms']:.1f} ms "
              f"(goal 1,000; at most {r['cold_replayed_max']:,} events replayed); warm p50 {r['warm_p50_ms']:.1f} ms, "
              f"p99 {r['warm_p99_ms']:.1f} ms (goal 100)")
        print(f"   book_at_time() cold: p50 {r['at_time_p50_ms']:.1f} ms, p99 {r['at_time_p99_ms']:.1f} ms")
        if r["cold_no_index_ms"]:
            print(f"   cold without the index ({len(r['cold_no_index_ms'])} samples): "
                  + ", ".join(f"{x:,.0f} ms" for x in r["cold_no_index_ms"]))
        print(f"   stepping 1,000 consecutive seqs: {r['step_ms']:.3f} ms per step (goal 2)   peak RSS "
              f"{r['peak_rss_mb']:.0f} MB")
        print(f"   baseline: full replay (evengine verify) of {r['last_seq']:,} events: {replay:.1f} s")
    goog = SHARED / "lobster" / "GOOG_2012-06-21_34200000_57600000_message_10.csv"
    if not a.skip_goog and goog.exists():
        d = base / "goog"
        if not (d / "wal").is_dir():
            subprocess.run([sys.executable, "-m", "engine.cli", "start", "--source",
                            f"lobster:{goog}:{str(goog).replace('_message_', '_orderbook_')}", "--data-dir", str(d),
                            "--no-progress"], check=True, capture_output=True, cwd=ROOT)
        r = child("bbo", str(d), "GOOG")
        replay = full_replay_s(d)
        print(f"2. GOOG day: bbo() over the whole day: {r['seconds']:.2f} s, {r['rows']:,} rows, peak RSS "
              f"{r['peak_rss_mb']:.0f} MB; full replay {replay:.2f} s")
    elif not a.skip_goog:
        print(f"2. GOOG day: skipped ({goog} not found)")
    capture = next((p for p in (ROOT / "data/samples/bitstamp/orders.csv.gz", SHARED / "bitstamp/orders.csv.gz")
                    if p.exists()), None)
    if not a.skip_bitstamp and capture is not None:
        d = base / "bitstamp"
        if not (d / "wal").is_dir():
            subprocess.run([sys.executable, "-m", "engine.cli", "start", "--source", f"bitstamp:{capture}",
                            "--data-dir", str(d), "--no-progress"], check=True, capture_output=True, cwd=ROOT)
        png = base / "bitstamp-heatmap.png"
        r = child("heatmap", str(d), "BTCUSD", str(png))
        replay = full_replay_s(d)
        print(f"3. Bitstamp heatmap: computed {r['computed_s']:.2f} s, computed and drawn {r['seconds']:.2f} s "
              f"(goal 3), peak RSS {r['peak_rss_mb']:.0f} MB (goal 250); full replay {replay:.2f} s; {png}")
    elif not a.skip_bitstamp:
        print("3. Bitstamp heatmap: skipped (no capture; python scripts/fetch_sample_data.py)")


if __name__ == "__main__":
    main()
