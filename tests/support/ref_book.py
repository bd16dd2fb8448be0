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
* A market buy with a budget (``max_quote``) fills in batches, best ask
  first: each batch takes ``min(leaves, remaining // unit(price))`` lots of
  the best level (FIFO) and pays their exact costs; a batch of 0 lots ends it
  (``BUDGET_EXHAUSTED``), an empty ask side too (``NO_LIQUIDITY``). FOK with
  a budget is a dry run of the same.

Accounts (``engine/core/accounts.py``'s module docstring is the spec; this
model holds balances in one flat dict keyed ``(account, asset)``):

* A transfer is checked field by field (id, account, asset, amount); a
  malformed one is refused and forgotten. A well-formed one is remembered
  with its outcome; a repeat with the same body gets that outcome again
  (``transfer_done`` with ``duplicate`` for an applied one), another body
  ``TRANSFER_CONFLICT``.
* In a book with risk on an order holds its *need* on entry (a sell
  ``qty * base_per_lot`` base, a limit buy ``qty * unit(price)`` quote, a
  market buy its budget), after the funds check and before the FOK check
  decides; each fill moves held funds to the counterparty with fees
  ``ceil(notional * ppm / 10**6)`` to the fee account; what the leaves no
  longer need is released.
* Order of one command's balance changes: the hold; then per batch of fills
  (a limit or market order is one batch) the trades, then per trade in order
  the taker's two changes, the maker's two, the fee; then a release; then
  the rest or cancel. A buy taker's changes are quote then base, a sell
  taker's base then quote; the maker's the other way round.

Event tuples (what :func:`event_key` makes of an engine event)::

    ("trade", match_id, ts_ns, symbol, price, qty, taker_side,
              maker_order_id, taker_order_id, maker_account, taker_account, cmd_seq, symbol_seq)
    ("rejected", cmd_seq, order_id_or_None, reason)
    ("rested", order_id, side, price, leaves_qty)
    ("cancelled", order_id, cancelled_qty, cancel_reason)
    ("amended", order_id, price, leaves_qty, priority_kept)
    ("symbol_added", symbol, tick_size)
    ("asset_added", asset, scale)
    ("transfer_done", transfer_id, kind, account, asset, amount, available, duplicate)
    ("balance", ledger_seq, cmd_seq, account, asset, d_available, d_held, available, held, reason, ref)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from engine.core import CancelReason, Kind, LedgerReason, RejectReason

__all__ = ["RefEngine", "RefOrder", "RefSymbol", "event_key", "trade_key"]

BUY, SELL = 1, 2
LIMIT, MARKET = 1, 2
GTC, IOC, FOK = 1, 2, 3
MAX_PRICE = 10**12
MAX_QTY = 10**15
MAX_ID = 2**63 - 1
MAX_AMOUNT = 2**63 - 1
MAX_FEE_PPM = 10**6
R = RejectReason
L = LedgerReason


def _int(value: Any) -> bool:
    """An int and not a bool (``True == 1`` must not pass for an id or a side)."""
    return type(value) is int


def _int_in(value: Any, low: int, high: int) -> bool:
    return _int(value) and low <= value <= high


def _ceil_ppm(amount: int, ppm: int) -> int:
    """``ceil(amount * ppm / 10**6)``, in integers."""
    return (amount * ppm + MAX_FEE_PPM - 1) // MAX_FEE_PPM


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
    base: Optional[str] = None
    quote: Optional[str] = None
    quote_per_tick: int = 1
    base_per_lot: int = 1
    maker_fee_ppm: int = 0
    taker_fee_ppm: int = 0
    risk: bool = False
    fee_account: int = 0
    orders: list = field(default_factory=list)   # RefOrder, in no particular order
    trades: int = 0                                # the symbol's trades so far (symbol_seq)

    def notional(self, price: int, qty: int) -> int:
        return price * qty * self.quote_per_tick

    def unit(self, price: int) -> int:
        """Quote units one lot of a buy at ``price`` reserves: notional plus taker fee, rounded up."""
        one = self.notional(price, 1)
        return one + _ceil_ppm(one, self.taker_fee_ppm)

    def need(self, side: int, price: int, qty: int) -> tuple:
        """``(asset, amount)`` an open order holds."""
        if side == BUY:
            return self.quote, qty * self.unit(price)
        return self.base, qty * self.base_per_lot

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
    """All symbols, accounts, ``match_id`` and ``last_seq``; :meth:`apply` one command at a time."""

    def __init__(self) -> None:
        self.symbols: dict = {}
        self.last_seq = 0
        self.match_id = 0
        self.arrivals = 0
        self.positions: dict = {}
        self.assets: dict = {}            # asset -> scale
        self.balances: dict = {}          # (account, asset) -> [available, held]
        self.transfers: dict = {}         # transfer_id -> (kind, account, asset, amount, reason)
        self.supply: dict = {}            # asset -> deposits - withdrawals
        self.ledger_seq = 0

    # ------------------------------------------------------------------ apply
    def apply(self, cmd: tuple) -> list:
        """Apply ``cmd`` as sequence number ``last_seq + 1``; return event tuples."""
        seq = self.last_seq + 1
        out: list = []
        kind = cmd[0]
        expected_len = {Kind.ADD_SYMBOL: 14, Kind.PLACE: 14, Kind.CANCEL: 6, Kind.AMEND: 8,
                        Kind.BAD_INPUT: 6, Kind.ADD_ASSET: 6, Kind.DEPOSIT: 8, Kind.WITHDRAW: 8}
        if _int(kind) and kind == Kind.ADD_SYMBOL and len(cmd) == 6:       # WAL format 2 layout
            cmd = tuple(cmd[:4]) + (None, None, 1, 1, 0, 0, False, 0) + tuple(cmd[4:])
        elif _int(kind) and kind == Kind.PLACE and len(cmd) == 13:
            cmd = tuple(cmd[:11]) + (0,) + tuple(cmd[11:])
        if not _int(kind) or kind not in expected_len or len(cmd) != expected_len[kind]:
            out.append(("rejected", seq, None, R.MALFORMED))
        else:
            ts_ns, source, source_pos = cmd[1], cmd[-2], cmd[-1]
            if not _int_in(ts_ns, 0, MAX_ID) or not (source is None or type(source) is str) \
                    or not (source_pos is None or _int_in(source_pos, 0, MAX_ID)):
                out.append(("rejected", seq, None, R.MALFORMED))
            else:
                handler = {Kind.PLACE: self._place, Kind.CANCEL: self._cancel, Kind.AMEND: self._amend,
                           Kind.ADD_SYMBOL: self._add_symbol, Kind.ADD_ASSET: self._add_asset,
                           Kind.DEPOSIT: self._transfer, Kind.WITHDRAW: self._transfer}.get(kind)
                if handler is None:
                    out.append(("rejected", seq, None, R.MALFORMED))
                else:
                    handler(seq, cmd, out)
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

    def available(self, account: int, asset: str) -> int:
        return self.balances.get((account, asset), [0, 0])[0]

    def _move(self, seq: int, account: int, asset: str, d_avail: int, d_held: int, reason: LedgerReason,
              ref: int, out: list) -> None:
        b = self.balances.setdefault((account, asset), [0, 0])
        b[0] += d_avail
        b[1] += d_held
        self.ledger_seq += 1
        out.append(("balance", self.ledger_seq, seq, account, asset, d_avail, d_held, b[0], b[1], reason, ref))

    def _hold(self, seq: int, account: int, asset: str, amount: int, order_id: int, out: list) -> None:
        if amount:
            self._move(seq, account, asset, -amount, amount, L.HOLD, order_id, out)

    def _release(self, seq: int, account: int, asset: str, amount: int, order_id: int, out: list) -> None:
        if amount:
            self._move(seq, account, asset, amount, -amount, L.RELEASE, order_id, out)

    # ------------------------------------------------------------- commands
    def _add_asset(self, seq: int, cmd: tuple, out: list) -> None:
        _, _ts, asset, scale, _src, _pos = cmd
        if type(asset) is not str or not 1 <= len(asset) <= 16 or not _int_in(scale, 0, 18):
            return self._reject(seq, None, R.INVALID_ASSET, out)
        if asset in self.assets:
            return self._reject(seq, None, R.ASSET_EXISTS, out)
        self.assets[asset] = scale
        self.supply[asset] = 0
        out.append(("asset_added", asset, scale))

    def _transfer(self, seq: int, cmd: tuple, out: list) -> None:
        kind, _ts, tid, account, asset, amount, _src, _pos = cmd
        if not _int_in(tid, 1, MAX_ID):
            return self._reject(seq, None, R.INVALID_TRANSFER_ID, out)
        if not _int_in(account, 0, MAX_ID):
            return self._reject(seq, tid, R.INVALID_ACCOUNT, out)
        if type(asset) is not str or not 1 <= len(asset) <= 16:
            return self._reject(seq, tid, R.INVALID_ASSET, out)
        if not _int_in(amount, 1, MAX_AMOUNT):
            return self._reject(seq, tid, R.INVALID_AMOUNT, out)
        if tid in self.transfers:
            first = self.transfers[tid]
            if first[:4] != (kind, account, asset, amount):
                return self._reject(seq, tid, R.TRANSFER_CONFLICT, out)
            if first[4]:
                return self._reject(seq, tid, first[4], out)
            out.append(("transfer_done", tid, kind, account, asset, amount, self.available(account, asset), True))
            return
        if asset not in self.assets:
            reason = R.UNKNOWN_ASSET
        elif kind == Kind.DEPOSIT and self.supply[asset] + amount > MAX_AMOUNT:
            reason = R.INVALID_AMOUNT
        elif kind == Kind.WITHDRAW and self.available(account, asset) < amount:
            reason = R.INSUFFICIENT_FUNDS
        else:
            reason = 0
        self.transfers[tid] = (kind, account, asset, amount, reason)
        if reason:
            return self._reject(seq, tid, reason, out)
        sign = 1 if kind == Kind.DEPOSIT else -1
        self.supply[asset] += sign * amount
        after = self.available(account, asset) + sign * amount
        out.append(("transfer_done", tid, kind, account, asset, amount, after, False))
        self._move(seq, account, asset, sign * amount, 0, L.DEPOSIT if sign > 0 else L.WITHDRAWAL, tid, out)

    def _add_symbol(self, seq: int, cmd: tuple, out: list) -> None:
        (_, _ts, symbol, tick_size, base, quote, qpt, bpl, maker_fee, taker_fee, risk, fee_account,
         _src, _pos) = cmd
        if type(symbol) is not str or not 1 <= len(symbol) <= 32:
            return self._reject(seq, None, R.INVALID_SYMBOL, out)
        if not _int_in(tick_size, 1, MAX_PRICE):
            return self._reject(seq, None, R.INVALID_TICK_SIZE, out)
        if symbol in self.symbols:
            return self._reject(seq, None, R.SYMBOL_EXISTS, out)
        spec_error = R.INVALID_SYMBOL_SPEC
        if (base is None) != (quote is None):
            return self._reject(seq, None, spec_error, out)
        if base is not None:
            if type(base) is not str or type(quote) is not str or base == quote:
                return self._reject(seq, None, spec_error, out)
            if base not in self.assets or quote not in self.assets:
                return self._reject(seq, None, R.UNKNOWN_ASSET, out)
        if not (_int_in(qpt, 1, MAX_AMOUNT) and _int_in(bpl, 1, MAX_AMOUNT)):
            return self._reject(seq, None, spec_error, out)
        if not (_int_in(maker_fee, 0, MAX_FEE_PPM) and _int_in(taker_fee, maker_fee, MAX_FEE_PPM)):
            return self._reject(seq, None, spec_error, out)
        if type(risk) is not bool or (risk and base is None) or not _int_in(fee_account, 0, MAX_ID):
            return self._reject(seq, None, spec_error, out)
        self.symbols[symbol] = RefSymbol(tick_size, base, quote, qpt, bpl, maker_fee, taker_fee, risk, fee_account)
        out.append(("symbol_added", symbol, tick_size))

    def _place(self, seq: int, cmd: tuple, out: list) -> None:
        (_, ts_ns, symbol, order_id, side, order_type, tif, price, qty, post_only, account, max_quote,
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
        market_buy = limit is None and side == BUY
        if not _int_in(max_quote, 0, MAX_AMOUNT) or (max_quote and not market_buy) \
                or (market_buy and book.risk and not max_quote):
            return self._reject(seq, order_id, R.INVALID_BUDGET, out)
        if post_only:
            if tif != GTC or limit is None:
                return self._reject(seq, order_id, R.INVALID_FLAGS, out)
            if book.makers(side, limit):
                return self._reject(seq, order_id, R.POST_ONLY_WOULD_TAKE, out)
        if book.find(order_id) is not None:
            return self._reject(seq, order_id, R.DUPLICATE_ORDER_ID, out)
        if book.risk:
            if max_quote:
                asset, need = book.quote, max_quote
            else:
                asset, need = book.need(side, limit, qty) if limit is not None else book.need(SELL, 0, qty)
            if self.available(account, asset) < need:
                return self._reject(seq, order_id, R.INSUFFICIENT_FUNDS, out)
        if tif == FOK:
            if max_quote:
                _batches, leaves, _exhausted = self._budget_batches(book, qty, max_quote)
                whole = leaves == 0
            else:
                whole = sum(o.qty for o in book.makers(side, limit)) >= qty
            if not whole:
                out.append(("cancelled", order_id, qty, CancelReason.FOK_UNFILLED))
                return
        if max_quote:
            return self._enter_budget(seq, symbol, book, ts_ns, order_id, qty, max_quote, account, out)
        if book.risk:
            self._hold(seq, account, asset, need, order_id, out)
        self._enter(seq, symbol, book, ts_ns, order_id, side, limit, qty, tif, account, out)

    def _trade(self, seq: int, symbol: str, book: RefSymbol, ts_ns: int, maker: RefOrder, fill: int,
               side: int, order_id: int, account: int, out: list) -> tuple:
        self.match_id += 1
        book.trades += 1
        out.append(("trade", self.match_id, ts_ns, symbol, maker.price, fill, side,
                    maker.order_id, order_id, maker.account, account, seq, book.trades))
        maker.qty -= fill
        if maker.qty == 0:
            book.orders.remove(maker)
        return (self.match_id, maker.account, maker.price, fill)

    def _settle(self, seq: int, book: RefSymbol, fills: list, side: int, account: int,
                limit: Optional[int], out: list) -> int:
        """Move the funds of one batch of fills; return what a buying taker paid."""
        paid = 0
        for match_id, maker, price, qty in fills:
            n = book.notional(price, qty)
            fee_taker = _ceil_ppm(n, book.taker_fee_ppm)
            fee_maker = _ceil_ppm(n, book.maker_fee_ppm)
            base_qty = qty * book.base_per_lot
            if side == BUY:
                cost = n + fee_taker
                paid += cost
                reserved = cost if limit is None else qty * book.unit(limit)
                self._move(seq, account, book.quote, reserved - cost, -reserved, L.FILL, match_id, out)
                self._move(seq, account, book.base, base_qty, 0, L.FILL, match_id, out)
                self._move(seq, maker, book.base, 0, -base_qty, L.FILL, match_id, out)
                self._move(seq, maker, book.quote, n - fee_maker, 0, L.FILL, match_id, out)
            else:
                reserved = qty * book.unit(price)
                self._move(seq, account, book.base, 0, -base_qty, L.FILL, match_id, out)
                self._move(seq, account, book.quote, n - fee_taker, 0, L.FILL, match_id, out)
                self._move(seq, maker, book.quote, reserved - n - fee_maker, -reserved, L.FILL, match_id, out)
                self._move(seq, maker, book.base, base_qty, 0, L.FILL, match_id, out)
            if fee_taker + fee_maker:
                self._move(seq, book.fee_account, book.quote, fee_taker + fee_maker, 0, L.FEE, match_id, out)
        return paid

    def _enter(self, seq: int, symbol: str, book: RefSymbol, ts_ns: int, order_id: int,
               side: int, limit: Optional[int], qty: int, tif: int, account: int,
               out: list) -> None:
        leaves = qty
        fills = []
        while leaves > 0:
            makers = book.makers(side, limit)
            if not makers:
                break
            fill = min(makers[0].qty, leaves)
            fills.append(self._trade(seq, symbol, book, ts_ns, makers[0], fill, side, order_id, account, out))
            leaves -= fill
        if book.risk and fills:
            self._settle(seq, book, fills, side, account, limit, out)
        if leaves == 0:
            return
        if tif == GTC:
            book.orders.append(RefOrder(order_id, side, limit, leaves, account, self._next_arrival()))
            out.append(("rested", order_id, side, limit, leaves))
            return
        if book.risk:
            asset, amount = book.need(side, limit, leaves) if limit is not None else book.need(SELL, 0, leaves)
            self._release(seq, account, asset, amount, order_id, out)
        out.append(("cancelled", order_id, leaves,
                    CancelReason.NO_LIQUIDITY if limit is None else CancelReason.IOC_REMAINDER))

    def _budget_batches(self, book: RefSymbol, qty: int, budget: int) -> tuple:
        """Dry run of a market buy with a budget: ``(batches, leaves, exhausted)``,
        each batch a list of ``(maker, fill)``."""
        remaining = budget
        left = {id(o): o.qty for o in book.orders}
        batches: list = []
        prices = sorted({o.price for o in book.orders if o.side == SELL})
        for price in prices:
            makers = [o for o in book.makers(BUY, price) if o.price == price]
            unit = book.unit(price)
            i = 0
            while qty and i < len(makers):
                take = min(qty, remaining // unit)
                if take == 0:
                    return batches, qty, True
                batch = []
                while take and i < len(makers):
                    maker = makers[i]
                    fill = min(take, left[id(maker)])
                    batch.append((maker, fill))
                    left[id(maker)] -= fill
                    remaining -= book.notional(price, fill) + _ceil_ppm(book.notional(price, fill),
                                                                        book.taker_fee_ppm)
                    take -= fill
                    qty -= fill
                    if left[id(maker)] == 0:
                        i += 1
                batches.append(batch)
            if not qty:
                break
        return batches, qty, False

    def _enter_budget(self, seq: int, symbol: str, book: RefSymbol, ts_ns: int, order_id: int, qty: int,
                      budget: int, account: int, out: list) -> None:
        batches, leaves, exhausted = self._budget_batches(book, qty, budget)
        if book.risk:
            self._hold(seq, account, book.quote, budget, order_id, out)
        spent = 0
        for batch in batches:
            fills = [self._trade(seq, symbol, book, ts_ns, maker, fill, BUY, order_id, account, out)
                     for maker, fill in batch]
            if book.risk:
                spent += self._settle(seq, book, fills, BUY, account, None, out)
        if book.risk:
            self._release(seq, account, book.quote, budget - spent, order_id, out)
        if leaves:
            out.append(("cancelled", order_id, leaves,
                        CancelReason.BUDGET_EXHAUSTED if exhausted else CancelReason.NO_LIQUIDITY))

    def _cancel(self, seq: int, cmd: tuple, out: list) -> None:
        _, _ts, symbol, order_id, _src, _pos = cmd
        book = self._symbol(seq, symbol, order_id, out)
        if book is None:
            return
        order = book.find(order_id)
        if order is None:
            return self._reject(seq, order_id, R.UNKNOWN_ORDER, out)
        if book.risk:
            asset, amount = book.need(order.side, order.price, order.qty)
            self._release(seq, order.account, asset, amount, order_id, out)
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
        asset, old_need = book.need(order.side, order.price, order.qty)
        if price == order.price and qty <= order.qty:
            if book.risk:
                self._release(seq, order.account, asset, old_need - book.need(order.side, price, qty)[1],
                              order_id, out)
            order.qty = qty                                  # arrival unchanged
            out.append(("amended", order_id, price, qty, True))
            return
        new_need = book.need(order.side, price, qty)[1]
        if book.risk:
            if new_need - old_need > self.available(order.account, asset):
                return self._reject(seq, order_id, R.INSUFFICIENT_FUNDS, out)
            self._release(seq, order.account, asset, old_need, order_id, out)
        book.orders.remove(order)
        out.append(("amended", order_id, price, qty, False))
        if book.risk:
            self._hold(seq, order.account, asset, new_need, order_id, out)
        self._enter(seq, symbol, book, ts_ns, order_id, order.side, price, qty, GTC,
                    order.account, out)

    # ---------------------------------------------------------------- views
    def check_balances(self) -> None:
        """The money invariants, computed from this model's own orders."""
        needs: dict = {}
        for book in self.symbols.values():
            if book.risk:
                for o in book.orders:
                    asset, amount = book.need(o.side, o.price, o.qty)
                    needs[(o.account, asset)] = needs.get((o.account, asset), 0) + amount
        totals: dict = {}
        for key, (avail, held) in self.balances.items():
            assert avail >= 0 and held >= 0, (key, avail, held)
            assert held == needs.get(key, 0), (key, held, needs.get(key, 0))
            totals[key[1]] = totals.get(key[1], 0) + avail + held
        assert all(key in self.balances for key, n in needs.items() if n), needs
        for asset, supply in self.supply.items():
            assert totals.get(asset, 0) == supply, (asset, totals.get(asset, 0), supply)

    def export_balances(self) -> dict:
        """``{account: {asset: [available, held]}}``, the shape of ``Accounts.balances``."""
        out: dict = {}
        for (account, asset), b in self.balances.items():
            out.setdefault(account, {})[asset] = list(b)
        return out

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
    if kind == Kind.ASSET_ADDED:
        return ("asset_added", event.asset, event.scale)
    if kind == Kind.TRANSFER_DONE:
        return ("transfer_done",) + tuple(event[1:])
    if kind == Kind.BALANCE_CHANGED:
        return ("balance",) + tuple(event[1:])
    raise AssertionError(f"unknown event kind {kind!r}: {event!r}")
