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

__all__ = ["AddSymbol", "AddAsset", "Deposit", "Withdraw", "PlaceOrder", "CancelOrder", "AmendOrder", "BadInput",
           "Command", "COMMAND_CLASSES", "LEGACY_FIELD_COUNTS", "upgrade_command"]


class AddSymbol(NamedTuple):
    """Open an order book.

    ``tick_size``: the smallest price step, in price units. The rest says
    what one price unit and one lot are worth, for accounts and risk (all
    optional; a book of replayed market data needs none of them):

    - ``base`` / ``quote``: asset names (added by :class:`AddAsset` first);
      both or neither. A trade of ``qty`` lots at ``price`` moves
      ``qty * base_per_lot`` base units one way and the *notional*
      ``price * qty * quote_per_tick`` quote units the other way (amounts in
      the assets' smallest units, ``10**-scale``).
    - ``maker_fee_ppm`` <= ``taker_fee_ppm``: fees in parts per million of the
      notional, paid in the quote asset by each side of a trade (the buyer on
      top of the notional, the seller out of it), rounded up (for the house),
      credited to ``fee_account``.
    - ``risk``: orders in this book must be covered by their account's
      available balance (pre-trade risk, see :class:`~engine.core.accounts.Accounts`);
      off, orders are matched without looking at balances.

    WAL format 2 wrote the first four fields and the envelope only (6
    fields); :func:`upgrade_command` reads that layout as a book with no
    assets and risk off.
    """

    kind: int
    ts_ns: int
    symbol: str
    tick_size: int
    base: Optional[str] = None
    quote: Optional[str] = None
    quote_per_tick: int = 1
    base_per_lot: int = 1
    maker_fee_ppm: int = 0
    taker_fee_ppm: int = 0
    risk: bool = False
    fee_account: int = 0
    source: Optional[str] = None
    source_pos: Optional[int] = None

    @classmethod
    def new(cls, symbol: str, tick_size: int = 1, ts_ns: int = 0, source: Optional[str] = None,
            source_pos: Optional[int] = None, *, base: Optional[str] = None, quote: Optional[str] = None,
            quote_per_tick: int = 1, base_per_lot: int = 1, maker_fee_ppm: int = 0, taker_fee_ppm: int = 0,
            risk: bool = False, fee_account: int = 0) -> "AddSymbol":
        return cls(Kind.ADD_SYMBOL.value, ts_ns, symbol, tick_size, base, quote, quote_per_tick,
                   base_per_lot, maker_fee_ppm, taker_fee_ppm, risk, fee_account, source, source_pos)


class AddAsset(NamedTuple):
    """Define an asset. ``scale``: its decimals (0..18): amounts of the asset
    are integers in units of ``10**-scale`` (USD with scale 2: cents)."""

    kind: int
    ts_ns: int
    asset: str
    scale: int
    source: Optional[str] = None
    source_pos: Optional[int] = None

    @classmethod
    def new(cls, asset: str, scale: int, *, ts_ns: int = 0, source: Optional[str] = None,
            source_pos: Optional[int] = None) -> "AddAsset":
        return cls(Kind.ADD_ASSET.value, ts_ns, asset, scale, source, source_pos)


class Deposit(NamedTuple):
    """Credit ``amount`` (the asset's smallest units, > 0) to ``account``'s
    available balance.

    ``transfer_id`` (1..2**63-1) is the client's idempotency key: a repeat
    with the same body returns the first outcome (a rejection too) and
    changes nothing; the same id with another body is rejected with
    ``TRANSFER_CONFLICT``. Source: TigerBeetle's transfer ids.
    """

    kind: int
    ts_ns: int
    transfer_id: int
    account: int
    asset: str
    amount: int
    source: Optional[str] = None
    source_pos: Optional[int] = None

    @classmethod
    def new(cls, transfer_id: int, account: int, asset: str, amount: int, *, ts_ns: int = 0,
            source: Optional[str] = None, source_pos: Optional[int] = None) -> "Deposit":
        return cls(Kind.DEPOSIT.value, ts_ns, transfer_id, account, asset, amount, source, source_pos)


class Withdraw(NamedTuple):
    """Debit ``amount`` from ``account``'s *available* balance (held funds
    are not withdrawable); rejected with ``INSUFFICIENT_FUNDS`` when it is
    short. ``transfer_id`` as for :class:`Deposit` (one id space for both)."""

    kind: int
    ts_ns: int
    transfer_id: int
    account: int
    asset: str
    amount: int
    source: Optional[str] = None
    source_pos: Optional[int] = None

    @classmethod
    def new(cls, transfer_id: int, account: int, asset: str, amount: int, *, ts_ns: int = 0,
            source: Optional[str] = None, source_pos: Optional[int] = None) -> "Withdraw":
        return cls(Kind.WITHDRAW.value, ts_ns, transfer_id, account, asset, amount, source, source_pos)


class PlaceOrder(NamedTuple):
    """Enter a new order.

    ``side``: 1 buy, 2 sell. ``order_type``: 1 limit, 2 market (``price`` is
    ignored, send 0). ``tif``: 1 GTC, 2 IOC, 3 FOK (market orders: IOC or
    FOK). ``post_only``: a limit GTC order that is rejected rather than take
    liquidity. ``price`` in price units, ``qty`` in lots, ``account`` an
    integer owner id carried onto trades for settlement.

    ``max_quote``: a budget in quote units (the asset's smallest unit),
    fees included, that a **market buy** may spend; 0 means none; any other
    order with a budget is rejected (``INVALID_BUDGET``). A market buy in a
    book with risk on needs one (it is what the order holds). It fills best
    ask first while the rest of the budget covers one more lot at the level's
    price (notional plus taker fee, rounded up); the leaves are then
    cancelled, reason ``BUDGET_EXHAUSTED``. WAL format 2 had no
    ``max_quote`` (13 fields); :func:`upgrade_command` reads it as 0.
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
    max_quote: int = 0
    source: Optional[str] = None
    source_pos: Optional[int] = None

    @classmethod
    def new(cls, symbol: str, order_id: int, side: int, price: int, qty: int, *,
            order_type: int = 1, tif: int = 1, post_only: bool = False, account: int = 0,
            max_quote: int = 0, ts_ns: int = 0, source: Optional[str] = None,
            source_pos: Optional[int] = None) -> "PlaceOrder":
        return cls(Kind.PLACE.value, ts_ns, symbol, order_id, side, order_type, tif,
                   price, qty, post_only, account, max_quote, source, source_pos)


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


Command = Union[AddSymbol, AddAsset, Deposit, Withdraw, PlaceOrder, CancelOrder, AmendOrder, BadInput]

COMMAND_CLASSES = {
    Kind.ADD_SYMBOL.value: AddSymbol,
    Kind.PLACE.value: PlaceOrder,
    Kind.CANCEL.value: CancelOrder,
    Kind.AMEND.value: AmendOrder,
    Kind.BAD_INPUT.value: BadInput,
    Kind.ADD_ASSET.value: AddAsset,
    Kind.DEPOSIT.value: Deposit,
    Kind.WITHDRAW.value: Withdraw,
}

LEGACY_FIELD_COUNTS = {Kind.ADD_SYMBOL.value: 6, Kind.PLACE.value: 13}
"""Field counts of the commands whose layout WAL format 2 wrote shorter."""


def upgrade_command(record: Any) -> Any:
    """A command record in a WAL format 2 layout, in today's layout.

    ``[1, ts_ns, symbol, tick_size, source, source_pos]`` becomes an
    :class:`AddSymbol` with no assets and risk off; a 13-field place gets
    ``max_quote = 0``. Any other record is returned unchanged.
    Source: ``eventstore/FORMAT.md``, changelog, version 3.
    """
    n = len(record)
    kind = record[0]
    if kind == 1 and n == 6:
        return AddSymbol(record[0], record[1], record[2], record[3], None, None, 1, 1, 0, 0, False, 0,
                         record[4], record[5])
    if kind == 2 and n == 13:
        return PlaceOrder(*record[:11], 0, record[11], record[12])  # type: ignore[call-arg]
    return record
