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
3. **Never crossed.** A new order (type 1) never crosses the real book: an
   execution on arrival is written as type-4 rows against the resting
   orders and only a remainder is entered. So levels of the engine's book
   that a type-1 row would cross are stale (their orders left unseen, while
   deeper than ``L``) and are removed before it is placed; in reconstruct
   mode the engine never trades. This is what keeps a file without its
   orderbook file, or with few levels, from trading against ghosts.
4. **The orderbook row is the truth for its range.** After each row, per
   side, every price at or better than the row's ``L``-th level (the whole
   side when the row shows fewer than ``L`` levels: the dummies say there is
   no more) must hold exactly the file's volume. Levels that scrolled in at
   the edge of the window, levels that appear behind an emptied best (at
   ``L = 1`` that is every new best), and volume that left while deep are
   corrected: excess is removed, missing volume becomes one synthetic
   resting order. A correction at a price the *previous* row covered is one
   the messages should have explained: it is counted as a
   ``window_correction`` (``lobster-check`` counts such rows as
   mismatches). Most rows change one level's size and take a fast path
   that compares the raw fields with the previous row's, parsing nothing.
5. **Types 5, 6 and 7** (hidden executions, cross trades, trading halts)
   change no visible level: they make no command and are counted in
   ``stats``; their orderbook rows repeat the previous state. No
   executions reach the file during a halt, so none are synthesised.

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

Units: prices stay in LOBSTER's unit (USD x 10,000). The tick follows Reg
NMS Rule 612: whole cents (100) from $1 up, $0.0001 (1) below; the book's
tick is 1 if any visible price in the message file or orderbook row 0 is
below $1, else 100, and a visible price from $1 up that is not a whole cent
is bad input. Sizes are shares (1 lot = 1 share). ``ts_ns`` is nanoseconds
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
the message's own commands (stale levels first), match-mode repairs, then
the corrections of step 4; the last one completes the row.

Source: LOBSTER_SampleFiles_ReadMe.txt (format, dummy levels, halts),
``../shared/data/README.md`` (measured facts: unknown ids, sweeps, type 1
never crosses), Reg NMS Rule 612 (17 CFR 242.612, the tick).
"""

from __future__ import annotations

import re
from array import array
from bisect import bisect_right
from itertools import islice
from operator import ne
from pathlib import Path
from typing import IO, Any, Generator, Iterator, NamedTuple, Optional, Union

from engine.core import (BUY, SELL, AddSymbol, AmendOrder, BadInput, CancelOrder, Command, Matcher,
                         OrderBook, PlaceOrder)

__all__ = [
    "LobsterSource", "LobsterFileError", "Message", "parse_message", "parse_orderbook_row",
    "parse_file_name", "synthetic_kind", "count_rows", "open_rows",
    "TICK_SIZE", "SUB_PENNY_TICK", "PENNY_RULE_PRICE", "SEED_ID_BASE", "RESYNC_ID_BASE", "REPAIR_ID_BASE", "TAKER_ID_BASE",
    "SYNTHETIC_ID_END", "ROW_STRIDE", "DUMMY_ASK_PRICE", "DUMMY_BID_PRICE", "MAX_SIZE",
]

TICK_SIZE = 100
"""One cent in LOBSTER's price unit (USD x 10,000): the tick at and above $1."""
SUB_PENNY_TICK = 1
"""$0.0001, the tick below $1 (the price unit itself)."""
PENNY_RULE_PRICE = 10_000
"""$1.00: from this price up, quotes are in whole cents (Reg NMS Rule 612,
17 CFR 242.612); below it, in $0.0001."""
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
_UNCHANGED = object()
"""``touched`` of a row whose message changes no visible level (types 5-7)."""
_HALT_STATS = {-1: "halts", 0: "quoting_resumed", 1: "trading_resumed"}
_SIDE_NAMES = {BUY: "bid", SELL: "ask"}
_MAX_LISTED = 1000
_STATS = ("seeded_orders", "resync_orders", "resync_reductions", "corrected_rows", "window_corrections",
          "stale_levels_removed", "repairs", "bad_rows", "bad_orderbook_rows", "hidden_executions",
          "cross_trades", "halts", "quoting_resumed", "trading_resumed")
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
        if price >= PENNY_RULE_PRICE and price % TICK_SIZE:
            return (f"price {price} is not a multiple of the tick ({TICK_SIZE}, one cent): sub-penny "
                    f"prices are only allowed below $1 (Reg NMS Rule 612)")
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
            ``levels`` levels (``4 * levels`` integers); the line ending and
            blanks around a field are ignored.
        levels: L, the number of levels per side in the file.

    Returns:
        ``(bids, asks)``, each a list of ``(price, size)`` best first, with
        the dummy entries of empty positions (price +-9999999999, size 0)
        left out; ``None`` if the row is malformed: wrong column count, not
        integers, a price that is not positive or breaks the tick rule (whole
        cents from $1 up), a negative size, prices out of order, or a crossed
        or locked book (best bid >= best ask). Never raises.

    Complexity: O(L).
    Source: LOBSTER_SampleFiles_ReadMe.txt, orderbook file, unoccupied levels;
    Reg NMS Rule 612 (the tick).
    """
    cols = line.split(",")
    if len(cols) != 4 * levels:
        return None
    try:
        vals = list(map(int, cols))
    except ValueError:
        return None
    asks = [(p, s) for p, s in zip(vals[0::4], vals[1::4]) if s and p != DUMMY_ASK_PRICE]
    bids = [(p, s) for p, s in zip(vals[2::4], vals[3::4]) if s and p != DUMMY_BID_PRICE]
    for ladder in (asks, bids):
        for p, s in ladder:
            if p <= 0 or s < 0 or p >= PENNY_RULE_PRICE and p % TICK_SIZE:
                return None
    for k in range(len(asks) - 1):
        if asks[k][0] >= asks[k + 1][0]:
            return None
    for k in range(len(bids) - 1):
        if bids[k][0] <= bids[k + 1][0]:
            return None
    if bids and asks and bids[0][0] >= asks[0][0]:
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


def open_rows(path: Union[str, Path]) -> IO[str]:
    """Open a LOBSTER file for reading rows split on ``\\n`` only (so row
    numbers agree with :func:`count_rows`); undecodable bytes become U+FFFD.

    Raises:
        LobsterFileError: the file cannot be opened.
    """
    try:
        return open(path, "r", encoding="utf-8", errors="replace", newline="\n")
    except OSError as exc:
        raise LobsterFileError(path, exc.strerror or str(exc)) from exc


def _beyond(side: int, price: int, edge: int) -> bool:
    """Whether ``price`` lies deeper in the book than ``edge`` on ``side``."""
    return price < edge if side == BUY else price > edge


class _FileFacts:
    """What one pass over the message file tells about order ids and prices.

    ``last_ref[id]``: the last row of type 1-4 naming ``id``. ``high_rows`` /
    ``high_ids``: the rows where the highest id seen so far grows, and that
    id (ascending), for :meth:`id_high`. ``sub_dollar``: some row of type 1-4
    has a price below $1 (then the book's tick is $0.0001, Rule 612).
    """

    __slots__ = ("last_ref", "high_rows", "high_ids", "sub_dollar")

    def __init__(self, f: IO[str]) -> None:
        last_ref: dict[int, int] = {}
        high_rows, high_ids = array("q"), array("q")
        high = 0
        sub_dollar = False
        penny_digits = len(str(PENNY_RULE_PRICE))
        for row, line in enumerate(f):
            cols = line.split(",", 5)
            if len(cols) == 6 and cols[1] in ("1", "2", "3", "4"):
                try:
                    order_id = int(cols[2])
                    if len(cols[4]) < penny_digits and 0 < int(cols[4]) < PENNY_RULE_PRICE:
                        sub_dollar = True
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
        self.sub_dollar = sub_dollar

    def id_high(self, row: int) -> int:
        """Highest LOBSTER id named in rows ``<= row`` (row 0's for ``row < 0``)."""
        k = bisect_right(self.high_rows, max(row, 0))
        return self.high_ids[k - 1] if k else 0


class _Sweep:
    """Type-4 rows of one match-mode sweep, waiting for their last row."""

    __slots__ = ("first_row", "last_row", "ts_ns", "direction", "rows", "prev_row", "last_line", "last_ob")

    def __init__(self, row: int, msg: Message, prev_row: Any, ob_line: Optional[str]) -> None:
        self.first_row = row
        self.last_row = row
        self.ts_ns = msg.ts_ns
        self.direction = msg.direction
        self.rows: list[Message] = [msg]
        self.prev_row = prev_row
        self.last_line = ob_line
        self.last_ob: Any = None


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
            ``resync_orders`` (synthetic orders placed to match the file),
            ``resync_reductions`` (levels reduced or removed to match it),
            ``corrected_rows`` (rows that needed either),
            ``window_corrections`` (corrections inside the previous row's
            range, unexplained by the messages), ``stale_levels_removed``
            (levels a type-1 row would have crossed), ``repairs``
            (match-mode repair commands), ``bad_rows``,
            ``bad_orderbook_rows``, ``hidden_executions`` (type 5),
            ``cross_trades`` (type 6), ``halts`` / ``quoting_resumed`` /
            ``trading_resumed`` (type 7 with price -1 / 0 / 1).
        window_correction_rows: ``[(row, "bid 5782100: engine 10 vs file
            9; ..."), ...]``, the first 1,000 rows with window corrections.

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
        self.window_correction_rows: list[tuple[int, str]] = []
        self._files: list[IO[str]] = []
        self._facts: Optional[_FileFacts] = None

    def _levels_from_orderbook(self) -> Optional[int]:
        assert self.orderbook_path is not None
        with open_rows(self.orderbook_path) as f:      # LobsterFileError if unreadable
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
        self.stats = dict.fromkeys(_STATS, 0)
        self.window_correction_rows = []
        msg_f = open_rows(self.messages_path)
        self._files.append(msg_f)
        ob_f = None
        try:
            if self.orderbook_path is not None and self.levels:
                ob_f = open_rows(self.orderbook_path)
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
        stats = self.stats
        match_mode = self.mode == "match"
        ob_iter: Iterator[str] = iter(ob_f) if ob_f is not None and levels else iter(())
        # The previous orderbook row: a line, or parsed (the seeded state).
        prev_row: Any = None
        prev_cols: Optional[list[str]] = None
        if start >= 0:
            for _ in islice(msg_f, start + 1):
                pass
            prev_line = None
            for prev_line in islice(ob_iter, start + 1):
                pass
            if prev_line is not None:
                if parse_orderbook_row(prev_line, levels) is not None:
                    prev_row, prev_cols = prev_line, prev_line.rstrip().split(",")
        row = start + 1
        line = msg_f.readline()
        ob_line = next(ob_iter, None)
        msg = parse_message(line) if line else None
        first_ts = msg.ts_ns if isinstance(msg, Message) else 0
        ob0 = parse_orderbook_row(ob_line, levels) if start < 0 and line and ob_line is not None else None
        if symbol not in matcher.books:
            assert self._facts is not None
            sub_dollar = self._facts.sub_dollar or ob0 is not None and any(
                p < PENNY_RULE_PRICE for side in ob0 for p, _ in side)
            yield AddSymbol.new(symbol, SUB_PENNY_TICK if sub_dollar else TICK_SIZE, first_ts, source=name,
                                source_pos=start if start >= 0 else None)
        if ob0 is not None:
            prev_row = yield from self._seed(matcher, msg, ob0, first_ts)
        sweep: Optional[_Sweep] = None
        agrees = self._agrees
        while line:
            if sweep is not None and isinstance(msg, Message) and msg.ts_ns == sweep.ts_ns and (
                    msg.type == 5 or msg.type == 4 and msg.direction == sweep.direction):
                if msg.type == 4:
                    sweep.rows.append(msg)
                    sweep.last_row = row
                    sweep.last_line = ob_line
                else:
                    stats["hidden_executions"] += 1
            else:
                if sweep is not None:
                    prev_row, prev_cols = yield from self._sweep(matcher, sweep)
                    sweep = None
                touched: Any = None
                if not isinstance(msg, Message):
                    raw = line.rstrip("\n").rstrip("\r")
                    if len(raw) > MAX_RAW_CHARS:
                        raw, msg = raw[:MAX_RAW_CHARS], f"{msg} (row cut to {MAX_RAW_CHARS} characters)"
                    stats["bad_rows"] += 1
                    yield BadInput.new(raw, msg, source=name, source_pos=row)
                elif msg.type == 4 and match_mode:
                    sweep = _Sweep(row, msg, prev_row, ob_line)
                elif msg.type <= 4:
                    touched = yield from self._event(matcher, row, msg)
                else:
                    touched = _UNCHANGED
                    if msg.type == 5:
                        stats["hidden_executions"] += 1
                    elif msg.type == 6:
                        stats["cross_trades"] += 1
                    elif msg.type == 7:
                        stats[_HALT_STATS.get(msg.price, "halts")] += 1
                if sweep is None:
                    if ob_line is None:
                        prev_row = prev_cols = None
                    else:
                        # The file's row against the book: the fast path of
                        # _check_row, inline (most rows end here).
                        cols = ob_line.rstrip().split(",")
                        if prev_cols is not None and touched is not None and len(cols) == len(prev_cols) and (
                                cols == prev_cols if touched is _UNCHANGED
                                else agrees(matcher, cols, prev_cols, touched)):
                            prev_row, prev_cols = ob_line, cols
                        else:
                            prev_row, prev_cols = yield from self._check_row(matcher, row, msg, ob_line, cols,
                                                                             prev_row)
            line = msg_f.readline()
            ob_line = next(ob_iter, None)
            row += 1
            msg = parse_message(line) if line else None
        if sweep is not None:
            yield from self._sweep(matcher, sweep)

    def _seed(self, matcher: Matcher, first: Any, ob0: tuple[Ladder, Ladder],
              ts_ns: int) -> Generator[Command, None, tuple[Ladder, Ladder]]:
        """Seed orders: orderbook row 0 with message 0's effect undone.
        Returns that state as ``(bids, asks)``, best first."""
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
        pre = (sorted(bids.items(), reverse=True), sorted(asks.items()))
        for side, levels in ((BUY, pre[0]), (SELL, pre[1])):
            for price, qty in levels:
                order_id = SEED_ID_BASE + n
                n += 1
                if book is None or order_id not in book.orders:
                    self.stats["seeded_orders"] += 1
                    yield PlaceOrder.new(self.symbol, order_id, side, price, qty, ts_ns=ts_ns,
                                         source=self.name, source_pos=None)
        return pre

    def _event(self, matcher: Matcher, row: int, msg: Message) -> Generator[Command, None, Any]:
        """Commands of one type 1-4 row (type 4 as in reconstruct mode).

        Returns ``(side, price)`` if the commands changed the book at that
        level only, else ``None`` (stale levels were cleared first)."""
        name, symbol, ts_ns = self.name, self.symbol, msg.ts_ns
        side = BUY if msg.direction == 1 else SELL
        price = msg.price
        book = matcher.books.get(symbol)
        if msg.type == 1:
            touched: Any = (side, price)
            if book is not None:
                # A new order never crosses the real book (LOBSTER: executions
                # are type 4 rows against the resting orders; only a
                # remainder is entered): what it would cross here is stale.
                if side == BUY:
                    crossed = list(book.ask_prices.irange(None, price)) if book.ask_prices and \
                        book.ask_prices[0] <= price else []
                else:
                    crossed = list(book.bid_prices.irange(price, None)) if book.bid_prices and \
                        book.bid_prices[-1] >= price else []
                if crossed:
                    touched = None
                    other = SELL if side == BUY else BUY
                    other_levels = book.ask_levels if side == BUY else book.bid_levels
                    for stale in crossed:
                        self.stats["stale_levels_removed"] += 1
                        yield from self._consume(book, other, stale, other_levels[stale].qty, ts_ns, row,
                                                 unseen=True)
            yield PlaceOrder.new(symbol, msg.order_id, side, price, msg.size, ts_ns=ts_ns,
                                 source=name, source_pos=row)
            return touched
        if book is None:
            return None
        order = book.orders.get(msg.order_id)
        if order is None:
            yield from self._consume(book, side, price, msg.size, ts_ns, row, unknown_id=msg.order_id)
            return (side, price)
        touched = (side, price) if order.price == price and order.side == side else None
        # Remove exactly msg.size lots (for type 3 too): if the engine's guess
        # of which order holds which volume was wrong, the level stays right.
        left = order.qty - msg.size
        if left <= 0:
            yield CancelOrder.new(symbol, msg.order_id, ts_ns=ts_ns, source=name, source_pos=row)
            if left < 0:
                yield from self._consume(book, side, order.price, -left, ts_ns, row)
        else:
            yield AmendOrder.new(symbol, msg.order_id, order.price, left, ts_ns=ts_ns,
                                 source=name, source_pos=row)
        return touched

    # ------------------------------------------------------ the file's truth
    def _check_row(self, matcher: Matcher, row: int, msg: Any, ob_line: str, cols: list[str],
                   prev_row: Any) -> Generator[Command, None, Any]:
        """After a row's own commands: make the book agree with the file's
        orderbook row ``ob_line`` (split: ``cols``). Returns ``(ob_line,
        cols)`` for the next row, or ``(None, None)`` if the row is malformed.

        Fast path (inline in :meth:`_run`), on the fields as strings: book
        and file agreed after the previous row, and the row's commands
        changed only the level ``touched``; if the file's row is the previous
        one with that level's size set to what the book now holds, the level
        inserted, or the level removed (and the level scrolling in at the edge
        is what the book holds there, with nothing between), they agree again
        (:meth:`_agrees`). Anything else comes here: parsed and
        :meth:`_reconcile`\\ d.
        """
        levels = self.levels or 0
        ob = parse_orderbook_row(ob_line, levels)
        if ob is None:
            self.stats["bad_orderbook_rows"] += 1
            return None, None
        ts_ns = msg.ts_ns if isinstance(msg, Message) else 0
        yield from self._reconcile(matcher, row, ts_ns, self._parsed(prev_row), ob)
        return ob_line, cols

    def _parsed(self, prev_row: Any) -> Optional[tuple[Ladder, Ladder]]:
        """A previous row (a line, already parsed, or ``None``) parsed."""
        if isinstance(prev_row, str):
            return parse_orderbook_row(prev_row, self.levels or 0)
        return prev_row

    def _agrees(self, matcher: Matcher, cols: list[str], prev_cols: list[str], touched: tuple[int, int]) -> bool:
        """Whether the row ``cols`` is what the previous row ``prev_cols``
        becomes when only the level ``touched`` changed to what the book now
        holds (see :meth:`_check_row`). False means "not sure", never wrong."""
        side, price = touched
        book = matcher.books.get(self.symbol)
        if book is None:
            return False
        book_levels = book.bid_levels if side == BUY else book.ask_levels
        level = book_levels.get(price)
        qty = level.qty if level is not None else 0
        x = 2 if side == BUY else 0            # column of the side's level-1 price
        # Most rows change one level's size: one field differs, the size
        # column right after the touched price.
        diffs = list(map(ne, cols, prev_cols))
        changed = diffs.count(True)
        if changed == 1:
            i = diffs.index(True)
            return (i & 3) == x + 1 and qty > 0 and cols[i - 1] == str(price) and cols[i] == str(qty)
        o = 2 - x                              # the other side's
        if cols[o::4] != prev_cols[o::4] or cols[o + 1::4] != prev_cols[o + 1::4]:
            return False
        new_p, new_q = cols[x::4], cols[x + 1::4]
        old_p, old_q = prev_cols[x::4], prev_cols[x + 1::4]
        last = len(new_p) - 1
        p_text = str(price)
        try:
            k = old_p.index(p_text)
        except ValueError:
            k = -1
        if k >= 0 and old_q[k] != "0":
            if qty:                                                    # a size change
                return (new_p == old_p and new_q[k] == str(qty)
                        and new_q[:k] == old_q[:k] and new_q[k + 1:] == old_q[k + 1:])
            # The level went: the rest moves up one place, and the last place
            # shows the level behind the old edge (or a dummy).
            if not (new_p[:k] == old_p[:k] and new_q[:k] == old_q[:k]
                    and new_p[k:last] == old_p[k + 1:] and new_q[k:last] == old_q[k + 1:]):
                return False
            edge_q = old_q[last]
            if edge_q == "0":                  # the side already showed all its levels
                return new_q[last] == "0"
            if new_q[last] == "0":     # the file now says there is no more
                return len(book_levels) == last
            try:
                edge, far, far_q = int(old_p[last]), int(new_p[last]), int(new_q[last])
            except ValueError:
                return False
            far_level = book_levels.get(far)
            if far_level is None or far_level.qty != far_q:
                return False
            prices = book.bid_prices if side == BUY else book.ask_prices
            between = prices.irange(far, edge, inclusive=(False, False)) if side == BUY else \
                prices.irange(edge, far, inclusive=(False, False))
            return next(iter(between), None) is None
        if not qty:
            return False
        if new_p == old_p and new_q == old_q:  # a level beyond the window
            try:
                edge = int(old_p[last])
            except ValueError:
                return False
            return old_q[last] != "0" and _beyond(side, price, edge)
        try:
            k = new_p.index(p_text)            # a new level inside the window
        except ValueError:
            return False
        return (new_q[k] == str(qty) and new_p[:k] == old_p[:k] and new_q[:k] == old_q[:k]
                and new_p[k + 1:] == old_p[k:last] and new_q[k + 1:] == old_q[k:last])

    def _reconcile(self, matcher: Matcher, row: int, ts_ns: int, prev_ob: Optional[tuple[Ladder, Ladder]],
                   ob: tuple[Ladder, Ladder]) -> Iterator[Command]:
        """Make the book's levels in the file's known range equal the file's row.

        The orderbook row is the truth for its range: per side, every price
        at or better than its L-th level, or the whole side if it shows fewer
        than L levels (the rest are dummies: the side has no more). There, a
        level the book holds in excess (orders that left while deeper than L,
        unseen by the message file, or a guess gone wrong) is reduced or
        removed (``unseen`` volume choice), then a level the book lacks gets
        one synthetic resting order for the difference. Reductions come first
        on both sides, so an addition never crosses.

        A correction at a price the previous row also covered (inside its
        range) is one the messages should have explained: it is counted in
        ``stats["window_corrections"]`` and listed in
        :attr:`window_correction_rows`; corrections beyond the previous
        range (levels scrolling into view, levels behind an emptied best)
        are expected.

        Source: LOBSTER_SampleFiles_ReadMe.txt (the orderbook file; dummy
        levels mean the side has no more); ``../shared/data/README.md``.
        Complexity: O(L + levels the book holds in the range).
        """
        book = matcher.books.get(self.symbol)
        if book is None:
            return
        levels = self.levels or 0
        stats = self.stats
        cuts: list[tuple[int, int, int]] = []
        adds: list[tuple[int, int, int]] = []
        inside: list[str] = []
        for side, want in ((BUY, ob[0]), (SELL, ob[1])):
            prev_side = None if prev_ob is None else (prev_ob[0] if side == BUY else prev_ob[1])
            if side == BUY:
                book_levels = book.bid_levels
                prices = book.bid_prices.irange(want[-1][0], None) if len(want) >= levels else book.bid_prices
            else:
                book_levels = book.ask_levels
                prices = book.ask_prices.irange(None, want[-1][0]) if len(want) >= levels else book.ask_prices
            wanted = dict(want)
            for price in list(prices):
                have = book_levels[price].qty
                if have > wanted.get(price, 0):
                    cuts.append((side, price, have - wanted.get(price, 0)))
                    if prev_side is not None and (len(prev_side) < levels or not _beyond(side, price, prev_side[-1][0])):
                        inside.append(f"{_SIDE_NAMES[side]} {price}: engine {have} vs file {wanted.get(price, 0)}")
            for price, qty in want:
                level = book_levels.get(price)
                have = level.qty if level is not None else 0
                if qty > have:
                    adds.append((side, price, qty - have))
                    if prev_side is not None and (len(prev_side) < levels or not _beyond(side, price, prev_side[-1][0])):
                        inside.append(f"{_SIDE_NAMES[side]} {price}: engine {have} vs file {qty}")
        if not cuts and not adds:
            return
        stats["corrected_rows"] += 1
        if inside:
            stats["window_corrections"] += len(inside)
            if len(self.window_correction_rows) < _MAX_LISTED:
                self.window_correction_rows.append((row, "; ".join(inside)))
        for side, price, qty in cuts:
            stats["resync_reductions"] += 1
            yield from self._consume(book, side, price, qty, ts_ns, row, unseen=True)
        n = 0
        for side, price, qty in adds:
            stats["resync_orders"] += 1
            yield PlaceOrder.new(self.symbol, RESYNC_ID_BASE + row * ROW_STRIDE + n, side, price, qty,
                                 ts_ns=ts_ns, source=self.name, source_pos=row)
            n += 1

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

    # ---------------------------------------------------------------- sweep
    def _sweep(self, matcher: Matcher, sweep: _Sweep) -> Generator[Command, None, tuple[Any, Any]]:
        """Match mode: one IOC taker for a sweep, then repairs, then the
        reconciliation with the sweep's last orderbook row. Returns that row
        parsed and split (``(None, None)`` if there is none)."""
        name, symbol, row, ts_ns = self.name, self.symbol, sweep.last_row, sweep.ts_ns
        line = sweep.last_line
        if line is not None and self.levels:
            sweep.last_ob = parse_orderbook_row(line, self.levels)
            if sweep.last_ob is None:
                self.stats["bad_orderbook_rows"] += 1
        book = matcher.books.get(symbol)
        if book is None:
            return None, None
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
        if sweep.last_ob is None:
            return None, None
        yield from self._reconcile(matcher, row, ts_ns, self._parsed(sweep.prev_row), sweep.last_ob)
        assert line is not None
        return line, line.rstrip().split(",")

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
