"""Draw an order book as a price ladder; apply commands with consecutive seqs.

A ladder is a header line and one row per price level, three ``|``-separated
columns: bid quantities, price, ask quantities::

    bid|price|ask
      |1600|7
      |1575|3 2
     4|1550|

A cell holds the leaves of the level's orders, oldest first, separated by
spaces or commas; ``qty#id`` gives an order an explicit id. Orders without one
are numbered 1, 2, 3, ... in reading order (top row first, left to right
within a cell), skipping explicit ids. Rows may come in any price order.

:func:`book_from_ladder` enters the orders as GTC limit orders (asks and bids
in reading order), so the time priority within a level is the drawn order.
:func:`ladder_of` draws a live book back in the canonical form (prices
descending, single spaces) and :func:`ladder` normalises a drawn one, so a
test can assert ``ladder_of(m) == ladder("...")``.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

from engine.core import AddSymbol, Kind, Matcher, OrderBook, PlaceOrder

__all__ = ["book_from_ladder", "parse_ladder", "ladder", "ladder_of", "apply", "apply_all",
           "apply_one"]

BUY, SELL = 1, 2


def _cell(cell: str) -> list:
    """``"3 2#9"`` -> ``[(3, None), (2, 9)]``."""
    out = []
    for token in cell.replace(",", " ").split():
        qty, _, order_id = token.partition("#")
        out.append((int(qty), int(order_id) if order_id else None))
    return out


def parse_ladder(text: str) -> list:
    """Parse a drawn ladder into ``[(order_id, side, price, qty), ...]`` in
    reading order, ids filled in. Raises ``ValueError`` on a malformed drawing."""
    lines = [line for line in text.strip("\n").splitlines() if line.strip()]
    if not lines or [c.strip() for c in lines[0].split("|")] != ["bid", "price", "ask"]:
        raise ValueError(f"a ladder starts with the header 'bid|price|ask', got {lines[:1]!r}")
    raw = []
    for line in lines[1:]:
        cells = line.split("|")
        if len(cells) != 3:
            raise ValueError(f"ladder row {line!r} needs three '|'-separated cells")
        price = int(cells[1])
        for side, cell in ((BUY, cells[0]), (SELL, cells[2])):
            for qty, order_id in _cell(cell):
                if qty <= 0:
                    raise ValueError(f"ladder row {line!r}: quantities must be positive")
                raw.append([order_id, side, price, qty])
    explicit = {r[0] for r in raw if r[0] is not None}
    next_id = 1
    for r in raw:
        if r[0] is None:
            while next_id in explicit:
                next_id += 1
            r[0] = next_id
            next_id += 1
    return [tuple(r) for r in raw]


def book_from_ladder(text: str, symbol: str = "X", tick_size: int = 1,
                     matcher: Optional[Matcher] = None, account: int = 0) -> Matcher:
    """A :class:`Matcher` holding ``symbol``'s book as drawn.

    Args:
        text: the ladder (see the module docstring).
        symbol: the book's symbol; an ``AddSymbol`` opens it.
        tick_size: the book's tick size; drawn prices must be multiples of it.
        matcher: add the book to this matcher instead of a new one.
        account: the account of every drawn order.

    Raises:
        ValueError: the drawing is malformed, or its orders did not all rest
            (a crossed ladder, a duplicate id, a price off tick).
    """
    m = matcher if matcher is not None else Matcher()
    cmds: list = [AddSymbol.new(symbol, tick_size)]
    for order_id, side, price, qty in parse_ladder(text):
        cmds.append(PlaceOrder.new(symbol, order_id, side, price, qty, account=account))
    for events in apply_all(m, cmds):
        if len(events) != 1 or events[0][0] not in (Kind.RESTED, Kind.SYMBOL_ADDED):
            raise ValueError(f"ladder order did not rest as drawn: {events!r}")
    return m


def ladder(text: str) -> str:
    """A drawn ladder in canonical form (what :func:`ladder_of` prints)."""
    return ladder_of(book_from_ladder(text, symbol="_"), "_")


def ladder_of(matcher_or_book: Any, symbol: str = "X", ids: bool = False) -> str:
    """Draw a live book: header, then one row per price, highest first.

    ``ids=True`` writes every order as ``qty#id``."""
    book: OrderBook = (matcher_or_book.books[symbol] if isinstance(matcher_or_book, Matcher)
                       else matcher_or_book)
    cells: dict = {}
    for side in (BUY, SELL):
        for level in book.levels(side):
            tokens = [f"{o.qty}#{o.order_id}" if ids else str(o.qty) for o in level.live()]
            cells.setdefault(level.price, {})[side] = " ".join(tokens)
    rows = ["bid|price|ask"]
    for price in sorted(cells, reverse=True):
        row = cells[price]
        rows.append(f"{row.get(BUY, '')}|{price}|{row.get(SELL, '')}")
    return "\n".join(rows)


def apply_one(matcher: Matcher, cmd: Any, check: bool = True) -> list:
    """Apply ``cmd`` at ``matcher.last_seq + 1`` (trades and rejects take
    sequence numbers too); then ``check_invariants()`` unless ``check`` is false."""
    events = matcher.apply(matcher.last_seq + 1, cmd)
    if check:
        matcher.check_invariants()
    return events


def apply_all(matcher: Matcher, cmds: Iterable[Any], check: bool = True) -> list:
    """Apply each command in turn; the list of each one's events."""
    return [apply_one(matcher, cmd, check) for cmd in cmds]


def apply(matcher: Matcher, *cmds: Any, check: bool = True) -> list:
    """Apply the commands in turn; all their events in one flat list."""
    return [e for events in apply_all(matcher, cmds, check) for e in events]
