"""Accounts and pre-trade risk, on examples computed by hand.

The rules are in ``engine/core/accounts.py``'s module docstring: a buy holds
``unit(P) = P*q + ceil(P*q*taker_ppm / 10**6)`` quote units per lot, a sell
``base_per_lot`` base units; each fill pays fees rounded up; what is no
longer needed is released. Every number below is worked out in the comment
beside it, not taken from the engine.
"""

from __future__ import annotations

import pytest

from engine.core import (AddAsset, AddSymbol, AmendOrder, CancelOrder, CancelReason, Deposit, Kind, LedgerReason,
                         Matcher, PlaceOrder, RejectReason, Withdraw)

BUY, SELL = 1, 2
MARKET, IOC, FOK = 2, 2, 3
FEES = 0  # the fee account


def run(m: Matcher, *cmds) -> list:
    out = []
    for cmd in cmds:
        out += m.apply(m.last_seq + 1, cmd)
    m.check_invariants()
    return out


def bal(m: Matcher, account: int, asset: str) -> tuple:
    b = m.accounts.balances.get(account, {}).get(asset, [0, 0])
    return b[0], b[1]


def of(events: list, kind: Kind) -> list:
    return [e for e in events if e[0] == kind]


def btc_usd(**spec) -> Matcher:
    """BTC (scale 8) / USD (scale 2) with risk on: one lot is 10,000 sat
    (0.0001 BTC); a price unit is one cent per lot (times ``quote_per_tick``)."""
    m = Matcher()
    run(m, AddAsset.new("BTC", 8), AddAsset.new("USD", 2),
        AddSymbol.new("BTC-USD", 1, base="BTC", quote="USD", base_per_lot=10_000, risk=True,
                      fee_account=FEES, **spec))
    return m


def test_a_fill_moves_notional_and_fees_and_refunds_the_price_improvement():
    m = btc_usd(maker_fee_ppm=1_000, taker_fee_ppm=2_000)
    run(m, Deposit.new(1, 1, "BTC", 500_000), Deposit.new(2, 2, "USD", 6_000_000))
    run(m, PlaceOrder.new("BTC-USD", 10, SELL, 5_000_000, 50, account=1))
    assert bal(m, 1, "BTC") == (0, 500_000)                    # 50 lots x 10,000 sat held
    events = run(m, PlaceOrder.new("BTC-USD", 20, BUY, 5_100_000, 1, account=2))
    # hold: unit(5,100,000) = 5,100,000 + ceil(5,100,000 x 0.002) = 5,110,200
    hold = of(events, Kind.BALANCE_CHANGED)[0]
    assert (hold.account, hold.available_delta, hold.held_delta, hold.reason) == (2, -5_110_200, 5_110_200,
                                                                                 LedgerReason.HOLD)
    (trade,) = of(events, Kind.TRADE)
    assert (trade.price, trade.qty) == (5_000_000, 1)
    # taker pays 5,000,000 + fee 10,000 = 5,010,000 and gets 100,200 back
    assert bal(m, 2, "USD") == (6_000_000 - 5_010_000, 0)
    assert bal(m, 2, "BTC") == (10_000, 0)
    # maker gets 5,000,000 - fee 5,000; its other 49 lots stay held
    assert bal(m, 1, "USD") == (4_995_000, 0)
    assert bal(m, 1, "BTC") == (0, 490_000)
    assert bal(m, FEES, "USD") == (15_000, 0)
    assert m.accounts.totals() == {"BTC": (10_000, 490_000), "USD": (6_000_000, 0)}


def test_the_order_that_needs_one_unit_more_than_available_is_rejected_and_changes_nothing():
    m = btc_usd(taker_fee_ppm=2_500)
    # unit(400) = 400 + ceil(400 x 0.0025 = 1.0) = 401; 3 lots need 1,203
    run(m, Deposit.new(1, 7, "USD", 1_202))
    before = m.export_state()
    (rej,) = run(m, PlaceOrder.new("BTC-USD", 1, BUY, 400, 3, account=7))
    assert rej.reason == RejectReason.INSUFFICIENT_FUNDS and rej.order_id == 1
    after = m.export_state()
    assert (after["books"], after["accounts"]) == (before["books"], before["accounts"])
    run(m, Deposit.new(2, 7, "USD", 1))
    events = run(m, PlaceOrder.new("BTC-USD", 1, BUY, 400, 3, account=7))
    assert [e[0] for e in events] == [Kind.BALANCE_CHANGED, Kind.RESTED]
    assert bal(m, 7, "USD") == (0, 1_203)


def test_a_sell_needs_the_base_and_withdrawals_cannot_touch_held_funds():
    m = btc_usd()
    run(m, Deposit.new(1, 3, "BTC", 25_000))
    (rej,) = run(m, PlaceOrder.new("BTC-USD", 1, SELL, 100, 3, account=3))     # 30,000 sat > 25,000
    assert rej.reason == RejectReason.INSUFFICIENT_FUNDS
    run(m, PlaceOrder.new("BTC-USD", 1, SELL, 100, 2, account=3))             # holds 20,000
    (rej,) = run(m, Withdraw.new(2, 3, "BTC", 5_001))
    assert rej.reason == RejectReason.INSUFFICIENT_FUNDS and rej.order_id == 2
    events = run(m, Withdraw.new(3, 3, "BTC", 5_000))
    assert of(events, Kind.TRANSFER_DONE)[0].available == 0
    assert bal(m, 3, "BTC") == (0, 20_000) and m.accounts.supply["BTC"] == 20_000


def test_cancel_and_ioc_remainder_release_exactly_what_the_leaves_held():
    m = btc_usd(taker_fee_ppm=10_000)
    run(m, Deposit.new(1, 1, "USD", 10_000), Deposit.new(2, 2, "BTC", 10_000))
    run(m, PlaceOrder.new("BTC-USD", 5, SELL, 200, 1, account=2))
    # IOC buy of 4 lots at 250: unit(250) = 250 + ceil(2.5) = 253, holds 1,012;
    # one lot fills at 200 (cost 200 + 2 = 202), 3 lots' 759 released.
    events = run(m, PlaceOrder.new("BTC-USD", 6, BUY, 250, 4, tif=IOC, account=1))
    changes = of(events, Kind.BALANCE_CHANGED)
    assert changes[-1].reason == LedgerReason.RELEASE and changes[-1].available_delta == 759
    assert of(events, Kind.CANCELLED)[0].reason == CancelReason.IOC_REMAINDER
    assert bal(m, 1, "USD") == (10_000 - 202, 0)
    run(m, PlaceOrder.new("BTC-USD", 7, BUY, 150, 10, account=1))            # unit(150) = 152 -> 1,520
    assert bal(m, 1, "USD") == (10_000 - 202 - 1_520, 1_520)
    run(m, CancelOrder.new("BTC-USD", 7))
    assert bal(m, 1, "USD") == (10_000 - 202, 0)


def test_amend_up_needs_only_the_difference_and_is_refused_whole_when_short():
    m = btc_usd()
    run(m, Deposit.new(1, 1, "USD", 1_000))
    run(m, PlaceOrder.new("BTC-USD", 1, BUY, 100, 4, account=1))                # holds 400
    run(m, PlaceOrder.new("BTC-USD", 2, BUY, 100, 1, account=1))                # holds 100, behind 1
    events = run(m, AmendOrder.new("BTC-USD", 1, 100, 9))                      # needs 500 more, has 500
    assert [e[0] for e in events] == [Kind.BALANCE_CHANGED, Kind.AMENDED, Kind.BALANCE_CHANGED, Kind.RESTED]
    assert bal(m, 1, "USD") == (0, 1_000)
    (rej,) = run(m, AmendOrder.new("BTC-USD", 2, 101, 1))                       # needs 1 more, has 0
    assert rej.reason == RejectReason.INSUFFICIENT_FUNDS
    assert m.books["BTC-USD"].export_orders() == [[2, BUY, 100, 1, 1], [1, BUY, 100, 9, 1]]
    assert bal(m, 1, "USD") == (0, 1_000)
    run(m, AmendOrder.new("BTC-USD", 1, 100, 2))                                # down: keeps its place
    assert bal(m, 1, "USD") == (700, 300)
    assert m.books["BTC-USD"].export_orders()[1] == [1, BUY, 100, 2, 1]


def test_the_maker_buy_gets_back_its_unused_fee_reserve():
    m = btc_usd(maker_fee_ppm=3_333, taker_fee_ppm=7_777, quote_per_tick=3)
    run(m, Deposit.new(1, 1, "USD", 303), Deposit.new(2, 2, "BTC", 10_000))
    run(m, PlaceOrder.new("BTC-USD", 1, BUY, 100, 1, account=1))   # unit = 300 + ceil(2.33) = 303
    run(m, PlaceOrder.new("BTC-USD", 2, SELL, 100, 1, account=2))
    # maker pays 300 + ceil(0.9999) = 301 and gets 2 back; taker gets 300 - ceil(2.33) = 297
    assert bal(m, 1, "USD") == (2, 0) and bal(m, 1, "BTC") == (10_000, 0)
    assert bal(m, 2, "USD") == (297, 0) and bal(m, FEES, "USD") == (4, 0)


def test_market_buy_spends_its_budget_lot_by_lot_and_releases_the_rest():
    m = btc_usd(taker_fee_ppm=7_777, quote_per_tick=3)
    run(m, Deposit.new(1, 1, "USD", 5_000), Deposit.new(2, 2, "BTC", 50_000))
    run(m, PlaceOrder.new("BTC-USD", 1, SELL, 100, 2, account=2),
        PlaceOrder.new("BTC-USD", 2, SELL, 101, 3, account=2))
    # unit(100) = 303, unit(101) = 303 + ceil(2.356) = 306. Budget 1,000:
    # 2 lots at 100 cost 600 + ceil(4.67) = 605; 395 left buys 1 lot at 101 (306); 89 left.
    events = run(m, PlaceOrder.new("BTC-USD", 3, BUY, 0, 5, order_type=MARKET, tif=IOC, account=1,
                                   max_quote=1_000))
    assert [(t.price, t.qty) for t in of(events, Kind.TRADE)] == [(100, 2), (101, 1)]
    (cancel,) = of(events, Kind.CANCELLED)
    assert (cancel.cancelled_qty, cancel.reason) == (2, CancelReason.BUDGET_EXHAUSTED)
    assert of(events, Kind.BALANCE_CHANGED)[-1].available_delta == 1_000 - 605 - 306
    assert bal(m, 1, "USD") == (5_000 - 911, 0) and bal(m, 1, "BTC") == (30_000, 0)


def test_fok_market_buy_with_a_budget_fills_when_the_exact_costs_fit():
    """The fee slack of a two-lot fill (605 < 2 x 303) pays for the third lot:
    a check that reckoned 303 a lot would cancel this order."""
    m = btc_usd(taker_fee_ppm=7_777, quote_per_tick=3)
    run(m, Deposit.new(1, 1, "USD", 911), Deposit.new(2, 2, "BTC", 30_000))
    run(m, PlaceOrder.new("BTC-USD", 1, SELL, 100, 2, account=2),
        PlaceOrder.new("BTC-USD", 2, SELL, 101, 1, account=2))
    events = run(m, PlaceOrder.new("BTC-USD", 3, BUY, 0, 3, order_type=MARKET, tif=FOK, account=1,
                                   max_quote=911))
    assert [(t.price, t.qty) for t in of(events, Kind.TRADE)] == [(100, 2), (101, 1)]
    assert bal(m, 1, "USD") == (0, 0)
    m2 = btc_usd(taker_fee_ppm=7_777, quote_per_tick=3)
    run(m2, Deposit.new(1, 1, "USD", 910), Deposit.new(2, 2, "BTC", 30_000))
    run(m2, PlaceOrder.new("BTC-USD", 1, SELL, 100, 2, account=2),
        PlaceOrder.new("BTC-USD", 2, SELL, 101, 1, account=2))
    events = run(m2, PlaceOrder.new("BTC-USD", 3, BUY, 0, 3, order_type=MARKET, tif=FOK, account=1,
                                    max_quote=910))
    assert [(e.reason, e.cancelled_qty) for e in events] == [(CancelReason.FOK_UNFILLED, 3)]
    assert bal(m2, 1, "USD") == (910, 0)


def test_a_market_buy_in_a_risk_book_needs_a_budget_and_only_market_buys_take_one():
    m = btc_usd()
    run(m, Deposit.new(1, 1, "USD", 100))
    (rej,) = run(m, PlaceOrder.new("BTC-USD", 1, BUY, 0, 1, order_type=MARKET, tif=IOC, account=1))
    assert rej.reason == RejectReason.INVALID_BUDGET
    (rej,) = run(m, PlaceOrder.new("BTC-USD", 1, BUY, 10, 1, account=1, max_quote=50))
    assert rej.reason == RejectReason.INVALID_BUDGET


@pytest.mark.parametrize("kind", [Deposit, Withdraw])
def test_a_repeated_transfer_answers_with_its_first_outcome(kind):
    m = btc_usd()
    run(m, Deposit.new(100, 1, "USD", 50))
    first = run(m, kind.new(1, 1, "USD", 20))
    again = run(m, kind.new(1, 1, "USD", 20))
    assert of(first, Kind.TRANSFER_DONE)[0].duplicate is False
    assert [e[0] for e in again] == [Kind.TRANSFER_DONE] and again[0].duplicate is True
    assert bal(m, 1, "USD") == ((70 if kind is Deposit else 30), 0)
    (conflict,) = run(m, kind.new(1, 1, "USD", 21))
    assert conflict.reason == RejectReason.TRANSFER_CONFLICT


def test_a_refused_transfer_stays_refused_but_a_malformed_one_is_forgotten():
    m = btc_usd()
    (rej,) = run(m, Withdraw.new(5, 1, "USD", 10))
    assert rej.reason == RejectReason.INSUFFICIENT_FUNDS
    run(m, Deposit.new(6, 1, "USD", 100))
    (again,) = run(m, Withdraw.new(5, 1, "USD", 10))              # funds are there now; the id is spent
    assert again.reason == RejectReason.INSUFFICIENT_FUNDS and bal(m, 1, "USD") == (100, 0)
    (bad,) = run(m, Deposit.new(7, 1, "USD", -3))
    assert bad.reason == RejectReason.INVALID_AMOUNT
    run(m, Deposit.new(7, 1, "USD", 3))                           # the corrected body goes through
    assert bal(m, 1, "USD") == (103, 0)


def test_the_ledger_is_gap_free_and_carries_running_balances():
    m = btc_usd(maker_fee_ppm=1_000, taker_fee_ppm=2_000)
    events = run(m, Deposit.new(1, FEES, "USD", 10_000), Deposit.new(2, FEES, "BTC", 100_000),
                 PlaceOrder.new("BTC-USD", 1, SELL, 3_000, 4, account=FEES),    # the fee account trades too
                 PlaceOrder.new("BTC-USD", 2, BUY, 3_000, 3, account=FEES),
                 CancelOrder.new("BTC-USD", 1))
    ledger = of(events, Kind.BALANCE_CHANGED)
    assert [c.ledger_seq for c in ledger] == list(range(1, len(ledger) + 1))
    running: dict = {}
    for c in ledger:
        a, h = running.get((c.account, c.asset), (0, 0))
        running[(c.account, c.asset)] = (a + c.available_delta, h + c.held_delta)
        assert running[(c.account, c.asset)] == (c.available, c.held)
    for (account, asset), pair in running.items():
        assert bal(m, account, asset) == pair
    # a self-trade of the fee account creates nothing: the totals are the deposits
    assert m.accounts.totals() == {"USD": (10_000, 0), "BTC": (100_000, 0)}


def test_snapshot_round_trip_keeps_holds_and_transfers():
    m = btc_usd(taker_fee_ppm=2_000)
    run(m, Deposit.new(1, 1, "USD", 1_000), Withdraw.new(2, 1, "USD", 5_000),
        PlaceOrder.new("BTC-USD", 1, BUY, 100, 3, account=1))
    twin = Matcher.from_state(m.export_state())
    assert twin.state_hash() == m.state_hash()
    (again,) = run(twin, Withdraw.new(2, 1, "USD", 5_000))
    assert again.reason == RejectReason.INSUFFICIENT_FUNDS
    run(twin, CancelOrder.new("BTC-USD", 1))
    assert bal(twin, 1, "USD") == (1_000, 0)
