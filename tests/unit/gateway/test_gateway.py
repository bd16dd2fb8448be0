"""The HTTP order gateway against a real engine: a real Engine on tmp_path
(real WAL, real fsync), an EngineRuntime, the FastAPI app either in process
(httpx ASGITransport) or served by a real uvicorn on 127.0.0.1 with a free
port, all on one asyncio loop per test.

Nothing waits by sleeping for a fixed time: conditions are polled with a
deadline, and no wall-clock time is asserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
from dataclasses import dataclass
from typing import Any, Optional

import httpx
import pytest
import websockets

from engine.core import Matcher
from engine.core.commands import AddSymbol, AmendOrder, CancelOrder, PlaceOrder
from engine.core.events import OrderRejected, Trade
from engine.core.types import MAX_PRICE, MAX_QTY, RejectReason
from engine.gateway import EmbeddedEntry, GatewayServer, KafkaEntry, check_bind, create_app, serve
from engine.gateway.market_data import top_of_book
from engine.service.engine import Engine, EngineConfig
from engine.service.runtime import EngineRuntime
from recovery.time_travel import open_data_dir

DEADLINE_S = 15.0


@dataclass
class Gw:
    rt: EngineRuntime
    app: Any
    http: httpx.AsyncClient
    server: Optional[GatewayServer]
    data_dir: str

    @property
    def engine(self) -> Engine:
        return self.rt.engine

    def ws_url(self, query: str = "") -> str:
        return f"ws://127.0.0.1:{self.server.port}/ws/market-data{query}"


@contextlib.asynccontextmanager
async def gateway(tmp_path, *, token: Optional[str] = None, real_server: bool = False, with_view: bool = True,
                  **app_kw):
    """A running engine and its gateway; yields a :class:`Gw`."""
    data_dir = str(tmp_path / "data")
    # pause_cyclic_gc=False: the gc.collect() it does on open walks every object of the
    # test process (pytest, hypothesis, FastAPI) and took seconds per test. pin_cpus=False:
    # pinned, the test process (server and clients in one) shares one CPU with every other
    # engine running on the machine.
    engine = Engine(EngineConfig(data_dir=data_dir, snapshot_every=0, control_socket=False,
                                 pause_cyclic_gc=False, pin_cpus=False))
    engine.open()
    rt = EngineRuntime(engine)
    try:
        await rt.start()
        app = create_app(EmbeddedEntry(rt), rt if with_view else None, token=token, **app_kw)
        server = None
        if real_server:
            server = GatewayServer(app, "127.0.0.1", 0, grace_s=2.0)
            await server.start()
            client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=DEADLINE_S)
        else:
            client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw",
                                       timeout=DEADLINE_S)
        try:
            async with client:
                yield Gw(rt, app, client, server, data_dir)
        finally:
            if server is not None:
                await server.stop()
    finally:
        await rt.stop()
        engine.close()


async def until(predicate, what: str, timeout: float = DEADLINE_S) -> None:
    """Poll ``predicate`` until it is true; fail after ``timeout`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)


async def post_ok(gw: Gw, url: str, body: dict, status: int = 200) -> dict:
    r = await gw.http.post(url, json=body)
    assert r.status_code == status, r.text
    return r.json()


def order(**kw) -> dict:
    body = {"symbol": "AAA", "side": "buy", "price": 100, "qty": 10}
    body.update(kw)
    return body


# ---------------------------------------------------------------- order entry


def test_a_cross_answers_after_the_fsync_with_its_fills(tmp_path):
    async def main():
        async with gateway(tmp_path) as gw:
            wal = gw.engine.wal
            added = await post_ok(gw, "/symbols", {"symbol": "AAA", "tick_size": 1})
            assert added["status"] == "added" and added["reject"] is None

            bid = await post_ok(gw, "/orders", order(order_id=1, side="buy", price=100, qty=10))
            assert wal.durable_seq >= bid["seq"]
            assert (bid["status"], bid["order_id"], bid["leaves_qty"], bid["fills"]) == ("resting", 1, 10, [])

            sell = await post_ok(gw, "/orders", order(side="sell", price=99, qty=4, account=7))
            durable_at_answer = wal.durable_seq
            assert sell["status"] == "filled" and sell["filled_qty"] == 4 and sell["leaves_qty"] == 0
            assert sell["fills"] == [{"seq": sell["seq"] + 1, "match_id": 1, "price": 100, "qty": 4,
                                      "maker_order_id": 1, "symbol_seq": 1}]
            assert durable_at_answer >= sell["fills"][-1]["seq"]
            assert 1 <= sell["order_id"] <= 2**63 - 1          # assigned by the gateway

            part = await post_ok(gw, "/orders", order(side="sell", price=100, qty=10))
            assert part["order_id"] > sell["order_id"]
            assert (part["status"], part["filled_qty"], part["leaves_qty"]) == ("partially_filled", 6, 4)
            assert [f["match_id"] for f in part["fills"]] == [2]

            market = await post_ok(gw, "/orders", {"symbol": "AAA", "side": "buy", "order_type": "market",
                                                   "qty": 5})
            assert (market["status"], market["filled_qty"], market["cancelled_qty"]) == ("partially_filled", 4, 1)

            fok = await post_ok(gw, "/orders", order(side="sell", price=100, qty=3, tif="fok"))
            assert (fok["status"], fok["fills"], fok["cancelled_qty"]) == ("cancelled", [], 3)

            trades = [t for t in gw.engine.matcher.trades]
            assert [t.match_id for t in trades] == [1, 2, 3]
            assert trades[0].taker_account == 7

    asyncio.run(main())


BAD_BODIES = [
    ("negative qty", order(qty=-5), "qty"),
    ("zero qty", order(qty=0), "qty"),
    ("qty as a string", order(qty="5"), "qty"),
    ("qty as a float", order(qty=1.5), "qty"),
    ("qty as a bool", order(qty=True), "qty"),
    ("qty beyond 2**63-1", order(qty=2**64), "qty"),
    ("price beyond 2**63-1", order(price=2**63), "price"),
    ("price beyond MAX_PRICE", order(price=MAX_PRICE + 5), "price"),
    ("qty beyond MAX_QTY", order(qty=MAX_QTY + 1), "qty"),
    ("qty a whole float beyond 2**53", order(qty=float(2**60)), "qty"),
    ("order_id beyond 2**63-1", order(order_id=2**63), "order_id"),
    ("order_id 0", order(order_id=0), "order_id"),
    ("bad side", order(side="long"), "side"),
    ("missing side", {"symbol": "AAA", "price": 100, "qty": 1}, "side"),
    ("missing price for a limit order", {"symbol": "AAA", "side": "buy", "qty": 1}, "price"),
    ("price 0 for a limit order", order(price=0), "price"),
    ("negative price", order(price=-100), "price"),
    ("price for a market order", order(order_type="market", price=100), "price"),
    ("market order gtc", order(order_type="market", price=None, tif="gtc"), "tif"),
    ("unknown tif", order(tif="day"), "tif"),
    ("unknown order type", order(order_type="stop"), "order_type"),
    ("post_only on ioc", order(tif="ioc", post_only=True), "post_only"),
    ("post_only on a market order", {"symbol": "AAA", "side": "buy", "order_type": "market", "qty": 1,
                                     "post_only": True}, "post_only"),
    ("negative account", order(account=-1), "account"),
    ("extra field", order(stop_price=5), "stop_price"),
    ("empty symbol", order(symbol=""), "symbol"),
    ("symbol of 33 characters", order(symbol="S" * 33), "symbol"),
]


def test_invalid_bodies_are_422_per_field_and_never_reach_the_engine(tmp_path):
    async def main():
        async with gateway(tmp_path) as gw:
            await post_ok(gw, "/symbols", {"symbol": "AAA", "tick_size": 1})
            await post_ok(gw, "/orders", order(order_id=1))
            last = gw.engine.matcher.last_seq
            for name, body, field in BAD_BODIES:
                body = {k: v for k, v in body.items() if v is not None}
                r = await gw.http.post("/orders", json=body)
                assert r.status_code == 422, (name, r.text)
                locs = [e["loc"] for e in r.json()["detail"]]
                assert ["body", field] in locs, (name, locs)
                assert all(e["msg"] for e in r.json()["detail"]), name
            bad_other = [
                ("PATCH", "/orders/AAA/1", {"price": 100, "qty": 0}),
                ("PATCH", "/orders/AAA/1", {"price": 100, "qty": 5, "tif": "gtc"}),
                ("PATCH", "/orders/AAA/1", {"qty": 5}),
                ("PATCH", "/orders/AAA/0", {"price": 100, "qty": 5}),
                ("DELETE", f"/orders/AAA/{2**63}", None),
                ("DELETE", "/orders/AAA/abc", None),
                ("POST", "/symbols", {"symbol": "BBB", "tick_size": 0}),
                ("POST", "/symbols", {"symbol": "BBB", "tick_size": 1, "lot": 1}),
            ]
            for method, url, body in bad_other:
                r = await gw.http.request(method, url, json=body)
                assert r.status_code == 422, (method, url, body, r.text)
            r = await gw.http.post("/orders", content=b"{not json", headers={"content-type": "application/json"})
            assert r.status_code == 422
            assert gw.engine.matcher.last_seq == last     # none of them became a command

    asyncio.run(main())


def test_matcher_rejects_are_409_or_422_and_every_command_is_in_the_wal(tmp_path):
    answers: list = []

    async def main():
        async with gateway(tmp_path) as gw:
            async def send(method, url, body, status):
                r = await gw.http.request(method, url, json=body)
                assert r.status_code == status, (url, body, r.text)
                answers.append(r.json())
                return r.json()

            await send("POST", "/symbols", {"symbol": "AAA", "tick_size": 5}, 200)
            await send("POST", "/orders", order(order_id=1, price=100), 200)
            await send("POST", "/orders", order(order_id=2, side="sell", price=110), 200)
            cases = [
                ("POST", "/orders", order(symbol="NOPE", order_id=3), 409, RejectReason.UNKNOWN_SYMBOL),
                ("POST", "/orders", order(order_id=1, price=95), 409, RejectReason.DUPLICATE_ORDER_ID),
                ("POST", "/orders", order(order_id=4, side="sell", price=100, post_only=True), 409,
                 RejectReason.POST_ONLY_WOULD_TAKE),
                ("POST", "/orders", order(order_id=5, price=101), 422, RejectReason.PRICE_OFF_TICK),
                ("PATCH", "/orders/AAA/1", {"price": 101, "qty": 10}, 422, RejectReason.PRICE_OFF_TICK),
                ("POST", "/symbols", {"symbol": "AAA", "tick_size": 1}, 409, RejectReason.SYMBOL_EXISTS),
                ("DELETE", "/orders/AAA/99", None, 409, RejectReason.UNKNOWN_ORDER),
                ("PATCH", "/orders/AAA/99", {"price": 100, "qty": 1}, 409, RejectReason.UNKNOWN_ORDER),
            ]
            for method, url, body, status, reason in cases:
                ans = await send(method, url, body, status)
                assert ans["status"] == "rejected" and ans["fills"] == [] and ans["filled_qty"] == 0
                assert ans["reject"]["code"] == reason.value and ans["reject"]["reason"] == reason.name
                assert ans["reject"]["detail"]
                assert gw.engine.wal.durable_seq >= ans["seq"] + 1       # the reject is durable too
            assert gw.engine.matcher.books["AAA"].depth(1) == [[100, 10]]   # rejects changed nothing

    asyncio.run(main())

    history = open_data_dir(str(tmp_path / "data"))
    events = dict(history.events())
    assert sorted(events) == list(range(1, max(events) + 1))
    for ans in answers:
        cmd = events[ans["seq"]]
        assert not isinstance(cmd, (Trade, OrderRejected))
        assert (cmd.source, cmd.source_pos) == (None, None)
        if ans["status"] == "rejected":
            rej = events[ans["seq"] + 1]
            assert isinstance(rej, OrderRejected) and rej.reason == ans["reject"]["code"]
    assert isinstance(events[answers[0]["seq"]], AddSymbol)
    assert isinstance(events[answers[-2]["seq"]], CancelOrder)
    assert sum(isinstance(e, OrderRejected) for e in events.values()) == 8


def test_whole_numbers_bad_encodings_and_path_spellings_answer_as_the_document_says(tmp_path):
    """JSON Schema's integers are values: 6.0 is 6 (up to 2**53, where a float
    is exact). A body that is not UTF-8, or holds a lone surrogate, is a 422
    like any unparsable body (never a 400 or a 500); a path integer is ASCII
    digits; a 405 names every method of the path."""
    async def main():
        async with gateway(tmp_path) as gw:
            m = gw.engine.matcher
            added = await post_ok(gw, "/symbols", {"symbol": "AAA", "tick_size": 1.0})
            assert added["tick_size"] == 1 and type(m.books["AAA"].tick_size) is int
            placed = await post_ok(gw, "/orders", order(order_id=7.0, price=100.0, qty=5.0, account=0.0))
            assert (placed["order_id"], placed["leaves_qty"]) == (7, 5)
            resting = m.books["AAA"].orders[7]
            assert (type(resting.qty), type(resting.price)) == (int, int)
            last = m.last_seq

            r = await gw.http.post("/orders", json=order(qty=float(2**60)))
            assert r.status_code == 422 and r.json()["detail"][0]["type"] == "int_inexact", r.text
            for raw in (b'{"symbol": "\xff\xfe", "side": "buy", "price": 1, "qty": 1}', b"\xff", b"{not json"):
                r = await gw.http.post("/orders", content=raw, headers={"content-type": "application/json"})
                assert r.status_code == 422, (raw, r.status_code, r.text)
                assert r.json()["detail"][0]["type"] == "json_invalid", r.text
            r = await gw.http.post("/symbols", content=b'{"symbol": "\\ud800"}',
                                   headers={"content-type": "application/json"})
            assert r.status_code == 422 and r.json()["detail"], r.text       # echoed input: escaped, not a 500
            for number in (b"NaN", b"-Infinity", b"1e400"):                  # Python reads them; JSON has none
                raw = b'{"symbol": "AAA", "side": "buy", "price": 1, "qty": ' + number + b"}"
                r = await gw.http.post("/orders", content=raw, headers={"content-type": "application/json"})
                assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "qty"], (number, r.text)
            for url in ("/orders/AAA/+7", "/orders/AAA/7_0", "/orders/AAA/%207", "/orders/AAA/7.5",
                        "/orders/AAA/0x7", "/orders/AAA/7e0", "/orders/AAA/7."):
                r = await gw.http.delete(url)
                assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["path", "order_id"], (url, r.text)
            assert (await gw.http.get("/accounts/1_0")).status_code == 422
            assert (await gw.http.get("/books/" + "S" * 33)).status_code == 422
            r = await gw.http.post("/symbols", json={"symbol": "BBB", "base": "USD", "quote": "USD"})
            assert r.status_code == 422 and [e["type"] for e in r.json()["detail"]] == ["distinct_assets"]
            r = await gw.http.post("/symbols", json={"symbol": "BBB", "maker_fee_ppm": 2, "taker_fee_ppm": 1})
            assert r.status_code == 422 and [e["type"] for e in r.json()["detail"]] == ["fee_order"]
            assert m.last_seq == last                                 # none of them reached the engine

            r = await gw.http.patch("/orders/AAA/7.0", json={"price": 100, "qty": 4.0})   # 7.0 is 7
            assert r.status_code == 200 and (r.json()["order_id"], r.json()["leaves_qty"]) == (7, 4), r.text
            r = await gw.http.delete("/orders/AAA/7.00")
            assert r.status_code == 200 and r.json()["order_id"] == 7, r.text
            assert (await gw.http.get("/accounts/0.0")).json()["account"] == 0
            assert (await gw.http.get("/books/AAA", params={"depth": "2.0"})).status_code == 200
            for depth in ("1_0", "+2", " 2", "2e0"):
                assert (await gw.http.get("/books/AAA", params={"depth": depth})).status_code == 422, depth

            r = await gw.http.request("OPTIONS", "/orders/AAA/7")
            assert r.status_code == 405 and r.headers["allow"] == "DELETE, PATCH"
            r = await gw.http.put("/orders")
            assert r.status_code == 405 and r.headers["allow"] == "POST"

    asyncio.run(main())


def test_cancel_and_amend(tmp_path):
    async def main():
        async with gateway(tmp_path) as gw:
            book = None
            await post_ok(gw, "/symbols", {"symbol": "AAA", "tick_size": 1})
            await post_ok(gw, "/orders", order(order_id=1, price=100, qty=10))
            await post_ok(gw, "/orders", order(order_id=2, price=100, qty=5))

            r = await gw.http.patch("/orders/AAA/1", json={"price": 100, "qty": 6})
            assert r.status_code == 200, r.text
            a = r.json()
            assert (a["status"], a["order_id"], a["leaves_qty"], a["fills"]) == ("amended", 1, 6, [])
            book = gw.engine.matcher.books["AAA"]
            assert [o.order_id for o in book.bid_levels[100].live()] == [1, 2]     # priority kept

            a = (await gw.http.patch("/orders/AAA/2", json={"price": 101, "qty": 5})).json()
            assert (a["status"], a["leaves_qty"]) == ("amended", 5)
            assert book.depth(1) == [[101, 5], [100, 6]]

            await post_ok(gw, "/orders", order(order_id=3, side="sell", price=103, qty=4))
            a = (await gw.http.patch("/orders/AAA/3", json={"price": 101, "qty": 4})).json()
            assert a["status"] == "amended" and a["filled_qty"] == 4 and a["leaves_qty"] == 0
            assert [(f["maker_order_id"], f["price"], f["qty"]) for f in a["fills"]] == [(2, 101, 4)]
            assert gw.engine.wal.durable_seq >= a["fills"][-1]["seq"]

            r = await gw.http.delete("/orders/AAA/1")
            assert r.status_code == 200, r.text
            c = r.json()
            assert (c["status"], c["order_id"], c["cancelled_qty"], c["leaves_qty"]) == ("cancelled", 1, 6, 0)
            assert book.depth(1) == [[101, 1]]

            r = await gw.http.delete("/orders/AAA/1")
            assert r.status_code == 409 and r.json()["reject"]["reason"] == "UNKNOWN_ORDER"
            r = await gw.http.delete("/orders/NOPE/1")
            assert r.status_code == 409 and r.json()["reject"]["reason"] == "UNKNOWN_SYMBOL"

            book_read = (await gw.http.get("/books/AAA")).json()
            assert (book_read["bids"], book_read["asks"]) == (book.depth(1), book.depth(2))

    asyncio.run(main())


# ---------------------------------------------------------------------- reads


def test_book_and_trades_reads_equal_the_engine_and_the_disk(tmp_path):
    async def main():
        async with gateway(tmp_path) as gw:
            m = gw.engine.matcher
            await post_ok(gw, "/symbols", {"symbol": "AAA", "tick_size": 1})
            await post_ok(gw, "/symbols", {"symbol": "BBB", "tick_size": 1})
            for i, (side, price, qty) in enumerate([("buy", 99, 5), ("buy", 98, 7), ("buy", 99, 3),
                                                     ("sell", 101, 4), ("sell", 102, 6), ("sell", 101, 1),
                                                     ("buy", 97, 2), ("sell", 103, 8)]):
                await post_ok(gw, "/orders", order(order_id=10 + i, side=side, price=price, qty=qty))
            await post_ok(gw, "/orders", order(order_id=30, side="sell", price=98, qty=9))   # takes 99x8, 98x1
            await post_ok(gw, "/orders", order(symbol="BBB", order_id=1, side="sell", price=50, qty=1))
            await post_ok(gw, "/orders", order(symbol="BBB", order_id=2, side="buy", price=50, qty=1))
            await post_ok(gw, "/orders", order(order_id=31, side="buy", price=102, qty=6))    # takes 101x5, 102x1

            r = await gw.http.get("/books/AAA", params={"depth": 2})
            assert r.status_code == 200
            body = r.json()
            book = m.books["AAA"]
            assert body == {"symbol": "AAA", "seq": m.last_seq, "bids": book.depth(1, 2), "asks": book.depth(2, 2)}
            assert body["bids"] == [[98, 6], [97, 2]] and body["asks"] == [[102, 5], [103, 8]]
            on_disk = open_data_dir(gw.data_dir).book_at(body["seq"], "AAA", depth=2)
            assert on_disk == {k: body[k] for k in ("seq", "symbol", "bids", "asks")}

            full = (await gw.http.get("/books/AAA", params={"depth": 100})).json()
            assert (full["bids"], full["asks"]) == (book.depth(1), book.depth(2))

            r = await gw.http.get("/trades", params={"symbol": "AAA", "limit": 3})
            assert r.status_code == 200
            got = r.json()
            aaa = [t for t in m.trades if t.symbol == "AAA"]
            assert [t["match_id"] for t in got["trades"]] == [t.match_id for t in aaa[-3:]]
            logged = {seq: ev for seq, ev in open_data_dir(gw.data_dir).events() if isinstance(ev, Trade)}
            for t in got["trades"]:
                ev = logged[t["seq"]]
                assert ev.match_id == t["match_id"] and ev.symbol == "AAA"
                assert t["taker_side"] in ("buy", "sell") and t["price"] == ev.price and t["qty"] == ev.qty
                assert (t["maker_order_id"], t["taker_order_id"], t["ts_ns"]) == (
                    ev.maker_order_id, ev.taker_order_id, ev.ts_ns)

            every = (await gw.http.get("/trades")).json()["trades"]
            assert [t["match_id"] for t in every] == [t.match_id for t in m.trades]
            assert {t["symbol"] for t in every} == {"AAA", "BBB"}

            assert (await gw.http.get("/books/NOPE")).status_code == 404
            assert (await gw.http.get("/trades", params={"symbol": "NOPE"})).status_code == 404
            assert (await gw.http.get("/books/AAA", params={"depth": 0})).status_code == 422

            health = (await gw.http.get("/health")).json()
            assert health["status"] == "ok" and health["entry"] == "embedded"
            assert health["last_seq"] == m.last_seq and health["match_sequence"] == m.match_sequence
            assert health["durable_seq"] >= health["last_seq"]

    asyncio.run(main())


def test_reads_answer_503_without_an_engine_view(tmp_path):
    async def main():
        async with gateway(tmp_path, with_view=False) as gw:
            await post_ok(gw, "/symbols", {"symbol": "AAA", "tick_size": 1})
            for url in ("/books/AAA", "/trades"):
                r = await gw.http.get(url)
                assert r.status_code == 503 and "order entry" in r.json()["detail"]
            health = (await gw.http.get("/health")).json()
            assert health["status"] == "ok" and health["last_seq"] is None

    asyncio.run(main())


# ------------------------------------------------------------------- security


def test_a_token_guards_order_entry_and_admin_but_not_reads(tmp_path):
    async def main():
        async with gateway(tmp_path, token="s3cret") as gw:
            good = {"Authorization": "Bearer s3cret"}
            r = await gw.http.post("/symbols", json={"symbol": "AAA", "tick_size": 1})
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
            assert gw.engine.matcher.last_seq == 0
            r = await gw.http.post("/symbols", json={"symbol": "AAA", "tick_size": 1}, headers=good)
            assert r.status_code == 200
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic czNjcmV0"},
                            {"Authorization": "s3cret"}):
                assert (await gw.http.post("/orders", json=order(order_id=1), headers=headers)).status_code == 401
                assert (await gw.http.delete("/orders/AAA/1", headers=headers)).status_code == 401
                assert (await gw.http.patch("/orders/AAA/1", json={"price": 1, "qty": 1},
                                            headers=headers)).status_code == 401
            assert gw.engine.matcher.last_seq == 1        # nothing unauthorised reached the engine
            assert (await gw.http.post("/orders", json=order(order_id=1), headers=good)).status_code == 200
            assert (await gw.http.get("/books/AAA")).status_code == 200
            assert (await gw.http.get("/trades")).status_code == 200
            assert (await gw.http.get("/health")).status_code == 200
            assert (await gw.http.get("/openapi.json")).status_code == 200

    asyncio.run(main())


def test_an_empty_token_is_no_token(tmp_path):
    async def main():
        async with gateway(tmp_path, token="") as gw:
            assert gw.app.state.token is None
            assert (await gw.http.post("/symbols", json={"symbol": "AAA"})).status_code == 200
            assert "securitySchemes" not in (await gw.http.get("/openapi.json")).json()["components"]

    asyncio.run(main())


@pytest.mark.parametrize("host,token,ok", [
    ("127.0.0.1", None, True),
    ("127.0.0.2", None, True),
    ("::1", None, True),
    ("localhost", None, True),
    ("0.0.0.0", None, False),
    ("::", None, False),
    ("", None, False),
    ("192.0.2.10", None, False),
    ("192.0.2.10", "", False),
    ("0.0.0.0", "s3cret", True),
    ("192.0.2.10", "s3cret", True),
])
def test_check_bind(host, token, ok):
    if ok:
        check_bind(host, token)
    else:
        with pytest.raises(ValueError, match="127.0.0.1 by default"):
            check_bind(host, token)


def test_the_server_refuses_a_public_bind_without_a_token():
    async def main():
        app = create_app(KafkaEntry("127.0.0.1:1"))
        with pytest.raises(ValueError, match="token"):
            await GatewayServer(app, "0.0.0.0", 0).start()

    asyncio.run(main())


# ----------------------------------------------------- real server, market data


async def next_message(ws, durable_of=None) -> dict:
    text = await asyncio.wait_for(ws.recv(), DEADLINE_S)
    msg = json.loads(text)
    if durable_of is not None:
        assert durable_of() >= msg["seq"], f"market data ahead of the disk: {msg}"
    return msg


def test_real_server_openapi_durable_answers_and_market_data(tmp_path):
    async def main():
        async with gateway(tmp_path, real_server=True) as gw:
            durable = lambda: gw.engine.wal.durable_seq   # noqa: E731 - read at receipt
            spec = (await gw.http.get("/openapi.json")).json()
            assert {"/orders", "/orders/{symbol}/{order_id}", "/symbols", "/books/{symbol}", "/trades",
                    "/health"} <= set(spec["paths"])
            assert (await gw.http.get("/docs")).status_code == 200

            await post_ok(gw, "/symbols", {"symbol": "AAA", "tick_size": 1})
            async with websockets.connect(gw.ws_url("?symbols=AAA"), max_queue=None) as ws, \
                    websockets.connect(gw.ws_url("?symbols=BBB"), max_queue=None) as ws_b, \
                    websockets.connect(gw.ws_url(), max_queue=None) as ws_all:
                first = await next_message(ws, durable)
                assert first == {"type": "top", "symbol": "AAA", "seq": first["seq"], "bid": None, "ask": None}
                assert (await next_message(ws_all, durable))["symbol"] == "AAA"

                await post_ok(gw, "/orders", order(order_id=1, price=100, qty=10))
                top = await next_message(ws, durable)
                assert (top["type"], top["bid"], top["ask"]) == ("top", [100, 10], None)

                sell = await post_ok(gw, "/orders", order(order_id=2, side="sell", price=100, qty=4))
                trade = await next_message(ws, durable)
                assert trade["type"] == "trade"
                fill = sell["fills"][0]
                assert (trade["match_id"], trade["seq"], trade["price"], trade["qty"], trade["symbol_seq"]) == (
                    fill["match_id"], fill["seq"], 100, 4, 1)
                assert (trade["taker_side"], trade["maker_order_id"], trade["taker_order_id"]) == ("sell", 1, 2)
                top = await next_message(ws, durable)
                assert (top["type"], top["bid"], top["ask"]) == ("top", [100, 6], None)
                assert top["seq"] >= trade["seq"]

                # The all-symbols client saw the same, in the same order.
                seen = [await next_message(ws_all, durable) for _ in range(3)]
                assert [m["type"] for m in seen] == ["top", "trade", "top"]
                assert seen[1] == trade

                # Many concurrent orders: each answer comes only once durable.
                async def one(i):
                    r = await gw.http.post("/orders", json=order(order_id=100 + i, side="sell", price=100 + i % 3,
                                                                 qty=1))
                    assert r.status_code == 200, r.text
                    body = r.json()
                    assert gw.engine.wal.durable_seq >= body["seq"] + len(body["fills"])
                    return body
                answers = await asyncio.gather(*(one(i) for i in range(40)))
                assert len({a["seq"] for a in answers}) == 40
                n_fills = sum(len(a["fills"]) for a in answers)
                assert n_fills == 6                      # the bid's 6 remaining lots

                got = []
                while sum(1 for m in got if m["type"] == "trade") < n_fills:
                    got.append(await next_message(ws, durable))
                trades = [m for m in got if m["type"] == "trade"]
                assert [t["match_id"] for t in trades] == list(range(2, 2 + n_fills))
                book = gw.engine.matcher.books["AAA"]
                final = {"type": "top", "symbol": "AAA", "bid": None,
                         "ask": [book.top_ask, book.ask_levels[book.top_ask].qty]}
                while not (got[-1]["type"] == "top" and {k: got[-1][k] for k in final} == final):
                    got.append(await next_message(ws, durable))

                # The BBB client heard nothing of AAA: its first message is BBB's book.
                await post_ok(gw, "/symbols", {"symbol": "BBB", "tick_size": 1})
                b = await next_message(ws_b, durable)
                assert (b["type"], b["symbol"], b["bid"], b["ask"]) == ("top", "BBB", None, None)
                assert gw.app.state.market_data.dropped_clients == 0

            with pytest.raises(websockets.InvalidStatus) as refused:
                async with websockets.connect(gw.ws_url("?symbols=" + "S" * 33)):
                    pass
            assert refused.value.response.status_code == 403

    asyncio.run(main())


def test_serve_runs_uvicorn_on_the_current_loop_until_stopped(tmp_path):
    async def main():
        async with gateway(tmp_path) as gw:
            stop = asyncio.Event()
            listening: list = []
            task = asyncio.ensure_future(serve(gw.app, "127.0.0.1", 0, stop=stop, on_listening=listening.append))
            await until(lambda: listening or task.done(), "the server to listen")
            port = listening[0].port
            assert port > 0
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=DEADLINE_S) as http:
                assert (await http.post("/symbols", json={"symbol": "AAA", "tick_size": 1})).status_code == 200
                assert (await http.get("/health")).json()["last_seq"] == 1
            stop.set()
            await asyncio.wait_for(task, DEADLINE_S)
            with pytest.raises(httpx.ConnectError):
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                    await http.get("/health")

    asyncio.run(main())


def test_a_websocket_client_that_never_reads_is_dropped_without_stalling_order_entry(tmp_path):
    async def main():
        async with gateway(tmp_path, real_server=True, market_data_queue=1000) as gw:
            hub = gw.app.state.market_data
            loop = asyncio.get_running_loop()
            await post_ok(gw, "/symbols", {"symbol": "AAA", "tick_size": 1})
            await post_ok(gw, "/orders", order(order_id=1, side="sell", price=100, qty=10**12))

            # A client with a tiny receive window that reads its handshake answer, then nothing.
            slow = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            slow.setblocking(False)
            await loop.sock_connect(slow, ("127.0.0.1", gw.server.port))
            await loop.sock_sendall(slow, (
                f"GET /ws/market-data?symbols=AAA HTTP/1.1\r\nHost: 127.0.0.1:{gw.server.port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n").encode())
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = await asyncio.wait_for(loop.sock_recv(slow, 1), DEADLINE_S)
                assert chunk, "connection closed during the handshake"
                head += chunk
            assert head.startswith(b"HTTP/1.1 101")

            async with websockets.connect(gw.ws_url("?symbols=AAA"), max_size=None, max_queue=None) as good:
                await until(lambda: len(hub.clients) == 2, "both clients subscribed")
                received: list = []

                async def read_all():
                    async for text in good:
                        received.append(json.loads(text))
                reader = asyncio.ensure_future(read_all())

                # Trades flood in: 100 per batch, each one fill against the big ask. The
                # reading client is let catch up after each batch: on a loaded machine a burst
                # could otherwise leave it more than 1000 messages behind, which is too slow too.
                next_id = 1000
                while hub.dropped_clients == 0:
                    assert next_id < 200_000, "the slow client was never dropped"
                    for _ in range(100):
                        gw.rt.submit(PlaceOrder.new("AAA", next_id, 1, 100, 1))
                        next_id += 1
                    await gw.rt.barrier()
                    sent = next_id - 1000
                    await until(lambda: hub.dropped_clients or
                                sum(1 for m in received if m["type"] == "trade") >= sent,
                                "the reading client to catch up")
                # Order entry still answers, and only the slow client is gone.
                answer = await post_ok(gw, "/orders", order(order_id=next_id, price=100, qty=1))
                assert answer["status"] == "filled"
                last_match = answer["fills"][0]["match_id"]
                assert hub.dropped_clients == 1 and len(hub.clients) == 1
                await until(lambda: any(m.get("match_id") == last_match for m in received),
                            "the reading client got every trade")
                trades = [m["match_id"] for m in received if m["type"] == "trade"]
                assert trades == list(range(1, last_match + 1))
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)

            # The server ends the slow client's connection: reading it now reaches EOF, after
            # the close frame (code 1008, with the reason) if the server could still send it;
            # the client answers that frame as RFC 6455 asks, which lets the server close at once.
            close_frame = b"\x03\xf0too slow"     # code 1008, then the reason
            tail = b""
            answered = False
            deadline = loop.time() + DEADLINE_S
            while True:
                assert loop.time() < deadline, "the slow client's connection was never closed"
                chunk = await asyncio.wait_for(loop.sock_recv(slow, 1 << 16), DEADLINE_S)
                if not chunk:
                    break
                tail = (tail + chunk)[-4096:]
                if not answered and close_frame in tail:
                    answered = True
                    mask = b"\x01\x02\x03\x04"
                    payload = bytes(b ^ mask[i % 4] for i, b in enumerate(b"\x03\xe8"))   # 1000
                    await loop.sock_sendall(slow, b"\x88\x82" + mask + payload)
            slow.close()

    asyncio.run(main())


def test_market_data_is_the_durable_state_at_its_seq_even_when_the_book_runs_ahead(tmp_path):
    """Random orders, cancels and amends on two books; clients subscribe while
    the live books are ahead of the disk. Every message must be durable when
    it is queued, and every top must be the book that replaying the WAL gives
    at its seq."""
    rng = random.Random(20240607)
    received: dict = {"all": [], "AAA": []}

    async def main():
        async with gateway(tmp_path) as gw:
            rt, hub, wal = gw.rt, gw.app.state.market_data, gw.engine.wal
            live: list = []
            next_id = 1

            def submit_some(n):
                nonlocal next_id
                for _ in range(n):
                    r = rng.random()
                    if r < 0.7 or not live:
                        sym = rng.choice(["AAA", "BBB"])
                        rt.submit(PlaceOrder.new(sym, next_id, rng.choice([1, 2]), rng.randint(95, 105),
                                                 rng.randint(1, 5)))
                        live.append((sym, next_id))
                        next_id += 1
                    elif r < 0.85:
                        rt.submit(CancelOrder.new(*live.pop(rng.randrange(len(live)))))
                    else:
                        sym, oid = rng.choice(live)
                        rt.submit(AmendOrder.new(sym, oid, rng.randint(95, 105), rng.randint(1, 5)))

            def drain(name, client):
                while not client.queue.empty():
                    msg = json.loads(client.queue.get_nowait())
                    assert wal.durable_seq >= msg["seq"], f"queued before it was durable: {msg}"
                    received[name].append(msg)

            rt.submit(AddSymbol.new("AAA", 1))
            rt.submit(AddSymbol.new("BBB", 1))
            await rt.barrier()
            submit_some(20)
            assert gw.engine.matcher.last_seq > wal.durable_seq      # the live books are ahead of the disk
            everything = hub.subscribe(None)
            only_a = hub.subscribe({"AAA"})
            for _ in range(40):
                submit_some(rng.randint(1, 30))
                if rng.random() < 0.5:
                    await rt.barrier()
                else:
                    await asyncio.sleep(0)        # one loop turn: partial durability
                drain("all", everything)
                drain("AAA", only_a)
            await rt.barrier()
            m = gw.engine.matcher

            def caught_up():
                drain("all", everything)
                drain("AAA", only_a)
                tops = {msg["symbol"]: [msg["bid"], msg["ask"]] for msg in received["all"] if msg["type"] == "top"}
                return all(tops.get(s) == list(top_of_book(m.books[s])) for s in ("AAA", "BBB"))
            await until(caught_up, "the last tops")
            assert hub.dropped_clients == 0 and m.match_sequence > 20

    asyncio.run(main())

    events = list(open_data_dir(str(tmp_path / "data")).events())
    trades = {seq: ev for seq, ev in events if isinstance(ev, Trade)}
    for name, msgs in received.items():
        assert [x["seq"] for x in msgs] == sorted(x["seq"] for x in msgs), name
        got_trades = [x for x in msgs if x["type"] == "trade"]
        want = [ev for ev in trades.values() if name == "all" or ev.symbol == name]
        first_seq = got_trades[0]["seq"]
        assert [(t["seq"], t["match_id"]) for t in got_trades] == [
            (seq, ev.match_id) for seq, ev in trades.items() if seq >= first_seq and ev in want]
        if name == "AAA":
            assert {x["symbol"] for x in msgs} == {"AAA"}
        # Replay the WAL; check each top against the books at its seq.
        tops = [x for x in msgs if x["type"] == "top"]
        replay = Matcher()
        j = 0
        for seq, obj in events + [(float("inf"), None)]:
            if isinstance(obj, (Trade, OrderRejected)):
                continue
            while j < len(tops) and tops[j]["seq"] < seq:
                book = replay.books[tops[j]["symbol"]]
                assert [tops[j]["bid"], tops[j]["ask"]] == list(top_of_book(book)), (name, tops[j])
                j += 1
            if obj is not None:
                replay.apply(seq, obj)
        assert j == len(tops) and len(tops) > 10
