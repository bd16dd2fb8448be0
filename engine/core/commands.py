"""Commands: what a source asks the engine to do.

Commands are ``NamedTuple``s whose first field ``kind`` is their type code
(:class:`~engine.core.types.Kind`); this makes them a msgpack array as they
are, so the WAL writes them with no conversion (``eventstore/FORMAT.md``,
payloads). Build them with the ``new`` class methods, which fill ``kind``.

Every command may carry ``source`` (a stable name such as ``"lobster:GOOG"``
or ``"kafka:orders:0"``) and ``source_pos`` (the row, or the Kafka offset, it
came from). The engine keeps the last position applied per source so that a
restarted engine resumes after it: nothing skipped, nothing applied twice.

Fields are not validated here: a malformed command is a valid *command* that
the matcher rejects with an :class:`~engine.core.events.OrderRejected`.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Union

from .types import Kind

__all__ = ["AddSymbol", "PlaceOrder", "CancelOrder", "AmendOrder", "BadInput", "Command", "COMMAND_CLASSES"]


class AddSymbol(NamedTuple):
    """Open an order book. ``tick_size``: the smallest price step, in price units."""

    kind: int
    ts_ns: int
    symbol: str
    tick_size: int
    source: Optional[str] = None
    source_pos: Optional[int] = None

    @classmethod
    def new(cls, symbol: str, tick_size: int = 1, ts_ns: int = 0,
            source: Optional[str] = None, source_pos: Optional[int] = None) -> "AddSymbol":
        return cls(Kind.ADD_SYMBOL.value, ts_ns, symbol, tick_size, source, source_pos)


class PlaceOrder(NamedTuple):
    """Enter a new order.

    ``side``: 1 buy, 2 sell. ``order_type``: 1 limit, 2 market (``price`` is
    ignored, send 0). ``tif``: 1 GTC, 2 IOC, 3 FOK (market orders: IOC or
    FOK). ``post_only``: a limit GTC order that is rejected rather than take
    liquidity. ``price`` in price units, ``qty`` in lots, ``account`` an
    integer owner id carried onto trades for settlement.
    """

    kind: int
    ts_ns: int
    symbol: str
    order_id: int
    side: int
    order_type: int
    tif: int
    price: int
    qty: int
    post_only: bool = False
    account: int = 0
    source: Optional[str] = None
    source_pos: Optional[int] = None

    @classmethod
    def new(cls, symbol: str, order_id: int, side: int, price: int, qty: int, *,
            order_type: int = 1, tif: int = 1, post_only: bool = False, account: int = 0,
            ts_ns: int = 0, source: Optional[str] = None,
            source_pos: Optional[int] = None) -> "PlaceOrder":
        return cls(Kind.PLACE.value, ts_ns, symbol, order_id, side, order_type, tif,
                   price, qty, post_only, account, source, source_pos)


class CancelOrder(NamedTuple):
    """Remove a resting order whole."""

    kind: int
    ts_ns: int
    symbol: str
    order_id: int
    source: Optional[str] = None
    source_pos: Optional[int] = None

    @classmethod
    def new(cls, symbol: str, order_id: int, *, ts_ns: int = 0,
            source: Optional[str] = None, source_pos: Optional[int] = None) -> "CancelOrder":
        return cls(Kind.CANCEL.value, ts_ns, symbol, order_id, source, source_pos)


class AmendOrder(NamedTuple):
    """Change a resting order's price and/or leaves quantity.

    ``qty`` is the new leaves quantity (lots still open), not the original
    size. Same price and a smaller ``qty`` keep time priority; a new price or
    a larger ``qty`` lose it: the order is taken off and entered again as new,
    and may trade if its new price crosses.
    Source: CME Globex and Nasdaq ITCH "order replace" semantics.
    """

    kind: int
    ts_ns: int
    symbol: str
    order_id: int
    price: int
    qty: int
    source: Optional[str] = None
    source_pos: Optional[int] = None

    @classmethod
    def new(cls, symbol: str, order_id: int, price: int, qty: int, *, ts_ns: int = 0,
            source: Optional[str] = None, source_pos: Optional[int] = None) -> "AmendOrder":
        return cls(Kind.AMEND.value, ts_ns, symbol, order_id, price, qty, source, source_pos)


class BadInput(NamedTuple):
    """Input that could not be parsed into a command (a garbage CSV row, a
    message that is not msgpack). Logged so that nothing is lost and the
    source position moves past it; the matcher answers it with a reject."""

    kind: int
    ts_ns: int
    raw: Any
    error: str
    source: Optional[str] = None
    source_pos: Optional[int] = None

    @classmethod
    def new(cls, raw: Any, error: str, *, ts_ns: int = 0, source: Optional[str] = None,
            source_pos: Optional[int] = None) -> "BadInput":
        return cls(Kind.BAD_INPUT.value, ts_ns, raw, error, source, source_pos)


Command = Union[AddSymbol, PlaceOrder, CancelOrder, AmendOrder, BadInput]

COMMAND_CLASSES = {
    Kind.ADD_SYMBOL.value: AddSymbol,
    Kind.PLACE.value: PlaceOrder,
    Kind.CANCEL.value: CancelOrder,
    Kind.AMEND.value: AmendOrder,
    Kind.BAD_INPUT.value: BadInput,
}
