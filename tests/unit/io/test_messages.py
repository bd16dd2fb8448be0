"""The Kafka wire formats of engine/io/MESSAGES.md."""

from __future__ import annotations

import json

import msgpack
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from engine.core import Matcher
from engine.core.commands import BadInput, PlaceOrder
from engine.core.events import Trade
from engine.io.messages import decode_order, decode_trade, encode_order, encode_trade, order_from_command, trade_message
from engine.io.synthetic import SyntheticSource


def test_every_synthetic_command_survives_json_and_msgpack():
    for cmd in SyntheticSource(3000, 3, symbol="SYN").commands(Matcher(), None):
        order = order_from_command(cmd)
        for fmt in ("json", "msgpack"):
            assert decode_order(encode_order(order, fmt), source=cmd.source, offset=cmd.source_pos,
                                ts_ns=-1) == cmd


def test_defaults_and_the_record_timestamp():
    cmd = decode_order(b'{"type":"place","symbol":"X","order_id":1,"side":"sell","price":10,"qty":2}',
                       source="kafka:orders:3", offset=41, ts_ns=123)
    assert cmd == PlaceOrder.new("X", 1, 2, 10, 2, ts_ns=123, source="kafka:orders:3", source_pos=41)
    market = decode_order(b'{"type":"place","symbol":"X","order_id":2,"side":"buy","order_type":"market","qty":2}',
                          source="s", offset=0, ts_ns=0)
    assert (market.order_type, market.tif, market.price) == (2, 2, 0)


@given(st.binary(max_size=300))
@settings(max_examples=300, deadline=None)
def test_any_bytes_give_a_command_never_an_exception(raw):
    cmd = decode_order(raw, source="kafka:o:0", offset=7, ts_ns=1)
    assert cmd.source == "kafka:o:0" and cmd.source_pos == 7


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                           max_leaves=6)
field_names = st.sampled_from(["type", "symbol", "order_id", "side", "qty", "price", "order_type", "tif",
                               "post_only", "account", "ts_ns", "tick_size", "other"])


@given(st.dictionaries(field_names, json_values, max_size=10),
       st.sampled_from(["place", "cancel", "amend", "add_symbol", "bogus"]), st.sampled_from(["json", "msgpack"]))
@settings(max_examples=400, deadline=None)
def test_any_object_gives_a_command_the_matcher_can_judge(obj, kind, fmt):
    obj["type"] = kind
    try:
        raw = encode_order(obj, fmt)
    except (OverflowError, TypeError, ValueError):
        assume(False)   # msgpack holds no integer beyond 64 bits: such a value cannot be sent
    cmd = decode_order(raw, source="kafka:o:0", offset=1, ts_ns=0)
    m = Matcher()
    m.apply(1, m_cmd := cmd)   # never raises: a reject at worst
    assert m.last_seq >= 1 and m_cmd is cmd


def test_what_is_not_an_order_becomes_bad_input_with_a_reason():
    for raw, why in ((b"", "empty"), (b"\x00\x01", "first byte"), (b"[1]", "not a JSON object"),
                     (b'{"type": 1}', "unknown type"), (b'{"type":"cancel","symbol":"X"}', "missing field(s) order_id"),
                     (msgpack.packb({"type": "cancel", "symbol": "X", "order_id": 1, "x": 2}), "unknown field(s) x")):
        cmd = decode_order(raw, source="s", offset=0, ts_ns=0)
        assert isinstance(cmd, BadInput) and why in cmd.error, (raw, cmd)


@given(st.integers(1, 2**63 - 1), st.integers(0, 2**62), st.text(min_size=1, max_size=10), st.integers(1, 2**40),
       st.integers(1, 2**40), st.sampled_from([1, 2]), st.integers(0, 2**63 - 1), st.one_of(st.none(), st.integers(0, 2**62)))
def test_fast_trade_encoding_is_exactly_json_dumps(match_id, ts, symbol, price, qty, side, account, pos):
    trade = Trade(64, match_id, ts, symbol, price, qty, side, 5, 6, account, 0, 9, 3)
    source = None if pos is None else "kafka:orders:0"
    data = encode_trade(10, trade, source, pos)
    assert data == json.dumps(trade_message(10, trade, source, pos), separators=(",", ":")).encode()
    assert decode_trade(data)["match_id"] == match_id
