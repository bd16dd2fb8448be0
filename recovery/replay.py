"""Re-apply WAL events to a matcher and check the logged trades and rejects."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

from engine.core import LOGGED_KINDS, Matcher, decode_payload

from .errors import ReplayMismatchError

__all__ = ["Replayer", "Mismatch"]


@dataclass(frozen=True)
class Mismatch:
    seq: int
    expected: Any
    actual: Any


@dataclass
class Replayer:
    """Feeds ``(seq, payload)`` pairs from the WAL into ``matcher``.

    Commands are applied; each logged event (trade, reject) that follows is
    compared with what the matcher produced for its command. Events the
    matcher produced that the WAL does not (yet) hold are :attr:`pending`:
    at the very end of the WAL that is a crash between a command's frame and
    its trades' frame, and the engine appends them again on start.

    Args:
        matcher: the state to apply to (``matcher.last_seq + 1`` is the next
            command's seq).
        strict: raise :class:`ReplayMismatchError` at the first mismatch;
            otherwise collect them in :attr:`mismatches`.
    """

    matcher: Matcher
    strict: bool = True
    events: int = 0
    commands: int = 0
    checked: int = 0
    mismatches: list = field(default_factory=list)
    pending: deque = field(default_factory=deque)

    def feed(self, seq: int, payload: Any) -> Optional[list]:
        """Apply or check one WAL event; return the matcher's events for a command.

        Raises:
            ReplayMismatchError: (strict) a logged event differs or is missing.
            ValueError: the payload is not a known command or event.
        """
        self.events += 1
        # Payloads are compared and applied as the plain tuples msgpack gives:
        # the matcher validates a command's kind and shape itself, and a
        # NamedTuple equals the tuple of its fields.
        if type(payload) is not tuple or not payload:
            raise ValueError(f"WAL event {seq} is not a non-empty array: {payload!r:.80}")
        if payload[0] in LOGGED_KINDS:
            if not self.pending:
                self._mismatch(seq, None, payload)
                return None
            expected = self.pending.popleft()
            self.checked += 1
            if expected != payload:
                self._mismatch(seq, expected, payload)
            return None
        if self.pending:
            self._mismatch(seq, self.pending[0], payload)
            self.pending.clear()
        if seq != self.matcher.last_seq + 1:
            if self.strict:
                raise ReplayMismatchError(seq, f"command at seq {self.matcher.last_seq + 1}", payload)
            self.mismatches.append(Mismatch(seq, f"seq {self.matcher.last_seq + 1}", payload))
            self.matcher.last_seq = seq - 1
        out = self.matcher.apply(seq, payload)
        self.commands += 1
        if self.matcher.last_seq != seq:
            for event in out:
                if event[0] in LOGGED_KINDS:
                    self.pending.append(event)
        return out

    def feed_all(self, items: Iterable[tuple[int, Any]]) -> "Replayer":
        for seq, payload in items:
            self.feed(seq, payload)
        return self

    def feed_frames(self, frames: Iterable[tuple[int, Any]]) -> "Replayer":
        """:meth:`feed` the payloads of whole frames, ``(first seq, payloads)``
        as ``WalReader.read_frames`` yields them; the same checks and results.

        The bulk path: a command the WAL logged with its trades or reject
        right behind it (as ``Engine.submit`` writes them) is applied and its
        logged events are compared in one slice comparison, with no step per
        event. Anything else (a logged event waiting across a frame boundary,
        a gap, a payload that is not a tuple) goes through :meth:`feed`.

        Raises:
            ReplayMismatchError: as :meth:`feed`.
            ValueError: as :meth:`feed`.
        """
        matcher = self.matcher
        apply = matcher.apply
        feed = self.feed
        logged_kinds = LOGGED_KINDS
        pending = self.pending
        for first, values in frames:
            n = len(values)
            i = 0
            commands = checked = fed = 0
            while i < n:
                payload = values[i]
                seq = first + i
                if (pending or type(payload) is not tuple or not payload or payload[0] in logged_kinds
                        or seq != matcher.last_seq + 1):
                    feed(seq, payload)   # counts itself
                    fed += 1
                    i += 1
                    continue
                out = apply(seq, payload)
                commands += 1
                k = matcher.last_seq - seq
                if k:
                    logged = [event for event in out if event[0] in logged_kinds]
                    if i + k < n and values[i + 1:i + 1 + k] == tuple(logged):
                        checked += k
                        i += 1 + k
                        continue
                    pending.extend(logged)   # across a frame, or a mismatch: feed tells which
                i += 1
            self.commands += commands
            self.checked += checked
            self.events += n - fed
        return self

    def _mismatch(self, seq: int, expected: Any, actual: Any) -> None:
        try:
            actual = decode_payload(actual)
        except ValueError:
            pass
        if self.strict:
            raise ReplayMismatchError(seq, expected, actual)
        self.mismatches.append(Mismatch(seq, expected, actual))
