"""The order book of one symbol: bids and asks as price levels.

Bids and asks are each a ``SortedList`` of prices (ascending) plus a dict
price -> :class:`PriceLevel`; the best bid is the last bid price, the best ask
the first ask price. Resting orders are indexed by ``order_id`` for O(1)
cancel and amend. Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Final, Iterator, Optional

from sortedcontainers import SortedList

from ._mypyc import mypyc_attr
from .errors import BookIntegrityError
from .events import Trade
from .price_level import PriceLevel, RestingOrder
from .types import BUY, Kind

__all__ = ["OrderBook"]

_TRADE: Final = Kind.TRADE.value
# NamedTuple instances built without their Python-level __new__ (a frame per
# trade saved); the field order is the class's.
_new: Final = tuple.__new__


@mypyc_attr(serializable=True, allow_interpreted_subclasses=True)   # copy and pickle when compiled
class OrderBook:
    """Bids and asks of one symbol, in price-time priority.

    Args:
        symbol: the instrument's name.
        tick_size: smallest price step, in price units (> 0).
        spec: a :class:`~engine.core.accounts.SymbolSpec` (assets, lot and
            tick values, fees, risk) or ``None``.

    Attributes:
        orders: ``order_id -> RestingOrder`` for every live resting order.
    """

    __slots__ = ("symbol", "tick_size", "bid_prices", "ask_prices", "bid_levels",
                 "ask_levels", "orders", "top_bid", "top_ask", "trade_count", "spec", "risk")

    def __init__(self, symbol: str, tick_size: int = 1, spec: Any = None) -> None:
        self.symbol = symbol
        self.tick_size = tick_size
        # What a tick and a lot are worth, fees, risk (engine.core.accounts.SymbolSpec);
        # None for a book of market data. ``risk`` is read on every order.
        self.spec = spec
        self.risk = bool(spec is not None and spec.risk)
        self.trade_count = 0   # symbol_seq of the book's last trade
        self.bid_prices = SortedList()
        self.ask_prices = SortedList()
        self.bid_levels: dict[int, PriceLevel] = {}
        self.ask_levels: dict[int, PriceLevel] = {}
        self.orders: dict[int, RestingOrder] = {}
        # Best prices, cached: read on every order, changed only when a level
        # at the top appears or empties.
        self.top_bid: Optional[int] = None
        self.top_ask: Optional[int] = None

    # ---------------------------------------------------------------- queries
    def best_bid(self) -> Optional[int]:
        """Highest bid price, or ``None`` if there are no bids. Complexity: O(1)."""
        return self.top_bid

    def best_ask(self) -> Optional[int]:
        """Lowest ask price, or ``None`` if there are no asks. Complexity: O(1)."""
        return self.top_ask

    def levels(self, side: int) -> Iterator[PriceLevel]:
        """Price levels of ``side`` (1 bids, 2 asks), best first."""
        if side == BUY:
            levels = self.bid_levels
            for price in reversed(self.bid_prices):
                yield levels[price]
        else:
            levels = self.ask_levels
            for price in self.ask_prices:
                yield levels[price]

    def depth(self, side: int, max_levels: Optional[int] = None) -> list[list[int]]:
        """``[[price, qty], ...]`` of ``side``, best first, at most ``max_levels``."""
        out: list[list[int]] = []
        for level in self.levels(side):
            if max_levels is not None and len(out) >= max_levels:
                break
            out.append([level.price, level.qty])
        return out

    def fillable(self, taker_side: int, limit: Optional[int], qty: int) -> bool:
        """Whether ``qty`` lots could fill now against the opposite side at
        prices no worse than ``limit`` (``None``: any price). For FOK.
        Complexity: O(levels walked)."""
        need = qty
        if taker_side == BUY:
            levels = self.ask_levels
            for price in self.ask_prices:
                if limit is not None and price > limit:
                    return False
                need -= levels[price].qty
                if need <= 0:
                    return True
        else:
            levels = self.bid_levels
            for price in reversed(self.bid_prices):
                if limit is not None and price < limit:
                    return False
                need -= levels[price].qty
                if need <= 0:
                    return True
        return False

    def crosses(self, taker_side: int, price: int) -> bool:
        """Whether a limit order at ``price`` would trade on arrival."""
        if taker_side == BUY:
            return self.top_ask is not None and self.top_ask <= price
        return self.top_bid is not None and self.top_bid >= price

    # -------------------------------------------------------------- mutations
    def rest(self, order: RestingOrder) -> None:
        """Append ``order`` to the tail of its price level (last in time priority).
        Complexity: O(log L) for a new level, O(1) otherwise."""
        price = order.price
        if order.side == BUY:
            levels, prices = self.bid_levels, self.bid_prices
        else:
            levels, prices = self.ask_levels, self.ask_prices
        level = levels.get(price)
        if level is None:
            level = levels[price] = PriceLevel(price)
            prices.add(price)
            if order.side == BUY:
                if self.top_bid is None or price > self.top_bid:
                    self.top_bid = price
            elif self.top_ask is None or price < self.top_ask:
                self.top_ask = price
        level.queue.append(order)
        level.qty += order.qty
        level.count += 1
        self.orders[order.order_id] = order

    def load_orders(self, orders: list) -> None:
        """Rest ``[order_id, side, price, qty, account]`` rows (as
        :meth:`export_orders` gives them) on this empty book, in that order:
        the same book as :meth:`rest` one by one, built in bulk (levels and
        price lists made once). Complexity: O(orders + L log L).

        Raises:
            BookIntegrityError: the book is not empty.
        """
        if self.orders or self.bid_levels or self.ask_levels:
            raise BookIntegrityError(self.symbol, "load_orders needs an empty book")
        index = self.orders
        bids: dict[int, PriceLevel] = {}
        asks: dict[int, PriceLevel] = {}
        for order_id, side, price, qty, account in orders:
            order = RestingOrder(order_id, side, price, qty, account)
            levels = bids if side == BUY else asks
            level = levels.get(price)
            if level is None:
                level = levels[price] = PriceLevel(price)
            level.queue.append(order)
            level.qty += qty
            level.count += 1
            index[order_id] = order
        self.bid_levels, self.ask_levels = bids, asks
        self.bid_prices = SortedList(bids)
        self.ask_prices = SortedList(asks)
        self.top_bid = self.bid_prices[-1] if bids else None
        self.top_ask = self.ask_prices[0] if asks else None

    def remove(self, order: RestingOrder) -> None:
        """Take a live ``order`` off the book. Complexity: O(1) amortised, O(log L)
        when its level empties."""
        price = order.price
        if order.side == BUY:
            levels, prices = self.bid_levels, self.bid_prices
        else:
            levels, prices = self.ask_levels, self.ask_prices
        level = levels[price]
        level.qty -= order.qty
        level.count -= 1
        order.qty = 0
        del self.orders[order.order_id]
        if not level.count:
            del levels[price]
            prices.remove(price)
            if order.side == BUY:
                if price == self.top_bid:
                    self.top_bid = prices[-1] if prices else None
            elif price == self.top_ask:
                self.top_ask = prices[0] if prices else None
        elif len(level.queue) > 2 * level.count + 32:
            level.queue = deque(o for o in level.queue if o.qty)

    def reduce(self, order: RestingOrder, new_qty: int) -> None:
        """Lower a live order's leaves to ``0 < new_qty < order.qty`` in place,
        keeping its time priority."""
        levels = self.bid_levels if order.side == BUY else self.ask_levels
        levels[order.price].qty -= order.qty - new_qty
        order.qty = new_qty

    def match(self, taker_side: int, limit: Optional[int], qty: int, taker_id: int,
              taker_account: int, ts_ns: int, cmd_seq: int, match_id: int,
              out: list) -> tuple[int, int]:
        """Fill a taker against the opposite side, best price first, oldest first.

        Args:
            taker_side: 1 buy (takes asks) or 2 sell (takes bids).
            limit: worst acceptable price (price units), ``None`` for a market order.
            qty: lots to fill (> 0).
            match_id: the last ``match_id`` issued; each trade takes the next.
            out: list the :class:`Trade` events are appended to.

        Returns:
            ``(leaves_qty, last_match_id)``.

        Complexity: O(F + D + E log L): F fills, D removed orders skipped at a
        queue head, E levels emptied.
        Source: price-time (FIFO) priority, as on Nasdaq and CME outrights.
        """
        symbol = self.symbol
        orders = self.orders
        symbol_seq = self.trade_count
        if taker_side == BUY:
            prices, levels, head, best = self.ask_prices, self.ask_levels, 0, self.top_ask
        else:
            prices, levels, head, best = self.bid_prices, self.bid_levels, -1, self.top_bid
        while qty and best is not None:
            price = best
            if limit is not None and (price > limit if head == 0 else price < limit):
                break
            level = levels[price]
            queue = level.queue
            while qty:
                maker = queue[0]
                maker_qty = maker.qty
                if not maker_qty:
                    queue.popleft()
                    continue
                match_id += 1
                symbol_seq += 1
                if maker_qty <= qty:
                    fill = maker_qty
                    maker.qty = 0
                    queue.popleft()
                    del orders[maker.order_id]
                    level.count -= 1
                else:
                    fill = qty
                    maker.qty = maker_qty - qty
                level.qty -= fill
                qty -= fill
                out.append(_new(Trade, (_TRADE, match_id, ts_ns, symbol, price, fill, taker_side,
                                        maker.order_id, taker_id, maker.account, taker_account, cmd_seq,
                                        symbol_seq)))
                if not level.count:
                    del levels[price]
                    prices.pop(head)
                    best = prices[head] if prices else None
                    break
        if head == 0:
            self.top_ask = best
        else:
            self.top_bid = best
        self.trade_count = symbol_seq
        return qty, match_id

    # ------------------------------------------------------------- integrity
    def check_invariants(self) -> None:
        """Verify every structural invariant; raise :class:`BookIntegrityError`.

        Prices sorted and equal to the level keys; each level's ``qty`` and
        ``count`` equal its live orders; every live order is indexed and sits
        on its own side and price; the book is not crossed.
        Complexity: O(orders in queues).
        """
        seen: set[int] = set()
        for side, prices, levels in ((BUY, self.bid_prices, self.bid_levels),
                                     (2, self.ask_prices, self.ask_levels)):
            if list(prices) != sorted(levels):
                raise BookIntegrityError(self.symbol, f"side {side}: prices {list(prices)} != levels {sorted(levels)}")
            for price, level in levels.items():
                live = list(level.live())
                if level.price != price or not live:
                    raise BookIntegrityError(self.symbol, f"level {price} is empty or mislabelled")
                if level.count != len(live) or level.qty != sum(o.qty for o in live):
                    raise BookIntegrityError(self.symbol, f"level {price}: count/qty {level.count}/{level.qty} disagree with its orders")
                for o in live:
                    if o.side != side or o.price != price or o.qty < 0:
                        raise BookIntegrityError(self.symbol, f"order {o.order_id} misplaced at {side}/{price}")
                    if self.orders.get(o.order_id) is not o or o.order_id in seen:
                        raise BookIntegrityError(self.symbol, f"order {o.order_id} not indexed or duplicated")
                    seen.add(o.order_id)
        if len(seen) != len(self.orders):
            raise BookIntegrityError(self.symbol, "order index holds orders that are not on the book")
        if self.top_bid != (self.bid_prices[-1] if self.bid_prices else None) or \
                self.top_ask != (self.ask_prices[0] if self.ask_prices else None):
            raise BookIntegrityError(self.symbol, f"cached best prices {self.top_bid}/{self.top_ask} are stale")
        bid, ask = self.best_bid(), self.best_ask()
        if bid is not None and ask is not None and bid >= ask:
            raise BookIntegrityError(self.symbol, f"crossed book: bid {bid} >= ask {ask}")

    # ------------------------------------------------------------ state I/O
    def export_orders(self) -> list[list[int]]:
        """Every live order as ``[order_id, side, price, qty, account]``: bids then
        asks, each best price first, oldest first. Re-resting them in this order
        restores the book exactly, time priority included."""
        return [[o.order_id, o.side, o.price, o.qty, o.account]
                for side in (BUY, 2) for level in self.levels(side) for o in level.live()]

    def __repr__(self) -> str:
        return f"OrderBook({self.symbol!r}, bid={self.best_bid()}, ask={self.best_ask()}, orders={len(self.orders)})"
