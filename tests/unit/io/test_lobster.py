"""LobsterSource and lobster_check.

Small LOBSTER days are written under ``tmp_path``: by hand for each rule, and
by a tiny "true exchange" (a full order book that writes, as LOBSTER does,
only the events touching the top L levels and the top L after each) for
whole random days. The real sample files in ``../shared/data/lobster`` are
checked against the numbers the data README promises; those tests skip where
the directory is absent.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Optional

import pytest

from tests.support.data import data_path

from engine.core import (BUY, SELL, AddSymbol, AmendOrder, CancelOrder, Kind, Matcher,
                         PlaceOrder)
from engine.io.lobster import (DUMMY_ASK_PRICE, DUMMY_BID_PRICE, RESYNC_ID_BASE, ROW_STRIDE, SEED_ID_BASE,
                               TAKER_ID_BASE, TICK_SIZE, LobsterFileError, LobsterSource, Message,
                               parse_message, parse_orderbook_row, synthetic_kind)
from engine.io.lobster_check import lobster_check

L = 3
T0 = 34_200_000_000_000
_PLACE, _CANCEL, _AMEND, _BAD = Kind.PLACE.value, Kind.CANCEL.value, Kind.AMEND.value, Kind.BAD_INPUT.value
_TRADE = Kind.TRADE.value

# A book of three levels per side, prices in USD x 10,000 (999900 = $99.99).
BIDS = [(999_900, 100), (999_800, 200), (999_700, 300)]
ASKS = [(1_000_100, 100), (1_000_200, 200), (1_000_300, 300)]


# ----------------------------------------------------------------- helpers
def ts(ns: int) -> str:
    """LOBSTER's time column for ``ns`` nanoseconds after midnight."""
    return f"{ns // 10**9}.{ns % 10**9:09d}"


def msg(ns: int, mtype: int, order_id: int, size: int, price: int, direction: int) -> str:
    return f"{ts(ns)},{mtype},{order_id},{size},{price},{direction}"


def ob_line(bids: list, asks: list, levels: int = L) -> str:
    cols: list[int] = []
    for k in range(levels):
        ask = asks[k] if k < len(asks) else (DUMMY_ASK_PRICE, 0)
        bid = bids[k] if k < len(bids) else (DUMMY_BID_PRICE, 0)
        cols += [ask[0], ask[1], bid[0], bid[1]]
    return ",".join(map(str, cols))


def write_day(tmp_path: Path, rows: list, levels: int = L, symbol: str = "TEST") -> tuple[Path, Path]:
    """``rows``: ``(message line, (bids, asks) after it)``; returns the two paths."""
    stem = f"{symbol}_2012-06-21_34200000_57600000_{{}}_{levels}.csv"
    messages, orderbook = tmp_path / stem.format("message"), tmp_path / stem.format("orderbook")
    messages.write_text("".join(m + "\n" for m, _ in rows))
    orderbook.write_text("".join(ob_line(b, a, levels) + "\n" for _, (b, a) in rows))
    return messages, orderbook


def drive(source: LobsterSource, matcher: Optional[Matcher] = None, after=None) -> tuple[Matcher, list]:
    """Apply every command as the engine would; ``[(command, events)]``.
    Checks the book's invariants after each step."""
    matcher = matcher if matcher is not None else Matcher()
    out = []
    for cmd in source.commands(matcher, after):
        events = matcher.apply(matcher.last_seq + 1, cmd)
        matcher.check_invariants()
        out.append((cmd, events))
    return matcher, out


def ladders(matcher: Matcher, symbol: str = "TEST") -> tuple[list, list]:
    book = matcher.books[symbol]
    return ([tuple(x) for x in book.depth(BUY)], [tuple(x) for x in book.depth(SELL)])


def commands_of_row(out: list, row: int) -> list:
    return [c for c, _ in out if c.source_pos == row]


def rejected(out: list) -> list:
    return [(c, e) for c, e in out if e and e[-1][0] == Kind.REJECTED.value and c[0] != _BAD]


# ----------------------------------------------------------------- parsing
@pytest.mark.parametrize("text, ns", [
    ("34200", 34_200_000_000_000),
    ("34200.1", 34_200_100_000_000),
    ("34200.05990197", 34_200_059_901_970),
    ("57599.999999999", 57_599_999_999_999),
    ("0.000000001", 1),
])
def test_time_parses_exactly_to_ns(text, ns):
    parsed = parse_message(f"{text},1,7,10,999900,1")
    assert isinstance(parsed, Message) and parsed.ts_ns == ns and type(parsed.ts_ns) is int


def test_seven_column_row_with_mpid_is_accepted():
    assert parse_message("34200.5,1,7,10,999900,-1,NSDQ\r\n") == Message(34_200_500_000_000, 1, 7, 10, 999_900, -1)


def test_sub_penny_hidden_execution_parses_but_visible_sub_penny_is_bad():
    assert isinstance(parse_message("34200.5,5,0,10,999950,1"), Message)
    assert "tick" in parse_message("34200.5,1,7,10,999950,1")


def test_orderbook_row_drops_dummy_levels():
    line = ob_line([(999_900, 5)], [], levels=2)
    assert parse_orderbook_row(line, 2) == ([(999_900, 5)], [])
    assert parse_orderbook_row(line, 3) is None
    assert parse_orderbook_row("1,2,x,4", 1) is None


def test_name_symbol_levels_and_total_come_from_the_files(tmp_path):
    messages, orderbook = write_day(tmp_path, [(msg(T0, 1, 11, 5, 999_900, 1), (BIDS, ASKS))] * 4)
    source = LobsterSource(messages, orderbook)
    assert (source.symbol, source.name, source.levels, source.total) == ("TEST", "lobster:TEST", L, 4)
    assert LobsterSource(messages, symbol="XYZ").name == "lobster:XYZ"


def test_total_counts_a_last_row_without_newline(tmp_path):
    path = tmp_path / "X_2012-06-21_34200000_57600000_message_1.csv"
    path.write_text(msg(T0, 1, 1, 1, 100, 1) + "\n" + msg(T0, 1, 2, 1, 100, 1))
    assert LobsterSource(path).total == 2


def test_unknown_mode_or_missing_symbol_is_a_value_error(tmp_path):
    messages, orderbook = write_day(tmp_path, [(msg(T0, 1, 11, 5, 999_900, 1), (BIDS, ASKS))])
    with pytest.raises(ValueError):
        LobsterSource(messages, orderbook, mode="replay")
    plain = tmp_path / "orders.csv"
    plain.write_text("")
    with pytest.raises(ValueError):
        LobsterSource(plain)


@pytest.mark.parametrize("make", ["missing", "directory"])
def test_unreadable_file_raises_naming_it(tmp_path, make):
    path = tmp_path / "GOOG_2012-06-21_34200000_57600000_message_10.csv"
    if make == "directory":
        path.mkdir()
    with pytest.raises(LobsterFileError) as info:
        LobsterSource(path)
    assert str(path) in str(info.value) and info.value.path == path


# ----------------------------------------------------------------- seeding
def test_seeds_are_row_0_with_a_new_order_undone(tmp_path):
    bids0 = [(999_900, 150)] + BIDS[1:]
    messages, orderbook = write_day(tmp_path, [(msg(T0, 1, 11, 50, 999_900, 1), (bids0, ASKS))])
    matcher, out = drive(LobsterSource(messages, orderbook, mode="reconstruct"))
    cmds = [c for c, _ in out]
    assert cmds[0] == AddSymbol.new("TEST", TICK_SIZE, T0, source="lobster:TEST", source_pos=None)
    seeds = cmds[1:7]
    assert [(c.order_id, c.side, c.price, c.qty, c.tif, c.source_pos) for c in seeds] == [
        (SEED_ID_BASE + 0, BUY, 999_900, 100, 1, None), (SEED_ID_BASE + 1, BUY, 999_800, 200, 1, None),
        (SEED_ID_BASE + 2, BUY, 999_700, 300, 1, None), (SEED_ID_BASE + 3, SELL, 1_000_100, 100, 1, None),
        (SEED_ID_BASE + 4, SELL, 1_000_200, 200, 1, None), (SEED_ID_BASE + 5, SELL, 1_000_300, 300, 1, None)]
    assert cmds[7] == PlaceOrder.new("TEST", 11, BUY, 999_900, 50, ts_ns=T0, source="lobster:TEST", source_pos=0)
    assert ladders(matcher) == (bids0, ASKS)


def test_seeds_put_back_what_message_0_deleted(tmp_path):
    # Message 0 deletes the whole best ask; a fourth ask level scrolls into row 0.
    asks0 = ASKS[1:] + [(1_000_400, 50)]
    messages, orderbook = write_day(tmp_path, [(msg(T0, 3, 77, 100, 1_000_100, -1), (BIDS, asks0))])
    matcher, out = drive(LobsterSource(messages, orderbook, mode="reconstruct"))
    seeded = [(c.price, c.qty) for c, _ in out if c[0] == _PLACE and synthetic_kind(c.order_id) == "seed"]
    assert (1_000_100, 100) in seeded and (1_000_400, 50) in seeded
    assert commands_of_row(out, 0) == [CancelOrder.new("TEST", SEED_ID_BASE + 3, ts_ns=T0, source="lobster:TEST",
                                                       source_pos=0)]
    assert ladders(matcher) == (BIDS, asks0)


def test_no_orderbook_means_no_seeds(tmp_path):
    messages, _ = write_day(tmp_path, [(msg(T0, 1, 11, 50, 999_900, 1), (BIDS, ASKS))])
    matcher, out = drive(LobsterSource(messages))
    assert [c[0] for c, _ in out] == [Kind.ADD_SYMBOL.value, _PLACE]
    assert ladders(matcher) == ([(999_900, 50)], [])


# ---------------------------------------------------- message types, one by one
def basic_day(tmp_path: Path) -> tuple[Path, Path]:
    """Row 0 a new bid (id 11, behind the seed), then one of each type."""
    b = [(999_900, 150)] + BIDS[1:]
    rows = [
        (msg(T0, 1, 11, 50, 999_900, 1), (b, ASKS)),
        (msg(T0 + 1, 2, 11, 20, 999_900, 1), ([(999_900, 130)] + BIDS[1:], ASKS)),     # partial cancel
        (msg(T0 + 2, 5, 0, 7, 1_000_050, 1), ([(999_900, 130)] + BIDS[1:], ASKS)),     # hidden, sub-penny
        (msg(T0 + 3, 4, 11, 10, 999_900, 1), ([(999_900, 120)] + BIDS[1:], ASKS)),     # execution
        (msg(T0 + 4, 3, 11, 20, 999_900, 1), (BIDS, ASKS)),                            # delete
        (f"{ts(T0 + 5)},7,0,0,-1,-1", (BIDS, ASKS)),                                   # halt
        (f"{ts(T0 + 6)},6,0,300,1000000,1", (BIDS, ASKS)),                             # cross trade
    ]
    return write_day(tmp_path, rows)


def test_each_message_type_in_reconstruct_mode(tmp_path):
    matcher, out = drive(LobsterSource(*basic_day(tmp_path), mode="reconstruct"))
    src = "lobster:TEST"
    assert commands_of_row(out, 0) == [PlaceOrder.new("TEST", 11, BUY, 999_900, 50, ts_ns=T0, source=src, source_pos=0)]
    assert commands_of_row(out, 1) == [AmendOrder.new("TEST", 11, 999_900, 30, ts_ns=T0 + 1, source=src, source_pos=1)]
    assert commands_of_row(out, 2) == []
    assert commands_of_row(out, 3) == [AmendOrder.new("TEST", 11, 999_900, 20, ts_ns=T0 + 3, source=src, source_pos=3)]
    assert commands_of_row(out, 4) == [CancelOrder.new("TEST", 11, ts_ns=T0 + 4, source=src, source_pos=4)]
    assert commands_of_row(out, 5) == commands_of_row(out, 6) == []
    assert not rejected(out)
    assert ladders(matcher) == (BIDS, ASKS)


def test_partial_cancel_keeps_time_priority(tmp_path):
    _, out = drive(LobsterSource(*basic_day(tmp_path), mode="reconstruct"))
    amended = [e for c, events in out if c.source_pos == 1 for e in events]
    assert amended[0].kind == Kind.AMENDED.value and amended[0].priority_kept


def test_unknown_ids_consume_seed_volume_then_resync_fills_the_scrolled_in_level(tmp_path):
    rows = [
        (msg(T0, 1, 11, 50, 999_900, 1), ([(999_900, 150)] + BIDS[1:], ASKS)),
        # order 5 was entered before 09:30: its volume is in the seed at 999800
        (msg(T0 + 1, 2, 5, 50, 999_800, 1), ([(999_900, 150), (999_800, 150), (999_700, 300)], ASKS)),
        (msg(T0 + 2, 3, 6, 150, 999_800, 1), ([(999_900, 150), (999_700, 300), (999_600, 400)], ASKS)),
    ]
    matcher, out = drive(LobsterSource(*write_day(tmp_path, rows), mode="reconstruct"))
    src = "lobster:TEST"
    assert commands_of_row(out, 1) == [AmendOrder.new("TEST", SEED_ID_BASE + 1, 999_800, 150, ts_ns=T0 + 1,
                                                      source=src, source_pos=1)]
    assert commands_of_row(out, 2) == [
        CancelOrder.new("TEST", SEED_ID_BASE + 1, ts_ns=T0 + 2, source=src, source_pos=2),
        PlaceOrder.new("TEST", RESYNC_ID_BASE + 2 * ROW_STRIDE, BUY, 999_600, 400, ts_ns=T0 + 2,
                       source=src, source_pos=2)]
    assert ladders(matcher) == ([(999_900, 150), (999_700, 300), (999_600, 400)], ASKS)


def test_resync_removes_volume_that_left_unseen_and_never_touches_the_best(tmp_path):
    # Row 1 pushes 999700 out of the window; while out, 100 of it is cancelled
    # (not in the file); row 2 brings it back with 200.
    b1 = [(1_000_000, 10), (999_900, 100), (999_800, 200)]
    rows = [
        (msg(T0, 1, 11, 1, 1_000_100, -1), (BIDS, [(1_000_100, 101)] + ASKS[1:])),
        (msg(T0 + 1, 1, 12, 10, 1_000_000, 1), (b1, [(1_000_100, 101)] + ASKS[1:])),
        (msg(T0 + 2, 3, 12, 10, 1_000_000, 1), ([(999_900, 100), (999_800, 200), (999_700, 200)],
                                              [(1_000_100, 101)] + ASKS[1:])),
    ]
    matcher, out = drive(LobsterSource(*write_day(tmp_path, rows), mode="reconstruct"))
    assert commands_of_row(out, 2)[1:] == [AmendOrder.new("TEST", SEED_ID_BASE + 2, 999_700, 200, ts_ns=T0 + 2,
                                                          source="lobster:TEST", source_pos=2)]
    assert ladders(matcher)[0] == [(999_900, 100), (999_800, 200), (999_700, 200)]
    assert all(c.price != 999_900 for c, _ in out if c.source_pos == 2 and c[0] != _CANCEL)


# ------------------------------------------- the orderbook row is the truth
def test_level_1_new_best_behind_an_emptied_best_is_placed_from_the_file(tmp_path):
    # L = 1: the best bid goes; the file shows 999800 with 70, which the
    # engine never saw (it was deeper than level 1).
    rows = [
        (msg(T0, 1, 11, 50, 999_900, 1), ([(999_900, 150)], [(1_000_100, 100)])),
        (msg(T0 + 1, 3, 11, 50, 999_900, 1), ([(999_900, 100)], [(1_000_100, 100)])),
        (msg(T0 + 2, 3, 3, 100, 999_900, 1), ([(999_800, 70)], [(1_000_100, 100)])),
    ]
    matcher, out = drive(LobsterSource(*write_day(tmp_path, rows, levels=1), mode="reconstruct"))
    assert ladders(matcher) == ([(999_800, 70)], [(1_000_100, 100)])
    assert commands_of_row(out, 2)[-1] == PlaceOrder.new("TEST", RESYNC_ID_BASE + 2 * ROW_STRIDE, BUY, 999_800, 70,
                                                          ts_ns=T0 + 2, source="lobster:TEST", source_pos=2)
    result = lobster_check(*write_day(tmp_path, rows, levels=1))
    assert (result["mismatched_rows"], result["window_corrections"], result["trades"]) == (0, 0, 0)


def test_a_level_known_to_be_gone_is_removed_at_the_top(tmp_path):
    # L = 2, the bid side shows one level after row 1 (a dummy in the second
    # place): the engine's other bid levels are gone, whatever it thought.
    rows = [
        (msg(T0, 1, 11, 5, 999_900, 1), ([(999_900, 105), (999_800, 200)], ASKS[:2])),
        (msg(T0 + 1, 3, 11, 5, 999_900, 1), ([(999_900, 100)], ASKS[:2])),
    ]
    matcher, out = drive(LobsterSource(*write_day(tmp_path, rows, levels=2), mode="reconstruct"))
    assert ladders(matcher)[0] == [(999_900, 100)]
    result = lobster_check(*write_day(tmp_path, rows, levels=2))
    assert result["mismatched_rows"] == 1 and result["window_corrections"] == 1
    assert "bid 999800: engine 200 vs file 0" in result["first_mismatch"]["diff"]


def test_a_new_order_that_would_cross_clears_stale_levels_and_never_trades(tmp_path):
    # No orderbook file: ask 1000100 was entered, then left unseen; a bid at
    # 1000100 means it is gone.
    rows = [(msg(T0, 1, 21, 40, 1_000_100, -1), (BIDS, ASKS)),
            (msg(T0 + 1, 1, 22, 10, 1_000_200, -1), (BIDS, ASKS)),
            (msg(T0 + 2, 1, 23, 30, 1_000_100, 1), (BIDS, ASKS))]
    messages, _ = write_day(tmp_path, rows)
    for mode in ("reconstruct", "match"):
        source = LobsterSource(messages, mode=mode)
        matcher, out = drive(source)
        assert not [e for _, events in out for e in events if e[0] == _TRADE]
        assert ladders(matcher) == ([(1_000_100, 30)], [(1_000_200, 10)])
        assert source.stats["stale_levels_removed"] == 1


def test_sub_dollar_prices_open_a_book_with_the_sub_penny_tick(tmp_path):
    bids, asks = [(9_871, 500)], [(9_874, 300)]
    rows = [(msg(T0, 1, 11, 100, 9_871, 1), (bids, asks)),
            (msg(T0 + 1, 1, 12, 50, 9_872, 1), ([(9_872, 50)] + bids, asks))]
    messages, orderbook = write_day(tmp_path, rows, levels=2)
    matcher, out = drive(LobsterSource(messages, orderbook, mode="reconstruct"))
    assert out[0][0].tick_size == 1 and matcher.books["TEST"].tick_size == 1
    assert not rejected(out) and ladders(matcher) == ([(9_872, 50), (9_871, 500)], asks)
    # From $1 up the cent rule holds whatever the book's tick.
    assert "Rule 612" in parse_message(msg(T0, 1, 13, 1, 10_050, 1))
    assert isinstance(parse_message(msg(T0, 1, 13, 1, 9_999, 1)), Message)


def test_hidden_cross_and_halt_rows_are_counted_and_change_nothing(tmp_path):
    source = LobsterSource(*basic_day(tmp_path), mode="reconstruct")
    drive(source)
    assert (source.stats["hidden_executions"], source.stats["cross_trades"], source.stats["halts"]) == (1, 1, 1)
    assert source.stats["corrected_rows"] == 0


# ------------------------------------------------------------ match mode
def sweep_day(tmp_path: Path) -> tuple[Path, Path]:
    """Order 21 rests behind the 999900 seed; one sell sweep takes the seed,
    21 and 50 of the 999800 seed (with a hidden fill in between); then a
    second sweep at another time takes 10 more."""
    rows = [
        (msg(T0, 1, 21, 30, 999_900, 1), ([(999_900, 130)] + BIDS[1:], ASKS)),
        (msg(T0 + 5, 4, 7, 100, 999_900, 1), ([(999_900, 30)] + BIDS[1:], ASKS)),
        (msg(T0 + 5, 5, 0, 3, 999_850, 1), ([(999_900, 30)] + BIDS[1:], ASKS)),
        (msg(T0 + 5, 4, 21, 30, 999_900, 1), ([(999_800, 200), (999_700, 300), (999_600, 40)], ASKS)),
        (msg(T0 + 5, 4, 8, 50, 999_800, 1), ([(999_800, 150), (999_700, 300), (999_600, 40)], ASKS)),
        (msg(T0 + 9, 4, 8, 10, 999_800, 1), ([(999_800, 140), (999_700, 300), (999_600, 40)], ASKS)),
    ]
    return write_day(tmp_path, rows)


def test_same_timestamp_executions_form_one_ioc_sweep(tmp_path):
    matcher, out = drive(LobsterSource(*sweep_day(tmp_path), mode="match"))
    takers = [(c, e) for c, e in out if c[0] == _PLACE and synthetic_kind(c.order_id) == "taker"]
    assert [c for c, _ in takers] == [
        PlaceOrder.new("TEST", TAKER_ID_BASE + 1, SELL, 999_800, 180, tif=2, ts_ns=T0 + 5,
                       source="lobster:TEST", source_pos=4),
        PlaceOrder.new("TEST", TAKER_ID_BASE + 5, SELL, 999_800, 10, tif=2, ts_ns=T0 + 9,
                       source="lobster:TEST", source_pos=5)]
    fills = [(t.maker_order_id, t.qty, t.price) for t in takers[0][1] if t[0] == _TRADE]
    assert fills == [(SEED_ID_BASE + 0, 100, 999_900), (21, 30, 999_900), (SEED_ID_BASE + 1, 50, 999_800)]
    assert [c for c in commands_of_row(out, 4) if synthetic_kind(getattr(c, "order_id", 0)) == "resync"]
    assert commands_of_row(out, 1) == commands_of_row(out, 2) == commands_of_row(out, 3) == []
    assert ladders(matcher) == ([(999_800, 140), (999_700, 300), (999_600, 40)], ASKS)


def test_lobster_check_on_a_sweep_day(tmp_path):
    messages, orderbook = sweep_day(tmp_path)
    result = lobster_check(messages, orderbook, mode="match")
    assert result["rows"] == 6 and result["rows_in_sweeps"] == 3 and result["rows_compared"] == 3
    assert result["mismatched_rows"] == 0 and result["first_mismatch"] is None
    assert (result["fills_compared"], result["fills_agreeing"], result["takers"]) == (1, 1, 2)
    rebuilt = lobster_check(messages, orderbook)
    assert rebuilt["mode"] == "reconstruct" and rebuilt["mismatched_rows"] == 0 and rebuilt["rows_compared"] == 6


def test_lobster_check_reports_the_first_mismatch(tmp_path):
    rows = [(msg(T0, 1, 11, 50, 999_900, 1), ([(999_900, 150)] + BIDS[1:], ASKS)),
            (msg(T0 + 1, 1, 12, 5, 999_900, 1), ([(999_900, 150)] + BIDS[1:], ASKS))]  # file "forgets" 12
    result = lobster_check(*write_day(tmp_path, rows))
    assert result["mismatched_rows"] == 1
    assert result["first_mismatch"] == {"row": 1, "diff": "before the file's correction: bid 999900: engine 155 vs file 150"}
    assert result["window_corrections"] == 1 and result["resync_reductions"] == 1


# ---------------------------------------------------------- malformed rows
GOOD0 = msg(T0, 1, 1, 10, 999_900, 1)
GOOD2 = msg(T0 + 2, 3, 1, 10, 999_900, 1)


@pytest.mark.parametrize("bad", [
    "",
    "garbage",
    "   ",
    "34200.1,1,5,10,999900",
    "34200.1,1,5,10,999900,1,NSDQ,extra",
    "34200.1,9,5,10,999900,1",
    "34200.1,0,5,10,999900,1",
    "34200.1,1,5,-10,999900,1",
    "34200.1,1,5,10,-999900,1",
    "34200.1,1,-5,10,999900,1",
    "34200.1,1,5,10,999950,1",
    "34200.1,1,5,10,abc,1",
    "34200.1,1,5,1e3,999900,1",
    "34200.1,1,5,10,999900,2",
    "34200.1,1,5,10,999900,0",
    "3.42e4,1,5,10,999900,1",
    "-34200.1,1,5,10,999900,1",
    "99999.1,1,5,10,999900,1",
    "34200.1234567891,1,5,10,999900,1",
    "34200.1,1,5,2000000000,999900,1",
    "34200.1,1,5,10,99999999999999,1",
    "34200.1,1,1099511627776,10,999900,1",
    "34200.1,1,0,10,999900,1",
    "34200.1,3,5,0,999900,1",
    "34200.1,7,0,0,5,-1",
    "34200.1,1,5,10,999900,1\x00",
    "\ufeff34200.1,1,5,10,999900,1",
    "34200.1,1,5,10,99_9900,1",
    "x" * 10_000,
])
def test_malformed_row_becomes_bad_input_at_its_row_and_the_rest_goes_on(tmp_path, bad):
    path = tmp_path / "TEST_2012-06-21_34200000_57600000_message_3.csv"
    path.write_text("\n".join([GOOD0, bad, GOOD2]) + "\n")
    source = LobsterSource(path, mode="reconstruct")
    assert source.total == 3
    matcher, out = drive(source)
    cmds = [c for c, _ in out]
    bad_inputs = [c for c in cmds if c[0] == _BAD]
    assert len(bad_inputs) == 1
    (bad_input,) = bad_inputs
    assert bad_input.source == "lobster:TEST" and bad_input.source_pos == 1
    assert isinstance(bad_input.raw, str) and len(bad_input.raw) <= 4096 and bad_input.error
    assert [c.source_pos for c in cmds] == [None, 0, 1, 2]
    assert matcher.positions["lobster:TEST"] == 2 and not matcher.books["TEST"].orders
    assert source.stats["bad_rows"] == 1


def test_undecodable_bytes_become_bad_input(tmp_path):
    path = tmp_path / "TEST_2012-06-21_34200000_57600000_message_3.csv"
    path.write_bytes(GOOD0.encode() + b"\n\xff\xfe\x00garbage\r\n" + GOOD2.encode() + b"\r\n")
    _, out = drive(LobsterSource(path, mode="reconstruct"))
    assert [(c[0], c.source_pos) for c, _ in out] == [(Kind.ADD_SYMBOL.value, None), (_PLACE, 0), (_BAD, 1),
                                                      (_CANCEL, 2)]


def test_bad_row_inside_a_sweep_ends_the_sweep(tmp_path):
    rows = [(msg(T0, 1, 21, 30, 999_900, 1), ([(999_900, 130)] + BIDS[1:], ASKS)),
            (msg(T0 + 5, 4, 7, 50, 999_900, 1), ([(999_900, 80)] + BIDS[1:], ASKS)),
            ("not a row", ([(999_900, 80)] + BIDS[1:], ASKS)),
            (msg(T0 + 5, 4, 7, 50, 999_900, 1), ([(999_900, 30)] + BIDS[1:], ASKS))]
    _, out = drive(LobsterSource(*write_day(tmp_path, rows), mode="match"))
    shape = [(c.source_pos, c[0], synthetic_kind(getattr(c, "order_id", 0) or 0)) for c, _ in out
             if c.source_pos is not None]
    assert shape == [(0, _PLACE, None), (1, _PLACE, "taker"), (2, _BAD, None), (3, _PLACE, "taker")]


# ------------------------------------------------------- a whole true day
class TrueExchange:
    """A full price-time order book that writes a LOBSTER day: only events
    that touch the top ``levels`` (before or after them) reach the message
    file, each with the top ``levels`` after it; the opening book and
    everything deeper stay unseen."""

    def __init__(self, seed: int, levels: int = L) -> None:
        self.rnd = random.Random(seed)
        self.levels = levels
        self.book: dict[int, dict[int, list[list[int]]]] = {BUY: {}, SELL: {}}
        self.ns = T0
        self.next_id = 0
        self.rows: list[tuple[str, tuple[list, list]]] = []
        for side, best, step in ((BUY, 999_900, -TICK_SIZE), (SELL, 1_000_100, TICK_SIZE)):
            for k in range(8):
                for _ in range(self.rnd.randint(1, 3)):
                    self.next_id += 1
                    self._rest(side, best + k * step, self.rnd.randint(1, 5) * 10, self.next_id)
        self.next_id = 10_000

    def _rest(self, side: int, price: int, qty: int, order_id: int) -> None:
        self.book[side].setdefault(price, []).append([order_id, qty])

    def prices(self, side: int) -> list[int]:
        return sorted(self.book[side], reverse=side == BUY)

    def top(self, side: int) -> list[tuple[int, int]]:
        return [(p, sum(q for _, q in self.book[side][p])) for p in self.prices(side)[:self.levels]]

    def visible(self, side: int, price: int) -> bool:
        return price in self.prices(side)[:self.levels]

    def emit(self, line: str) -> None:
        self.rows.append((line, (self.top(BUY), self.top(SELL))))

    def step(self) -> None:
        rnd = self.rnd
        self.ns += rnd.randint(1, 10**6)
        side = rnd.choice((BUY, SELL))
        direction = 1 if side == BUY else -1
        action = rnd.random()
        if action < 0.45 or len(self.book[side]) < 4:
            other = self.prices(SELL if side == BUY else BUY)
            best = self.prices(side)[0] if self.book[side] else (other[0] - TICK_SIZE * direction)
            price = best - direction * TICK_SIZE * rnd.randint(-1, 6)
            if other and (price >= other[0] if side == BUY else price <= other[0]):
                price = other[0] - direction * TICK_SIZE
            self.next_id += rnd.randint(1, 50)
            qty = rnd.randint(1, 10) * 10
            self._rest(side, price, qty, self.next_id)
            if self.visible(side, price):
                self.emit(msg(self.ns, 1, self.next_id, qty, price, direction))
        elif action < 0.82:
            price = rnd.choice(self.prices(side))
            queue = self.book[side][price]
            order = rnd.choice(queue)
            seen = self.visible(side, price)
            size = order[1] if rnd.random() < 0.85 or order[1] < 2 else rnd.randint(1, order[1] - 1)
            order[1] -= size
            if not order[1]:
                queue.remove(order)
                if not queue:
                    del self.book[side][price]
            if seen:
                self.emit(msg(self.ns, 3 if not order[1] else 2, order[0], size, price, direction))
        elif action < 0.96:
            need = rnd.randint(1, 250)
            while need and self.book[side]:
                price = self.prices(side)[0]
                queue = self.book[side][price]
                order = queue[0]
                fill = min(need, order[1])
                order[1] -= fill
                need -= fill
                if not order[1]:
                    queue.pop(0)
                    if not queue:
                        del self.book[side][price]
                self.emit(msg(self.ns, 4, order[0], fill, price, direction))
                if need and rnd.random() < 0.2:
                    self.emit(msg(self.ns, 5, 0, 1, price - direction * 50, direction))
        elif action < 0.98:
            self.emit(msg(self.ns, 5, 0, rnd.randint(1, 9), 1_000_050, direction))
        else:
            self.emit(f"{ts(self.ns)},7,0,0,{rnd.choice((-1, 0, 1))},-1")

    def write(self, tmp_path: Path, steps: int) -> tuple[Path, Path]:
        while len(self.rows) < steps:
            self.step()
        return write_day(tmp_path, self.rows, self.levels)


@pytest.mark.parametrize("levels", [1, 2, L])
@pytest.mark.parametrize("seed", range(6))
def test_true_day_is_rebuilt_exactly(tmp_path, seed, levels):
    messages, orderbook = TrueExchange(seed, levels).write(tmp_path, 400)
    result = lobster_check(messages, orderbook, mode="reconstruct")
    print(f"seed {seed}: {result}")
    assert result["rows"] >= 400 and result["rows_compared"] == result["rows"] and result["rejected"] == 0
    assert result["mismatched_rows"] == 0, result["first_mismatch"]
    assert result["trades"] == 0 and result["window_corrections"] == 0


@pytest.mark.parametrize("seed", range(6))
def test_true_day_matches_in_match_mode(tmp_path, seed):
    messages, orderbook = TrueExchange(seed).write(tmp_path, 400)
    result = lobster_check(messages, orderbook, mode="match")
    print(f"seed {seed}: {result}")
    assert result["mismatched_rows"] == 0, result["first_mismatch"]
    assert result["rows_compared"] + result["rows_in_sweeps"] == result["rows"] >= 400
    assert result["fills_compared"] > 0 and result["fills_agreeing"] >= 0.9 * result["fills_compared"]


@pytest.mark.parametrize("levels", [1, 2, L, 6])
@pytest.mark.parametrize("mode", ["reconstruct", "match"])
def test_the_fast_path_never_changes_a_command(tmp_path, monkeypatch, mode, levels):
    """The string comparison of a row with the last one may only skip a
    reconciliation that would have changed nothing."""
    for seed in range(3):
        messages, orderbook = TrueExchange(100 + seed, levels).write(tmp_path, 600)
        fast_source = LobsterSource(messages, orderbook, mode=mode)
        fast, fast_out = drive(fast_source)
        with monkeypatch.context() as patch:
            patch.setattr(LobsterSource, "_agrees", lambda *args: False)
            slow, slow_out = drive(LobsterSource(messages, orderbook, mode=mode))
        assert [c for c, _ in fast_out] == [c for c, _ in slow_out]
        assert fast.state_hash() == slow.state_hash()


# ------------------------------------- a simulated market at any level count
GENERATED_LEVELS = (1, 2, 5, 10, 50)


@pytest.fixture(scope="module", params=[(0, 100), (1, 100), (2, 1)], ids=["seed0", "seed1", "seed2-subpenny"])
def generated(request, tmp_path_factory) -> dict:
    """One simulated market (``tests/support/lobster_market.py``: hidden
    orders, sweeps, halts, thin-outs, deep orders) written as LOBSTER files at
    every level count of ``GENERATED_LEVELS``: the orderbook files are its
    truth."""
    from tests.support.lobster_market import MarketConfig, write_days
    seed, tick = request.param
    config = MarketConfig(seed=seed, rows=5000, levels=10, tick=tick)
    return write_days(tmp_path_factory.mktemp(f"market{seed}"), config, levels=GENERATED_LEVELS)


@pytest.mark.parametrize("levels", GENERATED_LEVELS)
def test_generated_day_is_rebuilt_exactly_at_any_level_count(generated, levels):
    day = generated[levels]
    result = lobster_check(day.messages, day.orderbook, mode="reconstruct")
    print(levels, day.counts, result)
    assert result["levels"] == levels and result["rows"] == result["rows_compared"] == day.rows
    assert result["mismatched_rows"] == 0, result["first_mismatch"]
    assert result["trades"] == 0 and result["rejected"] == 0 and result["bad_rows"] == 0
    assert result["window_corrections"] == 0
    assert result["halts"] == result["trading_resumed"] == day.counts["halts"] > 0
    assert result["cross_trades"] == day.counts["type_6"] and result["hidden_executions"] == day.counts["type_5"]


@pytest.mark.parametrize("levels", GENERATED_LEVELS)
def test_generated_day_in_match_mode_at_any_level_count(generated, levels):
    day = generated[levels]
    result = lobster_check(day.messages, day.orderbook, mode="match")
    print(levels, result)
    assert result["mismatched_rows"] == 0, result["first_mismatch"]
    assert result["rejected"] == 0 and result["rows_compared"] + result["rows_in_sweeps"] == day.rows
    assert result["fills_compared"] > 100 and result["fills_agreeing"] >= 0.9 * result["fills_compared"]


@pytest.mark.parametrize("levels", [1, 10])
def test_generated_day_without_its_orderbook_never_trades_in_reconstruct_mode(generated, levels):
    day = generated[levels]
    source = LobsterSource(day.messages, mode="reconstruct")
    matcher = Matcher()
    for cmd in source.commands(matcher, None):
        events = matcher.apply(matcher.last_seq + 1, cmd)
        assert not [e for e in events if e[0] == _TRADE], cmd
        assert not events or events[-1][0] != Kind.REJECTED.value or cmd[0] == _BAD, (cmd, events)
    matcher.check_invariants()


@pytest.mark.parametrize("k", [1, 2, 5])
def test_generated_level_50_day_cut_to_fewer_levels_is_rebuilt_exactly(generated, tmp_path, k):
    from tests.support.lobster_market import derive_levels
    day = generated[50]
    messages, orderbook = derive_levels(day.messages, day.orderbook, k, tmp_path)
    result = lobster_check(messages, orderbook, mode="reconstruct")
    assert result["mismatched_rows"] == 0 and result["trades"] == 0 and result["window_corrections"] == 0


# ------------------------------------------------------------------ resume
@pytest.mark.parametrize("mode", ["reconstruct", "match"])
def test_resume_after_any_row_reproduces_the_tail(tmp_path, mode):
    messages, orderbook = TrueExchange(7).write(tmp_path, 300)
    full, out = drive(LobsterSource(messages, orderbook, mode=mode))
    cmds = [c for c, _ in out]
    positions = sorted({c.source_pos for c in cmds if c.source_pos is not None})
    for k in positions:
        matcher = Matcher()
        n = 0
        while n < len(cmds) and (cmds[n].source_pos is None or cmds[n].source_pos <= k):
            matcher.apply(matcher.last_seq + 1, cmds[n])
            n += 1
        assert matcher.positions["lobster:TEST"] == k
        matcher, tail = drive(LobsterSource(messages, orderbook, mode=mode), matcher, after=k)
        assert [c for c, _ in tail] == cmds[n:], f"resume after row {k}"
        assert matcher.state_hash() == full.state_hash()


def test_restart_during_seeding_places_only_the_missing_seeds(tmp_path):
    messages, orderbook = TrueExchange(3).write(tmp_path, 50)
    full, out = drive(LobsterSource(messages, orderbook, mode="match"))
    cmds = [c for c, _ in out]
    matcher = Matcher()
    for cmd in cmds[:3]:                       # AddSymbol and two seeds, then a crash
        matcher.apply(matcher.last_seq + 1, cmd)
    assert matcher.positions["lobster:TEST"] is None
    matcher, tail = drive(LobsterSource(messages, orderbook, mode="match"), matcher, after=None)
    assert [c for c, _ in tail] == cmds[3:]
    assert matcher.state_hash() == full.state_hash()


def test_close_releases_the_files_of_an_unfinished_run(tmp_path):
    source = LobsterSource(*sweep_day(tmp_path), mode="match")
    commands = source.commands(Matcher(), None)
    next(commands)
    assert source._files and not any(f.closed for f in source._files)
    opened = list(source._files)
    source.close()
    assert all(f.closed for f in opened)


# --------------------------------------------------------------- real data
def real_day(symbol: str) -> tuple[Path, Path]:
    day = data_path("lobster")
    stem = f"{symbol}_2012-06-21_34200000_57600000_{{}}_10.csv"
    return day / stem.format("message"), day / stem.format("orderbook")


@pytest.mark.parametrize("symbol", ["AAPL", "GOOG"])
def test_real_visible_prices_are_whole_cents(symbol):
    messages, orderbook = real_day(symbol)
    with open(messages) as f:
        for row, line in enumerate(f):
            parsed = parse_message(line)
            assert isinstance(parsed, Message), (row, parsed)
            if parsed.type <= 4:
                assert parsed.price % TICK_SIZE == 0, row
    with open(orderbook) as f:
        for row, line in enumerate(f):
            bids, asks = parse_orderbook_row(line, 10)
            assert all(p % TICK_SIZE == 0 for p, _ in bids + asks), row


def test_real_aapl_is_rebuilt_exactly():
    result = lobster_check(*real_day("AAPL"), mode="reconstruct")
    print(result)
    assert result["rows"] == result["rows_compared"] == 999
    assert result["mismatched_rows"] == 0, result["first_mismatch"]


def test_real_aapl_resume_reproduces_the_tail():
    messages, orderbook = real_day("AAPL")
    full, out = drive(LobsterSource(messages, orderbook, mode="match"))
    cmds = [c for c, _ in out]
    for k in (0, 41, 500, 998):
        matcher = Matcher()
        n = 0
        while n < len(cmds) and (cmds[n].source_pos is None or cmds[n].source_pos <= k):
            matcher.apply(matcher.last_seq + 1, cmds[n])
            n += 1
        matcher, tail = drive(LobsterSource(messages, orderbook, mode="match"), matcher,
                              after=matcher.positions["lobster:AAPL"])
        assert [c for c, _ in tail] == cmds[n:]
        assert matcher.state_hash() == full.state_hash()


@pytest.fixture(scope="module")
def derived_days(tmp_path_factory) -> dict:
    """The real level-10 days cut to their top 1, 2 and 5 levels (the first
    4k columns of each orderbook row; the message file unchanged, so it
    holds events deeper than k too)."""
    from tests.support.lobster_market import derive_levels
    out = {}
    for symbol in ("AAPL", "GOOG"):
        messages, orderbook = real_day(symbol)
        for k in (1, 2, 5):
            out[symbol, k] = derive_levels(messages, orderbook, k, tmp_path_factory.mktemp(f"{symbol}{k}"))
    return out


@pytest.mark.parametrize("symbol", ["AAPL", "GOOG"])
@pytest.mark.parametrize("k", [1, 2, 5])
def test_real_days_cut_to_fewer_levels_are_rebuilt_exactly(derived_days, symbol, k):
    messages, orderbook = derived_days[symbol, k]
    result = lobster_check(messages, orderbook, mode="reconstruct")
    print(result)
    assert result["levels"] == k and result["rows"] == result["rows_compared"]
    assert result["mismatched_rows"] == 0, result["first_mismatch"]
    assert result["trades"] == 0 and result["rejected"] == 0 and result["window_corrections"] == 0


@pytest.fixture(scope="module")
def goog() -> dict:
    messages, orderbook = real_day("GOOG")
    return {mode: lobster_check(messages, orderbook, mode=mode) for mode in ("reconstruct", "match")}


def test_real_goog_is_rebuilt_exactly(goog):
    result = goog["reconstruct"]
    print(result)
    assert result["rows"] == result["rows_compared"] == 147_916
    assert result["mismatched_rows"] == 0, result["first_mismatch"]
    assert result["rejected"] == 0 and result["trades"] == 0


def test_real_goog_match_mode_agrees_with_lobster(goog):
    result = goog["match"]
    print(result)
    assert result["takers"] == 5_931 and result["rejected"] == 0
    assert result["fills_compared"] > 7_000
    assert result["fills_agreeing"] >= 0.999 * result["fills_compared"]
    assert result["rows_compared"] + result["rows_in_sweeps"] == result["rows"]
    assert result["best_bid_ask_agreeing_rows"] >= 0.999 * result["rows_compared"]
