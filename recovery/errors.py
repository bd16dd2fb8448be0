"""Errors of recovery, replay and verification."""

from __future__ import annotations

from typing import Any

__all__ = ["RecoveryError", "ReplayMismatchError", "WalGapError"]


class RecoveryError(Exception):
    """Base of every error raised by ``recovery``."""


class ReplayMismatchError(RecoveryError):
    """Replaying the WAL produced an event other than the one logged at ``seq``:
    the log and the matcher disagree (a bug, or a log from another build).
    Integrity over availability: the engine does not start."""

    def __init__(self, seq: int, expected: Any, actual: Any) -> None:
        super().__init__(f"replay mismatch at seq {seq}: replay produced {expected!r}, the WAL holds {actual!r}. "
                         f"Run `evengine verify` for the full list")
        self.seq = seq
        self.expected = expected
        self.actual = actual


class WalGapError(RecoveryError):
    """The WAL does not reach back to the snapshot it should continue."""

    def __init__(self, snapshot_seq: int, wal_first_seq: int) -> None:
        super().__init__(f"WAL starts at seq {wal_first_seq} but the newest valid snapshot ends at seq "
                         f"{snapshot_seq}: events {snapshot_seq + 1}..{wal_first_seq - 1} are missing")
        self.snapshot_seq = snapshot_seq
        self.wal_first_seq = wal_first_seq
