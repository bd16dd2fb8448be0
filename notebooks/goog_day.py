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
# # A Nasdaq day from LOBSTER: GOOG, 2012-06-21
#
# The LOBSTER sample day (a message file and the top 10 levels after every message)
# run through evengine in match mode: executions are re-enacted by the matcher as
# taker orders. Then the history is opened from the WAL: the book at an exact
# event, shown equal to LOBSTER's own orderbook row for that message; a heatmap of
# the day; a resting order's life with its queue rank; a diff and a what-if.
#
# Prices are LOBSTER's unit (USD x 10,000; `price_scale=10_000` shows dollars),
# quantities are shares. Point `LOBSTER_DIR` at a downloaded day to use another.

# %%
import os
import subprocess
from pathlib import Path

import pandas as pd

from engine.core import PlaceOrder
from engine.io.lobster import parse_file_name, parse_orderbook_row
from recovery import open_data_dir, plots

ROOT = Path.cwd()
while not (ROOT / "pyproject.toml").exists() and ROOT != ROOT.parent:
    ROOT = ROOT.parent
LOBSTER = Path(os.environ.get("LOBSTER_DIR", ROOT.parent / "shared/data/lobster"))
MESSAGES = next(iter(sorted(LOBSTER.glob("GOOG_*_message_*.csv"))), None) or next(iter(sorted(LOBSTER.glob("*_message_*.csv"))), None)
if MESSAGES is None:
    raise SystemExit(f"no LOBSTER message file in {LOBSTER}: set LOBSTER_DIR to a downloaded day")
ORDERBOOK = MESSAGES.with_name(MESSAGES.name.replace("_message_", "_orderbook_"))
SYMBOL, LEVELS = parse_file_name(MESSAGES)
DATA = Path(os.environ.get("EVENGINE_NOTEBOOK_DATA", ROOT / "data" / f"lobster-{SYMBOL}"))
if not (DATA / "wal").is_dir():
    subprocess.run(["evengine", "start", "--source", f"lobster:{MESSAGES}:{ORDERBOOK}", "--data-dir", str(DATA),
                    "--no-progress"], check=True, capture_output=True)
h = open_data_dir(str(DATA))
print(f"{SYMBOL}, {LEVELS} levels: {h.last_seq:,} WAL events")

# %% [markdown]
# ## The engine's book is LOBSTER's book
# Every command carries the message row it came from (`source_pos`). Take the
# last event of a few rows that are new orders (type 1, never inside a sweep) and
# compare the engine's top levels with the orderbook file's row.

# %%
rows = MESSAGES.read_text().splitlines()
book_rows = ORDERBOOK.read_text().splitlines()
last_seq_of_row = {}
for seq, obj in h.events(1, h.last_seq):
    if obj[0] < 64 and obj[-1] is not None:          # a command and its message row
        last_seq_of_row[obj[-1]] = seq
new_order_rows = [r for r in range(len(rows)) if rows[r].split(",")[1] == "1" and r in last_seq_of_row]
checked = 0
for row in new_order_rows[:: max(1, len(new_order_rows) // 25)]:
    seq = last_seq_of_row[row]
    # The next row's first command would belong to the next message: the
    # state after this row is the state after its last command's step.
    bids, asks = parse_orderbook_row(book_rows[row], LEVELS)
    engine = h.book(seq, SYMBOL, depth=LEVELS)
    mine_bids = list(engine.query("side == 'bid'")[["price", "qty"]].itertuples(index=False, name=None))
    mine_asks = list(engine.query("side == 'ask'")[["price", "qty"]].itertuples(index=False, name=None))
    assert (mine_bids, mine_asks) == (bids, asks), (row, seq)
    checked += 1
print(f"{checked} rows: the engine's top {LEVELS} levels equal LOBSTER's orderbook file")

# %%
ROW = new_order_rows[len(new_order_rows) // 2]
SEQ = last_seq_of_row[ROW]
print(f"message row {ROW}: {rows[ROW]}  ->  seq {SEQ}")
h.book(SEQ, SYMBOL, depth=5)

# %%
fig = plots.depth_chart(h.book(SEQ, SYMBOL, depth=LEVELS), price_scale=10_000,
                        title=f"{SYMBOL} after message row {ROW:,}")
fig

# %% [markdown]
# ## The day's liquidity, the mid and the trades

# %%
trades = h.trades(1, h.last_seq, SYMBOL)
heat = h.depth_heatmap(1, h.last_seq, SYMBOL, time_bin="5min", price_bin=500)
bbo = h.bbo(1, h.last_seq, SYMBOL, every="1min")
fig = plots.liquidity_heatmap(heat, bbo=bbo, trades=trades, price_scale=10_000,
                              title=f"{SYMBOL} resting liquidity (top {LEVELS} levels seen)")
fig

# %% [markdown]
# ## One resting order: its fills and its place in the queue

# %%
filled = trades[trades["maker_order_id"] < 2**40]          # LOBSTER's own ids, not synthetic ones
maker = int(filled["maker_order_id"].value_counts().index[0])
life = h.order(maker, SYMBOL)
life[["seq", "ts", "event", "price", "qty", "leaves_qty", "counterparty_order_id", "rank", "qty_ahead"]]

# %%
fig = plots.order_life(life, price_scale=10_000, title=f"{SYMBOL} order {maker}")
fig

# %% [markdown]
# ## A minute of the day, and one more order

# %%
d = h.diff(SEQ, min(SEQ + 1_000, h.last_seq), SYMBOL)
print(f"{len(d.added)} added, {len(d.removed)} removed, {len(d.changed)} changed, {len(d.trades)} trades")
d.levels[d.levels["delta"] != 0].head(10)

# %%
# A 500-share buy at the best ask right after SEQ; the recorded flow does not react.
best_ask = int(h.book(SEQ, SYMBOL, depth=1).query("side == 'ask'")["price"].iloc[0])
w = h.what_if(SEQ, add=[PlaceOrder.new(SYMBOL, 2**45, 1, best_ask, 500)], until_seq=min(SEQ + 20_000, h.last_seq))
print("diverges at seq", w.diverged_at)
assert w.diverged_at is not None
