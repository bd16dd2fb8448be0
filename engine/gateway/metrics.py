"""HTTP metrics of the order gateway: requests by route and status, latency.

:class:`HttpMetrics` is both the counter store an ASGI middleware
(:class:`HttpMetricsMiddleware`, installed by ``create_app(...,
metrics=...)``) feeds and the ``prometheus_client`` collector that exports
it. The gateway's own app gets no route: ``/metrics`` is served on its own
port (``--metrics HOST:PORT``, ``engine.prom``), so the gateway's OpenAPI
document stays exactly what ``tests/contract`` checks.

Labels are bounded: ``route`` is the route's template
(``/orders/{symbol}/{order_id}``, never the raw path; ``unmatched`` for a
path no route has), ``method`` one of the HTTP methods (``OTHER`` for
anything else), ``status`` the code answered.
"""

from __future__ import annotations

import time
from typing import Any, Iterator

from engine.prom import LATENCY_BOUNDS_S, Buckets, histogram_family

__all__ = ["HttpMetrics", "HttpMetricsMiddleware"]

_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"))


def _route_of(scope: dict, router: Any = None) -> str:
    """The template of the route that answered (FastAPI's routes put
    themselves in the scope; for the others, such as ``/openapi.json``, the
    router's routes are matched again), ``unmatched`` when none did."""
    route = scope.get("route")
    if route is None and router is not None:
        from starlette.routing import Match
        for candidate in router.routes:
            try:
                if candidate.matches(scope)[0] is not Match.NONE:
                    route = candidate
                    break
            except Exception:  # noqa: BLE001 - a route that cannot read this scope did not answer it
                continue
    path = getattr(route, "path", None) if route is not None else None
    return path if isinstance(path, str) else "unmatched"


class HttpMetrics:
    """Counts of one gateway (one per process). Exports:

    - ``evengine_http_requests_total{route,method,status}`` (counter): requests answered;
    - ``evengine_http_request_duration_seconds{route,method}`` (histogram):
      from the request's arrival at the app to the end of its answer;
    - ``evengine_http_requests_in_progress`` (gauge);
    - ``evengine_websocket_sessions_total{route}`` (counter) and
      ``evengine_websocket_sessions`` (gauge, open now).
    """

    def __init__(self) -> None:
        self.requests: dict = {}        # (route, method, status) -> count
        self.durations: dict = {}       # (route, method) -> Buckets (seconds)
        self.in_progress = 0
        self.ws_sessions: dict = {}     # route -> sessions opened
        self.ws_open = 0

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        method = method if method in _METHODS else "OTHER"
        key = (route, method, str(status))
        self.requests[key] = self.requests.get(key, 0) + 1
        buckets = self.durations.get((route, method))
        if buckets is None:
            buckets = self.durations[(route, method)] = Buckets(LATENCY_BOUNDS_S)
        buckets.observe(seconds)

    def middleware(self, app: Any) -> "HttpMetricsMiddleware":
        return HttpMetricsMiddleware(app, self)

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
        requests = CounterMetricFamily("evengine_http_requests_total", "HTTP requests answered by the gateway.",
                                       labels=["route", "method", "status"])
        for (route, method, status), n in sorted(list(self.requests.items())):
            requests.add_metric([route, method, status], n)
        yield requests
        durations = HistogramMetricFamily("evengine_http_request_duration_seconds",
                                          "Time from a request's arrival at the gateway app to the end of its answer.",
                                          labels=["route", "method"])
        for (route, method), b in sorted(list(self.durations.items())):
            histogram_family("", "", b.bounds, b.counts, b.sum, labels={"route": route, "method": method},
                             family=durations)
        yield durations
        yield GaugeMetricFamily("evengine_http_requests_in_progress", "HTTP requests being answered now.",
                                value=self.in_progress)
        sessions = CounterMetricFamily("evengine_websocket_sessions_total", "WebSocket sessions opened.",
                                       labels=["route"])
        for route, n in sorted(list(self.ws_sessions.items())):
            sessions.add_metric([route], n)
        yield sessions
        yield GaugeMetricFamily("evengine_websocket_sessions", "WebSocket sessions open now.", value=self.ws_open)


class HttpMetricsMiddleware:
    """A pure ASGI middleware feeding :class:`HttpMetrics` (no effect on the
    answers; the route is read from the scope once routing has set it, or
    matched again among ``router.routes``)."""

    def __init__(self, app: Any, metrics: HttpMetrics, router: Any = None) -> None:
        self.app = app
        self.metrics = metrics
        self.router = router

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        kind = scope["type"]
        m = self.metrics
        if kind == "websocket":
            m.ws_open += 1
            try:
                await self.app(scope, receive, send)
            finally:
                m.ws_open -= 1
                route = _route_of(scope, self.router)
                m.ws_sessions[route] = m.ws_sessions.get(route, 0) + 1
            return
        if kind != "http":
            await self.app(scope, receive, send)
            return
        status = [500]     # what an exception that escapes every handler becomes

        async def send_status(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        t0 = time.perf_counter()
        m.in_progress += 1
        try:
            await self.app(scope, receive, send_status)
        finally:
            m.in_progress -= 1
            m.observe(_route_of(scope, self.router), scope.get("method", ""), status[0], time.perf_counter() - t0)
