"""The matcher against the reference model (``tests/support/ref_book.py``).

A hypothesis state machine sends random commands of every type (places of
every order type, cancels, amends, new symbols, bad input, commands with one
garbage field) over two symbols and a narrow price band, so orders cross
often and ids collide. After every step it compares the events (trades field
by field, rejects with their reason, rests, cancels, amends), both sides'
depth and the resting orders in priority order, and runs
``check_invariants()``. A "snapshot" step rebuilds a twin matcher from
``export_state()`` (through msgpack, as a snapshot file would carry it); from
then on the twin gets every command too and must say and hold the same.

On a failure hypothesis prints the shortest command sequence it found and a
``@reproduce_failure`` blob; ``--hypothesis-seed=N`` replays a run.
Example counts are kept modest (``SETTINGS``).
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from engine.core import AddSymbol, AmendOrder, BadInput, CancelOrder, Matcher, PlaceOrder
from tests.support.ref_book import RefEngine
from tests.support.ref_compare import aim_at_a_resting_order, assert_same_state, restored, step

# Local settings (a module must not change the session's profile). Modest
# counts keep the suite fast; raise them here for a deep run.
SETTINGS = settings(max_examples=100, stateful_step_count=50, deadline=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow])

BUY, SELL = 1, 2
SYMBOLS = {"A": 1, "B": 2}           # symbol -> tick size; "C" is unknown until added
ORDER_IDS = st.integers(1, 8)        # a small pool: duplicates, cancels and amends hit

garbage = st.one_of(
    st.text(max_size=3), st.floats(allow_nan=True), st.booleans(), st.none(),
    st.integers(2**63, 2**70), st.integers(-(2**70), -1), st.integers(-2, 4),
    st.lists(st.integers(0, 3), max_size=2), st.dictionaries(st.text(max_size=1), st.integers(0, 3), max_size=1),
    st.binary(max_size=2),
)


@st.composite
def symbols(draw):
    return draw(st.sampled_from(["A"] * 5 + ["B"] * 4 + ["C"]))


@st.composite
def prices(draw, symbol):
    """Prices in a band of 5 ticks around 100; off tick now and then in "B"."""
    price = draw(st.integers(98, 102)) * SYMBOLS.get(symbol, 1)
    if draw(st.integers(0, 9)) == 0:
        price += draw(st.sampled_from([1, -1, -price]))      # off tick, or 0
    return price


@st.composite
def envelope(draw):
    """``ts_ns`` and the source position every command carries."""
    ts_ns = draw(st.integers(0, 10**6))
    if draw(st.booleans()):
        return {"ts_ns": ts_ns, "source": draw(st.sampled_from(["s1", "s2"])),
                "source_pos": draw(st.integers(0, 100))}
    return {"ts_ns": ts_ns}


@st.composite
def places(draw):
    symbol = draw(symbols())
    market = draw(st.integers(0, 5)) == 0
    tif = draw(st.sampled_from([1, 1, 1, 1, 2, 3]))
    if market and draw(st.integers(0, 4)):
        tif = draw(st.sampled_from([2, 3]))
    return PlaceOrder.new(
        symbol, draw(ORDER_IDS), draw(st.sampled_from([BUY, SELL])),
        0 if market else draw(prices(symbol)), draw(st.integers(1, 12)),
        order_type=2 if market else 1, tif=tif, post_only=draw(st.integers(0, 9)) == 0,
        account=draw(st.integers(0, 3)), **draw(envelope()))


@st.composite
def cancels(draw):
    return CancelOrder.new(draw(symbols()), draw(ORDER_IDS), **draw(envelope()))


@st.composite
def amends(draw):
    symbol = draw(symbols())
    return AmendOrder.new(symbol, draw(ORDER_IDS), draw(prices(symbol)), draw(st.integers(1, 12)),
                          **draw(envelope()))


@st.composite
def add_symbols(draw):
    return AddSymbol.new(draw(st.sampled_from(["A", "C", "", "D" * 33])),
                         draw(st.sampled_from([1, 2, 0])), **draw(envelope()))


@st.composite
def bad_inputs(draw):
    return BadInput.new(draw(st.binary(max_size=4)), "cannot parse", **draw(envelope()))


@st.composite
def malformed(draw):
    """A place, cancel or amend with one field replaced by garbage."""
    cmd = draw(st.one_of(places(), cancels(), amends()))
    field = draw(st.sampled_from(cmd._fields))
    return cmd._replace(**{field: draw(garbage)})


@st.composite
def any_command(draw):
    """Mostly places, so books fill up and cross; every other kind now and then."""
    roll = draw(st.integers(0, 99))
    if roll < 60:
        return draw(places())
    if roll < 72:
        return draw(cancels())
    if roll < 87:
        return draw(amends())
    if roll < 91:
        return draw(add_symbols())
    if roll < 94:
        return draw(bad_inputs())
    return draw(malformed())


commands = any_command()


def new_pair() -> tuple:
    matcher, ref = Matcher(), RefEngine()
    for symbol, tick_size in SYMBOLS.items():
        step(matcher, ref, AddSymbol.new(symbol, tick_size))
    return matcher, ref


class MatcherVsReference(RuleBasedStateMachine):
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
        cmd = aim_at_a_resting_order(self.matcher, data, grow=2)
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
            assert self.twin.positions == self.matcher.positions


TestMatcherVsReference = MatcherVsReference.TestCase
TestMatcherVsReference.settings = SETTINGS


@SETTINGS
@given(st.lists(commands, min_size=10, max_size=80))
def test_replay_gives_same_events_and_state_hash(cmds):
    first, ref = new_pair()
    second, _ = new_pair()
    events = [step(first, ref, cmd) for cmd in cmds]
    assert [second.apply(second.last_seq + 1, cmd) for cmd in cmds] == events
    assert second.state_hash() == first.state_hash()
    assert_same_state(first, ref)


@SETTINGS
@given(st.lists(commands, min_size=5, max_size=40), st.lists(commands, min_size=5, max_size=40))
def test_restored_state_has_same_hash_and_behaves_identically(before, after):
    matcher, ref = new_pair()
    for cmd in before:
        step(matcher, ref, cmd)
    twin = restored(matcher)
    for cmd in after:
        step(matcher, ref, cmd, twin)
    assert twin.state_hash() == matcher.state_hash()
    assert list(twin.trades) == list(matcher.trades)
    assert_same_state(twin, ref)
