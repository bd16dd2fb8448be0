"""Settlement: the engine's ledger and trades kept in SQL, each applied exactly once.

The matching engine publishes every balance change to ``ledger`` (gap-free
``ledger_seq``) and every trade to ``trades`` (gap-free ``symbol_seq`` per
symbol), at least once (``engine/io/MESSAGES.md``). :class:`SettlementStore`
turns those streams into the book of record (``engine/consumers/FORMAT.md``):
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
- **no hole**: a record above the next expected id is a gap (for the
  ledger, once it has been awaited ``gap_grace_s``: its partitions
  interleave). With the engine's data directory on this machine the missing
  records are derived from its WAL inside the same transaction (a WAL that
  does not hold them stops the service: :class:`GapError`); otherwise the
  gap is recorded (``gaps``) and that stream waits (nothing after the gap is
  applied) until the records come.

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
import os
import signal
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Optional

import orjson

from engine.io.messages import decode_ledger, decode_trade, ledger_message, trade_message

from .kafka_loop import Record, StoreError
from .sql import Database

__all__ = ["SettlementStore", "SettleCounts", "verify", "Record", "ConflictError", "GapError", "LedgerMismatchError",
           "SettlementError", "SCHEMA_VERSION", "digest_of", "TRADE_COLUMNS", "POSTING_COLUMNS"]

log = logging.getLogger("evengine.settlement")

SCHEMA_VERSION = 1
"""Version of the tables (``settlement_meta.schema_version``); engine/consumers/FORMAT.md."""

_TRANSFER_REASONS = {"deposit", "withdrawal"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS settlement_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS assets (
    shard  TEXT   NOT NULL,
    asset  TEXT   NOT NULL,
    supply BIGINT NOT NULL,
    PRIMARY KEY (shard, asset)
);
CREATE TABLE IF NOT EXISTS balances (
    shard      TEXT   NOT NULL,
    account    BIGINT NOT NULL,
    asset      TEXT   NOT NULL,
    available  BIGINT NOT NULL CHECK (available >= 0),
    held       BIGINT NOT NULL CHECK (held >= 0),
    ledger_seq BIGINT NOT NULL,
    PRIMARY KEY (shard, account, asset)
);
CREATE TABLE IF NOT EXISTS postings (
    shard           TEXT     NOT NULL,
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
    PRIMARY KEY (shard, ledger_seq, leg)
);
CREATE TABLE IF NOT EXISTS settled_trades (
    shard          TEXT   NOT NULL,
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
    digest         TEXT   NOT NULL,
    PRIMARY KEY (shard, match_id),
    UNIQUE (symbol, symbol_seq)
);
CREATE TABLE IF NOT EXISTS symbols (
    symbol     TEXT PRIMARY KEY,
    shard      TEXT   NOT NULL,
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
CREATE INDEX IF NOT EXISTS postings_by_cmd ON postings (shard, cmd_seq)
"""

POSTING_COLUMNS = ("shard", "ledger_seq", "leg", "cmd_seq", "ts_ns", "account", "asset", "reason", "ref", "available_delta",
                   "held_delta", "available_after", "held_after", "digest")
TRADE_COLUMNS = ("shard", "match_id", "symbol", "symbol_seq", "seq", "cmd_seq", "ts_ns", "price", "qty", "taker_side",
                 "maker_order_id", "taker_order_id", "maker_account", "taker_account", "digest")


class SettlementError(StoreError):
    """The streams contradict the book of record: the service stops, the
    batch is rolled back, nothing of it is applied."""


class ConflictError(SettlementError):
    """A repeat whose body differs from the record stored under its key
    (``ledger_seq``; ``(symbol, symbol_seq)``; ``match_id``)."""


class GapError(SettlementError):
    """Records are missing and the engine's WAL given for their shard does
    not hold them either (another engine's directory, or a damaged one):
    nothing after the gap can be settled correctly."""


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


_TRADE_INTS = ("seq", "cmd_seq", "ts_ns", "price", "qty", "maker_order_id", "taker_order_id", "maker_account",
               "taker_account")


def _incomplete_trade(msg: dict) -> str:
    """Why a decoded trade cannot be settled (a field missing or of the
    wrong type), or ``""``: ``decode_trade`` checks only its keys."""
    if msg["match_id"] < 1 or msg["symbol_seq"] < 1:
        return "match_id and symbol_seq must be positive"
    for k in _TRADE_INTS:
        if type(msg.get(k)) is not int:
            return f"{k} must be an integer"
    if msg.get("taker_side") not in ("buy", "sell"):
        return "taker_side must be buy or sell"
    return ""


def _crash_point(name: str) -> None:
    """Test hook: ``EVENGINE_CRASH_AT=settle-during-gap-fill`` SIGKILLs the
    process once a gap's records are read from the WAL, inside the batch's
    transaction (``engine.consumers.kafka_loop`` has the other hooks)."""
    if os.environ.get("EVENGINE_CRASH_AT") == name:
        log.warning("EVENGINE_CRASH_AT=%s: SIGKILL", name)
        os.kill(os.getpid(), signal.SIGKILL)


def digest_of(message: dict) -> str:
    """SHA-256 (hex, 32 chars) of ``message`` as canonical JSON (sorted keys,
    no spaces, orjson): the same message from Kafka or from the WAL digests
    alike, whatever the key order or spacing of the record."""
    return hashlib.sha256(orjson.dumps(message, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


class _Partition:
    """Offsets of one topic partition within a batch."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = -1           # highest offset of the batch


class _Ledger:
    """One shard's ledger stream: its watermark, the open command's partial
    posting sums, and the entries waiting behind a gap."""

    __slots__ = ("ledger_seq", "cmd_seq", "open_sums", "pending", "stuck")

    def __init__(self, ledger_seq: int = 0, cmd_seq: int = 0, open_sums: Optional[dict] = None,
                 pending: Optional[dict] = None, stuck: Optional[tuple] = None) -> None:
        self.ledger_seq = ledger_seq
        self.cmd_seq = cmd_seq
        self.open_sums = open_sums or {}
        self.pending = pending or {}       # ledger_seq -> (record, message, digest)
        self.stuck = stuck                 # (ledger_seq awaited, since when, monotonic s) or None

    def copy(self) -> "_Ledger":
        return _Ledger(self.ledger_seq, self.cmd_seq, dict(self.open_sums), dict(self.pending), self.stuck)


class SettlementStore:
    """The book of record in one :class:`~engine.consumers.sql.Database`.

    Several engines (shards by symbol, ``engine/io/shard.py``) may feed one
    store: each shard's ledger is its own stream (``(shard, ledger_seq)``)
    with its own balances, since each engine checks orders against the funds
    it holds; trades are keyed ``(shard, match_id)`` and ``(symbol, symbol_seq)``.

    Args:
        db: a connected database (the schema is created when missing).
        ledger_topic / trades_topic: the topic names records arrive on.
        data_dirs: the engines' data directories on this machine (one path or
            several), to fill gaps from their WALs (read-only); each is
            matched to its shard by its ``shard.json``. Empty: gaps wait.
        gap_grace_s: how long a missing ``ledger_seq`` may be awaited before
            it counts as a gap. The ledger is keyed by account over several
            partitions, so a later entry often arrives before an earlier one
            of another partition: that is waiting, not a gap. (Trades of one
            symbol share a partition: a jump there is a gap at once.)

    Attributes:
        positions: ``(topic, partition) -> next offset`` as committed.
        ledgers: ``shard -> _Ledger`` (``ledger_seq`` watermark and ``cmd_seq`` of its last entry).
        symbol_seqs: ``symbol -> last symbol_seq`` settled.
        balances: ``(shard, account, asset) -> [available, held]`` as committed.

    Raises:
        SettlementError: the database holds another schema version.
        TransientDatabaseError: the database cannot be reached.
    """

    def __init__(self, db: Database, ledger_topic: str = "ledger", trades_topic: str = "trades",
                 data_dirs: Any = None, gap_grace_s: float = 2.0) -> None:
        from engine.io.shard import read_shard
        self.db = db
        self.gap_grace_s = gap_grace_s
        self.ledger_topic = ledger_topic
        self.trades_topic = trades_topic
        dirs = [data_dirs] if isinstance(data_dirs, (str, os.PathLike)) else list(data_dirs or [])
        self.data_dirs = {read_shard(str(d)): str(d) for d in dirs}
        self._histories: dict = {}
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
        """Read the committed state (positions, watermarks, balances, each
        shard's open command's partial sums) into memory: after a start and
        after a failed transaction (the memory must equal the database)."""
        db = self.db
        self.positions = {(t, p): o for t, p, o in db.query(
            "SELECT topic, partition_id, next_offset FROM consumer_positions")}
        self.ledgers: dict = {}
        for stream, last, cmd_seq in db.query("SELECT stream, last_id, cmd_seq FROM watermarks"):
            if stream.startswith("ledger:"):
                shard = stream[len("ledger:"):]
                sums = {asset: int(d) for asset, d in db.query(
                    "SELECT asset, SUM(available_delta + held_delta) FROM postings WHERE shard = ? AND cmd_seq = ? "
                    "GROUP BY asset", (shard, cmd_seq))}
                self.ledgers[shard] = _Ledger(last, cmd_seq, sums)
        self.symbol_seqs = {sym: n for sym, n in db.query("SELECT symbol, symbol_seq FROM symbols")}
        self.balances = {(sh, a, s): [av, h] for sh, a, s, av, h in db.query(
            "SELECT shard, account, asset, available, held FROM balances")}
        self.supply = {(sh, a): v for sh, a, v in db.query("SELECT shard, asset, supply FROM assets")}
        self.open_gaps = {(s, f): l for s, f, l in db.query(
            "SELECT stream, first_id, last_id FROM gaps WHERE filled_ns IS NULL")}
        self.seen: dict = {}               # (topic, partition) -> highest offset read (this run)
        self.pending_trades: dict = {}     # symbol -> {symbol_seq: (record, message, digest)}

    @property
    def ledger_seq(self) -> int:
        """Ledger entries settled, over every shard (one shard: its watermark)."""
        return sum(lg.ledger_seq for lg in self.ledgers.values())

    @property
    def pending_ledger(self) -> dict:
        """``(shard, ledger_seq) -> (record, message, digest)`` waiting behind a gap."""
        return {(sh, n): v for sh, lg in self.ledgers.items() for n, v in lg.pending.items()}

    # --------------------------------------------------------------- apply
    def apply(self, records: Iterable[Record]) -> SettleCounts:
        """Apply one batch (records of both topics, any partitions and shards)
        in one transaction; see the module docstring.

        Raises:
            ConflictError, LedgerMismatchError: nothing of the batch stays;
                the store's memory is reloaded from the database.
            TransientDatabaseError: the database went away; nothing stayed;
                the memory is reloaded when it is back (the caller seeks to
                :attr:`positions` again).
        """
        counts = SettleCounts()
        parts: dict = {}
        ledger_in: dict = {}
        trades_in: list = []
        ledger_topic, trades_topic = self.ledger_topic, self.trades_topic
        for rec in records:
            key = (rec.topic, rec.partition)
            part = parts.get(key)
            if part is None:
                part = parts[key] = _Partition()
            if rec.offset > part.done:
                part.done = rec.offset
            topic = rec.topic
            if topic != ledger_topic and topic != trades_topic:
                continue
            try:
                msg = (decode_ledger if topic == ledger_topic else decode_trade)(rec.value or b"")
            except ValueError as exc:
                counts.malformed += 1
                log.warning("skipped record %s[%d] offset %d: %s", rec.topic, rec.partition, rec.offset, exc)
                continue
            if topic == ledger_topic:
                ledger_in.setdefault(msg["shard"], []).append((rec, msg, digest_of(msg)))
            else:
                bad = _incomplete_trade(msg)
                if bad:
                    counts.malformed += 1
                    log.warning("skipped record %s[%d] offset %d: not a whole trade message: %s", rec.topic,
                                rec.partition, rec.offset, bad)
                    continue
                trades_in.append((rec, msg, digest_of(msg)))
        try:
            with self.db.transaction():
                plan = _Plan(self)
                for shard in sorted(ledger_in.keys() | self.ledgers.keys()):
                    plan.ledger(shard, ledger_in.get(shard, ()), counts)
                plan.trades(trades_in, counts)
                plan.check_repeats()
                plan.positions(parts)
                plan.write()
        except BaseException:
            try:
                self.load()
            except Exception:   # the database is away: loaded again on reconnect
                pass
            raise
        plan.commit_to_memory()
        counts.held = sum(len(lg.pending) for lg in self.ledgers.values()) + \
            sum(len(p) for p in self.pending_trades.values())
        return counts

    def waiting(self) -> bool:
        """Whether records are held behind a gap (the loop retries them)."""
        return bool(self.pending_trades or any(lg.pending for lg in self.ledgers.values()))

    # ------------------------------------------------------------ queries
    def history(self, shard: str) -> Any:
        """The data directory of ``shard`` as a :class:`recovery.History`, opened once."""
        h = self._histories.get(shard)
        if h is None:
            from recovery.time_travel import open_data_dir
            h = self._histories[shard] = open_data_dir(self.data_dirs[shard])
        return h

    def totals(self) -> dict:
        """``asset -> (available, held, supply)`` over every account and shard, from the database."""
        out: dict = {}
        for asset, sup in self.db.query("SELECT asset, SUM(supply) FROM assets GROUP BY asset"):
            out[asset] = [0, 0, int(sup)]
        for asset, av, h in self.db.query("SELECT asset, SUM(available), SUM(held) FROM balances GROUP BY asset"):
            t = out.setdefault(asset, [0, 0, 0])
            t[0], t[1] = int(av), int(h)
        return {a: tuple(t) for a, t in out.items()}

    def posting_sums(self) -> dict:
        """``asset -> sum of every posting``: 0 for every asset once each
        shard's last command is complete (:func:`verify` and the tests check it)."""
        return {a: int(s) for a, s in self.db.query(
            "SELECT asset, SUM(available_delta + held_delta) FROM postings GROUP BY asset")}

    def close(self) -> None:
        self.db.close()


class _Plan:
    """One batch worked out in memory: what to write, and the new in-memory
    state, which :meth:`commit_to_memory` installs only after the commit."""

    def __init__(self, store: SettlementStore) -> None:
        self.s = store
        self.ledgers: dict = {}                 # shard -> _Ledger (copies of the touched ones)
        self.balances: dict = {}                # (shard, account, asset) -> [available, held, ledger_seq]
        self.supply: dict = {}                  # (shard, asset) -> supply
        self.postings: list = []
        self.trade_rows: list = []
        self.symbol_seqs: dict = {}             # symbol -> (shard, symbol_seq)
        self.pending_trades = {s: dict(p) for s, p in store.pending_trades.items()}
        self.gaps_found: list = []              # (stream, first, last)
        self.gaps_closed: list = []             # (stream, first)
        self.new_positions: dict = {}
        self.repeats: list = []                 # (stream, key, label, digest)
        self.seen: dict = {}                    # (topic, partition) -> highest offset read

    # -------------------------------------------------------------- ledger
    def ledger(self, shard: str, entries: Iterable, counts: SettleCounts) -> None:
        """Take one shard's ledger records of the batch and apply what can be,
        in ``ledger_seq`` order."""
        lg = self.s.ledgers.get(shard)
        lg = self.ledgers[shard] = lg.copy() if lg is not None else _Ledger()
        pending = lg.pending
        stream = f"ledger:{shard}"
        entry = self._entry
        applied = 0
        # Most entries come in order: apply those straight away; park the rest.
        for rec, msg, digest in sorted(entries, key=lambda e: e[1]["ledger_seq"]):
            n = msg["ledger_seq"]
            if n == lg.ledger_seq + 1 and not pending:
                entry(shard, lg, msg, digest)
                applied += 1
                if self.gaps_found or self.s.open_gaps:
                    self._close_gap_at(stream, n)
            elif n <= lg.ledger_seq:
                self._repeat("ledger", (shard, n), f"{n} of shard {shard}", digest, counts)
            elif n in pending:
                if pending[n][2] != digest:
                    raise ConflictError(f"ledger_seq {n} of shard {shard} arrived twice with different bodies "
                                        f"({rec.topic}[{rec.partition}] offset {rec.offset})")
                counts.repeats += 1
            else:
                pending[n] = (rec, msg, digest)
        order = sorted(pending)
        i = 0
        while i < len(order):
            first = order[i]
            if first != lg.ledger_seq + 1:
                if first <= lg.ledger_seq:      # parked, then reached by the in-order run: a repeat
                    _rec, _msg, digest = pending.pop(first)
                    self._repeat("ledger", (shard, first), f"{first} of shard {shard}", digest, counts)
                    i += 1
                    continue
                now = time.monotonic()
                if lg.stuck is None or lg.stuck[0] != lg.ledger_seq + 1:
                    lg.stuck = (lg.ledger_seq + 1, now)
                if now - lg.stuck[1] < self.s.gap_grace_s:
                    break                    # not yet a gap: another partition may still bring it
                if not self._ledger_gap(shard, lg, lg.ledger_seq + 1, first - 1, counts):
                    break
                order = sorted(pending)      # the gap's entries are pending now
                i = 0
                continue
            _rec, msg, digest = pending.pop(first)
            entry(shard, lg, msg, digest)
            applied += 1
            if self.gaps_found or self.s.open_gaps:
                self._close_gap_at(stream, first)
            i += 1
        counts.ledger_applied += applied

    def _ledger_gap(self, shard: str, lg: _Ledger, a: int, b: int, counts: SettleCounts) -> bool:
        """Fill ``ledger_seq`` ``a..b`` of ``shard`` from its WAL if possible;
        record the gap when new. Returns whether it is filled."""
        s = self.s
        data_dir = self._note_gap(f"ledger:{shard}", shard, a, b, f"the ledger of shard {shard}: ledger_seq", counts)
        if not data_dir:
            return False
        found = 0
        try:
            for _cmd_seq, ts_ns, change in s.history(shard).balance_changes(max(lg.cmd_seq, 1)):
                n = change[1]
                if n < a:
                    continue
                if n > b:
                    break
                msg = ledger_message(change, ts_ns, shard)
                d = digest_of(msg)
                if lg.pending.setdefault(n, (None, msg, d))[2] != d:
                    raise ConflictError(f"ledger_seq {n} of shard {shard}: the record on Kafka differs from "
                                        f"the engine's WAL")
                found += 1
        except SettlementError:
            raise
        except Exception as exc:
            raise GapError(f"ledger_seq {a}..{b} of shard {shard} are missing and the WAL of {data_dir} cannot "
                           f"be read for them: {exc}") from None
        if found < b - a + 1:
            raise GapError(f"ledger_seq {a}..{b} of shard {shard} are missing and the WAL of {data_dir} holds "
                           f"{found} of them: is it this shard's data directory?")
        _crash_point("settle-during-gap-fill")
        counts.filled_from_wal += found
        return True

    def _entry(self, shard: str, lg: _Ledger, msg: dict, digest: str) -> None:
        account, asset = msg["account"], msg["asset"]
        da, dh = msg["available_delta"], msg["held_delta"]
        n, cmd_seq = msg["ledger_seq"], msg["cmd_seq"]
        key = (shard, account, asset)
        b = self.balances.get(key)
        if b is None:
            old = self.s.balances.get(key, (0, 0))
            b = self.balances[key] = [old[0], old[1], n]
        available, held = b[0] + da, b[1] + dh
        if available != msg["available"] or held != msg["held"]:
            raise LedgerMismatchError(
                f"ledger_seq {n} of shard {shard}: account {account} {asset} is {b[0]} available, {b[1]} held "
                f"here; the entry moves {da:+d}, {dh:+d} and says {msg['available']}, {msg['held']} after")
        b[0], b[1], b[2] = available, held, n
        if cmd_seq != lg.cmd_seq:
            bad = {a: v for a, v in lg.open_sums.items() if v}
            if bad:
                raise LedgerMismatchError(f"the postings of command {lg.cmd_seq} of shard {shard} do not sum to "
                                          f"zero: {bad}")
            lg.open_sums = {}
            lg.cmd_seq = cmd_seq
        sums = lg.open_sums
        sums[asset] = sums.get(asset, 0) + da + dh
        reason = msg["reason"]
        ts_ns, ref = msg["ts_ns"], msg["ref"]
        self.postings.append((shard, n, 0, cmd_seq, ts_ns, account, asset, reason, ref, da, dh, available, held,
                              digest))
        if reason in _TRANSFER_REASONS:     # the other leg: the world outside the exchange
            skey = (shard, asset)
            supply = self.supply.get(skey, self.s.supply.get(skey, 0)) + da
            self.supply[skey] = supply
            sums[asset] -= da
            self.postings.append((shard, n, 1, cmd_seq, ts_ns, None, asset, reason, ref, -da, 0, -supply, 0, None))
        lg.ledger_seq = n

    # -------------------------------------------------------------- trades
    def trades(self, trades: list, counts: SettleCounts) -> None:
        s = self.s
        touched = set()
        for rec, msg, digest in trades:
            symbol, n = msg["symbol"], msg["symbol_seq"]
            last = self._last_symbol_seq(symbol)
            pend = self.pending_trades.setdefault(symbol, {})
            if n <= last:
                self._repeat("trades", (symbol, n), f"{symbol} symbol_seq {n}", digest, counts)
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
                self.pending_trades.pop(symbol, None)
                continue
            order = sorted(pend)
            i = 0
            while i < len(order):
                last = self._last_symbol_seq(symbol)
                first = order[i]
                if first != last + 1:
                    if not self._trade_gap(symbol, pend[first][1]["shard"], last + 1, first - 1, pend, counts):
                        break
                    order = sorted(pend)
                    i = 0
                    continue
                _rec, msg, digest = pend.pop(first)
                self.trade_rows.append(tuple(msg.get(c) for c in TRADE_COLUMNS[:-1]) + (digest,))
                self.symbol_seqs[symbol] = (msg["shard"], first)
                counts.trades_settled += 1
                if self.gaps_found or s.open_gaps:
                    self._close_gap_at(f"trades:{symbol}", first)
                i += 1
            if not pend:
                self.pending_trades.pop(symbol, None)

    def _last_symbol_seq(self, symbol: str) -> int:
        planned = self.symbol_seqs.get(symbol)
        return planned[1] if planned is not None else self.s.symbol_seqs.get(symbol, 0)

    def _trade_gap(self, symbol: str, shard: str, a: int, b: int, pend: dict, counts: SettleCounts) -> bool:
        s = self.s
        data_dir = self._note_gap(f"trades:{symbol}", shard, a, b, f"{symbol}: symbol_seq", counts)
        if not data_dir:
            return False
        start = 1
        if a > 1:
            rows = s.db.query("SELECT cmd_seq FROM settled_trades WHERE symbol = ? AND symbol_seq = ?",
                              (symbol, a - 1))
            start = rows[0][0] if rows and rows[0][0] else 1
        found = 0
        try:
            for seq, trade, source, pos in s.history(shard).trades_with_input(start):
                if trade.symbol != symbol or trade.symbol_seq < a:
                    continue
                if trade.symbol_seq > b:
                    break
                msg = trade_message(seq, trade, source, pos, shard)
                d = digest_of(msg)
                if pend.setdefault(trade.symbol_seq, (None, msg, d))[2] != d:
                    raise ConflictError(f"trade {symbol} symbol_seq {trade.symbol_seq}: the record on Kafka "
                                        f"differs from the engine's WAL")
                found += 1
        except SettlementError:
            raise
        except Exception as exc:
            raise GapError(f"trades {a}..{b} of {symbol} are missing and the WAL of {data_dir} cannot be read "
                           f"for them: {exc}") from None
        if found < b - a + 1:
            raise GapError(f"trades {a}..{b} of {symbol} are missing and the WAL of {data_dir} holds {found} of "
                           f"them: is it the data directory of shard {shard}?")
        _crash_point("settle-during-gap-fill")
        counts.filled_from_wal += found
        return True

    # ------------------------------------------------------------ helpers
    def _note_gap(self, stream: str, shard: str, a: int, b: int, what: str, counts: SettleCounts) -> Optional[str]:
        """Record and log the gap ``a..b`` of ``stream`` the first time it is
        seen; return the data directory of ``shard`` to fill it from, if any."""
        data_dir = self.s.data_dirs.get(shard)
        if (stream, a) not in self.s.open_gaps and all(g[:2] != (stream, a) for g in self.gaps_found):
            counts.gaps += 1
            self.gaps_found.append((stream, a, b))
            log.warning("gap in %s %d..%d missing%s", what, a, b,
                        f"; deriving it from the WAL of {data_dir}" if data_dir else
                        f"; waiting for it (no data directory of shard {shard})")
        return data_dir

    def _repeat(self, stream: str, key: Any, label: str, digest: str, counts: SettleCounts) -> None:
        """A record at or below its stream's committed watermark: checked
        against the stored digest in :meth:`check_repeats`, one query per
        stream."""
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
        groups: dict = {}
        for stream, key, label, digest in self.repeats:
            groups.setdefault((stream, key[0]), []).append((key[1], label, digest))
        for (stream, first), items in groups.items():
            lo = min(k for k, _, _ in items)
            hi = max(k for k, _, _ in items)
            if stream == "ledger":
                stored = dict(db.query("SELECT ledger_seq, digest FROM postings WHERE shard = ? AND leg = 0 AND "
                                       "ledger_seq BETWEEN ? AND ?", (first, lo, hi)))
            else:
                stored = dict(db.query("SELECT symbol_seq, digest FROM settled_trades WHERE symbol = ? AND "
                                       "symbol_seq BETWEEN ? AND ?", (first, lo, hi)))
            for k, label, digest in items:
                if stored.get(k) != digest:
                    raise ConflictError(f"{'ledger_seq' if stream == 'ledger' else 'trade'} {label}: a repeat "
                                        f"whose body differs from the one settled (digest {digest}, stored "
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
        waiting = [v for lg in self.ledgers.values() for v in lg.pending.values()]
        waiting += [v for lg_shard, lg in self.s.ledgers.items() if lg_shard not in self.ledgers
                    for v in lg.pending.values()]
        waiting += [v for pend in self.pending_trades.values() for v in pend.values()]
        for rec, _msg, _d in waiting:
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
    def write(self) -> None:
        s, db = self.s, self.s.db
        db.insert_rows("postings", POSTING_COLUMNS, self.postings)
        if self.balances:
            db.executemany("INSERT INTO balances (shard, account, asset, available, held, ledger_seq) "
                           "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (shard, account, asset) DO UPDATE SET "
                           "available = excluded.available, held = excluded.held, ledger_seq = excluded.ledger_seq",
                           [(sh, a, asset, b[0], b[1], b[2]) for (sh, a, asset), b in self.balances.items()])
        for (shard, _account, asset) in self.balances:
            if (shard, asset) not in s.supply and (shard, asset) not in self.supply:
                self.supply[(shard, asset)] = 0
        if self.supply:
            db.executemany("INSERT INTO assets (shard, asset, supply) VALUES (?, ?, ?) ON CONFLICT (shard, asset) "
                           "DO UPDATE SET supply = excluded.supply",
                           [(sh, a, v) for (sh, a), v in self.supply.items()])
        try:
            db.insert_rows("settled_trades", TRADE_COLUMNS, self.trade_rows)
        except Exception as exc:
            text = str(exc).lower()
            if "unique" in text or "duplicate" in text or "primary key" in text:
                raise ConflictError(f"a trade's (shard, match_id) or (symbol, symbol_seq) is already settled with "
                                    f"another body: {exc}") from None
            raise
        if self.symbol_seqs:
            db.executemany("INSERT INTO symbols (symbol, shard, symbol_seq) VALUES (?, ?, ?) ON CONFLICT (symbol) "
                           "DO UPDATE SET symbol_seq = excluded.symbol_seq",
                           [(sym, sh, n) for sym, (sh, n) in self.symbol_seqs.items()])
        marks = [(f"ledger:{sh}", lg.ledger_seq, lg.cmd_seq) for sh, lg in self.ledgers.items()
                 if sh not in s.ledgers or s.ledgers[sh].ledger_seq != lg.ledger_seq]
        if marks:
            db.executemany("INSERT INTO watermarks (stream, last_id, cmd_seq) VALUES (?, ?, ?) ON CONFLICT "
                           "(stream) DO UPDATE SET last_id = excluded.last_id, cmd_seq = excluded.cmd_seq", marks)
        now = time.time_ns()
        for stream, a, b in self.gaps_found:
            db.execute("INSERT INTO gaps (stream, first_id, last_id, detected_ns) VALUES (?, ?, ?, ?) "
                       "ON CONFLICT (stream, first_id) DO NOTHING", (stream, a, b, now))
        for stream, a in self.gaps_closed:
            shard = stream[len("ledger:"):] if stream.startswith("ledger:") else None
            how = "wal" if (shard in s.data_dirs if shard is not None else bool(s.data_dirs)) else "late records"
            db.execute("UPDATE gaps SET filled_ns = ?, how = ? WHERE stream = ? AND first_id = ?",
                       (now, how, stream, a))
        if self.new_positions:
            db.executemany("INSERT INTO consumer_positions (topic, partition_id, next_offset) VALUES (?, ?, ?) "
                           "ON CONFLICT (topic, partition_id) DO UPDATE SET next_offset = excluded.next_offset",
                           [(t, p, o) for (t, p), o in self.new_positions.items()])

    def commit_to_memory(self) -> None:
        s = self.s
        for key, b in self.balances.items():
            s.balances[key] = [b[0], b[1]]
        s.supply.update(self.supply)
        for sym, (_sh, n) in self.symbol_seqs.items():
            s.symbol_seqs[sym] = n
        s.ledgers.update(self.ledgers)
        s.positions.update(self.new_positions)
        s.seen = self.seen
        s.pending_trades = {k: v for k, v in self.pending_trades.items() if v}
        for stream, a, b in self.gaps_found:
            s.open_gaps[(stream, a)] = b
        for stream, a in self.gaps_closed:
            s.open_gaps.pop((stream, a), None)


def verify(db: Database, data_dirs: Any) -> dict:
    """Recompute every balance from the engines' WALs and compare with the
    settlement database ``db``.

    Each engine's ledger (derived by replaying its data directory's WAL) is
    summed up to the database's watermark for its shard, so a settlement
    that lags behind compares equal; the lag is reported beside. Returns::

        {"shards": [str, ...],
         "ledger_seq": int,            # entries settled, over those shards
         "engine_ledger_seq": int,     # entries in the engines' WALs
         "ledger_lag": int,            # entries not settled yet
         "trades_settled": int, "engine_trades": int, "trades_lag": int,
         "differences": [{"shard", "account", "asset", "settled": [available, held],
                          "engine": [available, held]}, ...],   # [] expected
         "posting_sums": {asset: int}, # 0 unless a command is half settled
         "supply_differences": {"shard/asset": [settled, engine]}}

    Complexity: one replay of each WAL. Raises what :func:`recovery.open_data_dir` raises.
    """
    from engine.io.shard import read_shard
    from recovery.time_travel import open_data_dir
    dirs = [data_dirs] if isinstance(data_dirs, (str, os.PathLike)) else list(data_dirs)
    marks = dict(db.query("SELECT stream, last_id FROM watermarks"))
    engine: dict = {}
    supply: dict = {}
    shards = []
    upto_total = last_total = engine_trades = 0
    for d in dirs:
        shard = read_shard(str(d))
        shards.append(shard)
        h = open_data_dir(str(d))
        upto = marks.get(f"ledger:{shard}", 0)
        upto_total += upto
        last = 0
        for _cmd_seq, _ts, ev in h.balance_changes(1):
            last = ev[1]
            if ev[1] <= upto:
                engine[(shard, ev[3], ev[4])] = [ev[7], ev[8]]
                if ev[9] in (1, 2):      # LedgerReason.DEPOSIT, WITHDRAWAL
                    supply[(shard, ev[4])] = supply.get((shard, ev[4]), 0) + ev[5]
        last_total += last
        engine_trades += sum(1 for _ in h.trades_with_input())
    settled = {(sh, a, s): [av, hd] for sh, a, s, av, hd in db.query(
        "SELECT shard, account, asset, available, held FROM balances") if sh in shards}
    diffs = [{"shard": k[0], "account": k[1], "asset": k[2], "settled": settled.get(k), "engine": engine.get(k)}
             for k in sorted(set(settled) | set(engine), key=repr) if settled.get(k) != engine.get(k)]
    stored_supply = {(sh, a): v for sh, a, v in db.query("SELECT shard, asset, supply FROM assets") if sh in shards}
    supply_diffs = {f"{k[0]}/{k[1]}": [stored_supply.get(k, 0), supply.get(k, 0)]
                    for k in set(stored_supply) | set(supply) if stored_supply.get(k, 0) != supply.get(k, 0)}
    settled_trades = sum(n for sh, n in db.query("SELECT shard, COUNT(*) FROM settled_trades GROUP BY shard")
                         if sh in shards)
    sums = {a: int(s) for a, s in db.query("SELECT asset, SUM(available_delta + held_delta) FROM postings "
                                           "GROUP BY asset")}
    return {"shards": shards, "ledger_seq": upto_total, "engine_ledger_seq": last_total,
            "ledger_lag": last_total - upto_total, "trades_settled": settled_trades, "engine_trades": engine_trades,
            "trades_lag": engine_trades - settled_trades, "differences": diffs, "posting_sums": sums,
            "supply_differences": supply_diffs}
