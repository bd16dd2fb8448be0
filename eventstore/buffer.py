"""The in-memory buffer of the most recent events."""

from __future__ import annotations

from collections import deque
from itertools import islice
from typing import Any, Callable, Optional

__all__ = ["EventBuffer"]


class EventBuffer:
    """A ring of the last ``capacity`` events, by sequence number.

    The writer appends every event; readers get only events up to the
    ``durable_seq`` they pass in (output commit: nothing leaves before its
    fsync). Complexity: append O(1); read O(k) for k events plus the skip.
    """

    def __init__(self, capacity: int, next_seq: int = 1,
                 next_seq_of: Optional[Callable[[], int]] = None) -> None:
        self.capacity = capacity
        self._events: deque = deque(maxlen=capacity)
        self._next_seq = next_seq
        # The WAL writer appends to ``_events`` itself (one C call per event)
        # and tells the buffer its next seq through this function.
        self._next_seq_of = next_seq_of

    def _next(self) -> int:
        return self._next_seq_of() if self._next_seq_of is not None else self._next_seq

    @property
    def first_seq(self) -> int:
        """Oldest sequence number held (``== next_seq`` when empty)."""
        return self._next() - len(self._events)

    @property
    def last_seq(self) -> int:
        return self._next() - 1

    def append(self, payload: Any) -> None:
        self._events.append(payload)
        self._next_seq += 1

    def extend(self, payloads: list) -> None:
        self._events.extend(payloads)
        self._next_seq += len(payloads)

    def covers(self, from_seq: int) -> bool:
        """Whether every event from ``from_seq`` on is still in the buffer."""
        return from_seq >= self.first_seq

    def read(self, from_seq: int, to_seq: Optional[int] = None, *,
             durable_seq: int) -> list[tuple[int, Any]]:
        """``[(seq, payload), ...]`` for ``from_seq <= seq <= min(to_seq, durable_seq)``.

        Raises:
            KeyError: ``from_seq`` has already left the buffer (read the WAL).
        """
        first = self.first_seq
        if from_seq < first:
            raise KeyError(f"seq {from_seq} left the event buffer (oldest held: {first}); read the WAL")
        last = min(self.last_seq, durable_seq if to_seq is None else min(to_seq, durable_seq))
        if last < from_seq:
            return []
        items = islice(self._events, from_seq - first, last - first + 1)
        return list(zip(range(from_seq, last + 1), items))
