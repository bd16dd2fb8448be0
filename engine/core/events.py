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
           "SymbolAdded", "Event", "LOGGED_KINDS", "EVENT_CLASSES"]


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


Event = Union[Trade, OrderRejected, OrderRested, OrderCancelled, OrderAmended, SymbolAdded]

LOGGED_KINDS = frozenset({Kind.TRADE.value, Kind.REJECTED.value})

EVENT_CLASSES = {
    Kind.TRADE.value: Trade,
    Kind.REJECTED.value: OrderRejected,
    Kind.RESTED.value: OrderRested,
    Kind.CANCELLED.value: OrderCancelled,
    Kind.AMENDED.value: OrderAmended,
    Kind.SYMBOL_ADDED.value: SymbolAdded,
}
