"""A seeded simulated Bitstamp BTC/USD market, written out as an ob-analytics
capture for ``engine.io.bitstamp`` tests.

The market is its own small price-time book (not the engine's): resting limit
orders, cancels, limit takers that sweep levels, maker-or-cancel creates that
would cross (deleted at once, trading nothing), and market orders. Every fill
becomes feed rows the way each layout's capture shows them (the module
docstring of ``engine.io.bitstamp`` has the measured forms):

- ``"pypi"`` (2026): the taker's ``created`` row at its limit, then per fill
  the maker's ``changed`` (leaves, its price) or ``deleted`` (volume 0) row
  and the taker's ``changed`` row at the fill price; a filled taker ends with
  ``deleted`` volume 0. Market sells are asks at price 0.
- ``"r"`` (2015): the taker walks the book: ``created`` at the first level's
  price, fills there, then per next level a ``changed`` row at the new price
  with unchanged volume, the fills, and so on; a limit taker with leaves ends
  with a ``changed`` row at its limit (it rests there). Market orders are
  such walks without a limit.

Units: prices are counts of ``10**-price_decimals`` USD on a grid of ``tick``
units; sizes are counts of ``10**-size_decimals`` BTC. The ``"pypi"`` layout
writes volumes in BTC (some small ones in exponent form, ``2.6e-06``), the
``"r"`` layout in integer satoshi (so ``size_decimals <= 8`` there).

Files: ``orders.csv[.gz|.xz]`` in the layout's header, ``trades.csv`` (the
2026 trades layout), and ``log[.gz|.xz]``, a websocket log of ``<ms> <event>
<json>`` lines (order messages and ``trade`` messages, with or without
``buy_order_id``/``sell_order_id``).
"""

from __future__ import annotations

import gzip
import json
import lzma
import random
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Optional

HEADERS = {
    "pypi": "id,timestamp,exchange_timestamp,price,volume,action,direction",
    "r": "id,timestamp,exchange.timestamp,price,volume,action,direction",
}
TRADES_HEADER = "trade_id,timestamp,exchange_timestamp,price,amount,buy_order_id,sell_order_id,side"
SUFFIX = {"none": "", "gz": ".gz", "xz": ".xz"}
BID, ASK = "bid", "ask"


@dataclass
class GeneratedMarket:
    """What :func:`generate` wrote. ``trades``: one dict per fill (``trade_id``,
    ``ms``, ``price`` in price units, ``qty`` in lots of ``10**-size_decimals``
    BTC, ``buy_order_id``, ``sell_order_id``, ``side`` of the taker);
    ``counts``: events by kind (``rest``, ``cancel``, ``taker``, ``moc``
    (maker-or-cancel that would cross), ``market``) and ``rows``."""

    orders: Path
    trades_csv: Path
    log: Path
    layout: str
    price_decimals: int
    size_decimals: int
    tick: int
    trades: list = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)


def _write(path: Path, text: str, compression: str) -> None:
    data = text.encode()
    if compression == "gz":
        data = gzip.compress(data)
    elif compression == "xz":
        data = lzma.compress(data)
    path.write_bytes(data)


def _fixed(units: int, decimals: int) -> str:
    """``units * 10**-decimals`` as exact fixed-point text, all ``decimals`` digits."""
    if decimals == 0:
        return str(units)
    whole, frac = divmod(units, 10**decimals)
    return f"{whole}.{frac:0{decimals}d}"


class _Market:
    def __init__(self, rnd: random.Random, layout: str, price_decimals: int, size_decimals: int,
                 tick: int) -> None:
        self.rnd, self.layout, self.pd, self.sd, self.tick = rnd, layout, price_decimals, size_decimals, tick
        self.levels = {BID: {}, ASK: {}}      # price -> [[id, qty], ...] oldest first
        self.orders: dict[int, tuple[str, int, int]] = {}   # id -> side, price, created ms
        self.next_id = 65_000_000 if layout == "r" else 2_002_347_637_000_000
        self.ms = 1_430_438_400_000 if layout == "r" else 1_777_689_380_000
        self.rows: list[str] = []
        self.log: list[str] = []
        self.trades: list[dict] = []
        self.counts: Counter = Counter()
        self.mid = (250 * 10**price_decimals) // tick * tick

    # ---- formatting
    def price_text(self, price: int) -> str:
        if self.layout == "r":
            text = _fixed(price, self.pd)
            return text + "." + "0" * 2 if self.pd == 0 else (text + "0" if self.pd == 1 else text)
        return _fixed(price, self.pd) + (".0" if self.pd == 0 else "")

    def btc_text(self, qty: int) -> str:
        value = Decimal(qty).scaleb(-self.sd)
        if value and value < Decimal("0.0001") and self.rnd.random() < 0.5:
            return format(value.normalize(), "e")        # the capture's float form, 2.6e-06
        text = _fixed(qty, self.sd).rstrip("0") if self.sd else str(qty)
        return text + "0" if text.endswith(".") else (text if "." in text else text + ".0")

    def volume_text(self, qty: int) -> str:
        return str(qty * 10 ** (8 - self.sd)) if self.layout == "r" else self.btc_text(qty)

    def row(self, order_id: int, price: int, qty: int, action: str, side: str) -> None:
        created_ms = self.orders.get(order_id, (None, None, self.ms))[2]
        price_t, volume_t = self.price_text(price), self.volume_text(qty)
        if self.layout == "r":
            self.rows.append(f"{order_id},{self.ms},{created_ms // 1000 * 1000},{price_t},{volume_t},"
                             f"{action},{side}")
        else:
            self.rows.append(f"{order_id},{self.ms + 70},{self.ms},{price_t},{volume_t},{action},{side}")
        message = {"price": _fixed(price, self.pd), "amount": _fixed(qty, self.sd),
                   "datetime": str(created_ms // 1000), "id": order_id,
                   "order_type": 0 if side == BID else 1}
        self.log.append(f"{self.ms} order_{action} {json.dumps(message)}")
        self.counts["rows"] += 1

    def trade(self, price: int, qty: int, taker: int, maker: int, taker_side: str) -> None:
        buy, sell = (taker, maker) if taker_side == BID else (maker, taker)
        t = {"trade_id": 8_111_041 + len(self.trades), "ms": self.ms, "price": price, "qty": qty,
             "buy_order_id": buy, "sell_order_id": sell, "side": "buy" if taker_side == BID else "sell"}
        self.trades.append(t)

    # ---- book
    def best(self, side: str) -> Optional[int]:
        levels = self.levels[side]
        if not levels:
            return None
        return max(levels) if side == BID else min(levels)

    def new_id(self) -> int:
        self.next_id += self.rnd.randint(1, 7)
        return self.next_id

    def qty(self) -> int:
        return self.rnd.randint(1, 3 * 10**self.sd) if self.rnd.random() < 0.8 else \
            self.rnd.randint(1, 10**max(self.sd - 3, 0))

    def rest(self, side: str, order_id: int, price: int, qty: int) -> None:
        self.levels[side].setdefault(price, []).append([order_id, qty])

    def step(self) -> None:
        self.ms += self.rnd.randint(1, 400)
        r = self.rnd.random()
        if r < 0.5 or not self.orders:
            self.place_resting()
        elif r < 0.76:
            self.cancel()
        elif r < 0.9:
            self.take(limit=True)
        elif r < 0.904:
            self.maker_or_cancel()
        else:
            self.take(limit=False)

    def place_resting(self) -> None:
        side = self.rnd.choice((BID, ASK))
        other = self.best(ASK if side == BID else BID)
        away = self.rnd.randint(1, 30) * self.tick
        if other is None:
            price = self.mid - away if side == BID else self.mid + away
        else:
            price = other - away if side == BID else other + away
        price = max(price, self.tick)
        order_id = self.new_id()
        qty = self.qty()
        self.orders[order_id] = (side, price, self.ms)
        self.rest(side, order_id, price, qty)
        self.row(order_id, price, qty, "created", side)
        self.counts["rest"] += 1
        self.mid = price + (away if side == BID else -away)

    def cancel(self) -> None:
        order_id = self.rnd.choice(list(self.orders))
        side, price, _ = self.orders[order_id]
        level = self.levels[side][price]
        entry = next(e for e in level if e[0] == order_id)
        level.remove(entry)
        if not level:
            del self.levels[side][price]
        self.row(order_id, price, entry[1], "deleted", side)
        del self.orders[order_id]
        self.counts["cancel"] += 1

    def maker_or_cancel(self) -> None:
        side = self.rnd.choice((BID, ASK))
        other = self.best(ASK if side == BID else BID)
        if other is None:
            return self.place_resting()
        order_id, qty = self.new_id(), self.qty()
        self.orders[order_id] = (side, other, self.ms)
        self.row(order_id, other, qty, "created", side)
        self.ms += self.rnd.randint(0, 2)
        self.row(order_id, other, qty, "deleted", side)
        del self.orders[order_id]
        self.counts["moc"] += 1

    def take(self, limit: bool) -> None:
        side = self.rnd.choice((BID, ASK)) if limit or self.layout == "r" else ASK
        book_side = ASK if side == BID else BID
        first = self.best(book_side)
        if first is None:
            return self.place_resting()
        sign = 1 if side == BID else -1
        levels = sorted(self.levels[book_side], reverse=(side == ASK))
        depth = sum(q for p in levels[:3] for _, q in self.levels[book_side][p])
        qty = self.rnd.randint(1, depth) if not limit else self.qty()
        limit_price = first + sign * self.rnd.randint(0, 3) * self.tick if limit else None
        order_id = self.new_id()
        created_price = (limit_price if limit else 0) if self.layout == "pypi" else first
        self.orders[order_id] = (side, created_price, self.ms)
        self.row(order_id, created_price, qty, "created", side)
        self.counts["taker" if limit else "market"] += 1
        left, last = qty, created_price
        for price in levels:
            if left == 0 or limit and sign * (price - limit_price) > 0:
                break
            if self.layout == "r" and price != last:
                self.ms += self.rnd.randint(0, 3)
                self.row(order_id, price, left, "changed", side)
            last = price
            level = self.levels[book_side][price]
            while level and left:
                maker, maker_qty = level[0]
                fill = min(left, maker_qty)
                left -= fill
                self.ms += self.rnd.randint(0, 3)
                self.trade(price, fill, order_id, maker, side)
                if fill == maker_qty:
                    level.pop(0)
                    self.row(maker, price, 0, "deleted", book_side)
                    del self.orders[maker]
                else:
                    level[0][1] -= fill
                    self.row(maker, price, maker_qty - fill, "changed", book_side)
                if left:
                    self.row(order_id, price, left, "changed", side)
            if not level:
                del self.levels[book_side][price]
        if left == 0:
            self.row(order_id, last, 0, "deleted", side)
            del self.orders[order_id]
        elif limit:
            if self.layout == "r" and last != limit_price:
                self.row(order_id, limit_price, left, "changed", side)
            self.orders[order_id] = (side, limit_price, self.orders[order_id][2])
            self.rest(side, order_id, limit_price, left)
        else:                                   # a market order that ran out of book
            self.row(order_id, last, left, "deleted", side)
            del self.orders[order_id]


def generate(directory: Path, *, layout: str = "pypi", price_decimals: int = 2,
             size_decimals: int = 8, compression: str = "none", events: int = 3000,
             seed: int = 1, tick: int = 1, log_ids: bool = False) -> GeneratedMarket:
    """Simulate ``events`` market events and write the capture into ``directory``.

    Args:
        layout: ``"pypi"`` or ``"r"``.
        price_decimals, size_decimals, tick: the units (see the module
            docstring); ``size_decimals <= 8`` for ``"r"``.
        compression: ``"none"``, ``"gz"`` or ``"xz"`` for the orders file and
            the log (``trades.csv`` stays plain).
        log_ids: the log's trade messages carry ``buy_order_id``,
            ``sell_order_id``, ``type`` and ``microtimestamp`` (newer feed,
            wrapped in ``{"data": ..., "event": "trade"}``); else only
            ``price``, ``amount``, ``id`` as floats (2015).

    Returns:
        A :class:`GeneratedMarket`.
    """
    if layout == "r" and size_decimals > 8:
        raise ValueError("the r layout writes integer satoshi: size_decimals <= 8")
    rnd = random.Random(seed)
    market = _Market(rnd, layout, price_decimals, size_decimals, tick)
    for _ in range(events):
        market.step()
    suffix = SUFFIX[compression]
    orders = directory / f"orders.csv{suffix}"
    _write(orders, "\n".join([HEADERS[layout], *market.rows]) + "\n", compression)
    trade_lines = [TRADES_HEADER]
    log_lines = list(market.log)
    for t in market.trades:
        price_t, amount_t = _fixed(t["price"], price_decimals), _fixed(t["qty"], size_decimals)
        trade_lines.append(f"{t['trade_id']},{t['ms'] + 70},{t['ms']},{price_t},{amount_t},"
                           f"{t['buy_order_id']},{t['sell_order_id']},{t['side']}")
        if log_ids:
            data = {"id": t["trade_id"], "timestamp": str(t["ms"] // 1000),
                    "amount": float(amount_t), "amount_str": amount_t, "price": float(price_t),
                    "price_str": price_t, "type": 0 if t["side"] == "buy" else 1,
                    "microtimestamp": str(t["ms"] * 1000), "buy_order_id": t["buy_order_id"],
                    "sell_order_id": t["sell_order_id"]}
            msg = {"data": data, "channel": "live_trades_btcusd", "event": "trade"}
        else:
            msg = {"price": float(price_t), "amount": float(amount_t), "id": t["trade_id"]}
        log_lines.append(f"{t['ms'] + 11} trade {json.dumps(msg)}")
    log_lines.sort(key=lambda line: int(line.split(" ", 1)[0]))   # stable: file order within a ms
    trades_csv = directory / "trades.csv"
    trades_csv.write_text("\n".join(trade_lines) + "\n")
    log = directory / f"log{suffix}"
    _write(log, "\n".join(log_lines) + "\n", compression)
    return GeneratedMarket(orders, trades_csv, log, layout, price_decimals, size_decimals, tick,
                           market.trades, market.counts)
