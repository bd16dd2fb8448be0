"""Errors of the snapshot package."""

from __future__ import annotations

__all__ = ["SnapshotError", "SnapshotChecksumError", "SnapshotFormatError", "SnapshotFailedError"]


class SnapshotError(Exception):
    """Base of every error raised by ``snapshot``."""


class SnapshotFormatError(SnapshotError):
    """The file is not an evengine snapshot, or of a version this build cannot read."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"snapshot {path}: {reason}")
        self.path = path
        self.reason = reason


class SnapshotChecksumError(SnapshotFormatError):
    """A CRC over the header or the body does not match: the snapshot is damaged
    and must be skipped (recovery falls back to the previous one)."""


class SnapshotFailedError(SnapshotError):
    """The forked child that writes a snapshot exited with an error."""

    def __init__(self, seq: int, status: int) -> None:
        super().__init__(f"snapshot at seq {seq} failed: writer child exited with status {status}")
        self.seq = seq
        self.status = status
