"""A reference model of the matcher: slow, plain and obviously correct.

Every symbol's resting orders sit in one Python list; each order carries an
``arrival`` number taken from one counter, and the best maker is found by a
linear scan (best price first, then lowest ``arrival``). No sortedcontainers,
no lazy removal, no cached level totals: depth is summed on demand. The
property tests drive this model and :class:`engine.core.Matcher` with the same
commands and compare everything they say.

The semantics mirrored (``engine/core/matcher.py``, ``commands.py``,
DESIGN.md "order types"):

* Every command takes one sequence number; each trade and each reject it
  causes takes one more (``last_seq``).
* Validation, in the matcher's order, each failure one reject with a reason
  (see :meth:`RefEngine._place`); a rejected command changes nothing but
  ``last_seq`` and the source position.
* A trade is at the maker's price; ``match_id`` +1 per trade, one counter
  for all symbols.
* Limit GTC rests its leaves; IOC cancels them (``IOC_REMAINDER``); a market
  order (IOC or FOK only) cancels them with ``NO_LIQUIDITY``.
* FOK: filled whole if the opposite side holds ``qty`` at acceptable prices,
  else cancelled whole (``FOK_UNFILLED``) with no trade and no reject.
* Post-only: a GTC limit only; rejected if it would trade on arrival.
* Amend: ``qty`` is the new leaves. Same price and ``qty`` not larger keeps
  the order's place; anything else takes it off and enters it again as a new
  GTC limit (new arrival), which may trade.
* Order ids are unique among the live orders of one symbol.

Event tuples (what :func:`event_key` makes of an engine event)::

    ("trade", match_id, ts_ns, symbol, price, qty, taker_side,
              maker_order_id, taker_order_id, maker_account, taker_account, cmd_seq, symbol_seq)
    ("rejected", cmd_seq, order_id_or_None, reason)
    ("rested", order_id, side, price, leaves_qty)
    ("cancelled", order_id, cancelled_qty, cancel_reason)
    ("amended", order_id, price, leaves_qty, priority_kept)
    ("symbol_added", symbol, tick_size)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from engine.core import CancelReason, Kind, RejectReason

__all__ = ["RefEngine", "RefOrder", "event_key", "trade_key"]

BUY, SELL = 1, 2
LIMIT, MARKET = 1, 2
GTC, IOC, FOK = 1, 2, 3
MAX_PRICE = 10**12
MAX_QTY = 10**15
MAX_ID = 2**63 - 1
R = RejectReason


def _int(value: Any) -> bool:
    """An int and not a bool (``True == 1`` must not pass for an id or a side)."""
    return type(value) is int


def _int_in(value: Any, low: int, high: int) -> bool:
    return _int(value) and low <= value <= high


@dataclass
class RefOrder:
    order_id: int
    side: int
    price: int
    qty: int
    account: int
    arrival: int


@dataclass
class RefSymbol:
    tick_size: int
    orders: list = field(default_factory=list)   # RefOrder, in no particular order
    trades: int = 0                                # the symbol's trades so far (symbol_seq)

    def find(self, order_id: Any) -> Optional[RefOrder]:
        for order in self.orders:
            if order.order_id == order_id and _int(order_id):
                return order
        return None

    def makers(self, taker_side: int, limit: Optional[int]) -> list:
        """Opposite-side orders at prices the taker accepts, in priority order."""
        if taker_side == BUY:
            ok = [o for o in self.orders if o.side == SELL and (limit is None or o.price <= limit)]
            return sorted(ok, key=lambda o: (o.price, o.arrival))
        ok = [o for o in self.orders if o.side == BUY and (limit is None or o.price >= limit)]
        return sorted(ok, key=lambda o: (-o.price, o.arrival))

    def depth(self, side: int) -> list:
        """``[[price, qty], ...]`` of ``side``, best price first."""
        totals: dict = {}
        for order in self.orders:
            if order.side == side:
                totals[order.price] = totals.get(order.price, 0) + order.qty
        prices = sorted(totals, reverse=(side == BUY))
        return [[p, totals[p]] for p in prices]

    def export_orders(self) -> list:
        """``[order_id, side, price, qty, account]``: bids then asks, best price
        first, oldest first (the engine's ``OrderBook.export_orders`` order)."""
        bids = sorted((o for o in self.orders if o.side == BUY), key=lambda o: (-o.price, o.arrival))
        asks = sorted((o for o in self.orders if o.side == SELL), key=lambda o: (o.price, o.arrival))
        return [[o.order_id, o.side, o.price, o.qty, o.account] for o in bids + asks]


class RefEngine:
    """All symbols, ``match_id`` and ``last_seq``; :meth:`apply` one command at a time."""

    def __init__(self) -> None:
        self.symbols: dict = {}
        self.last_seq = 0
        self.match_id = 0
        self.arrivals = 0
        self.positions: dict = {}

    # ------------------------------------------------------------------ apply
    def apply(self, cmd: tuple) -> list:
        """Apply ``cmd`` as sequence number ``last_seq + 1``; return event tuples."""
        seq = self.last_seq + 1
        out: list = []
        kind = cmd[0]
        expected_len = {Kind.ADD_SYMBOL: 6, Kind.PLACE: 13, Kind.CANCEL: 6,
                        Kind.AMEND: 8, Kind.BAD_INPUT: 6}
        if not _int(kind) or kind not in expected_len or len(cmd) != expected_len[kind]:
            out.append(("rejected", seq, None, R.MALFORMED))
        else:
            ts_ns, source, source_pos = cmd[1], cmd[-2], cmd[-1]
            if not _int_in(ts_ns, 0, MAX_ID) or not (source is None or type(source) is str) \
                    or not (source_pos is None or _int_in(source_pos, 0, MAX_ID)):
                out.append(("rejected", seq, None, R.MALFORMED))
            else:
                if kind == Kind.PLACE:
                    self._place(seq, cmd, out)
                elif kind == Kind.CANCEL:
                    self._cancel(seq, cmd, out)
                elif kind == Kind.AMEND:
                    self._amend(seq, cmd, out)
                elif kind == Kind.ADD_SYMBOL:
                    self._add_symbol(seq, cmd, out)
                else:
                    out.append(("rejected", seq, None, R.MALFORMED))
                if source is not None:
                    self.positions[source] = source_pos
        numbered = sum(1 for e in out if e[0] in ("trade", "rejected"))
        self.last_seq = seq + numbered
        return out

    # --------------------------------------------------------------- helpers
    def _reject(self, seq: int, order_id: Any, reason: RejectReason, out: list) -> None:
        # The reject carries the order id only if the WAL can encode it (msgpack: -2**63 .. 2**64-1).
        out.append(("rejected", seq, order_id if _int(order_id) and -2**63 <= order_id < 2**64 else None, reason))

    def _symbol(self, seq: int, symbol: Any, order_id: Any, out: list) -> Optional[RefSymbol]:
        if type(symbol) is not str:
            self._reject(seq, order_id, R.INVALID_SYMBOL, out)
            return None
        book = self.symbols.get(symbol)
        if book is None:
            self._reject(seq, order_id, R.UNKNOWN_SYMBOL, out)
        return book

    def _next_arrival(self) -> int:
        self.arrivals += 1
        return self.arrivals

    # ------------------------------------------------------------- commands
    def _add_symbol(self, seq: int, cmd: tuple, out: list) -> None:
        _, _ts, symbol, tick_size, _src, _pos = cmd
        if type(symbol) is not str or not 1 <= len(symbol) <= 32:
            return self._reject(seq, None, R.INVALID_SYMBOL, out)
        if not _int_in(tick_size, 1, MAX_PRICE):
            return self._reject(seq, None, R.INVALID_TICK_SIZE, out)
        if symbol in self.symbols:
            return self._reject(seq, None, R.SYMBOL_EXISTS, out)
        self.symbols[symbol] = RefSymbol(tick_size)
        out.append(("symbol_added", symbol, tick_size))

    def _place(self, seq: int, cmd: tuple, out: list) -> None:
        (_, ts_ns, symbol, order_id, side, order_type, tif, price, qty, post_only, account,
         _src, _pos) = cmd
        book = self._symbol(seq, symbol, order_id, out)
        if book is None:
            return
        if not _int_in(order_id, 1, MAX_ID):
            return self._reject(seq, order_id, R.INVALID_ORDER_ID, out)
        if not (_int(side) and side in (BUY, SELL)):
            return self._reject(seq, order_id, R.INVALID_SIDE, out)
        if not _int_in(qty, 1, MAX_QTY):
            return self._reject(seq, order_id, R.INVALID_QTY, out)
        if type(post_only) is not bool or not _int_in(account, 0, MAX_ID):
            return self._reject(seq, order_id, R.MALFORMED, out)
        if not (_int(tif) and tif in (GTC, IOC, FOK)):
            return self._reject(seq, order_id, R.INVALID_TIF, out)
        if _int(order_type) and order_type == LIMIT:
            if not _int_in(price, 1, MAX_PRICE):
                return self._reject(seq, order_id, R.INVALID_PRICE, out)
            if price % book.tick_size != 0:
                return self._reject(seq, order_id, R.PRICE_OFF_TICK, out)
            limit: Optional[int] = price
        elif _int(order_type) and order_type == MARKET:
            if tif == GTC:
                return self._reject(seq, order_id, R.INVALID_TIF, out)
            limit = None      # the price field of a market order is ignored
        else:
            return self._reject(seq, order_id, R.INVALID_ORDER_TYPE, out)
        if post_only:
            if tif != GTC or limit is None:
                return self._reject(seq, order_id, R.INVALID_FLAGS, out)
            if book.makers(side, limit):
                return self._reject(seq, order_id, R.POST_ONLY_WOULD_TAKE, out)
        if book.find(order_id) is not None:
            return self._reject(seq, order_id, R.DUPLICATE_ORDER_ID, out)
        if tif == FOK and sum(o.qty for o in book.makers(side, limit)) < qty:
            out.append(("cancelled", order_id, qty, CancelReason.FOK_UNFILLED))
            return
        self._enter(seq, symbol, book, ts_ns, order_id, side, limit, qty, tif, account, out)

    def _enter(self, seq: int, symbol: str, book: RefSymbol, ts_ns: int, order_id: int,
               side: int, limit: Optional[int], qty: int, tif: int, account: int,
               out: list) -> None:
        leaves = qty
        while leaves > 0:
            makers = book.makers(side, limit)
            if not makers:
                break
            maker = makers[0]
            fill = min(maker.qty, leaves)
            self.match_id += 1
            book.trades += 1
            out.append(("trade", self.match_id, ts_ns, symbol, maker.price, fill, side,
                        maker.order_id, order_id, maker.account, account, seq, book.trades))
            maker.qty -= fill
            leaves -= fill
            if maker.qty == 0:
                book.orders.remove(maker)
        if leaves == 0:
            return
        if tif == GTC:
            book.orders.append(RefOrder(order_id, side, limit, leaves, account, self._next_arrival()))
            out.append(("rested", order_id, side, limit, leaves))
        elif limit is None:
            out.append(("cancelled", order_id, leaves, CancelReason.NO_LIQUIDITY))
        else:
            out.append(("cancelled", order_id, leaves, CancelReason.IOC_REMAINDER))

    def _cancel(self, seq: int, cmd: tuple, out: list) -> None:
        _, _ts, symbol, order_id, _src, _pos = cmd
        book = self._symbol(seq, symbol, order_id, out)
        if book is None:
            return
        order = book.find(order_id)
        if order is None:
            return self._reject(seq, order_id, R.UNKNOWN_ORDER, out)
        book.orders.remove(order)
        out.append(("cancelled", order_id, order.qty, CancelReason.USER))

    def _amend(self, seq: int, cmd: tuple, out: list) -> None:
        _, ts_ns, symbol, order_id, price, qty, _src, _pos = cmd
        book = self._symbol(seq, symbol, order_id, out)
        if book is None:
            return
        order = book.find(order_id)
        if order is None:
            return self._reject(seq, order_id, R.UNKNOWN_ORDER, out)
        if not _int_in(qty, 1, MAX_QTY):
            return self._reject(seq, order_id, R.INVALID_QTY, out)
        if not _int_in(price, 1, MAX_PRICE):
            return self._reject(seq, order_id, R.INVALID_PRICE, out)
        if price % book.tick_size != 0:
            return self._reject(seq, order_id, R.PRICE_OFF_TICK, out)
        if price == order.price and qty <= order.qty:
            order.qty = qty                                  # arrival unchanged
            out.append(("amended", order_id, price, qty, True))
            return
        book.orders.remove(order)
        out.append(("amended", order_id, price, qty, False))
        self._enter(seq, symbol, book, ts_ns, order_id, order.side, price, qty, GTC,
                    order.account, out)

    # ---------------------------------------------------------------- views
    def depth(self, symbol: str, side: int) -> list:
        return self.symbols[symbol].depth(side)

    def export_orders(self, symbol: str) -> list:
        return self.symbols[symbol].export_orders()


# ------------------------------------------------------------ engine -> tuples
def trade_key(trade: Any) -> tuple:
    """An engine :class:`~engine.core.Trade` as the reference's trade tuple."""
    return ("trade",) + tuple(trade[1:])


def event_key(event: Any) -> tuple:
    """Any engine event as the reference's event tuple (``detail`` text dropped)."""
    kind = event[0]
    if kind == Kind.TRADE:
        return trade_key(event)
    if kind == Kind.REJECTED:
        return ("rejected", event.cmd_seq, event.order_id, event.reason)
    if kind == Kind.RESTED:
        return ("rested", event.order_id, event.side, event.price, event.leaves_qty)
    if kind == Kind.CANCELLED:
        return ("cancelled", event.order_id, event.cancelled_qty, event.reason)
    if kind == Kind.AMENDED:
        return ("amended", event.order_id, event.price, event.leaves_qty, event.priority_kept)
    if kind == Kind.SYMBOL_ADDED:
        return ("symbol_added", event.symbol, event.tick_size)
    raise AssertionError(f"unknown event kind {kind!r}: {event!r}")
