"""The matching core: pure Python, no I/O, no clock, no randomness.

Layout: ``types`` (enums, units), ``commands`` (inputs), ``events`` (outputs),
``price_level`` and ``order_book`` (one symbol), ``accounts`` (balances,
transfers, pre-trade risk), ``matcher`` (all books, ``match_sequence``, the
state hash), ``errors``.
May import: the standard library, ``sortedcontainers`` and ``msgpack`` (for
the state hash only). Must not import anything else of evengine
(``tests/unit/test_layering.py`` checks).
"""

from .codec import KIND_NAMES, decode_payload, to_json
from .accounts import Accounts, SymbolSpec
from .commands import (COMMAND_CLASSES, AddAsset, AddSymbol, AmendOrder, BadInput, CancelOrder, Command, Deposit,
                       PlaceOrder, Withdraw, upgrade_command)
from .errors import BookIntegrityError, CoreError, SequenceGapError
from .events import (EVENT_CLASSES, LOGGED_KINDS, AssetAdded, BalanceChanged, Event, OrderAmended, OrderCancelled,
                     OrderRejected, OrderRested, SymbolAdded, Trade, TransferDone)
from . import matcher as _matcher
from .matcher import Matcher
from .order_book import OrderBook
from .price_level import PriceLevel, RestingOrder
from .types import (BUY, SELL, CancelReason, Kind, LedgerReason, OrderType, RejectReason, Side, TimeInForce)

# True when the matcher is the mypyc-compiled extension module of matcher.py (the
# build setup.py makes when a C compiler works), False for pure Python.
COMPILED: bool = not _matcher.__file__.endswith(".py")

__all__ = [
    "COMPILED",
    "KIND_NAMES", "decode_payload", "to_json",
    "AddSymbol", "AmendOrder", "BadInput", "CancelOrder", "Command", "PlaceOrder", "COMMAND_CLASSES",
    "AddAsset", "Deposit", "Withdraw", "upgrade_command", "Accounts", "SymbolSpec",
    "BookIntegrityError", "CoreError", "SequenceGapError",
    "Event", "OrderAmended", "OrderCancelled", "OrderRejected", "OrderRested", "SymbolAdded",
    "AssetAdded", "TransferDone", "BalanceChanged", "LedgerReason",
    "Trade", "LOGGED_KINDS", "EVENT_CLASSES",
    "Matcher", "OrderBook", "PriceLevel", "RestingOrder",
    "BUY", "SELL", "CancelReason", "Kind", "OrderType", "RejectReason", "Side", "TimeInForce",
]
