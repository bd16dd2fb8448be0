"""The trade-history consumer: every trade of the ``trades`` topic in SQLite, once.

``trades`` is delivered at least once (``engine/io/MESSAGES.md``): after a
restart the engine publishes again every trade it cannot prove reached Kafka,
and a consumer that dies between its database commit and its offset commit is
handed the same records again. :class:`TradeStore` makes that harmless: it
keeps the highest ``symbol_seq`` per symbol, skips a trade at or below it (a
repeat) and treats a jump of more than one as a gap, which it fills from the
engine's WAL when the data directory is on this machine.

:class:`TradeHistoryConsumer` reads the topic with a Kafka consumer group and,
per batch, commits the database first and the offsets second::

    getmany -> decode_trade each value -> TradeStore.apply (one SQLite transaction)
            -> consumer.commit({partition: last offset + 1})

A crash between the two commits redelivers the batch; ``apply`` counts it as
repeats. Nothing is lost (offsets never pass an uncommitted trade) and nothing
is stored twice (``match_id`` is the primary key).

Command line: ``evengine trades-consumer`` (``engine/consumers/cli.py``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Optional

from engine.core import COMMAND_CLASSES
from engine.io.messages import decode_trade, trade_message

__all__ = ["TradeStore", "ApplyCounts", "ConsumerConfig", "ConsumerStats", "TradeHistoryConsumer",
           "run_consumer", "trade_row", "COLUMNS", "CRASH_ENV", "CRASH_AFTER_BATCHES_ENV", "CRASH_POINT"]

log = logging.getLogger("evengine.trades_consumer")

CRASH_ENV = "EVENGINE_CRASH_AT"
CRASH_AFTER_BATCHES_ENV = "EVENGINE_CRASH_AFTER_BATCHES"
CRASH_POINT = "consumer-after-db-commit"
"""Test hook: with ``EVENGINE_CRASH_AT=consumer-after-db-commit`` the consumer
SIGKILLs itself right after the database commit of batch N (``EVENGINE_CRASH_AFTER_BATCHES``,
default 1), before the offsets of that batch are committed to Kafka."""

COLUMNS = ("match_id", "symbol", "symbol_seq", "seq", "cmd_seq", "ts_ns", "price", "qty", "taker_side",
           "maker_order_id", "taker_order_id", "maker_account", "taker_account", "input_source", "input_offset")
"""Columns of the ``trades`` table, in order: the fields of a trade message,
with ``input`` flattened into ``input_source`` and ``input_offset``."""

_TEXT_COLUMNS = {"symbol", "taker_side", "input_source"}
_INT64 = (-(1 << 63), (1 << 63) - 1)
_COMMAND_TYPES = tuple(COMMAND_CLASSES.values())

_SCHEMA = """
CREATE TABLE IF NOT EXISTS trades (
    match_id       INTEGER PRIMARY KEY,
    symbol         TEXT    NOT NULL,
    symbol_seq     INTEGER NOT NULL,
    seq            INTEGER,
    cmd_seq        INTEGER,
    ts_ns          INTEGER,
    price          INTEGER,
    qty            INTEGER,
    taker_side     TEXT,
    maker_order_id INTEGER,
    taker_order_id INTEGER,
    maker_account  INTEGER,
    taker_account  INTEGER,
    input_source   TEXT,
    input_offset   INTEGER,
    UNIQUE (symbol, symbol_seq)
);
CREATE TABLE IF NOT EXISTS symbols (
    symbol          TEXT PRIMARY KEY,
    last_symbol_seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS gaps (
    symbol          TEXT    NOT NULL,
    from_symbol_seq INTEGER NOT NULL,
    to_symbol_seq   INTEGER NOT NULL,
    detected_at_ns  INTEGER NOT NULL,
    filled          INTEGER NOT NULL DEFAULT 0,
    filled_at_ns    INTEGER,
    PRIMARY KEY (symbol, from_symbol_seq)
);
"""

_INSERT = f"INSERT OR IGNORE INTO trades ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"


def trade_row(trade: dict) -> tuple:
    """A trade message (the dict of :func:`~engine.io.messages.decode_trade`) as
    a row of ``trades``, in :data:`COLUMNS` order. Fields other than
    ``match_id``, ``symbol`` and ``symbol_seq`` may be missing (stored as NULL).

    Raises:
        ValueError: not a storable trade: ``match_id`` or ``symbol_seq`` not an
            integer >= 1, ``symbol`` not a string, a field of the wrong type
            (an object where a number belongs) or an integer beyond 64 bits.
    """
    if not isinstance(trade, dict):
        raise ValueError(f"a trade is a dict, not {type(trade).__name__}")
    inp = trade.get("input")
    if inp is None:
        inp = {}
    elif not isinstance(inp, dict):
        raise ValueError(f"input must be an object or null, not {type(inp).__name__}")
    values = {name: trade.get(name) for name in COLUMNS[:-2]}
    values["input_source"] = inp.get("source")
    values["input_offset"] = inp.get("offset")
    for key in ("match_id", "symbol_seq"):
        v = values[key]
        if type(v) is not int or v < 1:
            raise ValueError(f"{key} must be an integer >= 1, got {v!r}")
    if not isinstance(values["symbol"], str):
        raise ValueError(f"symbol must be a string, got {values['symbol']!r}")
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
    """What one :meth:`TradeStore.apply` (or :meth:`TradeStore.retry_gaps`) did.

    Attributes:
        stored: trades of the batch stored now.
        repeats: trades of the batch already stored (skipped).
        gaps: gaps found (one per jump of a symbol's ``symbol_seq``).
        gaps_filled: gaps now complete (filled from the WAL, or by late records).
        filled_trades: trades read from the engine's WAL and stored to fill gaps.
    """

    stored: int = 0
    repeats: int = 0
    gaps: int = 0
    gaps_filled: int = 0
    filled_trades: int = 0


class TradeStore:
    """Trades in a SQLite file, each stored once, in one transaction per batch.

    Tables: ``trades`` (primary key ``match_id``, unique ``(symbol,
    symbol_seq)``, columns :data:`COLUMNS`), ``symbols(symbol, last_symbol_seq)``
    and ``gaps(symbol, from_symbol_seq, to_symbol_seq, detected_at_ns, filled,
    filled_at_ns)`` (``symbol_seq`` bounds inclusive, times in ns since the
    epoch, ``filled`` 0 or 1). The file is opened with ``journal_mode=WAL``
    (readers may look while it is written) and ``synchronous=FULL`` (a
    committed batch survives a power cut).

    Args:
        path: the SQLite file (created with its tables when missing).
        data_dir: the engine's data directory, read-only, to fill gaps from its
            WAL; ``None``: gaps are recorded unfilled.

    Raises:
        sqlite3.Error: the file cannot be opened or is not this store's.
    """

    def __init__(self, path: str, data_dir: Optional[str] = None) -> None:
        self.path = str(path)
        self.data_dir = None if data_dir is None else str(data_dir)
        parent = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(parent, exist_ok=True)
        # isolation_level=None: no implicit transactions; apply() opens its own.
        # check_same_thread=False: the consumer calls it from a worker thread,
        # one call at a time.
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(_SCHEMA)
        self._last: dict[str, int] = {}
        self._open: dict[str, list[tuple[int, int]]] = {}
        self._load()

    # ------------------------------------------------------------------ state
    def _load(self) -> None:
        """The in-memory copies of ``symbols`` and the unfilled ``gaps``."""
        self._last = dict(self.db.execute("SELECT symbol, last_symbol_seq FROM symbols"))
        self._open = {}
        for symbol, a, b in self.db.execute(
                "SELECT symbol, from_symbol_seq, to_symbol_seq FROM gaps WHERE filled = 0 ORDER BY symbol, from_symbol_seq"):
            self._open.setdefault(symbol, []).append((a, b))

    def last_symbol_seq(self, symbol: str) -> int:
        """The highest ``symbol_seq`` seen of ``symbol`` (0: none yet)."""
        return self._last.get(symbol, 0)

    @property
    def open_gaps(self) -> list[tuple[str, int, int]]:
        """Unfilled gaps as ``[(symbol, from_symbol_seq, to_symbol_seq), ...]`` (inclusive)."""
        return [(s, a, b) for s, spans in sorted(self._open.items()) for a, b in spans]

    def count(self) -> int:
        """Number of trades stored."""
        return self.db.execute("SELECT COUNT(*) FROM trades").fetchone()[0]

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "TradeStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ transaction
    def _transaction(self, body) -> ApplyCounts:
        counts = ApplyCounts()
        self.db.execute("BEGIN IMMEDIATE")
        try:
            body(counts)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            self._load()          # the cached seqs and gaps must match the database again
            raise
        return counts

    def apply(self, trades: Iterable[dict]) -> ApplyCounts:
        """Store a batch of trade messages (dicts of ``decode_trade``), in
        order, in one transaction: all of them or, on an error, none.

        Per trade of symbol S with ``symbol_seq`` n, S's last ``symbol_seq`` L:
        n <= L or ``match_id`` already stored: a repeat, skipped (unless n lies
        in an unfilled gap of S and is not stored yet: then it is stored and
        fills that gap in part); n == L + 1: stored; n > L + 1: a gap L+1..n-1,
        logged, recorded in ``gaps`` and filled from the WAL when ``data_dir``
        is set and its WAL holds the missing trades, then the trade is stored.

        Returns:
            The batch's :class:`ApplyCounts`.

        Raises:
            ValueError: a trade is not storable (see :func:`trade_row`); checked
                before anything is written.
            sqlite3.Error: the database failed; the batch was rolled back.
        """
        batch = [(t, trade_row(t)) for t in trades]
        if not batch:
            return ApplyCounts()
        return self._transaction(lambda counts: self._apply(batch, counts))

    def retry_gaps(self) -> ApplyCounts:
        """Try again to fill every unfilled gap from the WAL (one transaction).
        A no-op without ``data_dir`` or open gaps."""
        if self.data_dir is None or not self._open:
            return ApplyCounts()

        def body(counts: ApplyCounts) -> None:
            for symbol, a, b in self.open_gaps:
                self._fill(symbol, a, b, self._seq_of(symbol, b + 1), counts, retry=True)
        return self._transaction(body)

    # -------------------------------------------------------------- internals
    def _apply(self, batch: list, counts: ApplyCounts) -> None:
        db = self.db
        changed: set[str] = set()
        for trade, row in batch:
            symbol, n, match_id = trade["symbol"], trade["symbol_seq"], trade["match_id"]
            last = self._last.get(symbol, 0)
            if n <= last:
                gap = self._gap_holding(symbol, n)
                if gap is not None and db.execute(_INSERT, row).rowcount:
                    counts.stored += 1
                    self._check_filled(symbol, gap, counts)
                else:
                    counts.repeats += 1
                continue
            if db.execute("SELECT 1 FROM trades WHERE match_id = ?", (match_id,)).fetchone():
                log.warning("trade match_id %d (%s symbol_seq %d) is stored already under another symbol_seq; "
                            "skipped as a repeat", match_id, symbol, n)
                counts.repeats += 1
                continue
            if n > last + 1:
                self._gap(symbol, last + 1, n - 1, trade, counts)
            db.execute(_INSERT, row)
            counts.stored += 1
            self._last[symbol] = n
            changed.add(symbol)
        db.executemany("INSERT INTO symbols (symbol, last_symbol_seq) VALUES (?, ?) "
                       "ON CONFLICT (symbol) DO UPDATE SET last_symbol_seq = excluded.last_symbol_seq",
                       [(s, self._last[s]) for s in sorted(changed)])

    def _gap_holding(self, symbol: str, n: int) -> Optional[tuple[int, int]]:
        for a, b in self._open.get(symbol, ()):
            if a <= n <= b:
                return a, b
        return None

    def _gap(self, symbol: str, a: int, b: int, trade: dict, counts: ApplyCounts) -> None:
        log.warning("gap in %s: symbol_seq %d..%d missing (%d trades) before match_id %d (symbol_seq %d)%s",
                    symbol, a, b, b - a + 1, trade["match_id"], trade["symbol_seq"],
                    "; filling it from the WAL" if self.data_dir else "; no data_dir given, recorded unfilled")
        counts.gaps += 1
        self.db.execute("INSERT OR REPLACE INTO gaps (symbol, from_symbol_seq, to_symbol_seq, detected_at_ns, filled) "
                        "VALUES (?, ?, ?, ?, 0)", (symbol, a, b, time.time_ns()))
        self._open.setdefault(symbol, []).append((a, b))
        if self.data_dir is not None:
            seq = trade.get("seq")
            self._fill(symbol, a, b, seq if type(seq) is int else None, counts)

    def _seq_of(self, symbol: str, symbol_seq: int, column: str = "seq") -> Optional[int]:
        row = self.db.execute(f"SELECT {column} FROM trades WHERE symbol = ? AND symbol_seq = ?",
                              (symbol, symbol_seq)).fetchone()
        return row[0] if row else None

    def _check_filled(self, symbol: str, gap: tuple[int, int], counts: ApplyCounts) -> bool:
        a, b = gap
        have = self.db.execute("SELECT COUNT(*) FROM trades WHERE symbol = ? AND symbol_seq BETWEEN ? AND ?",
                               (symbol, a, b)).fetchone()[0]
        if have < b - a + 1:
            return False
        self.db.execute("UPDATE gaps SET filled = 1, filled_at_ns = ? WHERE symbol = ? AND from_symbol_seq = ?",
                        (time.time_ns(), symbol, a))
        spans = self._open[symbol]
        spans.remove(gap)
        if not spans:
            del self._open[symbol]
        counts.gaps_filled += 1
        log.info("gap in %s: symbol_seq %d..%d filled", symbol, a, b)
        return True

    def _fill(self, symbol: str, a: int, b: int, upper_seq: Optional[int], counts: ApplyCounts,
              retry: bool = False) -> None:
        """Store the trades ``a..b`` of ``symbol`` that the WAL holds; mark the
        gap filled once all are stored. ``upper_seq``: the WAL seq of a later
        trade of ``symbol`` (the read stops before it), or ``None``.
        ``retry``: a gap already reported (what is still missing is logged at
        DEBUG only, not at every retry)."""
        from eventstore import EventStoreError
        from recovery.time_travel import open_data_dir

        # Read from the command of the last trade before the gap: the missing
        # trades and the commands that caused them all come after it (a gap
        # from symbol_seq 1 is read from the WAL's start).
        start = (self._seq_of(symbol, a - 1, "cmd_seq") if a > 1 else None) or 1
        end = None if upper_seq is None else upper_seq - 1
        wanted = b - a + 1
        found = 0
        try:
            for seq, obj, source, pos in open_data_dir(self.data_dir).trades_with_input(start, end):
                if obj.symbol == symbol and a <= obj.symbol_seq <= b:
                    if self.db.execute(_INSERT, trade_row(trade_message(seq, obj, source, pos))).rowcount:
                        counts.filled_trades += 1
                    found += 1
                    if found == wanted:
                        break
        except (EventStoreError, OSError, ValueError) as exc:
            problem = f"cannot read the WAL of {self.data_dir}: {exc}"
        else:
            problem = f"the WAL of {self.data_dir} holds {found} of the {wanted} missing trades"
        if not self._check_filled(symbol, (a, b), counts):
            log.log(logging.DEBUG if retry else logging.WARNING,
                    "gap in %s: symbol_seq %d..%d: %s; left unfilled, will retry", symbol, a, b, problem)


# --------------------------------------------------------------------- consumer
@dataclass
class ConsumerConfig:
    """Settings of one :class:`TradeHistoryConsumer`.

    Attributes:
        bootstrap_servers: Kafka ``host:port[,host:port...]``.
        topic: the trades topic.
        group: the consumer group (its committed offsets are where a restart resumes).
        db_path: the SQLite file.
        data_dir: the engine's data directory, to fill gaps from its WAL (optional).
        max_records: most records per batch (one SQLite transaction, one offset commit).
        poll_timeout_ms: how long one poll waits for records; also the longest
            a stop request waits.
        gap_retry_s: while gaps are open, retry filling them at most this often (seconds).
        session_timeout_ms: a member silent this long is dropped from the group
            and its partitions go to the others (within the broker's
            ``group.min.session.timeout.ms`` and ``group.max.session.timeout.ms``).
        instance_id: a static group member id (``group.instance.id``): a
            restarted consumer with the same id takes its partitions back at
            once, instead of after the dead process's session timeout. Give
            each running consumer of a group its own.
    """

    bootstrap_servers: str
    topic: str = "trades"
    group: str = "trade-history"
    db_path: str = "data/trades.sqlite"
    data_dir: Optional[str] = None
    max_records: int = 500
    poll_timeout_ms: int = 500
    gap_retry_s: float = 1.0
    session_timeout_ms: int = 10_000
    instance_id: Optional[str] = None


@dataclass
class ConsumerStats:
    """Totals of one consumer run (the JSON summary printed at exit)."""

    records: int = 0
    stored: int = 0
    repeats: int = 0
    malformed: int = 0
    gaps: int = 0
    gaps_filled: int = 0
    filled_trades: int = 0
    gaps_open: int = 0
    batches: int = 0
    commit_failures: int = 0
    stopped_by: str = ""
    offsets: dict = field(default_factory=dict)

    def add(self, counts: ApplyCounts) -> None:
        for k, v in asdict(counts).items():
            setattr(self, k, getattr(self, k) + v)

    def as_dict(self) -> dict:
        return asdict(self)


class TradeHistoryConsumer:
    """Consumes the trades topic into a :class:`TradeStore`.

    Per batch: decode every record (one that is not a trade message is logged
    with its topic, partition and offset and skipped), store the batch in one
    SQLite transaction, then commit each partition's offset (last offset + 1)
    to Kafka. Group offsets are committed only after the database commit, so
    a crash in between redelivers the batch, which the store recognises as
    repeats.

    Use :meth:`run` (an ``async`` call) and :meth:`request_stop`.
    """

    def __init__(self, config: ConsumerConfig) -> None:
        self.config = config
        self.stats = ConsumerStats()
        self._stop: Optional[asyncio.Event] = None
        self._stop_reason: Optional[str] = None
        crash = os.environ.get(CRASH_ENV)
        self._crash_after = int(os.environ.get(CRASH_AFTER_BATCHES_ENV, "1")) if crash == CRASH_POINT else None

    def request_stop(self, reason: str = "stop requested") -> None:
        """Stop after the current batch (its database and offset commits included)."""
        self._stop_reason = self._stop_reason or reason
        if self._stop is not None:
            self._stop.set()

    def decode(self, record: Any) -> Optional[dict]:
        """A record's trade message, or ``None`` (logged) when it is not one."""
        try:
            if record.value is None:
                raise ValueError("empty value (tombstone)")
            trade = decode_trade(record.value)
            trade_row(trade)
            return trade
        except (ValueError, TypeError, RecursionError) as exc:
            self.stats.malformed += 1
            shown = record.value[:200] if record.value is not None else None
            log.warning("skipped a record that is not a trade message: topic %s partition %d offset %d: %s; value %r",
                        record.topic, record.partition, record.offset, str(exc)[:200], shown)
            return None

    async def run(self, install_signal_handlers: bool = True) -> ConsumerStats:
        """Consume until :meth:`request_stop` (or SIGTERM/SIGINT when
        ``install_signal_handlers``); then commit, close and return the stats.

        Raises:
            aiokafka.errors.KafkaError: the broker cannot be reached at start.
            sqlite3.Error: the database failed (the batch was not committed to Kafka).
        """
        from aiokafka import AIOKafkaConsumer
        from aiokafka.errors import KafkaError

        cfg = self.config
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if self._stop_reason is not None:
            self._stop.set()
        if install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.request_stop, sig.name)
        store = TradeStore(cfg.db_path, cfg.data_dir)
        consumer = AIOKafkaConsumer(
            cfg.topic, bootstrap_servers=cfg.bootstrap_servers, group_id=cfg.group,
            enable_auto_commit=False, auto_offset_reset="earliest", isolation_level="read_committed",
            session_timeout_ms=cfg.session_timeout_ms, group_instance_id=cfg.instance_id,
            client_id=f"evengine-trades-consumer-{os.getpid()}")
        last_retry = time.monotonic()
        try:
            await consumer.start()
            log.info("consuming %s as group %s into %s (%d trades stored, %d gaps open)",
                     cfg.topic, cfg.group, cfg.db_path, store.count(), len(store.open_gaps))
            while not self._stop.is_set():
                batches = await consumer.getmany(timeout_ms=cfg.poll_timeout_ms, max_records=cfg.max_records)
                if batches:
                    await self._batch(consumer, store, batches, KafkaError)
                if store.open_gaps and store.data_dir and time.monotonic() - last_retry >= cfg.gap_retry_s:
                    last_retry = time.monotonic()
                    self.stats.add(await asyncio.to_thread(store.retry_gaps))
        finally:
            if install_signal_handlers:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
            try:
                await consumer.stop()
            finally:
                self.stats.gaps_open = len(store.open_gaps)
                store.close()
        self.stats.stopped_by = self._stop_reason or "stop requested"
        return self.stats

    async def _batch(self, consumer: Any, store: TradeStore, batches: dict, kafka_error: type) -> None:
        trades: list[dict] = []
        offsets: dict = {}
        for tp, records in batches.items():
            if not records:
                continue
            for record in records:
                trade = self.decode(record)
                if trade is not None:
                    trades.append(trade)
            offsets[tp] = records[-1].offset + 1
            self.stats.records += len(records)
        if not offsets:
            return
        # The database commit first: a worker thread, so heartbeats go on
        # while SQLite fsyncs or a gap is read from the WAL.
        self.stats.add(await asyncio.to_thread(store.apply, trades))
        self.stats.batches += 1
        if self._crash_after is not None and self.stats.batches >= self._crash_after:
            log.warning("%s=%s: SIGKILL after the database commit of batch %d, before its offset commit",
                        CRASH_ENV, CRASH_POINT, self.stats.batches)
            os.kill(os.getpid(), signal.SIGKILL)
        try:
            await consumer.commit(offsets)
        except kafka_error as exc:
            # A rebalance took the partitions away: the next owner is handed
            # these records again and the store counts them as repeats.
            self.stats.commit_failures += 1
            log.warning("offset commit failed (%s); the batch will be redelivered and skipped as repeats", exc)
            return
        for tp, off in offsets.items():
            self.stats.offsets[f"{tp.topic}:{tp.partition}"] = off


def run_consumer(config: ConsumerConfig) -> ConsumerStats:
    """Run a :class:`TradeHistoryConsumer` in a new event loop until SIGTERM or
    SIGINT; print its :class:`ConsumerStats` as one JSON line to stdout and
    return them."""
    stats = asyncio.run(TradeHistoryConsumer(config).run())
    print(json.dumps(stats.as_dict()), flush=True)
    return stats
