"""Time travel as pandas DataFrames: books, top of book, trades, order lives,
diffs, depth heatmaps and what-if replays. Reached through
:class:`recovery.time_travel.History` (``open_data_dir``); needs the
``notebook`` extra (pandas, numpy), imported only here.

Units, in every table:
    price: integer price units (the book's ``tick_size`` divides it); qty:
    integer lots. With ``open_data_dir(d, scales={sym: (price_scale,
    qty_scale)})`` a table for a symbol with a scale also has
    ``price_decimal = price / price_scale`` and ``qty_decimal = qty /
    qty_scale`` (float64, for display; NaN for symbols without a scale).
    ts / time: ``pandas.Timestamp`` in UTC, from the commands' ``ts_ns``
    (a trade has its command's). side: ``"bid"``/``"ask"`` on the book,
    ``"buy"``/``"sell"`` for an order or a taker.
    seq: the WAL sequence number; a state "at seq" is the state right after
    the matcher step (command plus its trades) that holds ``seq``.
Every DataFrame's ``attrs`` carry ``seq`` (or ``from_seq``/``to_seq``) and ``symbol``.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Iterable, Optional

import numpy as np
import pandas as pd

from engine.core import CancelReason, Matcher

from .keyframes import Cursor
from .time_travel import History, to_ns

__all__ = ["book", "book_at_time", "bbo", "trades", "order", "diff", "depth_heatmap", "what_if", "balances", "ledger",
           "BookDiff", "WhatIf", "L2_COLUMNS", "L3_COLUMNS", "TRADE_COLUMNS", "BBO_COLUMNS", "ORDER_COLUMNS"]

L2_COLUMNS = ["side", "level", "price", "qty", "orders", "cum_qty"]
L3_COLUMNS = ["side", "level", "price", "order_id", "account", "qty", "rank", "qty_ahead", "placed_seq"]
TRADE_COLUMNS = ["seq", "ts", "match_id", "symbol", "symbol_seq", "price", "qty", "taker_side",
                 "maker_order_id", "taker_order_id", "maker_account", "taker_account", "cmd_seq", "source",
                 "source_pos"]
BBO_COLUMNS = ["seq", "ts", "bid", "bid_qty", "ask", "ask_qty", "mid", "spread"]
ORDER_COLUMNS = ["seq", "ts", "event", "price", "qty", "leaves_qty", "counterparty_order_id",
                 "counterparty_account", "match_id", "rank", "qty_ahead"]
_SIDES = {1: "bid", 2: "ask"}
_ORDER_SIDES = {1: "buy", 2: "sell"}
_CANCEL_REASONS = {r.value: r.name.lower() for r in CancelReason}


def _ts(ns: Any) -> Any:
    return pd.DatetimeIndex(np.asarray(ns, dtype="int64").view("datetime64[ns]")).tz_localize("UTC")


def _add_decimals(h: History, df: pd.DataFrame, symbol: Optional[str],
                  price_cols: Iterable[str] = ("price",), qty_cols: Iterable[str] = ("qty",)) -> pd.DataFrame:
    if not h.scales:
        return df
    if symbol is not None:
        if symbol not in h.scales:
            return df
        p = pd.Series(float(h.scales[symbol][0]), index=df.index)
        q = pd.Series(float(h.scales[symbol][1]), index=df.index)
    else:
        p = df["symbol"].map(lambda s: h.scales.get(s, (np.nan, np.nan))[0]).astype("float64")
        q = df["symbol"].map(lambda s: h.scales.get(s, (np.nan, np.nan))[1]).astype("float64")
    for col in price_cols:
        df[f"{col}_decimal"] = df[col].astype("float64") / p
    for col in qty_cols:
        df[f"{col}_decimal"] = df[col].astype("float64") / q
    return df


def _book_of(cursor: Cursor, seq: int, symbol: str) -> Any:
    b = cursor.matcher.books.get(symbol)
    if b is None:
        raise KeyError(f"no order book for {symbol!r} at seq {seq} (symbols: {sorted(cursor.matcher.books)})")
    return b


def _l2_rows(b: Any, depth: Optional[int]) -> dict:
    cols: dict = {c: [] for c in L2_COLUMNS}
    for side in (1, 2):
        cum = 0
        for i, lvl in enumerate(b.levels(side)):
            if depth is not None and i >= depth:
                break
            cum += lvl.qty
            cols["side"].append(_SIDES[side])
            cols["level"].append(i + 1)
            cols["price"].append(lvl.price)
            cols["qty"].append(lvl.qty)
            cols["orders"].append(lvl.count)
            cols["cum_qty"].append(cum)
    return cols


def _l3_rows(b: Any, cursor: Cursor, depth: Optional[int]) -> dict:
    cols: dict = {c: [] for c in L3_COLUMNS}
    known = cursor.placed.get(b.symbol, {})
    for side in (1, 2):
        for i, lvl in enumerate(b.levels(side)):
            if depth is not None and i >= depth:
                break
            ahead = 0
            for rank, o in enumerate(lvl.live()):
                cols["side"].append(_SIDES[side])
                cols["level"].append(i + 1)
                cols["price"].append(lvl.price)
                cols["order_id"].append(o.order_id)
                cols["account"].append(o.account)
                cols["qty"].append(o.qty)
                cols["rank"].append(rank)
                cols["qty_ahead"].append(ahead)
                cols["placed_seq"].append(known.get(o.order_id))
                ahead += o.qty
    return cols


def _frame(cols: dict, columns: list, int_cols: Iterable[str] = ()) -> pd.DataFrame:
    df = pd.DataFrame({c: cols[c] for c in columns}, columns=columns)
    for c in int_cols:
        df[c] = df[c].astype("Int64") if df[c].isna().any() or df[c].dtype == object else df[c].astype("int64")
    return df


def book(h: History, seq: int, symbol: str, depth: Optional[int] = None, level: str = "L2") -> pd.DataFrame:
    """The book of ``symbol`` right after ``seq``, bids then asks, best first.

    Args:
        depth: at most this many price levels per side (``None``: all).
        level: ``"L2"``: one row per price level, columns ``side`` ("bid"/"ask"),
            ``level`` (1 = best), ``price``, ``qty`` (lots resting), ``orders``,
            ``cum_qty`` (qty of this and better levels). ``"L3"``: one row per
            resting order in time priority, columns ``side``, ``level``,
            ``price``, ``order_id``, ``account``, ``qty`` (leaves), ``rank`` (0 =
            head of its level's queue), ``qty_ahead`` (lots ahead of it in the
            queue), ``placed_seq`` (seq of the command that last entered it on
            the book: its place, or an amend that lost priority, which is a new
            entry; an amend that kept priority is not; ``<NA>`` where the WAL
            cannot tell: an order from a snapshot older than the WAL's first
            segment).

    Raises:
        KeyError: no book for ``symbol`` at ``seq``. ValueError: ``seq`` out of range
        or ``level`` unknown.

    Complexity: at most ``max_replay`` events replayed, O(rows) to build.
    """
    if level not in ("L2", "L3"):
        raise ValueError(f"level must be 'L2' or 'L3', got {level!r}")
    cursor = h.timeline.seek(seq)
    b = _book_of(cursor, seq, symbol)
    if level == "L2":
        df = _frame(_l2_rows(b, depth), L2_COLUMNS, ("level", "price", "qty", "orders", "cum_qty"))
    else:
        if cursor.origin is not None:
            h.timeline.resolve_entries(cursor)
        df = _frame(_l3_rows(b, cursor, depth), L3_COLUMNS,
                    ("level", "price", "order_id", "account", "qty", "rank", "qty_ahead"))
        df["placed_seq"] = df["placed_seq"].astype("Int64")
    df = _add_decimals(h, df, symbol)
    df.attrs.update(seq=seq, symbol=symbol, level=level)
    return df


def book_at_time(h: History, ts: Any, symbol: str, depth: Optional[int] = None, level: str = "L2") -> pd.DataFrame:
    """:func:`book` right after the last event whose ``ts_ns`` is at or before
    ``ts`` (int ns, ``datetime``, ISO string or ``pandas.Timestamp``; naive =
    UTC). The time index takes the running maximum of the commands' clocks,
    so a clock that steps back never selects a later state. ``attrs["seq"]``
    is the seq chosen. Raises KeyError if the symbol had no book yet."""
    seq = h.seq_at_time(ts)
    df = book(h, seq, symbol, depth, level)
    df.attrs["ts"] = pd.Timestamp(to_ns(ts), unit="ns", tz="UTC")
    return df


def _top(b: Any) -> tuple:
    bid, ask = b.top_bid, b.top_ask
    return (bid, b.bid_levels[bid].qty if bid is not None else None,
            ask, b.ask_levels[ask].qty if ask is not None else None)


BALANCE_COLUMNS = ["account", "asset", "scale", "available", "held", "total"]
LEDGER_COLUMNS = ["ledger_seq", "cmd_seq", "ts", "account", "asset", "reason", "available_delta", "held_delta",
                  "available", "held", "ref"]
_LEDGER_REASONS = {1: "deposit", 2: "withdrawal", 3: "hold", 4: "release", 5: "fill", 6: "fee"}


def balances(h: History, seq: int, account: Optional[int] = None) -> pd.DataFrame:
    """Every account's balance per asset right after ``seq`` (only
    ``account``'s when given), by account then asset.

    Columns: ``account``, ``asset``, ``scale`` (the asset's decimals),
    ``available``, ``held``, ``total`` (int64, the asset's smallest units),
    and ``available_dec``, ``held_dec``, ``total_dec`` (float64: units /
    10**scale, for display). ``attrs``: ``seq``, ``ledger_seq``.
    """
    report = h.balance_report(seq, account)
    scales = {a: t["scale"] for a, t in report["totals"].items()}
    rows = [(r["account"], r["asset"], scales.get(r["asset"]), r["available"], r["held"],
             r["available"] + r["held"]) for r in report["balances"]]
    df = pd.DataFrame(rows, columns=BALANCE_COLUMNS)
    for c in ("account", "scale", "available", "held", "total"):
        df[c] = df[c].astype("int64")
    div = 10.0 ** df["scale"].astype("float64")
    for c in ("available", "held", "total"):
        df[f"{c}_dec"] = df[c].astype("float64") / div
    df.attrs.update(seq=seq, ledger_seq=report["ledger_seq"])
    return df


def ledger(h: History, from_seq: int, to_seq: int, account: Optional[int] = None) -> pd.DataFrame:
    """Every balance change the commands ``from_seq``..``to_seq`` caused, in
    ``ledger_seq`` order (only ``account``'s when given): the engine's ledger,
    derived by replay (it is not logged).

    Columns: ``ledger_seq``, ``cmd_seq``, ``ts`` (the command's), ``account``,
    ``asset``, ``reason`` (``deposit``, ``withdrawal``, ``hold``, ``release``,
    ``fill``, ``fee``), ``available_delta``, ``held_delta`` (signed),
    ``available``, ``held`` (after the change), ``ref`` (transfer_id,
    order_id or match_id). Amounts in the asset's smallest units.
    Complexity: replays ``to_seq - from_seq`` events.
    """
    rows: list = []

    def post(seq: int, cmd: Any, out: list, _ctx: Any) -> None:
        for ev in out:
            if ev[0] == 72 and (account is None or ev[3] == account):
                rows.append((ev[1], ev[2], cmd[1], ev[3], ev[4], _LEDGER_REASONS.get(ev[9], str(ev[9])),
                             ev[5], ev[6], ev[7], ev[8], ev[10]))

    h.timeline.walk(max(from_seq - 1, 0), to_seq, post)
    df = pd.DataFrame(rows, columns=LEDGER_COLUMNS)
    for c in LEDGER_COLUMNS:
        if c not in ("ts", "asset", "reason"):
            df[c] = df[c].astype("int64")
    df["ts"] = _ts(df["ts"].to_numpy(dtype="int64"))
    df.attrs.update(from_seq=from_seq, to_seq=to_seq)
    return df


# Top-of-book rows of a replayed range, kept per History: depth_heatmap()
# records them on its replay, so a bbo() of the same range (the mid line on a
# heatmap) costs no second replay. Only whole ranges (to_seq <= last_seq: the
# events are durable and never change); the last few per History.
_TOPS: "weakref.WeakKeyDictionary[History, dict]" = weakref.WeakKeyDictionary()
_TOPS_KEPT = 4


class _TopsRecorder:
    """Rows ``(seq, ts_ns, bid, bid_qty, ask, ask_qty)`` at ``from_seq`` and
    after every later step of ``symbol`` that changed its best bid or offer."""

    def __init__(self, h: History, symbol: str) -> None:
        self.tl = h.timeline
        self.symbol = symbol
        self.rows: list = []
        self.last: Any = None

    def emit(self, seq: int, ts_ns: int) -> None:
        tl = self.tl
        b = tl.cursor.matcher.books.get(self.symbol) if tl.cursor is not None else None
        top = _top(b) if b is not None else (None, None, None, None)
        if top != self.last:
            self.last = top
            self.rows.append((seq, ts_ns) + top)

    def keep(self, h: History, from_seq: int, to_seq: int) -> None:
        if to_seq <= h.last_seq:
            kept = _TOPS.setdefault(h, {})
            kept[(from_seq, to_seq, self.symbol)] = self.rows
            while len(kept) > _TOPS_KEPT:
                del kept[next(iter(kept))]


def bbo(h: History, from_seq: int, to_seq: int, symbol: str, every: Optional[str] = None) -> pd.DataFrame:
    """Best bid and offer of ``symbol``: a row at ``from_seq`` and after every
    later step up to ``to_seq`` that changed it.

    Columns: ``seq``, ``ts``, ``bid``, ``bid_qty``, ``ask``, ``ask_qty`` (Int64,
    ``<NA>`` for an empty side), ``mid`` (float64, price units), ``spread``
    (Int64, price units). With ``every`` (a pandas offset such as ``"1s"``):
    one row per time bin, the last value in it, forward-filled through bins
    without a change, indexed by the bin's start (``ts``).

    Complexity: replays ``to_seq - from_seq`` events (plus the bounded seek to
    ``from_seq``); none when :func:`depth_heatmap` or ``bbo`` replayed the same
    whole range of ``symbol`` on this History just before (it keeps the rows).
    """
    tl = h.timeline
    rows = _TOPS.get(h, {}).get((from_seq, to_seq, symbol))
    if rows is None:
        tops = _TopsRecorder(h, symbol)
        emit = tops.emit

        def post(seq: int, cmd: Any, _out: list, _ctx: Any) -> None:
            if len(cmd) > 2 and cmd[2] == symbol:
                emit(seq, cmd[1])

        tl.seek(from_seq)
        emit(from_seq, tl.ts_of(from_seq))
        tl.walk(from_seq, to_seq, post)
        rows = tops.rows
        tops.keep(h, from_seq, to_seq)
    df = pd.DataFrame(rows, columns=["seq", "ts", "bid", "bid_qty", "ask", "ask_qty"])
    df["ts"] = _ts(df["ts"].to_numpy(dtype="int64"))
    for c in ("bid", "bid_qty", "ask", "ask_qty"):
        df[c] = df[c].astype("Int64")
    df["mid"] = (df["bid"].astype("Float64") + df["ask"].astype("Float64")).astype("float64") / 2
    df["spread"] = (df["ask"] - df["bid"]).astype("Int64")
    df = df[BBO_COLUMNS]
    if every is not None:
        # Rows stamped 0 ns (a command logged without a clock, such as a file
        # source's AddSymbol) have no place on a time axis: resampling them
        # would span every bin since 1970.
        df = df[df["ts"] > pd.Timestamp(0, tz="UTC")]
        df = df.set_index("ts").resample(every).last().ffill()
        for c in ("seq", "bid", "bid_qty", "ask", "ask_qty", "spread"):
            df[c] = df[c].astype("Int64")
        df = df.reset_index()[BBO_COLUMNS]
    df = _add_decimals(h, df, symbol, ("bid", "ask", "mid"), ("bid_qty", "ask_qty")) if symbol in h.scales else df
    df.attrs.update(from_seq=from_seq, to_seq=to_seq, symbol=symbol)
    return df


def trades(h: History, from_seq: Optional[int] = None, to_seq: Optional[int] = None,
           symbol: Optional[str] = None) -> pd.DataFrame:
    """Trades logged in ``from_seq..to_seq`` (inclusive; ``from_seq=None``: from
    the first event the WAL keeps), from the WAL (no replay).

    Columns: ``seq`` (the trade's own WAL seq), ``ts``, ``match_id``, ``symbol``,
    ``symbol_seq``, ``price`` (the maker's), ``qty``, ``taker_side``
    ("buy"/"sell"), ``maker_order_id``, ``taker_order_id``, ``maker_account``,
    ``taker_account``, ``cmd_seq`` (the command that caused it), ``source``
    and ``source_pos`` (that command's input: e.g. ``"kafka:orders:0"`` and
    the Kafka offset, or the file row; ``None``/``<NA>`` when it had none).
    Complexity: O(events in the range) decoded.
    """
    rows = []
    for seq, t, source, pos in h.trades_with_input(from_seq, to_seq):
        if symbol is None or t.symbol == symbol:
            rows.append((seq, t.ts_ns, t.match_id, t.symbol, t.symbol_seq, t.price, t.qty,
                         _ORDER_SIDES.get(t.taker_side, t.taker_side), t.maker_order_id, t.taker_order_id,
                         t.maker_account, t.taker_account, t.cmd_seq, source, pos))
    df = pd.DataFrame(rows, columns=TRADE_COLUMNS)
    df["ts"] = _ts(df["ts"].to_numpy(dtype="int64"))
    for c in ("seq", "match_id", "symbol_seq", "price", "qty", "maker_order_id", "taker_order_id",
              "maker_account", "taker_account", "cmd_seq"):
        df[c] = df[c].astype("int64")
    df["source"] = df["source"].astype(object)
    df["source_pos"] = df["source_pos"].astype("Int64")
    df = _add_decimals(h, df, symbol)
    df.attrs.update(from_seq=from_seq, to_seq=to_seq, symbol=symbol)
    return df


def _queue_position(b: Any, order_id: int) -> tuple:
    o = b.orders.get(order_id)
    if o is None:
        return None, None
    levels = b.bid_levels if o.side == 1 else b.ask_levels
    ahead = 0
    for rank, other in enumerate(levels[o.price].live()):
        if other is o:
            return rank, ahead
        ahead += other.qty
    return None, None


def order(h: History, order_id: int, symbol: str) -> pd.DataFrame:
    """Every event of order ``order_id`` in ``symbol``, oldest first (an id used
    again after the order left the book gives its later lives too).

    Columns: ``seq`` (the command's seq, or the trade's), ``ts``, ``event``:
    ``placed`` (its place command), ``rested`` (on the book with
    ``leaves_qty``), ``amended`` (``price``/``qty`` the new ones; an amend
    that lost priority is followed by ``rested``: a new entry),
    ``fill`` (one trade: ``price``, ``qty`` filled, ``counterparty_*``,
    ``match_id``), ``filled`` (nothing left), ``cancelled`` (``qty`` the
    lots cancelled; ``reason`` in ``detail``), ``rejected`` (``detail`` the
    reason code); ``price``, ``qty``, ``leaves_qty`` (lots still open after
    the event), ``counterparty_order_id``, ``counterparty_account``,
    ``match_id``, ``rank`` and ``qty_ahead`` (its place in its level's queue
    right after the step holding the event; ``<NA>`` off the book), ``detail``.

    Complexity: one decode-only scan of the WAL to find the events, then a
    replay over the span of the order's life (stepping, from the nearest base).
    """
    tl = h.timeline
    h.wal.refresh()
    steps: list[int] = []          # command seqs whose step touches the order
    for seq, p in h.wal.read(h.wal.first_seq or 1, None):
        k = p[0]
        if 2 <= k <= 4 and len(p) > 3 and p[2] == symbol and p[3] == order_id:
            steps.append(seq)
        elif k == 64 and p[3] == symbol and (p[7] == order_id or p[8] == order_id):
            if not steps or steps[-1] != p[11]:
                steps.append(p[11])
    tl.stats.scanned_events += max(0, h.wal.last_seq - (h.wal.first_seq or 1) + 1)
    rows: list = []
    wanted = set(steps)
    leaves = [None]

    def row(seq: int, ts: int, event: str, price: Any = None, qty: Any = None, cp: Any = None,
            cpa: Any = None, match_id: Any = None, detail: Any = None) -> None:
        rows.append([seq, ts, event, price, qty, leaves[0], cp, cpa, match_id, None, None, detail])

    def post(seq: int, cmd: Any, out: list, _ctx: Any) -> None:
        if seq not in wanted:
            return
        ts = cmd[1]
        start = len(rows)
        k = cmd[0]
        mine = len(cmd) > 3 and cmd[2] == symbol and cmd[3] == order_id
        before = leaves[0]
        if mine and k == 2:
            leaves[0] = cmd[8]
            row(seq, ts, "placed", cmd[7] if cmd[5] == 1 else None, cmd[8])
        trade_seq = seq
        for ev in out:
            kind = ev[0]
            if kind == 64:
                trade_seq += 1      # trades take the seqs right after their command, in order
                if ev[7] != order_id and ev[8] != order_id:
                    continue
                maker = ev[7] == order_id
                if leaves[0] is not None:
                    leaves[0] -= ev[5]
                row(trade_seq, ts, "fill", ev[4], ev[5], ev[8] if maker else ev[7],
                    ev[10] if maker else ev[9], ev[1], "maker" if maker else "taker")
                if leaves[0] == 0:
                    row(trade_seq, ts, "filled")
            elif not mine:
                continue
            elif kind == 66:
                leaves[0] = ev[4]
                row(seq, ts, "rested", ev[3], ev[4])
            elif kind == 67:
                leaves[0] = 0
                row(seq, ts, "cancelled", None, ev[2], detail=_CANCEL_REASONS.get(ev[3], ev[3]))
            elif kind == 68:
                leaves[0] = ev[3]
                row(seq, ts, "amended", ev[2], ev[3], detail="priority kept" if ev[4] else "priority lost")
            elif kind == 65:
                leaves[0] = before     # refused: nothing changed (a duplicate id's resting order stays)
                row(seq + 1, ts, "rejected", detail=ev[3])
        b = tl.cursor.matcher.books.get(symbol)
        rank, ahead = _queue_position(b, order_id) if b is not None else (None, None)
        for r in rows[start:]:
            r[9], r[10] = rank, ahead
        if b is not None and order_id not in b.orders:
            leaves[0] = 0 if leaves[0] is not None else None

    if steps:
        tl.walk(steps[0] - 1, steps[-1], post)
    df = pd.DataFrame(rows, columns=ORDER_COLUMNS + ["detail"])
    df["ts"] = _ts(df["ts"].to_numpy(dtype="int64"))
    for c in ("seq", "price", "qty", "leaves_qty", "counterparty_order_id", "counterparty_account", "match_id",
              "rank", "qty_ahead"):
        df[c] = df[c].astype("Int64")
    df = _add_decimals(h, df, symbol)
    df.attrs.update(order_id=order_id, symbol=symbol)
    return df


@dataclass
class BookDiff:
    """What changed in one symbol's book from ``seq_a`` to ``seq_b``.

    Attributes:
        added: L3 rows (:data:`L3_COLUMNS` at ``seq_b``) of orders resting at
            ``seq_b`` and not at ``seq_a``.
        removed: L3 rows at ``seq_a`` of orders gone by ``seq_b``.
        changed: orders on both, with a different price, qty or entry
            (``order_id``, ``side``, ``price_a``, ``price_b``, ``qty_a``, ``qty_b``,
            ``placed_seq_a``, ``placed_seq_b``).
        levels: per ``side``/``price`` whose qty differs: ``qty_a``, ``qty_b``,
            ``delta = qty_b - qty_a`` (0 for an absent level).
        trades: :func:`trades` of ``symbol`` in ``min(a, b) + 1 .. max(a, b)``.
    """

    seq_a: int
    seq_b: int
    symbol: str
    added: pd.DataFrame
    removed: pd.DataFrame
    changed: pd.DataFrame
    levels: pd.DataFrame
    trades: pd.DataFrame


def _l3_or_empty(h: History, seq: int, symbol: str) -> pd.DataFrame:
    try:
        return book(h, seq, symbol, level="L3")
    except KeyError:
        return pd.DataFrame({c: pd.Series(dtype="int64") for c in L3_COLUMNS}).astype({"side": object})


def diff(h: History, seq_a: int, seq_b: int, symbol: str) -> BookDiff:
    """Compare the book of ``symbol`` at two seqs; see :class:`BookDiff`.
    Complexity: two point queries (the second steps on from the first when
    ``seq_b`` follows ``seq_a``) and O(orders)."""
    a = _l3_or_empty(h, seq_a, symbol)
    b = _l3_or_empty(h, seq_b, symbol)
    ids_a, ids_b = set(a["order_id"]), set(b["order_id"])
    added = b[~b["order_id"].isin(ids_a)].reset_index(drop=True)
    removed = a[~a["order_id"].isin(ids_b)].reset_index(drop=True)
    both = a[["order_id", "side", "price", "qty", "placed_seq"]].merge(
        b[["order_id", "price", "qty", "placed_seq"]], on="order_id", suffixes=("_a", "_b"))
    moved = (both["price_a"] != both["price_b"]) | (both["qty_a"] != both["qty_b"]) | \
        (both["placed_seq_a"].astype("Float64").fillna(-1) != both["placed_seq_b"].astype("Float64").fillna(-1))
    changed = both[moved.astype(bool)][["order_id", "side", "price_a", "price_b", "qty_a", "qty_b",
                                        "placed_seq_a", "placed_seq_b"]].reset_index(drop=True)
    la = a.groupby(["side", "price"], as_index=False)["qty"].sum()
    lb = b.groupby(["side", "price"], as_index=False)["qty"].sum()
    levels = la.merge(lb, on=["side", "price"], how="outer", suffixes=("_a", "_b"))
    levels[["qty_a", "qty_b"]] = levels[["qty_a", "qty_b"]].fillna(0).astype("int64")
    levels["delta"] = levels["qty_b"] - levels["qty_a"]
    levels = levels[levels["delta"] != 0].sort_values(["side", "price"]).reset_index(drop=True)
    lo, hi = min(seq_a, seq_b), max(seq_a, seq_b)
    tr = trades(h, lo + 1, hi, symbol) if hi > lo else trades(h, 1, 0, symbol)
    return BookDiff(seq_a, seq_b, symbol, added, removed, changed, levels, tr)


def depth_heatmap(h: History, from_seq: int, to_seq: int, symbol: str, time_bin: str = "1s",
                  price_bin: Optional[int] = None) -> pd.DataFrame:
    """Resting quantity of ``symbol`` per time bin and price bin, long format.

    Columns: ``time`` (bin start, UTC; the qty is the state at the bin's end,
    i.e. after the last step whose clock falls in the bin), ``side``
    ("bid"/"ask"), ``price`` (the price bin's lower bound: ``price //
    price_bin * price_bin``; ``None``: each price), ``qty`` (lots). Only
    non-zero cells; every bin from the first to the last step's is present
    (bins with no event repeat the state). ``df.pivot_table(index="price",
    columns="time", values="qty", aggfunc="sum", fill_value=0)`` gives the grid.
    Clocks: the running maximum of the commands' ``ts_ns``; the range's
    first command with a non-zero clock starts the first bin (an
    ``AddSymbol`` logged with ``ts_ns`` 0 does not).

    Complexity: one replay of the range; per step O(levels it touched); the
    table is built with numpy from the level changes (rows = bins x levels).
    """
    tl = h.timeline
    bin_ns = int(pd.Timedelta(time_bin).value)
    if bin_ns <= 0:
        raise ValueError(f"time_bin must be positive, got {time_bin!r}")
    pbin = int(price_bin) if price_bin else 1
    cur_max = [tl.ts_max_of(from_seq)]
    t0: list = [None]
    changes_bin: list = []
    changes_key: list = []       # side of each change
    changes_price: list = []
    changes_qty: list = []
    bucket_qty: dict = {}        # (side, bucket) -> qty, the current state per cell
    level_qty: dict = {}         # (side, price) -> qty, the current level sizes
    cur_bin = [0]

    def set_bin(ts: int) -> None:
        if ts > cur_max[0]:
            cur_max[0] = ts
        if t0[0] is None:
            if cur_max[0] <= 0:
                return
            t0[0] = cur_max[0] // bin_ns * bin_ns
        cur_bin[0] = (cur_max[0] - t0[0]) // bin_ns

    book_ref: list = [None]

    def the_book() -> Any:
        if book_ref[0] is None and tl.cursor is not None:
            book_ref[0] = tl.cursor.matcher.books.get(symbol)
        return book_ref[0]

    def pre(cmd: Any) -> Any:
        kind = cmd[0]
        if (kind == 3 or kind == 4) and cmd[2] == symbol:
            b = the_book()
            o = b.orders.get(cmd[3]) if b is not None else None
            return (o.side, o.price) if o is not None else None
        return None

    def touch(b: Any, side: int, price: Any) -> None:
        lvl = (b.bid_levels if side == 1 else b.ask_levels).get(price)
        q = lvl.qty if lvl is not None else 0
        key = (side, price)
        delta = q - level_qty.get(key, 0)
        if delta:
            level_qty[key] = q
            cell = (side, price // pbin * pbin)
            total = bucket_qty.get(cell, 0) + delta
            bucket_qty[cell] = total
            changes_bin.append(cur_bin[0])
            changes_key.append(side)
            changes_price.append(cell[1])
            changes_qty.append(total)

    tops = _TopsRecorder(h, symbol)
    emit_top = tops.emit

    def post(seq: int, cmd: Any, out: list, ctx: Any) -> None:
        ts = cmd[1]
        if type(ts) is int and ts > cur_max[0]:
            set_bin(ts)
        if cmd[2] != symbol:
            return
        emit_top(seq, ts)
        b = the_book()
        if b is None:
            return
        kind = cmd[0]
        if ctx is not None:
            touch(b, ctx[0], ctx[1])
            if kind == 4 and type(cmd[4]) is int:
                touch(b, ctx[0], cmd[4])
        elif kind == 2 and (cmd[4] == 1 or cmd[4] == 2) and type(cmd[7]) is int:
            touch(b, cmd[4], cmd[7])
        if len(out) > 1 or (out and out[0][0] == 64):
            for ev in out:
                if ev[0] == 64:
                    touch(b, 3 - ev[6], ev[4])

    cursor = tl.seek(from_seq)
    set_bin(tl.ts_of(from_seq))
    emit_top(from_seq, tl.ts_of(from_seq))
    b0 = cursor.matcher.books.get(symbol)
    if b0 is not None:
        for side in (1, 2):
            for lvl in b0.levels(side):
                level_qty[(side, lvl.price)] = lvl.qty
                key = (side, lvl.price // pbin * pbin)
                bucket_qty[key] = bucket_qty.get(key, 0) + lvl.qty
        for (side, bucket), q in bucket_qty.items():
            changes_bin.append(cur_bin[0])
            changes_key.append(side)
            changes_price.append(bucket)
            changes_qty.append(q)
    tl.walk(from_seq, to_seq, post, pre)
    tops.keep(h, from_seq, to_seq)
    if t0[0] is None:
        t0[0] = 0
    n_bins = cur_bin[0] + 1
    if not changes_bin:
        df = pd.DataFrame({"time": _ts([]), "side": pd.Series([], dtype=object),
                           "price": pd.Series([], dtype="int64"), "qty": pd.Series([], dtype="int64")})
        df.attrs.update(from_seq=from_seq, to_seq=to_seq, symbol=symbol, time_bin=time_bin, price_bin=price_bin)
        return df
    bins = np.asarray(changes_bin, dtype=np.int64)
    sides = np.asarray(changes_key, dtype=np.int64)
    prices = np.asarray(changes_price, dtype=np.int64)
    qtys = np.asarray(changes_qty, dtype=np.int64)
    # Last change per (side, price, bin), then piecewise-constant runs to the next change.
    order_ = np.lexsort((np.arange(len(bins)), bins, prices, sides))
    bins, sides, prices, qtys = bins[order_], sides[order_], prices[order_], qtys[order_]
    same_next = np.zeros(len(bins), dtype=bool)
    same_next[:-1] = (sides[:-1] == sides[1:]) & (prices[:-1] == prices[1:]) & (bins[:-1] == bins[1:])
    keep = ~same_next
    bins, sides, prices, qtys = bins[keep], sides[keep], prices[keep], qtys[keep]
    end = np.empty(len(bins), dtype=np.int64)
    same_key_next = np.zeros(len(bins), dtype=bool)
    same_key_next[:-1] = (sides[:-1] == sides[1:]) & (prices[:-1] == prices[1:])
    end[:-1] = np.where(same_key_next[:-1], bins[1:], n_bins)
    end[-1] = n_bins
    live = qtys > 0
    bins, sides, prices, qtys, end = bins[live], sides[live], prices[live], qtys[live], end[live]
    lengths = end - bins
    total = int(lengths.sum())
    run = np.repeat(np.arange(len(bins), dtype=np.int64), lengths)
    time_idx = np.arange(total, dtype=np.int64) - (np.cumsum(lengths) - lengths - bins)[run]
    df = pd.DataFrame({
        "time": _ts(t0[0] + time_idx * bin_ns),
        "side": pd.Categorical.from_codes(sides[run] - 1, categories=["bid", "ask"]),
        "price": prices[run],
        "qty": qtys[run],
    })
    df = _add_decimals(h, df, symbol) if symbol in h.scales else df
    df.attrs.update(from_seq=from_seq, to_seq=to_seq, symbol=symbol, time_bin=time_bin, price_bin=price_bin)
    return df


@dataclass
class WhatIf:
    """The result of :func:`what_if`.

    Attributes:
        at_seq: where the changes were made (after the step holding it).
        until_seq: last recorded seq replayed.
        diverged_at: first seq where the trades or the book differ from
            history (``at_seq`` when the inserted commands changed the book or
            traded), or ``None`` if they never do.
        trades_diverged_at: first recorded command seq whose trades differ
            (``None``: none did).
        inserted: ``[(command, events)]`` of the commands applied at ``at_seq``.
        history_trades: logged trades the what-if did not reproduce.
        whatif_trades: what-if trades history does not have; ``cmd_seq`` is the
            recorded command's seq (``at_seq`` and ``added=True`` for those of
            inserted commands). Both with :data:`TRADE_COLUMNS` less ``seq``,
            ``ts`` kept, ``match_id``/``symbol_seq`` as each world numbered them.
        history_books, whatif_books: ``symbol -> L2 DataFrame`` at ``until_seq``.
        whatif_matcher: the what-if state at the end.
    """

    at_seq: int
    until_seq: int
    diverged_at: Optional[int]
    trades_diverged_at: Optional[int]
    inserted: list
    history_trades: pd.DataFrame
    whatif_trades: pd.DataFrame
    history_books: dict
    whatif_books: dict
    whatif_matcher: Matcher


def _trade_key(t: Any) -> tuple:
    # What must be equal for two trades to be "the same" across the two worlds.
    return (t[3], t[4], t[5], t[6], t[7], t[8], t[9], t[10])


_WI_COLUMNS = ["cmd_seq", "ts", "match_id", "symbol", "symbol_seq", "price", "qty", "taker_side",
               "maker_order_id", "taker_order_id", "maker_account", "taker_account", "added"]


def _wi_frame(rows: list) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=_WI_COLUMNS)
    df["ts"] = _ts(df["ts"].to_numpy(dtype="int64"))
    df["taker_side"] = df["taker_side"].map(_ORDER_SIDES)
    df["added"] = df["added"].astype(bool)
    return df


def _trades_not_in(seq: int, trades: list, keys: list, other_keys: list) -> list:
    """Rows of the ``trades`` (keyed ``keys``) that ``other_keys`` lacks,
    counting repeats (a multiset difference), for :func:`what_if`."""
    rest = list(other_keys)
    rows = []
    for t, k in zip(trades, keys):
        if k in rest:
            rest.remove(k)
        else:
            rows.append([seq, t[2], t[1], t[3], t[12], t[4], t[5], t[6], t[7], t[8], t[9], t[10], False])
    return rows


def what_if(h: History, at_seq: int, add: Iterable[Any] = (), cancel: Iterable[Any] = (),
            until_seq: Optional[int] = None) -> WhatIf:
    """Replay history through the real matcher with orders added or removed at ``at_seq``.

    The state right after ``at_seq`` is copied; the ``add`` commands
    (``PlaceOrder``, or any command) are applied, then a ``CancelOrder`` for
    each of ``cancel`` (an order id, found in whichever book holds it, or a
    ``(symbol, order_id)`` pair); then every recorded command after the step
    holding ``at_seq`` up to ``until_seq`` (default: the WAL's end) is applied
    to the copy, and its trades are compared with the logged ones.

    The other participants' recorded orders do not react: they arrive exactly
    as recorded (same prices, sizes and times, cancels of orders that may now
    already be filled are rejected), whatever the inserted orders did to the
    book. This measures the mechanical effect of an order, not the market's
    response to it.

    Returns:
        :class:`WhatIf`.

    Complexity: one replay of ``at_seq .. until_seq`` (plus the bounded seek),
    and the WAL's logged trades of that range decoded.
    """
    tl = h.timeline
    cursor = tl.seek(at_seq)
    base = cursor.matcher
    start = base.last_seq
    last = h.wal.refresh() if until_seq is None else min(until_seq, h.wal.refresh())
    state = base.export_state()
    state["trades"] = []
    m = Matcher.from_state(state, 0)
    before = {s: b.export_orders() for s, b in m.books.items()}
    inserted = []
    changed = False
    wi_rows: list = []
    from engine.core import CancelOrder
    cmds = list(add)
    for target in cancel:
        if isinstance(target, tuple):
            cmds.append(CancelOrder.new(target[0], target[1]))
        else:
            hits = [s for s, b in m.books.items() if target in b.orders]
            if not hits:
                cmds.append(CancelOrder.new(next(iter(sorted(m.books)), ""), target))
            for s in hits:
                cmds.append(CancelOrder.new(s, target))
    for cmd in cmds:
        out = m.apply(m.last_seq + 1, cmd)
        inserted.append((cmd, out))
        for ev in out:
            if ev[0] == 64:
                changed = True
                wi_rows.append([at_seq, ev[2], ev[1], ev[3], ev[12], ev[4], ev[5], ev[6], ev[7], ev[8], ev[9],
                                ev[10], True])
    if any(m.books[s].export_orders() != before.get(s) for s in m.books) or set(m.books) != set(before):
        changed = True
    diverged_at = at_seq if changed else None
    trades_diverged: Optional[int] = None
    hist_rows: list = []
    logged: list = []
    pending_cmd: Optional[tuple] = None

    def settle() -> None:
        nonlocal trades_diverged
        if pending_cmd is None:
            return
        seq, ts, out = pending_cmd
        mine = [e for e in out if e[0] == 64]
        a = [_trade_key(t) for t in logged]
        b = [_trade_key(t) for t in mine]
        if a != b:
            if trades_diverged is None:
                trades_diverged = seq
            hist_rows.extend(_trades_not_in(seq, logged, a, b))
            wi_rows.extend(_trades_not_in(seq, mine, b, a))

    for seq, p in h.wal.read(start + 1, None):
        kind = p[0]
        if seq > last and kind < 64:
            break               # the step holding until_seq is read whole (its trades follow it)
        if kind < 64:
            settle()
            logged = []
            out = m.apply(m.last_seq + 1, p)
            pending_cmd = (seq, p[1], out)
        elif kind == 64:
            logged.append(p)
    settle()
    if diverged_at is None and trades_diverged is not None:
        diverged_at = trades_diverged
    tl.stats.replayed_events += max(0, last - start)
    hist_books: dict = {}
    if last >= start:
        for s in sorted(tl.seek(max(last, at_seq)).matcher.books):
            hist_books[s] = book(h, max(last, at_seq), s)
    wi_books = {}
    for s, b in sorted(m.books.items()):
        df = _frame(_l2_rows(b, None), L2_COLUMNS, ("level", "price", "qty", "orders", "cum_qty"))
        wi_books[s] = _add_decimals(h, df, s)
    return WhatIf(at_seq, last, diverged_at, trades_diverged, inserted, _wi_frame(hist_rows), _wi_frame(wi_rows),
                  hist_books, wi_books, m)
