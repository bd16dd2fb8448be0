"""One price level: the FIFO queue of resting orders at one price."""

from __future__ import annotations

from collections import deque
from typing import Iterator

from ._mypyc import mypyc_attr

__all__ = ["RestingOrder", "PriceLevel"]


@mypyc_attr(serializable=True, allow_interpreted_subclasses=True)   # copy and pickle when compiled
class RestingOrder:
    """An order on the book. ``qty`` is its leaves quantity in lots; 0 marks an
    order that has left the book but still sits in its level's queue (lazy
    removal: a cancel is O(1), the matcher drops such entries when they reach
    the head)."""

    __slots__ = ("order_id", "side", "price", "qty", "account")

    def __init__(self, order_id: int, side: int, price: int, qty: int, account: int) -> None:
        self.order_id = order_id
        self.side = side
        self.price = price
        self.qty = qty
        self.account = account

    def __repr__(self) -> str:
        return f"RestingOrder(id={self.order_id}, side={self.side}, price={self.price}, qty={self.qty})"


@mypyc_attr(serializable=True, allow_interpreted_subclasses=True)   # copy and pickle when compiled
class PriceLevel:
    """Resting orders at one ``price``, oldest first.

    ``qty`` is the sum of live orders' leaves (lots) and ``count`` their
    number; both are kept exact on every change so depth queries are O(1).
    The queue may also hold removed orders (``qty == 0``) until they reach
    the head: iterate with :meth:`live` to see only live orders.
    """

    __slots__ = ("price", "queue", "qty", "count")

    def __init__(self, price: int) -> None:
        self.price = price
        self.queue: deque[RestingOrder] = deque()
        self.qty = 0
        self.count = 0

    def live(self) -> Iterator[RestingOrder]:
        """Live orders in time priority. Complexity: O(len(queue))."""
        for order in self.queue:
            if order.qty:
                yield order

    def __repr__(self) -> str:
        return f"PriceLevel(price={self.price}, qty={self.qty}, count={self.count})"
