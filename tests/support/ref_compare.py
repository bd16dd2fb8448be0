"""Drive :class:`engine.core.Matcher` and the reference model side by side.

``step`` applies one command to both (and to a restored twin, if any) and
asserts they said the same; ``assert_same_state`` compares everything they
hold: sequence numbers, positions, books, resting orders in priority order,
balances, transfers, supply and the ledger's ``ledger_seq``; ``restored``
rebuilds a matcher from its exported state sent through msgpack, as a
snapshot file carries it.
"""

from __future__ import annotations

from typing import Any, Optional

import msgpack
from hypothesis import event
from hypothesis import strategies as st

from engine.core import AmendOrder, CancelOrder, CancelReason, Matcher, RejectReason
from tests.support.ref_book import RefEngine, event_key

__all__ = ["step", "assert_same_state", "restored", "describe", "aim_at_a_resting_order"]

BUY, SELL = 1, 2


def describe(key: tuple) -> str:
    if key[0] == "rejected":
        return f"rejected {RejectReason(key[-1]).name}"
    if key[0] == "cancelled":
        return f"cancelled {CancelReason(key[-1]).name}"
    if key[0] == "amended":
        return "amended, priority kept" if key[-1] else "amended, priority lost"
    return key[0]


def step(matcher: Matcher, ref: RefEngine, cmd, twin: Matcher | None = None) -> list:
    """Apply ``cmd`` to all; assert they said the same; return the matcher's events."""
    seq = matcher.last_seq + 1
    events = matcher.apply(seq, cmd)
    keys = [event_key(e) for e in events]
    assert keys == ref.apply(cmd), cmd
    for key in keys:        # --hypothesis-show-statistics shows the mix
        event(describe(key))
    matcher.check_invariants()
    ref.check_balances()
    if twin is not None:
        assert twin.apply(seq, cmd) == events, cmd
        twin.check_invariants()
    return events


def assert_same_state(matcher: Matcher, ref: RefEngine) -> None:
    assert (matcher.last_seq, matcher.match_sequence) == (ref.last_seq, ref.match_id)
    assert matcher.positions == ref.positions
    assert sorted(matcher.books) == sorted(ref.symbols)
    for symbol, book in matcher.books.items():
        assert book.tick_size == ref.symbols[symbol].tick_size
        for side in (BUY, SELL):
            assert book.depth(side) == ref.depth(symbol, side), (symbol, side)
        assert book.export_orders() == ref.export_orders(symbol), symbol
    acc = matcher.accounts
    assert acc.assets == ref.assets
    assert acc.balances == ref.export_balances()
    assert {tid: t[:5] for tid, t in acc.transfers.items()} == ref.transfers
    assert acc.supply == ref.supply
    assert acc.ledger_seq == ref.ledger_seq
    ref.check_balances()


def restored(matcher: Matcher) -> Matcher:
    """A matcher rebuilt from ``matcher``'s state sent through msgpack."""
    state = msgpack.unpackb(msgpack.packb(matcher.export_state()), strict_map_key=False)
    twin = Matcher.from_state(state)
    twin.check_invariants()
    assert twin.state_hash() == matcher.state_hash()
    assert twin.export_state() == matcher.export_state()
    return twin




def aim_at_a_resting_order(matcher: Matcher, data: Any, grow: int = 2) -> Optional[Any]:
    """A cancel or an amend of a live order drawn with ``data``
    (``st.data()``): down, same, up by ``grow`` lots, or moved up to three
    ticks; ``None`` when no order rests. Aiming at live orders makes
    priority-keeping amends, holds that shrink and grow, and cancels common."""
    live = [(s, i) for s, b in sorted(matcher.books.items()) for i in sorted(b.orders)]
    if not live:
        return None
    symbol, order_id = data.draw(st.sampled_from(live))
    order = matcher.books[symbol].orders[order_id]
    choice = data.draw(st.sampled_from(["down", "same", "up", "move", "cancel"]))
    if choice == "cancel":
        return CancelOrder.new(symbol, order_id)
    tick = matcher.books[symbol].tick_size
    price = order.price + (data.draw(st.integers(-3, 3)) * tick if choice == "move" else 0)
    qty = {"down": max(1, order.qty - 1), "same": order.qty, "up": order.qty + grow, "move": order.qty}[choice]
    return AmendOrder.new(symbol, order_id, max(price, tick), qty)
