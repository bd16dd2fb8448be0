#!/usr/bin/env python3
"""Settlement benchmark: trades/s into SQLite and PostgreSQL beside a bare-insert baseline.

The flow: one matcher running 8 funded synthetic books (``SyntheticSource``
with ``--accounts`` accounts, risk on, fees) interleaved, until it has made
``--trades`` trades; the ``ledger`` and ``trades`` records are encoded by the
Kafka bridge's own encoders (the exact bytes the engine publishes) with
offsets per partition. No broker: this measures the settlement's side (decode,
digest, checks, one transaction per batch), not Kafka's fetch.

Figures, per store (same records, same batches, same run):

  1. baseline: the same rows (postings and trades, decoded) inserted with one
     ``executemany`` (PostgreSQL: ``COPY``) and one commit per batch, no
     digests, no watermarks, no checks;
  2. settle: :meth:`SettlementStore.apply` per batch: trades/s, ledger
     entries/s, and the ratio to the baseline;
  3. latency at a fixed rate (``--rate`` trades/s with their ledger entries,
     arriving on a clock): each batch is what arrived while the previous one
     was being committed, as the consumer loop takes it; published-to-settled
     latency p50/p99 of the trades (arrival to commit).

Usage::

    python scripts/bench_settle.py                      # 1,000,000 trades, SQLite (+ PostgreSQL if reachable)
    python scripts/bench_settle.py --trades 200000 --pg-url postgresql://postgres@127.0.0.1:PORT/evengine

PostgreSQL: ``--pg-url``, else ``$EVENGINE_POSTGRES_URL``, else a throwaway
server from ``scripts/postgres.sh`` when it can start one; ``--no-pg`` skips.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

from engine.consumers.settlement import POSTING_COLUMNS, TRADE_COLUMNS, Record, SettlementStore  # noqa: E402
from engine.consumers.sql import connect  # noqa: E402
from engine.core import Kind, Matcher  # noqa: E402
from engine.io.messages import encode_ledger, encode_trade  # noqa: E402
from engine.io.synthetic import SyntheticSource  # noqa: E402

_TRADE, _BALANCE = Kind.TRADE.value, Kind.BALANCE_CHANGED.value


def build_flow(trades: int, accounts: int, symbols: int, seed: int) -> tuple[list, int, int]:
    """``(records, n_trades, n_ledger)``: both topics' records in publishing order."""
    m = Matcher(trade_history=1)
    gens = [SyntheticSource(10**9, seed + i, symbol=f"SYM{i}", accounts=accounts).commands(m, None)
            for i in range(symbols)]
    records: list = []
    offsets = {"ledger": 0, "trades": 0}
    n_trades = n_ledger = 0
    while n_trades < trades:
        for g in gens:
            for _ in range(50):
                cmd = next(g)
                seq = m.last_seq + 1
                events = m.apply(seq, cmd)
                trade_seq = seq
                for ev in events:
                    k = ev[0]
                    if k == _BALANCE:
                        records.append(Record("ledger", 0, offsets["ledger"], encode_ledger(ev, cmd[1])))
                        offsets["ledger"] += 1
                        n_ledger += 1
                    elif k == _TRADE:
                        trade_seq += 1               # a command's trades take the seqs after it
                        records.append(Record("trades", 0, offsets["trades"],
                                              encode_trade(trade_seq, ev, cmd[-2], cmd[-1])))
                        offsets["trades"] += 1
                        n_trades += 1
    return records, n_trades, n_ledger


def batches(records: list, size: int) -> list:
    return [records[i:i + size] for i in range(0, len(records), size)]


def baseline(url: str, parts: list) -> float:
    """The same rows, decoded, one bulk insert and one commit per batch, nothing else."""
    db = connect(url)
    db.executescript("DROP TABLE IF EXISTS base_postings; DROP TABLE IF EXISTS base_trades; "
                     "CREATE TABLE base_postings (shard TEXT, ledger_seq BIGINT, leg SMALLINT, cmd_seq BIGINT, ts_ns BIGINT, "
                     "account BIGINT, asset TEXT, reason TEXT, ref BIGINT, available_delta BIGINT, "
                     "held_delta BIGINT, available_after BIGINT, held_after BIGINT, digest TEXT); "
                     "CREATE TABLE base_trades (shard TEXT, match_id BIGINT, symbol TEXT, symbol_seq BIGINT, seq BIGINT, "
                     "cmd_seq BIGINT, ts_ns BIGINT, price BIGINT, qty BIGINT, taker_side TEXT, "
                     "maker_order_id BIGINT, taker_order_id BIGINT, maker_account BIGINT, taker_account BIGINT, "
                     "digest TEXT)")
    loads = orjson.loads
    t0 = time.perf_counter()
    for batch in parts:
        post, trades = [], []
        for rec in batch:
            m = loads(rec.value)
            if rec.topic == "ledger":
                post.append((m["shard"] if "shard" in m else "0", m["ledger_seq"], 0, m["cmd_seq"], m["ts_ns"], m["account"], m["asset"], m["reason"],
                             m["ref"], m["available_delta"], m["held_delta"], m["available"], m["held"], None))
            else:
                trades.append(tuple(m.get(c) for c in TRADE_COLUMNS[:-1]) + ("",))
        with db.transaction():
            db.insert_rows("base_postings", POSTING_COLUMNS, post)
            db.insert_rows("base_trades", TRADE_COLUMNS, trades)
    seconds = time.perf_counter() - t0
    db.executescript("DROP TABLE base_postings; DROP TABLE base_trades")
    db.close()
    return seconds


def settle(url: str, parts: list) -> tuple[float, SettlementStore]:
    store = SettlementStore(connect(url))
    t0 = time.perf_counter()
    for batch in parts:
        store.apply(batch)
    return time.perf_counter() - t0, store


def latency(url: str, records: list, rate: float, n_trades: int, seconds: float, max_batch: int) -> dict:
    """Arrivals on a clock at ``rate`` trades/s (their ledger entries
    spread alike); each batch is whatever has arrived when the previous
    commit ends. Returns p50/p99 of arrival-to-commit of the trades (ms)."""
    store = SettlementStore(connect(url))
    total = min(len(records), int(rate * seconds * len(records) / max(n_trades, 1)))
    records = records[:total]
    gap = (seconds / total) if total else 0
    lat: list = []
    start = time.perf_counter()
    i = 0
    while i < len(records):
        now = time.perf_counter() - start
        arrived = min(len(records), int(now / gap) + 1) if gap else len(records)
        if arrived <= i:
            time.sleep(max(0.0, (i + 1) * gap - now))
            continue
        j = min(arrived, i + max_batch)
        batch = records[i:j]
        store.apply(batch)
        done = time.perf_counter() - start
        lat.extend((done - k * gap) * 1000 for k in range(i, j) if batch[k - i].topic == "trades")
        i = j
    store.close()
    lat.sort()
    return {"trades": len(lat), "p50_ms": round(lat[len(lat) // 2], 2) if lat else None,
            "p99_ms": round(lat[int(len(lat) * 0.99)], 2) if lat else None,
            "max_ms": round(lat[-1], 2) if lat else None}


def pg_url(args: argparse.Namespace) -> tuple:
    """``(url, stop)``: the server to use and a function that stops one we started."""
    if args.no_pg:
        return None, lambda: None
    url = args.pg_url or os.environ.get("EVENGINE_POSTGRES_URL")
    if url:
        return url, lambda: None
    script = ROOT / "scripts" / "postgres.sh"
    run_dir = tempfile.mkdtemp(prefix="evengine-bench-pg-")
    env = dict(os.environ, POSTGRES_RUN_DIR=run_dir)
    try:
        out = subprocess.run(["bash", str(script), "start"], env=env, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        print(f"PostgreSQL: cannot start one ({exc}); skipped")
        return None, lambda: None
    url = next((line.split("=", 1)[1] for line in out.stdout.splitlines() if line.startswith("POSTGRES_URL=")), None)
    if url is None:
        print(f"PostgreSQL: scripts/postgres.sh start failed; skipped\n{out.stderr[-500:]}")
        return None, lambda: None
    return url, lambda: subprocess.run(["bash", str(script), "stop"], env=env, capture_output=True)


def fresh_pg(url: str, name: str) -> str:
    import psycopg
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    return url.rsplit("/", 1)[0] + "/" + name


def main() -> int:
    ap = argparse.ArgumentParser(description="evengine settlement benchmark")
    ap.add_argument("--trades", type=int, default=1_000_000)
    ap.add_argument("--accounts", type=int, default=1000)
    ap.add_argument("--symbols", type=int, default=8)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--batch", type=int, default=5000, help="records per batch (one transaction)")
    ap.add_argument("--rate", type=float, default=2000.0, help="trades/s offered in the latency run")
    ap.add_argument("--latency-seconds", type=float, default=10.0)
    ap.add_argument("--pg-url", default=None)
    ap.add_argument("--no-pg", action="store_true")
    args = ap.parse_args()

    t0 = time.perf_counter()
    records, n_trades, n_ledger = build_flow(args.trades, args.accounts, args.symbols, args.seed)
    print(f"flow: {n_trades:,} trades and {n_ledger:,} ledger entries over {args.accounts:,} accounts and "
          f"{args.symbols} symbols ({n_ledger / n_trades:.1f} entries a trade), built in "
          f"{time.perf_counter() - t0:.1f} s; batches of {args.batch:,} records")
    parts = batches(records, args.batch)
    results: dict = {"trades": n_trades, "ledger_entries": n_ledger, "batch": args.batch}
    work = Path(tempfile.mkdtemp(prefix="evengine-bench-settle-"))
    url, stop_pg = pg_url(args)
    stores = [("sqlite", lambda name: f"sqlite:///{work / (name + '.db')}")]
    if url:
        stores.append(("postgresql", lambda name: fresh_pg(url, name)))
    try:
        for label, make in stores:
            gc.collect()
            base = baseline(make("bench_base"), parts)
            gc.collect()
            secs, store = settle(make("bench_settle"), parts)
            sums = set(store.posting_sums().values())
            assert sums <= {0}, sums
            assert store.ledger_seq == n_ledger
            store.close()
            lat = latency(make("bench_latency"), records, args.rate, n_trades, args.latency_seconds, args.batch)
            print(f"\n{label}:")
            print(f"  baseline (bulk insert, no checks) {n_trades / base:>10,.0f} trades/s  "
                  f"{(n_trades + n_ledger) / base:>10,.0f} records/s  ({base:.1f} s)")
            print(f"  settle (exactly once, checked)   {n_trades / secs:>10,.0f} trades/s  "
                  f"{(n_trades + n_ledger) / secs:>10,.0f} records/s  ({secs:.1f} s; {secs / base:.2f}x the baseline's "
                  f"time)")
            print(f"  latency at {args.rate:,.0f} trades/s for {args.latency_seconds:.0f} s: p50 {lat['p50_ms']} ms, "
                  f"p99 {lat['p99_ms']} ms, max {lat['max_ms']} ms ({lat['trades']:,} trades)")
            results[label] = {"baseline_trades_per_s": round(n_trades / base), "settle_trades_per_s": round(n_trades / secs),
                              "settle_records_per_s": round((n_trades + n_ledger) / secs),
                              "time_vs_baseline": round(secs / base, 2), "latency": lat}
    finally:
        stop_pg()
        shutil.rmtree(work, ignore_errors=True)
    print("\n" + json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
