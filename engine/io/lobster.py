"""LOBSTER order source: Nasdaq message files turned into engine commands.

A LOBSTER sample holds two CSV files per ticker and day: the *message* file
(one order event per row) and the *orderbook* file (the top ``L`` price levels
after each message; row ``k`` belongs to message ``k``). Only events inside
the top-``L`` window are in the message file, the book at 09:30 is already
full, and the aggressor of a trade is not in the file. :class:`LobsterSource`
rebuilds the book from the messages anyway:

1. **Seeding.** The state before message 0 is orderbook row 0 with message
   0's effect undone; each visible level becomes one synthetic resting GTC
   limit order.
2. **Unknown ids.** Cancels, partial cancels and executions of an order the
   engine does not hold (placed before 09:30, or while deeper than level
   ``L``) consume synthetic volume at that side and price first.
3. **Re-sync.** After a row, the prices that scrolled into the top-``L``
   window from beyond the previous row's ``L``-th price are brought to the
   file's volume: one synthetic resting order for volume the engine lacks;
   volume the engine has in excess (orders that left while deeper than
   ``L``, unseen by the file) is removed. The best level is never touched.

Which order loses volume when the file does not say (an unknown id, excess
volume) is a guess that only matters for match mode's fill-by-fill
agreement, never for the level totals. The guess uses two facts of the file:
LOBSTER order ids grow with the time of entry, and an order that no later row
names is *dead* in LOBSTER's view. A synthetic order made at row ``r`` can
only hold orders with ids up to the highest id seen by row ``r``.

Two modes drive executions (type 4):

- ``"reconstruct"``: reduce or cancel the executed order (or synthetic
  volume), like a cancel. Rebuilds the reference book exactly.
- ``"match"``: let the engine match. Consecutive type-4 rows with the same
  timestamp and direction (type-5 rows of that timestamp may sit between
  them) form one sweep; the source sends one IOC limit order on the opposite
  side for the summed size, limited at the sweep's worst price. The engine's
  fills stand; if they differ from what LOBSTER executed (the data breaks
  strict price-time priority in a few same-timestamp cases, and the guesses
  above can be wrong), repair commands then bring every touched order and
  level back to what the file says is left.

Units: prices stay in LOBSTER's unit (USD x 10,000); the book's tick size is
100 (one cent). Sizes are shares (1 lot = 1 share). ``ts_ns`` is nanoseconds
after midnight, parsed exactly from the decimal string.

Synthetic order ids (LOBSTER ids are below 2**31; ids from ``2**40`` up are
refused in the file as bad input so that they never collide):

==================  ================================  ==========================
range               id                                what
==================  ================================  ==========================
``[2**40, 2**41)``  ``2**40 + n``                     seed ``n``: bids best
                                                      first, then asks best first
``[2**41, 2**42)``  ``2**41 + row * 4096 + n``        re-sync orders of ``row``
``[2**42, 2**43)``  ``2**42 + row * 4096 + n``        match-mode repair volume
``[2**43, 2**44)``  ``2**43 + first row of sweep``    match-mode takers (IOC)
==================  ================================  ==========================

``n`` counts the synthetic orders of one row (fewer than 4096); rows must be
below 2**29. Every id depends only on the files and the row, so a resumed
source emits the same ids.

Source positions: every command carries ``source=self.name`` and
``source_pos`` = the 0-based message row it stems from, except ``AddSymbol``
and the seed orders, which come before row 0 and carry ``source_pos=None``
(the core only takes positions >= 0; ``None`` leaves the checkpoint at "no
row applied", so a restart seeds again, skipping seeds already on the book).
A sweep's commands all carry its last type-4 row. Within a row the order is:
the message's own commands, match-mode repairs, then re-sync; the last one
completes the row.

Source: LOBSTER_SampleFiles_ReadMe.txt (format), ``../shared/data/README.md``
(measured facts: unknown ids, sweeps, the re-sync rule).
"""

from __future__ import annotations

import re
from array import array
from bisect import bisect_right
from itertools import islice
from pathlib import Path
from typing import IO, Any, Iterator, NamedTuple, Optional, Union

from engine.core import (BUY, SELL, AddSymbol, AmendOrder, BadInput, CancelOrder, Command, Matcher,
                         OrderBook, PlaceOrder)

__all__ = [
    "LobsterSource", "LobsterFileError", "Message", "parse_message", "parse_orderbook_row",
    "parse_file_name", "synthetic_kind", "count_rows",
    "TICK_SIZE", "SEED_ID_BASE", "RESYNC_ID_BASE", "REPAIR_ID_BASE", "TAKER_ID_BASE",
    "SYNTHETIC_ID_END", "ROW_STRIDE", "DUMMY_ASK_PRICE", "DUMMY_BID_PRICE", "MAX_SIZE",
]

TICK_SIZE = 100
"""One cent in LOBSTER's price unit (USD x 10,000)."""
SEED_ID_BASE = 1 << 40
RESYNC_ID_BASE = 1 << 41
REPAIR_ID_BASE = 1 << 42
TAKER_ID_BASE = 1 << 43
SYNTHETIC_ID_END = 1 << 44
ROW_STRIDE = 1 << 12
"""Synthetic ids per row in the re-sync and repair ranges."""
DUMMY_ASK_PRICE = 9_999_999_999
DUMMY_BID_PRICE = -9_999_999_999
MAX_SIZE = 10**9
"""Largest size (shares) accepted in a message; more is taken as garbage."""
MAX_TIME_S = 86_400
MAX_RAW_CHARS = 4096
"""A malformed row longer than this is cut before it goes into ``BadInput``."""

_IOC = 2
_MODES = ("match", "reconstruct")
_FIELDS = ("time", "type", "order id", "size", "price", "direction")
_ROW_RE = re.compile(r"(\d{1,5})(?:\.(\d{1,9}))?,([1-7]),(\d{1,19}),(\d{1,19}),(-?\d{1,19}),(-?1)(?:,[^,]*)?")
_NAME_RE = re.compile(r"(?P<symbol>[^_/\\]+)_(?P<date>\d{4}-\d{2}-\d{2})_(?P<start>\d+)_(?P<end>\d+)_"
                      r"(?:message|orderbook)_(?P<levels>\d+)\.csv")


class LobsterFileError(OSError):
    """A LOBSTER file cannot be opened or read (missing, a directory, no
    permission). Bad *rows* are never this error: they become ``BadInput``.

    Attributes:
        path: the file.
    """

    def __init__(self, path: Union[str, Path], reason: str) -> None:
        super().__init__(f"cannot read LOBSTER file {str(path)!r}: {reason}")
        self.path = Path(path)


class Message(NamedTuple):
    """One parsed message row.

    Attributes:
        ts_ns: nanoseconds after midnight.
        type: 1 new limit order, 2 partial cancel, 3 delete, 4 visible
            execution, 5 hidden execution, 6 cross trade, 7 trading halt.
        order_id: LOBSTER's order reference (0 for types 5-7 as a rule).
        size: shares (type 2: shares cancelled; 3: shares deleted; 4: shares
            executed).
        price: USD x 10,000 (type 7: -1, 0 or 1).
        direction: 1 buy order, -1 sell order (for 4/5: the resting order).
    """

    ts_ns: int
    type: int
    order_id: int
    size: int
    price: int
    direction: int


# ---------------------------------------------------------------- parsing
def _diagnose(line: str) -> str:
    """Why ``line`` is not a valid message row (slow path, for BadInput)."""
    if not line:
        return "blank line"
    cols = line.split(",")
    if len(cols) not in (6, 7):
        return f"expected 6 or 7 columns, got {len(cols)}"
    whole, dot, frac = cols[0].partition(".")
    if not (whole.isascii() and whole.isdigit()) or (dot and not (frac.isascii() and frac.isdigit())):
        return f"time must be decimal seconds after midnight, got {cols[0][:40]!r}"
    if len(frac) > 9:
        return f"time has more than 9 decimals: {cols[0][:40]!r}"
    if int(whole) > MAX_TIME_S:
        return f"time {whole}s is past midnight ({MAX_TIME_S}s)"
    for name, text in zip(_FIELDS[1:], cols[1:6]):
        body = text[1:] if text.startswith("-") else text
        if not (body.isascii() and body.isdigit()) or len(body) > 19:
            return f"{name} is not an integer: {text[:40]!r}"
    mtype = int(cols[1])
    if not 1 <= mtype <= 7:
        return f"unknown message type {mtype}"
    for name, text in zip(_FIELDS[2:5], cols[2:5]):
        if text.startswith("-"):
            return f"{name} is negative: {text[:40]!r}"
    if cols[5] not in ("1", "-1"):
        return f"direction must be 1 or -1, got {cols[5][:40]!r}"
    return "malformed row"


def parse_message(line: str) -> Union[Message, str]:
    """Parse one message row.

    Args:
        line: ``time,type,order_id,size,price,direction[,mpid]``; blanks and
            the line ending around it are ignored.

    Returns:
        A :class:`Message`, or a short reason (``str``) why the row is
        malformed: wrong column count, a non-numeric field, a negative or
        absurd number (time past midnight, more than 9 decimals, size above
        :data:`MAX_SIZE`, an order id at or above :data:`SEED_ID_BASE`, for
        types 1-4 a zero id or size or a price that is not a positive
        multiple of :data:`TICK_SIZE` below the dummy price), an unknown
        type code. Never raises.

    Complexity: O(len(line)).
    Source: LOBSTER_SampleFiles_ReadMe.txt, message file columns and halts.
    """
    line = line.strip()
    m = _ROW_RE.fullmatch(line)
    if m is None:
        return _diagnose(line)
    whole, frac, mtype_s, id_s, size_s, price_s, direction = m.groups()
    seconds = int(whole)
    if seconds > MAX_TIME_S:
        return f"time {seconds}s is past midnight ({MAX_TIME_S}s)"
    ts_ns = seconds * 1_000_000_000 + (int(frac.ljust(9, "0")) if frac else 0)
    mtype, order_id, size, price = int(mtype_s), int(id_s), int(size_s), int(price_s)
    if order_id >= SEED_ID_BASE:
        return f"order id {order_id} is out of range (must be below 2**40)"
    if size > MAX_SIZE:
        return f"size {size} is absurd (more than {MAX_SIZE} shares)"
    if mtype <= 4:
        if not order_id:
            return f"type {mtype} needs an order id, got 0"
        if not size:
            return f"type {mtype} needs a positive size, got 0"
        if not 0 < price < DUMMY_ASK_PRICE:
            return f"price {price} is out of range"
        if price % TICK_SIZE:
            return f"price {price} is not a multiple of the tick ({TICK_SIZE})"
    elif mtype == 5:
        if not size or not 0 < price < DUMMY_ASK_PRICE:
            return f"hidden execution needs a positive size and price, got {size} at {price}"
    elif mtype == 7:
        if price not in (-1, 0, 1):
            return f"trading halt price must be -1, 0 or 1, got {price}"
    elif price < -1:
        return f"price {price} is negative"
    return Message(ts_ns, mtype, order_id, size, price, int(direction))


Ladder = list[tuple[int, int]]


def parse_orderbook_row(line: str, levels: int) -> Optional[tuple[Ladder, Ladder]]:
    """Parse one orderbook row into ``(bids, asks)``.

    Args:
        line: ``ask price 1, ask size 1, bid price 1, bid size 1, ...`` for
            ``levels`` levels (``4 * levels`` integers).
        levels: L, the number of levels per side in the file.

    Returns:
        ``(bids, asks)``, each a list of ``(price, size)`` best first, with
        the dummy entries of empty positions (price +-9999999999, size 0)
        left out; ``None`` if the row is malformed (wrong column count, not
        integers, negative values, prices out of order). Never raises.

    Source: LOBSTER_SampleFiles_ReadMe.txt, orderbook file, unoccupied levels.
    """
    cols = line.strip().split(",")
    if len(cols) != 4 * levels:
        return None
    try:
        vals = [int(c) for c in cols]
    except ValueError:
        return None
    asks = [(p, s) for p, s in zip(vals[0::4], vals[1::4]) if s and p != DUMMY_ASK_PRICE]
    bids = [(p, s) for p, s in zip(vals[2::4], vals[3::4]) if s and p != DUMMY_BID_PRICE]
    for ladder in (asks, bids):
        for p, s in ladder:
            if p <= 0 or s < 0:
                return None
    for k in range(len(asks) - 1):
        if asks[k][0] >= asks[k + 1][0]:
            return None
    for k in range(len(bids) - 1):
        if bids[k][0] <= bids[k + 1][0]:
            return None
    return bids, asks


def parse_file_name(path: Union[str, Path]) -> tuple[Optional[str], Optional[int]]:
    """``(symbol, levels)`` from a LOBSTER file name, e.g.
    ``GOOG_2012-06-21_34200000_57600000_message_10.csv`` -> ``("GOOG", 10)``;
    ``(None, None)`` if the name does not follow LOBSTER's pattern."""
    m = _NAME_RE.fullmatch(Path(path).name)
    if m is None:
        return None, None
    return m["symbol"], int(m["levels"])


def synthetic_kind(order_id: int) -> Optional[str]:
    """``"seed"``, ``"resync"``, ``"repair"`` or ``"taker"`` for an id the
    source made up, ``None`` for a LOBSTER id (see the module's id table)."""
    if order_id < SEED_ID_BASE or order_id >= SYNTHETIC_ID_END:
        return None
    if order_id < RESYNC_ID_BASE:
        return "seed"
    if order_id < REPAIR_ID_BASE:
        return "resync"
    if order_id < TAKER_ID_BASE:
        return "repair"
    return "taker"


def count_rows(path: Union[str, Path]) -> int:
    """Number of rows (lines) of a file, counted on raw bytes; a last line
    without a newline counts.

    Raises:
        LobsterFileError: the file cannot be read.
    """
    rows = 0
    last = b"\n"
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                rows += chunk.count(b"\n")
                last = chunk[-1:]
    except OSError as exc:
        raise LobsterFileError(path, exc.strerror or str(exc)) from exc
    return rows + (last != b"\n")


def _open_text(path: Path) -> IO[str]:
    """Open for reading rows split on ``\\n`` only (so row numbers agree with
    :func:`count_rows`); undecodable bytes become U+FFFD."""
    try:
        return open(path, "r", encoding="utf-8", errors="replace", newline="\n")
    except OSError as exc:
        raise LobsterFileError(path, exc.strerror or str(exc)) from exc


def _beyond(side: int, price: int, edge: int) -> bool:
    """Whether ``price`` lies deeper in the book than ``edge`` on ``side``."""
    return price < edge if side == BUY else price > edge


class _FileFacts:
    """What one pass over the message file tells about order ids.

    ``last_ref[id]``: the last row of type 1-4 naming ``id``. ``high_rows`` /
    ``high_ids``: the rows where the highest id seen so far grows, and that
    id (ascending), for :meth:`id_high`.
    """

    __slots__ = ("last_ref", "high_rows", "high_ids")

    def __init__(self, f: IO[str]) -> None:
        last_ref: dict[int, int] = {}
        high_rows, high_ids = array("q"), array("q")
        high = 0
        for row, line in enumerate(f):
            cols = line.split(",", 3)
            if len(cols) == 4 and cols[1] in ("1", "2", "3", "4"):
                try:
                    order_id = int(cols[2])
                except ValueError:
                    continue
                last_ref[order_id] = row
                if order_id > high:
                    high = order_id
                    high_rows.append(row)
                    high_ids.append(order_id)
        self.last_ref = last_ref
        self.high_rows = high_rows
        self.high_ids = high_ids

    def id_high(self, row: int) -> int:
        """Highest LOBSTER id named in rows ``<= row`` (row 0's for ``row < 0``)."""
        k = bisect_right(self.high_rows, max(row, 0))
        return self.high_ids[k - 1] if k else 0


class _Sweep:
    """Type-4 rows of one match-mode sweep, waiting for their last row."""

    __slots__ = ("first_row", "last_row", "ts_ns", "direction", "rows", "prev_ob", "last_ob")

    def __init__(self, row: int, msg: Message, prev_ob: Any, ob: Any) -> None:
        self.first_row = row
        self.last_row = row
        self.ts_ns = msg.ts_ns
        self.direction = msg.direction
        self.rows: list[Message] = [msg]
        self.prev_ob = prev_ob
        self.last_ob = ob


class LobsterSource:
    """Order source reading one LOBSTER message file (and its orderbook file).

    Args:
        messages_path: the ``..._message_L.csv`` file.
        orderbook_path: the matching ``..._orderbook_L.csv`` file, or
            ``None``: then there is no seeding and no re-sync (the book
            starts empty; unknown ids find nothing to consume).
        symbol: book name; default: the ticker in the file name.
        mode: ``"match"`` (synthesise takers, the engine matches) or
            ``"reconstruct"`` (executions reduce the named order).
        levels: L, levels per side in the orderbook file; default: from the
            file name, else from the orderbook's first row (columns / 4).

    Attributes:
        name: ``"lobster:<symbol>"``, the key of ``Matcher.positions``.
        total: number of message rows.
        symbol, mode, levels, messages_path, orderbook_path: as given or derived.
        stats: counts of the last :meth:`commands` run: ``seeded_orders``,
            ``resync_orders`` (synthetic orders placed by re-sync),
            ``resync_reductions`` (levels re-sync reduced), ``repairs``
            (match-mode repair commands), ``bad_rows``.

    Raises:
        LobsterFileError: a file cannot be read.
        ValueError: unknown ``mode``; no symbol given and none in the file name;
            a symbol longer than 32 characters.

    Source: see the module docstring.
    """

    def __init__(self, messages_path: Union[str, Path], orderbook_path: Union[str, Path, None] = None, *,
                 symbol: Optional[str] = None, mode: str = "match", levels: Optional[int] = None) -> None:
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        self.messages_path = Path(messages_path)
        self.orderbook_path = Path(orderbook_path) if orderbook_path is not None else None
        name_symbol, name_levels = parse_file_name(self.messages_path)
        symbol = symbol if symbol is not None else name_symbol
        if not symbol:
            raise ValueError(f"no ticker in file name {self.messages_path.name!r}: pass symbol=")
        if len(symbol) > 32:
            raise ValueError(f"symbol {symbol[:40]!r} is longer than 32 characters")
        self.symbol: str = symbol
        self.mode = mode
        self.name = f"lobster:{symbol}"
        self.total: Optional[int] = count_rows(self.messages_path)
        if levels is None:
            levels = name_levels
        if levels is None and self.orderbook_path is not None:
            levels = self._levels_from_orderbook()
        self.levels: Optional[int] = levels
        self.stats: dict[str, int] = {}
        self._files: list[IO[str]] = []
        self._facts: Optional[_FileFacts] = None

    def _levels_from_orderbook(self) -> Optional[int]:
        assert self.orderbook_path is not None
        count_rows(self.orderbook_path)
        with _open_text(self.orderbook_path) as f:
            first = f.readline().strip()
        cols = first.count(",") + 1
        return cols // 4 if first and cols % 4 == 0 else None

    # -------------------------------------------------------------- protocol
    def commands(self, matcher: Matcher, after: Optional[int]) -> Iterator[Command]:
        """Yield the commands for message rows strictly after ``after``.

        Args:
            matcher: the live engine; read (never changed) to see what rests.
                The engine must apply each command before asking for the next.
            after: the last row applied (``matcher.positions[self.name]``),
                or ``None`` if no row was: then the book is opened if missing
                and the seed orders not on it yet are placed. Otherwise rows
                ``<= after`` are skipped entirely and, given the same book,
                the commands are exactly those the uninterrupted run yielded.

        Yields:
            ``AddSymbol`` (if the book is missing), seed ``PlaceOrder``\\ s,
            then per row: type 1 a GTC limit ``PlaceOrder``; type 2 an
            ``AmendOrder`` (same price, less qty: priority kept) or a
            ``CancelOrder``; type 3 a ``CancelOrder``; type 4 as type 2
            (reconstruct) or, per sweep, one IOC ``PlaceOrder`` then repairs
            (match); then re-sync commands; types 5-7 nothing; a malformed
            row one ``BadInput``.

        Raises:
            LobsterFileError: a file cannot be read.
        """
        start = -1 if after is None else int(after)
        self.stats = dict.fromkeys(("seeded_orders", "resync_orders", "resync_reductions", "repairs",
                                    "bad_rows"), 0)
        msg_f = _open_text(self.messages_path)
        self._files.append(msg_f)
        ob_f = None
        try:
            if self.orderbook_path is not None and self.levels:
                ob_f = _open_text(self.orderbook_path)
                self._files.append(ob_f)
            if self._facts is None:
                self._facts = _FileFacts(msg_f)
                msg_f.seek(0)
            yield from self._run(matcher, start, msg_f, ob_f)
        except LobsterFileError:
            raise
        except OSError as exc:
            failed = ob_f if ob_f is not None and exc.filename == ob_f.name else msg_f
            raise LobsterFileError(failed.name, exc.strerror or str(exc)) from exc
        finally:
            for f in (msg_f, ob_f):
                if f is not None:
                    f.close()
                    if f in self._files:
                        self._files.remove(f)

    def close(self) -> None:
        """Close the files of any unfinished :meth:`commands` iteration."""
        for f in self._files:
            f.close()
        self._files.clear()

    # ------------------------------------------------------------ main loop
    def _run(self, matcher: Matcher, start: int, msg_f: IO[str], ob_f: Optional[IO[str]]) -> Iterator[Command]:
        name, symbol, levels = self.name, self.symbol, self.levels or 0
        match_mode = self.mode == "match"
        ob_iter: Iterator[str] = iter(ob_f) if ob_f is not None else iter(())
        prev_ob = None
        if start >= 0:
            for _ in islice(msg_f, start + 1):
                pass
            prev_line = None
            for prev_line in islice(ob_iter, start + 1):
                pass
            if prev_line is not None:
                prev_ob = parse_orderbook_row(prev_line, levels)
        row = start + 1
        line = msg_f.readline()
        ob_line = next(ob_iter, None)
        msg = parse_message(line) if line else None
        first_ts = msg.ts_ns if isinstance(msg, Message) else 0
        if symbol not in matcher.books:
            yield AddSymbol.new(symbol, TICK_SIZE, first_ts, source=name, source_pos=start if start >= 0 else None)
        if start < 0 and line and ob_line is not None:
            ob0 = parse_orderbook_row(ob_line, levels)
            if ob0 is not None:
                yield from self._seed(matcher, msg, ob0, first_ts)
                prev_ob = ob0
        sweep: Optional[_Sweep] = None
        while line:
            ob = parse_orderbook_row(ob_line, levels) if ob_line is not None else None
            if sweep is not None and isinstance(msg, Message) and msg.ts_ns == sweep.ts_ns and (
                    msg.type == 5 or msg.type == 4 and msg.direction == sweep.direction):
                if msg.type == 4:
                    sweep.rows.append(msg)
                    sweep.last_row = row
                    sweep.last_ob = ob
            else:
                if sweep is not None:
                    yield from self._sweep(matcher, sweep)
                    sweep = None
                if not isinstance(msg, Message):
                    raw = line.rstrip("\n").rstrip("\r")
                    if len(raw) > MAX_RAW_CHARS:
                        raw, msg = raw[:MAX_RAW_CHARS], f"{msg} (row cut to {MAX_RAW_CHARS} characters)"
                    self.stats["bad_rows"] += 1
                    yield BadInput.new(raw, msg, source=name, source_pos=row)
                elif msg.type == 4 and match_mode:
                    sweep = _Sweep(row, msg, prev_ob, ob)
                elif msg.type <= 4:
                    yield from self._event(matcher, row, msg)
                    if ob is not None and prev_ob is not None:
                        yield from self._resync(matcher, row, msg.ts_ns, prev_ob, ob, msg.price)
            line = msg_f.readline()
            ob_line = next(ob_iter, None)
            row += 1
            prev_ob = ob
            msg = parse_message(line) if line else None
        if sweep is not None:
            yield from self._sweep(matcher, sweep)

    def _seed(self, matcher: Matcher, first: Any, ob0: tuple[Ladder, Ladder], ts_ns: int) -> Iterator[Command]:
        """Seed orders: orderbook row 0 with message 0's effect undone."""
        bids, asks = dict(ob0[0]), dict(ob0[1])
        if isinstance(first, Message) and first.type <= 4:
            ladder = bids if first.direction == 1 else asks
            qty = ladder.get(first.price, 0) + (-first.size if first.type == 1 else first.size)
            if qty > 0:
                ladder[first.price] = qty
            else:
                ladder.pop(first.price, None)
        book = matcher.books.get(self.symbol)
        n = 0
        for side, levels in ((BUY, sorted(bids.items(), reverse=True)), (SELL, sorted(asks.items()))):
            for price, qty in levels:
                order_id = SEED_ID_BASE + n
                n += 1
                if book is None or order_id not in book.orders:
                    self.stats["seeded_orders"] += 1
                    yield PlaceOrder.new(self.symbol, order_id, side, price, qty, ts_ns=ts_ns,
                                         source=self.name, source_pos=None)

    def _event(self, matcher: Matcher, row: int, msg: Message) -> Iterator[Command]:
        """Commands of one type 1-4 row (type 4 as in reconstruct mode)."""
        name, symbol, ts_ns = self.name, self.symbol, msg.ts_ns
        side = BUY if msg.direction == 1 else SELL
        if msg.type == 1:
            yield PlaceOrder.new(symbol, msg.order_id, side, msg.price, msg.size, ts_ns=ts_ns,
                                 source=name, source_pos=row)
            return
        book = matcher.books.get(symbol)
        if book is None:
            return
        order = book.orders.get(msg.order_id)
        if order is None:
            yield from self._consume(book, side, msg.price, msg.size, ts_ns, row, unknown_id=msg.order_id)
            return
        # Remove exactly msg.size lots (for type 3 too): if the engine's guess
        # of which order holds which volume was wrong, the level stays right.
        left = order.qty - msg.size
        if left <= 0:
            yield CancelOrder.new(symbol, msg.order_id, ts_ns=ts_ns, source=name, source_pos=row)
            if left < 0:
                yield from self._consume(book, side, msg.price, -left, ts_ns, row)
        else:
            yield AmendOrder.new(symbol, msg.order_id, order.price, left, ts_ns=ts_ns,
                                 source=name, source_pos=row)

    # ------------------------------------------------------ volume choices
    def _synthetic_row(self, order_id: int) -> int:
        """The row a synthetic order was made at (seeds: -1)."""
        if order_id < RESYNC_ID_BASE:
            return -1
        base = RESYNC_ID_BASE if order_id < REPAIR_ID_BASE else REPAIR_ID_BASE
        return (order_id - base) // ROW_STRIDE

    def _consume(self, book: OrderBook, side: int, price: int, qty: int, ts_ns: int, row: int, *,
                 unknown_id: Optional[int] = None, unseen: bool = False) -> Iterator[Command]:
        """Take ``qty`` lots off the level ``side``/``price``.

        Who loses the volume, in order:

        - default (an event on an order the engine does not hold, id
          ``unknown_id``): synthetic orders that can hold that id (made after
          it was entered: the highest id seen by their row is at least
          ``unknown_id``), oldest first; the other synthetic orders, newest
          first; *dead* LOBSTER orders (no row after ``row`` names them),
          newest first; then the newest orders.
        - ``unseen`` (volume that left while the level was deeper than L,
          most often whole orders the file never cancels): one dead order of
          exactly ``qty`` lots, newest first, if any; dead orders; synthetic
          ones, oldest first; then the newest.

        Complexity: O(orders at the level).
        """
        level = (book.bid_levels if side == BUY else book.ask_levels).get(price)
        if level is None:
            return
        facts = self._facts
        assert facts is not None
        last_ref = facts.last_ref
        live = [o for o in level.queue if o.qty]
        synthetic = [o for o in live if o.order_id >= SEED_ID_BASE]
        dead = [o for o in reversed(live) if o.order_id < SEED_ID_BASE and last_ref.get(o.order_id, -1) <= row]
        alive = [o for o in reversed(live) if o.order_id < SEED_ID_BASE and last_ref.get(o.order_id, -1) > row]
        if unseen:
            exact = [o for o in dead if o.qty == qty]
            candidates = exact[:1] + dead + synthetic + alive
        else:
            if unknown_id is not None and len(synthetic) > 1:
                can = [o for o in synthetic if facts.id_high(self._synthetic_row(o.order_id)) >= unknown_id]
                can_ids = {o.order_id for o in can}
                synthetic = can + [o for o in reversed(synthetic) if o.order_id not in can_ids]
            candidates = synthetic + dead + alive
        plan = []
        taken = set()
        for order in candidates:
            if qty <= 0:
                break
            if order.order_id in taken:
                continue
            taken.add(order.order_id)
            take = min(qty, order.qty)
            plan.append((order.order_id, order.qty - take))
            qty -= take
        for order_id, left in plan:
            if left:
                yield AmendOrder.new(book.symbol, order_id, price, left, ts_ns=ts_ns,
                                     source=self.name, source_pos=row)
            else:
                yield CancelOrder.new(book.symbol, order_id, ts_ns=ts_ns, source=self.name, source_pos=row)

    # -------------------------------------------------------------- re-sync
    def _resync(self, matcher: Matcher, row: int, ts_ns: int, prev_ob: tuple[Ladder, Ladder],
                ob: tuple[Ladder, Ladder], skip_price: Optional[int] = None) -> Iterator[Command]:
        """Bring the prices that scrolled into the window to the file's volume.

        Per side, the scrolled-in range is the prices beyond ``prev_ob``'s L-th
        price up to ``ob``'s L-th (unbounded if ``ob`` shows fewer than L
        levels); nothing scrolls in if ``prev_ob`` showed fewer than L. There,
        a level with more volume in the engine is reduced (``unseen``
        choice), and a level with more in the file gets one synthetic order
        for the difference. The best level and ``skip_price`` (the row's own
        price) are never touched.

        Source: ``../shared/data/README.md``, rule (3).
        """
        book = matcher.books.get(self.symbol)
        if book is None:
            return
        levels = self.levels or 0
        n = 0
        for side, prev_side, cur_side in ((BUY, prev_ob[0], ob[0]), (SELL, prev_ob[1], ob[1])):
            if len(prev_side) < levels:
                continue
            edge = prev_side[-1][0]
            bounded = len(cur_side) >= levels
            if bounded and not _beyond(side, cur_side[-1][0], edge):
                continue
            best = cur_side[0][0] if cur_side else edge
            wanted = {p: q for p, q in cur_side[1:] if _beyond(side, p, edge)}
            far = cur_side[-1][0] if bounded else None
            if side == BUY:
                book_levels = book.bid_levels
                engine_prices = list(book.bid_prices.irange(far, edge, inclusive=(True, False)))[::-1]
            else:
                book_levels = book.ask_levels
                engine_prices = list(book.ask_prices.irange(edge, far, inclusive=(False, True)))
            excess = []
            for price in engine_prices:
                surplus = book_levels[price].qty - wanted.get(price, 0)
                if surplus > 0 and price != skip_price and _beyond(side, price, best):
                    excess.append((price, surplus))
            for price, surplus in excess:
                self.stats["resync_reductions"] += 1
                yield from self._consume(book, side, price, surplus, ts_ns, row, unseen=True)
            for price, size in wanted.items():
                if price == skip_price:
                    continue
                level = book_levels.get(price)
                missing = size - (level.qty if level is not None else 0)
                if missing > 0:
                    self.stats["resync_orders"] += 1
                    yield PlaceOrder.new(self.symbol, RESYNC_ID_BASE + row * ROW_STRIDE + n, side, price,
                                         missing, ts_ns=ts_ns, source=self.name, source_pos=row)
                    n += 1

    # ---------------------------------------------------------------- sweep
    def _sweep(self, matcher: Matcher, sweep: _Sweep) -> Iterator[Command]:
        """Match mode: one IOC taker for a sweep, then repairs, then re-sync."""
        name, symbol, row, ts_ns = self.name, self.symbol, sweep.last_row, sweep.ts_ns
        book = matcher.books.get(symbol)
        if book is None:
            return
        maker_side = BUY if sweep.direction == 1 else SELL
        taker_side = SELL if maker_side == BUY else BUY
        prices = [m.price for m in sweep.rows]
        limit = min(prices) if maker_side == BUY else max(prices)
        # What the taker can reach, before it runs: (order, qty), best first, oldest first.
        if maker_side == BUY:
            levels = book.bid_levels
            reach = list(book.bid_prices.irange(limit, None, reverse=True))
        else:
            levels = book.ask_levels
            reach = list(book.ask_prices.irange(None, limit))
        pre = [(o, o.qty) for p in reach for o in levels[p].queue if o.qty]
        yield PlaceOrder.new(symbol, TAKER_ID_BASE + sweep.first_row, taker_side, limit,
                             sum(m.size for m in sweep.rows), tif=_IOC, ts_ns=ts_ns, source=name, source_pos=row)
        yield from self._repair(book, sweep, maker_side, pre, prices, levels)
        if sweep.last_ob is not None and sweep.prev_ob is not None:
            yield from self._resync(matcher, row, ts_ns, sweep.prev_ob, sweep.last_ob)

    def _repair(self, book: OrderBook, sweep: _Sweep, maker_side: int, pre: list[tuple[Any, int]],
                prices: list[int], levels: dict) -> Iterator[Command]:
        """After a sweep's taker: make the touched orders and levels what
        LOBSTER says is left.

        LOBSTER's executions of orders the engine held are wanted per order;
        the rest (unknown ids) per price, where any other order the taker
        filled at that price stands in for them. An order filled less than
        wanted is reduced; unknown volume not filled is consumed; an order
        filled beyond all that is given back (amended up or entered again:
        it loses its time priority), but only as far as the file's level
        volume after the sweep asks for; finally each touched level the
        file shows is set to the file's volume.
        """
        name, symbol, row, ts_ns = self.name, self.symbol, sweep.last_row, sweep.ts_ns
        stats = self.stats
        held = {o.order_id for o, _ in pre if o.order_id < SEED_ID_BASE}
        want: dict[int, int] = {}
        budget: dict[int, int] = {}
        budget_id: dict[int, int] = {}
        for m in sweep.rows:
            if m.order_id in held:
                want[m.order_id] = want.get(m.order_id, 0) + m.size
            else:
                budget[m.price] = budget.get(m.price, 0) + m.size
                budget_id.setdefault(m.price, m.order_id)
        reduce_plan: list[tuple[Any, int]] = []
        restore_plan: list[tuple[Any, int]] = []
        for order, before in pre:
            filled = before - order.qty
            wanted = want.get(order.order_id)
            if wanted is not None:
                diff = filled - wanted
            elif filled:
                stand_in = min(filled, budget.get(order.price, 0))
                if stand_in:
                    budget[order.price] -= stand_in
                diff = filled - stand_in
            else:
                continue
            if diff < 0:
                reduce_plan.append((order, -diff))
            elif diff > 0:
                restore_plan.append((order, diff))
        # The file's volume after the sweep, at the prices it shows.
        target: dict[int, int] = {}
        if sweep.last_ob is not None:
            ladder = sweep.last_ob[0] if maker_side == BUY else sweep.last_ob[1]
            shown = dict(ladder)
            for price in dict.fromkeys([o.price for o, _ in pre] + prices):
                if len(ladder) < (self.levels or 0) or not _beyond(maker_side, price, ladder[-1][0]):
                    target[price] = shown.get(price, 0)

        def level_qty(price: int) -> int:
            level = levels.get(price)
            return level.qty if level is not None else 0

        for order, lots in reduce_plan:
            if order.qty > lots:
                cmd: Command = AmendOrder.new(symbol, order.order_id, order.price, order.qty - lots, ts_ns=ts_ns,
                                              source=name, source_pos=row)
            elif order.qty:
                cmd = CancelOrder.new(symbol, order.order_id, ts_ns=ts_ns, source=name, source_pos=row)
            else:
                continue
            stats["repairs"] += 1
            yield cmd
        for price, lots in budget.items():
            if price in target:
                lots = min(lots, level_qty(price) - target[price])
            if lots > 0:
                for cmd in self._consume(book, maker_side, price, lots, ts_ns, row, unknown_id=budget_id[price]):
                    stats["repairs"] += 1
                    yield cmd
        for order, lots in restore_plan:
            if order.price in target:
                lots = min(lots, target[order.price] - level_qty(order.price))
            if lots <= 0:
                continue
            stats["repairs"] += 1
            if order.qty:
                yield AmendOrder.new(symbol, order.order_id, order.price, order.qty + lots, ts_ns=ts_ns,
                                     source=name, source_pos=row)
            else:
                yield PlaceOrder.new(symbol, order.order_id, maker_side, order.price, lots, ts_ns=ts_ns,
                                     source=name, source_pos=row)
        n = 0
        for price, qty in target.items():
            diff = level_qty(price) - qty
            if diff > 0:
                for cmd in self._consume(book, maker_side, price, diff, ts_ns, row, unseen=True):
                    stats["repairs"] += 1
                    yield cmd
            elif diff < 0:
                stats["repairs"] += 1
                yield PlaceOrder.new(symbol, REPAIR_ID_BASE + row * ROW_STRIDE + n, maker_side, price, -diff,
                                     ts_ns=ts_ns, source=name, source_pos=row)
                n += 1
