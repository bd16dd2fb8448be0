"""Bitstamp L3 order source (an ob-analytics ``live_orders`` CSV capture) and a trade check.

Layouts (detected from the header; any column order; ``layout=`` forces one):
    ``"pypi"``: ``id,timestamp,exchange_timestamp,price,volume,action,direction``,
        the ob-analytics 0.1.0 PyPI port (``shared/data/bitstamp/``, 2026).
        ``timestamp``: local receive time, ms; ``exchange_timestamp``: the
        event's time on Bitstamp, ms; ``price``: USD decimals; ``volume``:
        the order's remaining size, BTC decimals.
    ``"r"``: ``id,timestamp,exchange.timestamp,price,volume,action,direction``,
        the R package's ``inst/extdata/orders.csv.xz`` (2015-05-01). Source:
        its ``R/data.R`` and ``inst/extdata/parse.sh``: ``timestamp``: the
        time the event was received locally, ms; ``exchange.timestamp``: the
        time the ORDER was first created on the exchange (the message's
        ``datetime`` second x 1000, the same on every row of an order);
        ``price``: USD with cents; ``volume``: remaining size in integer
        satoshi (1e-8 BTC).
    Both: ``id`` Bitstamp's order id; ``action`` ``created`` / ``changed`` /
    ``deleted``; ``direction`` ``bid`` or ``ask``. Rows keep file order: file
    order is the sequence.
    Event time (``ts_ns = ms * 1_000_000``): ``"pypi"`` ``exchange_timestamp``
    (it never steps back; ``timestamp`` steps back once, at row 6,512, where
    the live feed follows the snapshot rows stamped with the REST snapshot's
    arrival); ``"r"`` ``timestamp``, because ``exchange.timestamp`` is the
    order's creation time, not the event's (a fill an hour later carries the
    same value); measured on the 2015 file: ``timestamp`` never steps back.

Compression: plain, gzip, xz or bzip2, told by the first bytes (not the
name), read with the stdlib (:func:`open_text`).

Units (:class:`BitstampSource` attributes ``price_decimals``,
``size_decimals``, ``tick_size``, ``price_unit``, ``lot``):
    Unless given, a first pass over the file takes the most decimals any
    row's price and any row's volume really uses (trailing zeros do not
    count, ``78318.0`` has 0; exponent forms like ``2.6e-06`` count exactly,
    via Decimal: 7). price unit = ``10**-price_decimals`` USD; lot =
    ``10**-size_decimals`` of the file's volume unit (BTC for ``"pypi"``,
    satoshi for ``"r"``). ``tick_size`` = gcd of every resting price in price
    units (created rows with volume > 0 and changed rows; price 0 does not
    count), carried by ``AddSymbol``. Conversion is exact (integer
    arithmetic on the decimal digits, :func:`parse_scaled`); with explicit
    decimals a value with more decimals than its unit allows is a
    :class:`BadInput` naming the unit, never rounded. A value the measured
    units put beyond the engine's range (``MAX_PRICE``, ``MAX_QTY``) is a
    ``ValueError`` at construction (pass explicit decimals).
    Measured: 2026 sample: price 1 USD (278,436 rows end in ``.0``, none has
    a fraction), lot 1e-8 BTC (81,910 rows use all 8 decimals, 381 in
    exponent form), tick 1; largest volume 138,800 BTC = 1.388e13 lots. 2015
    R file: price 1e-2 USD (45,638 of 50,414 rows use 2 decimals), lot 1
    satoshi (integers), tick 1 cent.

Mapping (what the data shows, and the command each row becomes):
    created: a GTC limit :class:`PlaceOrder`, ``post_only`` if the very next
        row deletes the same order with its whole volume. 2026: 102,585
        creates are deleted so (same ms) and 100,518 of them cross the
        engine's book, e.g. bids at the best ask 78,319 from row 6,512 on,
        while that ask (2002347637526531) really trades only at row 6,843:
        Bitstamp let them trade nothing, as maker-or-cancel orders. As plain
        limits they make 12,114 engine trades for 284 real ones; post-only,
        the engine rejects them (``POST_ONLY_WOULD_TAKE``) or rests them
        until the next row cancels them, as Bitstamp did. 2015: 3,252 such
        creates, 2 of them cross. The one row of look-ahead is file content,
        so the commands stay reproducible. Exceptions:
        - an ask at price 0 is a **market sell** (2026: 5 live rows; they
          fill at once and are deleted at volume 0): market IOC.
        - a created row with volume 0 is an **instant buy sized in USD**
          (2026: 2 rows, bids at 999,999,999 USD; e.g. 2002351232385027
          bought 6.377e-05 BTC = 5.00 USD): its size in BTC is not in the
          feed, so it is a ``BadInput`` and its fills reach the book through
          the maker's ``changed``/``deleted`` rows.
        - a bid at price 0 (2026: 22 old orders in the snapshot, never
          traded) can not rest in an engine whose prices start at 1 tick:
          ``BadInput``.
    changed: a **fill** or, in the 2015 file, a **walk**:
        - 2026: 264 of the 266 changed rows lower the volume (the other two
          are on the USD-sized buys); their price is the fill price (the
          maker's), which for takers differs from the order's own limit (119
          rows) and is never more aggressive than it.
        - 2015 (602 changed rows, 4 on ids never created): 562 lower the
          volume at the order's price; 21 keep the volume and move the price
          to the next level on the other side, more aggressive, and 15 move
          it and lower the volume: a taker (often a market order) walking
          the book one level at a time. E.g. ask 65596235 is created at
          235.22 (the best bid, where it fills first), then changed to
          234.69, 234.61, 234.57, 234.55 with fills between (trades 8111101
          to 8111103). 1 changed row follows the order's own ``deleted``
          row (feed reordering).
        So: if the order rests in the engine and the row's price is more
        aggressive than its resting price (a bid higher, an ask lower) ->
        :class:`AmendOrder` to that price with ``min(volume, leaves)`` (it
        loses priority and trades what it crosses: 2015: 36 such amends, 32
        of them trade; without this rule 511 instead of 540 trades are
        reproduced). Else if it rests with more than the new volume
        (Bitstamp filled it against something the engine did not match;
        2026: 3 rows, 2015: 45) -> :class:`AmendOrder` lowering it at its
        resting price (priority kept); new volume 0 -> :class:`CancelOrder`.
        If the engine holds the same (it made the fill itself) or less (the
        feed reports a sweep fill by fill after the taker's ``created``,
        which the engine matched at once; raising the order again would
        refill it; 2026: 147 and 26 rows), or the order does not rest:
        nothing.
    deleted: :class:`CancelOrder` if the order still rests in the engine,
        else nothing (the engine filled it, or never had it: 2026: 13
        deletes name ids never created; 2015: 187, orders older than the
        capture, which starts with an empty book; volume-0 deletes are
        fills: 2015: 558).
    2015 volumes are 1 satoshi low on 4,066 of 50,414 rows (measured
    against the amounts in the raw log): ``parse.sh`` computed them as
    ``printf("%.f", amount * 10^8)`` in floating point. Fills then differ
    from the real trade by 1 satoshi; :func:`compare_trades` allows that
    (``qty_tolerance``).
    The first command is ``AddSymbol(symbol, tick_size)`` if the matcher has
    no book for the symbol yet.

Positions: ``source_pos`` is the 0-based data row (the header is not a row).
The ``AddSymbol`` comes from no row: it carries no source, so it does not move
the position, and a restart finds the book and does not repeat it. A row that
needs no command (see above) yields nothing; a restart re-reads it against
the same book and again yields nothing. A malformed row (wrong
column count, unparseable or negative number, unknown action or direction,
bad id, too many decimals for explicit units) becomes a ``BadInput`` at its
row and reading goes on.

Engine vs real trades (:func:`compare_trades`; see its docstring for the
fields):
    2026 sample against ``trades.csv`` (paired by order ids): 284 real
    trades, 287 engine trades; **281 reproduced, all 281 exact** (same buy
    and sell ids, price and amount). The rest:

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

    2015 R file against the raw log ``2015-05-01.log.xz`` (575 trade
    messages with no order ids: paired by price and qty within 2 s, qty
    within 1 satoshi; the same 540 for windows of 1 to 20 s): 49,128
    commands (24,894 places, 24,152 cancels, 81 amends, 1 AddSymbol), 2
    rejects (``POST_ONLY_WOULD_TAKE``), 547 engine trades; **540
    reproduced, 506 exact**, 34 within 1 satoshi (above). Not reproduced:
    27 where a row at that price in the window is on an order the capture
    never created (the book starts empty: makers placed before the
    capture), 6 where the engine traded another qty at that price (a maker
    partly filled first by an unseen order), 2 with no engine trade at that
    price; 7 engine-only trades. 184 orders still rest at the end (the file
    has no closing deletes).
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import lzma
import math
import re
import weakref
from bisect import bisect_left
from collections import Counter, defaultdict
from dataclasses import dataclass
from decimal import Decimal
from operator import itemgetter
from pathlib import Path
from typing import Any, Iterator, Optional, Union

from engine.core import (AddSymbol, AmendOrder, BadInput, CancelOrder, Command, Kind, Matcher,
                         PlaceOrder, RejectReason)
from engine.core.types import MAX_ORDER_ID, MAX_PRICE, MAX_QTY

__all__ = ["BitstampSource", "Layout", "LAYOUTS", "COLUMNS", "R_COLUMNS", "compare_trades",
           "replay_capture", "load_trades", "parse_scaled", "decimals_of", "open_text",
           "compression_of"]

COLUMNS = ("id", "timestamp", "exchange_timestamp", "price", "volume", "action", "direction")
"""Header of the PyPI port's ``orders.csv`` (layout ``"pypi"``)."""
R_COLUMNS = ("id", "timestamp", "exchange.timestamp", "price", "volume", "action", "direction")
"""Header of the R package's ``inst/extdata/orders.csv.xz`` (layout ``"r"``)."""


@dataclass(frozen=True)
class Layout:
    """One ob-analytics CSV layout (see the module docstring, Layouts).

    Attributes:
        name: ``"r"`` or ``"pypi"``.
        columns: the header's names for id, local receive time, exchange
            time, price, volume, action, direction (in that order here; any
            order in the file).
        time_column: the column that is the event's time (integer ms).
        volume_unit: what one unit of the file's volume number is.
        volume_exponent: that unit is ``10**-volume_exponent`` BTC (8 for
            satoshi, 0 for BTC): trade amounts, always in BTC, are converted
            with it.
    """

    name: str
    columns: tuple
    time_column: str
    volume_unit: str
    volume_exponent: int


LAYOUTS = {
    "pypi": Layout("pypi", COLUMNS, "exchange_timestamp", "BTC", 0),
    "r": Layout("r", R_COLUMNS, "timestamp", "satoshi", 8),
}
"""The layouts :class:`BitstampSource` reads, by name."""

_INT64_MAX = 2**63 - 1
_NS_PER_MS = 1_000_000
_BUY, _SELL = 1, 2
_MARKET, _IOC = 2, 2
_SIDES = {"bid": _BUY, "ask": _SELL}
_ACTIONS = ("created", "changed", "deleted")
_TRADE = Kind.TRADE.value
_REJECTED = Kind.REJECTED.value
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?")
_ZERO = re.compile(r"[+-]?0*\.?0*(?:[eE][+-]?[0-9]{1,3})?")
_DIGITS = re.compile(r"[0-9]{1,19}")


def _is_digits(text: str) -> bool:
    """``_DIGITS.fullmatch(text)``, without the regex: 1 to 19 ASCII digits."""
    return 0 < len(text) <= 19 and text.isascii() and text.isdigit()
_MAX_SCALE = 30
_RAW_FIELDS, _RAW_CHARS = 16, 256
_MAGIC = ((b"\x1f\x8b", "gz"), (b"\xfd7zXZ\x00", "xz"), (b"BZh", "bz2"))
_OPENERS = {"gz": gzip.open, "xz": lzma.open, "bz2": bz2.open}
_READ_ERRORS = (EOFError, OSError, lzma.LZMAError)


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
    # Fast path, the form nearly every row has: ASCII digits with at most one
    # point, no sign or exponent (the same result as the exact path below).
    whole, dot, frac = text.partition(".")
    if (whole.isdigit() or not whole and frac) and (not frac or frac.isdigit()) and text.isascii() \
            and len(text) <= 64:
        frac = frac.rstrip("0")
        if len(frac) <= decimals:
            value = int((whole or "0") + frac.ljust(decimals, "0")) if decimals or whole else 0
            if value < 10 ** _MAX_SCALE or not value:
                return value
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


def decimals_of(text: str) -> Optional[int]:
    """Decimals a number really uses: trailing zeros do not count.

    ``decimals_of("78318.0") == 0``, ``decimals_of("236.47") == 2``,
    ``decimals_of("2.6e-06") == 7`` (exactly, via :class:`~decimal.Decimal`),
    ``decimals_of("1.5e3") == 0``.

    Returns:
        ``>= 0``, or ``None`` if ``text`` is not a decimal number
        (see :func:`parse_scaled`).
    """
    whole, dot, frac = text.partition(".")
    if (whole.isdigit() or not whole and frac) and (not frac or frac.isdigit()) and text.isascii() \
            and len(text) <= 64:
        return len(frac.rstrip("0"))       # the plain form, as the exact path below would say
    if len(text) > 64 or not _NUMBER.fullmatch(text):
        return None
    if "e" in text or "E" in text:
        _sign, digits, exponent = Decimal(text).as_tuple()
        trailing = len(digits) - len("".join(map(str, digits)).rstrip("0"))
        return max(0, -(exponent + trailing)) if trailing < len(digits) else 0
    return len(text.partition(".")[2].rstrip("0"))


def _unit_text(decimals: int, unit: str) -> str:
    """``"1 USD"``, ``"1e-2 USD"``: the size of ``10**-decimals`` ``unit``."""
    return f"1 {unit}" if decimals == 0 else f"1e-{decimals} {unit}"


def _raw(row: list) -> list:
    """A row as logged in a ``BadInput``: at most 16 fields of 256 characters."""
    return [str(field)[:_RAW_CHARS] for field in row[:_RAW_FIELDS]]


def compression_of(path: Union[str, Path]) -> str:
    """``"gz"``, ``"xz"``, ``"bz2"`` or ``"none"``, from the file's first bytes
    (gzip ``1f 8b``, xz ``fd 37 7a 58 5a 00``, bzip2 ``BZh``), whatever its name.

    Raises:
        OSError: the file cannot be opened.
    """
    with open(path, "rb") as f:
        head = f.read(6)
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    return "none"


def open_text(path: Union[str, Path]) -> io.TextIOBase:
    """The file as UTF-8 text (undecodable bytes replaced), decompressed per
    :func:`compression_of` with the stdlib (gzip, lzma, bz2).

    Raises:
        OSError: the file cannot be opened.
    """
    opener = _OPENERS.get(compression_of(path))
    if opener is None:
        return open(path, "r", encoding="utf-8", errors="replace", newline="")
    return opener(path, "rt", encoding="utf-8", errors="replace", newline="")


def _rows(f: io.TextIOBase) -> Iterator[tuple[int, Union[list, str]]]:
    """``(row, fields)`` per data row (row 0 is the line after the header);
    ``fields`` is an error text for a row the csv module or the decompressor
    could not read (a truncated stream ends the rows)."""
    reader = csv.reader(f)
    row_no = -1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            row = f"unreadable row: {exc}"
        except _READ_ERRORS as exc:
            if row_no >= 0:
                yield row_no, f"unreadable file from this row on: {exc}"
            return
        if row_no >= 0:
            yield row_no, row
        row_no += 1


class BitstampSource:
    """Commands from a Bitstamp ``live_orders`` CSV capture (see the module docstring).

    Args:
        path: the orders CSV, plain or gzip/xz/bzip2-compressed (detected from
            its first bytes).
        symbol: the engine's symbol for the pair.
        price_decimals: the price unit is ``10**-price_decimals`` USD. ``None``:
            the most decimals any row's price uses (first pass over the file).
        size_decimals: one lot is ``10**-size_decimals`` of the file's volume
            unit (BTC in ``"pypi"``, satoshi in ``"r"``). ``None``: the most
            decimals any row's volume uses.
        layout: ``"r"``, ``"pypi"`` or ``None`` (from the header).

    Attributes:
        name: ``"bitstamp:<symbol>"``, the key of its position.
        layout: the :class:`Layout` in force.
        price_decimals, size_decimals: the units in force (ints).
        tick_size: gcd of every resting price in price units (created rows
            with volume > 0 and changed rows; price 0 does not count); 1 if
            none. ``AddSymbol`` carries it.
        price_unit, lot: the units as text, e.g. ``"1e-2 USD"``, ``"1 satoshi"``.
        lot_exponent: one lot is ``10**-lot_exponent`` BTC.
        evidence: ``{"price": (row, text), "volume": (row, text)}``, the first
            row using the most decimals (``None`` if no row has any decimals).
        total: data rows in the file (``None`` if unreadable).

    Raises:
        ValueError: the header is unreadable or matches no layout (the
            message names its columns and the expected ones); ``layout`` is
            unknown; or a value in the measured units exceeds the engine's
            range (``MAX_PRICE`` 1e12, ``MAX_QTY`` 1e15; pass explicit
            decimals).
        OSError: the file cannot be opened.
    """

    def __init__(self, path: Union[str, Path], *, symbol: str = "BTCUSD",
                 price_decimals: Optional[int] = None, size_decimals: Optional[int] = None,
                 layout: Optional[str] = None) -> None:
        self.path = Path(path)
        self.symbol = symbol
        self.name = f"bitstamp:{symbol}"
        try:
            with open_text(self.path) as f:
                header = next(csv.reader(f), [])
        except (csv.Error, *_READ_ERRORS) as exc:
            raise ValueError(f"{self.path}: cannot read the header row: {exc}") from exc
        self.layout = self._layout_of(header, layout)
        self._index = [header.index(c) for c in self.layout.columns]
        self._pick = itemgetter(*self._index)
        self._time_i = header.index(self.layout.time_column)
        self._width = len(header)
        for label, value in (("price_decimals", price_decimals), ("size_decimals", size_decimals)):
            if value is not None and not (isinstance(value, int) and 0 <= value <= 18):
                raise ValueError(f"{label} must be an integer in 0..18, got {value!r}")
        self._scan(price_decimals, size_decimals)
        self.price_unit = _unit_text(self.price_decimals, "USD")
        self.lot = _unit_text(self.size_decimals, self.layout.volume_unit)
        self.lot_exponent = self.size_decimals + self.layout.volume_exponent
        self._iterators: weakref.WeakSet = weakref.WeakSet()

    def _layout_of(self, header: list, layout: Optional[str]) -> Layout:
        if layout is not None and layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r} (known: {', '.join(LAYOUTS)})")
        candidates = [LAYOUTS[layout]] if layout is not None else list(LAYOUTS.values())
        for candidate in candidates:
            if all(c in header for c in candidate.columns):
                return candidate
        expected = "; or ".join(",".join(c.columns) + f" ({c.name})" for c in candidates)
        raise ValueError(f"{self.path}: header {header[:16]!r} matches no Bitstamp layout; "
                         f"expected {expected} (any column order)")

    def _scan(self, price_decimals: Optional[int], size_decimals: Optional[int]) -> None:
        """First pass: row count, the decimals used, the tick, the range check."""
        _id_i, _, _, price_i, volume_i, action_i, _ = self._index
        most = {"price": (-1, None, None), "volume": (-1, None, None)}   # decimals, row, text
        prices: set[str] = set()
        top_volume, top_volume_row = Decimal(0), None
        top_rough = 0.0
        rows = 0
        with open_text(self.path) as f:
            for row_no, row in _rows(f):
                rows = row_no + 1
                if isinstance(row, str) or len(row) != self._width:
                    continue
                price_text, volume_text = row[price_i], row[volume_i]
                dp, dv = decimals_of(price_text), decimals_of(volume_text)
                if dp is not None and dp > most["price"][0]:
                    most["price"] = (dp, row_no, price_text)
                if dv is not None:
                    if dv > most["volume"][0]:
                        most["volume"] = (dv, row_no, volume_text)
                    if volume_text[:1] != "-":
                        # float() finds the largest cheaply; Decimal decides among near-ties
                        rough = float(volume_text)
                        if rough >= top_rough:
                            exact = Decimal(volume_text)
                            if exact > top_volume:
                                top_volume, top_volume_row = exact, row_no
                            top_rough = max(top_rough, rough)
                action = row[action_i]
                if dp is not None and (action == "changed" or action == "created" and dv is not None
                                       and not _ZERO.fullmatch(volume_text)):
                    prices.add(price_text)
        self.total = rows
        self.price_decimals = max(most["price"][0], 0) if price_decimals is None else price_decimals
        self.size_decimals = max(most["volume"][0], 0) if size_decimals is None else size_decimals
        self.evidence = {k: (v[1], v[2]) if v[0] > 0 else None for k, v in most.items()}
        units = []
        for text in prices:
            try:
                units.append(parse_scaled(text, self.price_decimals))
            except ValueError:
                continue
        units = [u for u in units if u > 0]
        self.tick_size = math.gcd(*units) if units else 1
        top_price = max(units, default=0)
        hint = "; pass price_decimals/size_decimals (--price-decimals/--size-decimals)"
        if top_price > MAX_PRICE:
            raise ValueError(f"{self.path}: a price is {top_price} units of "
                             f"{_unit_text(self.price_decimals, 'USD')}, above MAX_PRICE "
                             f"{MAX_PRICE} (most price decimals: {most['price']}){hint}")
        if top_volume_row is not None:
            try:
                qty = parse_scaled(str(top_volume), self.size_decimals)
            except ValueError:
                qty = 0
            if qty > MAX_QTY:
                raise ValueError(f"{self.path}: row {top_volume_row}'s volume {top_volume} is "
                                 f"{qty} lots, above MAX_QTY {MAX_QTY} (most volume decimals: "
                                 f"{most['volume']}){hint}")

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
            ``AddSymbol(symbol, tick_size)`` (no source) first if the book is
            missing, then per row one ``PlaceOrder``, ``AmendOrder``,
            ``CancelOrder`` or ``BadInput``, or nothing (see the module
            docstring). Every command carries ``source=self.name`` and
            ``source_pos`` = its row.
        """
        iterator = self._commands(matcher, after)
        self._iterators.add(iterator)
        return iterator

    def _commands(self, matcher: Matcher, after: Optional[Any]) -> Iterator[Command]:
        if self.symbol not in matcher.books:
            yield AddSymbol.new(self.symbol, self.tick_size)
        start = -1 if after is None else after
        f = open_text(self.path)
        try:
            rows = _rows(f)
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
        id_text, _, _, price_text, volume_text, action, direction = self._pick(row)
        ts_text = row[self._time_i]
        ts_ns = 0
        try:
            if not _is_digits(ts_text) or int(ts_text) * _NS_PER_MS > _INT64_MAX:
                raise ValueError(f"{self.layout.time_column} {ts_text[:32]!r} is not integer ms "
                                 f"in 0..{_INT64_MAX // _NS_PER_MS}")
            ts_ns = int(ts_text) * _NS_PER_MS
            if not _is_digits(id_text) or not 0 < int(id_text) <= MAX_ORDER_ID:
                raise ValueError(f"id {id_text[:32]!r} is not an integer in 1..2**63-1")
            order_id = int(id_text)
            side = _SIDES.get(direction)
            if side is None:
                raise ValueError(f"unknown direction {direction[:32]!r}")
            if action not in _ACTIONS:
                raise ValueError(f"unknown action {action[:32]!r}")
            try:
                price = parse_scaled(price_text, self.price_decimals)
            except ValueError as exc:
                raise ValueError(f"price (units of {self.price_unit}): {exc}") from None
            try:
                qty = parse_scaled(volume_text, self.size_decimals)
            except ValueError as exc:
                raise ValueError(f"volume (lots of {self.lot}): {exc}") from None
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
        if price > 0 and (price > order.price if side == _BUY else price < order.price):
            # the order walked the book to a more aggressive price (R capture)
            return AmendOrder.new(symbol, order_id, price, min(qty, order.qty), ts_ns=ts_ns,
                                  source=name, source_pos=row_no)
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
            return parse_scaled(next_row[volume_i], self.size_decimals) == qty
        except ValueError:
            return False


# ---------------------------------------------------------------- comparison
_STALE = "maker is a stale snapshot order"
_EXAMPLES = 3
_SIDE_WORDS = {"buy": _BUY, "sell": _SELL, "0": _BUY, "1": _SELL}
_LOG_LINE = re.compile(r"([0-9]{1,19}) ([a-z_]+) (.*)", re.S)


class _Lives:
    """Per order id, where its rows are: ``first`` (row, action), ``count`` and
    ``last`` row; plus the extent of the capture's synthetic snapshot rows (a
    leading run of ``created`` rows with row 0's timestamps) and closing
    deletes (a trailing run of ``deleted`` rows with the last row's); and, per
    price (in price units), the event times (ms) of rows on ids the capture
    never created."""

    def __init__(self, source: BitstampSource) -> None:
        self.first: dict[int, tuple[int, str]] = {}
        self.count: Counter = Counter()
        self.last: dict[int, int] = {}
        self.uncreated_ms: dict[int, list[int]] = defaultdict(list)
        id_i, ts_i, exch_i, price_i, _, action_i, _ = source._index
        time_i = source._time_i
        self.snapshot_end = self.closing_start = 0
        head: Optional[tuple] = None
        tail: Optional[tuple] = None
        with open_text(source.path) as f:
            for row_no, row in _rows(f):
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
                if self.first[order_id][1] != "created" and _DIGITS.fullmatch(row[time_i]):
                    try:
                        price = parse_scaled(row[price_i], source.price_decimals)
                    except ValueError:
                        continue
                    self.uncreated_ms[price].append(int(row[time_i]))

    def stale(self, order_id: int) -> bool:
        """Created by the snapshot, then untouched until the closing deletes."""
        first = self.first.get(order_id)
        return (first is not None and first[0] < self.snapshot_end and self.count[order_id] == 2
                and self.last[order_id] >= self.closing_start)

    def created(self, order_id: int) -> bool:
        first = self.first.get(order_id)
        return first is not None and first[1] == "created"

    def uncreated_near(self, price: int, ms: int, window_ms: int) -> bool:
        """A row on an id never created, at ``price``, within ``window_ms`` of ``ms``."""
        times = self.uncreated_ms.get(price, ())
        i = bisect_left(times, ms - window_ms)
        return i < len(times) and times[i] <= ms + window_ms


def _number_text(value: Any) -> str:
    """A JSON number or string as decimal text. A JSON float is a binary
    double printed by the capture (2015 logs: ``0.11256695999999999``): its
    shortest round-trip form (``repr``) is the decimal it stood for."""
    if isinstance(value, bool):
        raise ValueError(f"not a number: {value!r}")
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (int, str)):
        return str(value)
    raise ValueError(f"not a number: {value!r}")


def _order_id(value: Any) -> Optional[int]:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not _DIGITS.fullmatch(str(value)):
        raise ValueError(f"order id {value!r} is not an integer")
    return int(value)


def load_trades(path: Union[str, Path], *, price_decimals: int, lot_exponent: int) -> dict:
    """Real trades from a ``trades.csv`` or a websocket log, in engine units.

    Forms (plain or compressed, see :func:`open_text`; told apart by the
    first line):

    - ``trades.csv`` (the PyPI port's 2026 layout):
      ``trade_id,timestamp,exchange_timestamp,price,amount,buy_order_id,sell_order_id,side``,
      ``side`` the taker's (``buy``/``sell``); time: ``exchange_timestamp``
      (else ``timestamp``), ms.
    - a websocket log, one message a line: ``<ms> <event> <json>`` (the R
      package's ``inst/extdata/2015-05-01.log.xz``); only ``trade`` lines are
      read, others are counted in ``other_lines``. The JSON is the trade
      (or an object whose ``data`` is): ``price``, ``amount`` (BTC; numbers
      or strings; ``price_str``/``amount_str`` win when present), ``id``, and
      when present ``buy_order_id``, ``sell_order_id``, ``type`` (0: the
      taker bought, 1: sold). 2015 messages carry only price, amount, id.
      Time: the line's ``<ms>`` (local receive time).

    Args:
        path: the file.
        price_decimals: prices become counts of ``10**-price_decimals`` USD.
        lot_exponent: amounts (BTC) become counts of ``10**-lot_exponent`` BTC
            (the orders' lot: :attr:`BitstampSource.lot_exponent`).

    Returns:
        ``{"form": "trades.csv" | "websocket log", "trades": [{"trade_id",
        "ms", "price", "qty", "buy_order_id", "sell_order_id", "taker_side"}]
        (ids and side ``None`` when absent), "unreadable": int (rows or trade
        lines that do not parse or do not fit the units), "other_lines": int}``.

    Raises:
        OSError: the file cannot be read.
    """
    out: list[dict] = []
    unreadable = other = 0
    with open_text(Path(path)) as f:
        first = f.readline()
        if _LOG_LINE.fullmatch(first.rstrip("\r\n")):
            form = "websocket log"
            lines = [first]
        else:
            form = "trades.csv"
            lines = None
        if form == "trades.csv":
            for rec in csv.DictReader(io.StringIO(first + f.read())):
                try:
                    side = rec.get("side")
                    ms = rec.get("exchange_timestamp") or rec.get("timestamp") or "0"
                    out.append({
                        "trade_id": rec["trade_id"],
                        "ms": int(ms),
                        "price": parse_scaled(rec["price"], price_decimals),
                        "qty": parse_scaled(rec["amount"], lot_exponent),
                        "buy_order_id": _order_id(rec.get("buy_order_id")),
                        "sell_order_id": _order_id(rec.get("sell_order_id")),
                        "taker_side": None if side in (None, "") else _SIDE_WORDS[side],
                    })
                except (KeyError, TypeError, ValueError):
                    unreadable += 1
        else:
            for line in _chain(lines, f):
                match = _LOG_LINE.fullmatch(line.rstrip("\r\n"))
                if match is None or match.group(2) != "trade":
                    other += 1
                    continue
                try:
                    msg = json.loads(match.group(3))
                    if isinstance(msg, dict) and isinstance(msg.get("data"), dict):
                        msg = msg["data"]
                    side = msg.get("type")
                    out.append({
                        "trade_id": msg.get("id"),
                        "ms": int(match.group(1)),
                        "price": parse_scaled(_number_text(msg.get("price_str", msg["price"])),
                                              price_decimals),
                        "qty": parse_scaled(_number_text(msg.get("amount_str", msg["amount"])),
                                            lot_exponent),
                        "buy_order_id": _order_id(msg.get("buy_order_id")),
                        "sell_order_id": _order_id(msg.get("sell_order_id")),
                        "taker_side": None if side is None else _SIDE_WORDS[str(side)],
                    })
                except (AttributeError, KeyError, TypeError, ValueError):
                    unreadable += 1
    return {"form": form, "trades": out, "unreadable": unreadable, "other_lines": other}


def _chain(head: list, rest: Any) -> Iterator[str]:
    yield from head
    yield from rest


def _example(examples: dict, reason: str, item: dict) -> None:
    bucket = examples.setdefault(reason, [])
    if len(bucket) < _EXAMPLES:
        bucket.append(item)


def _units(source: BitstampSource) -> dict:
    return {"layout": source.layout.name, "price_decimals": source.price_decimals,
            "size_decimals": source.size_decimals, "tick_size": source.tick_size,
            "price_unit": source.price_unit, "lot": source.lot}


def replay_capture(source: BitstampSource, matcher: Optional[Matcher] = None) -> dict:
    """Run every command of ``source`` into ``matcher`` (``seq = last_seq + 1``).

    Args:
        source: the capture; its iterators are closed on return.
        matcher: default a new in-memory :class:`Matcher`; left holding the
            final state.

    Returns:
        ``{"matcher", "trades": [(Trade, row), ...] (row: the command's
        source_pos), "unplaced": {order id: BadInput error} (created rows
        that became ``BadInput``), "summary": {"units": {layout,
        price_decimals, size_decimals, tick_size, price_unit, lot},
        "rows", "commands": {kind name: count}, "post_only_placed",
        "rejects": {reason name: count}, "rejected_commands",
        "engine_trades", "resting_orders"}}``.
    """
    matcher = Matcher() if matcher is None else matcher
    trades: list[tuple[Any, int]] = []
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
                    trades.append((event, cmd[-1]))
                elif event[0] == _REJECTED:
                    rejects[RejectReason(event.reason).name] += 1
    finally:
        source.close()
    book = matcher.books.get(source.symbol)
    summary = {
        "units": _units(source),
        "rows": source.total,
        "commands": dict(commands),
        "post_only_placed": post_only,
        "rejects": dict(rejects),
        "rejected_commands": sum(rejects.values()),
        "engine_trades": len(trades),
        "resting_orders": len(book.orders) if book is not None else 0,
    }
    return {"matcher": matcher, "trades": trades, "unplaced": unplaced, "summary": summary}


WINDOW_MS = 2_000
"""Default pairing window of :func:`compare_trades` without order ids (ms)."""


def compare_trades(orders: Union[str, Path, BitstampSource], trades: Union[str, Path], *,
                   symbol: str = "BTCUSD", matcher: Optional[Matcher] = None,
                   price_decimals: Optional[int] = None, size_decimals: Optional[int] = None,
                   layout: Optional[str] = None, window_ms: int = WINDOW_MS,
                   qty_tolerance: Optional[int] = None) -> dict:
    """Replay a Bitstamp capture through the engine and compare its trades with the real ones.

    Runs the orders (:func:`replay_capture`), reads the real trades
    (:func:`load_trades`, in the orders' units), then pairs them:

    - **by order ids** when every real trade names its buy and sell order
      (``trades.csv``; websocket logs since Bitstamp added the ids): a real
      trade pairs with an engine trade of the same ``(buy_order_id,
      sell_order_id)`` (engine side: the taker is the buyer if
      ``taker_side`` is 1), same price and qty first.
    - **by price and qty in time order** otherwise (2015 logs carry only
      price, amount, id): each real trade, oldest first, pairs with the
      oldest unpaired engine trade at the same price whose qty is within
      ``qty_tolerance`` lots (an exact qty first) and whose time (its
      command's) is within ``window_ms`` of the trade's.

    Args:
        orders: the orders CSV (any layout and compression
            :class:`BitstampSource` reads) or a source.
        trades: ``trades.csv`` or a websocket log (see :func:`load_trades`).
        symbol: the engine symbol.
        matcher: the engine to run into (default: a new in-memory
            :class:`Matcher`); it is left holding the final state.
        price_decimals, size_decimals, layout: as :class:`BitstampSource`
            (ignored when ``orders`` is a source).
        window_ms: the pairing window without order ids.
        qty_tolerance: lots a qty may differ by when pairing without ids
            (default: 1 satoshi for the ``"r"`` layout, whose volumes are
            1 satoshi low on 8% of rows, see the module docstring; else 0).

    Returns:
        ``{"pairing": "order ids" | "price and qty within N ms",
        "engine_trades", "real_trades", "reproduced" (paired),
        "reproduced_exact" (and same price and qty): int, "not_reproduced":
        {reason: count} (real trades without an engine twin), "engine_only":
        {reason: count}, "inexact": {reason: count}, "examples": {reason:
        [dict, ...]} (at most 3 each), "units": {...}, "trades_form",
        "commands": {kind name: count}, "post_only_placed", "rejects":
        {reason name: count}, "unreadable_trade_rows", "resting_orders",
        "stale_snapshot_orders": int}``. Prices in the source's price unit,
        qty in its lots. ``stale`` orders are created by the snapshot and
        untouched until the capture's closing synthetic deletes.

    Raises:
        OSError: a file cannot be read.
        ValueError: the orders file has a wrong header.
    """
    source = orders if isinstance(orders, BitstampSource) else BitstampSource(
        orders, symbol=symbol, price_decimals=price_decimals, size_decimals=size_decimals,
        layout=layout)
    run = replay_capture(source, matcher)
    engine, unplaced, summary = run["trades"], run["unplaced"], run["summary"]
    lives = _Lives(source)
    loaded = load_trades(trades, price_decimals=source.price_decimals,
                         lot_exponent=source.lot_exponent)
    real = loaded["trades"]
    if qty_tolerance is None:
        qty_tolerance = 10 ** source.size_decimals if source.layout.name == "r" else 0
    by_ids = bool(real) and all(t["buy_order_id"] is not None and t["sell_order_id"] is not None
                                for t in real)
    examples: dict[str, list] = {}
    if by_ids:
        pairing = "order ids"
        used, reproduced, exact, not_reproduced, inexact = _pair_by_ids(
            real, engine, unplaced, lives, examples)
    else:
        pairing = f"price and qty within {window_ms} ms"
        used, reproduced, exact, not_reproduced, inexact = _pair_by_time(
            real, engine, lives, examples, window_ms, qty_tolerance)
    engine_only: Counter = Counter()
    for trade, row in engine:
        if trade.match_id in used:
            continue
        if lives.stale(trade.maker_order_id):
            reason = _STALE
        elif not lives.created(trade.maker_order_id):
            reason = "maker never created in the capture"
        elif by_ids:
            reason = "no such trade on Bitstamp"
        else:
            reason = "no real trade at that price and qty within the window"
        engine_only[reason] += 1
        maker_first = lives.first.get(trade.maker_order_id, (None, None))
        _example(examples, reason, {"row": row, "ms": trade.ts_ns // _NS_PER_MS,
                                    "taker_order_id": trade.taker_order_id,
                                    "maker_order_id": trade.maker_order_id,
                                    "taker_side": trade.taker_side, "price": trade.price,
                                    "qty": trade.qty, "maker_first_row": maker_first[0]})
    return {
        "pairing": pairing,
        "engine_trades": len(engine),
        "real_trades": len(real),
        "reproduced": reproduced,
        "reproduced_exact": exact,
        "not_reproduced": dict(not_reproduced),
        "engine_only": dict(engine_only),
        "inexact": dict(inexact),
        "examples": examples,
        "units": summary["units"],
        "trades_form": loaded["form"],
        "commands": summary["commands"],
        "post_only_placed": summary["post_only_placed"],
        "rejects": summary["rejects"],
        "unreadable_trade_rows": loaded["unreadable"],
        "resting_orders": summary["resting_orders"],
        "stale_snapshot_orders": sum(1 for i in lives.first if lives.stale(i)),
    }


def _pair_by_ids(real: list, engine: list, unplaced: dict, lives: _Lives,
                 examples: dict) -> tuple:
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
        takers = [buy] if t["taker_side"] == _BUY else [sell] if t["taker_side"] == _SELL \
            else [buy, sell]
        engine_makers = [e.maker_order_id for taker in takers for e in by_taker.get(taker, ())]
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
    return used, reproduced, exact, not_reproduced, inexact


def _pair_by_time(real: list, engine: list, lives: _Lives, examples: dict, window_ms: int,
                  qty_tolerance: int) -> tuple:
    by_price: dict[int, list] = defaultdict(list)
    for trade, row in engine:
        by_price[trade.price].append((trade.ts_ns // _NS_PER_MS, trade))
    start: dict[int, int] = defaultdict(int)    # per price: first entry still in the window
    used: set[int] = set()
    reproduced = exact = 0
    not_reproduced: Counter = Counter()
    inexact: Counter = Counter()
    for t in sorted(real, key=lambda t: t["ms"]):
        ms, price, qty = t["ms"], t["price"], t["qty"]
        entries = by_price.get(price, [])
        i = start[price]
        while i < len(entries) and entries[i][0] < ms - window_ms:
            i += 1
        start[price] = i
        best = None
        for e_ms, trade in entries[i:]:
            if e_ms > ms + window_ms:
                break
            if trade.match_id in used or abs(trade.qty - qty) > qty_tolerance:
                continue
            if trade.qty == qty:
                best = trade
                break
            best = best or trade
        if best is not None:
            used.add(best.match_id)
            reproduced += 1
            if best.qty == qty:
                exact += 1
            else:
                inexact[f"qty within {qty_tolerance} lots"] += 1
            continue
        if lives.uncreated_near(price, ms, window_ms):
            reason = "an order at that price in the window was never created in the capture"
        elif entries[i:] and entries[i][0] <= ms + window_ms:
            reason = "engine traded at that price in the window, other qty"
        else:
            reason = "no engine trade at that price in the window"
        not_reproduced[reason] += 1
        _example(examples, reason, dict(t))
    return used, reproduced, exact, not_reproduced, inexact
