"""Output commit: nothing leaves the engine before the WAL is durable past it."""

from __future__ import annotations

from collections import deque
from typing import Any, Callable

__all__ = ["OutputGate", "Sink"]

Sink = Callable[[int, Any, list], None]
"""``sink(cmd_seq, command, events)``, called once the command and every event
it caused are durable."""


class OutputGate:
    """Holds each command's results until ``durable_seq`` passes them.

    ``hold`` is called by the matching loop right after a command is applied
    and logged, with the last sequence number that command used (its trades
    and reject included); ``release`` is called whenever the WAL's watermark
    may have moved. Sinks (console, event-buffer readers, later Kafka and
    HTTP) see results in sequence order, never early.
    Source: DESIGN.md invariant 3; LMAX / Redis "reply after fsync".
    """

    def __init__(self) -> None:
        self.sinks: list[Sink] = []
        self._held: deque = deque()
        self.released = 0

    @property
    def held(self) -> int:
        return len(self._held)

    def hold(self, last_seq: int, cmd_seq: int, cmd: Any, events: list) -> None:
        self._held.append((last_seq, cmd_seq, cmd, events))

    def release(self, durable_seq: int) -> int:
        """Hand every held result with ``last_seq <= durable_seq`` to the sinks;
        return how many were released."""
        held = self._held
        n = 0
        while held and held[0][0] <= durable_seq:
            _, cmd_seq, cmd, events = held.popleft()
            for sink in self.sinks:
                sink(cmd_seq, cmd, events)
            n += 1
        self.released += n
        return n
