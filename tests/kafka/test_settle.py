"""`evengine settle` end to end: a real broker, real engine processes, real
settle processes, real SIGKILLs, a real SQLite file or PostgreSQL server.

The truth the settlement database is held to is the engine's own: its
balances (`evengine balances --json` on its data directory), its trades (its
WAL), and `evengine settlement verify`, which recomputes every balance from
the WAL up to the database's watermark. "Exact" (:func:`assert_exact`) means:
every balance equal field by field, verify without a difference and without
lag, every ledger entry settled once (``ledger_seq`` 1..n, each once), every
posting summing to zero per asset, every trade settled once under its
``(symbol, symbol_seq)`` and its ``match_id`` and equal to the engine's field
by field.

1. A funded flow through the engine with Kafka, then one settle run.
2. Settle SIGKILLed over and over while the engine publishes: by its crash
   hooks (after the database commit / inside the transaction) at several
   batch numbers, and from outside at random moments.
3. The engine SIGKILLed mid-burst and restarted (it republishes what it
   cannot prove reached Kafka) while one settle runs through it all.
4. A gap (a ledger entry and a trade missing from crafted topics): without
   the engine's data directory settle stops at it and waits; with it, it
   fills it from the WAL; a late record fills it too.
5. A repeat with another body: exit 3, the error named, nothing of it applied.
6. Malformed records: skipped with their offset logged, the rest settled.

Stores: the ``new_db`` fixture is parametrized over :data:`STORES`; PostgreSQL
comes from ``tests/support/postgres.py`` (a throwaway server, a fresh database
per use) and is skipped where there is none (failed under
``EVENGINE_REQUIRE_POSTGRES=1``).
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from engine.consumers.settlement import digest_of
from recovery.time_travel import open_data_dir
from tests.kafka.test_ledger import engine as engine_process
from tests.kafka.test_ledger import funded_flow
from tests.support import postgres as pg
from tests.support.kafka import durable_view, produce, wal_trade_messages
from tests.support.settle_run import (Db, SettleProcess, assert_verified, engine_report, group_offsets, nonzero,
                                      produce_records, settle_once, topic_end_offsets, topic_repeats, verify)
from tests.support.settlement import funded_run, stream_records

STORES = ("sqlite", "postgres")
"""The parametrization point: every test that takes ``new_db`` runs once per store."""

CRASH_AT, CRASH_AFTER = "EVENGINE_CRASH_AT", "EVENGINE_CRASH_AFTER_BATCHES"
TRADE_FIELDS = ("match_id", "symbol", "symbol_seq", "seq", "cmd_seq", "ts_ns", "price", "qty", "taker_side",
                "maker_order_id", "taker_order_id", "maker_account", "taker_account")


# --------------------------------------------------------------- fixtures
@pytest.fixture(params=STORES)
def new_db(request, tmp_path):
    """``new_db(name) -> URL`` of a fresh, empty settlement database of this
    test's store (``new_db.kind``): a SQLite file under ``tmp_path``, or a new
    database on the session's PostgreSQL server, dropped afterwards."""
    kind = request.param
    made: list = []
    if kind == "postgres":
        server = pg.server_url()          # skips (or fails under CI) when there is none

    def make(name: str = "settle") -> str:
        if kind == "sqlite":
            return f"sqlite:///{tmp_path / (name + '.db')}"
        url = pg.fresh_database(server, prefix=f"settle_{name}")
        made.append(url)
        return url
    make.kind = kind
    yield make
    for url in made:
        pg.drop_database(url)


@pytest.fixture(autouse=True)
def _no_settle_left_behind():
    """SIGKILL any settle process a failed test left running."""
    yield
    for p in SettleProcess.running:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait(timeout=30)
    SettleProcess.running.clear()


@pytest.fixture(scope="module")
def engine_run(tmp_path_factory):
    """A real durable engine run of the funded flow and the exact records its
    Kafka bridge would publish (ledger over 2 partitions), for the crafted
    topics of tests 4-6."""
    d = tmp_path_factory.mktemp("engine") / "data"
    funded_run(d, n=6000, seed=13, accounts=40)
    ledger, trades = stream_records(d, ledger_partitions=2, trade_partitions=1)
    assert len(ledger) > 5000 and len(trades) > 300
    assert {json.loads(r.value)["symbol"] for r in trades} == {"SYN"}
    assert [json.loads(r.value)["ledger_seq"] for r in ledger] == list(range(1, len(ledger) + 1))
    assert [json.loads(r.value)["symbol_seq"] for r in trades] == list(range(1, len(trades) + 1))
    assert {r.partition for r in ledger} == {0, 1}
    return d, ledger, trades


def keyed(records: list, topic: str) -> list:
    """``(partition, key, value)`` of stream records, keyed as the bridge keys them."""
    out = []
    for r in records:
        m = json.loads(r.value)
        out.append((r.partition, str(m["account"]).encode() if topic == "ledger" else m["symbol"].encode(), r.value))
    return out


# ----------------------------------------------------------------- checks
def assert_exact(db_url: str, data_dir: Path) -> dict:
    """The settlement database is the engine's book, exactly (module docstring)."""
    db = Db(db_url)
    report = engine_report(data_dir)
    engine_bal = {(r["account"], r["asset"]): (r["available"], r["held"]) for r in report["balances"]}
    settled_bal = db.balances()
    assert len(nonzero(engine_bal)) > 10
    diff = {k: (settled_bal.get(k), engine_bal.get(k)) for k in set(settled_bal) | set(engine_bal)
            if settled_bal.get(k, (0, 0)) != engine_bal.get(k, (0, 0))}
    assert not diff, f"{len(diff)} balances differ (settled, engine): {sorted(diff.items())[:10]}"
    assert set(engine_bal) <= set(settled_bal)
    # per asset: all balances together are the supply (deposits - withdrawals), as the engine says
    totals: Counter = Counter()
    for (_a, asset), (av, held) in settled_bal.items():
        totals[asset] += av + held
    assert dict(totals) == {a: t["total"] for a, t in report["totals"].items()}
    supply = {a: int(s) for a, s in db.query("SELECT asset, SUM(supply) FROM assets GROUP BY asset")}
    assert supply == {a: t["deposits_minus_withdrawals"] for a, t in report["totals"].items()}
    # verify: recomputed from the WAL, nothing differs, nothing left to settle
    v = assert_verified(db_url, data_dir)
    assert v["ledger_seq"] == v["engine_ledger_seq"] == report["ledger_seq"]
    assert set(v["posting_sums"].values()) == {0}, v["posting_sums"]
    # each ledger entry once; postings of every asset sum to zero
    seqs = [int(r[0]) for r in db.query("SELECT ledger_seq FROM postings WHERE leg = 0 ORDER BY ledger_seq")]
    assert seqs == list(range(1, report["ledger_seq"] + 1))
    sums = {a: int(s) for a, s in db.query("SELECT asset, SUM(available_delta + held_delta) FROM postings "
                                           "GROUP BY asset")}
    assert sums and set(sums.values()) == {0}, sums
    # each trade once, equal to the engine's field by field
    wal = wal_trade_messages(data_dir)
    rows = db.query(f"SELECT {', '.join(TRADE_FIELDS)}, digest FROM settled_trades")
    assert len(rows) == len(wal) == v["engine_trades"] == v["trades_settled"] > 0
    assert len({r[0] for r in rows}) == len(rows), "a match_id settled twice"
    assert len({(r[1], r[2]) for r in rows}) == len(rows), "a (symbol, symbol_seq) settled twice"
    bad = []
    for r in rows:
        msg = wal.get(r[0])
        got = dict(zip(TRADE_FIELDS, r))
        if msg is None or got != {f: msg[f] for f in TRADE_FIELDS} or r[-1] != digest_of(msg):
            bad.append((got, msg))
    assert not bad, f"{len(bad)} settled trades differ from the engine's: {bad[:3]}"
    per_symbol: dict = {}
    for r in rows:
        per_symbol.setdefault(r[1], []).append(r[2])
    assert all(sorted(s) == list(range(1, len(s) + 1)) for s in per_symbol.values())
    return v


def engine_ledger_seq(data_dir: Path) -> int:
    h = open_data_dir(str(data_dir))
    return h.balance_report(h.last_seq)["ledger_seq"]


# ------------------------------------------------------------------ tests
def test_a_funded_run_through_the_engine_settles_exactly(tmp_path, kafka_bootstrap, make_topics, new_db):
    """The engine consumes a funded flow from ``orders`` and publishes
    ``ledger`` (2 partitions) and ``trades``; one settle run (idle exit)
    settles all of it exactly; a second run finds nothing to do."""
    t = make_topics("orders", "trades")
    t.update(make_topics("ledger", partitions=2))
    values = funded_flow(20_000, seed=51)
    offsets = produce(kafka_bootstrap, t["orders"], values)
    data = tmp_path / "engine"
    eng = engine_process(data, kafka_bootstrap, t)
    eng.wait_position(f"kafka:{t['orders']}:0", offsets[-1], timeout_s=120)
    k = eng.stop()["kafka"]
    assert k["orders"] == len(values) and k["ledger_republished"] == k["republished"] == 0
    assert k["ledger_published"] > 20_000 and k["trades_published"] > 2000
    db_url = new_db()
    s, log = settle_once(kafka_bootstrap, db_url, t, tmp_path / "logs", data_dir=data, idle_exit_s=3)
    assert s["error"] is None and s["stopped_by"].startswith("idle"), s
    assert (s["ledger_applied"], s["trades_settled"]) == (k["ledger_published"], k["trades_published"])
    assert s["records"] == k["ledger_published"] + k["trades_published"]
    assert (s["repeats"], s["malformed"], s["held"], s["gaps"], s["filled_from_wal"]) == (0, 0, 0, 0, 0), s
    v = assert_exact(db_url, data)
    assert v["ledger_seq"] == k["ledger_published"]
    # the offsets in the database are the topics' ends: a second run reads nothing and changes nothing
    ends = {**topic_end_offsets(kafka_bootstrap, t["ledger"]), **topic_end_offsets(kafka_bootstrap, t["trades"])}
    assert Db(db_url).positions() == ends
    before = Db(db_url).dump()
    s2, _ = settle_once(kafka_bootstrap, db_url, t, tmp_path / "logs", data_dir=data, idle_exit_s=2)
    assert s2["error"] is None and (s2["records"], s2["batches"]) == (0, 0), s2
    assert Db(db_url).dump() == before


KILLS = 30          # per store: 10 by each hook, 10 from outside


def test_settle_killed_thirty_times_while_the_engine_publishes_loses_nothing_and_doubles_nothing(
        tmp_path, kafka_bootstrap, make_topics, new_db):
    """One engine run fed a funded flow chunk by chunk (it publishes the
    whole time); meanwhile settle runs are killed one after another, in
    turn: by ``settle-after-db-commit`` and ``settle-before-db-commit`` at
    batch 1..8, and by SIGKILL from outside after a random 0.3-2 s; small
    batches (--max-records 5..25: settle falls behind the engine), with and without --data-dir. After each
    kill: a kill before the commit at batch 1 left the database as it was; a
    kill after the commit left the batch with the group's offsets behind
    the database's; every few kills verify finds no difference. After a
    final clean run: exact, and that run resumed from the database's offsets
    (no record read twice: the topics hold no repeat)."""
    rng = random.Random(20261203)
    t = make_topics("orders", "trades")
    t.update(make_topics("ledger", partitions=2))
    group = f"settle-{t['ledger']}"
    values = funded_flow(80_000, seed=52)
    first = 20_000                # a backlog from the start: settle's runs work through it while more comes
    last = len(values) - 2_000    # the tail, held back for the last kill
    source = f"kafka:{t['orders']}:0"
    data = tmp_path / "engine"
    logs = tmp_path / "logs"
    offsets = produce(kafka_bootstrap, t["orders"], values[:first])
    eng = engine_process(data, kafka_bootstrap, t)
    eng.wait_position(source, offsets[-1], timeout_s=60)
    sent: list = []

    def feed() -> None:           # ~60 s of orders: the engine keeps publishing through the kills
        for i in range(first, last, 1000):
            sent.extend(produce(kafka_bootstrap, t["orders"], values[i:min(i + 1000, last)]))
            time.sleep(0.85)
    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()

    db_url = new_db()
    db = Db(db_url)
    kills: Counter = Counter()
    progressed: Counter = Counter()
    checks = {"unchanged": 0, "group_behind": 0, "verified_mid_run": 0}
    deadline = time.monotonic() + 240
    modes = ("after", "before", "outside")
    i = 0
    while sum(kills.values()) < KILLS or feeder.is_alive():
        assert time.monotonic() < deadline, f"kills {dict(kills)} after 240 s"
        mode = modes[i % 3]
        i += 1
        before = db.fingerprint() if db.exists() else None
        kw = dict(max_records=rng.choice([5, 10, 25]), data_dir=data if rng.random() < 0.5 else None,
                  idle_exit_s=30, group=group)
        if mode == "outside":
            p = SettleProcess(kafka_bootstrap, db_url, t, logs, **kw)
            time.sleep(rng.uniform(0.3, 2.0))
            assert p.alive(), f"settle exited {p.proc.poll()} before the kill: {p.stderr()[-3000:]}"
            assert p.kill() == -9
        else:
            batch = rng.choice([1, 1, 2, 3, 5, 8])
            p = SettleProcess(kafka_bootstrap, db_url, t, logs, env={CRASH_AT: f"settle-{mode}-db-commit",
                                                                     CRASH_AFTER: str(batch)}, **kw)
            rc = p.wait(120)
            assert rc == -9, f"the {mode}-commit hook at batch {batch} did not fire (exit {rc}): {p.stderr()[-3000:]}"
            assert f"SIGKILL {mode} the database commit" in p.stderr()
        kills[mode] += 1
        after = db.fingerprint() if db.exists() else None
        progressed[mode] += after != before
        if mode == "before" and batch == 1:
            assert after == before, "a kill inside the first transaction left something in the database"
            checks["unchanged"] += 1
        if mode == "after":
            pos = db.positions()
            committed = group_offsets(kafka_bootstrap, group, pos)
            # the group's offsets are committed after the database's: never ahead of them, and behind
            # them when the killed batch moved an offset (it may not have: records held behind a
            # partition not read yet leave their partition's offset where it was)
            assert all(committed[k] is None or committed[k] <= o for k, o in pos.items()), (pos, committed)
            checks["group_behind"] += any(committed[k] is None or committed[k] < o for k, o in pos.items())
        if sum(kills.values()) % 6 == 0 and db.exists():
            rc, report = verify(db_url, data)         # the engine's WAL while it runs, up to the watermark
            assert report["differences"] == [] and rc == 0, report
            checks["verified_mid_run"] += 1
    feeder.join()
    assert len(sent) == last - first
    # the last kill: after the database commit of batch 1 of the tail (until it moved an offset: a
    # batch may hold all its records behind the other partition), so the group's offsets are
    # behind the database's when the final run starts
    sent.extend(produce(kafka_bootstrap, t["orders"], values[last:]))
    eng.wait_position(source, len(values) - 1, timeout_s=120)
    for _attempt in range(8):
        before = db.positions()
        p = SettleProcess(kafka_bootstrap, db_url, t, logs, max_records=20, idle_exit_s=30, group=group,
                          env={CRASH_AT: "settle-after-db-commit", CRASH_AFTER: "1"})
        assert p.wait(120) == -9, p.stderr()[-3000:]
        kills["after"] += 1
        if db.positions() != before:
            break
    pos = db.positions()
    committed = group_offsets(kafka_bootstrap, group, pos)
    assert pos != before and any(committed[k] is None or committed[k] < o for k, o in pos.items()), \
        (before, pos, committed)
    k = eng.stop()["kafka"]
    assert k["orders"] == len(values) and k["ledger_republished"] == k["republished"] == 0
    assert topic_repeats(kafka_bootstrap, t) == (0, 0)      # the engine was not killed: each record once
    settled_before_final = db.ledger_seq()
    assert 0 < settled_before_final <= k["ledger_published"]
    p = SettleProcess(kafka_bootstrap, db_url, t, logs, data_dir=data, idle_exit_s=3, group=group)
    assert p.wait(240) == 0, p.stderr()[-3000:]
    s = p.summary()
    assert s["error"] is None and s["repeats"] == 0, s     # resumed at the database's offsets, not the group's
    assert s["ledger_applied"] == k["ledger_published"] - settled_before_final
    assert_exact(db_url, data)
    print(f"\n[{new_db.kind}] kills {dict(kills)} (made progress: {dict(progressed)}), checks {checks}, "
          f"settled {settled_before_final} of {k['ledger_published']} ledger entries before the final run")
    assert sum(kills.values()) >= KILLS and min(kills[m] for m in modes) >= KILLS // 3
    # most kills landed mid-settlement (a batch may apply nothing: records held behind the other partition)
    assert min(progressed[m] for m in modes) >= KILLS // 6, progressed
    assert checks["group_behind"] >= KILLS // 6, checks       # the hook fired between the two commits
    assert checks["unchanged"] >= 1 and checks["verified_mid_run"] >= 4


def test_the_engine_killed_and_restarted_mid_stream_settles_exactly(tmp_path, kafka_bootstrap, make_topics,
                                                                      new_db):
    """Three times the engine catches up, its published watermark is saved,
    a burst of orders comes in and it is SIGKILLed 0.05-0.25 s into it and
    restarted: it republishes from its WAL what it cannot prove Kafka has.
    One settle process (--data-dir) runs through it all. It sees the repeats
    (exactly the topics' repeated records, plus the Kafka copies of any
    entry it derived from the WAL first) and ends exact; so does a fresh
    database settled afterwards from the whole topics in one run."""
    rng = random.Random(53)
    t = make_topics("orders", "trades")
    t.update(make_topics("ledger", partitions=2))
    values = funded_flow(40_000, seed=53)
    cuts = [6_000, 14_000, 22_000, 30_000, len(values)]
    source = f"kafka:{t['orders']}:0"
    data = tmp_path / "engine"
    logs = tmp_path / "logs"
    watermark = data / "kafka-published.json"

    def published_ledger_seq() -> int:
        try:
            return json.loads(watermark.read_text())["ledger_seq"]
        except (OSError, ValueError, KeyError):
            return 0

    db_url = new_db("live")
    settle = SettleProcess(kafka_bootstrap, db_url, t, logs, data_dir=data, max_records=500)
    offsets = produce(kafka_bootstrap, t["orders"], values[:cuts[0]])
    engine_logs = []
    seen_published: list = []
    for start, end in zip(cuts, cuts[1:4]):
        eng = engine_process(data, kafka_bootstrap, t, "--snapshot-every", "15000")
        st = eng.wait_position(source, offsets[-1], timeout_s=60)
        durable = durable_view(data, st["last_seq"]).balance_report(st["last_seq"])["ledger_seq"]
        deadline = time.monotonic() + 60
        # Everything durable is published (the end checks it never runs past the WAL's
        # own ledger). A status once paired a newer position with an older last_seq
        # (its positions went out by reference, encoded later), which made this view
        # lag the watermark; fixed in the engine's status reply.
        while published_ledger_seq() < durable:
            assert time.monotonic() < deadline, (published_ledger_seq(), durable, eng.status(), eng.stderr()[-2000:])
            time.sleep(0.02)
        seen_published.append(published_ledger_seq())
        burst: list = []
        producer = threading.Thread(target=lambda: burst.extend(produce(kafka_bootstrap, t["orders"],
                                                                        values[start:end])))
        producer.start()
        time.sleep(rng.uniform(0.05, 0.25))
        engine_logs.append(eng.kill())
        producer.join(timeout=60)
        assert len(burst) == end - start
        offsets += burst
        assert settle.alive(), settle.stderr()[-3000:]
    offsets += produce(kafka_bootstrap, t["orders"], values[cuts[3]:])
    eng = engine_process(data, kafka_bootstrap, t)
    eng.wait_position(source, offsets[-1], timeout_s=120)
    eng.stop()
    engine_logs.append(eng.stderr())
    republished = sum(int(x) for x in
                      re.findall(r"and (\d+) balance change\(s\) above ledger_seq", "".join(engine_logs)))
    n_ledger, n_trades = engine_ledger_seq(data), len(wal_trade_messages(data))
    assert max(seen_published) <= n_ledger, (seen_published, n_ledger)   # never published past the WAL
    db = Db(db_url)
    deadline = time.monotonic() + 120
    while (db.ledger_seq(), db.trades()) != (n_ledger, n_trades):
        assert time.monotonic() < deadline, (db.ledger_seq(), n_ledger, db.trades(), n_trades, settle.stderr()[-3000:])
        assert settle.alive(), settle.stderr()[-3000:]
        time.sleep(0.2)
    assert settle.stop() == 0, settle.stderr()[-3000:]
    s = settle.summary()
    dup_ledger, dup_trades = topic_repeats(kafka_bootstrap, t)
    print(f"\n[{new_db.kind}] engine republished {republished} ledger entries; the topics repeat {dup_ledger} "
          f"ledger and {dup_trades} trade records; settle: {s}")
    assert republished > 0 and dup_ledger + dup_trades > 0
    assert s["error"] is None and s["repeats"] == dup_ledger + dup_trades + s["filled_from_wal"], s
    assert s["ledger_applied"] == n_ledger and s["trades_settled"] == n_trades
    assert_exact(db_url, data)
    # the topics as they stand, settled from scratch in one run (no WAL: nothing is missing from Kafka)
    fresh = new_db("fresh")
    s2, _ = settle_once(kafka_bootstrap, fresh, t, logs, idle_exit_s=3, group=f"fresh-{t['ledger']}")
    assert s2["error"] is None and s2["repeats"] == dup_ledger + dup_trades and s2["filled_from_wal"] == 0, s2
    assert s2["held"] == 0
    assert_exact(fresh, data)


def test_a_gap_waits_without_the_wal_and_is_filled_from_it_or_by_the_late_record(tmp_path, kafka_bootstrap,
                                                                                   make_topics, new_db, engine_run):
    """Crafted topics: the records the engine's bridge publishes for a real
    run, with one ledger entry (ledger_seq L) and one trade (symbol_seq M)
    left out. Without --data-dir settle applies everything below them and
    waits: gaps recorded open, the partitions' offsets held at the first
    waiting record, verify clean with the lag of what waits. With --data-dir
    it derives the two from the WAL and ends exact. On a second database,
    the missing records appended late fill the gaps as well."""
    d, ledger, trades = engine_run
    t = make_topics("ledger", partitions=2)
    t.update(make_topics("trades"))
    logs = tmp_path / "logs"
    lost_l, lost_t = len(ledger) // 2, len(trades) // 2            # indexes: ledger_seq L = lost_l + 1
    L, M = lost_l + 1, lost_t + 1
    placed_l = produce_records(kafka_bootstrap, t["ledger"], keyed([r for i, r in enumerate(ledger) if i != lost_l],
                                                                   "ledger"))
    placed_t = produce_records(kafka_bootstrap, t["trades"], keyed([r for i, r in enumerate(trades) if i != lost_t],
                                                                   "trades"))
    # where each partition must wait: at its first record after the gap
    held_at: dict = {}
    for (part, off), r in zip(placed_l, [r for i, r in enumerate(ledger) if i != lost_l]):
        if json.loads(r.value)["ledger_seq"] > L:
            held_at.setdefault((t["ledger"], part), off)
    held_at[(t["trades"], 0)] = placed_t[lost_t][1]
    assert len(held_at) == 3
    gaps_open = [("ledger:0", L, L, False, None), ("trades:SYN", M, M, False, None)]

    a = new_db("a")
    s, log = settle_once(kafka_bootstrap, a, t, logs, idle_exit_s=6)
    assert s["error"] is None and (s["ledger_applied"], s["trades_settled"]) == (L - 1, M - 1), s
    assert (s["gaps"], s["filled_from_wal"]) == (2, 0), s
    assert s["held"] == (len(ledger) - L) + (len(trades) - M), s
    assert f"ledger_seq {L}..{L} missing" in log and f"symbol_seq {M}..{M} missing" in log, log[-3000:]
    assert Db(a).gaps() == gaps_open
    assert Db(a).positions() == held_at
    v = assert_verified(a, d, ledger_lag=len(ledger) - (L - 1), trades_lag=len(trades) - (M - 1))
    assert v["ledger_seq"] == L - 1
    # a restart without the WAL reads the held records again and still waits
    s, _ = settle_once(kafka_bootstrap, a, t, logs, idle_exit_s=5)
    assert (s["ledger_applied"], s["trades_settled"], s["gaps"]) == (0, 0, 0), s
    assert s["held"] == (len(ledger) - L) + (len(trades) - M), s
    assert Db(a).gaps() == gaps_open and Db(a).positions() == held_at
    # with the engine's data directory: derived from its WAL, exact
    s, log = settle_once(kafka_bootstrap, a, t, logs, data_dir=d, idle_exit_s=5)
    assert s["error"] is None and s["filled_from_wal"] == 2 and s["held"] == 0, s
    assert (s["ledger_applied"], s["trades_settled"]) == (len(ledger) - L + 1, len(trades) - M + 1), s
    assert Db(a).gaps() == [("ledger:0", L, L, True, "wal"), ("trades:SYN", M, M, True, "wal")]
    ends = {**topic_end_offsets(kafka_bootstrap, t["ledger"]), **topic_end_offsets(kafka_bootstrap, t["trades"])}
    assert Db(a).positions() == ends
    assert_exact(a, d)

    # a second database: stuck at the same gaps, then the missing records come late
    b = new_db("b")
    s, _ = settle_once(kafka_bootstrap, b, t, logs, idle_exit_s=6, group=f"b-{t['ledger']}")
    assert (s["ledger_applied"], s["trades_settled"], s["gaps"]) == (L - 1, M - 1, 2), s
    assert Db(b).gaps() == gaps_open
    produce_records(kafka_bootstrap, t["ledger"], keyed([ledger[lost_l]], "ledger"))
    produce_records(kafka_bootstrap, t["trades"], keyed([trades[lost_t]], "trades"))
    s, _ = settle_once(kafka_bootstrap, b, t, logs, idle_exit_s=4, group=f"b-{t['ledger']}")
    assert s["error"] is None and s["filled_from_wal"] == 0 and s["held"] == 0, s
    assert (s["ledger_applied"], s["trades_settled"]) == (len(ledger) - L + 1, len(trades) - M + 1), s
    assert Db(b).gaps() == [("ledger:0", L, L, True, "late records"), ("trades:SYN", M, M, True, "late records")]
    assert_exact(b, d)
    # and the first database takes the late copies as repeats, changing nothing but its offsets
    before = Db(a).dump()
    s, _ = settle_once(kafka_bootstrap, a, t, logs, data_dir=d, idle_exit_s=2)
    assert (s["repeats"], s["ledger_applied"], s["trades_settled"]) == (2, 0, 0), s
    after = Db(a).dump()
    assert {k: v for k, v in after.items() if k != "consumer_positions"} == \
        {k: v for k, v in before.items() if k != "consumer_positions"}


@pytest.mark.parametrize("stream", ["ledger", "trades"])
def test_a_repeat_with_another_body_stops_settle_with_nothing_applied(tmp_path, kafka_bootstrap, make_topics,
                                                                      new_db, engine_run, stream):
    """Half of one stream settled; an exact copy and a re-formatted copy of
    settled records are repeats (nothing changes but the offsets); then a
    copy of a settled record with one field changed, followed by the rest of
    the stream: settle exits 3 naming the ConflictError and the record, and
    the database is exactly as before it; so again on a restart."""
    d, ledger, trades = engine_run
    t = make_topics("ledger", "trades")
    logs = tmp_path / "logs"
    records = {"ledger": [r._replace(partition=0) for r in ledger], "trades": trades}
    this, other = records[stream], records["trades" if stream == "ledger" else "ledger"]
    half = len(this) // 2
    produce_records(kafka_bootstrap, t["trades" if stream == "ledger" else "ledger"],
                    keyed(other, "trades" if stream == "ledger" else "ledger"))
    produce_records(kafka_bootstrap, t[stream], keyed(this[:half], stream))
    db_url = new_db()
    s, _ = settle_once(kafka_bootstrap, db_url, t, logs, idle_exit_s=3)
    assert s["error"] is None and s["records"] == len(other) + half, s
    lag = {"ledger_lag": len(ledger) - half, "trades_lag": 0} if stream == "ledger" else \
        {"ledger_lag": 0, "trades_lag": len(trades) - half}
    v0 = assert_verified(db_url, d, **lag)
    db = Db(db_url)

    # repeats: the same bytes, and the same message re-formatted (other key order, spaces)
    same = this[half // 3]
    reformatted = json.dumps(dict(reversed(list(json.loads(this[half // 2].value).items()))), indent=1).encode()
    assert reformatted != this[half // 2].value
    produce_records(kafka_bootstrap, t[stream], [(0, b"k", same.value), (0, b"k", reformatted)])
    before = db.dump()
    s, _ = settle_once(kafka_bootstrap, db_url, t, logs, idle_exit_s=2)
    assert s["error"] is None and s["repeats"] == 2 and s["ledger_applied"] + s["trades_settled"] == 0, s
    after = db.dump()
    assert {k: v for k, v in after.items() if k != "consumer_positions"} == \
        {k: v for k, v in before.items() if k != "consumer_positions"}
    assert after["consumer_positions"] != before["consumer_positions"]

    # the conflict: a settled record again with one field changed, then the rest of the stream
    j = half // 2
    victim = json.loads(this[j].value)
    if stream == "ledger":
        victim["ts_ns"] += 1
        label = f"ledger_seq {victim['ledger_seq']}"
    else:
        victim["price"] += 1
        label = f"symbol_seq {victim['symbol_seq']}"
    produce_records(kafka_bootstrap, t[stream], [(0, b"k", json.dumps(victim).encode())] + keyed(this[half:], stream))
    before = db.dump()
    for _ in range(2):                      # and again after a restart: the contradiction stays
        s, log = settle_once(kafka_bootstrap, db_url, t, logs, idle_exit_s=3, expect_rc=3)
        assert "ConflictError" in log and label in log, log[-3000:]
        err = [line for line in log.splitlines() if line.startswith("error:")]
        assert err and "ConflictError" in err[-1] and label in err[-1], log[-3000:]
        assert s.get("error") and "ConflictError" in s["error"], s
        assert db.dump() == before
    rc, report = verify(db_url, d)
    assert rc == 0 and report["differences"] == [] and report["ledger_seq"] == v0["ledger_seq"], report
    assert (report["ledger_lag"], report["trades_lag"]) == (lag["ledger_lag"], lag["trades_lag"])


def test_malformed_records_are_skipped_and_the_rest_settled(tmp_path, kafka_bootstrap, make_topics, new_db,
                                                            engine_run):
    """Garbage mixed into both topics (not JSON, empty, a tombstone, JSON of
    the wrong shape or types, invalid UTF-8, an int beyond 64 bits, the
    other topic's message): each is skipped with its topic, partition and
    offset logged, counted as malformed, and its offset passed; everything
    else settles exactly."""
    d, ledger, trades = engine_run
    t = make_topics("ledger", partitions=2)
    t.update(make_topics("trades"))
    logs = tmp_path / "logs"
    a_trade, an_entry = trades[0].value, ledger[0].value
    huge = json.loads(an_entry)
    huge["ledger_seq"] = 2 ** 70
    junk_ledger = [b"not json", b"", None, b"[1, 2, 3]", b"{}", b'{"ledger_seq": "7", "account": 1}',
                   b"\xff\xfe\x00{", a_trade, json.dumps(huge).encode(), b'{"ledger_seq": 1.5}']
    junk_trades = [b"nope", None, b"{}", an_entry, b'{"match_id": 1, "symbol": 7, "symbol_seq": 1}', b"\x00"]
    cut_l, cut_t = [len(ledger) // 3, 2 * len(ledger) // 3], [len(trades) // 2]

    def mix(records: list, junk: list, cuts: list, topic: str, parts: int) -> tuple[list, list]:
        out, where = [], []
        pieces = [records[:cuts[0]]] + [records[a:b] for a, b in zip(cuts, cuts[1:] + [len(records)])]
        per = -(-len(junk) // (len(pieces)))
        for n, piece in enumerate(pieces):
            out += keyed(piece, topic)
            for x, value in enumerate(junk[n * per:(n + 1) * per]):
                where.append(len(out))
                out.append(((n + x) % parts, b"junk", value))
        return out, where

    lmix, lwhere = mix(ledger, junk_ledger, cut_l, "ledger", 2)
    tmix, twhere = mix(trades, junk_trades, cut_t, "trades", 1)
    assert lwhere[-1] == len(lmix) - 1 and twhere[-1] == len(tmix) - 1     # junk at the very end too
    placed_l = produce_records(kafka_bootstrap, t["ledger"], lmix)
    placed_t = produce_records(kafka_bootstrap, t["trades"], tmix)
    junk_at = [(t["ledger"], *placed_l[i]) for i in lwhere] + [(t["trades"], *placed_t[i]) for i in twhere]
    db_url = new_db()
    s, log = settle_once(kafka_bootstrap, db_url, t, logs, idle_exit_s=3)
    assert s["error"] is None and s["malformed"] == len(junk_at) == len(junk_ledger) + len(junk_trades), s
    assert (s["ledger_applied"], s["trades_settled"]) == (len(ledger), len(trades)), s
    assert (s["repeats"], s["gaps"], s["held"]) == (0, 0, 0), s
    skipped = [line for line in log.splitlines() if "skipped record" in line]
    missing = [w for w in junk_at if f"skipped record {w[0]}[{w[1]}] offset {w[2]}" not in log]
    assert not missing and len(skipped) == len(junk_at), (missing, skipped)
    ends = {**topic_end_offsets(kafka_bootstrap, t["ledger"]), **topic_end_offsets(kafka_bootstrap, t["trades"])}
    assert Db(db_url).positions() == ends           # the junk at the ends passed too
    assert_exact(db_url, d)


@pytest.mark.parametrize("stream,field", [("ledger", "ts_ns"), ("trades", "price")])
def test_records_that_decode_but_lack_a_field_are_skipped_too(tmp_path, kafka_bootstrap, make_topics, new_db,
                                                              engine_run, stream, field):
    """Right before a real ledger entry a copy of it without ``ts_ns``, or
    right before a real trade a copy of it without ``price``: malformed like
    any other record, it must be skipped and logged, and the real one after
    it settled, exactly."""
    d, ledger, trades = engine_run
    t = make_topics("ledger", "trades")
    records = {"ledger": [r._replace(partition=0) for r in ledger], "trades": trades}
    other = "trades" if stream == "ledger" else "ledger"
    this = records[stream]
    half = len(this) // 2
    broken = json.loads(this[half].value)
    del broken[field]
    produce_records(kafka_bootstrap, t[other], keyed(records[other], other))
    produce_records(kafka_bootstrap, t[stream], keyed(this[:half], stream) + [(0, b"k", json.dumps(broken).encode())]
                    + keyed(this[half:], stream))
    db_url = new_db()
    s, log = settle_once(kafka_bootstrap, db_url, t, tmp_path / "logs", idle_exit_s=3)
    assert s["malformed"] == 1 and (s["ledger_applied"], s["trades_settled"]) == (len(ledger), len(trades)), s
    assert f"skipped record {t[stream]}[0] offset {half}" in log
    assert_exact(db_url, d)
