"""Enumerations shared by commands, events and the order book.

Every value is a small ``int`` so that it encodes to one msgpack byte and
compares fast; ``IntEnum`` members are used at the edges (CLI, JSON), plain ints
inside the hot path.

Units used throughout ``engine.core``:
    price: integer, in the symbol's price unit (e.g. USD x 10,000 for LOBSTER);
        a valid limit price is a positive multiple of the book's ``tick_size``.
    qty: integer lots; never a float.
    ts_ns: integer nanoseconds, taken from the command (never the wall clock).
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final

__all__ = [
    "Side", "OrderType", "TimeInForce", "Kind", "RejectReason", "CancelReason", "LedgerReason",
    "BUY", "SELL", "MAX_PRICE", "MAX_QTY", "MAX_ORDER_ID", "MAX_AMOUNT", "MAX_FEE_PPM",
]


class Side(IntEnum):
    BUY = 1
    SELL = 2


BUY: Final = 1
SELL: Final = 2


class OrderType(IntEnum):
    LIMIT = 1
    MARKET = 2


class TimeInForce(IntEnum):
    """GTC rests; IOC fills what it can now, cancels the rest; FOK fills whole or nothing."""

    GTC = 1
    IOC = 2
    FOK = 3


class Kind(IntEnum):
    """Type code of a command or event: the first element of its record.

    1-63 are commands (inputs, written to the WAL before they are matched);
    64-127 are events the matcher emits. Trades and rejects are logged in the
    WAL; the other events are derived again by replay and are never logged.
    Codes are stable: they are part of ``eventstore/FORMAT.md``'s payloads.
    """

    ADD_SYMBOL = 1
    PLACE = 2
    CANCEL = 3
    AMEND = 4
    BAD_INPUT = 5
    ADD_ASSET = 6
    DEPOSIT = 7
    WITHDRAW = 8
    TRADE = 64
    REJECTED = 65
    RESTED = 66
    CANCELLED = 67
    AMENDED = 68
    SYMBOL_ADDED = 69
    ASSET_ADDED = 70
    TRANSFER_DONE = 71
    BALANCE_CHANGED = 72


class RejectReason(IntEnum):
    """Why a command was rejected. Stable codes, grouped by range.

    1xx: a field of the command is malformed or out of range.
    2xx: the command conflicts with the engine's state.
    3xx: the order would break its own instructions (post-only).
    4xx: pre-trade risk: the account cannot cover the order or withdrawal.
    Source: grouping after exchange-core's ``CommandResultCode``.
    """

    MALFORMED = 100
    INVALID_ORDER_ID = 101
    INVALID_SIDE = 102
    INVALID_ORDER_TYPE = 103
    INVALID_TIF = 104
    INVALID_QTY = 105
    INVALID_PRICE = 106
    PRICE_OFF_TICK = 107
    INVALID_FLAGS = 108
    INVALID_TICK_SIZE = 109
    INVALID_SYMBOL = 110
    INVALID_ASSET = 111
    INVALID_AMOUNT = 112
    INVALID_TRANSFER_ID = 113
    INVALID_ACCOUNT = 114
    INVALID_SYMBOL_SPEC = 115
    INVALID_BUDGET = 116
    UNKNOWN_SYMBOL = 200
    DUPLICATE_ORDER_ID = 201
    UNKNOWN_ORDER = 202
    SYMBOL_EXISTS = 203
    UNKNOWN_ASSET = 204
    ASSET_EXISTS = 205
    TRANSFER_CONFLICT = 206
    POST_ONLY_WOULD_TAKE = 300
    INSUFFICIENT_FUNDS = 400


class CancelReason(IntEnum):
    """Why an order left the book (or never rested) without being filled."""

    USER = 1
    IOC_REMAINDER = 2
    FOK_UNFILLED = 3
    NO_LIQUIDITY = 4
    BUDGET_EXHAUSTED = 5


class LedgerReason(IntEnum):
    """Why a balance changed (``BalanceChanged.reason``).

    DEPOSIT / WITHDRAWAL: a transfer; HOLD: an order (or amend) reserved
    funds; RELEASE: a cancel, an IOC/FOK remainder, an amend or a spent
    market budget gave reserved funds back; FILL: one side of a trade (what
    was paid out of held funds, what was received, and the unused part of the
    reserve it releases); FEE: the fee account's income from a trade.
    """

    DEPOSIT = 1
    WITHDRAWAL = 2
    HOLD = 3
    RELEASE = 4
    FILL = 5
    FEE = 6


# Bounds that keep every integer inside msgpack's int64 and leave room for
# price * qty in a notional computation downstream.
MAX_PRICE: Final = 10**12
MAX_QTY: Final = 10**15
MAX_ORDER_ID: Final = 2**63 - 1
# Money: amounts are integers in the asset's smallest unit (10**-scale). The
# sum of all deposits of an asset stays <= MAX_AMOUNT, so no balance leaves
# int64. Fees are parts per million of the notional, 0..MAX_FEE_PPM.
MAX_AMOUNT: Final = 2**63 - 1
MAX_FEE_PPM: Final = 1_000_000
