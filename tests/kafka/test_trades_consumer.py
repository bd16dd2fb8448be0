"""``evengine trades-consumer`` against a real broker, as a real process, into
real SQLite files (and one PostgreSQL database): every trade of the topic
stored once, whatever the repeats, crashes, gaps, shards and malformed
records on the way.

The consumer is the shared loop (``engine/consumers/kafka_loop.py``): every
partition assigned, offsets kept in the database with the trades and sought
on start; the group's offsets are committed after the database, for lag
monitoring only.

The trades are real: a synthetic engine run (three symbols, interleaved),
read back from its WAL and published with ``encode_trade`` (key: the symbol).
The database is compared, row by row and field by field, with the WAL.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest

from engine.consumers.trade_history import COLUMNS, trade_row
from engine.io.messages import encode_trade, trade_message
from engine.io.synthetic import SyntheticSource
from engine.service.engine import Engine, EngineConfig
from tests.support.crash import eventually
from tests.support.trades import run_engine, wal_messages, wal_trades

ROOT = Path(__file__).resolve().parents[2]
# Three symbols whose trades interleave in match_id order (a resumed synthetic
# source goes on where it stopped).
PLAN = [("AAA", 1, 2000), ("BBB", 2, 2000), ("CCC", 3, 1500), ("AAA", 1, 4000), ("BBB", 2, 3500)]
DEADLINE = 30.0
ROWS = f"SELECT {', '.join(COLUMNS)} FROM trades ORDER BY shard, match_id"


# ------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("engine")
    run_engine(d, PLAN)
    return d


@pytest.fixture(scope="module")
def wal(engine_dir) -> list[tuple[dict, bytes]]:
    """``[(trade message, encoded value), ...]`` of every WAL trade, in WAL order."""
    out = [(trade_message(*t), encode_trade(*t)) for t in wal_trades(engine_dir)]
    assert len(out) > 2000 and {m["symbol"] for m, _ in out} == {"AAA", "BBB", "CCC"}
    return out


def expected(messages) -> list[tuple]:
    return sorted(trade_row(m) for m in messages)


def produce(boot: str, topic: str, records: list[tuple[Optional[bytes], Optional[bytes]]]) -> dict[int, int]:
    """Publish ``(key, value)`` records in order; return ``{partition: end offset}``."""
    async def go() -> dict[int, int]:
        from aiokafka import AIOKafkaProducer
        producer = AIOKafkaProducer(bootstrap_servers=boot, acks="all", linger_ms=5)
        await producer.start()
        try:
            futures = [await producer.send(topic, value, key=key) for key, value in records]
            metas = await asyncio.gather(*futures)
        finally:
            await producer.stop()
        ends: dict[int, int] = {}
        for m in metas:
            ends[m.partition] = max(ends.get(m.partition, 0), m.offset + 1)
        return ends
    return asyncio.run(go())


def trade_records(messages_and_values) -> list[tuple[bytes, bytes]]:
    return [(m["symbol"].encode(), v) for m, v in messages_and_values]


def committed(boot: str, group: str, topic: str) -> dict[int, int]:
    """The group's committed offsets in ``topic``, ``{partition: offset}``."""
    async def go() -> dict[int, int]:
        from aiokafka.admin import AIOKafkaAdminClient
        admin = AIOKafkaAdminClient(bootstrap_servers=boot)
        await admin.start()
        try:
            got = await admin.list_consumer_group_offsets(group)
        finally:
            await admin.close()
        return {tp.partition: om.offset for tp, om in got.items() if tp.topic == topic and om.offset >= 0}
    return asyncio.run(go())


def wait_committed(boot: str, group: str, topic: str, ends: dict[int, int]) -> None:
    eventually(lambda: committed(boot, group, topic) == ends, timeout=DEADLINE, interval=0.2,
               what=f"group {group} to commit the end offsets {ends}")


def db_rows(db, sql: str = ROWS) -> list[tuple]:
    """Rows of a SQLite file (a Path) or a PostgreSQL database (a URL); [] before the tables exist."""
    if isinstance(db, str):
        import psycopg
        with psycopg.connect(db, connect_timeout=10) as conn:
            try:
                return [tuple(r) for r in conn.execute(sql).fetchall()]
            except psycopg.errors.UndefinedTable:
                return []
    if not db.exists():
        return []
    with sqlite3.connect(db, timeout=30) as conn:
        try:
            return conn.execute(sql).fetchall()
        except sqlite3.OperationalError:      # tables not created yet
            return []


def db_count(db) -> int:
    rows = db_rows(db, "SELECT COUNT(*) FROM trades")
    return rows[0][0] if rows else 0


def db_gaps(db) -> list[tuple]:
    return db_rows(db, "SELECT symbol, from_symbol_seq, to_symbol_seq, filled FROM gaps "
                       "ORDER BY symbol, from_symbol_seq")


def db_positions(db, topic: str) -> dict[int, int]:
    return {p: o for t, p, o in db_rows(db, "SELECT topic, partition_id, next_offset FROM trade_positions")
            if t == topic}


class Consumer:
    """One ``python -m engine.consumers.cli`` process; stderr goes to a file."""

    def __init__(self, boot: str, topic: str, group: str, db, *extra: str,
                 env: Optional[dict] = None, max_records: int = 300, log_dir: Optional[Path] = None) -> None:
        self.boot, self.topic, self.group = boot, topic, group
        log_dir = log_dir or db.parent
        self.log = log_dir / f"consumer.{group}.{os.urandom(3).hex()}.log"
        # the crash hook only where a test asks for it
        env = dict({k: v for k, v in os.environ.items() if not k.startswith("EVENGINE_CRASH_")}, **(env or {}))
        cmd = [sys.executable, "-m", "engine.consumers.cli", "--kafka", boot, "--topic", topic, "--group", group,
               "--db", str(db), "--max-records", str(max_records), "--poll-ms", "100", "--gap-retry-s", "0.2",
               *extra]
        with open(self.log, "w") as err:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err, text=True)

    def stderr(self) -> str:
        return self.log.read_text()

    def alive(self) -> bool:
        assert self.proc.poll() is None, f"consumer exited {self.proc.returncode}:\n{self.stderr()[-3000:]}"
        return True

    def stop(self) -> dict:
        """SIGTERM; the process must exit 0 and print its JSON summary."""
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=DEADLINE)
        assert self.proc.returncode == 0, f"consumer exited {self.proc.returncode}:\n{self.stderr()[-3000:]}"
        return json.loads(out.strip().splitlines()[-1])

    def wait_killed(self) -> None:
        """The crash hook SIGKILLs the process itself."""
        self.proc.communicate(timeout=DEADLINE)
        assert self.proc.returncode == -signal.SIGKILL, self.stderr()[-3000:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


@pytest.fixture
def consumers():
    started: list[Consumer] = []

    def start(*args, **kwargs) -> Consumer:
        c = Consumer(*args, **kwargs)
        started.append(c)
        return c
    yield start
    for c in started:
        c.kill()


def run_until_stored(c: Consumer, db, n: int, ends: dict[int, int]) -> dict:
    """Wait until ``n`` trades are stored, the database's offsets and the
    group's are ``ends``; SIGTERM; return the summary."""
    eventually(lambda: c.alive() and db_count(db) >= n, timeout=DEADLINE, interval=0.05,
               what=f"{n} trades in {db}")
    eventually(lambda: db_positions(db, c.topic) == ends, timeout=DEADLINE, interval=0.05,
               what=f"the offsets {ends} in the database")
    wait_committed(c.boot, c.group, c.topic, ends)
    return c.stop()


# -------------------------------------------------------------------- tests
def test_every_trade_stored_once_with_repeats_on_the_topic(kafka_bootstrap, make_topics, consumers, tmp_path, wal):
    topic = make_topics("trades", partitions=3)["trades"]
    # 300 trades published twice (as an engine restart republishes), in the middle
    # of the stream, and a few twice in a row: each symbol has new trades after them
    records = trade_records(wal[:1200] + wal[900:1200] + wal[1200:1210] + wal[1205:1210] + wal[1210:])
    assert {m["symbol"] for m, _ in wal[1210:]} == {"AAA", "BBB", "CCC"}
    ends = produce(kafka_bootstrap, topic, records)
    assert sum(ends.values()) == len(wal) + 305 and len(ends) > 1

    db = tmp_path / "trades.sqlite"
    summary = run_until_stored(consumers(kafka_bootstrap, topic, f"history-{topic}", db), db, len(wal),
                               ends)

    assert db_rows(db) == expected(m for m, _ in wal)
    assert (summary["stored"], summary["repeats"], summary["malformed"]) == (len(wal), 305, 0)
    assert (summary["gaps"], summary["gaps_open"], summary["records"]) == (0, 0, len(records))
    assert summary["stopped_by"] == "SIGTERM" and summary["error"] is None
    assert summary["positions"] == {f"{topic}:{p}": o for p, o in ends.items()}
    last = dict(db_rows(db, "SELECT symbol, last_symbol_seq FROM symbols"))
    assert last == {s: max(m["symbol_seq"] for m, _ in wal if m["symbol"] == s) for s in ("AAA", "BBB", "CCC")}
    assert db_gaps(db) == []


def test_sigkill_after_the_db_commit_loses_and_repeats_nothing(kafka_bootstrap, make_topics, consumers, tmp_path,
                                                               wal):
    """Killed after the database commit of batch N, before the group's offset
    commit: the group lags by that batch, but the restarted consumer resumes
    from the offsets in the database, so batch N is neither lost nor read
    again, and the database ends equal to the WAL."""
    topic = make_topics("trades", partitions=2)["trades"]
    ends = produce(kafka_bootstrap, topic, trade_records(wal))
    want = expected(m for m, _ in wal)
    for crash_after in (1, 3, 6):
        group, db = f"history-{crash_after}-{topic}", tmp_path / f"trades-{crash_after}.sqlite"
        c = consumers(kafka_bootstrap, topic, group, db, max_records=250,
                      env={"EVENGINE_CRASH_AT": "trades-consumer-after-db-commit",
                           "EVENGINE_CRASH_AFTER_BATCHES": str(crash_after)})
        c.wait_killed()
        assert "EVENGINE_CRASH_AT=trades-consumer-after-db-commit: SIGKILL after the database commit" in c.stderr()

        stored = db_rows(db)
        assert set(stored) <= set(want) and len(set(stored)) == len(stored)
        assert sum(db_positions(db, topic).values()) == len(stored)     # the offsets went with the trades
        in_flight = len(stored) - sum(committed(kafka_bootstrap, group, topic).values())
        assert 0 < in_flight <= 250, (len(stored), in_flight)          # the group's offsets lag one batch

        summary = run_until_stored(consumers(kafka_bootstrap, topic, group, db, max_records=250),
                                   db, len(wal), ends)
        assert summary["repeats"] == 0
        assert summary["stored"] == len(wal) - len(stored)
        assert summary["records"] == len(wal) - len(stored)
        assert db_rows(db) == want


def test_sigkill_before_the_db_commit_leaves_nothing_of_the_batch(kafka_bootstrap, make_topics, consumers,
                                                                  tmp_path, wal):
    topic = make_topics("trades", partitions=2)["trades"]
    ends = produce(kafka_bootstrap, topic, trade_records(wal))
    group, db = f"history-{topic}", tmp_path / "trades.sqlite"
    c = consumers(kafka_bootstrap, topic, group, db, max_records=250,
                  env={"EVENGINE_CRASH_AT": "trades-consumer-before-db-commit", "EVENGINE_CRASH_AFTER_BATCHES": "4"})
    c.wait_killed()
    assert "SIGKILL before the database commit" in c.stderr()
    stored = db_rows(db)
    assert 0 < len(stored) <= 3 * 250                                   # batches 1-3, nothing of batch 4
    assert sum(db_positions(db, topic).values()) == len(stored)
    summary = run_until_stored(consumers(kafka_bootstrap, topic, group, db, max_records=250), db, len(wal), ends)
    assert (summary["stored"], summary["repeats"]) == (len(wal) - len(stored), 0)
    assert db_rows(db) == expected(m for m, _ in wal)


def test_positions_resume_from_the_database_not_the_group(kafka_bootstrap, make_topics, consumers, tmp_path, wal):
    """Restarted under another group (whose offsets are nowhere), the consumer
    still goes on exactly where its database is."""
    topic = make_topics("trades", partitions=3)["trades"]
    first = produce(kafka_bootstrap, topic, trade_records(wal[:1000]))
    db = tmp_path / "trades.sqlite"
    s1 = run_until_stored(consumers(kafka_bootstrap, topic, f"one-{topic}", db), db, 1000, first)
    assert s1["stored"] == 1000
    ends = produce(kafka_bootstrap, topic, trade_records(wal[1000:]))
    s2 = run_until_stored(consumers(kafka_bootstrap, topic, f"two-{topic}", db), db, len(wal), ends)
    assert (s2["stored"], s2["repeats"], s2["records"]) == (len(wal) - 1000, 0, len(wal) - 1000)
    assert db_rows(db) == expected(m for m, _ in wal)


def test_two_shards_on_one_topic(kafka_bootstrap, make_topics, consumers, tmp_path):
    """Two engines (shards A and B, symbols by shard) publish into one topic:
    the same match_ids, stored side by side under their shards."""
    runs = {}
    for shard, symbol, seed in (("A", "AAA", 5), ("B", "BBB", 6)):
        d = tmp_path / f"engine-{shard}"
        engine = Engine(EngineConfig(data_dir=str(d), snapshot_every=0, control_socket=False, pin_cpus=False,
                                     pause_cyclic_gc=False, shard=shard))
        engine.open()
        engine.run(SyntheticSource(2000, seed, symbol=symbol))
        runs[shard] = [(trade_message(*t, shard), encode_trade(*t, shard)) for t in wal_trades(d)]
    a, b = runs["A"], runs["B"]
    assert {m["match_id"] for m, _ in a} & {m["match_id"] for m, _ in b}
    topic = make_topics("trades", partitions=2)["trades"]
    mixed = [x for pair in zip(a, b) for x in pair] + a[len(b):] + b[len(a):]
    ends = produce(kafka_bootstrap, topic, trade_records(mixed + a[:50] + b[:50]))
    db = tmp_path / "trades.sqlite"
    summary = run_until_stored(consumers(kafka_bootstrap, topic, f"history-{topic}", db), db, len(mixed), ends)
    assert (summary["stored"], summary["repeats"]) == (len(mixed), 100)
    assert db_rows(db) == expected(m for m, _ in mixed)
    assert dict(db_rows(db, "SELECT shard, COUNT(*) FROM trades GROUP BY shard")) == {"A": len(a), "B": len(b)}


def test_a_conflicting_repeat_stops_the_consumer(kafka_bootstrap, make_topics, consumers, tmp_path, wal):
    """A repeat whose body differs from the stored trade: exit 3, the error
    named, nothing of its batch applied, the offsets where they were."""
    topic = make_topics("trades")["trades"]
    db = tmp_path / "trades.sqlite"
    first = produce(kafka_bootstrap, topic, trade_records(wal[:500]))
    c = consumers(kafka_bootstrap, topic, f"history-{topic}", db)
    eventually(lambda: c.alive() and db_positions(db, topic) == first, timeout=DEADLINE, interval=0.05,
               what="the first 500 trades")
    before = db_rows(db)
    forged = dict(wal[100][0], qty=wal[100][0]["qty"] + 1)
    produce(kafka_bootstrap, topic, trade_records(wal[500:510]) + [(b"x", json.dumps(forged).encode())]
            + trade_records(wal[510:520]))
    c.proc.communicate(timeout=DEADLINE)
    assert c.proc.returncode == 3, c.stderr()[-3000:]
    log = c.stderr()
    assert "ConflictError" in log and f"symbol_seq {forged['symbol_seq']}" in log and "qty" in log
    stored = db_rows(db)
    assert set(before) <= set(stored) and len(stored) <= 510      # a batch before the forged one may have made it
    assert db_positions(db, topic)[0] == first[0] + len(stored) - len(before)
    assert all(r[1] not in {m["match_id"] for m, _ in wal[510:520]} for r in stored)


def test_gap_is_filled_from_the_wal_or_recorded_unfilled(kafka_bootstrap, make_topics, consumers, tmp_path,
                                                         engine_dir, wal):
    topic = make_topics("trades")["trades"]
    missing = lambda m: (m["symbol"] == "BBB" and 40 <= m["symbol_seq"] <= 52) or \
        (m["symbol"] == "CCC" and m["symbol_seq"] in (1, 2))   # noqa: E731
    kept = [(m, v) for m, v in wal if not missing(m)]
    assert len(wal) - len(kept) == 15
    ends = produce(kafka_bootstrap, topic, trade_records(kept))

    db_wal, db_none = tmp_path / "filled.sqlite", tmp_path / "unfilled.sqlite"
    with_wal = consumers(kafka_bootstrap, topic, f"with-wal-{topic}", db_wal, "--data-dir", str(engine_dir))
    without = consumers(kafka_bootstrap, topic, f"without-wal-{topic}", f"sqlite:///{db_none}",
                        log_dir=tmp_path)
    s_wal = run_until_stored(with_wal, db_wal, len(wal), ends)
    s_none = run_until_stored(without, db_none, len(kept), ends)

    assert db_rows(db_wal) == expected(m for m, _ in wal)
    assert db_gaps(db_wal) == [("BBB", 40, 52, 1), ("CCC", 1, 2, 1)]
    assert (s_wal["gaps"], s_wal["gaps_filled"], s_wal["filled_trades"], s_wal["gaps_open"]) == (2, 2, 15, 0)
    assert s_wal["stored"] == len(kept)

    assert db_rows(db_none) == expected(m for m, _ in kept)
    assert db_gaps(db_none) == [("BBB", 40, 52, 0), ("CCC", 1, 2, 0)]
    assert (s_none["gaps"], s_none["gaps_filled"], s_none["gaps_open"]) == (2, 0, 2)
    log = without.stderr()
    assert "gap in BBB: symbol_seq 40..52" in log and "gap in CCC: symbol_seq 1..2" in log


def test_gap_the_wal_does_not_hold_yet_is_filled_while_the_consumer_runs(kafka_bootstrap, make_topics, consumers,
                                                                        tmp_path, wal):
    """The consumer's engine is behind the topic (its WAL lacks part of a
    gap): the gap stays open, and is filled once the engine has written it."""
    engine_dir = tmp_path / "engine"
    run_engine(engine_dir, PLAN[:3])
    have = wal_messages(engine_dir)
    assert 0 < len(have) < len(wal) and have == [m for m, _ in wal[:len(have)]]
    top = max(m["symbol_seq"] for m in have if m["symbol"] == "AAA")
    missing = lambda m: m["symbol"] == "AAA" and top - 1 <= m["symbol_seq"] <= top + 4   # noqa: E731
    kept = [(m, v) for m, v in wal if not missing(m)]
    topic = make_topics("trades")["trades"]
    ends = produce(kafka_bootstrap, topic, trade_records(kept))

    db = tmp_path / "trades.sqlite"
    c = consumers(kafka_bootstrap, topic, f"history-{topic}", db, "--data-dir", str(engine_dir))
    eventually(lambda: c.alive() and db_count(db) == len(kept) + 2, timeout=DEADLINE, interval=0.05,
               what="the trades and the 2 of the gap the WAL holds")
    wait_committed(kafka_bootstrap, c.group, topic, ends)
    assert db_gaps(db) == [("AAA", top - 1, top + 4, 0)]

    run_engine(engine_dir, PLAN[3:])          # the engine catches up
    eventually(lambda: c.alive() and db_gaps(db) == [("AAA", top - 1, top + 4, 1)], timeout=DEADLINE,
               interval=0.05, what="the gap filled")
    summary = c.stop()
    assert db_rows(db) == expected(m for m, _ in wal)
    assert (summary["gaps"], summary["gaps_filled"], summary["filled_trades"], summary["gaps_open"]) == (1, 1, 6, 0)


def test_malformed_records_are_skipped(kafka_bootstrap, make_topics, consumers, tmp_path, wal):
    topic = make_topics("trades")["trades"]
    good = wal[:400]
    bad = [
        (b"AAA", b"not json at all"),
        (b"AAA", b'{"symbol": "AAA", "symbol_seq": 1, "price": 5}'),                 # no match_id
        (b"AAA", b"\xff\xfe\x00garbage"),                                             # not UTF-8
        (b"AAA", b"[1, 2, 3]"),                                                       # not an object
        (b"AAA", b""),                                                                # empty
        (b"AAA", None),                                                               # tombstone
        (b"ZZZ", b'{"match_id": 999999999, "symbol": "ZZZ", "symbol_seq": 1, "price": {"x": 1}}'),
        (b"ZZZ", b'{"match_id": 999999998, "symbol": "ZZZ", "symbol_seq": 0}'),
        (b"ZZZ", json.dumps({"match_id": 999999997, "symbol": "ZZZ", "symbol_seq": 1, "qty": 1 << 70}).encode()),
        (b"ZZZ", b'{"shard": "", "match_id": 999999996, "symbol": "ZZZ", "symbol_seq": 1}'),
    ]
    records = trade_records(good[:200]) + bad + trade_records(good[200:])
    ends = produce(kafka_bootstrap, topic, records)

    db = tmp_path / "trades.sqlite"
    c = consumers(kafka_bootstrap, topic, f"history-{topic}", db)
    summary = run_until_stored(c, db, len(good), ends)

    assert db_rows(db) == expected(m for m, _ in good)
    assert (summary["stored"], summary["malformed"], summary["repeats"], summary["gaps"]) == (len(good), len(bad), 0, 0)
    log = c.stderr()
    for offset in range(200, 200 + len(bad)):
        assert f"topic {topic} partition 0 offset {offset}:" in log
    assert "ZZZ" not in dict(db_rows(db, "SELECT symbol, last_symbol_seq FROM symbols"))


def test_old_options_are_accepted_and_ignored(kafka_bootstrap, make_topics, consumers, tmp_path, wal):
    topic = make_topics("trades")["trades"]
    ends = produce(kafka_bootstrap, topic, trade_records(wal[:100]))
    db = tmp_path / "trades.sqlite"
    c = consumers(kafka_bootstrap, topic, f"history-{topic}", db, "--instance-id", "one",
                  "--session-timeout-ms", "6000")
    assert run_until_stored(c, db, 100, ends)["stored"] == 100
    assert "--instance-id and --session-timeout-ms are ignored" in c.stderr()


def test_a_database_that_is_not_a_trade_history_is_refused(kafka_bootstrap, consumers, tmp_path):
    db = tmp_path / "settlement.sqlite"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE settlement_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    c = consumers(kafka_bootstrap, "trades-unused", "g", db)
    c.proc.communicate(timeout=DEADLINE)
    assert c.proc.returncode == 2 and "is a settlement database" in c.stderr()
    bad = consumers(kafka_bootstrap, "trades-unused", "g", "mysql://nope", log_dir=tmp_path)
    bad.proc.communicate(timeout=DEADLINE)
    assert bad.proc.returncode == 2 and "unknown database URL" in bad.stderr()


# ---------------------------------------------------------------- PostgreSQL
@pytest.fixture
def pg_url():
    """A fresh database on the session's PostgreSQL (tests/support/postgres.py: skips without one)."""
    from tests.support import postgres as pg
    url = pg.fresh_database(pg.server_url())
    try:
        yield url
    finally:
        pg.drop_database(url)


def test_postgresql_store_with_a_crash_after_the_db_commit(kafka_bootstrap, make_topics, consumers, tmp_path, wal,
                                                           pg_url):
    topic = make_topics("trades", partitions=2)["trades"]
    records = trade_records(wal[:1500] + wal[1000:1100] + wal[1500:])
    ends = produce(kafka_bootstrap, topic, records)
    group = f"history-{topic}"
    c = consumers(kafka_bootstrap, topic, group, pg_url, max_records=400, log_dir=tmp_path,
                  env={"EVENGINE_CRASH_AT": "trades-consumer-after-db-commit", "EVENGINE_CRASH_AFTER_BATCHES": "2"})
    c.wait_killed()
    stored, read = db_count(pg_url), sum(db_positions(pg_url, topic).values())
    assert 0 < stored <= read <= 800
    summary = run_until_stored(consumers(kafka_bootstrap, topic, group, pg_url, max_records=400, log_dir=tmp_path),
                               pg_url, len(wal), ends)
    # from the database's offsets: each record read once over the two runs
    assert (summary["stored"], summary["records"]) == (len(wal) - stored, len(records) - read)
    assert summary["repeats"] == summary["records"] - summary["stored"]
    assert db_rows(pg_url) == expected(m for m, _ in wal)
