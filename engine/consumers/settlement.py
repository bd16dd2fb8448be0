"""Settlement: the engine's ledger and trades kept in SQL, each applied exactly once.

The matching engine publishes every balance change to ``ledger`` (gap-free
``ledger_seq``) and every trade to ``trades`` (gap-free ``symbol_seq`` per
symbol), at least once (``engine/io/MESSAGES.md``). :class:`SettlementStore`
turns those streams into the book of record (``engine/consumers/SCHEMA.md``):
balances, double-entry postings, settled trades.

**The database transaction is the settlement's write-ahead log.** One batch
of records is one transaction holding the balance changes *and* the Kafka
offsets that produced them (``consumer_positions``) and the stream watermarks
(``ledger_seq``, each symbol's ``symbol_seq``). A crash before the commit
leaves nothing; a crash after it leaves the batch and its offsets. On start
the consumer seeks to the offsets in the database, never to the group's
committed offsets (those are committed after the database, for lag
monitoring only). So:

- **nothing lost**: an offset is stored only with what its record caused;
  a record that cannot be applied yet (it follows a gap) is held and its
  partition's stored offset stays at it;
- **nothing twice**: a record at or below a watermark is a repeat (the engine
  republishes after a restart); its digest (SHA-256 of its canonical JSON)
  must equal the stored one, else :class:`ConflictError` stops the service
  and the batch is rolled back;
- **no hole**: a record above the next expected id is a gap. With the
  engine's data directory on this machine the missing records are derived
  from its WAL inside the same transaction; otherwise the gap is recorded
  (``gaps``) and that stream waits (nothing after the gap is applied) until
  the records come.

**Checks in every batch**: each ledger entry's running balances must equal
the stored balance plus its deltas (:class:`LedgerMismatchError` otherwise);
the postings of every complete command sum to zero per asset (a trade moves
value, a hold moves it between available and held, a deposit's other leg is
the outside world); balances never go negative (a ``CHECK`` in the schema).

Source: the settlement seed document (its three mechanisms: a settlement
WAL, offsets committed after settlement with an idempotency check, gap
detection with replay from the engine's WAL), here in one transaction;
Kafka's "exactly-once via storing offsets with the output" pattern
(``ConsumerRebalanceListener`` docs, "Storing Offsets Outside Kafka").
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Optional

import orjson

from engine.io.messages import decode_ledger, decode_trade, ledger_message, trade_message

from .kafka_loop import Record, StoreError
from .sql import Database

__all__ = ["SettlementStore", "SettleCounts", "verify", "Record", "ConflictError", "LedgerMismatchError",
           "SettlementError", "SCHEMA_VERSION", "digest_of", "TRADE_COLUMNS", "POSTING_COLUMNS"]

log = logging.getLogger("evengine.settlement")

SCHEMA_VERSION = 1
"""Version of the tables (``settlement_meta.schema_version``); SCHEMA.md."""

_TRANSFER_REASONS = {"deposit", "withdrawal"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS settlement_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS assets (
    asset  TEXT PRIMARY KEY,
    supply BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS balances (
    account    BIGINT NOT NULL,
    asset      TEXT   NOT NULL,
    available  BIGINT NOT NULL CHECK (available >= 0),
    held       BIGINT NOT NULL CHECK (held >= 0),
    ledger_seq BIGINT NOT NULL,
    PRIMARY KEY (account, asset)
);
CREATE TABLE IF NOT EXISTS postings (
    ledger_seq      BIGINT   NOT NULL,
    leg             SMALLINT NOT NULL,
    cmd_seq         BIGINT   NOT NULL,
    ts_ns           BIGINT   NOT NULL,
    account         BIGINT,
    asset           TEXT     NOT NULL,
    reason          TEXT     NOT NULL,
    ref             BIGINT   NOT NULL,
    available_delta BIGINT   NOT NULL,
    held_delta      BIGINT   NOT NULL,
    available_after BIGINT   NOT NULL,
    held_after      BIGINT   NOT NULL,
    digest          TEXT,
    PRIMARY KEY (ledger_seq, leg)
);
CREATE TABLE IF NOT EXISTS settled_trades (
    match_id       BIGINT PRIMARY KEY,
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
    digest         TEXT   NOT NULL,
    UNIQUE (symbol, symbol_seq)
);
CREATE TABLE IF NOT EXISTS symbols (
    symbol     TEXT PRIMARY KEY,
    symbol_seq BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS consumer_positions (
    topic        TEXT    NOT NULL,
    partition_id INTEGER NOT NULL,
    next_offset  BIGINT  NOT NULL,
    PRIMARY KEY (topic, partition_id)
);
CREATE TABLE IF NOT EXISTS watermarks (
    stream  TEXT PRIMARY KEY,
    last_id BIGINT NOT NULL,
    cmd_seq BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS gaps (
    stream      TEXT   NOT NULL,
    first_id    BIGINT NOT NULL,
    last_id     BIGINT NOT NULL,
    detected_ns BIGINT NOT NULL,
    filled_ns   BIGINT,
    how         TEXT,
    PRIMARY KEY (stream, first_id)
);
CREATE INDEX IF NOT EXISTS postings_by_cmd ON postings (cmd_seq)
"""

POSTING_COLUMNS = ("ledger_seq", "leg", "cmd_seq", "ts_ns", "account", "asset", "reason", "ref", "available_delta",
                   "held_delta", "available_after", "held_after", "digest")
TRADE_COLUMNS = ("match_id", "symbol", "symbol_seq", "seq", "cmd_seq", "ts_ns", "price", "qty", "taker_side",
                 "maker_order_id", "taker_order_id", "maker_account", "taker_account", "digest")


class SettlementError(StoreError):
    """The streams contradict the book of record: the service stops, the
    batch is rolled back, nothing of it is applied."""


class ConflictError(SettlementError):
    """A repeat whose body differs from the record stored under its key
    (``ledger_seq``; ``(symbol, symbol_seq)``; ``match_id``)."""


class LedgerMismatchError(SettlementError):
    """A ledger entry whose running balances are not the stored balance plus
    its deltas, or a command whose postings do not sum to zero."""


@dataclass
class SettleCounts:
    """What one call of :meth:`SettlementStore.apply` did (records and entries)."""

    ledger_applied: int = 0      # ledger entries applied (balances changed), WAL fills included
    trades_settled: int = 0      # trades stored, WAL fills included
    repeats: int = 0             # records at or below a watermark whose digest matched
    malformed: int = 0           # records that are not ledger/trade messages: skipped, logged
    held: int = 0                # records waiting behind a gap after this batch
    gaps: int = 0                # gaps found
    filled_from_wal: int = 0     # entries and trades derived from the engine's WAL

    def add(self, other: "SettleCounts") -> None:
        for k, v in asdict(other).items():
            setattr(self, k, getattr(self, k) + v if k != "held" else v)


def digest_of(message: dict) -> str:
    """SHA-256 (hex, 32 chars) of ``message`` as canonical JSON (sorted keys,
    no spaces, orjson): the same message from Kafka or from the WAL digests
    alike, whatever the key order or spacing of the record."""
    return hashlib.sha256(orjson.dumps(message, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


class _Partition:
    """Offsets of one topic partition within a batch."""

    __slots__ = ("done", "held")

    def __init__(self) -> None:
        self.done = -1           # highest offset fully dealt with
        self.held: set = set()   # offsets of records held behind a gap


class SettlementStore:
    """The book of record in one :class:`~engine.consumers.sql.Database`.

    Args:
        db: a connected database (the schema is created when missing).
        ledger_topic / trades_topic: the topic names records arrive on.
        data_dir: the engine's data directory, to fill gaps from its WAL
            (read-only); ``None``: gaps are recorded and wait.

    Attributes:
        positions: ``(topic, partition) -> next offset`` as committed.
        ledger_seq: the last ledger entry applied (0 before any).
        symbol_seqs: ``symbol -> last symbol_seq`` settled.
    """

    def __init__(self, db: Database, ledger_topic: str = "ledger", trades_topic: str = "trades",
                 data_dir: Optional[str] = None) -> None:
        self.db = db
        self.ledger_topic = ledger_topic
        self.trades_topic = trades_topic
        self.data_dir = data_dir
        self._history: Any = None
        self.create_schema()
        self.load()

    # ------------------------------------------------------------- set-up
    def create_schema(self) -> None:
        self.db.executescript(_SCHEMA)      # idempotent; SQLite's executescript commits by itself
        with self.db.transaction():
            found = self.db.query("SELECT value FROM settlement_meta WHERE key = 'schema_version'")
            if not found:
                self.db.execute("INSERT INTO settlement_meta (key, value) VALUES ('schema_version', ?)",
                                (str(SCHEMA_VERSION),))
            elif int(found[0][0]) != SCHEMA_VERSION:
                raise SettlementError(f"{self.db.url}: settlement schema version {found[0][0]}, this evengine "
                                      f"reads version {SCHEMA_VERSION}")

    def load(self) -> None:
        """Read the committed state (positions, watermarks, balances, the
        open command's partial sums) into memory: after a start and after a
        failed transaction (the memory must equal the database)."""
        db = self.db
        self.positions = {(t, p): o for t, p, o in db.query(
            "SELECT topic, partition_id, next_offset FROM consumer_positions")}
        marks = {s: (i, c) for s, i, c in db.query("SELECT stream, last_id, cmd_seq FROM watermarks")}
        self.ledger_seq, self.ledger_cmd_seq = marks.get("ledger", (0, 0))
        self.symbol_seqs = dict(db.query("SELECT symbol, symbol_seq FROM symbols"))
        self.balances = {(a, s): [av, h] for a, s, av, h in db.query(
            "SELECT account, asset, available, held FROM balances")}
        self.supply = dict(db.query("SELECT asset, supply FROM assets"))
        self.open_sums: dict = {}
        if self.ledger_cmd_seq:
            for asset, d in db.query("SELECT asset, SUM(available_delta + held_delta) FROM postings "
                                     "WHERE cmd_seq = ? GROUP BY asset", (self.ledger_cmd_seq,)):
                self.open_sums[asset] = int(d)
        self.open_gaps = {(s, f): l for s, f, l in db.query(
            "SELECT stream, first_id, last_id FROM gaps WHERE filled_ns IS NULL")}
        self.seen: dict = {}               # (topic, partition) -> highest offset read (this run)
        self.pending_ledger: dict = {}     # ledger_seq -> (record, message, digest)
        self.pending_trades: dict = {}     # symbol -> {symbol_seq: (record, message, digest)}

    # --------------------------------------------------------------- apply
    def apply(self, records: Iterable[Record]) -> SettleCounts:
        """Apply one batch (records of both topics, any partitions) in one
        transaction; see the module docstring.

        Raises:
            ConflictError, LedgerMismatchError: nothing of the batch stays;
                the store's memory is reloaded from the database.
            TransientDatabaseError: the database went away; nothing stayed;
                reconnect and call again with the same records.
        """
        counts = SettleCounts()
        parts: dict = {}
        ledger_in: list = []
        trades_in: list = []
        for rec in records:
            part = parts.get((rec.topic, rec.partition))
            if part is None:
                part = parts[(rec.topic, rec.partition)] = _Partition()
            part.done = max(part.done, rec.offset)
            if rec.topic == self.ledger_topic:
                decode = decode_ledger
            elif rec.topic == self.trades_topic:
                decode = decode_trade
            else:
                continue
            try:
                msg = decode(rec.value if rec.value is not None else b"")
            except ValueError as exc:
                counts.malformed += 1
                log.warning("skipped record %s[%d] offset %d: %s", rec.topic, rec.partition, rec.offset, exc)
                continue
            (ledger_in if decode is decode_ledger else trades_in).append((rec, msg, digest_of(msg)))
        try:
            with self.db.transaction():
                plan = _Plan(self)
                plan.ledger(ledger_in, counts)
                plan.trades(trades_in, counts)
                plan.check_repeats()
                plan.positions(parts)
                plan.write(counts)
        except BaseException:
            self.load()
            raise
        plan.commit_to_memory()
        counts.held = len(self.pending_ledger) + sum(len(p) for p in self.pending_trades.values())
        return counts

    def waiting(self) -> bool:
        """Whether records are held behind a gap (the loop retries them)."""
        return bool(self.pending_ledger or self.pending_trades)

    # ------------------------------------------------------------ queries
    def history(self) -> Any:
        """The engine's data directory as a :class:`recovery.History`, opened once."""
        if self._history is None:
            from recovery.time_travel import open_data_dir
            self._history = open_data_dir(self.data_dir)
        return self._history

    def stored_digest(self, stream: str, key: Any) -> Optional[str]:
        if stream == "ledger":
            rows = self.db.query("SELECT digest FROM postings WHERE ledger_seq = ? AND leg = 0", (key,))
        else:
            rows = self.db.query("SELECT digest FROM settled_trades WHERE symbol = ? AND symbol_seq = ?", key)
        return rows[0][0] if rows else None

    def totals(self) -> dict:
        """``asset -> (available, held, supply)`` over every account, from the database."""
        out = {a: [0, 0, s] for a, s in self.db.query("SELECT asset, supply FROM assets")}
        for asset, av, h in self.db.query("SELECT asset, SUM(available), SUM(held) FROM balances GROUP BY asset"):
            t = out.setdefault(asset, [0, 0, 0])
            t[0], t[1] = int(av), int(h)
        return {a: tuple(t) for a, t in out.items()}

    def posting_sums(self) -> dict:
        """``asset -> sum of every posting``: 0 for every asset once the last
        command is complete (:meth:`verify` and the tests check it)."""
        return {a: int(s) for a, s in self.db.query(
            "SELECT asset, SUM(available_delta + held_delta) FROM postings GROUP BY asset")}

    def close(self) -> None:
        self.db.close()


class _Plan:
    """One batch worked out in memory: what to write, and the new in-memory
    state, which :meth:`commit_to_memory` installs only after the commit."""

    def __init__(self, store: SettlementStore) -> None:
        self.s = store
        self.ledger_seq = store.ledger_seq
        self.cmd_seq = store.ledger_cmd_seq
        self.open_sums = dict(store.open_sums)
        self.balances: dict = {}                # (account, asset) -> [available, held, ledger_seq]
        self.supply: dict = {}
        self.postings: list = []
        self.trade_rows: list = []
        self.symbol_seqs: dict = {}
        self.pending_ledger = dict(store.pending_ledger)
        self.pending_trades = {s: dict(p) for s, p in store.pending_trades.items()}
        self.gaps_found: list = []              # (stream, first, last)
        self.gaps_closed: list = []             # (stream, first, how)
        self.new_positions: dict = {}
        self.repeats: list = []                 # (stream, key, label, digest)
        self.seen: dict = {}                    # (topic, partition) -> highest offset read

    # -------------------------------------------------------------- ledger
    def ledger(self, entries: list, counts: SettleCounts) -> None:
        s = self.s
        for rec, msg, digest in entries:
            n = msg["ledger_seq"]
            if n <= self.ledger_seq:
                self._repeat("ledger", n, n, digest, counts)
            elif n in self.pending_ledger:
                if self.pending_ledger[n][2] != digest:
                    raise ConflictError(f"ledger_seq {n} arrived twice with different bodies "
                                        f"({rec.topic}[{rec.partition}] offset {rec.offset})")
                counts.repeats += 1
            else:
                self.pending_ledger[n] = (rec, msg, digest)
        pending = self.pending_ledger
        order = sorted(pending)
        i = applied = 0
        gaps = self.s.open_gaps or self.gaps_found
        while i < len(order):
            first = order[i]
            if first != self.ledger_seq + 1:
                if not self._ledger_gap(self.ledger_seq + 1, first - 1, counts):
                    break
                order = sorted(pending)      # the gap's entries are pending now
                i = 0
                continue
            _rec, msg, digest = pending.pop(first)
            self._entry(msg, digest)
            applied += 1
            if gaps:
                self._close_gap_at("ledger", first)
            gaps = self.s.open_gaps or self.gaps_found
            i += 1
        counts.ledger_applied += applied

    def _ledger_gap(self, a: int, b: int, counts: SettleCounts) -> bool:
        """Fill ledger_seq ``a..b`` from the WAL if possible; record the gap
        when new. Returns whether it is filled."""
        s = self.s
        if ("ledger", a) not in s.open_gaps and all(g[:2] != ("ledger", a) for g in self.gaps_found):
            counts.gaps += 1
            self.gaps_found.append(("ledger", a, b))
            log.warning("gap in the ledger: ledger_seq %d..%d missing%s", a, b,
                        "; deriving it from the engine's WAL" if s.data_dir else "; waiting for it (no --data-dir)")
        if not s.data_dir:
            return False
        found = 0
        try:
            for cmd_seq, ts_ns, change in s.history().balance_changes(max(self.cmd_seq, 1)):
                n = change[1]
                if n < a:
                    continue
                if n > b:
                    break
                msg = ledger_message(change, ts_ns)
                self.pending_ledger.setdefault(n, (None, msg, digest_of(msg)))
                if self.pending_ledger[n][2] != digest_of(msg):
                    raise ConflictError(f"ledger_seq {n}: the record on Kafka differs from the engine's WAL")
                found += 1
        except SettlementError:
            raise
        except Exception as exc:   # an unreadable or short WAL: the gap stays, the stream waits
            log.warning("cannot fill the ledger gap %d..%d from %s: %s", a, b, s.data_dir, exc)
            return False
        if found < b - a + 1:
            log.warning("the WAL of %s holds %d of the %d missing ledger entries %d..%d; waiting",
                        s.data_dir, found, b - a + 1, a, b)
            return False
        counts.filled_from_wal += found
        return True

    def _entry(self, msg: dict, digest: str) -> None:
        account, asset = msg["account"], msg["asset"]
        da, dh = msg["available_delta"], msg["held_delta"]
        n, cmd_seq = msg["ledger_seq"], msg["cmd_seq"]
        key = (account, asset)
        b = self.balances.get(key)
        if b is None:
            old = self.s.balances.get(key, (0, 0))
            b = self.balances[key] = [old[0], old[1], n]
        if b[0] + da != msg["available"] or b[1] + dh != msg["held"]:
            raise LedgerMismatchError(
                f"ledger_seq {n}: account {account} {asset} is {b[0]} available, {b[1]} held here; the entry "
                f"moves {da:+d}, {dh:+d} and says {msg['available']}, {msg['held']} after")
        b[0] += da
        b[1] += dh
        b[2] = n
        if cmd_seq != self.cmd_seq:
            self._close_command()
            self.cmd_seq = cmd_seq
        sums = self.open_sums
        sums[asset] = sums.get(asset, 0) + da + dh
        reason = msg["reason"]
        self.postings.append((n, 0, cmd_seq, msg["ts_ns"], account, asset, reason, msg["ref"], da, dh,
                              b[0], b[1], digest))
        if reason in _TRANSFER_REASONS:     # the other leg: the world outside the exchange
            supply = self.supply.get(asset, self.s.supply.get(asset, 0)) + da
            self.supply[asset] = supply
            sums[asset] -= da
            self.postings.append((n, 1, cmd_seq, msg["ts_ns"], None, asset, reason, msg["ref"], -da, 0,
                                  -supply, 0, None))
        self.ledger_seq = n

    def _close_command(self) -> None:
        bad = {a: v for a, v in self.open_sums.items() if v}
        if bad:
            raise LedgerMismatchError(f"the postings of command {self.cmd_seq} do not sum to zero: {bad}")
        self.open_sums = {}

    # -------------------------------------------------------------- trades
    def trades(self, trades: list, counts: SettleCounts) -> None:
        s = self.s
        touched = set()
        for rec, msg, digest in trades:
            symbol, n = msg["symbol"], msg["symbol_seq"]
            last = self.symbol_seqs.get(symbol, s.symbol_seqs.get(symbol, 0))
            pend = self.pending_trades.setdefault(symbol, {})
            if n <= last:
                self._repeat("trades", (symbol, n), f"{symbol}:{n}", digest, counts)
            elif n in pend:
                if pend[n][2] != digest:
                    raise ConflictError(f"trade {symbol} symbol_seq {n} arrived twice with different bodies")
                counts.repeats += 1
            else:
                pend[n] = (rec, msg, digest)
                touched.add(symbol)
        for symbol in sorted(set(self.pending_trades) | touched):
            pend = self.pending_trades.get(symbol)
            if not pend:
                continue
            order = sorted(pend)
            i = 0
            while i < len(order):
                last = self.symbol_seqs.get(symbol, s.symbol_seqs.get(symbol, 0))
                first = order[i]
                if first != last + 1:
                    if not self._trade_gap(symbol, last + 1, first - 1, pend, counts):
                        break
                    order = sorted(pend)
                    i = 0
                    continue
                _rec, msg, digest = pend.pop(first)
                self.trade_rows.append(tuple(msg.get(c) for c in TRADE_COLUMNS[:-1]) + (digest,))
                self.symbol_seqs[symbol] = first
                counts.trades_settled += 1
                self._close_gap_at(f"trades:{symbol}", first)
                i += 1
            if not pend:
                self.pending_trades.pop(symbol, None)

    def _trade_gap(self, symbol: str, a: int, b: int, pend: dict, counts: SettleCounts) -> bool:
        s = self.s
        stream = f"trades:{symbol}"
        if (stream, a) not in s.open_gaps and all(g[:2] != (stream, a) for g in self.gaps_found):
            counts.gaps += 1
            self.gaps_found.append((stream, a, b))
            log.warning("gap in %s: symbol_seq %d..%d missing%s", symbol, a, b,
                        "; reading it from the engine's WAL" if s.data_dir else "; waiting for it (no --data-dir)")
        if not s.data_dir:
            return False
        start = 1
        if a > 1:
            rows = s.db.query("SELECT cmd_seq FROM settled_trades WHERE symbol = ? AND symbol_seq = ?",
                              (symbol, a - 1))
            start = rows[0][0] if rows and rows[0][0] else 1
        found = 0
        try:
            for seq, trade, source, pos in s.history().trades_with_input(start):
                if trade.symbol != symbol or trade.symbol_seq < a:
                    continue
                if trade.symbol_seq > b:
                    break
                msg = trade_message(seq, trade, source, pos)
                d = digest_of(msg)
                if pend.setdefault(trade.symbol_seq, (None, msg, d))[2] != d:
                    raise ConflictError(f"trade {symbol} symbol_seq {trade.symbol_seq}: the record on Kafka "
                                        f"differs from the engine's WAL")
                found += 1
        except SettlementError:
            raise
        except Exception as exc:
            log.warning("cannot fill the gap in %s from %s: %s", symbol, s.data_dir, exc)
            return False
        if found < b - a + 1:
            log.warning("the WAL of %s holds %d of the %d missing trades of %s; waiting",
                        s.data_dir, found, b - a + 1, symbol)
            return False
        counts.filled_from_wal += found
        return True

    # ------------------------------------------------------------ helpers
    def _repeat(self, stream: str, key: Any, label: Any, digest: str, counts: SettleCounts) -> None:
        """A record at or below its stream's committed watermark: checked
        against the stored digest in :meth:`check_repeats`, in one query per
        stream and symbol."""
        self.repeats.append((stream, key, label, digest))
        counts.repeats += 1

    def check_repeats(self) -> None:
        """Every repeat's digest must equal the stored one.

        Raises:
            ConflictError: the first repeat whose body differs.
        """
        if not self.repeats:
            return
        db = self.s.db
        by_stream: dict = {}
        for stream, key, label, digest in self.repeats:
            by_stream.setdefault(stream if stream == "ledger" else ("trades", key[0]), []).append(
                (key if stream == "ledger" else key[1], label, digest))
        for group, items in by_stream.items():
            lo = min(k for k, _, _ in items)
            hi = max(k for k, _, _ in items)
            if group == "ledger":
                stored = dict(db.query("SELECT ledger_seq, digest FROM postings WHERE leg = 0 AND ledger_seq "
                                       "BETWEEN ? AND ?", (lo, hi)))
            else:
                stored = dict(db.query("SELECT symbol_seq, digest FROM settled_trades WHERE symbol = ? AND "
                                       "symbol_seq BETWEEN ? AND ?", (group[1], lo, hi)))
            for k, label, digest in items:
                if stored.get(k) != digest:
                    raise ConflictError(f"{'ledger_seq' if group == 'ledger' else 'trade'} {label}: a repeat whose "
                                        f"body differs from the one settled (digest {digest}, stored "
                                        f"{stored.get(k)})")

    def _close_gap_at(self, stream: str, n: int) -> None:
        """Mark a recorded gap filled once its first id is applied."""
        if (stream, n) in self.s.open_gaps or any(g[:2] == (stream, n) for g in self.gaps_found):
            self.gaps_closed.append((stream, n))

    def positions(self, parts: dict) -> None:
        """The next offset to read per partition: past every record read so
        far, except that a record held behind a gap keeps its partition at it
        (it is read again after a restart)."""
        held: dict = {}
        for rec, _msg, _d in self.pending_ledger.values():
            if rec is not None:
                k = (rec.topic, rec.partition)
                held[k] = min(held.get(k, rec.offset), rec.offset)
        for pend in self.pending_trades.values():
            for rec, _msg, _d in pend.values():
                if rec is not None:
                    k = (rec.topic, rec.partition)
                    held[k] = min(held.get(k, rec.offset), rec.offset)
        seen = dict(self.s.seen)
        for k, part in parts.items():
            seen[k] = max(seen.get(k, -1), part.done)
        self.seen = seen
        for k, top in seen.items():
            nxt = min(top + 1, held.get(k, top + 1))
            if self.s.positions.get(k) != nxt:
                self.new_positions[k] = nxt

    # ------------------------------------------------------------- write
    def write(self, counts: SettleCounts) -> None:
        s, db = self.s, self.s.db
        db.insert_rows("postings", POSTING_COLUMNS, self.postings)
        if self.balances:
            db.executemany("INSERT INTO balances (account, asset, available, held, ledger_seq) VALUES (?, ?, ?, ?, ?) "
                           "ON CONFLICT (account, asset) DO UPDATE SET available = excluded.available, "
                           "held = excluded.held, ledger_seq = excluded.ledger_seq",
                           [(a, s_, b[0], b[1], b[2]) for (a, s_), b in self.balances.items()])
        if self.supply:
            db.executemany("INSERT INTO assets (asset, supply) VALUES (?, ?) ON CONFLICT (asset) DO UPDATE "
                           "SET supply = excluded.supply", list(self.supply.items()))
        for (account, asset) in self.balances:
            if asset not in s.supply and asset not in self.supply:
                self.supply[asset] = 0
                db.execute("INSERT INTO assets (asset, supply) VALUES (?, 0) ON CONFLICT (asset) DO NOTHING",
                           (asset,))
        try:
            db.insert_rows("settled_trades", TRADE_COLUMNS, self.trade_rows)
        except Exception as exc:
            if "match_id" in str(exc) or "unique" in str(exc).lower() or "duplicate" in str(exc).lower():
                raise ConflictError(f"a trade's match_id or (symbol, symbol_seq) is already settled with another "
                                    f"body: {exc}") from None
            raise
        if self.symbol_seqs:
            db.executemany("INSERT INTO symbols (symbol, symbol_seq) VALUES (?, ?) ON CONFLICT (symbol) DO UPDATE "
                           "SET symbol_seq = excluded.symbol_seq", list(self.symbol_seqs.items()))
        if self.ledger_seq != s.ledger_seq:
            db.execute("INSERT INTO watermarks (stream, last_id, cmd_seq) VALUES ('ledger', ?, ?) ON CONFLICT "
                       "(stream) DO UPDATE SET last_id = excluded.last_id, cmd_seq = excluded.cmd_seq",
                       (self.ledger_seq, self.cmd_seq))
        now = time.time_ns()
        for stream, a, b in self.gaps_found:
            db.execute("INSERT INTO gaps (stream, first_id, last_id, detected_ns) VALUES (?, ?, ?, ?) "
                       "ON CONFLICT (stream, first_id) DO NOTHING", (stream, a, b, now))
        for stream, a in self.gaps_closed:
            db.execute("UPDATE gaps SET filled_ns = ?, how = ? WHERE stream = ? AND first_id = ?",
                       (now, "wal" if s.data_dir else "late records", stream, a))
        if self.new_positions:
            db.executemany("INSERT INTO consumer_positions (topic, partition_id, next_offset) VALUES (?, ?, ?) "
                           "ON CONFLICT (topic, partition_id) DO UPDATE SET next_offset = excluded.next_offset",
                           [(t, p, o) for (t, p), o in self.new_positions.items()])

    def commit_to_memory(self) -> None:
        s = self.s
        for key, b in self.balances.items():
            s.balances[key] = [b[0], b[1]]
        s.supply.update(self.supply)
        s.symbol_seqs.update(self.symbol_seqs)
        s.ledger_seq, s.ledger_cmd_seq = self.ledger_seq, self.cmd_seq
        s.open_sums = self.open_sums
        s.positions.update(self.new_positions)
        s.seen = self.seen
        s.pending_ledger = self.pending_ledger
        s.pending_trades = {k: v for k, v in self.pending_trades.items() if v}
        for stream, a, b in self.gaps_found:
            s.open_gaps[(stream, a)] = b
        for stream, a in self.gaps_closed:
            s.open_gaps.pop((stream, a), None)


def verify(db: Database, data_dir: str) -> dict:
    """Recompute every balance from the engine's WAL and compare with the
    settlement database ``db``.

    The engine's ledger (derived by replaying ``data_dir``'s WAL) is summed
    up to the database's ``ledger_seq`` watermark, so a settlement that lags
    behind compares equal; the lag is reported beside. Returns::

        {"ledger_seq": int,            # the database's watermark
         "engine_ledger_seq": int,     # the engine's last, in its WAL
         "ledger_lag": int,            # entries not settled yet
         "trades_settled": int, "engine_trades": int, "trades_lag": int,
         "differences": [{"account", "asset", "settled": [available, held],
                          "engine": [available, held]}, ...],   # [] expected
         "posting_sums": {asset: int}, # 0 unless a command is half settled
         "supply_differences": {asset: [settled, engine]}}

    Complexity: one replay of the WAL. Raises what :func:`recovery.open_data_dir` raises.
    """
    from recovery.time_travel import open_data_dir
    h = open_data_dir(data_dir)
    marks = dict((s, i) for s, i in db.query("SELECT stream, last_id FROM watermarks"))
    upto = marks.get("ledger", 0)
    engine: dict = {}
    supply: dict = {}
    last = 0
    for _cmd_seq, _ts, ev in h.balance_changes(1):
        last = ev[1]
        if ev[1] <= upto:
            engine[(ev[3], ev[4])] = [ev[7], ev[8]]
            if ev[9] in (1, 2):      # LedgerReason.DEPOSIT, WITHDRAWAL
                supply[ev[4]] = supply.get(ev[4], 0) + ev[5]
    settled = {(a, s): [av, hd] for a, s, av, hd in db.query("SELECT account, asset, available, held FROM balances")}
    diffs = [{"account": k[0], "asset": k[1], "settled": settled.get(k), "engine": engine.get(k)}
             for k in sorted(set(settled) | set(engine), key=repr) if settled.get(k) != engine.get(k)]
    stored_supply = dict(db.query("SELECT asset, supply FROM assets"))
    supply_diffs = {a: [stored_supply.get(a, 0), supply.get(a, 0)] for a in set(stored_supply) | set(supply)
                    if stored_supply.get(a, 0) != supply.get(a, 0)}
    engine_trades = sum(1 for _ in h.trades_with_input())
    settled_trades = db.query("SELECT COUNT(*) FROM settled_trades")[0][0]
    sums = {a: int(s) for a, s in db.query("SELECT asset, SUM(available_delta + held_delta) FROM postings "
                                           "GROUP BY asset")}
    return {"ledger_seq": upto, "engine_ledger_seq": last, "ledger_lag": last - upto,
            "trades_settled": settled_trades, "engine_trades": engine_trades,
            "trades_lag": engine_trades - settled_trades, "differences": diffs, "posting_sums": sums,
            "supply_differences": supply_diffs}
