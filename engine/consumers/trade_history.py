"""The trade history: every trade of the ``trades`` topic in SQL (SQLite or PostgreSQL), once.

``trades`` is delivered at least once (``engine/io/MESSAGES.md``): after a
restart the engine publishes again every trade it cannot prove reached
Kafka. Several engines (shards by symbol) may publish into one topic, each
numbering its ``match_id`` from 1, so a trade's keys are ``(shard,
match_id)`` and ``(symbol, symbol_seq)`` (MESSAGES.md version 3; a record
without ``shard`` is shard ``"0"``).

:class:`TradeStore` keeps the trades in one
:class:`~engine.consumers.sql.Database`, fed by the shared Kafka loop
(:class:`~engine.consumers.kafka_loop.StoreConsumer`, as the settlement is).
One batch of records is one transaction holding its trades *and* the Kafka
offsets past them (``trade_positions``); on start the loop seeks every
partition to the offsets in the database, never to the consumer group's
(those are committed after the database, for lag monitoring only). So:

- **nothing lost, nothing twice**: a crash before the commit leaves nothing
  of the batch and its offsets; a crash after it leaves both;
- **repeats verified**: a trade at or below its symbol's stored
  ``symbol_seq`` is a repeat (the engine republishes after a restart); it
  must equal the stored trade field for field, else :class:`ConflictError`
  stops the consumer with nothing of the batch applied. So must a trade
  whose ``(shard, match_id)`` is stored under another ``(symbol,
  symbol_seq)``;
- **gaps**: a jump of more than one in a symbol's ``symbol_seq`` is a gap,
  logged and recorded in ``gaps``; the trade after it is stored anyway. With
  the engine's data directory on this machine the missing trades are read
  from its WAL (as records of its shard, ``engine.io.shard``) in the same
  transaction; a gap the WAL cannot fill yet stays open and is retried (the
  loop calls ``apply([])`` while :meth:`TradeStore.waiting`), as are late
  records that land in it;
- **malformed records** (not a trade message) are logged with topic,
  partition and offset and skipped; their offsets are passed.

Tables (``SCHEMA_VERSION`` in ``trade_history_meta``): ``trades``
(:data:`COLUMNS`; primary key ``(shard, match_id)``, unique ``(symbol,
symbol_seq)``), ``symbols(symbol, last_symbol_seq)``, ``gaps(symbol,
from_symbol_seq, to_symbol_seq, detected_at_ns, filled, filled_at_ns)``
(bounds inclusive, ns since the epoch, ``filled`` 0 or 1) and
``trade_positions(topic, partition_id, next_offset)``. A SQLite file of
schema version 1 (evengine 0.2: no shard, no positions, trades keyed by
``match_id``) is migrated when opened: its trades become shard ``"0"`` and
the topic is read again from the beginning (what is stored comes back as
verified repeats).

Command line: ``evengine trades-consumer`` (``engine/consumers/cli.py``).
Crash hooks for tests: ``EVENGINE_CRASH_AT=trades-consumer-after-db-commit``
or ``trades-consumer-before-db-commit`` with ``EVENGINE_CRASH_AFTER_BATCHES=N``
(:mod:`engine.consumers.kafka_loop`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import time
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Optional, Union

from engine.io.messages import decode_trade, trade_message
from engine.io.shard import DEFAULT_SHARD, is_shard_id, read_shard

from .kafka_loop import CRASH_AFTER_ENV, CRASH_ENV, LoopConfig, LoopStats, Record, StoreConsumer, StoreError
from .sql import Database, TransientDatabaseError, connect, describe_url

__all__ = ["TradeStore", "ApplyCounts", "ConsumerConfig", "ConsumerStats", "TradeHistoryConsumer",
           "run_consumer", "trade_row", "open_database", "COLUMNS", "SCHEMA_VERSION", "NAME", "Record",
           "TradeHistoryError", "ConflictError", "SchemaError", "CRASH_ENV", "CRASH_AFTER_ENV"]

log = logging.getLogger("evengine.trades_consumer")

NAME = "trades-consumer"
"""The consumer's name in the shared loop: client id, logs, crash hooks
(``EVENGINE_CRASH_AT=trades-consumer-after-db-commit``)."""

SCHEMA_VERSION = 2
"""Version of the tables (``trade_history_meta.schema_version``). Version 1:
the SQLite file of evengine 0.2, migrated on open."""

COLUMNS = ("shard", "match_id", "symbol", "symbol_seq", "seq", "cmd_seq", "ts_ns", "price", "qty", "taker_side",
           "maker_order_id", "taker_order_id", "maker_account", "taker_account", "input_source", "input_offset")
"""Columns of the ``trades`` table, in order: the fields of a trade message,
with ``input`` flattened into ``input_source`` and ``input_offset``."""

_V1_COLUMNS = COLUMNS[1:]
_TEXT_COLUMNS = {"shard", "symbol", "taker_side", "input_source"}
_INT64 = (-(1 << 63), (1 << 63) - 1)
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM trades"

_TRADES_TABLE = """
CREATE TABLE IF NOT EXISTS trades (
    shard          TEXT   NOT NULL DEFAULT '0',
    match_id       BIGINT NOT NULL,
    symbol         TEXT   NOT NULL,
    symbol_seq     BIGINT NOT NULL,
    seq            BIGINT,
    cmd_seq        BIGINT,
    ts_ns          BIGINT,
    price          BIGINT,
    qty            BIGINT,
    taker_side     TEXT,
    maker_order_id BIGINT,
    taker_order_id BIGINT,
    maker_account  BIGINT,
    taker_account  BIGINT,
    input_source   TEXT,
    input_offset   BIGINT,
    PRIMARY KEY (shard, match_id),
    UNIQUE (symbol, symbol_seq)
)"""

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS trade_history_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
)""",
    _TRADES_TABLE,
    """CREATE TABLE IF NOT EXISTS symbols (
    symbol          TEXT   PRIMARY KEY,
    last_symbol_seq BIGINT NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS gaps (
    symbol          TEXT    NOT NULL,
    from_symbol_seq BIGINT  NOT NULL,
    to_symbol_seq   BIGINT  NOT NULL,
    detected_at_ns  BIGINT  NOT NULL,
    filled          INTEGER NOT NULL DEFAULT 0,
    filled_at_ns    BIGINT,
    PRIMARY KEY (symbol, from_symbol_seq)
)""",
    """CREATE TABLE IF NOT EXISTS trade_positions (
    topic        TEXT    NOT NULL,
    partition_id INTEGER NOT NULL,
    next_offset  BIGINT  NOT NULL,
    PRIMARY KEY (topic, partition_id)
)""",
)


class TradeHistoryError(StoreError):
    """The stream or the database contradicts the trade history: the
    consumer stops, nothing of the batch is applied."""


class ConflictError(TradeHistoryError):
    """A repeat whose body differs from the trade stored under its key
    (``(symbol, symbol_seq)``, ``(shard, match_id)``), or a WAL trade that
    differs from the record on Kafka."""


class SchemaError(TradeHistoryError):
    """The database is not a trade history this evengine reads (another
    schema version, a settlement database, a foreign ``trades`` table)."""


def trade_row(trade: dict) -> tuple:
    """A trade message (the dict of :func:`~engine.io.messages.decode_trade`) as
    a row of ``trades``, in :data:`COLUMNS` order. Fields other than
    ``match_id``, ``symbol`` and ``symbol_seq`` may be missing (stored as NULL;
    ``shard``: ``"0"``).

    Raises:
        ValueError: not a storable trade: ``match_id`` or ``symbol_seq`` not an
            integer >= 1, ``symbol`` not a string, ``shard`` not a shard id, a
            field of the wrong type (an object where a number belongs) or an
            integer beyond 64 bits.
    """
    if not isinstance(trade, dict):
        raise ValueError(f"a trade is a dict, not {type(trade).__name__}")
    inp = trade.get("input")
    if inp is None:
        inp = {}
    elif not isinstance(inp, dict):
        raise ValueError(f"input must be an object or null, not {type(inp).__name__}")
    values = {name: trade.get(name) for name in COLUMNS[:-2]}
    if values["shard"] is None:
        values["shard"] = DEFAULT_SHARD
    values["input_source"] = inp.get("source")
    values["input_offset"] = inp.get("offset")
    for key in ("match_id", "symbol_seq"):
        v = values[key]
        if type(v) is not int or v < 1:
            raise ValueError(f"{key} must be an integer >= 1, got {v!r}")
    if not isinstance(values["symbol"], str):
        raise ValueError(f"symbol must be a string, got {values['symbol']!r}")
    if not is_shard_id(values["shard"]):
        raise ValueError(f"shard must be a shard id (1..32 of A-Z a-z 0-9 . _ -), got {values['shard']!r}")
    for name, v in values.items():
        if v is None:
            continue
        if name in _TEXT_COLUMNS:
            if not isinstance(v, str):
                raise ValueError(f"{name} must be a string or null, got {v!r}")
        elif type(v) is not int or not _INT64[0] <= v <= _INT64[1]:
            raise ValueError(f"{name} must be a 64-bit integer or null, got {v!r}")
    return tuple(values[name] for name in COLUMNS)


@dataclass
class ApplyCounts:
    """What one :meth:`TradeStore.apply` did (or a run's totals).

    Attributes:
        stored: trades of the batch stored now (late records into a gap included).
        repeats: trades already stored, verified equal (skipped).
        malformed: records that are not trade messages (skipped, logged).
        gaps: gaps found (one per jump of a symbol's ``symbol_seq``).
        gaps_filled: gaps now complete (filled from the WAL, or by late records).
        filled_trades: trades read from the engine's WAL and stored to fill gaps.
        gaps_open: gaps still unfilled after the batch (a state, not a sum).
    """

    stored: int = 0
    repeats: int = 0
    malformed: int = 0
    gaps: int = 0
    gaps_filled: int = 0
    filled_trades: int = 0
    gaps_open: int = 0

    def add(self, other: "ApplyCounts") -> None:
        for k, v in asdict(other).items():
            setattr(self, k, v if k == "gaps_open" else getattr(self, k) + v)


def open_database(url: Union[str, os.PathLike]) -> Database:
    """:func:`engine.consumers.sql.connect` for the trade history: ``url`` is
    ``sqlite:///PATH``, ``postgresql://...`` or a bare path (SQLite). A
    SQLite file's directory is created when missing, and a writer waits up
    to 30 s for another one's lock."""
    url = os.fspath(url)
    path = None
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):]
    elif "://" not in url:
        path = url
    if path is not None and path != ":memory:" and not path.startswith("file:"):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    db = connect(url)
    if db.dialect == "sqlite":
        db.execute("PRAGMA busy_timeout=30000")
    return db


def _unique_violation(exc: BaseException) -> bool:
    """Whether ``exc`` is a primary-key or unique violation (SQLite or PostgreSQL)."""
    if isinstance(exc, sqlite3.IntegrityError):
        return "UNIQUE constraint failed" in str(exc)
    return getattr(exc, "sqlstate", None) == "23505"


def _transient(db: Database, exc: BaseException) -> bool:
    """Whether ``exc``, raised outside a transaction, is the server going away."""
    if db.dialect != "postgresql":
        return False
    import psycopg
    return isinstance(exc, (psycopg.OperationalError, psycopg.errors.AdminShutdown))


class _Gap:
    """An unfilled gap ``a..b`` of a symbol and the ``symbol_seq`` stored in it."""

    __slots__ = ("a", "b", "have")

    def __init__(self, a: int, b: int, have: Iterable[int] = ()) -> None:
        self.a, self.b, self.have = a, b, set(have)

    def copy(self) -> "_Gap":
        return _Gap(self.a, self.b, self.have)

    def full(self) -> bool:
        return len(self.have) >= self.b - self.a + 1


class TradeStore:
    """The trade history in one database, a transaction per batch (see the module docstring).

    Args:
        db: a :class:`~engine.consumers.sql.Database`, or a URL or path for
            :func:`open_database`. The tables are created (or a version-1
            SQLite file migrated) when missing.
        data_dir: the engine's data directory, read-only, to fill gaps from
            its WAL; ``None``: gaps are recorded and wait for late records.
        gap_retry_s: a batch also retries the open gaps when they were last
            tried this long ago (``apply([])`` always retries them).

    Attributes:
        db: the database.
        positions: ``(topic, partition) -> next offset``, as committed.

    Raises:
        SchemaError: the database is not this store's (see the class).
        TransientDatabaseError: the database went away while opening.
    """

    def __init__(self, db: Union[Database, str, os.PathLike], data_dir: Optional[Union[str, os.PathLike]] = None,
                 gap_retry_s: float = 1.0) -> None:
        self.db = db if isinstance(db, Database) else open_database(db)
        self.data_dir = None if data_dir is None else os.fspath(data_dir)
        self.gap_retry_s = gap_retry_s
        self.positions: dict = {}
        self._last: dict[str, int] = {}
        self._open: dict[str, list[_Gap]] = {}
        self._last_retry = time.monotonic()
        try:
            self.create_schema()
            self.load()
        except TransientDatabaseError:
            raise
        except Exception as exc:
            if _transient(self.db, exc):
                raise TransientDatabaseError(f"{describe_url(self.db.url)}: {exc}".strip()) from None
            raise

    # ------------------------------------------------------------- set-up
    def _tables(self) -> set:
        if self.db.dialect == "sqlite":
            return {r[0] for r in self.db.query("SELECT name FROM sqlite_master WHERE type = 'table'")}
        return {r[0] for r in self.db.query(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")}

    def _columns(self, table: str) -> list:
        if self.db.dialect == "sqlite":
            return [r[1] for r in self.db.query(f"PRAGMA table_info({table})")]
        return [r[0] for r in self.db.query(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
            "AND table_name = ? ORDER BY ordinal_position", (table,))]

    def create_schema(self) -> None:
        """Create the tables, or check the version of those there, or migrate
        a version-1 SQLite file; one transaction."""
        db, url = self.db, describe_url(self.db.url)
        with db.transaction():
            tables = self._tables()
            if "settlement_meta" in tables:
                raise SchemaError(f"{url} is a settlement database: give the trade history a database of its own")
            if "trade_history_meta" in tables:
                found = db.query("SELECT value FROM trade_history_meta WHERE key = 'schema_version'")
                if found and found[0][0] != str(SCHEMA_VERSION):
                    raise SchemaError(f"{url}: trade history schema version {found[0][0]}, this evengine reads "
                                      f"version {SCHEMA_VERSION}")
                if found:
                    return
            elif "trades" in tables:
                columns = self._columns("trades")
                if db.dialect == "sqlite" and sorted(columns) == sorted(_V1_COLUMNS):
                    self._migrate_v1()
                else:
                    raise SchemaError(f"{url} holds a trades table that is not a trade history's "
                                      f"(columns {', '.join(columns)})")
            for statement in _SCHEMA:
                db.execute(statement)
            db.execute("INSERT INTO trade_history_meta (key, value) VALUES ('schema_version', ?)",
                       (str(SCHEMA_VERSION),))

    def _migrate_v1(self) -> None:
        """Version 1 (a SQLite file of evengine 0.2) to 2, inside the
        caller's transaction: ``trades`` rebuilt with ``shard`` (``"0"``) in
        its primary key; the positions start empty (the topic is read again,
        what is stored comes back as verified repeats)."""
        db = self.db
        n = db.query("SELECT COUNT(*) FROM trades")[0][0]
        db.execute("ALTER TABLE trades RENAME TO trades_v1")
        db.execute(_TRADES_TABLE)
        cols = ", ".join(_V1_COLUMNS)
        db.execute(f"INSERT INTO trades (shard, {cols}) SELECT ?, {cols} FROM trades_v1", (DEFAULT_SHARD,))
        db.execute("DROP TABLE trades_v1")
        log.warning("%s: migrated the trade history from schema version 1 to %d: %d trades as shard %r; the "
                    "topic is read again from its beginning (the trades stored come back as repeats)",
                    describe_url(db.url), SCHEMA_VERSION, n, DEFAULT_SHARD)

    def load(self) -> None:
        """Read the committed state (positions, each symbol's last
        ``symbol_seq``, the open gaps) into memory."""
        db = self.db
        with db.transaction():
            positions = {(t, p): o for t, p, o in db.query(
                "SELECT topic, partition_id, next_offset FROM trade_positions")}
            last = {s: n for s, n in db.query("SELECT symbol, last_symbol_seq FROM symbols")}
            gaps: dict[str, list[_Gap]] = {}
            for symbol, a, b in db.query("SELECT symbol, from_symbol_seq, to_symbol_seq FROM gaps "
                                         "WHERE filled = 0 ORDER BY symbol, from_symbol_seq"):
                have = [r[0] for r in db.query("SELECT symbol_seq FROM trades WHERE symbol = ? AND symbol_seq "
                                               "BETWEEN ? AND ?", (symbol, a, b))]
                gaps.setdefault(symbol, []).append(_Gap(a, b, have))
        self.positions, self._last, self._open = positions, last, gaps

    # ------------------------------------------------------------ queries
    def last_symbol_seq(self, symbol: str) -> int:
        """The highest ``symbol_seq`` stored of ``symbol`` (0: none yet)."""
        return self._last.get(symbol, 0)

    @property
    def open_gaps(self) -> list[tuple[str, int, int]]:
        """Unfilled gaps as ``[(symbol, from_symbol_seq, to_symbol_seq), ...]`` (inclusive)."""
        return [(s, g.a, g.b) for s, gaps in sorted(self._open.items()) for g in sorted(gaps, key=lambda g: g.a)]

    def count(self) -> int:
        """Number of trades stored."""
        return self.db.query("SELECT COUNT(*) FROM trades")[0][0]

    def waiting(self) -> bool:
        """Whether gaps are open that the WAL may fill later (the loop then
        calls ``apply([])`` now and then)."""
        return self.data_dir is not None and bool(self._open)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "TradeStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -------------------------------------------------------------- apply
    def apply(self, records: Iterable[Record]) -> ApplyCounts:
        """Store one batch of Kafka records (any partitions, each in offset
        order) in one transaction with the offsets past them; see the module
        docstring. ``apply([])`` retries the open gaps.

        Returns:
            The batch's :class:`ApplyCounts`.

        Raises:
            ConflictError: a repeat differs from the stored trade; nothing of
                the batch stays.
            TransientDatabaseError: the database went away; nothing stayed;
                reopen the store and apply the same records again.
            Exception: any other database error; nothing stayed, the store
                goes on (its memory is only changed after a commit).
        """
        records = list(records)
        counts = ApplyCounts()
        top: dict = {}
        batch: list = []
        for rec in records:
            key = (rec.topic, rec.partition)
            if rec.offset > top.get(key, -1):
                top[key] = rec.offset
            try:
                if rec.value is None:
                    raise ValueError("empty value (tombstone)")
                msg = decode_trade(rec.value)
                batch.append((rec, msg, trade_row(msg)))
            except (ValueError, TypeError, RecursionError) as exc:
                counts.malformed += 1
                shown = rec.value[:200] if rec.value is not None else None
                log.warning("skipped a record that is not a trade message: topic %s partition %d offset %d: %s; "
                            "value %r", rec.topic, rec.partition, rec.offset, str(exc)[:200], shown)
        positions = {k: o + 1 for k, o in top.items() if o + 1 > self.positions.get(k, 0)}
        retry = bool(self.data_dir is not None and self._open
                     and (not records or time.monotonic() - self._last_retry >= self.gap_retry_s))
        if not (batch or positions or retry):
            counts.gaps_open = len(self.open_gaps)
            return counts
        plan = _Plan(self, counts)
        try:
            with self.db.transaction():
                plan.trades(batch)
                if retry:
                    plan.retry_gaps()
                plan.check_repeats()
                plan.write(positions)
        except Exception as exc:
            if _unique_violation(exc):
                raise ConflictError(plan.describe_key_conflict(exc)) from None
            raise
        if retry:
            self._last_retry = time.monotonic()
        plan.commit_to_memory(positions)
        counts.gaps_open = len(self.open_gaps)
        return counts

    def retry_gaps(self) -> ApplyCounts:
        """Try again to fill every open gap from the WAL (``apply([])``)."""
        return self.apply([])


class _Plan:
    """One batch worked out in memory inside the transaction; the store's
    memory changes only in :meth:`commit_to_memory`, after the commit."""

    def __init__(self, store: TradeStore, counts: ApplyCounts) -> None:
        self.s = store
        self.counts = counts
        self.rows: dict = {}                 # (symbol, symbol_seq) -> row, to insert
        self.ids: dict = {}                  # (shard, match_id) -> (symbol, symbol_seq) of the rows
        self.from_wal: set = set()           # (symbol, symbol_seq) of the rows read from the WAL
        self.last: dict = {}                 # symbol -> last symbol_seq, changed ones
        self.gaps: dict = {}                 # symbol -> [_Gap], copies of the touched symbols'
        self.gaps_found: list = []           # (symbol, a, b)
        self.gaps_closed: list = []          # (symbol, a)
        self.tried: set = set()              # (symbol, a) of the gaps read from the WAL in this batch
        self.repeats: list = []              # (rec, row)
        self._wal: Any = None                # the data dir's History, opened once a batch
        self._shard: Optional[str] = None    # the data dir's shard id

    # -------------------------------------------------------------- trades
    def _gaps_of(self, symbol: str) -> list:
        gaps = self.gaps.get(symbol)
        if gaps is None:
            gaps = self.gaps[symbol] = [g.copy() for g in self.s._open.get(symbol, ())]
        return gaps

    def _last_of(self, symbol: str) -> int:
        return self.last.get(symbol, self.s._last.get(symbol, 0))

    def _add(self, row: tuple, rec: Optional[Record]) -> None:
        shard, match_id, symbol, n = row[:4]
        other = self.ids.get((shard, match_id))
        if other is not None:
            raise ConflictError(f"trade shard {shard} match_id {match_id} arrived as {other[0]} symbol_seq "
                                f"{other[1]} and as {symbol} symbol_seq {n}{_where(rec)}")
        self.ids[(shard, match_id)] = (symbol, n)
        self.rows[(symbol, n)] = row

    def trades(self, batch: list) -> None:
        counts = self.counts
        for rec, msg, row in batch:
            symbol, n = row[2], row[3]
            have = self.rows.get((symbol, n))
            if have is not None:             # earlier in this batch, or read from the WAL in it
                if have != row:
                    raise ConflictError(_differs(symbol, n, have, row, rec, "the engine's WAL" if (symbol, n) in
                                                 self.from_wal else "a record earlier in the batch"))
                counts.repeats += 1
                continue
            last = self._last_of(symbol)
            if n <= last:
                gap = next((g for g in self._gaps_of(symbol) if g.a <= n <= g.b), None) \
                    if symbol in self.s._open or symbol in self.gaps else None
                if gap is not None and n not in gap.have:      # a late record into a gap
                    self._add(row, rec)
                    gap.have.add(n)
                    counts.stored += 1
                    self._check_filled(symbol, gap)
                else:
                    self.repeats.append((rec, row))
                    counts.repeats += 1
                continue
            if n > last + 1:
                self._gap(symbol, last + 1, n - 1, msg)
            self._add(row, rec)
            self.last[symbol] = n
            counts.stored += 1

    def _gap(self, symbol: str, a: int, b: int, msg: dict) -> None:
        s = self.s
        log.warning("gap in %s: symbol_seq %d..%d missing (%d trades) before match_id %d (symbol_seq %d)%s",
                    symbol, a, b, b - a + 1, msg["match_id"], msg["symbol_seq"],
                    "; filling it from the WAL" if s.data_dir else "; no data_dir given, recorded unfilled")
        self.counts.gaps += 1
        gap = _Gap(a, b)
        self._gaps_of(symbol).append(gap)
        self.gaps_found.append((symbol, a, b))
        if s.data_dir is not None:
            seq = msg.get("seq")
            self._fill(symbol, gap, seq if type(seq) is int else None, msg["shard"])

    def retry_gaps(self) -> None:
        """Read the WAL again for every open gap not tried in this batch."""
        for symbol in sorted(set(self.s._open) | set(self.gaps)):
            for gap in list(self._gaps_of(symbol)):
                if (symbol, gap.a) in self.tried:
                    continue
                after = self._row_at(symbol, gap.b + 1)
                upper = after[COLUMNS.index("seq")] if after is not None else None
                shard = after[0] if after is not None else None
                self._fill(symbol, gap, upper, shard, retry=True)

    def _row_at(self, symbol: str, n: int) -> Optional[tuple]:
        row = self.rows.get((symbol, n))
        if row is None:
            found = self.s.db.query(f"{_SELECT} WHERE symbol = ? AND symbol_seq = ?", (symbol, n))
            row = tuple(found[0]) if found else None
        return row

    def _wal_shard(self) -> str:
        """The data directory's shard id (``shard.json``), read once a batch."""
        if self._shard is None:
            self._shard = read_shard(self.s.data_dir)
        return self._shard

    def _history(self) -> Any:
        """The data directory as a :class:`recovery.History`, opened once a
        batch (a WAL that grows is seen by the next batch)."""
        if self._wal is None:
            from recovery.time_travel import open_data_dir
            self._wal = open_data_dir(self.s.data_dir)
        return self._wal

    def _fill(self, symbol: str, gap: _Gap, upper_seq: Optional[int], shard: Optional[str],
              retry: bool = False) -> None:
        """Store the trades of ``gap`` that the WAL holds; close the gap once
        all are stored. ``upper_seq``: the WAL seq of the trade after the gap
        (the read stops before it), or ``None``; ``shard``: the shard of the
        trades around the gap (a WAL of another shard cannot fill it).
        ``retry``: a gap already reported (what is still missing is logged at
        DEBUG only, not at every retry)."""
        from eventstore import EventStoreError

        a, b = gap.a, gap.b
        self.tried.add((symbol, a))
        wanted = b - a + 1
        found = 0
        try:
            wal_shard = self._wal_shard()
            if shard is not None and shard != wal_shard:
                raise ValueError(f"its trades are of shard {shard!r}, the data directory is shard {wal_shard!r}")
            history = self._history()
            # Read from the command of the last trade before the gap: the
            # missing trades and the commands that caused them all come after
            # it (a gap from symbol_seq 1 is read from the WAL's start).
            before = self._row_at(symbol, a - 1) if a > 1 else None
            start = (before[COLUMNS.index("cmd_seq")] if before is not None else None) or 1
            end = None if upper_seq is None else upper_seq - 1
            for seq, obj, source, pos in history.trades_with_input(start, end):
                if obj.symbol != symbol:
                    continue
                n = obj.symbol_seq
                if n > b:
                    break
                if n < a:
                    continue
                found += 1
                if n not in gap.have:
                    row = trade_row(trade_message(seq, obj, source, pos, wal_shard))
                    mine = self.rows.get((symbol, n))
                    if mine is not None and mine != row:
                        raise ConflictError(_differs(symbol, n, mine, row, None, "the engine's WAL"))
                    self._add(row, None)
                    self.from_wal.add((symbol, n))
                    gap.have.add(n)
                    self.counts.filled_trades += 1
                if found == wanted:
                    break
        except (EventStoreError, OSError, ValueError) as exc:
            problem = f"cannot fill it from the WAL of {self.s.data_dir}: {exc}"
        else:
            problem = f"the WAL of {self.s.data_dir} holds {found} of the {wanted} missing trades"
        if not self._check_filled(symbol, gap):
            log.log(logging.DEBUG if retry else logging.WARNING,
                    "gap in %s: symbol_seq %d..%d: %s; left unfilled, will retry", symbol, a, b, problem)

    def _check_filled(self, symbol: str, gap: _Gap) -> bool:
        if not gap.full():
            return False
        self._gaps_of(symbol).remove(gap)
        self.gaps_closed.append((symbol, gap.a))
        self.counts.gaps_filled += 1
        log.info("gap in %s: symbol_seq %d..%d filled", symbol, gap.a, gap.b)
        return True

    # ------------------------------------------------------------ repeats
    def check_repeats(self) -> None:
        """Every repeat must equal the stored trade: one query per symbol.

        Raises:
            ConflictError: the first repeat that differs.
        """
        by_symbol: dict = {}
        for rec, row in self.repeats:
            by_symbol.setdefault(row[2], []).append((rec, row))
        for symbol, items in by_symbol.items():
            lo = min(row[3] for _, row in items)
            hi = max(row[3] for _, row in items)
            stored = {r[3]: tuple(r) for r in self.s.db.query(
                f"{_SELECT} WHERE symbol = ? AND symbol_seq BETWEEN ? AND ?", (symbol, lo, hi))}
            for rec, row in items:
                n = row[3]
                have = stored.get(n)
                if have is None:
                    have = self.rows.get((symbol, n))
                if have is None:
                    # at or below the symbol's last symbol_seq, in no open gap, yet not stored: a row
                    # deleted behind the store's back. Stored again.
                    log.warning("trade %s symbol_seq %d is missing below the last stored symbol_seq; stored "
                                "again%s", symbol, n, _where(rec))
                    self._add(row, rec)
                    self.counts.repeats -= 1
                    self.counts.stored += 1
                elif have != row:
                    raise ConflictError(_differs(symbol, n, have, row, rec, "the stored trade"))

    def describe_key_conflict(self, exc: BaseException) -> str:
        """Which row of the batch hit a stored ``(shard, match_id)`` (after the rollback)."""
        try:
            by_shard: dict = {}
            for (shard, match_id), key in self.ids.items():
                by_shard.setdefault(shard, []).append((match_id, key))
            for shard, items in by_shard.items():
                for i in range(0, len(items), 500):
                    chunk = dict(items[i:i + 500])
                    marks = ", ".join("?" for _ in chunk)
                    for _shard, match_id, symbol, n in self.s.db.query(
                            f"SELECT shard, match_id, symbol, symbol_seq FROM trades WHERE shard = ? AND match_id "
                            f"IN ({marks})", (shard, *chunk)):
                        new = chunk[match_id]
                        if new != (symbol, n):
                            return (f"trade shard {shard} match_id {match_id} is stored as {symbol} symbol_seq {n}; "
                                    f"a record brings it as {new[0]} symbol_seq {new[1]}")
        except Exception:     # the database is gone too: the constraint's own words must do
            pass
        return f"a trade's (shard, match_id) or (symbol, symbol_seq) is stored with another body: {exc}"

    # -------------------------------------------------------------- write
    def write(self, positions: dict) -> None:
        db = self.s.db
        db.insert_rows("trades", COLUMNS, list(self.rows.values()))
        if self.last:
            db.executemany("INSERT INTO symbols (symbol, last_symbol_seq) VALUES (?, ?) ON CONFLICT (symbol) "
                           "DO UPDATE SET last_symbol_seq = excluded.last_symbol_seq", sorted(self.last.items()))
        now = time.time_ns()
        if self.gaps_found:
            db.executemany("INSERT INTO gaps (symbol, from_symbol_seq, to_symbol_seq, detected_at_ns, filled) "
                           "VALUES (?, ?, ?, ?, 0) ON CONFLICT (symbol, from_symbol_seq) DO UPDATE SET "
                           "to_symbol_seq = excluded.to_symbol_seq, detected_at_ns = excluded.detected_at_ns, "
                           "filled = 0, filled_at_ns = NULL", [(s, a, b, now) for s, a, b in self.gaps_found])
        if self.gaps_closed:
            db.executemany("UPDATE gaps SET filled = 1, filled_at_ns = ? WHERE symbol = ? AND from_symbol_seq = ?",
                           [(now, s, a) for s, a in self.gaps_closed])
        if positions:
            db.executemany("INSERT INTO trade_positions (topic, partition_id, next_offset) VALUES (?, ?, ?) "
                           "ON CONFLICT (topic, partition_id) DO UPDATE SET next_offset = excluded.next_offset",
                           [(t, p, o) for (t, p), o in sorted(positions.items())])

    def commit_to_memory(self, positions: dict) -> None:
        s = self.s
        s._last.update(self.last)
        for symbol, gaps in self.gaps.items():
            if gaps:
                s._open[symbol] = gaps
            else:
                s._open.pop(symbol, None)
        s.positions.update(positions)


def _where(rec: Optional[Record]) -> str:
    return "" if rec is None else f" (topic {rec.topic} partition {rec.partition} offset {rec.offset})"


def _differs(symbol: str, n: int, have: tuple, row: tuple, rec: Optional[Record], what: str) -> str:
    fields = ", ".join(f"{c}: {a!r} there, {b!r} here" for c, a, b in zip(COLUMNS, have, row) if a != b)
    return f"trade {symbol} symbol_seq {n}{_where(rec)} differs from {what}: {fields}"


# --------------------------------------------------------------------- consumer
@dataclass
class ConsumerConfig:
    """Settings of one :class:`TradeHistoryConsumer`.

    Attributes:
        bootstrap_servers: Kafka ``host:port[,host:port...]``.
        topic: the trades topic (every partition is read).
        group: the consumer group the offsets are committed to after each
            database commit, for lag monitoring only (a restart resumes from
            the offsets in the database).
        db_url: ``sqlite:///PATH``, ``postgresql://...`` or a bare path (:func:`open_database`).
        data_dir: the engine's data directory, to fill gaps from its WAL (optional).
        max_records: most records per batch (one transaction).
        poll_timeout_ms: how long one poll waits for records; also the longest
            a stop request waits.
        gap_retry_s: while gaps are open, retry filling them at most this often (seconds).
        idle_exit_s: stop after this long without a record (``None``: until a signal).
    """

    bootstrap_servers: str
    topic: str = "trades"
    group: str = "trade-history"
    db_url: str = "sqlite:///data/trades.sqlite"
    data_dir: Optional[str] = None
    max_records: int = 500
    poll_timeout_ms: int = 500
    gap_retry_s: float = 1.0
    idle_exit_s: Optional[float] = None


ConsumerStats = LoopStats
"""A run's stats: the shared loop's (:class:`~engine.consumers.kafka_loop.LoopStats`),
``counts`` an :class:`ApplyCounts` of the run's totals."""


def _add_counts(total: Any, counts: ApplyCounts) -> ApplyCounts:
    total = total or ApplyCounts()
    total.add(counts)
    return total


class TradeHistoryConsumer:
    """The trades topic into a :class:`TradeStore` through the shared
    :class:`~engine.consumers.kafka_loop.StoreConsumer` (name
    :data:`NAME`). Use :meth:`run` (an ``async`` call) and :meth:`request_stop`."""

    def __init__(self, config: ConsumerConfig) -> None:
        self.config = config
        self.store: Optional[TradeStore] = None       # the last store opened (closed once run returns)
        loop = LoopConfig(name=NAME, bootstrap_servers=config.bootstrap_servers, topics=(config.topic,),
                          group=config.group, max_records=config.max_records,
                          poll_timeout_ms=config.poll_timeout_ms, idle_exit_s=config.idle_exit_s,
                          retry_waiting_s=config.gap_retry_s)
        self.consumer = StoreConsumer(loop, self._open_store, _add_counts)

    @property
    def stats(self) -> LoopStats:
        return self.consumer.stats

    def _open_store(self) -> TradeStore:
        db = open_database(self.config.db_url)
        try:
            store = TradeStore(db, self.config.data_dir, self.config.gap_retry_s)
        except BaseException:
            db.close()
            raise
        log.info("%s: %s into %s (%d trades stored, %d gaps open)", NAME, self.config.topic,
                 describe_url(db.url), store.count(), len(store.open_gaps))
        self.store = store
        return store

    def request_stop(self, reason: str = "stop requested") -> None:
        """Stop after the current batch (its database and offset commits included)."""
        self.consumer.request_stop(reason)

    async def run(self, install_signal_handlers: bool = True) -> LoopStats:
        """Consume until stopped (a signal when ``install_signal_handlers``,
        :meth:`request_stop`, ``idle_exit_s``, or a :class:`ConflictError`,
        named in ``stats.error``); return the stats.

        Raises:
            aiokafka.errors.KafkaError: the broker cannot be reached at start.
            SchemaError, ValueError: the database is not a trade history, or
                its URL is not one.
        """
        return await self.consumer.run(install_signal_handlers)

    def summary(self) -> dict:
        """The run's stats and totals as one flat dict (the JSON line printed at exit)."""
        stats = self.consumer.stats
        out = stats.as_dict()
        out.update(asdict(stats.counts if isinstance(stats.counts, ApplyCounts) else ApplyCounts()))
        if self.store is not None:
            out["gaps_open"] = len(self.store.open_gaps)
            out["positions"] = {f"{t}:{p}": o for (t, p), o in sorted(self.store.positions.items())}
        return out


def run_consumer(config: ConsumerConfig, metrics: Optional[str] = None) -> LoopStats:
    """Run a :class:`TradeHistoryConsumer` in a new event loop until SIGTERM or
    SIGINT (or idle, or a conflict); print :meth:`TradeHistoryConsumer.summary`
    as one JSON line to stdout and return the stats. ``metrics``: serve
    Prometheus metrics on that ``HOST:PORT`` meanwhile (``engine.consumers.metrics``).

    Raises:
        engine.prom.MetricsBindError: the metrics address cannot be bound.
    """
    consumer = TradeHistoryConsumer(config)
    from .metrics import serve_metrics
    with serve_metrics(consumer.consumer, metrics):
        stats = asyncio.run(consumer.run())
    print(json.dumps(consumer.summary()), flush=True)
    return stats
