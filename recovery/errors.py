"""Errors of recovery, replay and verification."""

from __future__ import annotations

from typing import Any

__all__ = ["RecoveryError", "ReplayMismatchError", "WalGapError", "PrunedWalGapError"]


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


class PrunedWalGapError(WalGapError):
    """The WAL was pruned (``wal/retention.json``) and no valid snapshot
    reaches the part kept: the pruned range is gone on purpose, so the state
    cannot be rebuilt from this directory until a snapshot at or after the
    pinned base is restored."""

    def __init__(self, snapshot_seq: int, wal_first_seq: int, pruned_at: str, record: str,
                 base_snapshot_seq: Any, skipped: list) -> None:
        RecoveryError.__init__(
            self,
            f"seqs 1..{wal_first_seq - 1} were pruned ({record}, {pruned_at}); the earliest seq available is "
            f"{wal_first_seq}, and no valid snapshot at seq {wal_first_seq - 1} or later reaches it "
            f"(newest valid: {snapshot_seq or 'none'}"
            + (f"; damaged: {', '.join(p for p, _ in skipped)}" if skipped else "")
            + f"). Restore the snapshot at seq {base_snapshot_seq} (the one the prune kept as base) or a later "
            f"one from a backup")
        self.snapshot_seq = snapshot_seq
        self.wal_first_seq = wal_first_seq
        self.pruned_at = pruned_at
        self.record = record
        self.base_snapshot_seq = base_snapshot_seq
        self.skipped = skipped
