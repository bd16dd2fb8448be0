"""``evengine start`` with push sources: Kafka and/or the HTTP gateway, on one asyncio loop."""

from __future__ import annotations

import logging
import time
from typing import Any, Optional

from engine.core.commands import AddSymbol

from .engine import Engine
from .runtime import EngineRuntime

__all__ = ["serve", "parse_symbols", "run_event_loop", "event_loop_factory"]

log = logging.getLogger("evengine.serve")


def event_loop_factory() -> tuple[str, Any]:
    """``(name, loop factory)`` of the event loop :func:`run_event_loop` uses:
    ``("uvloop", uvloop.new_event_loop)`` when uvloop is installed (libuv;
    measured with ``scripts/bench_gateway.py``: single orders over HTTP
    5,500 -> 6,600/s), else ``("asyncio", None)``. ``EVENGINE_EVENT_LOOP``
    (``uvloop`` or ``asyncio``) chooses.

    Raises:
        ValueError: ``EVENGINE_EVENT_LOOP`` is set to anything else.
        ImportError: it is ``uvloop`` and uvloop is not installed.
    """
    import os
    wanted = os.environ.get("EVENGINE_EVENT_LOOP", "")
    if wanted not in ("", "uvloop", "asyncio"):
        raise ValueError(f"EVENGINE_EVENT_LOOP must be 'uvloop' or 'asyncio', got {wanted!r}")
    if wanted != "asyncio":
        try:
            import uvloop
            return "uvloop", uvloop.new_event_loop
        except ImportError:
            if wanted == "uvloop":
                raise
    return "asyncio", None


def run_event_loop(main: Any) -> Any:
    """Run the coroutine ``main`` to its end on a new event loop of
    :func:`event_loop_factory` and return its result.

    Raises:
        ValueError, ImportError: as :func:`event_loop_factory`.
    """
    import asyncio
    _, factory = event_loop_factory()
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def parse_symbols(specs: list[str]) -> list[tuple[str, int]]:
    """``["AAPL", "ES:25"]`` -> ``[("AAPL", 1), ("ES", 25)]`` (symbol, tick size in price units).

    Raises:
        ValueError: a tick size that is not a positive integer.
    """
    out = []
    for spec in specs:
        symbol, _, tick = spec.partition(":")
        if not symbol:
            raise ValueError(f"empty symbol in {spec!r}")
        try:
            tick_size = int(tick) if tick else 1
        except ValueError:
            raise ValueError(f"tick size of {spec!r} is not an integer") from None
        if tick_size <= 0:
            raise ValueError(f"tick size of {spec!r} must be positive")
        out.append((symbol, tick_size))
    return out


async def serve(engine: Engine, *, kafka: Optional[Any] = None, http: Optional[tuple[str, int]] = None,
                token: Optional[str] = None, symbols: tuple = (), sinks: tuple = (),
                on_ready: Optional[Any] = None, metrics: Optional[Any] = None,
                http_metrics: Optional[Any] = None) -> dict:
    """Run an open engine until SIGTERM/SIGINT (or a failure).

    Args:
        engine: an open :class:`Engine` (closed by the caller afterwards).
        kafka: an ``engine.io.kafka.KafkaConfig``: consume ``orders``, publish ``trades``.
        http: ``(host, port)`` for the order gateway. Its order entry publishes
            to ``orders`` when ``kafka`` is given, else feeds this engine directly.
        token: bearer token for order entry (required when ``host`` is not loopback).
        symbols: ``(symbol, tick_size)`` books to open at start if missing.
        sinks: extra output-gate sinks ``sink(seq, cmd, events)``.
        on_ready: called with a dict (``http_port``) once serving.
        metrics: the process's ``engine.service.metrics.EngineCollector``: it
            is given the Kafka bridge (consumer lag, published watermarks).
        http_metrics: an ``engine.gateway.metrics.HttpMetrics`` the gateway
            counts its requests into.

    Returns:
        Statistics of the Kafka bridge (empty without Kafka).
    """
    rt = EngineRuntime(engine)
    start_seq, start_match = engine.next_seq, engine.matcher.match_sequence
    t0 = time.perf_counter()
    await rt.start()
    rt.install_signal_handlers()
    for sink in sinks:
        rt.add_sink(sink)
    for symbol, tick_size in symbols:
        if symbol not in engine.matcher.books:
            rt.submit(AddSymbol.new(symbol, tick_size))
    server = None
    entry = None
    info: dict = {}
    if http is not None:
        from engine.gateway import EmbeddedEntry, EntryUnavailable, GatewayServer, KafkaEntry, create_app
        if kafka is not None:
            entry = KafkaEntry(kafka.bootstrap, topic=kafka.orders_topic)
            try:
                await entry.start()
            except EntryUnavailable as exc:   # it connects on the first order; until then orders get 503
                log.warning("order gateway: %s", exc)
        else:
            entry = EmbeddedEntry(rt)
        server = GatewayServer(create_app(entry, rt, token=token, metrics=http_metrics), http[0], http[1])
        await server.start()
        info["http_port"] = server.port
        log.info("order gateway on http://%s:%d (OpenAPI at /docs)", http[0], server.port)
    if on_ready is not None:
        on_ready(info)
    stats: dict = {}
    try:
        if kafka is not None:
            from .kafka_bridge import KafkaBridge
            bridge = KafkaBridge(rt, kafka)
            if metrics is not None:
                metrics.bridge = bridge
            await bridge.run()
            stats = bridge.stats
        else:
            await rt.stopping.wait()
    finally:
        if server is not None:
            await server.stop()
        if entry is not None and hasattr(entry, "stop"):
            await entry.stop()
        await rt.stop()
        s = engine.summary
        s.commands += rt.commands
        s.events += engine.matcher.last_seq - start_seq + 1
        s.trades += engine.matcher.match_sequence - start_match
        s.stopped_by = rt.stop_reason or "stopped"
        s.seconds = time.perf_counter() - t0
    if rt.failed is not None:
        raise rt.failed
    return stats
