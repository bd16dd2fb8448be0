"""The matcher: applies sequenced commands to the order books.

Deterministic by construction: it reads nothing but the commands (no clock,
no randomness), iterates only ordered structures, and numbers every trade
from one gap-free ``match_sequence``. Replaying the same commands gives the
same books, the same trades and the same :meth:`Matcher.state_hash`.
"""

from __future__ import annotations

import hashlib
from collections import deque
from typing import Any, Optional

import msgpack

from .commands import COMMAND_CLASSES, Command
from .errors import SequenceGapError
from .events import (OrderAmended, OrderCancelled, OrderRejected, OrderRested, SymbolAdded,
                     Trade)
from .order_book import OrderBook
from .price_level import RestingOrder
from .types import (MAX_ORDER_ID, MAX_PRICE, MAX_QTY, CancelReason, Kind, RejectReason)

__all__ = ["Matcher"]

_PLACE = Kind.PLACE.value
_CANCEL = Kind.CANCEL.value
_AMEND = Kind.AMEND.value
_ADD_SYMBOL = Kind.ADD_SYMBOL.value
_BAD_INPUT = Kind.BAD_INPUT.value
_REJECTED = Kind.REJECTED.value
_RESTED = Kind.RESTED.value
_CANCELLED = Kind.CANCELLED.value
_AMENDED = Kind.AMENDED.value
_TRADE = Kind.TRADE.value
_LIMIT, _MARKET = 1, 2
_GTC, _IOC, _FOK = 1, 2, 3
_IOC_REMAINDER = CancelReason.IOC_REMAINDER.value
_NO_LIQUIDITY = CancelReason.NO_LIQUIDITY.value
_FOK_UNFILLED = CancelReason.FOK_UNFILLED.value
_USER = CancelReason.USER.value
R = RejectReason
_new = tuple.__new__  # builds a NamedTuple without its Python-level __new__ frame
_INT64_MAX = 2**63 - 1
_FIELD_COUNTS = {kind: len(cls._fields) for kind, cls in COMMAND_CLASSES.items()}


def _is_int(value: Any) -> bool:
    return type(value) is int


class Matcher:
    """All order books of one engine, ``match_sequence`` and the checkpoint.

    Args:
        trade_history: how many of the most recent trades to keep in memory
            (and in snapshots); the WAL keeps them all.

    Attributes:
        books: ``symbol -> OrderBook``.
        last_seq: sequence number of the last WAL event this state includes
            (a command and the trades/reject it caused each take one).
        match_sequence: ``match_id`` of the last trade (0 before any).
        positions: ``source -> source_pos`` of the last command applied from it.
        trades: the most recent trades, oldest first.
    """

    def __init__(self, trade_history: int = 10_000) -> None:
        self.books: dict[str, OrderBook] = {}
        self.last_seq = 0
        self.match_sequence = 0
        self.positions: dict[str, Any] = {}
        self.trades: deque[Trade] = deque(maxlen=trade_history)

    # ------------------------------------------------------------------ apply
    def apply(self, seq: int, cmd: Command) -> list:
        """Apply one sequenced command; return the events it caused.

        Args:
            seq: the command's WAL sequence number; must be ``last_seq + 1``.
            cmd: any command of :mod:`engine.core.commands`. Fields are
                validated here: prices in price units, qty in lots.

        Returns:
            For a place: a ``Trade`` per fill (``match_id`` +1 each), then
            ``OrderRested`` or ``OrderCancelled`` for any leaves; a cancel:
            ``OrderCancelled``; an amend: ``OrderAmended`` then as a place if
            it lost priority; an add-symbol: ``SymbolAdded``. A refused
            command gives one ``OrderRejected`` and changes nothing.
            Trades and rejects take the sequence numbers after ``seq``, in
            order; ``last_seq`` moves past them.

        Raises:
            SequenceGapError: ``seq`` is not ``last_seq + 1``.

        Complexity: O(log L + F) for L price levels and F fills.
        Source: DESIGN.md, order types; FIFO priority as Nasdaq and CME.
        """
        if seq != self.last_seq + 1:
            raise SequenceGapError(self.last_seq + 1, seq)
        out: list = []
        first_match = self.match_sequence
        kind = cmd[0]
        source = None
        if type(kind) is not int or _FIELD_COUNTS.get(kind) != len(cmd):
            out.append(OrderRejected(_REJECTED, seq, None, R.MALFORMED.value,
                                     f"unknown command kind {kind!r} or wrong field count"[:200]))
        else:
            # The envelope every command has: it reaches trades, positions and
            # snapshots, so it must be msgpack-encodable and hashable.
            ts_ns = cmd[1]
            source = cmd[-2]
            pos = cmd[-1]
            if not (type(ts_ns) is int and 0 <= ts_ns <= _INT64_MAX
                    and (source is None or type(source) is str)
                    and (pos is None or type(pos) is int and 0 <= pos <= _INT64_MAX)):
                source = None
                out.append(OrderRejected(_REJECTED, seq, None, R.MALFORMED.value,
                                         "ts_ns and source_pos must be integers in 0..2**63-1 (source_pos may "
                                         "be None) and source a string or None"))
            elif kind == _PLACE:
                self._place(seq, cmd, out)
            elif kind == _CANCEL:
                self._cancel(seq, cmd, out)
            elif kind == _AMEND:
                self._amend(seq, cmd, out)
            elif kind == _ADD_SYMBOL:
                self._add_symbol(seq, cmd, out)
            else:  # _BAD_INPUT: the field counts admit no other kind
                out.append(OrderRejected(_REJECTED, seq, None, R.MALFORMED.value, str(cmd[3])[:200]))
        trades = self.match_sequence - first_match
        if trades:
            self.trades.extend(out if len(out) == trades else [e for e in out if e[0] == _TRADE])
            self.last_seq = seq + trades
        elif out and out[0][0] == _REJECTED:
            self.last_seq = seq + 1
        else:
            self.last_seq = seq
        if source is not None:
            self.positions[source] = cmd[-1]
        return out

    # ----------------------------------------------------------------- place
    def _reject(self, seq: int, order_id: Any, reason: RejectReason, detail: str, out: list) -> None:
        out.append(OrderRejected(_REJECTED, seq, order_id if _is_int(order_id) and -2**63 <= order_id < 2**64 else None,
                                 int(reason), detail))

    def _book(self, seq: int, symbol: Any, order_id: Any, out: list) -> Optional[OrderBook]:
        if type(symbol) is not str:
            self._reject(seq, order_id, R.INVALID_SYMBOL, "symbol must be a string", out)
            return None
        book = self.books.get(symbol)
        if book is None:
            self._reject(seq, order_id, R.UNKNOWN_SYMBOL, f"unknown symbol {symbol[:32]!r}", out)
        return book

    def _place(self, seq: int, cmd: Any, out: list) -> None:
        (_, ts_ns, symbol, order_id, side, order_type, tif, price, qty, post_only, account,
         _src, _pos) = cmd
        book = self.books.get(symbol) if type(symbol) is str else None
        # Fast path: a well-formed limit order that is not post-only. Anything
        # else (or anything wrong) takes _place_checked, which checks field by
        # field in a fixed order to give the first reason.
        if (book is not None and type(order_id) is int and 0 < order_id <= MAX_ORDER_ID
                and type(side) is int and (side == 1 or side == 2)
                and type(qty) is int and 0 < qty <= MAX_QTY
                and post_only is False and type(account) is int and 0 <= account <= _INT64_MAX
                and type(tif) is int and 0 < tif < 4 and order_type == 1 and type(order_type) is int
                and type(price) is int and 0 < price <= MAX_PRICE and not price % book.tick_size
                and order_id not in book.orders):
            if tif == _FOK and not book.fillable(side, price, qty):
                out.append(OrderCancelled(_CANCELLED, order_id, qty, _FOK_UNFILLED))
                return
            self._enter(seq, book, ts_ns, order_id, side, price, qty, tif, account, out)
            return
        self._place_checked(seq, cmd, out)

    def _place_checked(self, seq: int, cmd: Any, out: list) -> None:
        (_, ts_ns, symbol, order_id, side, order_type, tif, price, qty, post_only, account,
         _src, _pos) = cmd
        book = self._book(seq, symbol, order_id, out)
        if book is None:
            return
        if not _is_int(order_id) or not 0 < order_id <= MAX_ORDER_ID:
            return self._reject(seq, order_id, R.INVALID_ORDER_ID, "order_id must be an integer in 1..2**63-1", out)
        if side != 1 and side != 2 or not _is_int(side):
            return self._reject(seq, order_id, R.INVALID_SIDE, "side must be 1 (buy) or 2 (sell)", out)
        if not _is_int(qty) or not 0 < qty <= MAX_QTY:
            return self._reject(seq, order_id, R.INVALID_QTY, f"qty must be an integer in 1..{MAX_QTY} lots", out)
        if type(post_only) is not bool or not _is_int(account) or not 0 <= account <= _INT64_MAX:
            return self._reject(seq, order_id, R.MALFORMED, "post_only must be a bool and account an integer in 0..2**63-1", out)
        if not _is_int(tif) or tif not in (1, 2, 3):
            return self._reject(seq, order_id, R.INVALID_TIF, "tif must be 1 (GTC), 2 (IOC) or 3 (FOK)", out)
        if order_type == _LIMIT and _is_int(order_type):
            if not _is_int(price) or not 0 < price <= MAX_PRICE:
                return self._reject(seq, order_id, R.INVALID_PRICE, f"limit price must be an integer in 1..{MAX_PRICE}", out)
            if price % book.tick_size:
                return self._reject(seq, order_id, R.PRICE_OFF_TICK, f"price {price} is not a multiple of tick size {book.tick_size}", out)
            limit: Optional[int] = price
        elif order_type == _MARKET and _is_int(order_type):
            if tif == _GTC:
                return self._reject(seq, order_id, R.INVALID_TIF, "a market order must be IOC or FOK", out)
            limit = None
        else:
            return self._reject(seq, order_id, R.INVALID_ORDER_TYPE, "order_type must be 1 (limit) or 2 (market)", out)
        if post_only:
            if tif != _GTC or limit is None:
                return self._reject(seq, order_id, R.INVALID_FLAGS, "post-only needs a GTC limit order", out)
            if book.crosses(side, limit):
                return self._reject(seq, order_id, R.POST_ONLY_WOULD_TAKE, "post-only order would take liquidity", out)
        if order_id in book.orders:
            return self._reject(seq, order_id, R.DUPLICATE_ORDER_ID, f"order {order_id} is already on the book", out)
        if tif == _FOK and not book.fillable(side, limit, qty):
            out.append(OrderCancelled(_CANCELLED, order_id, qty, _FOK_UNFILLED))
            return
        self._enter(seq, book, ts_ns, order_id, side, limit, qty, tif, account, out)

    def _enter(self, seq: int, book: OrderBook, ts_ns: int, order_id: int, side: int,
               limit: Optional[int], qty: int, tif: int, account: int, out: list) -> None:
        # Most limit orders do not cross: check the cached best price first.
        if limit is None or (side == 1 and book.top_ask is not None and book.top_ask <= limit) or \
                (side == 2 and book.top_bid is not None and book.top_bid >= limit):
            leaves, self.match_sequence = book.match(side, limit, qty, order_id, account, ts_ns,
                                                     seq, self.match_sequence, out)
        else:
            leaves = qty
        if leaves:
            if tif == _GTC:
                book.rest(RestingOrder(order_id, side, limit, leaves, account))
                out.append(_new(OrderRested, (_RESTED, order_id, side, limit, leaves)))
            else:
                out.append(_new(OrderCancelled, (_CANCELLED, order_id, leaves,
                                                 _NO_LIQUIDITY if limit is None else _IOC_REMAINDER)))

    # ---------------------------------------------------------- cancel, amend
    def _cancel(self, seq: int, cmd: Any, out: list) -> None:
        _, _ts, symbol, order_id, _src, _pos = cmd
        book = self._book(seq, symbol, order_id, out)
        if book is None:
            return
        order = book.orders.get(order_id) if _is_int(order_id) else None
        if order is None:
            return self._reject(seq, order_id, R.UNKNOWN_ORDER, f"no resting order {order_id!r} in {symbol}", out)
        leaves = order.qty
        book.remove(order)
        out.append(OrderCancelled(_CANCELLED, order_id, leaves, _USER))

    def _amend(self, seq: int, cmd: Any, out: list) -> None:
        _, ts_ns, symbol, order_id, price, qty, _src, _pos = cmd
        book = self._book(seq, symbol, order_id, out)
        if book is None:
            return
        order = book.orders.get(order_id) if _is_int(order_id) else None
        if order is None:
            return self._reject(seq, order_id, R.UNKNOWN_ORDER, f"no resting order {order_id!r} in {symbol}", out)
        if not _is_int(qty) or not 0 < qty <= MAX_QTY:
            return self._reject(seq, order_id, R.INVALID_QTY, f"qty must be an integer in 1..{MAX_QTY} lots", out)
        if not _is_int(price) or not 0 < price <= MAX_PRICE:
            return self._reject(seq, order_id, R.INVALID_PRICE, f"price must be an integer in 1..{MAX_PRICE}", out)
        if price % book.tick_size:
            return self._reject(seq, order_id, R.PRICE_OFF_TICK, f"price {price} is not a multiple of tick size {book.tick_size}", out)
        if price == order.price and qty <= order.qty:
            if qty < order.qty:
                book.reduce(order, qty)
            out.append(OrderAmended(_AMENDED, order_id, price, qty, True))
            return
        side, account = order.side, order.account
        book.remove(order)
        out.append(OrderAmended(_AMENDED, order_id, price, qty, False))
        self._enter(seq, book, ts_ns, order_id, side, price, qty, _GTC, account, out)

    def _add_symbol(self, seq: int, cmd: Any, out: list) -> None:
        _, _ts, symbol, tick_size, _src, _pos = cmd
        if type(symbol) is not str or not 0 < len(symbol) <= 32:
            return self._reject(seq, None, R.INVALID_SYMBOL, "symbol must be a string of 1..32 characters", out)
        if not _is_int(tick_size) or not 0 < tick_size <= MAX_PRICE:
            return self._reject(seq, None, R.INVALID_TICK_SIZE, "tick_size must be a positive integer", out)
        if symbol in self.books:
            return self._reject(seq, None, R.SYMBOL_EXISTS, f"symbol {symbol!r} already has a book", out)
        self.books[symbol] = OrderBook(symbol, tick_size)
        out.append(SymbolAdded(Kind.SYMBOL_ADDED.value, symbol, tick_size))

    # ------------------------------------------------------------ state, hash
    def check_invariants(self) -> None:
        """Run :meth:`OrderBook.check_invariants` on every book."""
        for book in self.books.values():
            book.check_invariants()

    def export_state(self) -> dict:
        """The whole state as plain msgpack-able data (for snapshots)::

            {"last_seq": int, "match_sequence": int, "positions": {source: pos},
             "books": [[symbol, tick_size, [[order_id, side, price, qty, account], ...],
                        trade_count], ...],
             "trades": [[...Trade fields...], ...]}
        """
        return {
            "last_seq": self.last_seq,
            "match_sequence": self.match_sequence,
            "positions": dict(self.positions),
            "books": [[s, b.tick_size, b.export_orders(), b.trade_count] for s, b in sorted(self.books.items())],
            "trades": [list(t) for t in self.trades],
        }

    @classmethod
    def from_state(cls, state: dict, trade_history: int = 10_000) -> "Matcher":
        """Rebuild a matcher from :meth:`export_state` output.

        Raises:
            BookIntegrityError: the state does not form valid books.
        """
        m = cls(trade_history)
        m.last_seq = state["last_seq"]
        m.match_sequence = state["match_sequence"]
        m.positions = dict(state["positions"])
        for symbol, tick_size, orders, trade_count in state["books"]:
            book = m.books[symbol] = OrderBook(symbol, tick_size)
            book.trade_count = trade_count
            for order_id, side, price, qty, account in orders:
                book.rest(RestingOrder(order_id, side, price, qty, account))
        m.trades.extend(Trade(*t) for t in state["trades"])
        m.check_invariants()
        return m

    def state_hash(self) -> str:
        """SHA-256 (hex) over ``last_seq``, ``match_sequence`` and every book's
        resting orders in priority order. Equal hashes mean equal books,
        time priority included. Complexity: O(orders)."""
        h = hashlib.sha256()
        packer = msgpack.Packer()
        h.update(packer.pack([self.last_seq, self.match_sequence]))
        for symbol in sorted(self.books):
            book = self.books[symbol]
            h.update(packer.pack([symbol, book.tick_size, book.trade_count]))
            h.update(packer.pack(book.export_orders()))
        return h.hexdigest()
