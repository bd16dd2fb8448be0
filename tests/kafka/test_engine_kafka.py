"""`evengine start --kafka` against a real broker: orders in exactly once, trades out after the fsync."""

from __future__ import annotations

import json
import random
import threading
import time

import msgpack
import pytest

from engine.core.types import RejectReason
from engine.io.messages import decode_trade, encode_order
from recovery.time_travel import open_data_dir
from tests.support.kafka import (EngineProcess, produce, read_topic, synthetic_orders, trade_history_equals_wal,
                                 wal_trade_messages)


def published(boot: str, topic: str) -> list[dict]:
    return [decode_trade(r.value) for r in read_topic(boot, topic)]


def assert_trades_topic_matches_wal(boot: str, topic: str, data_dir) -> None:
    """Every WAL trade is on the topic at least once, with the same content;
    nothing on the topic is not in the WAL; keys are the symbols."""
    wal = wal_trade_messages(data_dir)
    recs = read_topic(boot, topic)
    seen = {}
    for r in recs:
        msg = decode_trade(r.value)
        assert r.key == msg["symbol"].encode()
        assert wal.get(msg["match_id"]) == msg, msg
        seen[msg["match_id"]] = msg
    assert sorted(seen) == sorted(wal) == list(range(1, len(wal) + 1))


def test_orders_in_trades_out_match_the_wal(tmp_path, kafka_bootstrap, make_topics):
    t = make_topics("orders", "trades")
    values = synthetic_orders(3000, seed=7)
    offsets = produce(kafka_bootstrap, t["orders"], values)
    eng = EngineProcess(tmp_path / "d", kafka_bootstrap, t["orders"], t["trades"])
    eng.wait_position(f"kafka:{t['orders']}:0", offsets[-1])
    summary = eng.stop()
    assert summary["kafka"]["orders"] == len(values)
    assert summary["trades"] > 100
    assert_trades_topic_matches_wal(kafka_bootstrap, t["trades"], tmp_path / "d")
    # each record became exactly one command, its offset logged
    cmds = [obj for _, obj in open_data_dir(str(tmp_path / "d")).events() if obj[0] < 64]
    assert [c.source_pos for c in cmds] == offsets
    # the published watermark reached the last trade
    doc = json.loads((tmp_path / "d" / "kafka-published.json").read_text())
    assert doc["match_id"] == summary["match_sequence"]


def test_restart_resumes_after_the_logged_offset_and_applies_nothing_twice(tmp_path, kafka_bootstrap, make_topics):
    t = make_topics("orders", "trades")
    values = synthetic_orders(2000, seed=8)
    first, rest = values[:1200], values[1200:]
    offs = produce(kafka_bootstrap, t["orders"], first)
    eng = EngineProcess(tmp_path / "d", kafka_bootstrap, t["orders"], t["trades"])
    eng.wait_position(f"kafka:{t['orders']}:0", offs[-1])
    eng.stop()
    offs += produce(kafka_bootstrap, t["orders"], rest)
    eng = EngineProcess(tmp_path / "d", kafka_bootstrap, t["orders"], t["trades"])
    st = eng.wait_position(f"kafka:{t['orders']}:0", offs[-1])
    summary = eng.stop()
    assert summary["kafka"]["orders"] == len(rest)
    cmds = [obj.source_pos for _, obj in open_data_dir(str(tmp_path / "d")).events() if obj[0] < 64]
    assert cmds == offs
    # a clean replay of the whole topic in one go gives the same state
    clean = EngineProcess(tmp_path / "clean", kafka_bootstrap, t["orders"], t["trades"] + "-clean")
    clean.wait_position(f"kafka:{t['orders']}:0", offs[-1])
    assert clean.stop()["state_hash"] == summary["state_hash"]
    assert st["last_seq"] == summary["last_seq"]
    assert_trades_topic_matches_wal(kafka_bootstrap, t["trades"], tmp_path / "d")


def test_malformed_messages_are_rejected_with_a_reason_and_the_engine_goes_on(tmp_path, kafka_bootstrap, make_topics):
    t = make_topics("orders", "trades")
    good = [encode_order({"type": "add_symbol", "symbol": "X", "tick_size": 5}),
            encode_order({"type": "place", "symbol": "X", "order_id": 1, "side": "sell", "price": 100, "qty": 10})]
    bad = [
        (b"\xff\xfe not an order", RejectReason.MALFORMED),
        (b"[1, 2, 3]", RejectReason.MALFORMED),                       # JSON, not an object
        (b'{"type": "place", "symbol": "X"', RejectReason.MALFORMED),  # truncated JSON
        (b"", RejectReason.MALFORMED),
        (msgpack.packb({"type": "launch", "symbol": "X"}), RejectReason.MALFORMED),
        (encode_order({"type": "place", "symbol": "X", "order_id": 2, "side": "buy", "qty": 1}),
         RejectReason.INVALID_PRICE),                                  # a limit without price
        (encode_order({"type": "place", "symbol": "X", "order_id": 3, "side": "buy", "price": 100,
                       "qty": 1, "colour": "red"}), RejectReason.MALFORMED),
        (encode_order({"type": "place", "symbol": "X", "order_id": 4, "side": "long", "price": 100,
                       "qty": 1}), RejectReason.INVALID_SIDE),
        (encode_order({"type": "place", "symbol": "X", "order_id": 5, "side": "buy", "price": 100,
                       "qty": -3}), RejectReason.INVALID_QTY),
        (encode_order({"type": "place", "symbol": "X", "order_id": 6, "side": "buy", "price": 101,
                       "qty": 1}), RejectReason.PRICE_OFF_TICK),
        (encode_order({"type": "place", "symbol": "X", "order_id": 7, "side": "buy", "price": 2 ** 80,
                       "qty": 1}), RejectReason.INVALID_PRICE),        # beyond 64 bits: parsed as a float
        (msgpack.packb({"type": "place", "symbol": "X", "order_id": 2 ** 64 - 1, "side": "buy", "price": 100,
                        "qty": 1}), RejectReason.INVALID_ORDER_ID),    # a uint64 beyond int64
        (encode_order({"type": "place", "symbol": "NOPE", "order_id": 8, "side": "buy", "price": 100,
                       "qty": 1}), RejectReason.UNKNOWN_SYMBOL),
        (encode_order({"type": "cancel", "symbol": "X", "order_id": 999}), RejectReason.UNKNOWN_ORDER),
    ]
    after = [encode_order({"type": "place", "symbol": "X", "order_id": 10, "side": "buy", "price": 100, "qty": 4})]
    offs = produce(kafka_bootstrap, t["orders"], good + [v for v, _ in bad] + after)
    eng = EngineProcess(tmp_path / "d", kafka_bootstrap, t["orders"], t["trades"])
    eng.wait_position(f"kafka:{t['orders']}:0", offs[-1])
    eng.stop()
    events = list(open_data_dir(str(tmp_path / "d")).events())
    by_offset = {}
    for i, (seq, obj) in enumerate(events):
        if obj[0] < 64:
            nxt = events[i + 1][1] if i + 1 < len(events) else None
            by_offset[obj.source_pos] = (obj, nxt)
    for (value, reason), off in zip(bad, offs[len(good):len(good) + len(bad)]):
        cmd, nxt = by_offset[off]
        assert nxt is not None and nxt[0] == 65 and nxt.reason == reason, (value, cmd, nxt)
        assert nxt.detail
    # the engine went on: the last order traded with the first
    (trade,) = published(kafka_bootstrap, t["trades"])
    assert (trade["maker_order_id"], trade["taker_order_id"], trade["qty"]) == (1, 10, 4)
    assert trade["input"] == {"source": f"kafka:{t['orders']}:0", "offset": offs[-1]}


@pytest.mark.slow
def test_sigkill_while_orders_stream_in_applies_each_order_exactly_once(tmp_path, kafka_bootstrap, make_topics):
    """At least 10 SIGKILLs at random moments while a producer streams orders
    in; every restart resumes after its logged offset. In the end the state
    equals a clean replay of the topic, every trade is on `trades`."""
    t = make_topics("orders", "trades")
    rng = random.Random(20261122)
    values = synthetic_orders(30_000, seed=9)
    offsets: list[int] = []
    done = threading.Event()

    def stream() -> None:
        for i in range(0, len(values), 500):
            offsets.extend(produce(kafka_bootstrap, t["orders"], values[i:i + 500]))
            time.sleep(0.05)
        done.set()
    producer = threading.Thread(target=stream, daemon=True)
    producer.start()
    data = tmp_path / "d"
    kills = 0
    logs = []
    while kills < 12:
        eng = EngineProcess(data, kafka_bootstrap, t["orders"], t["trades"],
                            "--snapshot-every", str(rng.choice([0, 500, 3000])))
        time.sleep(rng.uniform(0.05, 0.8))
        logs.append(eng.kill())
        kills += 1
    producer.join(timeout=300)
    # the kills landed mid-stream: restarts resumed after logged offsets and
    # published again trades the killed engine may not have got out
    assert sum("resuming after logged offset" in e for e in logs) >= 8
    assert any("republishing" in e for e in logs)
    assert done.is_set()
    eng = EngineProcess(data, kafka_bootstrap, t["orders"], t["trades"])
    eng.wait_position(f"kafka:{t['orders']}:0", offsets[-1], timeout_s=120)
    summary = eng.stop()
    cmds = [obj.source_pos for _, obj in open_data_dir(str(data)).events() if obj[0] < 64]
    assert cmds == sorted(offsets) == list(range(len(values)))     # each once, none skipped
    clean = EngineProcess(tmp_path / "clean", kafka_bootstrap, t["orders"], t["trades"] + "-clean")
    clean.wait_position(f"kafka:{t['orders']}:0", offsets[-1], timeout_s=120)
    assert clean.stop()["state_hash"] == summary["state_hash"]
    assert_trades_topic_matches_wal(kafka_bootstrap, t["trades"], data)
    # repeats on `trades` (republished after kills) are stored once
    repeats = len(read_topic(kafka_bootstrap, t["trades"])) - summary["match_sequence"]
    assert repeats > 0
    n = trade_history_equals_wal(kafka_bootstrap, t["trades"], tmp_path / "th.sqlite", data, tmp_path / "th.log")
    assert n == summary["match_sequence"]
