"""engine.io.names: a kind's and a reason's name beside its code, from the
enum the kind of event says; an unknown code named by its number."""

from __future__ import annotations

import json

import pytest

from engine.core import (KIND_NAMES, AddAsset, AddSymbol, CancelReason, Deposit, Kind, LedgerReason, Matcher,
                         OrderCancelled, OrderRejected, PlaceOrder, RejectReason, to_json)
from engine.io.names import REASON_ENUMS, event_json, kind_name, reason_code, reason_name

BUY, SELL, IOC = 1, 2, 2


def test_each_reason_is_named_from_the_enum_of_its_kind_of_event():
    assert reason_name(Kind.REJECTED, 300) == "POST_ONLY_WOULD_TAKE"
    assert reason_name(Kind.CANCELLED, 2) == "IOC_REMAINDER"
    assert reason_name(Kind.BALANCE_CHANGED, 5) == "FILL"
    # the same number means different things in different enums
    assert [reason_name(k, 1) for k in (Kind.CANCELLED, Kind.BALANCE_CHANGED)] == ["USER", "DEPOSIT"]
    for kind, enum in REASON_ENUMS.items():
        assert all(reason_name(kind, member.value) == member.name for member in enum)
    assert set(REASON_ENUMS.values()) == {RejectReason, CancelReason, LedgerReason}


@pytest.mark.parametrize("kind, code", [(Kind.REJECTED, 999), (Kind.REJECTED, 1), (Kind.CANCELLED, 0),
                                        (Kind.BALANCE_CHANGED, 77), (Kind.REJECTED, -3)])
def test_an_unknown_code_is_named_by_its_number(kind, code):
    assert reason_name(kind, code) == str(code)


def test_a_value_that_is_no_code_is_named_as_it_is():
    assert reason_name(Kind.REJECTED, None) == "None"
    assert reason_name(Kind.REJECTED, True) == "True"      # a bool is not the code 1
    assert reason_name(Kind.REJECTED, "300") == "300"


def test_a_kind_without_a_reason_field_is_refused():
    for kind in (Kind.TRADE, Kind.PLACE, 12345):
        with pytest.raises(ValueError, match="carry no reason"):
            reason_name(kind, 1)
        with pytest.raises(ValueError, match="carry no reason"):
            reason_code(kind, 1)


def test_kind_names_are_the_type_names_and_unknown_kinds_their_number():
    assert kind_name(65) == "rejected" and kind_name(Kind.TRADE) == "trade"
    assert all(kind_name(k) == name for k, name in KIND_NAMES.items())
    assert kind_name(99) == "99" and kind_name(None) == "None"


@pytest.mark.parametrize("value, code", [(2, 2), ("2", 2), (2.0, 2), ("ioc_remainder", 2), ("IOC_REMAINDER", 2),
                                         (" user ", 1), (None, None), (float("nan"), None), (2.5, None),
                                         ("no_such_reason", None), (True, None), (9, 9)])
def test_reason_code_reads_a_code_or_a_name(value, code):
    assert reason_code(Kind.CANCELLED, value) == code


def _run(m: Matcher, *cmds) -> list:
    out: list = []
    for cmd in cmds:
        seq = m.last_seq + 1
        events = m.apply(seq, cmd)
        out += [(seq, e) for e in events]
    m.check_invariants()
    return out


def test_event_json_of_real_events_keeps_every_field_and_names_kind_and_reason():
    """A funded book: a reject (insufficient funds), a fill, an IOC remainder
    cancelled, and the balance changes (deposit, hold, fill, release) they make."""
    m = Matcher()
    events = _run(
        m, AddAsset.new("BTC", 8), AddAsset.new("USD", 2),
        AddSymbol.new("BTC-USD", 1, base="BTC", quote="USD", base_per_lot=10_000, risk=True),
        Deposit.new(1, 1, "BTC", 20_000), Deposit.new(2, 2, "USD", 1_000),
        PlaceOrder.new("BTC-USD", 10, SELL, 100, 2, account=1),
        PlaceOrder.new("BTC-USD", 20, BUY, 100, 50, account=2),           # needs 5,000: rejected
        PlaceOrder.new("BTC-USD", 21, BUY, 100, 5, tif=IOC, account=2))   # fills 2, cancels 3
    seen: dict = {}
    for seq, e in events:
        out = event_json(seq, e)
        assert json.loads(json.dumps(out)) == out
        base = to_json(seq, e)
        assert {k: v for k, v in out.items() if k not in ("kind", "reason_name", "kind_of_name")} == base
        assert list(out)[:3] == ["seq", "kind", "type"] and out["kind"] == e[0]
        assert out["type"] == KIND_NAMES[e[0]]
        if "reason" in out:
            keys = list(out)
            assert keys[keys.index("reason") + 1] == "reason_name"
            seen.setdefault(e[0], set()).add(out["reason_name"])
        else:
            assert "reason_name" not in out
        if e[0] == Kind.TRANSFER_DONE:
            assert out["kind_of"] == Kind.DEPOSIT and out["kind_of_name"] == "deposit"
    assert seen[Kind.REJECTED] == {"INSUFFICIENT_FUNDS"}
    assert seen[Kind.CANCELLED] == {"IOC_REMAINDER"}
    assert seen[Kind.BALANCE_CHANGED] >= {"DEPOSIT", "HOLD", "FILL", "RELEASE"}


def test_event_json_names_an_unknown_reason_by_its_number():
    out = event_json(7, OrderRejected(Kind.REJECTED.value, 6, 1, 999, "from a newer engine"))
    assert (out["reason"], out["reason_name"]) == (999, "999")
    out = event_json(8, OrderCancelled(Kind.CANCELLED.value, 1, 5, 42))
    assert (out["kind"], out["type"], out["reason"], out["reason_name"]) == (67, "cancelled", 42, "42")
