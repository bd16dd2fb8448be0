"""Errors of the matching core. A bad *command* is never an exception (it is an
``OrderRejected`` event); these are broken invariants, which stop the engine."""

from __future__ import annotations

__all__ = ["CoreError", "SequenceGapError", "BookIntegrityError"]


class CoreError(Exception):
    """Base of every error raised by ``engine.core``."""


class SequenceGapError(CoreError):
    """A command arrived with ``seq`` other than ``last_seq + 1``."""

    def __init__(self, expected: int, actual: int) -> None:
        super().__init__(f"sequence gap: expected seq {expected}, got {actual}")
        self.expected = expected
        self.actual = actual


class BookIntegrityError(CoreError):
    """An order book's structure is inconsistent (a bug, or a corrupt snapshot)."""

    def __init__(self, symbol: str, detail: str) -> None:
        super().__init__(f"order book {symbol!r}: {detail}")
        self.symbol = symbol
        self.detail = detail
