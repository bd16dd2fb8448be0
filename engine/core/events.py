"""Events: what the matcher says happened.

Like commands, events are ``NamedTuple``s with ``kind`` first. ``Trade`` and
``OrderRejected`` are logged in the WAL (each with a sequence number of its
own, right after the command that caused it); ``OrderRested``,
``OrderCancelled``, ``OrderAmended`` and ``SymbolAdded`` are acknowledgements
that replay derives again, so they are never logged.

A ``Trade`` is one match between the taker (the incoming order) and one maker
(a resting order); it stands for two fills, one per order, at the maker's
price. ``match_id`` comes from the engine's gap-free ``match_sequence``.
"""

from __future__ import annotations

from typing import NamedTuple, Union

from .types import Kind

__all__ = ["Trade", "OrderRejected", "OrderRested", "OrderCancelled", "OrderAmended",
           "SymbolAdded", "AssetAdded", "TransferDone", "BalanceChanged", "Event", "LOGGED_KINDS",
           "EVENT_CLASSES"]


class Trade(NamedTuple):
    """One match. ``price`` is the maker's, in price units; ``qty`` in lots.
    ``taker_side`` is the aggressor's side (1 buy, 2 sell); ``cmd_seq`` the
    sequence number of the command that caused it; ``symbol_seq`` the trade's
    number within its symbol (1, 2, ... gap-free per order book), which lets a
    downstream consumer of one symbol detect a missing trade."""

    kind: int
    match_id: int
    ts_ns: int
    symbol: str
    price: int
    qty: int
    taker_side: int
    maker_order_id: int
    taker_order_id: int
    maker_account: int
    taker_account: int
    cmd_seq: int
    symbol_seq: int


class OrderRejected(NamedTuple):
    """The command at ``cmd_seq`` was refused; the state did not change.
    ``order_id`` is the order's id, or a refused deposit's or withdrawal's
    ``transfer_id`` (``None`` when the command had no valid one).
    ``reason`` is a :class:`~engine.core.types.RejectReason` code, ``detail``
    a short human text."""

    kind: int
    cmd_seq: int
    order_id: object
    reason: int
    detail: str


class OrderRested(NamedTuple):
    """The order (or what is left of it) now rests on the book."""

    kind: int
    order_id: int
    side: int
    price: int
    leaves_qty: int


class OrderCancelled(NamedTuple):
    """``cancelled_qty`` lots of the order left (or never reached) the book.
    ``reason`` is a :class:`~engine.core.types.CancelReason` code."""

    kind: int
    order_id: int
    cancelled_qty: int
    reason: int


class OrderAmended(NamedTuple):
    """The amend was applied; ``priority_kept`` tells whether the order kept
    its place in the queue (same price, smaller quantity)."""

    kind: int
    order_id: int
    price: int
    leaves_qty: int
    priority_kept: bool


class SymbolAdded(NamedTuple):
    kind: int
    symbol: str
    tick_size: int


class AssetAdded(NamedTuple):
    kind: int
    asset: str
    scale: int


class TransferDone(NamedTuple):
    """A deposit or withdrawal was applied (``duplicate``: this command
    repeated an earlier one with the same ``transfer_id`` and body, and
    changed nothing). ``kind_of`` is the transfer's command kind (7 deposit,
    8 withdraw); ``available`` the account's available balance after it."""

    kind: int
    transfer_id: int
    kind_of: int
    account: int
    asset: str
    amount: int
    available: int
    duplicate: bool


class BalanceChanged(NamedTuple):
    """One change of one account's balance in one asset: the engine's ledger.

    ``ledger_seq`` numbers every change of the engine 1, 2, ... gap-free (in
    snapshots, so a replay numbers them the same); ``cmd_seq`` is the command
    that caused it. ``available_delta`` / ``held_delta`` are the changes
    (asset units, signed) and ``available`` / ``held`` the balances after it.
    ``reason`` is a :class:`~engine.core.types.LedgerReason`; ``ref`` the
    transfer_id (deposit, withdrawal), the order_id (hold, release) or the
    match_id (fill, fee). Per asset, the changes of one trade sum to zero.
    Derived again by replay; never logged.
    """

    kind: int
    ledger_seq: int
    cmd_seq: int
    account: int
    asset: str
    available_delta: int
    held_delta: int
    available: int
    held: int
    reason: int
    ref: int


Event = Union[Trade, OrderRejected, OrderRested, OrderCancelled, OrderAmended, SymbolAdded, AssetAdded,
              TransferDone, BalanceChanged]

LOGGED_KINDS = frozenset({Kind.TRADE.value, Kind.REJECTED.value})

EVENT_CLASSES = {
    Kind.TRADE.value: Trade,
    Kind.REJECTED.value: OrderRejected,
    Kind.RESTED.value: OrderRested,
    Kind.CANCELLED.value: OrderCancelled,
    Kind.AMENDED.value: OrderAmended,
    Kind.SYMBOL_ADDED.value: SymbolAdded,
    Kind.ASSET_ADDED.value: AssetAdded,
    Kind.TRANSFER_DONE.value: TransferDone,
    Kind.BALANCE_CHANGED.value: BalanceChanged,
}
