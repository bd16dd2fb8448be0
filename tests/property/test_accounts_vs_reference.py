"""Accounts and pre-trade risk against the reference model.

A hypothesis state machine funds four accounts in two assets and trades them
in four books: ``R`` (risk on, odd lot and tick values, fees that round),
``Z`` (risk on, no fees, fee account 9), ``N`` (assets and fees, risk off)
and ``P`` (a book of market data). It sends deposits and withdrawals from a
small pool of transfer ids (so repeats, conflicts and remembered rejections
happen), places of every type with and without a budget, amends and cancels
that move holds, new assets and symbols with random (and garbage) specs, and
commands with one field replaced by garbage. The account that collects fees
in ``R`` also trades in it.

After every step it compares the events (each ``BalanceChanged`` with its
``ledger_seq`` and running balances), and the whole state: balances,
transfers, supply and the books; both the matcher's ``check_balances()`` and
the reference's own invariants (no negative balance, held equals what open
orders need, per asset the balances sum to deposits minus withdrawals) run.
A "snapshot" step rebuilds a twin from ``export_state()`` through msgpack;
from then on the twin must say and hold the same.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from engine.core import (AddAsset, AddSymbol, AmendOrder, CancelOrder, Deposit, Matcher, PlaceOrder,
                         Withdraw)
from tests.support.ref_book import RefEngine
from tests.support.ref_compare import aim_at_a_resting_order, assert_same_state, restored, step

SETTINGS = settings(max_examples=100, stateful_step_count=60, deadline=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow])

BUY, SELL = 1, 2
ACCOUNTS = st.integers(0, 3)
TRANSFER_IDS = st.integers(1, 10)
ORDER_IDS = st.integers(1, 8)
BOOKS = {
    "R": dict(base="B", quote="Q", quote_per_tick=3, base_per_lot=5, maker_fee_ppm=3_333,
              taker_fee_ppm=7_777, risk=True, fee_account=0),
    "Z": dict(base="B", quote="Q", risk=True, fee_account=9),
    "N": dict(base="B", quote="Q", quote_per_tick=2, maker_fee_ppm=1_000, taker_fee_ppm=2_000),
    "P": {},
}

garbage = st.one_of(
    st.text(max_size=3), st.floats(allow_nan=False), st.booleans(), st.none(),
    st.integers(2**63, 2**66), st.integers(-(2**66), -1), st.integers(-2, 4), st.just([1]),
)


@st.composite
def transfers(draw):
    cls = draw(st.sampled_from([Deposit, Deposit, Withdraw]))
    amount = draw(st.one_of(st.integers(1, 3_000), st.integers(1, 3_000), st.sampled_from([0, 2**63 - 1])))
    asset = draw(st.sampled_from(["B", "Q", "Q", "X"]))
    return cls.new(draw(TRANSFER_IDS), draw(ACCOUNTS), asset, amount)


@st.composite
def places(draw):
    symbol = draw(st.sampled_from(["R", "R", "R", "Z", "Z", "N", "P", "C"]))
    side = draw(st.sampled_from([BUY, SELL]))
    market = draw(st.integers(0, 4)) == 0
    tif = draw(st.sampled_from([2, 3])) if market else draw(st.sampled_from([1, 1, 1, 2, 3]))
    budget = 0
    if market and side == BUY and draw(st.integers(0, 5)):
        budget = draw(st.integers(1, 6_000))
    return PlaceOrder.new(symbol, draw(ORDER_IDS), side, 0 if market else draw(st.integers(97, 103)),
                          draw(st.integers(1, 12)), order_type=2 if market else 1, tif=tif,
                          post_only=draw(st.integers(0, 12)) == 0, account=draw(ACCOUNTS), max_quote=budget)


@st.composite
def amends(draw):
    return AmendOrder.new(draw(st.sampled_from(["R", "Z", "N"])), draw(ORDER_IDS), draw(st.integers(97, 103)),
                          draw(st.integers(1, 14)))


@st.composite
def add_symbols(draw):
    fees = sorted([draw(st.integers(0, 10**6)), draw(st.integers(0, 10**6))])
    return AddSymbol.new(draw(st.sampled_from(["R", "S", "T"])), draw(st.sampled_from([1, 2])),
                         base=draw(st.sampled_from(["B", "Q", "X", None])),
                         quote=draw(st.sampled_from(["Q", "B", None])),
                         quote_per_tick=draw(st.integers(1, 5)), base_per_lot=draw(st.integers(1, 5)),
                         maker_fee_ppm=fees[0], taker_fee_ppm=fees[1] if draw(st.integers(0, 9)) else 0,
                         risk=draw(st.booleans()), fee_account=draw(ACCOUNTS))


@st.composite
def add_assets(draw):
    return AddAsset.new(draw(st.sampled_from(["X", "B", "", "Y" * 17])), draw(st.sampled_from([0, 2, 18, 19])))


@st.composite
def malformed(draw):
    """A transfer, place or new symbol with one field replaced by garbage."""
    cmd = draw(st.one_of(transfers(), places(), add_symbols()))
    name = draw(st.sampled_from(cmd._fields[1:]))
    return cmd._replace(**{name: draw(garbage)})


@st.composite
def any_command(draw):
    roll = draw(st.integers(0, 99))
    if roll < 45:
        return draw(places())
    if roll < 65:
        return draw(transfers())
    if roll < 75:
        return draw(amends())
    if roll < 82:
        return CancelOrder.new(draw(st.sampled_from(["R", "Z", "N"])), draw(ORDER_IDS))
    if roll < 87:
        return draw(add_symbols())
    if roll < 90:
        return draw(add_assets())
    return draw(malformed())


commands = any_command()


def new_pair() -> tuple:
    matcher, ref = Matcher(), RefEngine()
    for asset in ("B", "Q"):
        step(matcher, ref, AddAsset.new(asset, 2))
    for symbol, spec in BOOKS.items():
        step(matcher, ref, AddSymbol.new(symbol, 1, **spec))
    for account in range(4):     # seed funds; transfer ids 101.. stay out of the random pool
        step(matcher, ref, Deposit.new(101 + 2 * account, account, "B", 400))
        step(matcher, ref, Deposit.new(102 + 2 * account, account, "Q", 20_000))
    return matcher, ref


class AccountsVsReference(RuleBasedStateMachine):
    """Matcher and reference take the same commands and must agree after each."""

    @initialize()
    def open_books(self):
        self.matcher, self.ref = new_pair()
        self.twin = None

    @rule(cmd=commands)
    def command(self, cmd):
        step(self.matcher, self.ref, cmd, self.twin)

    @rule(cmd=places())
    def place(self, cmd):
        step(self.matcher, self.ref, cmd, self.twin)

    @rule(data=st.data())
    def amend_or_cancel_a_resting_order(self, data):
        """Aim at a live order, so priority-keeping amends, holds that move and cancels happen often."""
        cmd = aim_at_a_resting_order(self.matcher, data, grow=3)
        if cmd is not None:
            step(self.matcher, self.ref, cmd, self.twin)

    @rule()
    def snapshot(self):
        self.twin = restored(self.matcher)

    @invariant()
    def same_state(self):
        assert_same_state(self.matcher, self.ref)
        if self.twin is not None:
            assert self.twin.state_hash() == self.matcher.state_hash()


TestAccountsVsReference = AccountsVsReference.TestCase
TestAccountsVsReference.settings = SETTINGS


@SETTINGS
@given(st.lists(commands, min_size=10, max_size=80))
def test_replay_gives_same_ledger_and_state_hash(cmds):
    first, ref = new_pair()
    second, _ = new_pair()
    events = [step(first, ref, cmd) for cmd in cmds]
    assert [second.apply(second.last_seq + 1, cmd) for cmd in cmds] == events
    assert second.state_hash() == first.state_hash()
    assert_same_state(first, ref)
