"""A seeded simulated Nasdaq-like market, written out as LOBSTER files.

A test whose truth is known: :func:`write_days` runs one full order book
(every order, every level, hidden orders included) and writes, for each
requested level count ``L``, what LOBSTER would publish for it: a
``TICKER_DATE_34200000_57600000_message_L.csv`` and
``..._orderbook_L.csv`` pair. The engine under test must rebuild the book
from what is written; the orderbook file is the truth.

What the simulation models:

- **Participants** enter limit orders around a drifting fair value (a random
  walk pulled towards the mid): most join or sit a few ticks behind the
  touch, some inside the spread (a new best level), some deep (beyond any
  ``L`` written). Levels scroll in and out of the top-``L`` window as the
  fair value moves and sweeps eat the touch.
- **Cancels** (type 2: partial, ``size`` = shares cancelled; type 3: full,
  ``size`` = shares deleted) hit a displayed order a few levels from the
  touch or a resting order drawn from the whole book; their rate grows with the book's size, so the book keeps
  about ``target_orders`` orders.
- **Marketable orders** (aggressors) sweep the other side at price-time
  priority, limited a few ticks through the opposite best. Each fill of a
  displayed order is a type-4 row (the resting order's id, size executed,
  its price, *its* direction); each fill of a hidden order is a type-5 row
  with order id 0. All rows of one sweep share its timestamp. A remainder
  rests as a new type-1 row (the aggressor's own id) at its limit price,
  unless the order was IOC; it never crosses, since everything it could
  trade with was taken.
- **Hidden orders** (``hidden_fraction`` of new orders) rest without being
  displayed, often inside the spread. Their entry and cancellation are
  never written; only their executions are (type 5).
- **Thin-outs** (``thin_outs`` of them): one participant pulls every order
  of one side behind its ``keep`` best levels, deepest first, one type-3
  event each; the first one empties the side (``keep = 0``). The side has
  fewer than ``L`` levels until it refills.
- **Trading halts** (``halts``): a type-7 row ``price -1``; nothing happens
  until, with probability ``p_quoting``, a type-7 row ``price 0`` (quoting
  resumes: new orders and cancels, none marketable, no executions); then,
  with probability ``cross_at_resume``, a type-6 cross trade
  ``time,6,0,size,price,direction`` (direction -1 or 1, price the mid) and
  the type-7 row ``price 1`` (trading resumes), all three with one
  timestamp.
- **Warm-up**: ``target_orders`` orders and ``warmup_events`` events before
  09:30 that are never written, so the book is full at the first row and
  orders from before it appear only when cancelled or executed.

Rules chosen here:

- **Displayed before hidden at one price** (Nasdaq's rule): a sweep takes a
  price level's displayed orders oldest first, then its hidden ones oldest
  first, then moves to the next price. A hidden order at a better price (in
  the spread) is taken before a displayed one behind it.
- **Visibility.** A type 1-4 event is written iff its price is among its
  side's top ``L`` occupied displayed levels: for a new order after it is
  added, for a cancel, delete or execution before it. A side with fewer
  than ``L`` levels shows all of them. Types 5, 6 and 7 are always written.
  Each written message gets one orderbook row: the top ``L`` after it.
  Events not written still change the true book. Consequence (checked by
  the tests): between two written rows the visible top ``L`` changes only
  by the written message, plus levels that scroll in at the bottom.
- **Order ids** grow with entry time by random gaps (other stocks' orders
  share ITCH's id space), all below ``2**31``; hidden orders and IOC
  aggressors use ids too.
- **One simulation, several files.** The run does not depend on which
  levels are written: it stops after the event that writes the
  ``config.rows``-th row at ``config.levels`` (the *reference* level), and
  every requested level gets the rows of the same events. So the
  ``L = 50`` file's rows cut to 4 x 5 columns are the ``L = 5`` file's rows
  at the same messages, and ``write_day`` equals ``write_days`` at
  ``config.levels``, byte for byte.

Units: prices in LOBSTER's unit (USD x 10,000), multiples of
``config.tick``; sizes in shares; time in nanoseconds after midnight,
written as seconds with up to 9 decimals.

Source: LOBSTER_SampleFiles_ReadMe.txt (file names, columns, dummy levels,
trading halts), ``../shared/data/README.md`` (type 1 never crosses, sweeps
share a timestamp, type 5 has order id 0, ids grow with time).
"""

from __future__ import annotations

import random
import re
import shutil
from dataclasses import dataclass, field
from itertools import islice
from math import ceil, floor
from pathlib import Path
from typing import Optional

from sortedcontainers import SortedList

__all__ = ["MarketConfig", "LobsterDay", "write_day", "write_days", "derive_levels", "day_paths",
           "DUMMY_ASK_PRICE", "DUMMY_BID_PRICE", "OPEN_NS", "CLOSE_NS", "ID_LIMIT"]

DUMMY_ASK_PRICE = 9_999_999_999
DUMMY_BID_PRICE = -9_999_999_999
OPEN_NS = 34_200_000_000_000
"""09:30:00 in nanoseconds after midnight: the first written row is after it."""
CLOSE_NS = 57_600_000_000_000
"""16:00:00: the last written row must be before it."""
ID_LIMIT = 1 << 31
"""Every order id is below this (LOBSTER / ITCH ids are 32-bit)."""

_TRADING, _HALTED, _QUOTING = 0, 1, 2
_BUY, _SELL = 1, -1
_ALWAYS = -1
"""``rank`` of a row every level count writes (types 5, 6, 7)."""
_DUMMY_ASK = f"{DUMMY_ASK_PRICE},0"
_DUMMY_BID = f"{DUMMY_BID_PRICE},0"
_NAME_RE = re.compile(r"(?P<stem>.+)_(?:message|orderbook)_(?P<levels>\d+)\.csv")


@dataclass
class MarketConfig:
    """The knobs of one simulated day; equal configs write equal bytes.

    Every random draw comes from one ``random.Random(seed)``. Probabilities
    are relative weights of the event kinds drawn at each step (cancel
    weights are multiplied by ``live orders / target_orders``).

    Attributes:
        seed: the one seed.
        rows: rows written at ``levels`` (the reference level count); the
            run stops after the event that writes the last of them.
        levels: the reference ``L`` (also what :func:`write_day` writes).
        tick: price increment in USD x 10,000: 100 (one cent) or 1
            ($0.0001; then every price is below 10,000, i.e. under $1).
        symbol: ticker in the file names.
        date: ``YYYY-MM-DD`` in the file names.
        start_price: initial fair value (USD x 10,000); default $50.00 at a
            cent tick, $0.50 below.
        target_orders: resting orders (both sides, hidden included) the
            book holds in steady state.
        warmup_events: events simulated, not written, before 09:30.
        p_limit: weight of a new passive limit order.
        p_partial_cancel: weight of a partial cancel (type 2).
        p_delete: weight of a full delete (type 3).
        p_market: weight of a marketable order (a sweep).
        near_cancel_fraction: share of cancels aimed at a displayed order
            near the touch (the rest hit any resting order).
        near_cancel_levels: mean level rank (0 = best) of those.
        hidden_fraction: share of new passive orders that are hidden.
        p_inside: chance a passive order is placed strictly inside the
            spread (when the spread is wider than one tick).
        deep_fraction: share of passive orders placed ``deep_ticks`` away
            from the touch (beyond the top 50 levels, mostly).
        deep_ticks: ``(low, high)`` ticks from the touch for deep orders.
        mean_depth_ticks: mean distance (ticks) behind the touch of the
            other passive orders (exponential, rounded down).
        sweep_ticks_mean: mean extra ticks a marketable order's limit goes
            through the opposite best.
        ioc_fraction: share of marketable orders that are IOC (no
            remainder rests).
        drift_ticks: standard deviation (ticks) of the fair value's step
            per event.
        halts: trading halts during the written part.
        p_quoting: chance a halt has a quoting-only period (type 7 price 0).
        quoting_events: ``(low, high)`` events during a quoting period.
        cross_at_resume: chance of a type-6 cross trade at a resume.
        thin_outs: one-sided pulls of all orders behind a few best levels
            (the first empties its side).
        mean_gap_ns: mean time between events (exponential), nanoseconds.
        id_gap: order ids grow by ``randint(1, id_gap)`` per new order.
    """

    seed: int = 0
    rows: int = 20_000
    levels: int = 10
    tick: int = 100
    symbol: str = "SIM"
    date: str = "2012-06-21"
    start_price: Optional[int] = None
    target_orders: int = 1000
    warmup_events: int = 3000
    p_limit: float = 0.45
    p_partial_cancel: float = 0.07
    p_delete: float = 0.33
    p_market: float = 0.05
    near_cancel_fraction: float = 0.5
    near_cancel_levels: float = 4.0
    hidden_fraction: float = 0.08
    p_inside: float = 0.2
    deep_fraction: float = 0.08
    deep_ticks: tuple[int, int] = (60, 400)
    mean_depth_ticks: float = 10.0
    sweep_ticks_mean: float = 1.5
    ioc_fraction: float = 0.3
    drift_ticks: float = 0.3
    halts: int = 3
    p_quoting: float = 0.67
    quoting_events: tuple[int, int] = (20, 200)
    cross_at_resume: float = 1.0
    thin_outs: int = 4
    mean_gap_ns: int = 50_000_000
    id_gap: int = 8

    def __post_init__(self) -> None:
        if self.rows < 1 or self.levels < 1 or self.tick < 1 or self.target_orders < 1:
            raise ValueError("rows, levels, tick and target_orders must be positive")
        if self.tick < 100 and self.start_price is not None and not 0 < self.start_price < 10_000:
            raise ValueError("a sub-penny tick needs a start_price below 10,000 ($1)")


@dataclass
class LobsterDay:
    """One written level count of a simulated day.

    Attributes:
        messages: the ``..._message_L.csv`` file.
        orderbook: the ``..._orderbook_L.csv`` file (row k: the top ``L``
            after message k).
        levels: ``L``.
        rows: rows in each file.
        tick: the simulation's tick (USD x 10,000).
        counts: ``type_1`` ... ``type_7`` (rows per type); ``sweeps``
            (marketable orders with an execution row), ``multi_row_sweeps``
            (with two or more); ``halts``, ``quoting_resumed``,
            ``trading_resumed`` (type-7 rows by price); ``thin_rows`` (rows
            where a side shows fewer than ``L`` levels), ``thin_ask_rows``,
            ``thin_bid_rows``, ``empty_side_rows`` (a side shows none);
            ``scroll_ins`` (levels in a row's top ``L`` that the previous
            row did not show and the row's own type-1 message did not
            create); ``unseen_ids`` (ids cancelled, deleted or executed in
            the file without a type-1 row in it); ``unwritten_events``
            (type 1-4 events after 09:30 not written at this ``L``).
    """

    messages: Path
    orderbook: Path
    levels: int
    rows: int
    tick: int
    counts: dict = field(default_factory=dict)


def day_paths(directory: Path, symbol: str, date: str, levels: int) -> tuple[Path, Path]:
    """``(messages, orderbook)`` paths of a LOBSTER day at ``levels`` in ``directory``.

    Source: LOBSTER_SampleFiles_ReadMe.txt, file names.
    """
    stem = f"{symbol}_{date}_{OPEN_NS // 1_000_000}_{CLOSE_NS // 1_000_000}"
    return (Path(directory) / f"{stem}_message_{levels}.csv",
            Path(directory) / f"{stem}_orderbook_{levels}.csv")


def write_day(directory: Path, config: MarketConfig) -> LobsterDay:
    """Simulate ``config`` and write its LOBSTER pair at ``config.levels``.

    Args:
        directory: created if missing; files of the same name are replaced.
        config: the knobs; ``config.rows`` rows are written.

    Returns:
        The :class:`LobsterDay`; identical to ``write_days(directory,
        config)[config.levels]``.

    Raises:
        ValueError: the day would run past 16:00 (lower ``mean_gap_ns``) or
            an id would reach ``2**31`` (lower ``id_gap``).

    Source: LOBSTER_SampleFiles_ReadMe.txt.
    """
    return write_days(directory, config, levels=(config.levels,))[config.levels]


def write_days(directory: Path, config: MarketConfig,
               levels: tuple[int, ...] = (1, 2, 5, 10, 50)) -> dict[int, LobsterDay]:
    """Simulate ``config`` once and write its LOBSTER pair at every level count.

    The simulation, and where it stops, depend only on ``config`` (it stops
    after the event that writes the ``config.rows``-th row at
    ``config.levels``, whether or not that level is in ``levels``); each
    ``L`` gets the rows of the events inside its top ``L``. So the rows at a
    smaller ``L`` are a subsequence of those at a larger one, with the
    orderbook row cut to its first ``4 L`` columns.

    Args:
        directory: created if missing.
        config: the knobs.
        levels: level counts to write (positive, any order).

    Returns:
        ``{L: LobsterDay}``.

    Raises:
        ValueError: see :func:`write_day`; or a level count below 1.

    Complexity: O(E log N + R * Lmax): E events, N resting orders, R rows
    written at the largest level count Lmax.
    Source: LOBSTER_SampleFiles_ReadMe.txt.
    """
    if not levels or min(levels) < 1:
        raise ValueError(f"level counts must be positive, got {levels!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    outs = {}
    try:
        for lv in sorted(set(levels), reverse=True):
            msg_path, ob_path = day_paths(directory, config.symbol, config.date, lv)
            outs[lv] = _Output(lv, msg_path, ob_path)
        writer = _Writer(list(outs.values()), config.levels, config.rows)
        _Market(config, writer).run()
    finally:
        for out in outs.values():
            out.close()
    return {lv: LobsterDay(out.msg_path, out.ob_path, lv, out.rows, config.tick, out.final_counts())
            for lv, out in sorted(outs.items())}


def derive_levels(messages: Path, orderbook: Path, k: int, directory: Path) -> tuple[Path, Path]:
    """From a level-``L`` LOBSTER pair, write a level-``k`` pair (``k <= L``).

    The orderbook file keeps the first ``4 k`` columns of each row (the top
    ``k`` levels); the message file is copied unchanged. A real level-``k``
    message file would hold only the events inside the top ``k``; the
    derived one also holds those between levels ``k + 1`` and ``L`` (each
    with an unchanged orderbook row), which a reconstruction must accept
    too.

    Args:
        messages: ``..._message_L.csv``.
        orderbook: ``..._orderbook_L.csv``.
        k: the new level count, ``1 <= k <= L``.
        directory: where ``..._message_k.csv`` and ``..._orderbook_k.csv``
            go (created if missing; must not be where the level-``L`` files
            are when ``k == L``).

    Returns:
        ``(messages_k, orderbook_k)``.

    Raises:
        ValueError: a name not in LOBSTER's form, ``k`` out of range, or an
            orderbook row narrower than ``4 k`` columns.

    Source: LOBSTER_SampleFiles_ReadMe.txt (file names; columns per level).
    """
    messages, orderbook = Path(messages), Path(orderbook)
    m_name, o_name = _NAME_RE.fullmatch(messages.name), _NAME_RE.fullmatch(orderbook.name)
    if m_name is None or o_name is None:
        raise ValueError(f"not LOBSTER file names: {messages.name!r}, {orderbook.name!r}")
    big = int(o_name["levels"])
    if not 1 <= k <= big:
        raise ValueError(f"k must be in 1..{big}, got {k}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    msg_out = directory / f"{m_name['stem']}_message_{k}.csv"
    ob_out = directory / f"{o_name['stem']}_orderbook_{k}.csv"
    if msg_out.resolve() == messages.resolve() or ob_out.resolve() == orderbook.resolve():
        raise ValueError(f"derived files would overwrite their source in {directory}")
    shutil.copyfile(messages, msg_out)
    columns = 4 * k
    with open(orderbook, encoding="ascii", newline="") as src, \
            open(ob_out, "w", encoding="ascii", newline="") as dst:
        for row, line in enumerate(src):
            cells = line.rstrip("\r\n").split(",", columns)
            if len(cells) < columns:
                raise ValueError(f"{orderbook}: row {row} has {len(cells)} columns, fewer than {columns}")
            dst.write(",".join(cells[:columns]) + "\n")
    return msg_out, ob_out


# ----------------------------------------------------------------- the book
class _Order:
    __slots__ = ("order_id", "book", "key", "qty", "hidden", "pos")

    def __init__(self, order_id: int, book: "_Side", key: int, qty: int, hidden: bool) -> None:
        self.order_id = order_id
        self.book = book
        self.key = key
        self.qty = qty
        self.hidden = hidden
        self.pos = -1


class _Side:
    """One side of the true book. Prices are kept as *keys*, best first:
    ``key = price * kmul`` (``kmul`` -1 for bids, 1 for asks), so the best
    level is ``prices[0]`` and a price's level rank is ``bisect_left``.
    An incoming order with key ``a`` crosses a resting key ``r`` on the
    other side iff ``a + r <= 0``."""

    __slots__ = ("direction", "kmul", "prices", "levels", "totals", "cells", "hprices", "hlevels")

    def __init__(self, direction: int) -> None:
        self.direction = direction
        self.kmul = -1 if direction == _BUY else 1
        self.prices = SortedList()            # displayed level keys
        self.levels: dict[int, dict[int, _Order]] = {}   # key -> FIFO of displayed orders
        self.totals: dict[int, int] = {}      # key -> displayed shares
        self.cells: dict[int, str] = {}       # key -> "price,size" as the orderbook file writes it
        self.hprices = SortedList()           # hidden level keys
        self.hlevels: dict[int, dict[int, _Order]] = {}

    def best_price(self) -> Optional[int]:
        return self.prices[0] * self.kmul if self.prices else None

    def best_any_key(self) -> Optional[int]:
        """Best key over displayed and hidden orders."""
        if self.prices:
            return min(self.prices[0], self.hprices[0]) if self.hprices else self.prices[0]
        return self.hprices[0] if self.hprices else None


# ------------------------------------------------------------------ writing
class _Output:
    """The two files and the counts of one level count."""

    def __init__(self, levels: int, msg_path: Path, ob_path: Path) -> None:
        self.levels = levels
        self.msg_path, self.ob_path = msg_path, ob_path
        self.msg = open(msg_path, "w", encoding="ascii", newline="", buffering=1 << 20)
        self.ob = open(ob_path, "w", encoding="ascii", newline="", buffering=1 << 20)
        self.rows = 0
        self.counts = dict.fromkeys(
            ("type_1", "type_2", "type_3", "type_4", "type_5", "type_6", "type_7", "sweeps",
             "multi_row_sweeps", "halts", "quoting_resumed", "trading_resumed", "thin_rows",
             "thin_ask_rows", "thin_bid_rows", "empty_side_rows", "scroll_ins", "unseen_ids",
             "unwritten_events"), 0)
        self.submitted: set[int] = set()
        self.unseen: set[int] = set()
        self.sweep = 0
        self.sweep_rows = 0
        self.prev_asks: list[int] = []
        self.prev_bids: list[int] = []

    def close(self) -> None:
        self.msg.close()
        self.ob.close()

    def final_counts(self) -> dict:
        counts = dict(self.counts)
        counts["unseen_ids"] = len(self.unseen)
        return counts


class _Writer:
    """Writes each emitted event to every level count whose window it touches."""

    def __init__(self, outs: list[_Output], ref_levels: int, ref_rows: int) -> None:
        self.outs = sorted(outs, key=lambda o: -o.levels)
        self.lmax = self.outs[0].levels
        self.ref_levels, self.ref_rows = ref_levels, ref_rows
        self.ref_count = 0
        self.active = False
        self.done = False
        self.sweep_id = 0
        self._t = -1
        self._tstr = ""
        self.asks: Optional[_Side] = None
        self.bids: Optional[_Side] = None

    def emit(self, t: int, mtype: int, order_id: int, size: int, price: int, direction: int,
             rank: int) -> None:
        """One event: written at every ``L > rank`` with the top ``L`` after it."""
        if not self.active or self.done:
            return
        if rank < self.ref_levels:
            self.ref_count += 1
            if self.ref_count >= self.ref_rows:
                self.done = True
        if t != self._t:
            seconds, ns = divmod(t, 1_000_000_000)
            self._t, self._tstr = t, f"{seconds}.{(f'{ns:09d}'.rstrip('0') or '0')}"
        if rank >= self.lmax:
            for out in self.outs:
                out.counts["unwritten_events"] += 1
            return
        line = f"{self._tstr},{mtype},{order_id},{size},{price},{direction}\n"
        lmax = self.lmax
        asks, bids = self.asks, self.bids
        ask_keys = asks.prices[:lmax]
        bid_keys = bids.prices[:lmax]
        ac, bc = asks.cells, bids.cells
        acells = [ac[k] for k in ask_keys]
        bcells = [bc[k] for k in bid_keys]
        na, nb = len(acells), len(bcells)
        if na < lmax:
            acells += [_DUMMY_ASK] * (lmax - na)
        if nb < lmax:
            bcells += [_DUMMY_BID] * (lmax - nb)
        parts = [a + "," + b for a, b in zip(acells, bcells)]
        own_key = price * (-1 if direction == _BUY else 1) if mtype == 1 else None
        for out in self.outs:
            lv = out.levels
            if lv <= rank:
                out.counts["unwritten_events"] += 1
                continue
            out.msg.write(line)
            out.ob.write(",".join(parts[:lv]) + "\n" if lv < lmax else ",".join(parts) + "\n")
            out.rows += 1
            c = out.counts
            c[_TYPE_KEYS[mtype]] += 1
            if mtype == 1:
                out.submitted.add(order_id)
            elif mtype <= 4:
                if order_id not in out.submitted:
                    out.unseen.add(order_id)
            if mtype == 4 or mtype == 5:
                if out.sweep != self.sweep_id:
                    out.sweep, out.sweep_rows = self.sweep_id, 1
                    c["sweeps"] += 1
                else:
                    out.sweep_rows += 1
                    if out.sweep_rows == 2:
                        c["multi_row_sweeps"] += 1
            elif mtype == 7:
                c[_HALT_KEYS[price]] += 1
            if na < lv or nb < lv:
                c["thin_rows"] += 1
                if na < lv:
                    c["thin_ask_rows"] += 1
                if nb < lv:
                    c["thin_bid_rows"] += 1
                if not na or not nb:
                    c["empty_side_rows"] += 1
            for keys, prev_name, side_key_mul in ((ask_keys, "prev_asks", 1), (bid_keys, "prev_bids", -1)):
                cur = keys[:lv]
                prev = getattr(out, prev_name)
                if cur != prev:
                    new = set(cur).difference(prev) if out.rows > 1 else ()
                    if new and own_key is not None and direction * -side_key_mul == 1:
                        new.discard(own_key)
                    c["scroll_ins"] += len(new)
                    setattr(out, prev_name, cur)


_TYPE_KEYS = {t: f"type_{t}" for t in range(1, 8)}
_HALT_KEYS = {-1: "halts", 0: "quoting_resumed", 1: "trading_resumed"}


# --------------------------------------------------------------- simulation
class _Market:
    """The true book and the participants' event flow."""

    def __init__(self, config: MarketConfig, writer: _Writer) -> None:
        self.cfg = config
        self.rng = random.Random(config.seed)
        self.writer = writer
        self.bids, self.asks = _Side(_BUY), _Side(_SELL)
        self.sides = {_BUY: self.bids, _SELL: self.asks}
        writer.bids, writer.asks = self.bids, self.asks
        self.tick = config.tick
        if config.tick < 100:
            self.min_price, self.max_price = config.tick, 9_999 - 9_999 % config.tick
            start = config.start_price if config.start_price is not None else 5_000
        else:
            self.min_price, self.max_price = config.tick, 10**9 - 10**9 % config.tick
            start = config.start_price if config.start_price is not None else 500_000
        self.fair = float(start - start % config.tick)
        self.fair_low, self.fair_high = self.fair / 2, min(self.fair * 1.5, float(self.max_price))
        self.live: list[_Order] = []
        self.next_id = self.rng.randint(1_000_000, 5_000_000)
        self.t = 0
        self.phase = _TRADING
        self.thin_outs_done = 0
        self.inv_gap = 1.0 / max(1, config.mean_gap_ns)

    # -- schedule
    def run(self) -> None:
        cfg, rng, writer = self.cfg, self.rng, self.writer
        n = cfg.halts + cfg.thin_outs
        kinds = ["halt"] * cfg.halts + ["thin"] * cfg.thin_outs
        rng.shuffle(kinds)
        schedule = []
        for i, kind in enumerate(kinds):
            at = int(cfg.rows * (i + 0.5 + (rng.random() - 0.5) * 0.6) / n) if n else 0
            schedule.append((max(1, min(at, cfg.rows - 1)), kind))
        schedule.reverse()
        for _ in range(cfg.target_orders):
            self._passive()
        for _ in range(cfg.warmup_events):
            self._step()
        self.t = OPEN_NS
        writer.active = True
        while not writer.done:
            while schedule and writer.ref_count >= schedule[-1][0] and not writer.done:
                if schedule.pop()[1] == "halt":
                    self._halt()
                else:
                    self._thin_out()
            if not writer.done:
                self._step()

    def _clock(self, mean_ns: Optional[int] = None) -> None:
        gap = 1 + int(self.rng.expovariate(self.inv_gap if mean_ns is None else 1.0 / mean_ns))
        self.t += gap
        if self.writer.active and self.t >= CLOSE_NS:
            raise ValueError(f"the simulated day runs past 16:00 (seed {self.cfg.seed}): "
                             f"lower mean_gap_ns ({self.cfg.mean_gap_ns}) or rows ({self.cfg.rows})")

    def _step(self) -> None:
        cfg, rng = self.cfg, self.rng
        self._clock()
        self._drift()
        scale = len(self.live) / cfg.target_orders
        w_limit = cfg.p_limit
        w_part = cfg.p_partial_cancel * scale
        w_del = cfg.p_delete * scale
        w_mkt = cfg.p_market if self.phase == _TRADING else 0.0
        u = rng.random() * (w_limit + w_part + w_del + w_mkt)
        if u < w_limit or not self.live:
            self._passive()
        elif u < w_limit + w_part:
            self._cancel(partial=True)
        elif u < w_limit + w_part + w_del:
            self._cancel(partial=False)
        else:
            self._aggress()

    def _drift(self) -> None:
        cfg = self.cfg
        bid, ask = self.bids.best_price(), self.asks.best_price()
        fair = self.fair + self.rng.gauss(0.0, cfg.drift_ticks * self.tick)
        if bid is not None and ask is not None:
            fair += 0.01 * ((bid + ask) / 2 - fair)
        if fair < self.fair_low:
            fair = 2 * self.fair_low - fair
        elif fair > self.fair_high:
            fair = 2 * self.fair_high - fair
        self.fair = fair

    def _new_id(self) -> int:
        self.next_id += self.rng.randint(1, self.cfg.id_gap)
        if self.next_id >= ID_LIMIT:
            raise ValueError(f"order ids reached 2**31 (seed {self.cfg.seed}): lower id_gap or rows")
        return self.next_id

    def _size(self) -> int:
        rng = self.rng
        if rng.random() < 0.12:
            return rng.randint(1, 99)
        return 100 * rng.choice((1, 1, 1, 1, 2, 2, 3, 4, 5, 10))

    # -- order flow
    def _passive(self) -> None:
        """A new non-marketable limit order (hidden with ``hidden_fraction``)."""
        cfg, rng, tick = self.cfg, self.rng, self.tick
        direction = _BUY if rng.random() < 0.5 else _SELL
        hidden = rng.random() < cfg.hidden_fraction
        bid, ask = self.bids.best_price(), self.asks.best_price()
        if bid is not None and ask is not None and ask - bid > tick \
                and rng.random() < (0.5 if hidden else cfg.p_inside):
            price = bid + tick * rng.randint(1, (ask - bid) // tick - 1)
        else:
            if rng.random() < cfg.deep_fraction:
                away = rng.randint(*cfg.deep_ticks)
            else:
                away = int(rng.expovariate(1.0 / cfg.mean_depth_ticks))
            if direction == _BUY:
                price = floor((self.fair - tick / 2) / tick) * tick - away * tick
            else:
                price = ceil((self.fair + tick / 2) / tick) * tick + away * tick
        opp = self.sides[-direction]
        okey = opp.best_any_key()
        if okey is not None:
            other = okey * opp.kmul
            price = min(price, other - tick) if direction == _BUY else max(price, other + tick)
        if price < self.min_price or price > self.max_price:
            return
        self._submit(direction, price, self._size(), hidden, ioc=False)

    def _aggress(self) -> None:
        """A marketable order: its limit a few ticks through the opposite best."""
        cfg, rng, tick = self.cfg, self.rng, self.tick
        bid, ask = self.bids.best_price(), self.asks.best_price()
        mid = (bid + ask) / 2 if bid is not None and ask is not None else self.fair
        p_buy = 0.5 + max(-0.35, min(0.35, 0.15 * (self.fair - mid) / tick))
        direction = _BUY if rng.random() < p_buy else _SELL
        opp = self.sides[-direction]
        okey = opp.best_any_key()
        if okey is None:
            self._passive()
            return
        through = int(rng.expovariate(1.0 / cfg.sweep_ticks_mean))
        limit = okey * opp.kmul + direction * through * tick
        limit = max(self.min_price, min(self.max_price, limit))
        size = self._size() * rng.choice((1, 1, 2, 3, 5, 8))
        self._submit(direction, limit, size, hidden=False, ioc=rng.random() < cfg.ioc_fraction)

    def _submit(self, direction: int, price: int, qty: int, hidden: bool, ioc: bool) -> None:
        """Enter an order: sweep the other side at price-time priority
        (displayed before hidden at each price), then rest any remainder."""
        order_id = self._new_id()
        own, opp = self.sides[direction], self.sides[-direction]
        key = price * own.kmul
        emit, t = self.writer.emit, self.t
        swept = False
        while qty:
            dk = opp.prices[0] if opp.prices else None
            hk = opp.hprices[0] if opp.hprices else None
            best = hk if dk is None else (dk if hk is None or dk <= hk else hk)
            if best is None or key + best > 0:
                break
            if self.phase != _TRADING:
                raise AssertionError("a marketable order outside trading hours")
            if not swept:
                self.writer.sweep_id += 1
                swept = True
            fill_price = best * opp.kmul
            if best == dk:
                for order in list(opp.levels[dk].values()):
                    fill = min(qty, order.qty)
                    self._reduce(order, fill)
                    emit(t, 4, order.order_id, fill, fill_price, opp.direction, 0)
                    qty -= fill
                    if not qty:
                        break
            else:
                for order in list(opp.hlevels[hk].values()):
                    fill = min(qty, order.qty)
                    self._reduce(order, fill)
                    emit(t, 5, 0, fill, fill_price, opp.direction, _ALWAYS)
                    qty -= fill
                    if not qty:
                        break
        if qty and not ioc:
            order = _Order(order_id, own, key, qty, hidden)
            self._rest(order)
            if not hidden:
                emit(t, 1, order_id, qty, price, direction, own.prices.bisect_left(key))

    def _cancel(self, partial: bool) -> None:
        """Cancel part (type 2) or all (type 3) of a resting order: with
        ``near_cancel_fraction`` a displayed one near the touch (a level
        rank drawn exponentially), else one drawn from the whole book."""
        rng = self.rng
        book = self.bids if rng.random() < 0.5 else self.asks
        if book.prices and rng.random() < self.cfg.near_cancel_fraction:
            rank = min(len(book.prices) - 1, int(rng.expovariate(1.0 / self.cfg.near_cancel_levels)))
            level = book.levels[book.prices[rank]]
            order = next(islice(level.values(), rng.randrange(len(level)), None))
        else:
            order = self.live[rng.randrange(len(self.live))]
        if partial and order.qty > 1:
            mtype, size = 2, rng.randint(1, order.qty - 1)
        else:
            mtype, size = 3, order.qty
        self._remove(order, mtype, size)

    def _remove(self, order: _Order, mtype: int, size: int) -> None:
        book = order.book
        rank = _ALWAYS if order.hidden else book.prices.bisect_left(order.key)
        self._reduce(order, size)
        if not order.hidden:
            self.writer.emit(self.t, mtype, order.order_id, size, order.key * book.kmul, book.direction, rank)

    def _rest(self, order: _Order) -> None:
        book, key = order.book, order.key
        if order.hidden:
            level = book.hlevels.get(key)
            if level is None:
                level = book.hlevels[key] = {}
                book.hprices.add(key)
        else:
            level = book.levels.get(key)
            if level is None:
                level = book.levels[key] = {}
                book.prices.add(key)
                total = order.qty
            else:
                total = book.totals[key] + order.qty
            book.totals[key] = total
            book.cells[key] = f"{key * book.kmul},{total}"
        level[order.order_id] = order
        order.pos = len(self.live)
        self.live.append(order)

    def _reduce(self, order: _Order, qty: int) -> None:
        """Take ``qty`` shares off a resting order; drop it (and its level) at 0."""
        book, key = order.book, order.key
        order.qty -= qty
        if order.hidden:
            if not order.qty:
                level = book.hlevels[key]
                del level[order.order_id]
                if not level:
                    del book.hlevels[key]
                    book.hprices.remove(key)
        else:
            total = book.totals[key] - qty
            if not order.qty:
                del book.levels[key][order.order_id]
            if total:
                book.totals[key] = total
                book.cells[key] = f"{key * book.kmul},{total}"
            else:
                del book.levels[key], book.totals[key], book.cells[key]
                book.prices.remove(key)
        if not order.qty:
            last = self.live.pop()
            if last is not order:
                self.live[order.pos] = last
                last.pos = order.pos

    # -- episodes
    def _thin_out(self) -> None:
        """One side loses every order behind its ``keep`` best levels,
        deepest first, one delete event each (the first thin-out: all)."""
        rng = self.rng
        book = self.sides[_BUY if rng.random() < 0.5 else _SELL]
        keep = 0 if self.thin_outs_done == 0 else rng.choice((0, 1, 2, 3, 5, 8, 13, 21, 34))
        self.thin_outs_done += 1
        bound = book.prices[keep - 1] if keep and len(book.prices) >= keep else None
        if keep and bound is None:
            return
        for hkey in list(book.hprices):
            if bound is None or hkey > bound:
                for order in list(book.hlevels[hkey].values()):
                    self._reduce(order, order.qty)
        for key in reversed(book.prices[keep:]):
            for order in reversed(list(book.levels[key].values())):
                self._clock(20_000)
                self._remove(order, 3, order.qty)

    def _halt(self) -> None:
        """Halt; maybe a quoting-only period; a cross trade; resume."""
        cfg, rng, emit = self.cfg, self.rng, self.writer.emit
        self._clock()
        emit(self.t, 7, 0, 0, -1, -1, _ALWAYS)
        self.phase = _HALTED
        self.t += rng.randint(1, 60) * 1_000_000_000 + rng.randint(0, 999_999_999)
        if rng.random() < cfg.p_quoting:
            emit(self.t, 7, 0, 0, 0, -1, _ALWAYS)
            self.phase = _QUOTING
            for _ in range(rng.randint(*cfg.quoting_events)):
                if self.writer.done:
                    return
                self._step()
        self._clock()
        if rng.random() < cfg.cross_at_resume:
            bid, ask = self.bids.best_price(), self.asks.best_price()
            if bid is not None and ask is not None:
                price = bid + (ask - bid) // (2 * self.tick) * self.tick
            else:
                price = round(self.fair / self.tick) * self.tick
            emit(self.t, 6, 0, 100 * rng.randint(1, 50), price, rng.choice((-1, 1)), _ALWAYS)
        emit(self.t, 7, 0, 0, 1, -1, _ALWAYS)
        self.phase = _TRADING
