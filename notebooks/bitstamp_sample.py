# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Bitstamp BTC/USD, event by event
#
# 30 minutes of Bitstamp's public order flow (the `ob-analytics` sample that the
# README's first command fetches), run through evengine, then looked at from its
# write-ahead log: the exact book after any event, every resting order's place in
# its queue, which command caused which trade, an order's whole life, what changed
# between two points, and what would have happened with one more order.
#
# Prices are in the capture's price unit (whole USD here: the source measures the
# decimals from the file), quantities in lots of 1e-8 BTC. `seq` is the WAL's
# sequence number: every command, trade and reject has one.

# %%
import os
import subprocess
from pathlib import Path

import matplotlib
import pandas as pd

from recovery import open_data_dir, plots

ROOT = Path.cwd()
while not (ROOT / "pyproject.toml").exists() and ROOT != ROOT.parent:
    ROOT = ROOT.parent
CAPTURE = next((p for p in (ROOT / "data/samples/bitstamp/orders.csv.gz",
                            ROOT.parent / "shared/data/bitstamp/orders.csv.gz") if p.exists()), None)
DATA = Path(os.environ.get("EVENGINE_NOTEBOOK_DATA", ROOT / "data/bitstamp"))
if CAPTURE is None:
    raise SystemExit("no Bitstamp capture: run `python scripts/fetch_sample_data.py` first (README)")
if not (DATA / "wal").is_dir():
    # The README's first command, if it has not been run yet.
    subprocess.run(["evengine", "start", "--source", f"bitstamp:{CAPTURE}", "--data-dir", str(DATA),
                    "--no-progress"], check=True, capture_output=True)
h = open_data_dir(str(DATA))
SYMBOL = "BTCUSD"
print(f"{DATA}: {h.last_seq:,} WAL events")

# %% [markdown]
# ## The book right after one exact event
# `h.book(seq, symbol)` is one row per price level; `level="L3"` one row per resting
# order, with its rank in the level's queue and the lots ahead of it.

# %%
SEQ = h.last_seq // 2
book = h.book(SEQ, SYMBOL, depth=10)
book

# %%
l3 = h.book(SEQ, SYMBOL, depth=3, level="L3")
# The two views agree: a level's quantity is the sum of its orders, and the
# queue ranks count 0, 1, 2, ... at every level.
per_level = l3.groupby(["side", "price"])["qty"].sum()
assert (book.set_index(["side", "price"]).loc[per_level.index, "qty"] == per_level).all()
assert (l3.groupby(["side", "price"])["rank"].apply(lambda r: list(r) == list(range(len(r))))).all()
l3.head(12)

# %%
fig = plots.depth_chart(h.book(SEQ, SYMBOL, depth=50), title=f"{SYMBOL} depth after seq {SEQ:,}")
fig

# %% [markdown]
# ## Trades, and the command behind each one

# %%
trades = h.trades(1, h.last_seq, SYMBOL)
print(f"{len(trades)} trades")
trades[["seq", "ts", "match_id", "price", "qty", "taker_side", "maker_order_id", "taker_order_id",
        "cmd_seq", "source", "source_pos"]].head()

# %%
fig = plots.trade_tape(trades, title=f"{SYMBOL} trades (size by quantity, colour by taker side)")
fig

# %% [markdown]
# ## Liquidity over time
# Resting quantity per 10 s and 5 USD, with the mid and the trades on top.

# %%
heat = h.depth_heatmap(1, h.last_seq, SYMBOL, time_bin="10s", price_bin=5)
bbo = h.bbo(1, h.last_seq, SYMBOL, every="1s")
fig = plots.liquidity_heatmap(heat, bbo=bbo, trades=trades, title=f"{SYMBOL} resting liquidity")
fig

# %%
# An event-sourced book is never crossed: check the top of book after every change.
crossed = bbo.dropna(subset=["bid", "ask"]).query("bid >= ask")
assert crossed.empty, crossed.head()
bbo.describe()[["bid", "ask", "spread"]]

# %% [markdown]
# ## One order's life
# The maker that traded most often: every event, each fill with its counterparty,
# and its place in the queue after each event.

# %%
maker = int(trades["maker_order_id"].value_counts().index[0])
life = h.order(maker, SYMBOL)
assert life["event"].iloc[0] in ("placed", "rested")
life

# %%
fig = plots.order_life(life, title=f"order {maker}")
fig

# %% [markdown]
# ## What changed between two points

# %%
d = h.diff(SEQ, SEQ + 2_000, SYMBOL)
print(f"{len(d.added)} orders added, {len(d.removed)} removed, {len(d.changed)} changed, "
      f"{len(d.trades)} trades in between")
d.levels.sort_values("delta", key=abs, ascending=False).head(10)

# %% [markdown]
# ## What if one more order had come in?
# A buy of 1 BTC at the best ask, entered right after `SEQ`, then the recorded
# commands replayed through the real matcher. The other participants' recorded
# orders do not react to it: this is the recorded flow with one change, not a
# market simulation.

# %%
from engine.core import PlaceOrder

best_ask = int(book.query("side == 'ask'")["price"].min())
extra = PlaceOrder.new(SYMBOL, 1, 1, best_ask, 100_000_000, ts_ns=0)
w = h.what_if(SEQ, add=[extra], until_seq=SEQ + 5_000)
print("first divergence at seq", w.diverged_at)
assert w.diverged_at is not None
