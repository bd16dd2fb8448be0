"""BitstampSource and compare_trades: synthetic CSVs under tmp_path, then the
real 30-minute capture in ../shared/data/bitstamp (skipped if absent)."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.support.data import data_path

from engine.core import (AddSymbol, AmendOrder, BadInput, CancelOrder, Kind, Matcher, PlaceOrder,
                         RejectReason)
from engine.cli import app, make_source
from engine.io.bitstamp import (COLUMNS, R_COLUMNS, BitstampSource, compare_trades,
                                compression_of, decimals_of, load_trades, parse_scaled)
from tests.support.bitstamp_market import generate
from tests.support.ladder import apply_one, ladder, ladder_of

SYMBOL = "BTCUSD"
NAME = "bitstamp:BTCUSD"
HEADER = ",".join(COLUMNS)
BUY, SELL = 1, 2
LOT = 10**8  # lots per BTC
MS = 1_000_000  # ns per ms


def row(order_id: int, price: str, volume: str, action: str, direction: str,
        ms: int = 1_777_689_381_000) -> str:
    """One orders.csv line; the local timestamp is the exchange one + 70 ms."""
    return f"{order_id},{ms + 70},{ms},{price},{volume},{action},{direction}"


def write(tmp_path: Path, lines: list[str], name: str = "orders.csv", header: str = HEADER) -> Path:
    text = "\n".join([header, *lines]) + "\n"
    path = tmp_path / name
    if name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def pinned(path: Path) -> BitstampSource:
    """A source in the 2026 sample's units (1 USD, 1e-8 BTC), which these
    hand-written rows assume; the detected units are tested further down."""
    return BitstampSource(path, price_decimals=0, size_decimals=8)


def drive(source: BitstampSource, matcher: Matcher, after=None, limit=None) -> list:
    """Apply the source's commands one at a time (as the engine does), checking
    the book after each; ``[(command, events), ...]``."""
    out = []
    for cmd in source.commands(matcher, after):
        out.append((cmd, apply_one(matcher, cmd)))
        if limit is not None and len(out) >= limit:
            break
    return out


def trades(steps: list) -> list:
    return [e for _cmd, events in steps for e in events if e[0] == Kind.TRADE]


# ------------------------------------------------------------------- units
@pytest.mark.parametrize("text, decimals, units", [
    ("78318.0", 0, 78318),
    ("78318", 0, 78318),
    ("999999999.0", 0, 999_999_999),
    ("0.0", 0, 0),
    ("-0.0", 8, 0),
    ("0.00030644", 8, 30644),
    ("0.29", 8, 29_000_000),        # int(0.29 * 1e8) == 28999999 through a float
    ("2.6e-06", 8, 260),
    ("7.338e-05", 8, 7338),
    ("1e-08", 8, 1),
    ("1.00000000", 8, LOT),
    ("138800.0", 8, 138_800 * LOT),
    (".5", 8, LOT // 2),
    ("5.", 0, 5),
    ("+5", 0, 5),
    ("7.832E+4", 0, 78320),
])
def test_parse_scaled_is_exact(text, decimals, units):
    assert parse_scaled(text, decimals) == units


@pytest.mark.parametrize("text, decimals, why", [
    ("78318.5", 0, "more than 0 decimals"),
    ("0.000000001", 8, "more than 8 decimals"),
    ("1e-9", 8, "more than 8 decimals"),
    ("1.234567891", 8, "more than 8 decimals"),
    ("-1", 8, "negative"),
    ("-0.5", 0, "negative"),
    ("nan", 8, "not a decimal"),
    ("inf", 0, "not a decimal"),
    ("1,5", 0, "not a decimal"),
    ("", 0, "not a decimal"),
    (" 1", 0, "not a decimal"),
    ("1_000", 0, "not a decimal"),
    ("0x10", 0, "not a decimal"),
    ("1e999", 8, "out of range"),
])
def test_parse_scaled_rejects_what_does_not_fit(text, decimals, why):
    with pytest.raises(ValueError, match=why):
        parse_scaled(text, decimals)


# ----------------------------------------------------------------- mapping
def test_created_rows_become_limit_orders_in_usd_and_lots(tmp_path):
    path = write(tmp_path, [
        row(11, "78319.0", "0.121", "created", "ask", ms=1_777_689_380_521),
        row(12, "78320.0", "2.6e-06", "created", "ask"),
        row(1, "78318.0", "1.53453667", "created", "bid"),
    ])
    source = pinned(path)
    assert (source.name, source.total) == (NAME, 3)
    m = Matcher()
    steps = drive(source, m)
    cmds = [c for c, _ in steps]
    assert cmds[0] == AddSymbol.new(SYMBOL, 1)          # no source: moves no position
    assert cmds[1] == PlaceOrder.new(SYMBOL, 11, SELL, 78319, 12_100_000,
                                     ts_ns=1_777_689_380_521 * MS, source=NAME, source_pos=0)
    assert cmds[2].qty == 260 and cmds[2].source_pos == 1
    assert (cmds[3].side, cmds[3].price, cmds[3].qty) == (BUY, 78318, 153_453_667)
    assert ladder_of(m, SYMBOL) == ladder("""
        bid|price|ask
          |78320|260
          |78319|12100000
 153453667|78318|
    """)
    assert m.positions == {NAME: 2}


def test_crossing_order_trades_at_maker_price_and_feed_fills_change_nothing(tmp_path):
    # Bitstamp reports a sweep after the taker's created row: a changed row on
    # the taker (at the fill price) and a deleted row (volume 0) per maker.
    path = write(tmp_path, [
        row(11, "100.0", "0.5", "created", "ask"),
        row(12, "101.0", "0.4", "created", "ask"),
        row(1, "105.0", "0.7", "created", "bid"),
        row(1, "100.0", "0.2", "changed", "bid"),
        row(11, "100.0", "0.0", "deleted", "ask"),
        row(1, "101.0", "0.0", "deleted", "bid"),
        row(12, "101.0", "0.2", "changed", "ask"),
    ])
    m = Matcher()
    steps = drive(pinned(path), m)
    assert [c.source_pos for c, _ in steps[1:]] == [0, 1, 2]   # rows 3..6 need nothing
    t1, t2 = trades(steps)
    assert (t1.maker_order_id, t1.taker_order_id, t1.taker_side, t1.price, t1.qty) == \
        (11, 1, BUY, 100, 50_000_000)
    assert (t2.maker_order_id, t2.taker_order_id, t2.taker_side, t2.price, t2.qty) == \
        (12, 1, BUY, 101, 20_000_000)
    assert ladder_of(m, SYMBOL, ids=True) == "bid|price|ask\n|101|20000000#12"


def test_changed_lowers_a_resting_order_at_its_own_price_keeping_priority(tmp_path):
    path = write(tmp_path, [
        row(1, "100.0", "0.5", "created", "bid"),
        row(2, "100.0", "0.3", "created", "bid"),
        row(1, "100.0", "0.4", "changed", "bid"),   # filled on Bitstamp, not here
        row(1, "100.0", "0.4", "changed", "bid"),   # engine already holds 0.4
        row(2, "100.0", "0.0", "changed", "bid"),   # nothing left
        row(9, "100.0", "0.1", "changed", "bid"),   # never placed
    ])
    m = Matcher()
    cmds = [c for c, _ in drive(pinned(path), m)]
    assert cmds[3:] == [AmendOrder.new(SYMBOL, 1, 100, 40_000_000, ts_ns=cmds[1].ts_ns,
                                       source=NAME, source_pos=2),
                        CancelOrder.new(SYMBOL, 2, ts_ns=cmds[1].ts_ns, source=NAME, source_pos=4)]
    assert ladder_of(m, SYMBOL, ids=True) == "bid|price|ask\n40000000#1|100|"


def test_changed_above_the_engine_leaves_is_the_engine_ahead_so_nothing(tmp_path):
    # A sell sweeps two bids; the engine rests its leaves at once, the feed
    # then reports the sweep fill by fill at the fill prices.
    path = write(tmp_path, [
        row(1, "102.0", "0.1", "created", "bid"),
        row(2, "101.0", "0.1", "created", "bid"),
        row(5, "101.0", "0.5", "created", "ask"),
        row(5, "102.0", "0.4", "changed", "ask"),
        row(1, "102.0", "0.0", "deleted", "bid"),
        row(5, "101.0", "0.3", "changed", "ask"),
        row(2, "101.0", "0.0", "deleted", "bid"),
    ])
    m = Matcher()
    steps = drive(pinned(path), m)
    assert [c.source_pos for c, _ in steps[1:]] == [0, 1, 2]
    assert [(t.maker_order_id, t.price) for t in trades(steps)] == [(1, 102), (2, 101)]
    assert ladder_of(m, SYMBOL, ids=True) == "bid|price|ask\n|101|30000000#5"


def test_deleted_cancels_a_resting_order_and_ignores_one_the_engine_filled(tmp_path):
    path = write(tmp_path, [
        row(1, "100.0", "0.5", "created", "bid"),
        row(2, "99.0", "0.5", "created", "bid"),
        row(3, "100.0", "0.5", "created", "ask"),   # fills 1 whole
        row(1, "100.0", "0.0", "deleted", "bid"),
        row(2, "99.0", "0.5", "deleted", "bid"),
        row(7, "98.0", "0.5", "deleted", "bid"),    # never created
    ])
    m = Matcher()
    cmds = [c for c, _ in drive(pinned(path), m)]
    assert cmds[-1] == CancelOrder.new(SYMBOL, 2, ts_ns=cmds[1].ts_ns, source=NAME, source_pos=4)
    assert len(cmds) == 5 and m.books[SYMBOL].orders == {}


def test_ask_at_price_zero_is_a_market_sell(tmp_path):
    path = write(tmp_path, [
        row(1, "78352.0", "0.0002", "created", "bid"),
        row(2, "78351.0", "0.0002", "created", "bid"),
        row(5, "0.0", "0.00061709", "created", "ask"),
    ])
    m = Matcher()
    steps = drive(pinned(path), m)
    cmd, events = steps[-1]
    assert (cmd.order_type, cmd.tif, cmd.price, cmd.qty) == (2, 2, 0, 61709)
    assert [(t.maker_order_id, t.price, t.qty) for t in trades(steps)] == \
        [(1, 78352, 20000), (2, 78351, 20000)]
    assert events[-1].kind == Kind.CANCELLED and events[-1].cancelled_qty == 21709
    assert m.books[SYMBOL].orders == {}


def test_unrepresentable_creates_are_bad_input(tmp_path):
    path = write(tmp_path, [
        row(82688148, "0.0", "10.0", "created", "bid"),          # resting bid at 0 USD
        row(3, "999999999.0", "0.0", "created", "bid"),          # instant buy sized in USD
        row(3, "78406.0", "0.0", "changed", "bid"),
        row(3, "78406.0", "0.0", "deleted", "bid"),
    ])
    m = Matcher()
    steps = drive(pinned(path), m)
    bad = [c for c, _ in steps[1:]]
    assert [(type(c), c.source_pos) for c in bad] == [(BadInput, 0), (BadInput, 1)]
    assert "price 0" in bad[0].error and "volume 0" in bad[1].error
    assert all(e.reason == RejectReason.MALFORMED for _, events in steps[1:] for e in events)


def test_create_deleted_whole_by_the_next_row_is_post_only(tmp_path):
    # On Bitstamp such an order traded nothing although it crossed: it must
    # not take liquidity here either.
    path = write(tmp_path, [
        row(11, "100.0", "0.5", "created", "ask"),
        row(1, "100.0", "0.075", "created", "bid"),
        row(1, "100.0", "0.075", "deleted", "bid"),
        row(2, "99.0", "0.075", "created", "bid"),     # does not cross: rests, then cancelled
        row(2, "99.0", "0.075", "deleted", "bid"),
        row(3, "100.0", "0.075", "created", "bid"),    # a plain limit: takes
        row(3, "100.0", "0.0", "deleted", "bid"),
    ])
    m = Matcher()
    steps = drive(pinned(path), m)
    by_row = {c.source_pos: (c, events) for c, events in steps[1:]}
    assert by_row[1][0].post_only and by_row[1][1][0].reason == RejectReason.POST_ONLY_WOULD_TAKE
    assert 2 not in by_row
    assert by_row[3][0].post_only and by_row[3][1][0].kind == Kind.RESTED
    assert by_row[4][0] == CancelOrder.new(SYMBOL, 2, ts_ns=by_row[4][0].ts_ns, source=NAME,
                                           source_pos=4)
    assert not by_row[5][0].post_only
    assert [(t.maker_order_id, t.taker_order_id) for t in trades(steps)] == [(11, 3)]


# ---------------------------------------------------------------- bad rows
def test_malformed_rows_become_bad_input_at_their_row_and_reading_goes_on(tmp_path):
    good = row(1, "100.0", "0.5", "created", "bid")
    lines = [
        good,
        "2,1,1,100.0,0.5,created",                              # 1: 6 columns
        "3,1,1,100.0,0.5,created,bid,x",                        # 2: 8 columns
        row(4, "abc", "0.5", "created", "bid"),                 # 3: price
        row(5, "100.5", "0.5", "created", "bid"),               # 4: a fraction of a USD
        row(6, "100.0", "1e-9", "created", "bid"),              # 5: below a satoshi
        row(7, "100.0", "-0.5", "created", "bid"),              # 6: negative size
        row(8, "100.0", "0.5", "modified", "bid"),              # 7: action
        row(9, "100.0", "0.5", "created", "buy"),               # 8: direction
        row(0, "100.0", "0.5", "created", "bid"),               # 9: id 0
        "x1,1,1,100.0,0.5,created,bid",                         # 10: id
        "12,1,1.5,100.0,0.5,created,bid",                       # 11: timestamp
        "",                                                     # 12: empty line
        row(13, "101.0", "0.5", "created", "ask"),              # 13: fine
        row(1, "100.0", "zero", "changed", "bid"),              # 14: volume
    ]
    m = Matcher()
    source = BitstampSource(write(tmp_path, lines), price_decimals=0, size_decimals=8)
    steps = drive(source, m)
    bad = {c.source_pos: c.error for c, _ in steps if isinstance(c, BadInput)}
    assert "1 USD" in bad[4] and "1e-8 BTC" in bad[5]
    assert sorted(bad) == list(range(1, 13)) + [14]
    for pos, words in {1: "columns", 3: "price", 4: "decimals", 5: "decimals", 6: "negative",
                       7: "action", 8: "direction", 9: "id", 10: "id", 11: "exchange_timestamp",
                       12: "columns", 14: "volume"}.items():
        assert words in bad[pos], (pos, bad[pos])
    assert sorted(m.books[SYMBOL].orders) == [1, 13]
    assert m.positions[NAME] == 14


def test_truncated_gzip_ends_with_bad_input_not_an_exception(tmp_path):
    rnd = random.Random(7)
    print("seed 7")
    lines = [row(rnd.randrange(1, 2**62), f"{rnd.randrange(90_000, 100_000)}.0",
                 f"0.{rnd.randrange(10**8):08d}", "created", "ask") for _ in range(20_000)]
    path = write(tmp_path, lines, name="orders.csv.gz")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 2000])
    source = pinned(path)
    cmds = [c for c in source.commands(Matcher(), None)]   # not applied: only reading
    assert isinstance(cmds[-1], BadInput) and "unreadable" in cmds[-1].error
    assert 1000 < len(cmds) < 20_000
    positions = [c.source_pos for c in cmds[1:]]
    assert positions == sorted(set(positions))


def test_gzip_and_plain_csv_give_the_same_commands(tmp_path):
    lines = [row(1, "100.0", "0.5", "created", "bid"), row(2, "101.0", "0.25", "created", "ask"),
             row(1, "100.0", "0.5", "deleted", "bid")]
    plain = pinned(write(tmp_path, lines))
    packed = pinned(write(tmp_path, lines, name="orders.csv.gz"))
    assert packed.total == plain.total == 3
    assert list(packed.commands(Matcher(), None)) == list(plain.commands(Matcher(), None))


def test_close_stops_an_unfinished_iterator(tmp_path):
    source = pinned(write(tmp_path, [row(1, "100.0", "0.5", "created", "bid"),
                                             row(2, "101.0", "0.5", "created", "ask")]))
    iterator = source.commands(Matcher(), None)
    assert isinstance(next(iterator), AddSymbol)
    source.close()
    assert list(iterator) == []


def test_header_without_a_needed_column_is_a_value_error(tmp_path):
    path = write(tmp_path, [row(1, "100.0", "0.5", "created", "bid")],
                 header="id,timestamp,exchange_timestamp,price,amount,action,direction")
    with pytest.raises(ValueError, match="volume"):
        BitstampSource(path)


# ------------------------------------------------------------------ resume
def test_resume_after_each_position_gives_the_same_commands_and_state(tmp_path):
    lines = [
        row(11, "100.0", "0.5", "created", "ask"),
        row(12, "101.0", "0.4", "created", "ask"),
        row(1, "100.0", "0.075", "created", "bid"),
        row(1, "100.0", "0.075", "deleted", "bid"),
        row(2, "105.0", "0.7", "created", "bid"),
        row(2, "100.0", "0.2", "changed", "bid"),
        row(11, "100.0", "0.0", "deleted", "ask"),
        row(2, "101.0", "0.0", "deleted", "bid"),
        "garbage",
        row(12, "101.0", "0.1", "changed", "ask"),
        row(3, "99.0", "0.3", "created", "bid"),
        row(12, "101.0", "0.1", "deleted", "ask"),
    ]
    path = write(tmp_path, lines)
    full = Matcher()
    expected = [c for c, _ in drive(pinned(path), full)]
    for stop in range(1, len(expected) + 1):
        first = Matcher()
        drive(pinned(path), first, limit=stop)
        restarted = Matcher.from_state(first.export_state())
        rest = [c for c, _ in drive(pinned(path), restarted,
                                    after=restarted.positions.get(NAME))]
        assert expected[:stop] + rest == expected, stop
        assert restarted.state_hash() == full.state_hash()
        assert list(restarted.trades) == list(full.trades)


# --------------------------------------------------------------- real data
@pytest.fixture(scope="module")
def real_run():
    orders, trades = data_path("bitstamp", "orders.csv.gz"), data_path("bitstamp", "trades.csv")
    matcher = Matcher()
    result = compare_trades(orders, trades, matcher=matcher)
    print(result)
    return result, matcher


def test_real_capture_reproduces_bitstamp_trades(real_run):
    result, matcher = real_run
    matcher.check_invariants()
    assert result["real_trades"] == 284
    assert result["reproduced"] >= 281 and result["reproduced_exact"] >= 281
    assert result["engine_trades"] <= 287
    assert sum(result["not_reproduced"].values()) == 284 - result["reproduced"]
    assert result["engine_trades"] - result["reproduced"] == sum(result["engine_only"].values())
    # The source never cancels or amends an order that does not rest.
    assert set(result["rejects"]) <= {"MALFORMED", "POST_ONLY_WOULD_TAKE"}
    assert result["commands"]["BAD_INPUT"] == 24 and result["rejects"]["MALFORMED"] == 24
    assert result["resting_orders"] == 0           # the capture ends with deletes of all
    assert matcher.positions == {NAME: 314_056}


def test_real_capture_resumed_midway_gives_the_same_trades(real_run):
    _result, full = real_run
    path = data_path("bitstamp", "orders.csv.gz")
    first = Matcher()
    for cmd in BitstampSource(path).commands(first, None):
        first.apply(first.last_seq + 1, cmd)
        if cmd.source_pos is not None and cmd.source_pos >= 33_780:   # just before a stale fill
            break
    first.check_invariants()
    restarted = Matcher.from_state(first.export_state())
    for cmd in BitstampSource(path).commands(restarted, restarted.positions[NAME]):
        restarted.apply(restarted.last_seq + 1, cmd)
    assert (restarted.last_seq, restarted.match_sequence) == (full.last_seq, full.match_sequence)
    assert list(restarted.trades) == list(full.trades)
    assert restarted.state_hash() == full.state_hash()


# ------------------------------------------------- any capture (generated)
def non_post_only_rejects(result: dict) -> int:
    return sum(n for reason, n in result["rejects"].items() if reason != "POST_ONLY_WOULD_TAKE")


@pytest.mark.parametrize("compression", ["none", "gz", "xz"])
@pytest.mark.parametrize("price_decimals", [0, 2, 8])
@pytest.mark.parametrize("layout", ["pypi", "r"])
def test_generated_capture_units_detected_and_trades_reproduced(tmp_path, layout, price_decimals,
                                                                compression):
    seed = 11 + price_decimals
    print("seed", seed)
    log_ids = price_decimals == 2
    g = generate(tmp_path, layout=layout, price_decimals=price_decimals, size_decimals=8,
                 compression=compression, events=1500, seed=seed, log_ids=log_ids)
    source = BitstampSource(g.orders)
    assert compression_of(g.orders) == compression
    assert (source.layout.name, source.price_decimals, source.tick_size) == \
        (layout, price_decimals, 1)
    assert source.size_decimals == (0 if layout == "r" else 8)      # R: integer satoshi
    assert source.lot_exponent == 8 and source.total == g.counts["rows"]
    by_csv = compare_trades(g.orders, g.trades_csv)
    by_log = compare_trades(g.orders, g.log)
    assert by_csv["pairing"] == "order ids"
    assert by_log["pairing"] == ("order ids" if log_ids else "price and qty within 2000 ms")
    for result in (by_csv, by_log):
        assert result["real_trades"] == len(g.trades) > 300
        assert result["reproduced_exact"] >= 0.99 * len(g.trades)
        assert result["unreadable_trade_rows"] == 0
        assert non_post_only_rejects(result) == 0
        # maker-or-cancel creates that would cross: refused as Bitstamp did
        assert result["rejects"].get("POST_ONLY_WOULD_TAKE", 0) == g.counts["moc"]
        assert sum(result["rejects"].values()) < 0.01 * sum(result["commands"].values())


def test_generated_r_walks_are_repriced_and_trade(tmp_path):
    g = generate(tmp_path, layout="r", price_decimals=2, events=1500, seed=5)
    print("seed 5")
    m = Matcher()
    repriced = 0
    for cmd in BitstampSource(g.orders).commands(m, None):
        if cmd[0] == Kind.AMEND and cmd.price != m.books[SYMBOL].orders[cmd.order_id].price:
            repriced += 1
        apply_one(m, cmd, check=False)
    m.check_invariants()
    assert repriced > 20
    assert len(m.trades) == len(g.trades)


def test_changed_at_a_more_aggressive_price_walks_the_order_there(tmp_path):
    # R capture (2015): an ask is created at the best bid, fills there, then a
    # changed row with the same volume moves it down to the next bid level.
    lines = ["1,1430438400000,1430438400000,235.30,100000000,created,bid",
             "2,1430438400100,1430438400000,235.22,50000000,created,bid",
             "3,1430438400200,1430438400000,235.30,200000000,created,ask",
             "1,1430438400210,1430438400000,235.30,0,deleted,bid",
             "3,1430438400220,1430438400000,235.30,100000000,changed,ask",
             "3,1430438400300,1430438400000,235.22,100000000,changed,ask",
             "2,1430438400310,1430438400000,235.22,0,deleted,bid",
             "3,1430438400320,1430438400000,235.22,50000000,changed,ask"]
    path = write(tmp_path, lines, header=",".join(R_COLUMNS))
    m = Matcher()
    steps = drive(BitstampSource(path), m)
    by_row = {c.source_pos: c for c, _ in steps[1:]}
    assert by_row[5] == AmendOrder.new(SYMBOL, 3, 23522, 100_000_000, ts_ns=1430438400300 * MS,
                                       source=NAME, source_pos=5)
    assert [(t.maker_order_id, t.taker_order_id, t.price, t.qty) for t in trades(steps)] == \
        [(1, 3, 23530, 100_000_000), (2, 3, 23522, 50_000_000)]
    assert ladder_of(m, SYMBOL, ids=True) == "bid|price|ask\n|23522|50000000#3"


def test_r_layout_takes_event_time_from_the_local_timestamp(tmp_path):
    # exchange.timestamp is the order's creation second, the same on every row
    path = write(tmp_path, ["7,1430438404518,1430438404000,236.47,200000000,created,bid",
                            "7,1430438406337,1430438404000,236.47,100000000,changed,bid"],
                 header=",".join(R_COLUMNS))
    cmds = list(BitstampSource(path).commands(Matcher(), None))
    assert [c.ts_ns for c in cmds[1:]] == [1430438404518 * MS]   # the changed row: nothing
    source = BitstampSource(path)
    assert (source.layout.time_column, source.price_unit, source.lot) == \
        ("timestamp", "1e-2 USD", "1 satoshi")


def test_tick_is_the_gcd_of_resting_prices_and_market_orders_do_not_count(tmp_path):
    g = generate(tmp_path, layout="pypi", price_decimals=2, events=1500, seed=9, tick=5)
    print("seed 9")
    assert g.counts["market"] > 0        # asks at price 0
    source = BitstampSource(g.orders)
    assert source.tick_size == 5
    assert next(iter(source.commands(Matcher(), None))) == AddSymbol.new(SYMBOL, 5)
    result = compare_trades(source, g.trades_csv)
    assert result["reproduced_exact"] == len(g.trades) and non_post_only_rejects(result) == 0


def test_explicit_decimals_override_the_scan(tmp_path):
    g = generate(tmp_path, layout="pypi", price_decimals=2, events=800, seed=4)
    print("seed 4")
    finer = BitstampSource(g.orders, price_decimals=4, size_decimals=10)
    assert (finer.price_decimals, finer.size_decimals, finer.tick_size) == (4, 10, 100)
    assert (finer.price_unit, finer.lot, finer.lot_exponent) == ("1e-4 USD", "1e-10 BTC", 10)
    auto = list(BitstampSource(g.orders).commands(Matcher(), None))
    fine = list(finer.commands(Matcher(), None))
    place = next(i for i, c in enumerate(auto) if c[0] == Kind.PLACE)
    assert (fine[place].price, fine[place].qty) == (auto[place].price * 100, auto[place].qty * 100)
    result = compare_trades(finer, g.trades_csv)
    assert result["reproduced_exact"] == len(g.trades)
    coarse = BitstampSource(g.orders, price_decimals=1)
    bad = [c for c in coarse.commands(Matcher(), None) if isinstance(c, BadInput)]
    assert bad and all("price (units of 1e-1 USD)" in c.error and "more than 1 decimals" in c.error
                       for c in bad)
    assert not any("whole USD" in c.error or "1e-8" in c.error for c in bad)


def test_malformed_row_in_a_capture_is_bad_input_and_the_run_goes_on(tmp_path):
    g = generate(tmp_path, layout="r", price_decimals=2, compression="xz", events=1500, seed=6)
    print("seed 6")
    text = lzma.decompress(g.orders.read_bytes()).decode().splitlines()
    middle = len(text) // 2
    text.insert(middle, "99,1430438999999,1430438999000,12x.5,100,created,bid")
    g.orders.write_bytes(lzma.compress(("\n".join(text) + "\n").encode()))
    m = Matcher()
    bad = [c for c in BitstampSource(g.orders).commands(m, None)
           if isinstance(c, BadInput) or not apply_one(m, c, check=False)]
    assert [(c.source_pos, "price" in c.error) for c in bad] == [(middle - 1, True)]
    assert m.positions[NAME] == len(text) - 2
    result = compare_trades(g.orders, g.log)
    assert result["commands"]["BAD_INPUT"] == 1 and result["rejects"]["MALFORMED"] == 1
    assert result["reproduced_exact"] >= 0.99 * len(g.trades)


def test_unsupported_header_is_a_value_error_naming_the_columns(tmp_path):
    path = write(tmp_path, ["1,2,100.0,0.5,bid"], header="id,time,price,amount,side")
    with pytest.raises(ValueError) as info:
        BitstampSource(path)
    text = str(info.value)
    assert "'amount'" in text and ",".join(COLUMNS) in text and ",".join(R_COLUMNS) in text
    with pytest.raises(ValueError, match="exchange.timestamp"):
        BitstampSource(write(tmp_path, [row(1, "100.0", "0.5", "created", "bid")], name="p.csv"),
                       layout="r")


@pytest.mark.parametrize("pack", [gzip.compress, lzma.compress, bz2.compress])
def test_compression_is_detected_from_the_bytes_not_the_name(tmp_path, pack):
    lines = [row(1, "100.5", "0.5", "created", "bid"), row(2, "101.0", "0.25", "created", "ask")]
    plain = BitstampSource(write(tmp_path, lines))
    packed_path = tmp_path / "orders.data"
    packed_path.write_bytes(pack(plain.path.read_bytes()))
    packed = BitstampSource(packed_path)
    assert (packed.price_decimals, packed.size_decimals) == (1, 2)
    assert list(packed.commands(Matcher(), None)) == list(plain.commands(Matcher(), None))


@pytest.mark.parametrize("text, decimals", [("78318.0", 0), ("236.47", 2), ("2.6e-06", 7),
                                            ("1.5e3", 0), ("0.00030644", 8), ("100", 0),
                                            ("0E-8", 0), ("1.20E-5", 6), ("abc", None)])
def test_decimals_of_ignores_trailing_zeros_and_reads_exponents(text, decimals):
    assert decimals_of(text) == decimals


def test_websocket_log_trades_in_the_orders_units(tmp_path):
    log = tmp_path / "log"
    log.write_text(
        '1430438404518 order_created {"price": "236.47", "amount": "2.0", "id": 5}\n'
        '1430439016371 trade {"price": 235.22, "amount": 0.11256695999999999, "id": 8111100}\n'
        '1430439016400 order_book {"bids": []}\n'
        '1777689383889 trade {"data": {"id": 9, "price": 78319, "price_str": "78319", '
        '"amount": 0.121, "amount_str": "0.12100000", "type": 1, "buy_order_id": 3, '
        '"sell_order_id": 4}, "event": "trade"}\n'
        '1777689383890 trade {"price": 1.5}\n')
    loaded = load_trades(log, price_decimals=2, lot_exponent=8)
    assert (loaded["form"], loaded["unreadable"], loaded["other_lines"]) == ("websocket log", 1, 2)
    first, second = loaded["trades"]
    assert (first["ms"], first["price"], first["qty"], first["buy_order_id"]) == \
        (1430439016371, 23522, 11_256_696, None)
    assert (second["price"], second["qty"], second["buy_order_id"], second["sell_order_id"],
            second["taker_side"]) == (7_831_900, 12_100_000, 3, 4, SELL)


def test_bitstamp_check_cli_and_make_source_take_the_units(tmp_path):
    g = generate(tmp_path, layout="r", price_decimals=2, compression="gz", events=600, seed=8)
    print("seed 8")
    runner = CliRunner()
    out = runner.invoke(app, ["bitstamp-check", str(g.orders), "--trades", str(g.log), "--json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    assert report["reproduced_exact"] == report["real_trades"] == len(g.trades)
    assert report["units"]["layout"] == "r"
    out = runner.invoke(app, ["bitstamp-check", str(g.orders), "--price-decimals", "3", "--json"])
    summary = json.loads(out.output)
    assert summary["units"]["price_decimals"] == 3 and summary["rejected_commands"] <= g.counts["moc"]
    assert summary["engine_trades"] == len(g.trades)
    assert make_source(f"bitstamp:{g.orders}", "XBT").symbol == "XBT"
    src = make_source(f"bitstamp:{g.orders}", price_decimals=4, size_decimals=1)
    assert (src.price_decimals, src.size_decimals) == (4, 1)
    with pytest.raises(ValueError, match="bitstamp sources only"):
        make_source("synthetic:10:1", price_decimals=2)
