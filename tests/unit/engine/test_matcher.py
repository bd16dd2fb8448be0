"""Matcher: order types, cancel, amend, validation, sequencing and state.

Books are drawn as ladders; commands go in through ``tests/support/ladder.py``
helpers, which give each command ``last_seq + 1`` and check the invariants of
every book after each step.
"""

from __future__ import annotations

import copy

import msgpack
import pytest

from engine.core import (AddAsset, AddSymbol, AmendOrder, BadInput, CancelOrder, CancelReason, Deposit, Kind, Withdraw,
                         Matcher, OrderAmended, OrderCancelled, OrderRejected, OrderRested,
                         PlaceOrder, RejectReason, SequenceGapError, SymbolAdded, Trade,
                         BookIntegrityError)
from tests.support.ladder import apply, apply_all, apply_one, book_from_ladder, ladder, ladder_of

BUY, SELL = 1, 2
LIMIT, MARKET = 1, 2
GTC, IOC, FOK = 1, 2, 3
R = RejectReason
C = CancelReason


def buy(order_id, price, qty, **kw):
    return PlaceOrder.new(kw.pop("symbol", "X"), order_id, BUY, price, qty, **kw)


def sell(order_id, price, qty, **kw):
    return PlaceOrder.new(kw.pop("symbol", "X"), order_id, SELL, price, qty, **kw)


def market(order_id, side, qty, tif=IOC, **kw):
    return PlaceOrder.new(kw.pop("symbol", "X"), order_id, side, 0, qty, order_type=MARKET,
                          tif=tif, **kw)


def fills(events):
    """``(match_id, price, qty, maker, taker)`` of each trade among ``events``."""
    return [(e.match_id, e.price, e.qty, e.maker_order_id, e.taker_order_id)
            for e in events if e.kind == Kind.TRADE]


def rejects(events):
    return [e.reason for e in events if e.kind == Kind.REJECTED]


def state_but_seq(m: Matcher) -> dict:
    state = m.export_state()
    state.pop("last_seq")
    return state


# ------------------------------------------------------------ limit orders
def test_limit_order_that_does_not_cross_rests():
    m = book_from_ladder("bid|price|ask\n |1600|7\n4|1550|")
    events = apply(m, buy(10, 1575, 2))
    assert events == [OrderRested(Kind.RESTED, 10, BUY, 1575, 2)]
    assert ladder_of(m) == ladder("bid|price|ask\n |1600|7\n2|1575|\n4|1550|")


def test_trade_at_maker_price():
    m = book_from_ladder("bid|price|ask\n |1600|7\n4|1550|")
    events = apply(m, buy(10, 1700, 3, account=42, ts_ns=99))
    seq = m.last_seq - 1
    assert events == [Trade(Kind.TRADE, 1, 99, "X", 1600, 3, BUY, 1, 10, 0, 42, seq, 1)]
    events = apply(m, sell(11, 1500, 1))
    assert fills(events) == [(2, 1550, 1, 2, 11)]


def test_oldest_order_at_a_price_fills_first():
    m = book_from_ladder("bid|price|ask\n |1600|2 5 1")
    assert fills(apply(m, buy(10, 1600, 4))) == [(1, 1600, 2, 1, 10), (2, 1600, 2, 2, 10)]
    assert ladder_of(m, ids=True) == "bid|price|ask\n|1600|3#2 1#3"


def test_better_price_fills_before_older_order():
    m = book_from_ladder("bid|price|ask\n |1600|5\n |1590|1")
    assert fills(apply(m, buy(10, 1600, 2))) == [(1, 1590, 1, 2, 10), (2, 1600, 1, 1, 10)]


def test_gtc_partial_fill_rests_the_rest():
    m = book_from_ladder("bid|price|ask\n |1600|3\n4|1550|")
    events = apply(m, buy(10, 1600, 5))
    assert fills(events) == [(1, 1600, 3, 1, 10)]
    assert events[-1] == OrderRested(Kind.RESTED, 10, BUY, 1600, 2)
    assert ladder_of(m) == ladder("bid|price|ask\n2|1600|\n4|1550|")


# ------------------------------------------------------------------- IOC
def test_ioc_partial_fill_cancels_rest():
    m = book_from_ladder("bid|price|ask\n |1700|9\n |1600|3\n4|1550|")
    events = apply(m, buy(10, 1650, 5, tif=IOC))
    assert fills(events) == [(1, 1600, 3, 2, 10)]
    assert events[-1] == OrderCancelled(Kind.CANCELLED, 10, 2, C.IOC_REMAINDER)
    assert ladder_of(m) == ladder("bid|price|ask\n |1700|9\n4|1550|")
    assert 10 not in m.books["X"].orders


def test_ioc_that_does_not_cross_is_cancelled_whole():
    m = book_from_ladder("bid|price|ask\n |1600|3\n4|1550|")
    before = ladder_of(m)
    assert apply(m, sell(10, 1600, 5, tif=IOC)) == [OrderCancelled(Kind.CANCELLED, 10, 5, C.IOC_REMAINDER)]
    assert ladder_of(m) == before


# ------------------------------------------------------------------- FOK
def test_fok_not_fillable_cancels_whole():
    m = book_from_ladder("bid|price|ask\n |1700|9\n |1600|3\n4|1550|")
    before, seq = m.state_hash(), m.last_seq
    events = apply(m, buy(10, 1650, 4, tif=FOK))
    assert events == [OrderCancelled(Kind.CANCELLED, 10, 4, C.FOK_UNFILLED)]
    assert m.last_seq == seq + 1 and m.match_sequence == 0
    m.last_seq -= 1
    assert m.state_hash() == before


def test_fok_fillable_fills_whole_across_levels():
    m = book_from_ladder("bid|price|ask\n |1700|9\n |1600|3\n4|1550|")
    events = apply(m, buy(10, 1700, 5, tif=FOK))
    assert fills(events) == [(1, 1600, 3, 2, 10), (2, 1700, 2, 1, 10)]
    assert events[-1].kind == Kind.TRADE
    assert ladder_of(m) == ladder("bid|price|ask\n |1700|7\n4|1550|")


def test_fok_exactly_fillable_fills():
    m = book_from_ladder("bid|price|ask\n |1600|3 2")
    assert [f[2] for f in fills(apply(m, buy(10, 1600, 5, tif=FOK)))] == [3, 2]
    assert m.books["X"].orders == {}


def test_market_fok_not_fillable_cancels_whole():
    m = book_from_ladder("bid|price|ask\n5|1550|\n2|1500|")
    assert apply(m, market(10, SELL, 8, tif=FOK)) == [OrderCancelled(Kind.CANCELLED, 10, 8, C.FOK_UNFILLED)]
    assert fills(apply(m, market(11, SELL, 7, tif=FOK))) == [(1, 1550, 5, 1, 11), (2, 1500, 2, 2, 11)]


# ---------------------------------------------------------------- market
def test_market_order_sweeps_levels():
    m = book_from_ladder("bid|price|ask\n |1800|4\n |1700|2 2\n |1600|3\n4|1550|")
    events = apply(m, market(10, BUY, 9))
    assert fills(events) == [(1, 1600, 3, 4, 10), (2, 1700, 2, 2, 10), (3, 1700, 2, 3, 10),
                             (4, 1800, 2, 1, 10)]
    assert ladder_of(m) == ladder("bid|price|ask\n |1800|2\n4|1550|")


def test_market_order_remainder_is_cancelled_for_no_liquidity():
    m = book_from_ladder("bid|price|ask\n |1600|3\n4|1550|")
    events = apply(m, market(10, BUY, 5))
    assert fills(events) == [(1, 1600, 3, 1, 10)]
    assert events[-1] == OrderCancelled(Kind.CANCELLED, 10, 2, C.NO_LIQUIDITY)
    assert apply(m, market(11, BUY, 1)) == [OrderCancelled(Kind.CANCELLED, 11, 1, C.NO_LIQUIDITY)]


def test_market_order_ignores_its_price_field():
    m = book_from_ladder("bid|price|ask\n |1600|3")
    cmd = market(10, BUY, 1)._replace(price=1)          # documented: price is ignored
    assert fills(apply(m, cmd)) == [(1, 1600, 1, 1, 10)]


def test_market_order_must_be_ioc_or_fok():
    m = book_from_ladder("bid|price|ask\n |1600|3")
    assert rejects(apply(m, market(10, BUY, 1, tif=GTC))) == [R.INVALID_TIF]


# ------------------------------------------------------------- post-only
def test_post_only_that_would_cross_is_rejected():
    m = book_from_ladder("bid|price|ask\n |1600|3\n4|1550|")
    before = state_but_seq(m)
    assert rejects(apply(m, buy(10, 1600, 1, post_only=True))) == [R.POST_ONLY_WOULD_TAKE]
    assert rejects(apply(m, sell(11, 1550, 1, post_only=True))) == [R.POST_ONLY_WOULD_TAKE]
    assert state_but_seq(m) == before


def test_post_only_that_does_not_cross_rests():
    m = book_from_ladder("bid|price|ask\n |1600|3\n4|1550|")
    assert apply(m, buy(10, 1575, 1, post_only=True)) == [OrderRested(Kind.RESTED, 10, BUY, 1575, 1)]


@pytest.mark.parametrize("cmd", [buy(10, 1500, 1, post_only=True, tif=IOC),
                                 buy(10, 1500, 1, post_only=True, tif=FOK),
                                 market(10, BUY, 1, post_only=True)])
def test_post_only_needs_a_gtc_limit(cmd):
    m = book_from_ladder("bid|price|ask\n |1600|3")
    assert rejects(apply(m, cmd)) == [R.INVALID_FLAGS]


# ---------------------------------------------------------------- cancel
def test_cancel_removes_whole_order():
    m = book_from_ladder("bid|price|ask\n |1600|3 4")
    assert apply(m, CancelOrder.new("X", 1)) == [OrderCancelled(Kind.CANCELLED, 1, 3, C.USER)]
    assert ladder_of(m, ids=True) == "bid|price|ask\n|1600|4#2"


def test_cancel_unknown_or_gone_order_is_rejected():
    m = book_from_ladder("bid|price|ask\n |1600|3\n4|1550|")
    apply(m, buy(10, 1600, 3), CancelOrder.new("X", 2))
    for cmd in (CancelOrder.new("X", 99), CancelOrder.new("X", 1), CancelOrder.new("X", 2),
                CancelOrder.new("X", 10)):
        assert rejects(apply(m, cmd)) == [R.UNKNOWN_ORDER]


def test_cancel_in_other_symbol_is_rejected():
    m = book_from_ladder("bid|price|ask\n |1600|3")
    book_from_ladder("bid|price|ask\n |1600|3", symbol="Y", matcher=m)
    apply(m, CancelOrder.new("Y", 1))
    assert rejects(apply(m, CancelOrder.new("Y", 1))) == [R.UNKNOWN_ORDER]
    assert ladder_of(m, "X") == ladder("bid|price|ask\n |1600|3")


def test_lazy_removed_orders_never_trade():
    m = book_from_ladder("bid|price|ask\n |1600|1 2 3 4 5")
    apply(m, CancelOrder.new("X", 1), CancelOrder.new("X", 3), CancelOrder.new("X", 5))
    assert fills(apply(m, buy(10, 1600, 10))) == [(1, 1600, 2, 2, 10), (2, 1600, 4, 4, 10)]
    assert ladder_of(m) == ladder("bid|price|ask\n4|1600|")


def test_order_id_reused_after_cancel_takes_the_back_of_the_queue():
    m = book_from_ladder("bid|price|ask\n |1600|1 2")
    apply(m, CancelOrder.new("X", 1), sell(1, 1600, 7))
    assert ladder_of(m, ids=True) == "bid|price|ask\n|1600|2#2 7#1"
    assert fills(apply(m, buy(10, 1600, 3))) == [(1, 1600, 2, 2, 10), (2, 1600, 1, 1, 10)]


# ----------------------------------------------------------------- amend
def test_amend_down_keeps_priority():
    m = book_from_ladder("bid|price|ask\n |1600|5 4")
    assert apply(m, AmendOrder.new("X", 1, 1600, 2)) == [OrderAmended(Kind.AMENDED, 1, 1600, 2, True)]
    assert ladder_of(m, ids=True) == "bid|price|ask\n|1600|2#1 4#2"
    assert fills(apply(m, buy(10, 1600, 3))) == [(1, 1600, 2, 1, 10), (2, 1600, 1, 2, 10)]


def test_amend_to_same_qty_keeps_priority_and_changes_nothing():
    m = book_from_ladder("bid|price|ask\n |1600|5 4")
    before = m.state_hash()
    assert apply(m, AmendOrder.new("X", 1, 1600, 5)) == [OrderAmended(Kind.AMENDED, 1, 1600, 5, True)]
    m.last_seq -= 1
    assert m.state_hash() == before


def test_amend_up_loses_priority():
    m = book_from_ladder("bid|price|ask\n |1600|5 4")
    events = apply(m, AmendOrder.new("X", 1, 1600, 6))
    assert events == [OrderAmended(Kind.AMENDED, 1, 1600, 6, False), OrderRested(Kind.RESTED, 1, SELL, 1600, 6)]
    assert ladder_of(m, ids=True) == "bid|price|ask\n|1600|4#2 6#1"


def test_amend_price_loses_priority_and_may_trade():
    m = book_from_ladder("bid|price|ask\n |1650|5 4\n3 2|1550|", )
    events = apply(m, AmendOrder.new("X", 4, 1650, 6, ts_ns=77))   # bid 2 (id 4) jumps to 1650
    assert events[0] == OrderAmended(Kind.AMENDED, 4, 1650, 6, False)
    assert fills(events) == [(1, 1650, 5, 1, 4), (2, 1650, 1, 2, 4)]
    assert all(e.ts_ns == 77 for e in events if e.kind == Kind.TRADE)
    assert len(events) == 3                                       # fully filled, nothing rests
    assert ladder_of(m, ids=True) == "bid|price|ask\n|1650|3#2\n3#3|1550|"


def test_amend_price_that_does_not_cross_goes_to_the_back():
    m = book_from_ladder("bid|price|ask\n |1700|5 4\n |1600|1")
    apply(m, AmendOrder.new("X", 3, 1700, 1))
    assert ladder_of(m, ids=True) == "bid|price|ask\n|1700|5#1 4#2 1#3"


def test_amend_partially_crossing_rests_the_rest_as_gtc():
    m = book_from_ladder("bid|price|ask\n |1600|2\n5|1500|")
    events = apply(m, AmendOrder.new("X", 2, 1600, 5))
    assert fills(events) == [(1, 1600, 2, 1, 2)]
    assert events[-1] == OrderRested(Kind.RESTED, 2, BUY, 1600, 3)


def test_amend_keeps_the_orders_account():
    m = book_from_ladder("bid|price|ask\n |1600|2", account=5)
    apply(m, buy(10, 1500, 2, account=9))
    [trade] = [e for e in apply(m, AmendOrder.new("X", 10, 1600, 2)) if e.kind == Kind.TRADE]
    assert (trade.maker_account, trade.taker_account) == (5, 9)


@pytest.mark.parametrize("cmd, reason", [
    (AmendOrder.new("X", 99, 1600, 1), R.UNKNOWN_ORDER),
    (AmendOrder.new("X", 1, 1600, 0), R.INVALID_QTY),
    (AmendOrder.new("X", 1, 1600, -3), R.INVALID_QTY),
    (AmendOrder.new("X", 1, 0, 1), R.INVALID_PRICE),
    (AmendOrder.new("X", 1, 1603, 1), R.PRICE_OFF_TICK),
    (AmendOrder.new("Z", 1, 1600, 1), R.UNKNOWN_SYMBOL),
])
def test_invalid_amend_is_rejected_and_changes_nothing(cmd, reason):
    m = book_from_ladder("bid|price|ask\n |1600|5\n4|1550|", tick_size=5)
    before = state_but_seq(m)
    assert rejects(apply(m, cmd)) == [reason]
    assert state_but_seq(m) == before


# ------------------------------------------------------------ validation
def test_duplicate_order_id_rejected():
    m = book_from_ladder("bid|price|ask\n |1600|5\n4|1550|")
    before = state_but_seq(m)
    events = apply(m, buy(1, 1500, 1))
    assert events == [OrderRejected(Kind.REJECTED, m.last_seq - 1, 1, R.DUPLICATE_ORDER_ID, events[0].detail)]
    assert rejects(apply(m, buy(2, 1700, 1))) == [R.DUPLICATE_ORDER_ID]     # would cross: still refused
    assert state_but_seq(m) == before


def test_same_order_id_in_other_symbol_is_accepted():
    m = book_from_ladder("bid|price|ask\n |1600|5")
    apply(m, AddSymbol.new("Y"))
    assert apply(m, buy(1, 1500, 1, symbol="Y")) == [OrderRested(Kind.RESTED, 1, BUY, 1500, 1)]


def test_price_off_tick_rejected():
    m = book_from_ladder("bid|price|ask\n |1600|5", tick_size=25)
    assert rejects(apply(m, buy(10, 1610, 1))) == [R.PRICE_OFF_TICK]
    assert apply(m, buy(11, 1575, 1)) == [OrderRested(Kind.RESTED, 11, BUY, 1575, 1)]


def test_unknown_symbol_rejected():
    m = book_from_ladder("bid|price|ask\n |1600|5")
    for cmd in (buy(10, 1600, 1, symbol="Y"), CancelOrder.new("Y", 1), AmendOrder.new("Y", 1, 1600, 1)):
        assert rejects(apply(m, cmd)) == [R.UNKNOWN_SYMBOL]


@pytest.mark.parametrize("cmd, reason", [
    (buy(0, 1600, 1), R.INVALID_ORDER_ID),
    (buy(-1, 1600, 1), R.INVALID_ORDER_ID),
    (buy(2**63, 1600, 1), R.INVALID_ORDER_ID),
    (PlaceOrder.new("X", 10, 3, 1600, 1), R.INVALID_SIDE),
    (buy(10, 1600, 0), R.INVALID_QTY),
    (buy(10, 1600, 10**15 + 1), R.INVALID_QTY),
    (buy(10, 1600, 1, tif=4), R.INVALID_TIF),
    (buy(10, 1600, 1, order_type=3), R.INVALID_ORDER_TYPE),
    (buy(10, 0, 1), R.INVALID_PRICE),
    (buy(10, 10**12 + 1, 1), R.INVALID_PRICE),
    (buy(10, 1600, 1, account=-1), R.MALFORMED),
    (AddSymbol.new(""), R.INVALID_SYMBOL),
    (AddSymbol.new("S" * 33), R.INVALID_SYMBOL),
    (AddSymbol.new("Y", tick_size=0), R.INVALID_TICK_SIZE),
    (AddSymbol.new("X"), R.SYMBOL_EXISTS),
])
def test_out_of_range_field_rejected(cmd, reason):
    m = book_from_ladder("bid|price|ask\n |1600|5\n4|1550|")
    before = state_but_seq(m)
    assert rejects(apply(m, cmd)) == [reason]
    assert state_but_seq(m) == before


def test_reject_carries_order_id_only_when_it_is_an_int():
    m = book_from_ladder("bid|price|ask\n |1600|5")
    assert [e.order_id for e in apply(m, buy(10, 1601.0, 1))] == [10]
    assert [e.order_id for e in apply(m, buy("10", 1601, 1))] == [None]


BAD_VALUES = ["1", "", 1.0, 1.5, float("nan"), True, False, None, 2**64, 10**40, -2**70, -1,
              [1], [], {}, {"a": 1}, b"\x01", (1,), object()]

BASE_COMMANDS = {
    # each would change the book if it were accepted
    "add": AddSymbol.new("Y", 5),
    "place": buy(10, 1600, 3, account=1),
    "cancel": CancelOrder.new("X", 1),
    "amend": AmendOrder.new("X", 1, 1550, 3),
    "asset": AddAsset.new("EUR", 2),
    "deposit": Deposit.new(5, 1, "USD", 100),
    "withdraw": Withdraw.new(6, 9, "USD", 100),
}


def _still_valid(name: str, field: str, value) -> bool:
    """Values that are legitimate for the field, so not expected to be refused."""
    if field == "post_only" and type(value) is bool:
        return True
    if field == "source" and (value is None or type(value) is str):
        return True
    if field == "source_pos" and value is None:
        return True
    if name == "add" and field == "symbol" and type(value) is str and 1 <= len(value) <= 32:
        return True
    if name == "add" and (field in ("base", "quote") and value is None or field == "risk" and value is False):
        return True
    if name in ("deposit", "withdraw") and field == "asset" and type(value) is str and 1 <= len(value) <= 16:
        return True   # well formed: an unknown asset is refused, and remembered under the transfer_id
    if name == "asset" and field == "asset" and type(value) is str and 1 <= len(value) <= 16:
        return True
    return False


MALFORMED_CASES = [
    pytest.param(name, field, value, id=f"{name}-{field}-{value!r:.12}")
    for name, cmd in BASE_COMMANDS.items() for field in cmd._fields for value in BAD_VALUES
    if not _still_valid(name, field, value)
]


@pytest.mark.parametrize("name, field, value", MALFORMED_CASES)
def test_malformed_field_types_rejected(name, field, value):
    m = book_from_ladder("bid|price|ask\n |1600|5\n4|1550|")
    apply(m, buy(20, 1500, 2, source="feed", source_pos=7))
    before, seq = state_but_seq(m), m.last_seq
    cmd = BASE_COMMANDS[name]._replace(**{field: value})
    events = apply_one(m, cmd)                  # never an exception
    assert [e.kind for e in events] == [Kind.REJECTED]
    assert events[0].cmd_seq == seq + 1 and m.last_seq == seq + 2
    assert state_but_seq(m) == before
    assert m.positions == {"feed": 7}
    msgpack.packb(m.export_state())             # the state stays encodable


def test_bad_input_is_rejected_and_moves_the_source_position():
    m = book_from_ladder("bid|price|ask\n |1600|5")
    before = state_but_seq(m)
    events = apply(m, BadInput.new(b"\xff garbage", "not msgpack", source="kafka:orders:0", source_pos=41))
    assert rejects(events) == [R.MALFORMED] and events[0].order_id is None
    assert m.positions == {"kafka:orders:0": 41}
    before["positions"] = {"kafka:orders:0": 41}
    assert state_but_seq(m) == before


def test_rejected_command_still_moves_its_source_position():
    m = book_from_ladder("bid|price|ask\n |1600|5")
    apply(m, buy(10, 1600, 0, source="http", source_pos=3))
    assert m.positions == {"http": 3}


def test_positions_keep_the_last_command_of_each_source():
    m = Matcher()
    apply(m, AddSymbol.new("X", source="a", source_pos=1), buy(1, 10, 1, source="b", source_pos=9),
          sell(2, 10, 1, source="a", source_pos=2), CancelOrder.new("X", 5))
    assert m.positions == {"a": 2, "b": 9}


@pytest.mark.parametrize("cmd", [(99, 0, "X"), (Kind.TRADE.value, 0, None, None),
                                 ("place", 0, "X", 1, None, None)])
def test_unknown_command_kind_rejected(cmd):
    m = book_from_ladder("bid|price|ask\n |1600|5")
    assert rejects(apply(m, cmd)) == [R.MALFORMED]


def test_command_whose_kind_does_not_match_its_shape_is_rejected():
    m = book_from_ladder("bid|price|ask\n |1600|5\n4|1550|")
    before = state_but_seq(m)
    for kind in (Kind.CANCEL, Kind.AMEND, Kind.DEPOSIT, Kind.ADD_ASSET):
        assert rejects(apply(m, buy(10, 1600, 1)._replace(kind=kind.value))) == [R.MALFORMED]
    assert rejects(apply(m, CancelOrder.new("X", 1)._replace(kind=Kind.PLACE.value))) == [R.MALFORMED]
    # a place and an add-symbol have as many fields: the fields' checks refuse it
    assert rejects(apply(m, buy(10, 1600, 1)._replace(kind=Kind.ADD_SYMBOL.value))) == [R.SYMBOL_EXISTS]
    assert rejects(apply(m, buy(10, 1600, 1)._replace(kind=Kind.ADD_SYMBOL.value, symbol="Z"))) == \
        [R.INVALID_SYMBOL_SPEC]
    assert state_but_seq(m) == before


# -------------------------------------------------- sequencing, match ids
def test_sequence_gap_raises():
    m = book_from_ladder("bid|price|ask\n |1600|5")
    before = m.export_state()
    for seq in (m.last_seq + 2, m.last_seq, 0, m.last_seq + 100):
        with pytest.raises(SequenceGapError) as info:
            m.apply(seq, buy(10, 1600, 1))
        assert (info.value.expected, info.value.actual) == (before["last_seq"] + 1, seq)
    assert m.export_state() == before


def test_last_seq_counts_trades_and_rejects():
    m = Matcher()
    script = [                                     # (command, sequence numbers it takes)
        (AddSymbol.new("X"), 1),
        (sell(1, 1600, 2), 1),                     # rests
        (sell(2, 1600, 2), 1),
        (buy(3, 1600, 3), 3),                      # the place and two trades
        (buy(4, 1600, 0), 2),                      # the place and its reject
        (CancelOrder.new("X", 2), 1),
        (sell(5, 1600, 9, tif=FOK), 1),            # FOK unfilled: a cancel, not a reject
        (BadInput.new("x", "bad"), 2),
        (AmendOrder.new("X", 3, 1600, 1), 2),      # id 3 filled whole: unknown, a reject
    ]
    for cmd, taken in script:
        seq = m.last_seq + 1
        events = m.apply(seq, cmd)
        m.check_invariants()
        assert m.last_seq == seq + taken - 1, cmd
        assert all(e.cmd_seq == seq for e in events if e.kind in (Kind.TRADE, Kind.REJECTED))
    assert m.last_seq == 14
    with pytest.raises(SequenceGapError):
        m.apply(14, CancelOrder.new("X", 1))


def test_trades_carry_the_commands_seq_and_are_kept_in_history():
    m = Matcher(trade_history=2)
    apply(m, AddSymbol.new("X"), sell(1, 10, 1), sell(2, 10, 1), sell(3, 10, 1))
    events = apply(m, buy(4, 10, 3))
    assert [t.cmd_seq for t in events] == [5, 5, 5]
    assert list(m.trades) == [t for t in events if t.kind == Kind.TRADE][-2:]


def test_match_ids_gap_free_across_symbols():
    m = book_from_ladder("bid|price|ask\n |1600|1 1 1")
    book_from_ladder("bid|price|ask\n |20|1 1 1", symbol="Y", matcher=m)
    ids = []
    for cmd in (buy(10, 1600, 2), buy(10, 20, 1, symbol="Y"), CancelOrder.new("X", 3),
                buy(11, 20, 2, symbol="Y"), buy(12, 1600, 1, tif=IOC), buy(13, 1, 1, symbol="Y", tif=FOK)):
        ids += [f[0] for f in fills(apply(m, cmd))]
    assert ids == [1, 2, 3, 4, 5] and m.match_sequence == 5


def test_add_symbol_opens_an_empty_book():
    m = Matcher()
    assert apply(m, AddSymbol.new("GOOG", 100)) == [SymbolAdded(Kind.SYMBOL_ADDED, "GOOG", 100)]
    assert m.books["GOOG"].tick_size == 100 and m.books["GOOG"].orders == {}


# ------------------------------------------------------------ state, hash
SCRIPT = [AddSymbol.new("X"), AddSymbol.new("Y", 5),
          sell(1, 1600, 5), sell(2, 1600, 3), buy(3, 1500, 4, account=8), sell(4, 1700, 2),
          buy(1, 25, 2, symbol="Y", source="s", source_pos=1), AmendOrder.new("X", 1, 1600, 4),
          buy(5, 1600, 2), CancelOrder.new("X", 4), buy(6, 1500, 1), buy(7, 1450, 0)]


def test_export_state_roundtrip_preserves_priority():
    m = Matcher()
    apply_all(m, SCRIPT)
    state = msgpack.unpackb(msgpack.packb(m.export_state()), strict_map_key=False)
    r = Matcher.from_state(state)
    r.check_invariants()
    assert r.state_hash() == m.state_hash()
    assert r.export_state() == m.export_state()
    assert ladder_of(r, ids=True) == ladder_of(m, ids=True)
    more = [buy(20, 1600, 4), sell(21, 1400, 5), buy(22, 30, 1, symbol="Y", tif=IOC)]
    assert apply_all(r, more) == apply_all(m, more)
    assert r.state_hash() == m.state_hash()


def test_from_state_refuses_a_crossed_book():
    m = book_from_ladder("bid|price|ask\n |1600|5\n4|1550|")
    state = m.export_state()
    state["books"][0][2][0][2] = 1650            # the bid now crosses the ask
    with pytest.raises(BookIntegrityError):
        Matcher.from_state(state)


def test_from_state_refuses_a_duplicate_order_id():
    m = book_from_ladder("bid|price|ask\n |1600|5\n4|1550|")
    state = m.export_state()
    state["books"][0][2][1][0] = state["books"][0][2][0][0]
    with pytest.raises(BookIntegrityError):
        Matcher.from_state(state)


def test_state_hash_equal_after_replay():
    a, b = Matcher(), Matcher()
    events_a, events_b = apply_all(a, SCRIPT), apply_all(b, SCRIPT)
    assert events_a == events_b
    assert a.state_hash() == b.state_hash()
    assert len(a.state_hash()) == 64


def test_state_hash_ignores_lazy_entries_and_compaction():
    a = book_from_ladder("bid|price|ask\n |1600|" + " ".join(["1"] * 60) + " 9#100")
    apply(a, *[CancelOrder.new("X", i) for i in range(1, 61)])
    b = book_from_ladder("bid|price|ask\n |1600|9#100")
    b.last_seq, b.match_sequence = a.last_seq, a.match_sequence
    assert a.state_hash() == b.state_hash()


def test_state_hash_differs_when_priority_differs():
    a = book_from_ladder("bid|price|ask\n |1600|5#1 5#2")
    b = book_from_ladder("bid|price|ask\n |1600|5#2 5#1")
    assert a.books["X"].depth(SELL) == b.books["X"].depth(SELL)
    assert a.state_hash() != b.state_hash()


def test_state_hash_differs_when_counters_or_books_differ():
    base = book_from_ladder("bid|price|ask\n |1600|5")
    other = copy.deepcopy(base)
    assert other.state_hash() == base.state_hash()
    other.match_sequence += 1
    assert other.state_hash() != base.state_hash()
    other = copy.deepcopy(base)
    other.last_seq += 1
    assert other.state_hash() != base.state_hash()
    assert book_from_ladder("bid|price|ask\n |1600|4").state_hash() != base.state_hash()
    assert book_from_ladder("bid|price|ask\n |1600|5", tick_size=5).state_hash() != base.state_hash()


def test_check_invariants_catches_a_corrupted_book_in_any_symbol():
    m = book_from_ladder("bid|price|ask\n |1600|5")
    book_from_ladder("bid|price|ask\n |1600|5", symbol="Y", matcher=m)
    m.check_invariants()
    m.books["Y"].ask_levels[1600].qty += 1
    with pytest.raises(BookIntegrityError) as info:
        m.check_invariants()
    assert info.value.symbol == "Y"
