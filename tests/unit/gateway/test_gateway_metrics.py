"""The gateway's HTTP metrics middleware against a real engine and a real
uvicorn on 127.0.0.1: requests by route template, method and status (405s,
422s, unmatched paths, odd methods), latency histograms, WebSocket
sessions; exported through a real registry and parsed back."""

from __future__ import annotations

import asyncio

import httpx
import websockets
from prometheus_client import generate_latest

from engine.gateway import EmbeddedEntry, GatewayServer, create_app
from engine.gateway.metrics import HttpMetrics
from engine.prom import new_registry
from engine.service.engine import Engine, EngineConfig
from engine.service.runtime import EngineRuntime
from tests.support.metrics import parse, series, value


async def _run(tmp_path) -> tuple[dict, HttpMetrics]:
    engine = Engine(EngineConfig(data_dir=str(tmp_path / "data"), snapshot_every=0, control_socket=False,
                                 pause_cyclic_gc=False, pin_cpus=False))
    engine.open()
    rt = EngineRuntime(engine)
    metrics = HttpMetrics()
    try:
        await rt.start()
        app = create_app(EmbeddedEntry(rt), rt, metrics=metrics)
        async with GatewayServer(app, "127.0.0.1", 0, grace_s=2.0) as server:
            base = f"http://127.0.0.1:{server.port}"
            async with httpx.AsyncClient(base_url=base, timeout=15) as http:
                assert (await http.post("/symbols", json={"symbol": "AAA", "tick_size": 1})).status_code == 200
                for i in range(5):
                    r = await http.post("/orders", json={"symbol": "AAA", "side": "buy", "price": 100 + i, "qty": 1})
                    assert r.status_code == 200, r.text
                assert (await http.delete("/orders/AAA/999999")).status_code == 409       # unknown order
                assert (await http.put("/orders")).status_code == 405
                assert (await http.request("PROPFIND", "/health")).status_code == 405   # WebDAV: httptools parses it
                assert (await http.get("/books/AAA")).status_code == 200
                assert (await http.get("/openapi.json")).status_code == 200
                assert (await http.get("/nope/" + "x" * 50)).status_code == 404
                async with websockets.connect(f"ws://127.0.0.1:{server.port}/ws/market-data") as ws:
                    await asyncio.wait_for(ws.recv(), 15)
                    assert metrics.ws_open == 1
            for _ in range(500):           # the server side of the socket closes a moment later
                if metrics.ws_open == 0:
                    break
                await asyncio.sleep(0.01)
            assert metrics.in_progress == 0
            return parse(generate_latest(new_registry(metrics)).decode()), metrics
    finally:
        await rt.stop()
        engine.close()


def test_requests_are_counted_by_route_template_method_and_status(tmp_path):
    m, metrics = asyncio.run(_run(tmp_path))

    def n(route, method, status):
        return value(m, "evengine_http_requests_total", route=route, method=method, status=status)
    assert n("/symbols", "POST", "200") == 1
    assert n("/orders", "POST", "200") == 5
    assert n("/orders/{symbol}/{order_id}", "DELETE", "409") == 1
    assert n("/orders", "PUT", "405") == 1
    assert n("/health", "OTHER", "405") == 1          # an unknown method: one label value, not the client's word
    assert n("/books/{symbol}", "GET", "200") == 1
    assert n("/openapi.json", "GET", "200") == 1
    assert n("unmatched", "GET", "404") == 1
    assert sum(series(m, "evengine_http_requests_total").values()) == 12
    assert value(m, "evengine_http_request_duration_seconds_count", route="/orders", method="POST") == 5
    assert value(m, "evengine_http_request_duration_seconds_bucket", route="/orders", method="POST", le="+Inf") == 5
    assert value(m, "evengine_http_request_duration_seconds_sum", route="/orders", method="POST") > 0
    assert value(m, "evengine_websocket_sessions_total", route="/ws/market-data") == 1
    assert value(m, "evengine_websocket_sessions") == 0
    assert value(m, "evengine_http_requests_in_progress") == 0
