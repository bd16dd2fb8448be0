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
   ``L``) consume synthetic volume at that side and price first (oldest
   first), then the level's newest orders.
3. **Re-sync.** After a row, a level that scrolled into the top-``L`` window
   from beyond the previous row's ``L``-th price, with more volume than the
   engine holds there, gets one synthetic resting order for the missing
   volume. The best level is never touched this way.

Two modes drive executions (type 4):

- ``"reconstruct"``: reduce or cancel the executed order (or synthetic
  volume), like a cancel. Rebuilds the reference book exactly.
- ``"match"``: let the engine match. Consecutive type-4 rows with the same
  timestamp and direction (type-5 rows of that timestamp may sit between
  them) form one sweep; the source sends one IOC limit order on the opposite
  side for the summed size, limited at the sweep's worst price. If the engine
  then filled other orders than LOBSTER executed (the data breaks strict
  price-time priority in a few same-timestamp cases), repair commands bring
  every touched order back to what LOBSTER says is left: the engine's fills
  stand, the book agrees again.

Units: prices stay in LOBSTER's unit (USD x 10,000); the book's tick size is
100 (one cent). Sizes are shares (1 lot = 1 share). ``ts_ns`` is nanoseconds
after midnight, parsed exactly from the decimal string.

Synthetic order ids (LOBSTER ids are below 2**31; ids from ``2**40`` up are
refused in the file as bad input so that they never collide):

=================  ======================================  =================
range              id                                      what
=================  ======================================  =================
``[2**40, 2**41)`` ``2**40 + n``                           seed ``n`` (bids
                                                           best first, then
                                                           asks best first)
``[2**41, 2**42)`` ``2**41 + row * 4096 + n``              re-sync orders
``[2**42, 2**43)`` ``2**42 + row * 4096 + n``              match-mode repairs
``[2**43, 2**44)`` ``2**43 + first row of the sweep``      match-mode takers
=================  ======================================  =================

``n`` counts the synthetic orders of one row (fewer than 4096); rows must be
below 2**29. Every id depends only on the files and the row, so a resumed
source emits the same ids.

Source positions: every command carries ``source=self.name`` and
``source_pos`` = the 0-based message row it stems from. ``AddSymbol`` and the
seed orders carry ``-1``: they come before row 0. A sweep's commands all
carry its last type-4 row. Within a row the order is: the message's own
commands, match-mode repairs, then re-sync orders; the last one completes the
row.

Source: LOBSTER_SampleFiles_ReadMe.txt (format), ``../shared/data/README.md``
(measured facts: unknown ids, sweeps, re-sync rule).
"""

from __future__ import annotations

import re
from itertools import islice
from pathlib import Path
from typing import IO, Any, Iterator, NamedTuple, Optional, Union

from engine.core import (BUY, SELL, AddSymbol, AmendOrder, BadInput, CancelOrder, Command, Matcher,
                         OrderBook, PlaceOrder)

__all__ = [
    "LobsterSource", "LobsterFileError", "Message", "parse_message", "parse_orderbook_row",
    "parse_file_name", "synthetic_kind", "count_rows",
    "TICK_SIZE", "SEED_ID_BASE", "RESYNC_ID_BASE", "REPAIR_ID_BASE", "TAKER_ID_BASE",
    "SYNTHETIC_ID_END", "ROW_STRIDE", "DUMMY_ASK_PRICE", "DUMMY_BID_PRICE",
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

_GTC, _IOC = 1, 2
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
        size: shares (for type 2: shares cancelled; type 3: shares deleted;
            type 4: shares executed).
        price: USD x 10,000 (type 7: -1, 0 or 1).
        direction: 1 buy order, -1 sell order (of the resting order for 4/5).
    """

    ts_ns: int
    type: int
    order_id: int
    size: int
    price: int
    direction: int


def _diagnose(line: str) -> str:
    """Why ``line`` is not a valid message row (slow path, for BadInput)."""
    if not line:
        return "blank line"
    cols = line.split(",")
    if len(cols) not in (6, 7):
        return f"expected 6 or 7 columns, got {len(cols)}"
    time = cols[0]
    whole, dot, frac = time.partition(".")
    if not whole.isdigit() or not whole.isascii() or (dot and not (frac.isdigit() and frac.isascii())):
        return f"time must be decimal seconds after midnight, got {time[:40]!r}"
    if len(frac) > 9:
        return f"time has more than 9 decimals: {time[:40]!r}"
    if int(whole) > MAX_TIME_S:
        return f"time {whole}s is past midnight ({MAX_TIME_S}s)"
    for name, text in zip(_FIELDS[1:], cols[1:6]):
        body = text[1:] if text.startswith("-") else text
        if not (body.isdigit() and body.isascii()) or len(body) > 19:
            return f"{name} is not an integer: {text[:40]!r}"
    mtype = int(cols[1])
    if not 1 <= mtype <= 7:
        return f"unknown message type {mtype}"
    for name, text in zip(_FIELDS[2:5], cols[2:5]):
        if text.startswith("-") and not (name == "price" and mtype in (6, 7)):
            return f"{name} is negative: {text[:40]!r}"
    if cols[5] not in ("1", "-1"):
        return f"direction must be 1 or -1, got {cols[5][:40]!r}"
    return "malformed row"


def parse_message(line: str) -> Union[Message, str]:
    """Parse one message row (without its line ending).

    Args:
        line: ``time,type,order_id,size,price,direction[,mpid]``; surrounding
            blanks are ignored.

    Returns:
        A :class:`Message`, or a short reason (``str``) why the row is
        malformed: wrong column count, a non-numeric field, a negative or
        absurd number (size above :data:`MAX_SIZE`, a price that is not a
        positive multiple of :data:`TICK_SIZE` for types 1-4, an order id
        at or above :data:`SEED_ID_BASE`), an unknown type code.
        Never raises.

    Complexity: O(len(line)).
    Source: LOBSTER_SampleFiles_ReadMe.txt, message file columns.
    """
    line = line.strip()
    m = _ROW_RE.fullmatch(line)
    if m is None:
        return _diagnose(line)
    whole, frac, mtype, order_id, size, price, direction = m.groups()
    seconds = int(whole)
    if seconds > MAX_TIME_S:
        return f"time {seconds}s is past midnight ({MAX_TIME_S}s)"
    ts_ns = seconds * 1_000_000_000 + (int(frac.ljust(9, "0")) if frac else 0)
    mtype_i, oid, qty, px = int(mtype), int(order_id), int(size), int(price)
    if oid >= SEED_ID_BASE:
        return f"order id {oid} is out of range (must be below 2**40)"
    if qty > MAX_SIZE:
        return f"size {qty} is absurd (more than {MAX_SIZE} shares)"
    if mtype_i <= 4:
        if not oid:
            return f"type {mtype_i} needs an order id, got 0"
        if not qty:
            return f"type {mtype_i} needs a positive size, got 0"
        if px <= 0 or px >= DUMMY_ASK_PRICE:
            return f"price {px} is out of range"
        if px % TICK_SIZE:
            return f"price {px} is not a multiple of the tick ({TICK_SIZE})"
    elif mtype_i == 5:
        if not qty or px <= 0 or px >= DUMMY_ASK_PRICE:
            return f"hidden execution needs a positive size and price, got {qty} at {px}"
    elif mtype_i == 7:
        if px not in (-1, 0, 1):
            return f"trading halt price must be -1, 0 or 1, got {px}"
    elif px < 0 and px != -1:
        return f"price {px} is negative"
    return Message(ts_ns, mtype_i, oid, qty, px, int(direction))


def parse_orderbook_row(line: str, levels: int) -> Optional[tuple[list[tuple[int, int]], list[tuple[int, int]]]]:
    """Parse one orderbook row into ``(bids, asks)``.

    Args:
        line: ``ask price 1, ask size 1, bid price 1, bid size 1, ...`` for
            ``levels`` levels (``4 * levels`` integers).
        levels: L, the number of levels per side in the file.

    Returns:
        ``(bids, asks)``, each a list of ``(price, size)`` best first, with
        the dummy entries of an empty position (price +-9999999999, size 0)
        left out; ``None`` if the row is malformed (wrong column count, not
        integers, prices out of order). Never raises.

    Source: LOBSTER_SampleFiles_ReadMe.txt, orderbook file, unoccupied levels.
    """
    cols = line.split(",")
    if len(cols) != 4 * levels:
        return None
    try:
        vals = [int(c) for c in cols]
    except ValueError:
        return None
    asks = [(p, s) for p, s in zip(vals[0::4], vals[1::4]) if s > 0 and p != DUMMY_ASK_PRICE]
    bids = [(p, s) for p, s in zip(vals[2::4], vals[3::4]) if s > 0 and p != DUMMY_BID_PRICE]
    for side in (asks, bids):
        for p, s in side:
            if p <= 0 or s < 0:
                return None
    if any(asks[k][0] >= asks[k + 1][0] for k in range(len(asks) - 1)):
        return None
    if any(bids[k][0] <= bids[k + 1][0] for k in range(len(bids) - 1)):
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
    """Number of lines (rows) in a file, counted on raw bytes (a last line
    without a newline counts).

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
    try:
        return open(path, "r", encoding="utf-8", errors="replace", newline="\n")
    except OSError as exc:
        raise LobsterFileError(path, exc.strerror or str(exc)) from exc


def _beyond(side: int, price: int, edge: int) -> bool:
    """Whether ``price`` lies deeper in the book than ``edge`` on ``side``."""
    return price < edge if side == BUY else price > edge


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
            starts empty and unknown ids find nothing to consume).
        symbol: book name; default: the ticker in the file name.
        mode: ``"match"`` (synthesise takers, the engine matches) or
            ``"reconstruct"`` (executions reduce the named order).
        levels: L, levels per side in the orderbook file; default: from the
            file name, else from the orderbook's first row (columns / 4).

    Attributes:
        name: ``"lobster:<symbol>"``, the key of ``Matcher.positions``.
        total: number of message rows.
        symbol, mode, levels, messages_path, orderbook_path: as given or derived.

    Raises:
        LobsterFileError: a file cannot be read.
        ValueError: unknown ``mode``; no symbol given and none in the file name.

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
        self.symbol: str = symbol
        self.mode = mode
        self.name = f"lobster:{symbol}"
        self.total: Optional[int] = count_rows(self.messages_path)
        if self.orderbook_path is not None:
            if levels is None:
                levels = name_levels if name_levels is not None else self._levels_from_orderbook()
        self.levels: Optional[int] = levels if levels is not None else name_levels
        self._files: list[IO[str]] = []

    def _levels_from_orderbook(self) -> Optional[int]:
        assert self.orderbook_path is not None
        with _open_text(self.orderbook_path) as f:
            try:
                first = f.readline()
            except OSError as exc:
                raise LobsterFileError(self.orderbook_path, str(exc)) from exc
        cols = first.strip().count(",") + 1
        return cols // 4 if first.strip() and cols % 4 == 0 else None

    # -------------------------------------------------------------- protocol
    def commands(self, matcher: Matcher, after: Optional[int]) -> Iterator[Command]:
        """Yield the commands for message rows strictly after ``after``.

        Args:
            matcher: the live engine; read (never changed) to see what rests.
                The engine must apply each command before asking for the next.
            after: the last row applied (``matcher.positions[self.name]``),
                or ``None`` for a fresh start. ``None`` and ``-1`` (only
                ``AddSymbol`` and seeds applied) open the book if missing and
                place the seed orders that are not on it yet; any other value
                skips rows ``<= after`` entirely and yields, given the same
                book, exactly the commands the uninterrupted run yielded.

        Yields:
            ``AddSymbol`` (if the book is missing), seed ``PlaceOrder``\\ s,
            then per row: type 1 a GTC limit ``PlaceOrder``; type 2 an
            ``AmendOrder`` (same price, less qty: priority kept) or a
            ``CancelOrder``; type 3 a ``CancelOrder``; type 4 as type 2
            (reconstruct) or, per sweep, one IOC ``PlaceOrder`` then repairs
            (match); re-sync ``PlaceOrder``\\ s; types 5-7 nothing; a
            malformed row one ``BadInput``.

        Raises:
            LobsterFileError: a file cannot be read.
        """
        start = -1 if after is None else int(after)
        msg_f = _open_text(self.messages_path)
        self._files.append(msg_f)
        ob_f = None
        try:
            if self.orderbook_path is not None and self.levels:
                ob_f = _open_text(self.orderbook_path)
                self._files.append(ob_f)
            yield from self._run(matcher, start, msg_f, ob_f)
        except OSError as exc:
            if isinstance(exc, LobsterFileError):
                raise
            bad = ob_f if ob_f is not None and not ob_f.closed and exc.filename == ob_f.name else msg_f
            raise LobsterFileError(bad.name, str(exc)) from exc
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

    # ------------------------------------------------------------- internals
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
            if prev_line is not None and ob_f is not None:
                prev_ob = parse_orderbook_row(prev_line.strip(), levels)
        row = start + 1
        line = msg_f.readline()
        ob_line = next(ob_iter, None)
        first = parse_message(line.rstrip("\n")) if line else None
        first_ts = first.ts_ns if isinstance(first, Message) else 0
        if symbol not in matcher.books:
            yield AddSymbol.new(symbol, TICK_SIZE, first_ts, source=name, source_pos=start if start >= 0 else None)
        if start < 0 and line:
            ob0 = parse_orderbook_row(ob_line.strip(), levels) if ob_line is not None else None
            if ob0 is not None:
                yield from self._seed(matcher, first, ob0, first_ts)
                prev_ob = ob0
        sweep: Optional[_Sweep] = None
        while line:
            raw = line.rstrip("\n").rstrip("\r")
            msg = parse_message(raw) if row != start + 1 else first
            ob = parse_orderbook_row(ob_line.strip(), levels) if ob_line is not None else None
            if sweep is not None:
                if isinstance(msg, Message) and msg.ts_ns == sweep.ts_ns and (
                        msg.type == 5 or msg.type == 4 and msg.direction == sweep.direction):
                    if msg.type == 4:
                        sweep.rows.append(msg)
                        sweep.last_row = row
                        sweep.last_ob = ob
                    line, ob_line, row, prev_ob = msg_f.readline(), next(ob_iter, None), row + 1, ob
                    continue
                yield from self._sweep(matcher, sweep)
                sweep = None
            if not isinstance(msg, Message):
                if len(raw) > MAX_RAW_CHARS:
                    raw, msg = raw[:MAX_RAW_CHARS], f"{msg} (row cut to {MAX_RAW_CHARS} characters)"
                yield BadInput.new(raw, msg, source=name, source_pos=row)
            elif msg.type == 4 and match_mode:
                sweep = _Sweep(row, msg, prev_ob, ob)
            elif msg.type <= 4:
                yield from self._event(matcher, row, msg)
                if ob is not None and prev_ob is not None:
                    yield from self._resync(matcher, row, msg.ts_ns, prev_ob, ob, msg.price)
            line, ob_line, row, prev_ob = msg_f.readline(), next(ob_iter, None), row + 1, ob
        if sweep is not None:
            yield from self._sweep(matcher, sweep)

    def _seed(self, matcher: Matcher, first: Any, ob0: tuple, ts_ns: int) -> Iterator[Command]:
        """Seed orders for the book before message 0 (row 0 minus message 0)."""
        bids, asks = dict(ob0[0]), dict(ob0[1])
        if isinstance(first, Message) and first.type <= 4:
            side = bids if first.direction == 1 else asks
            delta = -first.size if first.type == 1 else first.size
            qty = side.get(first.price, 0) + delta
            if qty > 0:
                side[first.price] = qty
            else:
                side.pop(first.price, None)
        book = matcher.books.get(self.symbol)
        n = 0
        for side, ladder in ((BUY, sorted(bids.items(), reverse=True)), (SELL, sorted(asks.items()))):
            for price, qty in ladder:
                order_id = SEED_ID_BASE + n
                n += 1
                if book is None or order_id not in book.orders:
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
            yield from self._consume(book, side, msg.price, msg.size, ts_ns, row)
            return
        left = order.qty - msg.size
        if msg.type == 3 or left <= 0:
            yield CancelOrder.new(symbol, msg.order_id, ts_ns=ts_ns, source=name, source_pos=row)
            if left < 0:
                yield from self._consume(book, side, msg.price, -left, ts_ns, row)
        else:
            yield AmendOrder.new(symbol, msg.order_id, order.price, left, ts_ns=ts_ns,
                                 source=name, source_pos=row)

    def _consume(self, book: OrderBook, side: int, price: int, qty: int, ts_ns: int,
                 row: int) -> Iterator[Command]:
        """Take ``qty`` lots off the level ``side``/``price``: synthetic orders
        first (oldest first), then the level's newest orders."""
        level = (book.bid_levels if side == BUY else book.ask_levels).get(price)
        if level is None:
            return
        live = [o for o in level.queue if o.qty]
        synthetic = [o for o in live if o.order_id >= SEED_ID_BASE]
        others = [o for o in reversed(live) if o.order_id < SEED_ID_BASE]
        plan = []
        for order in synthetic + others:
            if qty <= 0:
                break
            take = min(qty, order.qty)
            plan.append((order.order_id, order.qty - take))
            qty -= take
        for order_id, left in plan:
            if left:
                yield AmendOrder.new(book.symbol, order_id, price, left, ts_ns=ts_ns,
                                     source=self.name, source_pos=row)
            else:
                yield CancelOrder.new(book.symbol, order_id, ts_ns=ts_ns, source=self.name, source_pos=row)

    def _resync(self, matcher: Matcher, row: int, ts_ns: int, prev_ob: tuple, ob: tuple,
                skip_price: Optional[int] = None) -> Iterator[Command]:
        """Bring the prices that scrolled into the window to the file's volume.

        Per side, the scrolled-in range is the prices beyond ``prev_ob``'s L-th
        price up to ``ob``'s L-th (unbounded if ``ob`` shows fewer than L
        levels). There, a level with more volume in the file than in the
        engine gets one synthetic order for the difference; a level with more
        in the engine (its orders left while deeper than level L, where the
        file does not see them) is reduced, synthetic orders first. The best
        level and ``skip_price`` (the row's own price) are never touched.
        """
        book = matcher.books.get(self.symbol)
        if book is None:
            return
        levels = self.levels
        n = 0
        for side, prev_side, cur_side in ((BUY, prev_ob[0], ob[0]), (SELL, prev_ob[1], ob[1])):
            if len(prev_side) < levels or not cur_side:
                continue
            edge = prev_side[-1][0]
            bounded = len(cur_side) >= levels
            if bounded and not _beyond(side, cur_side[-1][0], edge):
                continue
            best = cur_side[0][0]
            wanted = {p: q for p, q in cur_side[1:] if _beyond(side, p, edge)}
            if side == BUY:
                book_levels = book.bid_levels
                far = cur_side[-1][0] if bounded else None
                engine_prices = list(book.bid_prices.irange(far, edge, inclusive=(True, False)))[::-1]
            else:
                book_levels = book.ask_levels
                far = cur_side[-1][0] if bounded else None
                engine_prices = list(book.ask_prices.irange(edge, far, inclusive=(False, True)))
            extra = []
            for price in engine_prices:
                surplus = book_levels[price].qty - wanted.get(price, 0)
                if surplus > 0 and price != skip_price and _beyond(side, price, best):
                    extra.append((price, surplus))
            for price, surplus in extra:
                yield from self._consume(book, side, price, surplus, ts_ns, row)
            for price, size in wanted.items():
                if price == skip_price:
                    continue
                level = book_levels.get(price)
                missing = size - (level.qty if level is not None else 0)
                if missing > 0:
                    yield PlaceOrder.new(self.symbol, RESYNC_ID_BASE + row * ROW_STRIDE + n, side, price,
                                         missing, ts_ns=ts_ns, source=self.name, source_pos=row)
                    n += 1

    def _sweep(self, matcher: Matcher, sweep: _Sweep) -> Iterator[Command]:
        """One IOC taker for a sweep, then repairs, then re-sync (match mode)."""
        name, symbol, row, ts_ns = self.name, self.symbol, sweep.last_row, sweep.ts_ns
        book = matcher.books.get(symbol)
        if book is None:
            return
        maker_side = BUY if sweep.direction == 1 else SELL
        taker_side = SELL if maker_side == BUY else BUY
        qty = sum(m.size for m in sweep.rows)
        prices = [m.price for m in sweep.rows]
        limit = min(prices) if maker_side == BUY else max(prices)
        # What the taker can touch, before it runs: (order, qty) best first, oldest first.
        pre: list[tuple[Any, int]] = []
        if maker_side == BUY:
            touched = [p for p in reversed(book.bid_prices) if p >= limit]
            levels = book.bid_levels
        else:
            touched = [p for p in book.ask_prices if p <= limit]
            levels = book.ask_levels
        for price in touched:
            pre.extend((o, o.qty) for o in levels[price].queue if o.qty)
        yield PlaceOrder.new(symbol, TAKER_ID_BASE + sweep.first_row, taker_side, limit, qty, tif=_IOC,
                             ts_ns=ts_ns, source=name, source_pos=row)
        # What LOBSTER executed, per order the engine held and per price for the rest.
        held = {o.order_id for o, _ in pre if o.order_id < SEED_ID_BASE}
        want: dict[int, int] = {}
        want_synthetic: dict[int, int] = {}
        for m in sweep.rows:
            if m.order_id in held:
                want[m.order_id] = want.get(m.order_id, 0) + m.size
            else:
                want_synthetic[m.price] = want_synthetic.get(m.price, 0) + m.size
        got_synthetic: dict[int, int] = {}
        reduce_plan: list[tuple[str, Any, int, int]] = []   # (what, order, lots, price)
        restore_plan: list[tuple[str, Any, int, int]] = []
        for order, before in pre:
            filled = before - order.qty
            if order.order_id >= SEED_ID_BASE:
                got_synthetic[order.price] = got_synthetic.get(order.price, 0) + filled
                continue
            diff = filled - want.get(order.order_id, 0)
            if diff < 0:
                reduce_plan.append(("order", order, -diff, order.price))
            elif diff > 0:
                restore_plan.append(("order", order, diff, order.price))
        for price in dict.fromkeys([o.price for o, _ in pre] + prices):
            diff = got_synthetic.get(price, 0) - want_synthetic.get(price, 0)
            if diff < 0:
                reduce_plan.append(("level", None, -diff, price))
            elif diff > 0:
                restore_plan.append(("level", None, diff, price))
        for what, order, lots, price in reduce_plan:
            if what == "level":
                yield from self._consume(book, maker_side, price, lots, ts_ns, row)
            elif order.qty > lots:
                yield AmendOrder.new(symbol, order.order_id, price, order.qty - lots, ts_ns=ts_ns,
                                     source=name, source_pos=row)
            elif order.qty:
                yield CancelOrder.new(symbol, order.order_id, ts_ns=ts_ns, source=name, source_pos=row)
        n = 0
        for what, order, lots, price in restore_plan:
            if what == "level":
                yield PlaceOrder.new(symbol, REPAIR_ID_BASE + row * ROW_STRIDE + n, maker_side, price, lots,
                                     ts_ns=ts_ns, source=name, source_pos=row)
                n += 1
            elif order.qty:
                yield AmendOrder.new(symbol, order.order_id, price, order.qty + lots, ts_ns=ts_ns,
                                     source=name, source_pos=row)
            else:
                yield PlaceOrder.new(symbol, order.order_id, maker_side, price, lots, ts_ns=ts_ns,
                                     source=name, source_pos=row)
        if sweep.last_ob is not None and sweep.prev_ob is not None:
            yield from self._resync(matcher, row, ts_ns, sweep.prev_ob, sweep.last_ob)
