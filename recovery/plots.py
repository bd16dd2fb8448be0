"""Pictures of an order book's history: depth, liquidity over time, trades, one order.

Layout: four public functions, one per picture, each drawing one DataFrame of
:mod:`recovery.history` (``History.book``, ``depth_heatmap`` with ``bbo`` and
``trades``, ``trades``, ``order``); private helpers below them.
May import: numpy, pandas and matplotlib, each only inside a function, so
``recovery`` (and this module) import without them (``pip install
'evengine[notebook]'``). Never pyplot: a new figure is a plain
``matplotlib.figure.Figure`` (no backend, nothing to close, shown once in a
notebook when it is the cell's value); nothing here calls ``plt.show()``.

Every function:

- takes ``ax`` (draw into it and return ``ax.figure``) or makes a figure;
- takes ``price_scale``: prices in the frames are integer price units;
  displayed prices are ``price / price_scale`` (``10_000`` for LOBSTER's
  USD) and the price axis says so (``price_unit`` names the unit);
- raises ``ValueError`` naming the missing columns, checked first, even for
  an empty frame (a frame from the history API always has its columns);
- draws an empty axes with a note for a frame without rows (never raises).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Iterable, Optional, Sequence

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["depth_chart", "liquidity_heatmap", "trade_tape", "order_life"]

BOOK_COLUMNS = ("side", "level", "price", "qty", "cum_qty")
HEATMAP_COLUMNS = ("time", "side", "price", "qty")
BBO_COLUMNS = ("ts", "mid")
TRADE_COLUMNS = ("ts", "price", "qty", "taker_side")
LIFE_COLUMNS = ("seq", "ts", "event", "price", "qty", "leaves_qty", "counterparty_order_id",
                "counterparty_account", "match_id")

BID_COLOUR = "#1a9850"      # bids and buy takers: green
ASK_COLOUR = "#d73027"      # asks and sell takers: red
OTHER_COLOUR = "#7f7f7f"
TAKER_BUY, TAKER_SELL = 1, 2

# A regular grid may have at most this many cells per axis more than the values it holds.
_MAX_GRID_PAD = 20_000


def depth_chart(book: "pd.DataFrame", ax: Optional["Axes"] = None, *, price_scale: Optional[float] = None,
                price_unit: Optional[str] = None, title: Optional[str] = None, levels: bool = True,
                figsize: tuple[float, float] = (9.0, 4.5)) -> "Figure":
    """Cumulative depth of one book: bids left of the mid, asks right, as filled steps.

    At a bid price ``x`` the curve is the quantity resting at ``x`` or better
    (what a sell down to ``x`` would meet); at an ask price, at ``x`` or lower.
    The mid is a dashed vertical line (its legend entry gives the spread);
    ``levels`` adds each level's own quantity as thin bars.

    Args:
        book: L2 rows from ``History.book(seq, symbol)``, one per price level:
            ``side`` ("bid"/"ask"), ``level`` (1 = best), ``price`` (price
            units), ``qty`` and ``cum_qty`` (lots; ``cum_qty`` from the best
            level outwards). Other columns (``orders``...) are ignored.
        ax: draw into this axes; otherwise a new figure.
        price_scale: display ``price / price_scale`` (e.g. ``10_000``).
        price_unit: the unit of displayed prices, for the axis label ("USD").
        title: the axes title.
        levels: also draw each level's ``qty`` as a bar.
        figsize: inches, for a new figure.

    Returns:
        The figure: one step line and one filled area per non-empty side,
        one bar per level when ``levels``; an empty book gives a note only.

    Raises:
        ValueError: ``book`` lacks one of ``side, level, price, qty, cum_qty``
            (the message names them).

    Complexity: O(L log L), L levels.
    """
    _require(book, BOOK_COLUMNS, "depth_chart(book)", "History.book(seq, symbol)")
    np = _numpy()
    ax = _axes(ax, figsize)
    if title:
        ax.set_title(title)
    ax.set_xlabel(_price_label(price_scale, price_unit))
    ax.set_ylabel("cumulative quantity (lots)")
    sides = {s: book[book["side"] == s].sort_values("level") for s in ("bid", "ask")}
    if all(frame.empty for frame in sides.values()):
        _note(ax, "empty book")
        return ax.figure
    prices = _scaled(book["price"], price_scale)
    gaps = np.diff(np.unique(prices))
    step = float(np.median(gaps)) if gaps.size else (1.0 / price_scale if price_scale else 1.0)
    for side, frame in sides.items():
        colour = BID_COLOUR if side == "bid" else ASK_COLOUR
        if frame.empty:
            _note(ax, f"no {side}s", x=0.25 if side == "bid" else 0.75, size=9)
            continue
        x = _scaled(frame["price"], price_scale)
        y = frame["cum_qty"].to_numpy(dtype=float)
        outward = -step if side == "bid" else step
        xs = np.concatenate(([x[0]], x, [x[-1] + outward]))
        ys = np.concatenate(([0.0], y, [y[-1]]))
        ax.step(xs, ys, where="post", color=colour, linewidth=1.5, label=f"{side}s ({len(frame)} levels)")
        ax.fill_between(xs, ys, step="post", color=colour, alpha=0.25, linewidth=0)
        if levels:
            ax.bar(x, frame["qty"].to_numpy(dtype=float), width=0.6 * step, color=colour, alpha=0.6,
                   label=f"{side} level qty")
    if not sides["bid"].empty and not sides["ask"].empty:
        best_bid = float(sides["bid"]["price"].iloc[0])
        best_ask = float(sides["ask"]["price"].iloc[0])
        mid, spread = (best_bid + best_ask) / 2, best_ask - best_bid
        ax.axvline(_scaled_one(mid, price_scale), color="0.3", linestyle="--", linewidth=1,
                   label=f"mid {_fmt_price(mid, price_scale)}, spread {_fmt_price(spread, price_scale)}")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper center", fontsize=8, frameon=False, ncol=2)
    return ax.figure


def liquidity_heatmap(heatmap: "pd.DataFrame", bbo: Optional["pd.DataFrame"] = None,
                      trades: Optional["pd.DataFrame"] = None, ax: Optional["Axes"] = None, *,
                      price_scale: Optional[float] = None, price_unit: Optional[str] = None,
                      title: Optional[str] = None, log: bool = True, bbo_lines: bool = False,
                      time_bin: Any = None, price_bin: Optional[int] = None,
                      price_range: Optional[tuple[float, float]] = None, max_price_bins: int = 2_000,
                      vmax: Optional[float] = None,
                      clip_quantile: Optional[float] = None, colorbar: bool = True,
                      bid_cmap: str = "Greens", ask_cmap: str = "Reds", max_marker_size: float = 150.0,
                      figsize: tuple[float, float] = (12.0, 6.0)) -> "Figure":
    """Resting quantity by time and price bin, with the mid and the trades over it.

    Each side is one ``pcolormesh`` on its own pivot (price bins x time bins,
    its own colour map, one colour norm for both so equal colours are equal
    quantities); an empty cell (no rows or zero quantity) is not drawn, so the
    spread shows as a gap between the two. Bins form a regular grid where the
    values allow (a bin with no rows is an empty cell, not a stretched
    neighbour). The mid from ``bbo`` is a black step line (bid and ask too
    with ``bbo_lines``); trades are circles, area proportional to ``qty``,
    green for a buy taker, red for a sell taker.

    Args:
        heatmap: long form from ``History.depth_heatmap``: ``time`` (bin
            start, Timestamp; naive means UTC), ``side`` ("bid"/"ask"),
            ``price`` (bin start, price units), ``qty`` (lots resting in the
            bin at the end of the time bin). One row per (time, side, price);
            duplicates are summed.
        bbo: optional, from ``History.bbo``: ``ts`` and ``mid`` (price units,
            NaN while a side is empty: the line breaks), plus ``bid`` and
            ``ask`` when ``bbo_lines``.
        trades: optional, from ``History.trades``: ``ts``, ``price``, ``qty``,
            ``taker_side`` (1 or "buy", 2 or "sell"; anything else is grey).
        ax: draw into this axes; otherwise a new figure.
        price_scale: display ``price / price_scale``.
        price_unit: the unit of displayed prices, for the axis label.
        title: the axes title.
        log: logarithmic colour scale (resting sizes are heavy-tailed).
        bbo_lines: also draw the best bid and best ask.
        time_bin: the time bin width (``"10s"``, a Timedelta); default the
            smallest gap between bin starts (1 s if there is one bin).
        price_bin: the price bin width in price units; default the gcd of the
            gaps between price bins (1 if there is one).
        price_range: ``(low, high)`` in price units: the y limits; only the
            cells inside are drawn. Default: everything when the heatmap has
            at most ``max_price_bins`` distinct price bins, else the range the
            mid moves over (from ``bbo``; else the 2nd-98th percentile of the
            cells' prices) widened by half of itself on each side, at least
            50 price bins.
        max_price_bins: see ``price_range``.
        vmax: the quantity at the top of the colour scale (larger cells get
            the top colour); default the ``clip_quantile`` quantile of the
            non-empty cells.
        clip_quantile: so that a few huge orders do not wash out the rest
            (ob-analytics' colour bias, as a quantile); default 1.0 (the
            maximum) with ``log``, 0.99 without.
        colorbar: one colour bar per drawn side.
        bid_cmap, ask_cmap: matplotlib colour map names; their palest quarter
            is left out so that small quantities stay visible on white.
        max_marker_size: marker area (points^2) of the largest trade.
        figsize: inches, for a new figure.

    Returns:
        The figure. Artists: a ``QuadMesh`` with gid "bid qty" / "ask qty"
        per side with rows (array shape ``(price bins, time bins)``), a "mid"
        line (and "bid"/"ask" lines), one scatter per taker side. An empty
        ``heatmap`` gives a note; overlays are drawn all the same.

    Raises:
        ValueError: a frame lacks a column listed above (the message names
            the frame and the columns).

    Complexity: O(R + T x P) numpy work, R rows, T time bins, P price bins;
        no Python loop per row or cell.
    """
    _require(heatmap, HEATMAP_COLUMNS, "liquidity_heatmap(heatmap)", "History.depth_heatmap(...)")
    if bbo is not None:
        _require(bbo, BBO_COLUMNS + (("bid", "ask") if bbo_lines else ()), "liquidity_heatmap(bbo)",
                 "History.bbo(...)")
    if trades is not None:
        _require(trades, TRADE_COLUMNS, "liquidity_heatmap(trades)", "History.trades(...)")
    np = _numpy()
    pd = _pandas()
    import matplotlib.dates as mdates
    from matplotlib.colors import LogNorm, Normalize

    ax = _axes(ax, figsize)
    if title:
        ax.set_title(title)
    ax.set_ylabel(_price_label(price_scale, price_unit))
    _date_axis(ax)

    cells = heatmap[heatmap["qty"].notna() & heatmap["price"].notna() & heatmap["time"].notna()]
    if price_range is None:
        price_range = _auto_price_range(np, cells, bbo, max_price_bins)
    if price_range is not None:
        # Only the rows in view go into the mesh: a capture with dust orders
        # at 1 USD and 1e9 USD would otherwise make a mesh of millions of rows.
        cells = cells[(cells["price"] >= price_range[0]) & (cells["price"] <= price_range[1])]
    qty = cells["qty"].to_numpy(dtype=float)
    cells, qty = cells[qty > 0], qty[qty > 0]
    if cells.empty:
        _note(ax, "no resting quantity")
    else:
        t_ns = _times(cells["time"]).astype("int64")
        t_width = pd.Timedelta(time_bin).value if time_bin is not None else None
        t_edges, t_idx = _bins(np, t_ns, t_width, default_width=1_000_000_000)
        x_edges = mdates.date2num(t_edges.astype("datetime64[ns]"))
        prices = cells["price"].to_numpy()
        p_edges, p_idx = _bins(np, prices, price_bin, default_width=1)
        n_time = len(t_edges) - 1
        top = vmax
        quantile = clip_quantile if clip_quantile is not None else (None if log else 0.99)
        if top is None:
            top = float(np.quantile(qty, quantile)) if quantile else float(qty.max())
        bottom = float(qty.min())
        if log:
            norm = LogNorm(vmin=bottom, vmax=max(top, bottom * 10))
        else:
            norm = Normalize(vmin=0, vmax=max(top, 1.0))
        side = cells["side"].to_numpy()
        for name, cmap in (("bid", bid_cmap), ("ask", ask_cmap)):
            mine = side == name
            if not mine.any():
                continue
            rows = p_idx[mine]
            low, high = int(rows.min()), int(rows.max())
            n_rows = high - low + 1
            flat = (rows - low) * n_time + t_idx[mine]
            grid = np.bincount(flat, weights=qty[mine], minlength=n_rows * n_time).reshape(n_rows, n_time)
            y_edges = _scaled(p_edges[low:high + 2], price_scale)
            mesh = ax.pcolormesh(x_edges, y_edges, np.ma.masked_less_equal(grid, 0), cmap=_pale_cut(cmap),
                                 norm=norm, shading="flat", rasterized=True)
            mesh.set_gid(f"{name} qty")
            if colorbar:
                ax.figure.colorbar(mesh, ax=ax, pad=0.01, fraction=0.035, label=f"{name} qty (lots)")

    if bbo is not None and not bbo.empty:
        x = mdates.date2num(_times(bbo["ts"]))
        if bbo_lines:
            for name, colour in (("bid", BID_COLOUR), ("ask", ASK_COLOUR)):
                ax.step(x, _scaled(bbo[name], price_scale), where="post", color=colour, linewidth=0.8,
                        alpha=0.9, label=name)
        ax.step(x, _scaled(bbo["mid"], price_scale), where="post", color="black", linewidth=1.2, label="mid")
    if trades is not None and not trades.empty:
        _trade_markers(ax, trades, price_scale, max_marker_size)
    if price_range is not None:
        ax.set_ylim(_scaled_one(price_range[0], price_scale), _scaled_one(price_range[1], price_scale))
    if (bbo is not None and not bbo.empty) or (trades is not None and not trades.empty):
        ax.legend(loc="upper left", fontsize=8, markerscale=0.6, framealpha=0.8)
    return ax.figure


def trade_tape(trades: "pd.DataFrame", ax: Optional["Axes"] = None, *, price_scale: Optional[float] = None,
               price_unit: Optional[str] = None, title: Optional[str] = None, volume: bool = True,
               volume_bins: int = 60, line: bool = True, max_marker_size: float = 150.0,
               figsize: tuple[float, float] = (12.0, 5.5)) -> "Figure":
    """Trade prices over time: circles sized by quantity, coloured by taker side.

    A thin grey step joins consecutive prices (``line``). With ``volume`` and
    no ``ax``, a second axes beneath (shared time axis) shows the traded
    quantity per time bin, buy takers (green) stacked under sell takers (red).

    Args:
        trades: from ``History.trades``: ``ts`` (Timestamp, naive means UTC),
            ``price`` (price units), ``qty`` (lots), ``taker_side`` (1 buy,
            2 sell; anything else is grey). Other columns are ignored.
        ax: draw into this axes (then no volume axes); otherwise a new figure.
        price_scale: display ``price / price_scale``.
        price_unit: the unit of displayed prices, for the axis label.
        title: the (top) axes title.
        volume: the volume bars beneath, for a new figure only.
        volume_bins: equal time bins over the trades' span.
        line: the grey step between consecutive trade prices.
        max_marker_size: marker area (points^2) of the largest trade.
        figsize: inches, for a new figure.

    Returns:
        The figure: one scatter per taker side present (together one marker
        per row); with volume bars, two ``bar`` containers of ``volume_bins``
        bars whose heights sum to the total ``qty``. No rows: a note.

    Raises:
        ValueError: ``trades`` lacks one of ``ts, price, qty, taker_side``.

    Complexity: O(N log N), N trades.
    """
    _require(trades, TRADE_COLUMNS, "trade_tape(trades)", "History.trades(...)")
    np = _numpy()
    import matplotlib.dates as mdates

    vax = None
    if ax is None:
        from matplotlib.figure import Figure
        fig = Figure(figsize=figsize, layout="constrained")
        if volume:
            ax, vax = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
        else:
            ax = fig.subplots()
    if title:
        ax.set_title(title)
    ax.set_ylabel(_price_label(price_scale, price_unit))
    _date_axis(vax if vax is not None else ax)
    if vax is not None:
        vax.set_ylabel("volume (lots)")
    if trades.empty:
        _note(ax, "no trades")
        return ax.figure
    trades = trades.sort_values("ts", kind="stable")
    x = mdates.date2num(_times(trades["ts"]))
    if line:
        ax.step(x, _scaled(trades["price"], price_scale), where="post", color="0.7", linewidth=0.8, zorder=1)
    _trade_markers(ax, trades, price_scale, max_marker_size)
    ax.legend(loc="upper left", fontsize=8, markerscale=0.6, framealpha=0.8)
    if vax is not None:
        span = (x.min(), x.max()) if x.max() > x.min() else (x.min() - 0.5 / 86_400, x.max() + 0.5 / 86_400)
        edges = np.linspace(span[0], span[1], volume_bins + 1)
        qty = trades["qty"].to_numpy(dtype=float)
        side = _taker_sides(np, trades["taker_side"])
        buys, _ = np.histogram(x[side == TAKER_BUY], bins=edges, weights=qty[side == TAKER_BUY])
        rest, _ = np.histogram(x[side != TAKER_BUY], bins=edges, weights=qty[side != TAKER_BUY])
        width = np.diff(edges)
        vax.bar(edges[:-1], buys, width=width, align="edge", color=BID_COLOUR, alpha=0.8, label="buy taker")
        vax.bar(edges[:-1], rest, width=width, bottom=buys, align="edge", color=ASK_COLOUR, alpha=0.8,
                label="sell taker")
    return ax.figure


def order_life(life: "pd.DataFrame", ax: Optional["Axes"] = None, *, price_scale: Optional[float] = None,
               price_unit: Optional[str] = None, title: Optional[str] = None, x: str = "ts",
               queue: Optional[str] = "qty_ahead", annotate_fills: int = 12,
               figsize: tuple[float, float] = (11.0, 4.5)) -> "Figure":
    """One order's life: its leaves quantity after each event, fills and queue place.

    ``leaves_qty`` is a step over the events; each event is a marker (shape
    by ``event``); each fill (a row with a ``match_id``) is an orange
    triangle, the first ``annotate_fills`` of them labelled with the fill
    quantity and price and the counterparty order and account. Placed and
    amended events are labelled with their price. On a twin axis, ``queue``
    (``"qty_ahead"``: lots ahead in the queue, or ``"rank"``: orders ahead,
    0 = head) as a dashed step; NaN while the order is not resting.

    Args:
        life: from ``History.order(order_id, symbol)``, in event order:
            ``seq``, ``ts`` (Timestamp), ``event`` (placed, rested, amended,
            fill, cancelled, rejected, filled, ...), ``price`` (price units),
            ``qty`` (the event's lots: the fill's for a fill), ``leaves_qty``
            (lots), ``counterparty_order_id``, ``counterparty_account``,
            ``match_id`` (null except on fills), and the ``queue`` column.
        ax: draw into this axes (and its twin); otherwise a new figure.
        price_scale: display prices (in the labels) as ``price / price_scale``.
        price_unit: appended to the labelled prices.
        title: the axes title.
        x: ``"ts"`` (time) or ``"seq"`` (WAL sequence: events of one
            millisecond apart) on the horizontal axis.
        queue: ``"qty_ahead"``, ``"rank"`` or None (no twin axis).
        annotate_fills: label at most this many fills (the rest are counted).
        figsize: inches, for a new figure.

    Returns:
        The figure: a "leaves_qty" line, one scatter per event kind other
        than fills, a "fill" scatter with one marker per fill row, the twin
        axis's queue line. No rows: a note.

    Raises:
        ValueError: ``life`` lacks a column above, or ``x`` / ``queue`` is
            not one of the values above.

    Complexity: O(E), E events.
    """
    if x not in ("ts", "seq"):
        raise ValueError(f"order_life: x must be 'ts' or 'seq', not {x!r}")
    if queue not in ("qty_ahead", "rank", None):
        raise ValueError(f"order_life: queue must be 'qty_ahead', 'rank' or None, not {queue!r}")
    _require(life, LIFE_COLUMNS + ((queue,) if queue else ()), "order_life(life)", "History.order(order_id, symbol)")
    np = _numpy()
    ax = _axes(ax, figsize)
    if title:
        ax.set_title(title)
    ax.set_ylabel("leaves quantity (lots)")
    if x == "ts":
        import matplotlib.dates as mdates
        _date_axis(ax)
        xs = mdates.date2num(_times(life["ts"]))
    else:
        ax.set_xlabel("seq")
        xs = life["seq"].to_numpy(dtype=float)
    if life.empty:
        _note(ax, "no events")
        return ax.figure
    leaves = life["leaves_qty"].to_numpy(dtype=float)
    ax.step(xs, leaves, where="post", color="black", linewidth=1.5, label="leaves_qty")
    events = life["event"].astype(str).to_numpy()
    fills = life["match_id"].notna().to_numpy()
    unit = f" {price_unit}" if price_unit else ""
    for kind in dict.fromkeys(events[~fills]):
        mine = (events == kind) & ~fills
        marker, colour = _EVENT_STYLE.get(kind, ("o", OTHER_COLOUR))
        ax.scatter(xs[mine], leaves[mine], marker=marker, s=50, color=colour, zorder=3, label=kind)
        if kind in ("placed", "amended"):
            for i in np.flatnonzero(mine):
                ax.annotate(f"{kind} @ {_fmt_price(life['price'].iloc[i], price_scale)}{unit}",
                            (xs[i], leaves[i]), textcoords="offset points", xytext=(4, 6), fontsize=7)
    if fills.any():
        n_fills = int(fills.sum())
        ax.scatter(xs[fills], leaves[fills], marker="v", s=60, color="#f28e2b", edgecolors="black",
                   linewidths=0.5, zorder=4, label=f"fill ({n_fills})")
        low = 0.15 * np.nanmax(leaves) if np.isfinite(leaves).any() else 0.0
        for k, i in enumerate(np.flatnonzero(fills)[:annotate_fills]):
            row = life.iloc[i]
            text = (f"{_fmt_int(row['qty'])} @ {_fmt_price(row['price'], price_scale)}{unit}\n"
                    f"vs #{_fmt_int(row['counterparty_order_id'])} acct {_fmt_int(row['counterparty_account'])}")
            # leaves only fall: above-right and below-left of a fill are empty; alternate them
            below = k % 2 == 1 and leaves[i] > low
            ax.annotate(text, (xs[i], leaves[i]), textcoords="offset points", xytext=(-6, -8) if below else (6, 5),
                        ha="right" if below else "left", va="top" if below else "bottom",
                        fontsize=7, color="#9c4f0b")
        if n_fills > annotate_fills:
            _note(ax, f"{n_fills - annotate_fills} more fills not labelled", x=0.99, y=0.02, size=8, ha="right")
    ax.set_ylim(bottom=0, top=max(1.0, float(np.nanmax(leaves)) if np.isfinite(leaves).any() else 1.0) * 1.15)
    handles, labels = ax.get_legend_handles_labels()
    if queue:
        tw = ax.twinx()
        tw.step(xs, life[queue].to_numpy(dtype=float), where="post", color="#6a3d9a", linestyle="--",
                linewidth=1.2, label=queue)
        tw.set_ylabel("lots ahead in queue" if queue == "qty_ahead" else "queue rank (0 = head)", color="#6a3d9a")
        tw.set_ylim(bottom=0)
        more_h, more_l = tw.get_legend_handles_labels()
        handles, labels = handles + more_h, labels + more_l
    ax.legend(handles, labels, loc="upper right", fontsize=8, framealpha=0.8)
    return ax.figure


_EVENT_STYLE = {
    "placed": ("o", "#1f77b4"), "accepted": ("o", "#1f77b4"), "rested": ("s", "#17becf"),
    "amended": ("D", "#9467bd"), "cancelled": ("X", "#d62728"), "rejected": ("X", "#8c564b"),
    "filled": ("*", "#2ca02c"), "expired": ("X", "#7f7f7f"),
}


def _numpy() -> Any:
    import numpy
    return numpy


def _pandas() -> Any:
    import pandas
    return pandas


def _require(frame: Any, columns: Sequence[str], what: str, source: str) -> None:
    """Raise ValueError naming the columns of ``columns`` that ``frame`` lacks."""
    have = set(getattr(frame, "columns", ()))
    missing = [c for c in columns if c not in have]
    if missing:
        raise ValueError(f"{what}: missing column(s) {', '.join(missing)}; expected {', '.join(columns)} "
                         f"(as from {source})")


def _axes(ax: Optional["Axes"], figsize: tuple[float, float]) -> "Axes":
    if ax is not None:
        return ax
    from matplotlib.figure import Figure
    return Figure(figsize=figsize, layout="constrained").subplots()


def _note(ax: "Axes", text: str, x: float = 0.5, y: float = 0.5, size: float = 11, ha: str = "center") -> None:
    ax.text(x, y, text, transform=ax.transAxes, ha=ha, va="center", fontsize=size, color="0.45", gid="note")


def _price_label(price_scale: Optional[float], price_unit: Optional[str]) -> str:
    if price_unit:
        return f"price ({price_unit})"
    if price_scale:
        return f"price (price units / {price_scale:,g})"
    return "price (price units)"


def _scaled(values: Any, price_scale: Optional[float]) -> Any:
    np = _numpy()
    out = np.asarray(values, dtype=float)
    return out / price_scale if price_scale else out


def _scaled_one(value: float, price_scale: Optional[float]) -> float:
    return float(value) / price_scale if price_scale else float(value)


def _fmt_price(value: Any, price_scale: Optional[float]) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "?"
    if not price_scale:
        return f"{float(value):,.10g}"
    digits = max(0, math.ceil(math.log10(price_scale))) if price_scale > 1 else 0
    text = f"{float(value) / price_scale:,.{digits}f}"
    if digits > 2:                              # 580.1000 -> 580.10, 580.1234 stays
        text = text.rstrip("0").ljust(text.index(".") + 3, "0")
    return text


def _fmt_int(value: Any) -> str:
    try:
        if value is None or math.isnan(float(value)):
            return "?"
        return f"{int(value)}"
    except (TypeError, ValueError):
        return str(value)


def _times(values: Any) -> Any:
    """Timestamps (aware or naive = UTC) as naive UTC ``datetime64[ns]`` numbers."""
    pd = _pandas()
    ts = pd.to_datetime(pd.Series(values), utc=True).dt.tz_localize(None)
    return ts.to_numpy(dtype="datetime64[ns]")


def _date_axis(ax: "Axes") -> None:
    import matplotlib.dates as mdates
    locator = mdates.AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    ax.set_xlabel("time (UTC)")


def _taker_sides(np: Any, column: Any) -> Any:
    """``taker_side`` as 1 (buy) / 2 (sell) / 0: accepts the engine's codes
    or the history tables' ``"buy"`` / ``"sell"``."""
    values = column.to_numpy()
    if values.dtype.kind in "iuf":
        return values
    text = column.astype(str).str.lower().to_numpy()
    return np.where(text == "buy", TAKER_BUY, np.where(text == "sell", TAKER_SELL, 0))


def _auto_price_range(np: Any, cells: Any, bbo: Any, max_price_bins: int) -> Optional[tuple[float, float]]:
    """The default ``price_range`` of :func:`liquidity_heatmap` (see there)."""
    prices = np.unique(cells["price"].to_numpy())
    if len(prices) <= max_price_bins:
        return None
    width = float(np.min(np.diff(prices))) if len(prices) > 1 else 1.0
    mids = bbo["mid"].dropna().to_numpy(dtype=float) if bbo is not None and not bbo.empty else np.array([])
    if mids.size:
        low, high = float(mids.min()), float(mids.max())
    else:
        low, high = (float(v) for v in np.percentile(cells["price"].to_numpy(dtype=float), [2, 98]))
    pad = max((high - low) / 2, 25 * width)
    return low - pad, high + pad


def _bins(np: Any, values: Any, width: Optional[int], default_width: int) -> tuple[Any, Any]:
    """Edges and each value's bin index for bin starts ``values`` (int64).

    A regular grid from the smallest start in steps of ``width`` (default: the
    gcd of the gaps) when the starts lie on it and it is not much bigger than
    the number of distinct starts; otherwise one bin per distinct start, each
    ``width`` wide at the end.
    """
    values = np.asarray(values).astype("int64")
    starts = np.unique(values)
    gaps = np.diff(starts)
    if width is None:
        width = int(np.gcd.reduce(gaps)) if gaps.size else default_width
    width = max(int(width), 1)
    offsets = values - starts[0]
    n = int((starts[-1] - starts[0]) // width) + 1
    if not (offsets % width).any() and n <= len(starts) + _MAX_GRID_PAD:
        return starts[0] + np.arange(n + 1, dtype="int64") * width, offsets // width
    return np.append(starts, starts[-1] + width), np.searchsorted(starts, values)


def _pale_cut(name: str, low: float = 0.25) -> Any:
    """The colour map ``name`` without its palest ``low`` fraction."""
    import matplotlib
    from matplotlib.colors import ListedColormap
    np = _numpy()
    base = matplotlib.colormaps[name]
    return ListedColormap(base(np.linspace(low, 1.0, 256)), name=f"{name}_from_{low:g}")


def _trade_markers(ax: "Axes", trades: "pd.DataFrame", price_scale: Optional[float], max_size: float) -> None:
    """One scatter per taker side present: area proportional to qty."""
    import matplotlib.dates as mdates
    np = _numpy()
    x = mdates.date2num(_times(trades["ts"]))
    y = _scaled(trades["price"], price_scale)
    qty = trades["qty"].to_numpy(dtype=float)
    top = np.nanmax(qty) if np.isfinite(qty).any() and np.nanmax(qty) > 0 else 1.0
    sizes = np.clip(max_size * np.nan_to_num(qty) / top, 6.0, max_size)
    side = _taker_sides(np, trades["taker_side"])
    groups: Iterable[tuple[Any, str, str]] = (
        (side == TAKER_BUY, "buy taker", BID_COLOUR), (side == TAKER_SELL, "sell taker", ASK_COLOUR),
        ((side != TAKER_BUY) & (side != TAKER_SELL), "taker side unknown", OTHER_COLOUR))
    for mine, label, colour in groups:
        if mine.any():
            ax.scatter(x[mine], y[mine], s=sizes[mine], color=colour, edgecolors="black", linewidths=0.4,
                       alpha=0.75, zorder=5, label=f"{label} ({int(mine.sum())})")
