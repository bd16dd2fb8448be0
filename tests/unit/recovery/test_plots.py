"""recovery.plots: each picture from small hand-made history frames (Agg, no display)."""

from __future__ import annotations

import os
import time

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402 - in the test extra: a missing one fails, never skips
import matplotlib  # noqa: E402
matplotlib.use("Agg")

from matplotlib.collections import PathCollection, QuadMesh  # noqa: E402
from matplotlib.container import BarContainer  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from recovery import plots  # noqa: E402

T0 = pd.Timestamp("2024-03-01 09:30:00", tz="UTC")


def ts(seconds):
    return [T0 + pd.Timedelta(seconds=s) for s in seconds]


def new_axes():
    return Figure().subplots()


def book_frame(bids=((1000, 5), (999, 3), (997, 7)), asks=((1002, 4), (1003, 6))):
    rows = []
    for side, levels in (("bid", bids), ("ask", asks)):
        cum = 0
        for level, (price, qty) in enumerate(levels, start=1):
            cum += qty
            rows.append({"side": side, "level": level, "price": price, "qty": qty, "orders": 1, "cum_qty": cum})
    return pd.DataFrame(rows, columns=["side", "level", "price", "qty", "orders", "cum_qty"])


def trades_frame(n=6):
    return pd.DataFrame({
        "seq": range(10, 10 + n), "ts": ts(range(n)), "match_id": range(1, n + 1), "symbol": "X",
        "symbol_seq": range(1, n + 1), "price": [1000 + (i % 3) for i in range(n)],
        "qty": [1 + i for i in range(n)], "taker_side": [1 if i % 2 == 0 else 2 for i in range(n)],
        "maker_order_id": range(100, 100 + n), "taker_order_id": range(200, 200 + n),
        "maker_account": 1, "taker_account": 2, "cmd_seq": range(9, 9 + n), "source": "s",
        "source_pos": range(n)})


def bbo_frame():
    bid = [1000.0, 1000.0, np.nan, 999.0]       # the bid side empty for a while
    ask = [1002.0, 1001.0, 1001.0, 1003.0]
    frame = pd.DataFrame({"seq": [1, 2, 3, 4], "ts": ts([0, 1.5, 3, 4.5]), "bid": bid, "bid_qty": [5, 5, np.nan, 2],
                          "ask": ask, "ask_qty": [4, 4, 4, 1]})
    frame["mid"] = (frame["bid"] + frame["ask"]) / 2
    frame["spread"] = frame["ask"] - frame["bid"]
    return frame


def heatmap_frame(n_time=4, bid_prices=(996, 998, 1000), ask_prices=(1002, 1004)):
    rows = []
    for t in range(n_time):
        for side, prices in (("bid", bid_prices), ("ask", ask_prices)):
            for k, price in enumerate(prices):
                rows.append({"time": T0 + pd.Timedelta(seconds=2 * t), "side": side, "price": price,
                             "qty": 1 + t + k})
    return pd.DataFrame(rows, columns=["time", "side", "price", "qty"])


def life_frame():
    return pd.DataFrame({
        "seq": [5, 5, 9, 14, 20], "ts": ts([0, 0, 2, 3, 7]),
        "event": ["placed", "rested", "fill", "fill", "cancelled"],
        "price": [1000, 1000, 1000, 1000, 1000], "qty": [10, 10, 3, 2, 5],
        "leaves_qty": [10, 10, 7, 5, 0],
        "counterparty_order_id": [np.nan, np.nan, 301, 302, np.nan],
        "counterparty_account": [np.nan, np.nan, 7, 8, np.nan],
        "match_id": [np.nan, np.nan, 11, 12, np.nan],
        "rank": [np.nan, 2, 1, 0, np.nan], "qty_ahead": [np.nan, 9, 4, 0, np.nan]})


def meshes(ax):
    return {m.get_gid(): m for m in ax.collections if isinstance(m, QuadMesh)}


def scatters(ax):
    return [c for c in ax.collections if isinstance(c, PathCollection)]


def notes(ax):
    return [t.get_text() for t in ax.texts if t.get_gid() == "note"]


# --- depth_chart -------------------------------------------------------------------------------

def test_depth_chart_draws_one_step_and_fill_per_side_and_a_bar_per_level():
    book = book_frame()
    fig = plots.depth_chart(book, title="depth")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.get_title() == "depth"
    steps = [line for line in ax.lines if line.get_label().startswith(("bids", "asks"))]
    assert len(steps) == 2
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert sum(len(c.patches) for c in bars) == len(book)
    # the bid curve is left of the mid, the ask curve right of it, both reach the total
    bid_line, ask_line = steps
    mid = 1001
    assert bid_line.get_xdata().max() <= mid <= ask_line.get_xdata().min()
    assert bid_line.get_ydata().max() == 15 and ask_line.get_ydata().max() == 10


def test_depth_chart_into_given_axes_and_price_scale_divides_the_limits():
    ax = new_axes()
    assert plots.depth_chart(book_frame(), ax=ax) is ax.figure
    plain = ax.get_xlim()
    scaled_ax = new_axes()
    plots.depth_chart(book_frame(), ax=scaled_ax, price_scale=100, price_unit="USD")
    assert scaled_ax.get_xlim() == pytest.approx((plain[0] / 100, plain[1] / 100))
    assert scaled_ax.get_xlabel() == "price (USD)"
    assert "/ 100" in new_axes_label(price_scale=100)


def new_axes_label(**kw):
    ax = new_axes()
    plots.depth_chart(book_frame(), ax=ax, **kw)
    return ax.get_xlabel()


def test_depth_chart_one_empty_side_and_an_empty_book():
    ax = new_axes()
    plots.depth_chart(book_frame(asks=()), ax=ax, levels=False)
    assert [line.get_label() for line in ax.lines] == ["bids (3 levels)"]
    assert notes(ax) == ["no asks"]
    ax = new_axes()
    plots.depth_chart(book_frame(bids=(), asks=()), ax=ax)
    assert len(ax.lines) == 0 and notes(ax) == ["empty book"]


def test_depth_chart_missing_columns_are_named():
    with pytest.raises(ValueError, match="cum_qty") as info:
        plots.depth_chart(book_frame().drop(columns=["cum_qty", "level"]))
    assert "level" in str(info.value)
    with pytest.raises(ValueError, match="side"):
        plots.depth_chart(pd.DataFrame())


# --- liquidity_heatmap -------------------------------------------------------------------------

def test_heatmap_meshes_have_the_pivot_shape_per_side():
    heat = heatmap_frame()
    fig = plots.liquidity_heatmap(heat)
    assert isinstance(fig, Figure)
    got = meshes(fig.axes[0])
    for side in ("bid", "ask"):
        pivot = heat[heat["side"] == side].pivot_table(index="price", columns="time", values="qty", aggfunc="sum")
        assert got[f"{side} qty"].get_array().shape == pivot.shape
        assert np.asarray(got[f"{side} qty"].get_array()) == pytest.approx(pivot.to_numpy())


def test_heatmap_price_gap_is_an_empty_row_not_a_stretched_cell():
    heat = heatmap_frame(bid_prices=(990, 1000), ask_prices=(1005,), n_time=3)   # gcd 5: 990, 995, 1000
    mesh = meshes(plots.liquidity_heatmap(heat, price_bin=None, colorbar=False).axes[0])["bid qty"]
    values = mesh.get_array()
    assert values.shape == (3, 3)
    assert values.mask[1].all() and not values.mask[[0, 2]].any()


def test_heatmap_overlays_mid_bid_ask_and_one_marker_per_trade():
    ax = new_axes()
    trades = trades_frame(7)
    fig = plots.liquidity_heatmap(heatmap_frame(), bbo=bbo_frame(), trades=trades, ax=ax, bbo_lines=True,
                                  log=False, colorbar=False)
    assert fig is ax.figure
    assert sorted(line.get_label() for line in ax.lines) == ["ask", "bid", "mid"]
    mid = next(line for line in ax.lines if line.get_label() == "mid")
    assert np.isnan(mid.get_ydata()).sum() == 1          # the empty bid side breaks the line
    markers = scatters(ax)
    assert sum(len(c.get_offsets()) for c in markers) == len(trades)
    assert {c.get_label() for c in markers} == {"buy taker (4)", "sell taker (3)"}


def test_heatmap_price_scale_divides_the_limits_and_labels_the_axis():
    plain = plots.liquidity_heatmap(heatmap_frame(), colorbar=False).axes[0]
    scaled = plots.liquidity_heatmap(heatmap_frame(), price_scale=10_000, colorbar=False).axes[0]
    assert scaled.get_ylim() == pytest.approx(tuple(v / 10_000 for v in plain.get_ylim()))
    assert scaled.get_ylabel() == "price (price units / 10,000)"
    limited = plots.liquidity_heatmap(heatmap_frame(), price_range=(998, 1003), price_scale=100,
                                      colorbar=False).axes[0]
    assert limited.get_ylim() == pytest.approx((9.98, 10.03))


def test_heatmap_log_scale_and_empty_frames():
    mesh = meshes(plots.liquidity_heatmap(heatmap_frame(), log=True, colorbar=False).axes[0])["ask qty"]
    assert type(mesh.norm).__name__ == "LogNorm"
    empty = heatmap_frame().iloc[0:0]
    ax = new_axes()
    plots.liquidity_heatmap(empty, bbo=bbo_frame().iloc[0:0], trades=trades_frame().iloc[0:0], ax=ax)
    assert meshes(ax) == {} and notes(ax) == ["no resting quantity"]
    ax = new_axes()                                       # no quantity, but overlays still drawn
    plots.liquidity_heatmap(empty, bbo=bbo_frame(), ax=ax)
    assert [line.get_label() for line in ax.lines] == ["mid"]


def test_heatmap_missing_columns_are_named_per_frame():
    with pytest.raises(ValueError, match=r"heatmap\).*qty"):
        plots.liquidity_heatmap(heatmap_frame().drop(columns=["qty"]))
    with pytest.raises(ValueError, match=r"bbo\).*mid"):
        plots.liquidity_heatmap(heatmap_frame(), bbo=bbo_frame().drop(columns=["mid"]))
    with pytest.raises(ValueError, match=r"bbo\).*bid, ask"):
        plots.liquidity_heatmap(heatmap_frame(), bbo=bbo_frame().drop(columns=["bid", "ask"]), bbo_lines=True)
    with pytest.raises(ValueError, match=r"trades\).*taker_side"):
        plots.liquidity_heatmap(heatmap_frame(), trades=trades_frame().drop(columns=["taker_side"]))


def test_heatmap_2000_time_bins_by_200_price_bins(tmp_path):
    n_time, n_price = 2_000, 200
    rng = np.random.default_rng(7)
    print("seed 7")
    t = np.repeat(np.arange(n_time), n_price)
    p = np.tile(np.arange(n_price), n_time)
    mid = 100 + (10 * np.sin(np.arange(n_time) / 200)).astype(int)
    heat = pd.DataFrame({
        "time": T0 + pd.to_timedelta(t, unit="s"),
        "side": np.where(p < mid[t], "bid", "ask"),
        "price": 500_000 + 10 * p,
        "qty": rng.pareto(1.5, n_time * n_price) * 10 + 1})
    heat = heat[np.abs(p - mid[t]) > 0]                  # the spread: no rows
    started = time.perf_counter()
    fig = plots.liquidity_heatmap(heat, price_scale=100)
    built = time.perf_counter() - started
    fig.savefig(tmp_path / "big.png", dpi=80)
    total = time.perf_counter() - started
    print(f"liquidity_heatmap {n_time} x {n_price} ({len(heat):,} rows): build {built:.3f} s, "
          f"build + PNG {total:.3f} s")
    shapes = sorted(m.get_array().shape for m in meshes(fig.axes[0]).values())
    assert all(shape[1] == n_time for shape in shapes)


# --- trade_tape --------------------------------------------------------------------------------

def test_trade_tape_one_marker_per_trade_and_volume_bars_sum_to_total():
    trades = trades_frame(9)
    fig = plots.trade_tape(trades, volume_bins=4, title="tape")
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    price_ax, volume_ax = fig.axes
    assert sum(len(c.get_offsets()) for c in scatters(price_ax)) == len(trades)
    bars = [c for c in volume_ax.containers if isinstance(c, BarContainer)]
    assert [len(c.patches) for c in bars] == [4, 4]
    assert sum(p.get_height() for c in bars for p in c.patches) == pytest.approx(trades["qty"].sum())
    buys = sum(p.get_height() for p in bars[0].patches)
    assert buys == pytest.approx(trades.loc[trades["taker_side"] == 1, "qty"].sum())


def test_trade_tape_into_given_axes_has_no_volume_axes_and_scales_prices():
    ax = new_axes()
    assert plots.trade_tape(trades_frame(), ax=ax) is ax.figure
    assert len(ax.figure.axes) == 1
    plain = ax.get_ylim()
    scaled = new_axes()
    plots.trade_tape(trades_frame(), ax=scaled, price_scale=10_000)
    assert scaled.get_ylim() == pytest.approx(tuple(v / 10_000 for v in plain))


def test_trade_tape_unknown_taker_side_is_its_own_group_and_sizes_follow_qty():
    trades = trades_frame(4)
    trades.loc[3, "taker_side"] = 0
    ax = new_axes()
    plots.trade_tape(trades, ax=ax, line=False)
    groups = {c.get_label(): c for c in scatters(ax)}
    assert set(groups) == {"buy taker (2)", "sell taker (1)", "taker side unknown (1)"}
    assert len(ax.lines) == 0
    sizes = groups["buy taker (2)"].get_sizes()          # qty 1 and 3 of max 4
    assert sizes[1] == pytest.approx(3 * sizes[0])


def test_trade_tape_empty_and_missing_columns():
    fig = plots.trade_tape(trades_frame().iloc[0:0])
    assert notes(fig.axes[0]) == ["no trades"]
    with pytest.raises(ValueError, match="qty, taker_side"):
        plots.trade_tape(trades_frame().drop(columns=["qty", "taker_side"]))


# --- order_life --------------------------------------------------------------------------------

def test_order_life_steps_marks_fills_with_counterparties_and_a_queue_twin():
    life = life_frame()
    fig = plots.order_life(life, title="order 42")
    assert isinstance(fig, Figure)
    ax, twin = fig.axes
    leaves = next(line for line in ax.lines if line.get_label() == "leaves_qty")
    assert list(leaves.get_ydata()) == [10, 10, 7, 5, 0]
    groups = {c.get_label(): c for c in scatters(ax)}
    assert set(groups) == {"placed", "rested", "cancelled", "fill (2)"}
    assert len(groups["fill (2)"].get_offsets()) == 2
    texts = [t.get_text() for t in ax.texts]
    assert "3 @ 1,000\nvs #301 acct 7" in texts and "2 @ 1,000\nvs #302 acct 8" in texts
    queue = twin.lines[0]
    assert queue.get_label() == "qty_ahead" and twin.get_ylabel() == "lots ahead in queue"
    assert np.isnan(queue.get_ydata()[[0, 4]]).all()


def test_order_life_into_given_axes_by_seq_rank_and_price_scale():
    ax = new_axes()
    fig = plots.order_life(life_frame(), ax=ax, x="seq", queue="rank", price_scale=100, price_unit="USD")
    assert fig is ax.figure and len(fig.axes) == 2
    assert ax.get_xlabel() == "seq" and list(ax.lines[0].get_xdata()) == [5, 5, 9, 14, 20]
    assert fig.axes[1].get_ylabel() == "queue rank (0 = head)"
    assert "placed @ 10.00 USD" in [t.get_text() for t in ax.texts]


def test_order_life_caps_fill_labels_empty_and_errors():
    ax = new_axes()
    plots.order_life(life_frame(), ax=ax, annotate_fills=1, queue=None)
    assert len(ax.figure.axes) == 1
    assert notes(ax) == ["1 more fills not labelled"]
    assert notes(plots.order_life(life_frame().iloc[0:0]).axes[0]) == ["no events"]
    with pytest.raises(ValueError, match="leaves_qty"):
        plots.order_life(life_frame().drop(columns=["leaves_qty"]))
    with pytest.raises(ValueError, match="qty_ahead"):
        plots.order_life(life_frame().drop(columns=["qty_ahead"]))
    plots.order_life(life_frame().drop(columns=["qty_ahead", "rank"]), queue=None)
    with pytest.raises(ValueError, match="x must be"):
        plots.order_life(life_frame(), x="time")


# --- all ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("draw", [
    lambda: plots.depth_chart(book_frame()),
    lambda: plots.liquidity_heatmap(heatmap_frame(), bbo=bbo_frame(), trades=trades_frame()),
    lambda: plots.trade_tape(trades_frame()),
    lambda: plots.order_life(life_frame()),
], ids=["depth_chart", "liquidity_heatmap", "trade_tape", "order_life"])
def test_each_figure_saves_to_a_non_empty_png(draw, tmp_path):
    path = tmp_path / "fig.png"
    draw().savefig(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1_000


def test_module_imports_without_matplotlib_loaded():
    import subprocess
    import sys
    code = ("import sys; sys.modules['matplotlib'] = None; import recovery.plots as p; "
            "print(sorted(p.__all__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__)))))
    assert "depth_chart" in out.stdout
