"""Bitstamp L3 order source (``live_orders`` capture as CSV) and a trade check.

Input: ``orders.csv`` or ``orders.csv.gz`` with the header
``id,timestamp,exchange_timestamp,price,volume,action,direction`` (any column
order), one row per ``order_created`` / ``order_changed`` / ``order_deleted``
message; ``direction`` is ``bid`` or ``ask``.

Units (measured on ``shared/data/bitstamp/orders.csv.gz``, 314,057 rows):
    price: every price is a whole number of USD (278,436 rows end in ``.0``
        with a non-zero last digit, the rest are multiples of 10..10^7; none
        has a fractional part; trades.csv alike): the price unit is **1 USD**
        and ``tick_size`` 1.
    qty: volumes have at most 8 decimals (81,910 rows use all 8, e.g.
        ``0.00030644``; 381 are written in exponent form, e.g. ``2.6e-06``,
        because the capture printed floats): **1 lot = 1e-8 BTC** (a satoshi).
        Largest: 138,800 BTC = 1.388e13 lots (``MAX_QTY`` is 1e15).
    Conversion is exact (integer arithmetic on the decimal digits); a value
    with more decimals than its unit allows (``78318.5`` USD, ``1e-9`` BTC) is
    a :class:`BadInput`, never rounded.
    ts_ns: ``exchange_timestamp`` is integer **milliseconds** since the epoch
        (13 digits; 1777689380521 = 2026-05-02T02:36:20.521Z, the capture's
        snapshot time); ``ts_ns = ms * 1_000_000``. The capture's own
        ``timestamp`` (ms, local receive time) is not used: it is the one that
        steps backwards, once, at row 6,512 where the live feed (383.201 s ->
        381.332 s) follows the snapshot rows, which carry the time the REST
        snapshot arrived; ``exchange_timestamp`` never steps back. Rows keep
        file order: file order is the sequence.

Mapping (what the data shows, and the command each row becomes):
    created: a GTC limit :class:`PlaceOrder`, ``post_only`` if the very next
        row deletes the same order with its whole volume. 102,585 creates are
        deleted so (same ms) and 100,518 of them cross the engine's book,
        e.g. bids at the best ask 78,319 from row 6,512 on, while that ask
        (2002347637526531) really trades only at row 6,843: Bitstamp let them
        trade nothing, as maker-or-cancel orders. As plain limits they make
        12,114 engine trades for 284 real ones; post-only, the engine rejects
        them (``POST_ONLY_WOULD_TAKE``) or rests them until the next row
        cancels them, as Bitstamp did. The one row of look-ahead is file
        content, so the commands stay reproducible. Exceptions:
        - an ask at price 0 is a **market sell** (5 live rows; they fill at
          once and are deleted at volume 0): market IOC.
        - a created row with volume 0 is an **instant buy sized in USD** (2
          rows, bids at 999,999,999 USD; e.g. 2002351232385027 bought
          6.377e-05 BTC = 5.00 USD): its size in BTC is not in the feed, so
          it is a ``BadInput`` and its fills reach the book through the
          maker's ``changed``/``deleted`` rows.
        - a bid at price 0 (22 old orders in the snapshot, never traded) can
          not rest in an engine whose prices start at 1 tick: ``BadInput``.
    changed: a **fill**, never a re-price: 264 of the 266 changed rows lower
        the volume (the other two are on the USD-sized buys), and their price
        is the fill price (the maker's), which differs from the order's own
        limit for takers (119 rows). So the row's price is not used. If the
        order rests in the engine with more than the new volume (Bitstamp
        filled it against something the engine did not match: 3 rows), an
        :class:`AmendOrder` lowers it at its resting price (priority kept);
        new volume 0 -> :class:`CancelOrder`. If the engine holds the same
        (147 rows: it made the fill itself) or less (26 rows: the feed reports
        a sweep fill by fill after the taker's ``created``, which the engine
        matched at once; raising the order again would refill it), or the
        order does not rest (90 rows): nothing.
    deleted: :class:`CancelOrder` if the order still rests in the engine,
        else nothing (the engine filled it, or never had it: 13 deletes name
        ids that were never created, and volume-0 deletes are fills).
    The first command is ``AddSymbol(symbol, tick_size=1)`` if the matcher has
    no book for the symbol yet.

Positions: ``source_pos`` is the 0-based data row (the header is not a row).
The ``AddSymbol`` comes from no row: it carries no source, so it does not move
the position, and a restart finds the book and does not repeat it. A row that
needs no command (see above) yields nothing; a restart re-reads it against
the same book and again yields nothing. A malformed row (wrong
column count, unparseable or negative number, unknown action or direction,
bad id) becomes a ``BadInput`` at its row and reading goes on.

Engine vs real trades (:func:`compare_trades` on the shared data; see its
docstring for the fields):
    284 real trades, 287 engine trades; **281 reproduced, all 281 exact**
    (same buy and sell ids, price and amount). The rest:

    - 2 real trades, not reproduced: the two USD-sized instant buys (not
      placed, above; trades 568697549 and 568701031, 5 USD each).
    - 1 real trade not reproduced and 6 engine-only trades: **stale snapshot
      orders**. Asks 2002347646152704 (0.2414848 BTC at 78,333) and
      2002347642003458 (0.03368756 at 78,374) come from the snapshot and have
      no row until the capture's closing synthetic deletes: Bitstamp no
      longer had them at those prices. The first sits ahead of
      2002348246122500 at 78,333, so the engine fills taker
      2002348254826497 (row 33,787) against it instead (real trade
      568694632 is lost, an engine-only one appears), and four bids at
      78,333..78,334 (rows 35,101 to 35,138) that on Bitstamp rested and
      were cancelled fill against it too; one bid at 78,376 (row 59,263)
      fills against the second. 6,294 snapshot orders are so
      untouched, 6 of them within 100 USD of the touch.
    - None from split fills, price differences, feed ordering (a sweep's
      fills are reported after the taker's ``created`` row, which the
      ``changed``/``deleted`` rules absorb) or orders never created.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
import weakref
from collections import Counter, defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator, Optional, Union

from engine.core import (AddSymbol, AmendOrder, BadInput, CancelOrder, Command, Kind, Matcher,
                         PlaceOrder, RejectReason)
from engine.core.types import MAX_ORDER_ID

__all__ = ["BitstampSource", "compare_trades", "parse_scaled", "PRICE_DECIMALS", "QTY_DECIMALS",
           "TICK_SIZE", "COLUMNS"]

PRICE_DECIMALS = 0
"""Decimals of the price unit: 0, i.e. prices are integer USD."""
QTY_DECIMALS = 8
"""Decimals of the qty unit: 8, i.e. qty is in lots of 1e-8 BTC."""
TICK_SIZE = 1
"""Smallest price step in price units (1 USD), measured on the data."""
COLUMNS = ("id", "timestamp", "exchange_timestamp", "price", "volume", "action", "direction")
"""Header of ``orders.csv``."""

_INT64_MAX = 2**63 - 1
_NS_PER_MS = 1_000_000
_BUY, _SELL = 1, 2
_MARKET, _IOC = 2, 2
_SIDES = {"bid": _BUY, "ask": _SELL}
_ACTIONS = ("created", "changed", "deleted")
_TRADE = Kind.TRADE.value
_REJECTED = Kind.REJECTED.value
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?")
_DIGITS = re.compile(r"[0-9]{1,19}")
_MAX_SCALE = 30
_RAW_FIELDS, _RAW_CHARS = 16, 256


def parse_scaled(text: str, decimals: int) -> int:
    """Convert a non-negative decimal string to an integer count of ``10**-decimals``.

    Exact: works on the decimal digits, never through a float.
    ``parse_scaled("78318.0", 0) == 78318``,
    ``parse_scaled("2.6e-06", 8) == 260``.

    Args:
        text: ``[+]digits[.digits][e[+-]ddd]``; ``-0`` counts as 0.
        decimals: decimals of the unit (0: whole units, 8: 1e-8).

    Returns:
        The value in units, ``>= 0``.

    Raises:
        ValueError: not such a number, negative, more decimals than the unit
            allows, or more than 10**30 units.
    """
    if len(text) > 64 or not _NUMBER.fullmatch(text):
        raise ValueError(f"not a decimal number: {text[:64]!r}")
    sign, digits, exponent = Decimal(text).as_tuple()
    coefficient = int("".join(map(str, digits)))
    if sign and coefficient:
        raise ValueError(f"negative: {text!r}")
    exponent += decimals
    if exponent >= 0:
        if coefficient and len(digits) + exponent > _MAX_SCALE:
            raise ValueError(f"out of range: {text!r}")
        return coefficient * 10 ** exponent
    units, rest = divmod(coefficient, 10 ** -exponent)
    if rest:
        raise ValueError(f"{text!r} has more than {decimals} decimals")
    return units


def _raw(row: list) -> list:
    """A row as logged in a ``BadInput``: at most 16 fields of 256 characters."""
    return [str(field)[:_RAW_CHARS] for field in row[:_RAW_FIELDS]]


def _open_text(path: Path) -> io.TextIOBase:
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", errors="replace", newline="")
    return open(path, "r", encoding="utf-8", errors="replace", newline="")


def _count_rows(path: Path) -> Optional[int]:
    """Data rows of the file (lines after the header), or ``None`` if unreadable."""
    try:
        opener = gzip.open if path.name.endswith(".gz") else open
        lines = 0
        last = b"\n"
        with opener(path, "rb") as f:
            while chunk := f.read(1 << 20):
                lines += chunk.count(b"\n")
                last = chunk[-1:]
        if last != b"\n":
            lines += 1
        return max(lines - 1, 0)
    except (OSError, EOFError):
        return None


class BitstampSource:
    """Commands from a Bitstamp ``live_orders`` CSV capture (see the module docstring).

    Args:
        orders_path: ``orders.csv`` or ``orders.csv.gz``.
        symbol: the engine's symbol for the pair.

    Attributes:
        name: ``"bitstamp:<symbol>"``, the key of its position.
        total: data rows in the file (a line count), or ``None`` if unreadable.

    Raises:
        ValueError: the header is unreadable or lacks one of :data:`COLUMNS`
            (a wrong file, not bad data).
        OSError: the file cannot be opened.
    """

    def __init__(self, orders_path: Union[str, Path], *, symbol: str = "BTCUSD") -> None:
        self.path = Path(orders_path)
        self.symbol = symbol
        self.name = f"bitstamp:{symbol}"
        try:
            with _open_text(self.path) as f:
                header = next(csv.reader(f), [])
        except (csv.Error, EOFError, gzip.BadGzipFile) as exc:
            raise ValueError(f"{self.path}: cannot read the header row: {exc}") from exc
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise ValueError(f"{self.path}: header {header[:16]!r} lacks columns {missing}; "
                             f"expected {','.join(COLUMNS)}")
        self._index = [header.index(c) for c in COLUMNS]
        self._width = len(header)
        self.total = _count_rows(self.path)
        self._iterators: weakref.WeakSet = weakref.WeakSet()

    def commands(self, matcher: Matcher, after: Optional[Any]) -> Iterator[Command]:
        """Yield the commands of the rows strictly after row ``after``.

        Driven one command at a time: each row's command is decided from the
        book as it is when it is requested (``matcher.books[symbol].orders``,
        read only), so the same book and rows give the same commands.

        Args:
            matcher: the live engine state; never changed here.
            after: the last row applied (``matcher.positions[self.name]``),
                ``None`` from the start.

        Yields:
            ``AddSymbol`` (no source) first if the book is missing, then per row one
            ``PlaceOrder``, ``AmendOrder``, ``CancelOrder`` or ``BadInput``,
            or nothing (see the module docstring). Every command carries
            ``source=self.name`` and ``source_pos`` = its row.
        """
        iterator = self._commands(matcher, after)
        self._iterators.add(iterator)
        return iterator

    def _commands(self, matcher: Matcher, after: Optional[Any]) -> Iterator[Command]:
        if self.symbol not in matcher.books:
            yield AddSymbol.new(self.symbol, TICK_SIZE)
        start = -1 if after is None else after
        f = _open_text(self.path)
        try:
            rows = self._rows(f)
            row_no, row = next(rows, (None, None))
            while row_no is not None:
                next_no, next_row = next(rows, (None, None))
                if row_no > start:
                    if isinstance(row, str):
                        yield BadInput.new(None, row, source=self.name, source_pos=row_no)
                    else:
                        cmd = self._command(matcher, row, row_no, next_row)
                        if cmd is not None:
                            yield cmd
                row_no, row = next_no, next_row
        finally:
            f.close()

    @staticmethod
    def _rows(f: io.TextIOBase) -> Iterator[tuple[int, Union[list, str]]]:
        """``(row, fields)`` per data row; ``fields`` is an error text for a row
        the csv module or the decompressor could not read (a truncated gzip
        stream ends the rows)."""
        reader = csv.reader(f)
        row_no = -1
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                row = f"unreadable row: {exc}"
            except (EOFError, OSError) as exc:
                if row_no >= 0:
                    yield row_no, f"unreadable file from this row on: {exc}"
                return
            if row_no >= 0:
                yield row_no, row
            row_no += 1

    def close(self) -> None:
        """Stop unfinished :meth:`commands` iterators and close their files."""
        for iterator in list(self._iterators):
            iterator.close()

    # ------------------------------------------------------------------ rows
    def _command(self, matcher: Matcher, row: list, row_no: int,
                 next_row: Optional[Union[list, str]]) -> Optional[Command]:
        """The command of one data row (``None``: nothing to do); ``next_row``
        is the row after it (``None`` at the end), to spot a created order
        that the next row deletes whole."""
        name = self.name
        if len(row) != self._width:
            return BadInput.new(_raw(row), f"expected {self._width} columns, got {len(row)}",
                                source=name, source_pos=row_no)
        id_text, _ts, ts_text, price_text, volume_text, action, direction = (
            row[i] for i in self._index)
        ts_ns = 0
        try:
            if not _DIGITS.fullmatch(ts_text) or int(ts_text) * _NS_PER_MS > _INT64_MAX:
                raise ValueError(f"exchange_timestamp {ts_text[:32]!r} is not integer ms "
                                 f"in 0..{_INT64_MAX // _NS_PER_MS}")
            ts_ns = int(ts_text) * _NS_PER_MS
            if not _DIGITS.fullmatch(id_text) or not 0 < int(id_text) <= MAX_ORDER_ID:
                raise ValueError(f"id {id_text[:32]!r} is not an integer in 1..2**63-1")
            order_id = int(id_text)
            side = _SIDES.get(direction)
            if side is None:
                raise ValueError(f"unknown direction {direction[:32]!r}")
            if action not in _ACTIONS:
                raise ValueError(f"unknown action {action[:32]!r}")
            try:
                price = parse_scaled(price_text, PRICE_DECIMALS)
            except ValueError as exc:
                raise ValueError(f"price (whole USD): {exc}") from None
            try:
                qty = parse_scaled(volume_text, QTY_DECIMALS)
            except ValueError as exc:
                raise ValueError(f"volume (1e-8 BTC): {exc}") from None
        except ValueError as exc:
            return BadInput.new(_raw(row), str(exc), ts_ns=ts_ns, source=name, source_pos=row_no)
        symbol = self.symbol
        if action == "created":
            if qty == 0:
                return BadInput.new(_raw(row), "created with volume 0: an instant order sized "
                                    "in USD, its BTC size is not in the feed",
                                    ts_ns=ts_ns, source=name, source_pos=row_no)
            if price == 0:
                if side == _BUY:
                    return BadInput.new(_raw(row), "bid at price 0 cannot rest (prices start "
                                        "at 1 tick)", ts_ns=ts_ns, source=name,
                                        source_pos=row_no)
                return PlaceOrder.new(symbol, order_id, side, 0, qty, order_type=_MARKET,
                                      tif=_IOC, ts_ns=ts_ns, source=name, source_pos=row_no)
            return PlaceOrder.new(symbol, order_id, side, price, qty,
                                  post_only=self._deleted_whole(next_row, id_text, qty),
                                  ts_ns=ts_ns, source=name, source_pos=row_no)
        book = matcher.books.get(symbol)
        order = book.orders.get(order_id) if book is not None else None
        if order is None:
            return None
        if action == "deleted" or qty == 0:
            return CancelOrder.new(symbol, order_id, ts_ns=ts_ns, source=name,
                                   source_pos=row_no)
        if qty < order.qty:
            return AmendOrder.new(symbol, order_id, order.price, qty, ts_ns=ts_ns, source=name,
                                  source_pos=row_no)
        return None

    def _deleted_whole(self, next_row: Optional[Union[list, str]], id_text: str, qty: int) -> bool:
        """Whether ``next_row`` deletes order ``id_text`` with all its ``qty`` lots
        still open: Bitstamp let it trade nothing."""
        if not isinstance(next_row, list) or len(next_row) != self._width:
            return False
        id_i, _, _, _, volume_i, action_i, _ = self._index
        if next_row[id_i] != id_text or next_row[action_i] != "deleted":
            return False
        try:
            return parse_scaled(next_row[volume_i], QTY_DECIMALS) == qty
        except ValueError:
            return False


# ---------------------------------------------------------------- comparison
_STALE = "maker is a stale snapshot order"
_EXAMPLES = 3


class _Lives:
    """Per order id, where its rows are: ``first`` (row, action), ``count`` and
    ``last`` row; plus the extent of the capture's synthetic snapshot rows (a
    leading run of ``created`` rows with row 0's timestamps) and closing
    deletes (a trailing run of ``deleted`` rows with the last row's)."""

    def __init__(self, source: BitstampSource) -> None:
        self.first: dict[int, tuple[int, str]] = {}
        self.count: Counter = Counter()
        self.last: dict[int, int] = {}
        id_i, ts_i, exch_i, _, _, action_i, _ = source._index
        self.snapshot_end = self.closing_start = 0
        head: Optional[tuple] = None
        tail: Optional[tuple] = None
        with _open_text(source.path) as f:
            for row_no, row in source._rows(f):
                if isinstance(row, str) or len(row) != source._width:
                    continue
                stamp = (row[ts_i], row[exch_i])
                action = row[action_i]
                if head is None:
                    head = stamp
                if self.snapshot_end == row_no and stamp == head and action == "created":
                    self.snapshot_end = row_no + 1
                if action != "deleted":
                    tail, self.closing_start = None, row_no + 1
                elif stamp != tail:
                    tail, self.closing_start = stamp, row_no
                if not _DIGITS.fullmatch(row[id_i]):
                    continue
                order_id = int(row[id_i])
                self.first.setdefault(order_id, (row_no, action))
                self.count[order_id] += 1
                self.last[order_id] = row_no

    def stale(self, order_id: int) -> bool:
        """Created by the snapshot, then untouched until the closing deletes."""
        first = self.first.get(order_id)
        return (first is not None and first[0] < self.snapshot_end and self.count[order_id] == 2
                and self.last[order_id] >= self.closing_start)

    def created(self, order_id: int) -> bool:
        first = self.first.get(order_id)
        return first is not None and first[1] == "created"


def _real_trades(trades_path: Path) -> tuple[list[dict], int]:
    """Rows of ``trades.csv`` as dicts with int ``price``/``qty``/ids; and the
    number of rows that could not be read."""
    out, unreadable = [], 0
    with _open_text(trades_path) as f:
        for rec in csv.DictReader(f):
            try:
                out.append({
                    "trade_id": rec["trade_id"],
                    "price": parse_scaled(rec["price"], PRICE_DECIMALS),
                    "qty": parse_scaled(rec["amount"], QTY_DECIMALS),
                    "buy_order_id": int(rec["buy_order_id"]),
                    "sell_order_id": int(rec["sell_order_id"]),
                    "taker_side": {"buy": _BUY, "sell": _SELL}[rec["side"]],
                })
            except (KeyError, TypeError, ValueError):
                unreadable += 1
    return out, unreadable


def _example(examples: dict, reason: str, item: dict) -> None:
    bucket = examples.setdefault(reason, [])
    if len(bucket) < _EXAMPLES:
        bucket.append(item)


def compare_trades(orders_path: Union[str, Path], trades_path: Union[str, Path], *,
                   symbol: str = "BTCUSD", matcher: Optional[Matcher] = None) -> dict:
    """Replay a Bitstamp capture through the engine and compare its trades with the real ones.

    Runs :class:`BitstampSource` into ``matcher`` (commands applied with
    ``seq = matcher.last_seq + 1``), then pairs each real trade with an
    engine trade of the same ``(buy_order_id, sell_order_id)`` (engine side:
    the taker is the buyer if ``taker_side`` is 1), same price and qty first.

    Args:
        orders_path: ``orders.csv[.gz]`` of the capture.
        trades_path: its ``trades.csv``
            (``trade_id,timestamp,exchange_timestamp,price,amount,buy_order_id,sell_order_id,side``;
            ``side`` is the taker's, ``buy`` or ``sell``).
        symbol: the engine symbol.
        matcher: the engine to run into (default: a new in-memory
            :class:`Matcher`); it is left holding the final state.

    Returns:
        ``{"engine_trades", "real_trades", "reproduced" (same buy and sell
        ids), "reproduced_exact" (and same price and qty): int,
        "not_reproduced": {reason: count} (real trades without an engine
        twin), "engine_only": {reason: count}, "inexact": {reason: count},
        "examples": {reason: [dict, ...]} (at most 3 each),
        "commands": {kind name: count}, "post_only_placed" (creates the
        next row deletes whole), "rejects": {reason name: count},
        "unreadable_trade_rows", "resting_orders", "stale_snapshot_orders":
        int}``. Prices in USD, qty in lots of 1e-8 BTC. ``stale`` orders
        are created by the snapshot and untouched until the capture's
        closing synthetic deletes.

    Raises:
        OSError: a file cannot be read.
        ValueError: the orders file has a wrong header.
    """
    source = BitstampSource(orders_path, symbol=symbol)
    matcher = Matcher() if matcher is None else matcher
    engine: list[tuple[Any, int]] = []
    commands: Counter = Counter()
    rejects: Counter = Counter()
    unplaced: dict[int, str] = {}
    post_only = 0
    id_i, action_i = source._index[0], source._index[5]
    try:
        for cmd in source.commands(matcher, None):
            commands[Kind(cmd[0]).name] += 1
            if cmd[0] == Kind.PLACE.value and cmd.post_only:
                post_only += 1
            if cmd[0] == Kind.BAD_INPUT.value and isinstance(cmd.raw, list) \
                    and len(cmd.raw) > max(id_i, action_i) and cmd.raw[action_i] == "created" \
                    and _DIGITS.fullmatch(cmd.raw[id_i]):
                unplaced[int(cmd.raw[id_i])] = cmd.error
            for event in matcher.apply(matcher.last_seq + 1, cmd):
                if event[0] == _TRADE:
                    engine.append((event, cmd[-1]))
                elif event[0] == _REJECTED:
                    rejects[RejectReason(event.reason).name] += 1
    finally:
        source.close()
    lives = _Lives(source)
    real, unreadable = _real_trades(Path(trades_path))

    by_pair: dict[tuple[int, int], list] = defaultdict(list)
    by_taker: dict[int, list] = defaultdict(list)
    for trade, row in engine:
        pair = ((trade.taker_order_id, trade.maker_order_id) if trade.taker_side == _BUY
                else (trade.maker_order_id, trade.taker_order_id))
        by_pair[pair].append((trade, row))
        by_taker[trade.taker_order_id].append(trade)
    used: set[int] = set()
    reproduced = exact = 0
    not_reproduced: Counter = Counter()
    inexact: Counter = Counter()
    examples: dict[str, list] = {}
    unmatched = []
    for t in real:
        twins = [e for e in by_pair.get((t["buy_order_id"], t["sell_order_id"]), ())
                 if e[0].match_id not in used]
        same = [e for e in twins if (e[0].price, e[0].qty) == (t["price"], t["qty"])]
        if same or twins:
            used.add((same or twins)[0][0].match_id)
            reproduced += 1
            exact += bool(same)
        else:
            unmatched.append(t)
    for t in real:
        twins = by_pair.get((t["buy_order_id"], t["sell_order_id"]), ())
        if twins and not any((e[0].price, e[0].qty) == (t["price"], t["qty"]) for e in twins):
            trade = twins[0][0]
            reason = "price differs" if trade.price != t["price"] else "fills split differently"
            inexact[reason] += 1
            _example(examples, reason, {**t, "engine": [tuple(e[0]) for e in twins]})
    for t in unmatched:
        buy, sell = t["buy_order_id"], t["sell_order_id"]
        taker = buy if t["taker_side"] == _BUY else sell
        engine_makers = [e.maker_order_id for e in by_taker.get(taker, ())]
        if buy in unplaced or sell in unplaced:
            reason = "order not placed: " + unplaced.get(buy, unplaced.get(sell, ""))
        elif not (lives.created(buy) and lives.created(sell)):
            reason = "order never created in the capture"
        elif (buy, sell) in by_pair:
            reason = "fills split differently"
        elif any(lives.stale(m) for m in engine_makers):
            reason = "engine filled the taker against a stale snapshot order"
        elif engine_makers:
            reason = "engine filled the taker against other orders"
        else:
            reason = "taker did not trade in the engine"
        not_reproduced[reason] += 1
        _example(examples, reason, {**t, "engine_makers": engine_makers})
    engine_only: Counter = Counter()
    for trade, row in engine:
        if trade.match_id in used:
            continue
        if lives.stale(trade.maker_order_id):
            reason = _STALE
        elif lives.created(trade.maker_order_id):
            reason = "no such trade on Bitstamp"
        else:
            reason = "maker never created in the capture"
        engine_only[reason] += 1
        maker_first = lives.first.get(trade.maker_order_id, (None, None))
        _example(examples, reason, {"row": row, "taker_order_id": trade.taker_order_id,
                                    "maker_order_id": trade.maker_order_id,
                                    "taker_side": trade.taker_side, "price": trade.price,
                                    "qty": trade.qty, "maker_first_row": maker_first[0]})
    book = matcher.books.get(symbol)
    return {
        "engine_trades": len(engine),
        "real_trades": len(real),
        "reproduced": reproduced,
        "reproduced_exact": exact,
        "not_reproduced": dict(not_reproduced),
        "engine_only": dict(engine_only),
        "inexact": dict(inexact),
        "examples": examples,
        "commands": dict(commands),
        "post_only_placed": post_only,
        "rejects": dict(rejects),
        "unreadable_trade_rows": unreadable,
        "resting_orders": len(book.orders) if book is not None else 0,
        "stale_snapshot_orders": sum(1 for i in lives.first if lives.stale(i)),
    }
