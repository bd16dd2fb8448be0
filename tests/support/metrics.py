"""Reading a process's Prometheus metrics in tests: find its ``metrics on URL``
line, scrape over HTTP, parse with ``prometheus_client``'s own parser."""

from __future__ import annotations

import queue
import re
import threading
import time
import urllib.request
from typing import IO, Optional

from prometheus_client.parser import text_string_to_metric_families

METRICS_LINE = re.compile(r"^metrics on (http://\S+/metrics)$")


def parse(text: str) -> dict:
    """``{(sample name, ((label, value), ...)): value}`` of an exposition text
    (labels sorted), e.g. ``m["evengine_commands_total", (("kind", "place"),)]``."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


def families(text: str) -> dict:
    """``{family name: type}`` of an exposition text."""
    return {f.name: f.type for f in text_string_to_metric_families(text)}


def scrape(url: str, timeout: float = 10.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        return r.read().decode()


def series(m: dict, name: str) -> dict:
    """``{labels dict as a sorted tuple: value}`` of every sample called ``name``."""
    return {labels: v for (n, labels), v in m.items() if n == name}


def value(m: dict, name: str, **labels: str) -> float:
    return m[name, tuple(sorted(labels.items()))]


class Lines:
    """Every line of a process's text stream, read by a daemon thread (so
    the pipe never fills): :meth:`wait_for` a pattern, :attr:`lines` so far."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list = []
        self._q: "queue.Queue[Optional[str]]" = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._q.put(line)
        self._q.put(None)

    def wait_for(self, pattern: "re.Pattern", timeout: float = 60.0) -> "re.Match":
        deadline = time.monotonic() + timeout
        for line in self.lines:
            m = pattern.match(line.strip())
            if m:
                return m
        while True:
            try:
                line = self._q.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                raise AssertionError(f"no line matching {pattern.pattern!r}: {''.join(self.lines)[-2000:]}")
            self.lines.append(line)
            m = pattern.match(line.strip())
            if m:
                return m

    def metrics_url(self, timeout: float = 60.0) -> str:
        """The URL of the process's ``metrics on URL`` line."""
        return self.wait_for(METRICS_LINE, timeout).group(1)
