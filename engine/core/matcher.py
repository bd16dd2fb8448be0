"""The matcher: applies sequenced commands to the order books.

Deterministic by construction: it reads nothing but the commands (no clock,
no randomness), iterates only ordered structures, and numbers every trade
from one gap-free ``match_sequence``. Replaying the same commands gives the
same books, the same trades and the same :meth:`Matcher.state_hash`.
"""

from __future__ import annotations

import hashlib
from collections import deque
from typing import Any, Final, Optional

import msgpack

from .accounts import Accounts, SymbolSpec
from .commands import COMMAND_CLASSES, LEGACY_FIELD_COUNTS, upgrade_command
from .errors import BookIntegrityError, SequenceGapError
from .events import (AssetAdded, OrderAmended, OrderCancelled, OrderRejected, OrderRested, SymbolAdded,
                     Trade)
from .order_book import OrderBook
from .price_level import RestingOrder
from .types import (MAX_AMOUNT, MAX_FEE_PPM, MAX_ORDER_ID, MAX_PRICE, MAX_QTY, CancelReason, Kind,
                    RejectReason)

__all__ = ["Matcher"]

_PLACE: Final = Kind.PLACE.value
_CANCEL: Final = Kind.CANCEL.value
_AMEND: Final = Kind.AMEND.value
_ADD_SYMBOL: Final = Kind.ADD_SYMBOL.value
_BAD_INPUT: Final = Kind.BAD_INPUT.value
_ADD_ASSET: Final = Kind.ADD_ASSET.value
_DEPOSIT: Final = Kind.DEPOSIT.value
_WITHDRAW: Final = Kind.WITHDRAW.value
_REJECTED: Final = Kind.REJECTED.value
_RESTED: Final = Kind.RESTED.value
_CANCELLED: Final = Kind.CANCELLED.value
_AMENDED: Final = Kind.AMENDED.value
_TRADE: Final = Kind.TRADE.value
_LIMIT: Final = 1
_MARKET: Final = 2
_GTC: Final = 1
_IOC: Final = 2
_FOK: Final = 3
_IOC_REMAINDER: Final = CancelReason.IOC_REMAINDER.value
_NO_LIQUIDITY: Final = CancelReason.NO_LIQUIDITY.value
_FOK_UNFILLED: Final = CancelReason.FOK_UNFILLED.value
_USER: Final = CancelReason.USER.value
_BUDGET_EXHAUSTED: Final = CancelReason.BUDGET_EXHAUSTED.value
_PLAIN: Final = SymbolSpec(None, None, 1, 1, 0, 0, False, 0)   # what a book with no spec is worth
R = RejectReason
_new: Final = tuple.__new__  # builds a NamedTuple without its Python-level __new__ frame
_INT64_MAX: Final = 2**63 - 1
_FIELD_COUNTS: Final = {kind: len(cls._fields) for kind, cls in COMMAND_CLASSES.items()}  # type: ignore[attr-defined]


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
        accounts: balances, transfers and the ledger
            (:class:`~engine.core.accounts.Accounts`).
    """

    def __init__(self, trade_history: int = 10_000) -> None:
        self.accounts = Accounts()
        self.books: dict[str, OrderBook] = {}
        self.last_seq = 0
        self.match_sequence = 0
        self.positions: dict[str, Any] = {}
        self.trades: deque[Trade] = deque(maxlen=trade_history)

    # ------------------------------------------------------------------ apply
    def apply(self, seq: int, cmd: Any) -> list:
        """Apply one sequenced command; return the events it caused.

        Args:
            seq: the command's WAL sequence number; must be ``last_seq + 1``.
            cmd: any command of :mod:`engine.core.commands` (typed ``Any``:
                any record, a malformed one too, is answered). Fields are
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
        if type(kind) is int and _FIELD_COUNTS.get(kind) != len(cmd) and LEGACY_FIELD_COUNTS.get(kind) == len(cmd):
            cmd = upgrade_command(cmd)   # a record of WAL format 2
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
            elif kind == _DEPOSIT or kind == _WITHDRAW:
                self.accounts.transfer(seq, cmd, out)
            elif kind == _ADD_ASSET:
                self._add_asset(seq, cmd, out)
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
         max_quote, _src, _pos) = cmd
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
                and max_quote == 0 and type(max_quote) is int and order_id not in book.orders):
            if book.risk:
                self._enter_risk(seq, book, ts_ns, order_id, side, price, qty, tif, account, 0, out)
                return
            if tif == _FOK and not book.fillable(side, price, qty):
                out.append(OrderCancelled(_CANCELLED, order_id, qty, _FOK_UNFILLED))
                return
            self._enter(seq, book, ts_ns, order_id, side, price, qty, tif, account, out)
            return
        self._place_checked(seq, cmd, out)

    def _place_checked(self, seq: int, cmd: Any, out: list) -> None:
        (_, ts_ns, symbol, order_id, side, order_type, tif, price, qty, post_only, account,
         max_quote, _src, _pos) = cmd
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
        if not _is_int(max_quote) or not 0 <= max_quote <= MAX_AMOUNT:
            return self._reject(seq, order_id, R.INVALID_BUDGET, "max_quote must be an integer in 0..2**63-1", out)
        market_buy = limit is None and side == 1
        if max_quote and not market_buy:
            return self._reject(seq, order_id, R.INVALID_BUDGET, "only a market buy takes a budget (max_quote)", out)
        if market_buy and book.risk and not max_quote:
            return self._reject(seq, order_id, R.INVALID_BUDGET,
                                "a market buy in a book with risk on needs a budget (max_quote > 0)", out)
        if post_only:
            if tif != _GTC or limit is None:
                return self._reject(seq, order_id, R.INVALID_FLAGS, "post-only needs a GTC limit order", out)
            if book.crosses(side, limit):
                return self._reject(seq, order_id, R.POST_ONLY_WOULD_TAKE, "post-only order would take liquidity", out)
        if order_id in book.orders:
            return self._reject(seq, order_id, R.DUPLICATE_ORDER_ID, f"order {order_id} is already on the book", out)
        if book.risk:
            return self._enter_risk(seq, book, ts_ns, order_id, side, limit, qty, tif, account, max_quote, out)
        if tif == _FOK and not (self._fillable_budget(book, qty, max_quote) if max_quote
                                else book.fillable(side, limit, qty)):
            out.append(OrderCancelled(_CANCELLED, order_id, qty, _FOK_UNFILLED))
            return
        if max_quote:
            leaves, _spent, exhausted = self._match_budget(seq, book, ts_ns, order_id, qty, max_quote, account,
                                                           out, False)
            if leaves:
                out.append(OrderCancelled(_CANCELLED, order_id, leaves,
                                          _BUDGET_EXHAUSTED if exhausted else _NO_LIQUIDITY))
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
                book.rest(RestingOrder(order_id, side, limit, leaves, account))  # type: ignore[arg-type]  # GTC: a limit
                out.append(_new(OrderRested, (_RESTED, order_id, side, limit, leaves)))
            else:
                out.append(_new(OrderCancelled, (_CANCELLED, order_id, leaves,
                                                 _NO_LIQUIDITY if limit is None else _IOC_REMAINDER)))

    # ------------------------------------------------------------------ risk
    def _enter_risk(self, seq: int, book: OrderBook, ts_ns: int, order_id: int, side: int,
                    limit: Optional[int], qty: int, tif: int, account: int, max_quote: int,
                    out: list) -> None:
        """Enter an order into a book with risk on: hold what it can cost
        (``engine.core.accounts``), match, settle each fill, release what
        the leaves no longer need. Rejected with ``INSUFFICIENT_FUNDS`` (and
        nothing changed) when the account's available balance is short."""
        spec = book.spec
        acc = self.accounts
        if side == 1:
            asset = spec.quote
            unit = spec.unit(limit) if limit is not None else 0
            need = qty * unit if limit is not None else max_quote
        else:
            asset = spec.base
            unit = spec.base_per_lot
            need = qty * unit
        b = acc.pair(account, asset)
        if b is None or b[0] < need:
            avail = 0 if b is None else b[0]
            return self._reject(seq, order_id, R.INSUFFICIENT_FUNDS,
                                f"account {account} has {avail} {asset} available, the order needs {need}", out)
        if tif == _FOK and not (self._fillable_budget(book, qty, max_quote) if max_quote
                                else book.fillable(side, limit, qty)):
            out.append(OrderCancelled(_CANCELLED, order_id, qty, _FOK_UNFILLED))
            return
        acc.hold_from(out, seq, account, asset, b, need, order_id)
        if max_quote:
            leaves, spent, exhausted = self._match_budget(seq, book, ts_ns, order_id, qty, max_quote, account,
                                                          out, True)
            acc.release(out, seq, account, asset, max_quote - spent, order_id)
            if leaves:
                out.append(OrderCancelled(_CANCELLED, order_id, leaves,
                                          _BUDGET_EXHAUSTED if exhausted else _NO_LIQUIDITY))
            return
        if limit is None or (side == 1 and book.top_ask is not None and book.top_ask <= limit) or \
                (side == 2 and book.top_bid is not None and book.top_bid >= limit):
            start = len(out)
            leaves, self.match_sequence = book.match(side, limit, qty, order_id, account, ts_ns,
                                                     seq, self.match_sequence, out)
            if len(out) > start:
                acc.settle(out, start, seq, spec, unit)
        else:
            leaves = qty
        if leaves:
            if tif == _GTC:
                book.rest(RestingOrder(order_id, side, limit, leaves, account))  # type: ignore[arg-type]  # GTC: a limit
                out.append(_new(OrderRested, (_RESTED, order_id, side, limit, leaves)))
            else:
                acc.release(out, seq, account, asset, leaves * unit, order_id)
                out.append(_new(OrderCancelled, (_CANCELLED, order_id, leaves,
                                                 _NO_LIQUIDITY if limit is None else _IOC_REMAINDER)))

    def _match_budget(self, seq: int, book: OrderBook, ts_ns: int, order_id: int, qty: int, budget: int,
                      account: int, out: list, settle: bool) -> tuple[int, int, bool]:
        """Fill a market buy level by level while its budget covers the next
        lot: at a level of price ``p`` it takes at most ``remaining //
        unit(p)`` lots (``SymbolSpec.unit``) and pays each fill's exact cost.
        Returns ``(leaves, spent, budget_exhausted)``; ``spent`` in quote units."""
        spec = book.spec or _PLAIN
        rem = budget
        spent = 0
        while qty:
            price = book.top_ask
            if price is None:
                return qty, spent, False
            take = min(qty, rem // spec.unit(price))
            if not take:
                return qty, spent, True
            start = len(out)
            left, self.match_sequence = book.match(1, price, take, order_id, account, ts_ns, seq,
                                                   self.match_sequence, out)
            if settle:
                cost = self.accounts.settle(out, start, seq, spec, None)
            else:
                cost = sum(spec.cost(t[4], t[5]) for t in out[start:])
            rem -= cost
            spent += cost
            qty -= take - left
        return 0, spent, False

    def _fillable_budget(self, book: OrderBook, qty: int, budget: int) -> bool:
        """Whether a market buy of ``qty`` lots with ``budget`` would fill
        whole now (for FOK): a dry run of :meth:`_match_budget`, batch by
        batch, each fill's exact cost taken off the budget. Complexity:
        O(orders walked)."""
        spec = book.spec or _PLAIN
        levels = book.ask_levels
        rem = budget
        for price in book.ask_prices:
            unit = spec.unit(price)
            makers = [o.qty for o in levels[price].live()]
            i = 0
            while i < len(makers):
                take = min(qty, rem // unit)
                if not take:
                    return False
                while take and i < len(makers):
                    fill = min(take, makers[i])
                    rem -= spec.cost(price, fill)
                    makers[i] -= fill
                    take -= fill
                    qty -= fill
                    if not makers[i]:
                        i += 1
                if not qty:
                    return True
        return False

    def _release_order(self, seq: int, book: OrderBook, order: RestingOrder, qty: int, out: list) -> None:
        """Release what ``qty`` lots of a resting order of a risk book hold."""
        spec = book.spec
        self.accounts.release(out, seq, order.account, spec.quote if order.side == 1 else spec.base,
                              spec.need(order.side, order.price, qty), order.order_id)

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
        if book.risk:
            self._release_order(seq, book, order, leaves, out)
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
                if book.risk:
                    self._release_order(seq, book, order, order.qty - qty, out)
                book.reduce(order, qty)
            out.append(OrderAmended(_AMENDED, order_id, price, qty, True))
            return
        side, account = order.side, order.account
        if book.risk:
            spec = book.spec
            asset = spec.quote if side == 1 else spec.base
            more = spec.need(side, price, qty) - spec.need(side, order.price, order.qty)
            avail = self.accounts.available(account, asset)
            if more > avail:
                return self._reject(seq, order_id, R.INSUFFICIENT_FUNDS,
                                    f"account {account} has {avail} {asset} available, the amend needs {more} more",
                                    out)
            self._release_order(seq, book, order, order.qty, out)
            book.remove(order)
            out.append(OrderAmended(_AMENDED, order_id, price, qty, False))
            self._enter_risk(seq, book, ts_ns, order_id, side, price, qty, _GTC, account, 0, out)
            return
        book.remove(order)
        out.append(OrderAmended(_AMENDED, order_id, price, qty, False))
        self._enter(seq, book, ts_ns, order_id, side, price, qty, _GTC, account, out)

    def _add_symbol(self, seq: int, cmd: Any, out: list) -> None:
        (_, _ts, symbol, tick_size, base, quote, quote_per_tick, base_per_lot, maker_fee, taker_fee, risk,
         fee_account, _src, _pos) = cmd
        if type(symbol) is not str or not 0 < len(symbol) <= 32:
            return self._reject(seq, None, R.INVALID_SYMBOL, "symbol must be a string of 1..32 characters", out)
        if not _is_int(tick_size) or not 0 < tick_size <= MAX_PRICE:
            return self._reject(seq, None, R.INVALID_TICK_SIZE, "tick_size must be a positive integer", out)
        if symbol in self.books:
            return self._reject(seq, None, R.SYMBOL_EXISTS, f"symbol {symbol!r} already has a book", out)
        bad = self._spec_error(base, quote, quote_per_tick, base_per_lot, maker_fee, taker_fee, risk, fee_account)
        if bad is not None:
            return self._reject(seq, None, bad[0], bad[1], out)
        spec = SymbolSpec(base, quote, quote_per_tick, base_per_lot, maker_fee, taker_fee, risk, fee_account)
        self.books[symbol] = OrderBook(symbol, tick_size, None if spec.is_default() else spec)
        out.append(SymbolAdded(Kind.SYMBOL_ADDED.value, symbol, tick_size))

    def _spec_error(self, base: Any, quote: Any, quote_per_tick: Any, base_per_lot: Any, maker_fee: Any,
                    taker_fee: Any, risk: Any, fee_account: Any) -> Optional[tuple]:
        """``(reason, detail)`` of the first field of a symbol's spec that is
        wrong, or ``None``."""
        bad = R.INVALID_SYMBOL_SPEC.value
        if (base is None) != (quote is None):
            return bad, "base and quote must both be asset names, or both be absent"
        if base is not None:
            if type(base) is not str or type(quote) is not str or base == quote:
                return bad, "base and quote must be two different asset names"
            for asset in (base, quote):
                if asset not in self.accounts.assets:
                    return R.UNKNOWN_ASSET.value, f"unknown asset {asset[:16]!r} (add it with add_asset first)"
        if not (_is_int(quote_per_tick) and 0 < quote_per_tick <= MAX_AMOUNT
                and _is_int(base_per_lot) and 0 < base_per_lot <= MAX_AMOUNT):
            return bad, "quote_per_tick and base_per_lot must be integers in 1..2**63-1"
        if not (_is_int(maker_fee) and _is_int(taker_fee) and 0 <= maker_fee <= taker_fee <= MAX_FEE_PPM):
            return bad, f"fees must be integers with 0 <= maker_fee_ppm <= taker_fee_ppm <= {MAX_FEE_PPM}"
        if type(risk) is not bool or risk and base is None:
            return bad, "risk must be a bool, and risk on needs base and quote assets"
        if not _is_int(fee_account) or not 0 <= fee_account <= _INT64_MAX:
            return bad, "fee_account must be an integer in 0..2**63-1"
        return None

    def _add_asset(self, seq: int, cmd: Any, out: list) -> None:
        _, _ts, asset, scale, _src, _pos = cmd
        if type(asset) is not str or not 0 < len(asset) <= 16:
            return self._reject(seq, None, R.INVALID_ASSET, "asset must be a string of 1..16 characters", out)
        if not _is_int(scale) or not 0 <= scale <= 18:
            return self._reject(seq, None, R.INVALID_ASSET, "scale must be an integer in 0..18 (decimals)", out)
        if asset in self.accounts.assets:
            return self._reject(seq, None, R.ASSET_EXISTS, f"asset {asset!r} already exists", out)
        self.accounts.add_asset(asset, scale)
        out.append(AssetAdded(Kind.ASSET_ADDED.value, asset, scale))

    # ------------------------------------------------------------ state, hash
    def check_invariants(self) -> None:
        """Run :meth:`OrderBook.check_invariants` on every book, then
        :meth:`check_balances`."""
        for book in self.books.values():
            book.check_invariants()
        self.check_balances()

    def check_balances(self) -> None:
        """Verify the money invariants (``engine.core.accounts``); raise
        :class:`BookIntegrityError` naming the first that fails.

        No balance is negative; per asset, available + held over all accounts
        equals deposits minus withdrawals; every account's held balance in
        every asset equals what its open orders in books with risk on need.
        Complexity: O(accounts x assets + resting orders of risk books).
        """
        acc = self.accounts
        needs: dict = {}
        for book in self.books.values():
            if not book.risk:
                continue
            spec = book.spec
            for o in book.orders.values():
                key = (o.account, spec.quote if o.side == 1 else spec.base)
                needs[key] = needs.get(key, 0) + spec.need(o.side, o.price, o.qty)
        totals: dict = {}
        for account, per in acc.balances.items():
            for asset, (avail, held) in per.items():
                if avail < 0 or held < 0:
                    raise BookIntegrityError("accounts", f"account {account} {asset}: negative balance "
                                             f"available {avail}, held {held}")
                if held != needs.pop((account, asset), 0):
                    raise BookIntegrityError("accounts", f"account {account} {asset}: held {held} but its open "
                                             f"orders need {needs.get((account, asset), 0)}")
                totals[asset] = totals.get(asset, 0) + avail + held
        if needs:
            (account, asset), need = next(iter(needs.items()))
            raise BookIntegrityError("accounts", f"account {account} {asset}: open orders need {need}, nothing held")
        for asset, supply in acc.supply.items():
            if totals.get(asset, 0) != supply:
                raise BookIntegrityError("accounts", f"{asset}: balances sum to {totals.get(asset, 0)}, "
                                         f"deposits minus withdrawals are {supply}")

    def export_state(self) -> dict:
        """The whole state as plain msgpack-able data (for snapshots)::

            {"last_seq": int, "match_sequence": int, "positions": {source: pos},
             "books": [[symbol, tick_size, [[order_id, side, price, qty, account], ...],
                        trade_count, spec], ...],
             "trades": [[...Trade fields...], ...],
             "accounts": Accounts.export_state()}

        ``spec`` is ``SymbolSpec.as_list()`` or ``None`` (a book of market data).
        """
        return {
            "last_seq": self.last_seq,
            "match_sequence": self.match_sequence,
            "positions": dict(self.positions),
            "books": [[s, b.tick_size, b.export_orders(), b.trade_count,
                       b.spec.as_list() if b.spec is not None else None] for s, b in sorted(self.books.items())],
            "trades": [list(t) for t in self.trades],
            "accounts": self.accounts.export_state(),
        }

    @classmethod
    def from_state(cls, state: dict, trade_history: int = 10_000, check: bool = True) -> "Matcher":
        """Rebuild a matcher from :meth:`export_state` output.

        A state of snapshot format 2 (books of four fields, no accounts)
        loads as books with no spec and no accounts. ``check=False`` skips
        :meth:`check_invariants` (O(orders)): only for a state this process
        exported itself (time travel's in-memory keyframes).

        Raises:
            BookIntegrityError: the state does not form valid books, or the
                balances break an invariant of :meth:`check_balances`.
        """
        m = cls(trade_history)
        m.last_seq = state["last_seq"]
        m.match_sequence = state["match_sequence"]
        m.positions = dict(state["positions"])
        m.accounts = Accounts.from_state(state.get("accounts"))
        for entry in state["books"]:
            symbol, tick_size, orders, trade_count = entry[:4]
            spec = SymbolSpec(*entry[4]) if len(entry) > 4 and entry[4] is not None else None
            book = m.books[symbol] = OrderBook(symbol, tick_size, spec)
            book.trade_count = trade_count
            book.load_orders(orders)
        m.trades.extend(Trade(*t) for t in state["trades"])
        if check:
            m.check_invariants()
        return m

    def state_hash(self) -> str:
        """SHA-256 (hex) over ``last_seq``, ``match_sequence``, every book's
        spec and resting orders in priority order, and the accounts
        (balances, transfers, ``ledger_seq``). Equal hashes mean equal
        states, time priority included. A matcher with no specs and no
        accounts hashes as in evengine 0.2. Complexity: O(orders + balances)."""
        h = hashlib.sha256()
        packer = msgpack.Packer()
        h.update(packer.pack([self.last_seq, self.match_sequence]))
        for symbol in sorted(self.books):
            book = self.books[symbol]
            h.update(packer.pack([symbol, book.tick_size, book.trade_count]))
            if book.spec is not None:
                h.update(packer.pack(book.spec.as_list()))
            h.update(packer.pack(book.export_orders()))
        self.accounts.hash_into(h, packer)
        return h.hexdigest()
