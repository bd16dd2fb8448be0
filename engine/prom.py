"""Prometheus plumbing every evengine process shares: ``--metrics HOST:PORT``,
a registry per process, the ``/metrics`` server thread, and a fixed-bucket
histogram cheap enough for a loop to feed.

Each process (``evengine start``, ``gateway``, ``trades-consumer``,
``settle``) builds one :func:`new_registry` (its own, never
``prometheus_client``'s global one, so tests can build several), registers a
collector that reads the process's state at scrape time
(``engine.service.metrics``, ``engine.consumers.metrics``,
``engine.gateway.metrics``) and serves it with :func:`start_metrics_server`.
Names follow Prometheus's conventions: prefix ``evengine_``, base units
(seconds, bytes) in the name, ``_total`` on counters. The list is in
``docs/METRICS.md``.
"""

from __future__ import annotations

import logging
import sys
import threading
from bisect import bisect_left
from typing import Any, Optional, Sequence

__all__ = ["Buckets", "MetricsServer", "MetricsBindError", "parse_metrics_addr", "new_registry", "start_metrics_server",
           "histogram_family", "LATENCY_BOUNDS_S"]

log = logging.getLogger("evengine.metrics")

LATENCY_BOUNDS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                    2.5, 5.0, 10.0)
"""Default histogram bounds for a latency, in seconds (100 us .. 10 s)."""


class Buckets:
    """A fixed-bucket histogram: :meth:`observe` is one bisect and two adds.

    ``counts[i]`` counts the values ``<= bounds[i]`` (and above
    ``bounds[i-1]``); ``counts[-1]`` those above every bound (Prometheus's
    ``+Inf`` bucket). ``sum`` is the sum of every value observed, in the
    unit of the bounds. Not locked: one thread observes, a scrape reads a
    copy (:func:`histogram_family`), so it may see one value more in one
    bucket than in ``sum`` at worst.
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float] = LATENCY_BOUNDS_S) -> None:
        self.bounds = tuple(bounds)
        if list(self.bounds) != sorted(set(self.bounds)):
            raise ValueError(f"bounds must rise strictly: {bounds!r}")
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)


def histogram_family(name: str, documentation: str, bounds: Sequence[float], counts: Sequence[int],
                     total: float, scale: float = 1.0, labels: Optional[dict] = None,
                     family: Any = None) -> Any:
    """A ``HistogramMetricFamily`` from per-bucket counts (not cumulative:
    ``counts[i]`` for ``bounds[i]``, then the overflow) and their sum;
    ``scale`` converts bounds and sum to the exported unit (1e-9: ns to
    seconds). With ``family`` (and ``labels``, in the order of the family's
    label names), adds one labelled series to it instead of making a new family."""
    from prometheus_client.core import HistogramMetricFamily
    counts = list(counts)          # one copy: the owner may go on counting
    cumulative, run = [], 0
    for bound, n in zip(bounds, counts):
        run += n
        cumulative.append((_le(bound * scale), run))
    run += counts[len(bounds)]
    cumulative.append(("+Inf", run))
    if family is None:
        family = HistogramMetricFamily(name, documentation, labels=list(labels) if labels else None)
    family.add_metric(list(labels.values()) if labels else [], cumulative, total * scale)
    return family


def _le(bound: float) -> str:
    """A bucket bound as Prometheus writes it: ``0.005``, ``1.0``, ``256.0``."""
    return repr(float(bound)) if float(bound) != int(bound) else f"{int(bound)}.0"


def parse_metrics_addr(text: str) -> tuple[str, int]:
    """``"127.0.0.1:9100"`` -> ``("127.0.0.1", 9100)``; ``"[::1]:0"`` -> ``("::1", 0)``.
    Port 0 asks for any free port (the server says which).

    Raises:
        ValueError: not ``HOST:PORT`` with a port in 0..65535.
    """
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--metrics wants HOST:PORT (e.g. 127.0.0.1:9100; port 0: any free port), got {text!r}")
    return host, int(port)


def new_registry(*collectors: Any) -> Any:
    """A ``CollectorRegistry`` of this process: the standard process
    (``process_*``: CPU seconds, resident memory, open fds, start time),
    platform (``python_info``) and garbage collector (``python_gc_*``)
    collectors, then ``collectors``."""
    from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    for c in collectors:
        registry.register(c)
    return registry


class MetricsBindError(OSError):
    """The ``--metrics`` address cannot be bound (in use, not this host's)."""


class MetricsServer:
    """``/metrics`` of ``registry`` on ``host:port``, served by a daemon
    thread (``prometheus_client.start_http_server``). :attr:`port` is the
    port bound (the one chosen for port 0), :attr:`url` the address to
    scrape. :meth:`close` stops it."""

    def __init__(self, registry: Any, host: str, port: int) -> None:
        from prometheus_client import start_http_server
        self.registry = registry
        self.host = host
        self._httpd, self._thread = start_http_server(port, addr=host, registry=registry)
        self.port: int = self._httpd.server_address[1]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self.port}/metrics"

    def close(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
            self._thread.join(5)

    def __enter__(self) -> "MetricsServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_metrics_server(addr: str, *collectors: Any, announce: bool = True) -> MetricsServer:
    """Parse ``addr`` (``HOST:PORT``), build a :func:`new_registry` of
    ``collectors`` and serve it; print ``metrics on http://HOST:PORT/metrics``
    to stderr (one line, flushed) when ``announce``.

    Raises:
        ValueError: ``addr`` is not ``HOST:PORT``.
        MetricsBindError: the address cannot be bound.
    """
    host, port = parse_metrics_addr(addr)
    try:
        server = MetricsServer(new_registry(*collectors), host, port)
    except OSError as exc:
        raise MetricsBindError(exc.errno, f"cannot serve metrics on {addr}: {exc.strerror or exc}") from exc
    if announce:
        print(f"metrics on {server.url}", file=sys.stderr, flush=True)
    log.info("metrics on %s", server.url)
    return server


def wait_or_signal(seconds: float) -> None:
    """Sleep ``seconds`` or until SIGTERM/SIGINT (for a process that keeps its
    ``/metrics`` up a while after its work is done); restores the handlers."""
    import signal
    if seconds <= 0:
        return
    done = threading.Event()
    old = {sig: signal.signal(sig, lambda *_: done.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        done.wait(seconds)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
