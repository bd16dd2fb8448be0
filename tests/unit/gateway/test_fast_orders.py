"""``POST /orders``'s fast path (engine/gateway/fast_orders.py) answers exactly
what FastAPI's route answers: the same requests, in the same order, to two
real engines behind real uvicorn servers, one gateway with the fast path and
one without, give the same status, headers that matter and body, byte for
byte; and the fast path really answers the well-formed ones."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from engine.gateway.fast_orders import FastOrderPath, fast_orders_enabled
from engine.gateway.metrics import HttpMetrics

from tests.unit.gateway.test_gateway import gateway

TOKEN = "s3cr\u00e9t"       # not ASCII: the header is Latin-1 on the wire, the token UTF-8 in the check

J = {"content-type": "application/json"}


def _auth(value: bytes) -> dict:
    return {"authorization": value}


LATIN1 = TOKEN.encode("latin-1")   # the bytes Starlette reads back as the token


_IDS = iter(range(1000, 10**6))


def body(**kw) -> bytes:
    """An order with an id of its own (an id the gateway assigns differs run to run)."""
    order = {"symbol": "AAA", "side": "buy", "price": 100, "qty": 10, "order_id": next(_IDS)}
    order.update(kw)
    return json.dumps(order).encode()


#: (headers, raw body): the order matters (the book fills as they go).
REQUESTS = [
    (J, body(order_id=1)),
    (J, body(side="sell", price=99, qty=4, account=7)),                       # a cross: fills
    ({"content-type": "application/json; charset=utf-8"}, body(side="sell", price=100, qty=10)),
    ({"content-type": "Application/JSON"}, body(order_type="market", price=None, qty=2)),
    ({}, body(order_id=50, price=101)),                                       # no content type: JSON
    (J, body(order_id=50, price=101)),                                        # duplicate order id: 409
    (J, body(symbol="ZZZ")),                                                  # unknown book
    (J, body(price=105, tif="fok", side="sell")),
    (J, body(qty=10.0, price=99.0)),                                          # whole floats
    (J, body(qty=1.5)),                                                       # 422
    (J, body(qty=2**64)),                                                     # beyond 64 bits: orjson refuses
    (J, b'{"symbol": "AAA", "side": "buy", "price": NaN, "qty": 1, "order_id": 70}'),          # Python's reader takes NaN
    (J, b'{"symbol": "AAA", "side": "buy", "price": 100, "qty": 1, "order_id": 71, "extra": 1}'),
    (J, b'{"symbol": "AAA", "side": "buy", "price": 100, "qty": 1, "qty": 2, "order_id": 72}'),  # duplicate key: the last
    (J, b"[1, 2]"),
    (J, b'"text"'),
    (J, b"{not json"),
    (J, b""),
    (J, b"\xff\xfe{}"),
    ({"content-type": "text/plain"}, body()),
    ({"content-type": "application/x-www-form-urlencoded"}, b"symbol=AAA"),
    ({"content-type": "application/merge-patch+json"}, body(order_id=60)),
    (J, body(order_id=61, post_only=True, price=1)),
]

TOKEN_REQUESTS = [
    ({**J, **_auth(b"Bearer " + LATIN1)}, body()),
    ({**J, **_auth(b"bearer   " + LATIN1)}, body()),
    ({**J, **_auth(b"BEARER " + LATIN1)}, body()),
    ({**J, **_auth(b"Bearer " + TOKEN.encode())}, body()),               # UTF-8 on the wire: not the token
    ({**J, **_auth(b"Bearer wrong")}, body()),
    ({**J, **_auth(b"Basic czNjcmV0")}, body()),
    ({**J, **_auth(b"Bearer")}, body()),
    ({**J, **_auth(b"Bearer\t" + LATIN1)}, body()),
    (J, body()),
    ({**J, **_auth(b"Bearer " + LATIN1)}, body(qty=0)),
]

_DROP = {"date", "server", "content-length"}


async def answers(tmp_path, fast: bool, requests: list, token=None) -> tuple[list, int, HttpMetrics]:
    metrics = HttpMetrics()
    async with gateway(tmp_path, real_server=True, token=token, fast_orders=fast, metrics=metrics) as gw:
        added = await gw.http.post("/symbols", json={"symbol": "AAA", "tick_size": 1},
                                   headers=_auth(b"Bearer " + LATIN1) if token else {})
        assert added.status_code == 200, added.text
        out = []
        for headers, raw in requests:
            r = await gw.http.post("/orders", content=raw, headers=headers)
            out.append((r.status_code, sorted((k, v) for k, v in r.headers.items() if k not in _DROP), r.content))
        fast_path = _find(gw.app.middleware_stack)
        return out, (fast_path.fast if fast_path is not None else 0), metrics


def _find(app) -> FastOrderPath | None:
    while app is not None:
        if isinstance(app, FastOrderPath):
            return app
        app = getattr(app, "app", None)
    return None


@pytest.mark.parametrize("requests,token", [(REQUESTS, None), (TOKEN_REQUESTS, TOKEN)], ids=["open", "token"])
def test_the_fast_path_answers_what_fastapi_answers(tmp_path, requests, token):
    async def main():
        fast, answered_fast, m_fast = await answers(tmp_path / "fast", True, requests, token)
        slow, answered_slow, m_slow = await answers(tmp_path / "slow", False, requests, token)
        for i, (a, b) in enumerate(zip(fast, slow)):
            assert a == b, f"request {i} {requests[i]!r}: fast path {a!r}, FastAPI {b!r}"
        assert answered_slow == 0
        # the well-formed ones (accepted, a matcher reject or not) took the fast path
        assert answered_fast >= (5 if token is None else 3)
        assert m_fast.requests == m_slow.requests        # counted alike, under the route's template
        assert any(route == "/orders" for route, _, _ in m_fast.requests)
        return fast

    answered = asyncio.run(main())
    statuses = [s for s, _, _ in answered]
    assert 200 in statuses and 422 in statuses and (401 in statuses if token else 409 in statuses)


def test_a_body_sent_in_pieces_is_read_whole(tmp_path):
    async def main():
        async with gateway(tmp_path, real_server=True, fast_orders=True) as gw:
            await gw.http.post("/symbols", json={"symbol": "AAA", "tick_size": 1})
            raw = body(order_id=9)

            async def pieces():
                for i in range(0, len(raw), 7):
                    yield raw[i:i + 7]
                    await asyncio.sleep(0)

            r = await gw.http.post("/orders", content=pieces(), headers=J)
            assert r.status_code == 200 and r.json()["order_id"] == 9
            assert _find(gw.app.middleware_stack).fast == 1

    asyncio.run(main())


def test_the_switch(monkeypatch):
    monkeypatch.delenv("EVENGINE_HTTP_FAST_ORDERS", raising=False)
    assert fast_orders_enabled()
    monkeypatch.setenv("EVENGINE_HTTP_FAST_ORDERS", "0")
    assert not fast_orders_enabled()
    monkeypatch.setenv("EVENGINE_HTTP_FAST_ORDERS", "yes")
    with pytest.raises(ValueError, match="EVENGINE_HTTP_FAST_ORDERS"):
        fast_orders_enabled()
