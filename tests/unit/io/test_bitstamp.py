"""BitstampSource and compare_trades: synthetic CSVs under tmp_path, then the
real 30-minute capture in ../shared/data/bitstamp (skipped if absent)."""

from __future__ import annotations

import gzip
import random
from pathlib import Path

import pytest

from tests.support.data import data_path

from engine.core import (AddSymbol, AmendOrder, BadInput, CancelOrder, Kind, Matcher, PlaceOrder,
                         RejectReason)
from engine.io.bitstamp import COLUMNS, BitstampSource, compare_trades, parse_scaled
from tests.support.ladder import apply_one, ladder, ladder_of

SYMBOL = "BTCUSD"
NAME = "bitstamp:BTCUSD"
HEADER = ",".join(COLUMNS)
BUY, SELL = 1, 2
LOT = 10**8  # lots per BTC
MS = 1_000_000  # ns per ms
DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "bitstamp"


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
    source = BitstampSource(path)
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
    steps = drive(BitstampSource(path), m)
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
    cmds = [c for c, _ in drive(BitstampSource(path), m)]
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
    steps = drive(BitstampSource(path), m)
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
    cmds = [c for c, _ in drive(BitstampSource(path), m)]
    assert cmds[-1] == CancelOrder.new(SYMBOL, 2, ts_ns=cmds[1].ts_ns, source=NAME, source_pos=4)
    assert len(cmds) == 5 and m.books[SYMBOL].orders == {}


def test_ask_at_price_zero_is_a_market_sell(tmp_path):
    path = write(tmp_path, [
        row(1, "78352.0", "0.0002", "created", "bid"),
        row(2, "78351.0", "0.0002", "created", "bid"),
        row(5, "0.0", "0.00061709", "created", "ask"),
    ])
    m = Matcher()
    steps = drive(BitstampSource(path), m)
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
    steps = drive(BitstampSource(path), m)
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
    steps = drive(BitstampSource(path), m)
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
    steps = drive(BitstampSource(write(tmp_path, lines)), m)
    bad = {c.source_pos: c.error for c, _ in steps if isinstance(c, BadInput)}
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
    source = BitstampSource(path)
    cmds = [c for c in source.commands(Matcher(), None)]   # not applied: only reading
    assert isinstance(cmds[-1], BadInput) and "unreadable" in cmds[-1].error
    assert 1000 < len(cmds) < 20_000
    positions = [c.source_pos for c in cmds[1:]]
    assert positions == sorted(set(positions))


def test_gzip_and_plain_csv_give_the_same_commands(tmp_path):
    lines = [row(1, "100.0", "0.5", "created", "bid"), row(2, "101.0", "0.25", "created", "ask"),
             row(1, "100.0", "0.5", "deleted", "bid")]
    plain = BitstampSource(write(tmp_path, lines))
    packed = BitstampSource(write(tmp_path, lines, name="orders.csv.gz"))
    assert packed.total == plain.total == 3
    assert list(packed.commands(Matcher(), None)) == list(plain.commands(Matcher(), None))


def test_close_stops_an_unfinished_iterator(tmp_path):
    source = BitstampSource(write(tmp_path, [row(1, "100.0", "0.5", "created", "bid"),
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
    expected = [c for c, _ in drive(BitstampSource(path), full)]
    for stop in range(1, len(expected) + 1):
        first = Matcher()
        drive(BitstampSource(path), first, limit=stop)
        restarted = Matcher.from_state(first.export_state())
        rest = [c for c, _ in drive(BitstampSource(path), restarted,
                                    after=restarted.positions.get(NAME))]
        assert expected[:stop] + rest == expected, stop
        assert restarted.state_hash() == full.state_hash()
        assert list(restarted.trades) == list(full.trades)


# --------------------------------------------------------------- real data
@pytest.fixture(scope="module")
def real_run():
    data_path("bitstamp", "orders.csv.gz")
    data_path("bitstamp", "trades.csv")
    matcher = Matcher()
    result = compare_trades(DATA / "orders.csv.gz", DATA / "trades.csv", matcher=matcher)
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
    path = DATA / "orders.csv.gz"
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
