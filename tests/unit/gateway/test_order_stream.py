"""``WS /ws/orders`` against a real engine served by a real uvicorn: many
orders in flight on one connection, each answered once durable, in order,
with the same answers ``POST /orders`` gives; bad messages answered 422 and
the connection kept; a token closes an unauthenticated handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest
import websockets

from recovery.time_travel import open_data_dir
from tests.unit.gateway.test_gateway import DEADLINE_S, gateway, post_ok


def url(gw) -> str:
    return f"ws://127.0.0.1:{gw.server.port}/ws/orders"


def place(i: int, side: str, price: int, qty: int = 1, **kw) -> dict:
    return {"op": "place", "ref": i, "symbol": "AAA", "order_id": i, "side": side, "price": price, "qty": qty, **kw}


@contextlib.asynccontextmanager
async def stream(tmp_path, tick_size: int = 1, **kw):
    """An engine with book AAA, its gateway on a real uvicorn, one ``/ws/orders`` client."""
    async with gateway(tmp_path, real_server=True, **kw) as gw:
        await post_ok(gw, "/symbols", {"symbol": "AAA", "tick_size": tick_size})
        async with websockets.connect(url(gw)) as ws:
            yield gw, ws


async def recv(ws):
    return json.loads(await asyncio.wait_for(ws.recv(), DEADLINE_S))


def test_a_stream_of_pipelined_orders_is_answered_in_order_each_after_its_fsync(tmp_path):
    async def main():
        async with stream(tmp_path) as (gw, ws):
            wal = gw.engine.wal
            # 300 messages sent before any answer is read: single objects and arrays mixed
            sent: list = []
            for i in range(1, 201):
                msg = place(i, "buy" if i % 2 else "sell", 100 if i % 2 else 101)
                sent.append([msg["ref"]])
                await ws.send(json.dumps(msg))
            batch = [place(i, "sell", 100, qty=1) for i in range(1001, 1101)]   # takes 100 resting bids
            sent.append([m["ref"] for m in batch])
            await ws.send(json.dumps(batch))
            answers = []
            for expect in sent:
                got = await recv(ws)
                durable = wal.durable_seq
                got = [got] if isinstance(got, dict) else got
                assert [a["ref"] for a in got] == expect
                for a in got:
                    assert a["status"] == 200, a
                    assert durable >= max([a["body"]["seq"]] + [f["seq"] for f in a["body"]["fills"]])
                answers.extend(got)
            seqs = [a["body"]["seq"] for a in answers]
            assert seqs == sorted(seqs)          # applied in the order they came in
            fills = [f for a in answers[200:] for f in a["body"]["fills"]]
            assert len(fills) == 100 and [a["body"]["status"] for a in answers[200:]] == ["filled"] * 100
            assert [f["maker_order_id"] for f in fills] == list(range(1, 201, 2))   # time priority
            # what was answered is what the WAL holds
            h = open_data_dir(gw.data_dir)
            placed = [e.order_id for _, e in h.events() if type(e).__name__ == "PlaceOrder"]
            assert placed == list(range(1, 201)) + list(range(1001, 1101))
    asyncio.run(main())


def test_stream_answers_match_the_http_routes_cancel_amend_and_rejects(tmp_path):
    async def main():
        async with stream(tmp_path, tick_size=5) as (gw, ws):
            await ws.send(json.dumps([
                place(1, "buy", 100, qty=10),
                {"op": "amend", "ref": "a", "symbol": "AAA", "order_id": 1, "price": 105, "qty": 4},
                {"op": "cancel", "ref": "c", "symbol": "AAA", "order_id": 1},
                {"op": "cancel", "ref": "again", "symbol": "AAA", "order_id": 1},
                place(2, "buy", 101),                                   # off the tick
                {"op": "place", "ref": "bad", "symbol": "AAA", "side": "buy", "qty": 1},   # no price
                {"op": "replace", "ref": "op"},
            ]))
            got = await recv(ws)
            by = {a["ref"]: a for a in got}
            assert [a["ref"] for a in got] == [1, "a", "c", "again", 2, "bad", "op"]
            assert by[1]["status"] == 200 and by[1]["body"]["status"] == "resting"
            assert by["a"]["status"] == 200 and by["c"]["status"] == 200
            assert by["again"]["status"] == 409 and by["again"]["body"]["reject"]["reason"] == "UNKNOWN_ORDER"
            assert by[2]["status"] == 422 and by[2]["body"]["reject"]["reason"] == "PRICE_OFF_TICK"
            assert by["bad"]["status"] == 422 and by["bad"]["body"]["detail"][0]["loc"] == ["price"]
            assert by["op"]["status"] == 422 and "op must be" in by["op"]["body"]["detail"]
            # the same order over HTTP answers the same body shape and status
            http = await gw.http.post("/orders", json={"symbol": "AAA", "side": "buy", "price": 101, "qty": 1,
                                                       "order_id": 3})
            assert http.status_code == 422 and set(http.json()) == set(by[2]["body"])
    asyncio.run(main())


def test_a_bad_message_is_answered_and_the_stream_goes_on(tmp_path):
    async def main():
        async with stream(tmp_path) as (gw, ws):
            for bad in ("{not json", "[]", "[1, 2]", "42", json.dumps([place(i, "buy", 1) for i in range(1001)]),
                        b"\xff\xfe{", "[" * 2000 + "]" * 2000, '{"op": "place", "qty": NaN}'):
                await ws.send(bad)
                a = await recv(ws)
                assert a["ref"] is None and a["status"] == 422, a
            await ws.send(json.dumps(place(7, "buy", 100)))
            a = await recv(ws)
            assert (a["ref"], a["status"], a["body"]["order_id"]) == (7, 200, 7)
    asyncio.run(main())


def test_flow_control_holds_reading_at_max_in_flight_and_loses_nothing(tmp_path):
    async def main():
        async with stream(tmp_path, stream_in_flight=8) as (gw, ws):
            n = 2000
            for i in range(1, n + 1):
                await ws.send(json.dumps(place(i, "buy", 100)))
            refs = [(await recv(ws))["ref"] for _ in range(n)]
            assert refs == list(range(1, n + 1))
            assert gw.engine.matcher.books["AAA"].bid_levels[100].qty == n
    asyncio.run(main())


def test_with_a_token_the_handshake_needs_it(tmp_path):
    async def main():
        async with gateway(tmp_path, real_server=True, token="s3cret") as gw:
            with pytest.raises(websockets.exceptions.InvalidStatus):
                async with websockets.connect(url(gw)) as ws:
                    await ws.recv()
            async with websockets.connect(url(gw), additional_headers={"Authorization": "Bearer s3cret"}) as ws:
                await ws.send(json.dumps({"op": "cancel", "ref": 1, "symbol": "AAA", "order_id": 1}))
                a = await recv(ws)
                assert a["status"] == 409 and a["body"]["reject"]["reason"] == "UNKNOWN_SYMBOL"   # it got in
    asyncio.run(main())


def test_a_batch_over_http_is_entered_in_order_and_answered_per_order(tmp_path):
    async def main():
        async with gateway(tmp_path) as gw:
            await post_ok(gw, "/symbols", {"symbol": "AAA", "tick_size": 5})
            body = {"orders": [{"symbol": "AAA", "order_id": 1, "side": "buy", "price": 100, "qty": 3},
                               {"symbol": "AAA", "order_id": 1, "side": "buy", "price": 100, "qty": 3},  # duplicate
                               {"symbol": "AAA", "order_id": 2, "side": "sell", "price": 101, "qty": 1},  # off tick
                               {"symbol": "AAA", "order_id": 3, "side": "sell", "price": 100, "qty": 2}]}
            r = await gw.http.post("/orders/batch", json=body)
            assert r.status_code == 200, r.text
            results = r.json()["results"]
            assert [x["status"] for x in results] == [200, 409, 422, 200]
            assert results[1]["body"]["reject"]["reason"] == "DUPLICATE_ORDER_ID"
            assert results[3]["body"]["fills"][0]["maker_order_id"] == 1
            assert gw.engine.wal.durable_seq >= results[3]["body"]["fills"][0]["seq"]
            seqs = [x["body"]["seq"] for x in results]
            assert seqs == sorted(seqs)
            # one order out of its schema fails the whole batch, and nothing is entered
            before = gw.engine.matcher.last_seq
            bad = {"orders": [body["orders"][0] | {"order_id": 9}, {"symbol": "AAA", "side": "buy", "qty": 0}]}
            r = await gw.http.post("/orders/batch", json=bad)
            assert r.status_code == 422 and r.json()["detail"][0]["loc"][:3] == ["body", "orders", 1]
            assert (await gw.http.post("/orders/batch", json={"orders": []})).status_code == 422
            assert gw.engine.matcher.last_seq == before
    asyncio.run(main())
