"""Listing, choosing and pruning snapshot files in ``<data-dir>/snapshots/``."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

from .codec import decode_snapshot
from .errors import SnapshotFormatError

__all__ = ["SnapshotInfo", "snapshot_name", "list_snapshots", "load_snapshot", "newest_valid", "prune"]

_NAME_RE = re.compile(r"^snap-(\d{20})\.evsnap$")


def snapshot_name(seq: int) -> str:
    """``snap-<seq, 20 digits>.evsnap``: the state right after event ``seq``."""
    return f"snap-{seq:020d}.evsnap"


@dataclass(frozen=True)
class SnapshotInfo:
    seq: int
    path: str


def list_snapshots(snap_dir: str) -> list[SnapshotInfo]:
    """Snapshots in ``snap_dir``, oldest first (temp files ignored)."""
    try:
        names = os.listdir(snap_dir)
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        m = _NAME_RE.match(name)
        if m:
            out.append(SnapshotInfo(int(m.group(1)), os.path.join(snap_dir, name)))
    return sorted(out, key=lambda s: s.seq)


def load_snapshot(info: SnapshotInfo) -> dict:
    """Read and check one snapshot.

    Raises:
        SnapshotFormatError (or its SnapshotChecksumError): damaged or foreign file.
    """
    with open(info.path, "rb") as f:
        data = f.read()
    state = decode_snapshot(data, info.path)
    if state["last_seq"] != info.seq:
        raise SnapshotFormatError(info.path, f"file name says seq {info.seq}, content says {state['last_seq']}")
    return state


def newest_valid(snap_dir: str, at_or_before: Optional[int] = None,
                 on_skip: Optional[Callable[[SnapshotInfo, Exception], None]] = None
                 ) -> Optional[tuple[SnapshotInfo, dict]]:
    """The newest snapshot with ``seq <= at_or_before`` that passes its checks,
    with its state; damaged ones are reported to ``on_skip`` and skipped."""
    for info in reversed(list_snapshots(snap_dir)):
        if at_or_before is not None and info.seq > at_or_before:
            continue
        try:
            return info, load_snapshot(info)
        except (SnapshotFormatError, OSError) as exc:
            if on_skip is not None:
                on_skip(info, exc)
    return None


def prune(snap_dir: str, retain: int, *, clean_tmp: bool = False, keep: Iterable[int] = ()) -> list[str]:
    """Delete all but the newest ``retain`` snapshots (and, with ``clean_tmp``,
    temp files a killed writer left; only when no writer runs); return the
    deleted paths. Snapshots whose seq is in ``keep`` stay whatever their
    age (the base a pruned WAL continues: ``wal/retention.json``)."""
    removed = []
    try:
        for name in os.listdir(snap_dir):
            if clean_tmp and name.endswith(".evsnap.tmp"):
                os.unlink(os.path.join(snap_dir, name))
                removed.append(os.path.join(snap_dir, name))
    except FileNotFoundError:
        return removed
    snaps = list_snapshots(snap_dir)
    keep = set(keep)
    for info in snaps[:max(0, len(snaps) - retain)]:
        if info.seq in keep:
            continue
        try:
            os.unlink(info.path)
            removed.append(info.path)
        except FileNotFoundError:
            pass
    return removed
