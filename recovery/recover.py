"""Startup recovery: the newest valid snapshot, then the WAL after it.

Source: DESIGN.md invariant 5; STYLE.md "Absorb" 3 and 4 (Redis AOF torn tail,
eventsourcing's snapshot + later events).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Optional

from engine.core import Matcher
from eventstore import TornTail, WalReader, WalScan, fsync_dir
from snapshot import SnapshotInfo, newest_valid

from .errors import PrunedWalGapError, WalGapError
from .replay import Replayer

__all__ = ["Recovery", "recover", "wal_dir", "snapshot_dir", "index_dir"]

log = logging.getLogger("evengine.recovery")


def wal_dir(data_dir: str) -> str:
    return os.path.join(data_dir, "wal")


def snapshot_dir(data_dir: str) -> str:
    return os.path.join(data_dir, "snapshots")


def index_dir(data_dir: str) -> str:
    """Where persisted time-travel keyframes live (``evengine index``; derived data)."""
    return os.path.join(data_dir, "index")


@dataclass
class Recovery:
    """What recovery found and rebuilt.

    Attributes:
        matcher: the state after the last complete command in the WAL.
        scan: the WAL scan (segments, last valid seq).
        snapshot: the snapshot loaded, if any.
        replayed_events: WAL events applied or checked after it.
        trades_checked: logged trades and rejects that replay reproduced.
        torn_tail: the incomplete write cut off the WAL, if any.
        pending: events replay derived that the WAL lacks (the tail was cut
            between a command and its trades): the engine appends them first.
        skipped_snapshots: ``(path, reason)`` of damaged snapshots passed over.
        snapshot_marks: ``(match_sequence, ledger_seq)`` of the snapshot's
            state (``None`` without one), for WAL retention.
    """

    matcher: Matcher
    scan: WalScan
    snapshot: Optional[SnapshotInfo]
    replayed_events: int
    trades_checked: int
    torn_tail: Optional[TornTail]
    pending: list
    skipped_snapshots: list = field(default_factory=list)
    snapshot_marks: Optional[tuple] = None

    @property
    def next_seq(self) -> int:
        """Sequence number the WAL writer continues with."""
        return self.matcher.last_seq + 1 - len(self.pending)


def _cut_torn_tail(tail: TornTail) -> None:
    with open(tail.segment, "r+b") as f:
        f.truncate(tail.file_offset)
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(os.path.dirname(tail.segment))


def recover(data_dir: str, *, repair: bool = True, trade_history: int = 10_000) -> Recovery:
    """Rebuild the engine state from ``data_dir``.

    1. Scan every WAL segment (checksums, gap-free seqs). A torn tail in the
       last segment is cut off (``repair``) and reported.
    2. Load the newest snapshot that passes its checks and is not ahead of
       the WAL; damaged ones are logged and skipped.
    3. Replay the WAL after it, checking that the trades and rejects replay
       produces equal the logged ones.

    Raises:
        CorruptRecordError, WalSequenceError: corruption before the WAL's tail
            (names segment and byte offset).
        ReplayMismatchError: replay disagrees with the log.
        WalGapError: the WAL does not continue the snapshot
            (:class:`PrunedWalGapError` where that part was pruned on purpose).
    """
    reader = WalReader(wal_dir(data_dir))
    scan = reader.scan()
    if scan.torn_tail is not None:
        log.warning("WAL torn tail: cutting %d bytes at byte %d of %s (%s)", scan.torn_tail.dropped_bytes,
                    scan.torn_tail.file_offset, scan.torn_tail.segment, scan.torn_tail.reason)
        if repair:
            _cut_torn_tail(scan.torn_tail)
    skipped: list = []

    def on_skip(info: SnapshotInfo, exc: Exception) -> None:
        log.warning("skipping snapshot %s: %s", info.path, exc)
        skipped.append((info.path, str(exc)))

    limit = scan.last_seq if scan.segments else None
    found = newest_valid(snapshot_dir(data_dir), at_or_before=limit, on_skip=on_skip)
    if found is not None:
        info, state = found
        matcher = Matcher.from_state(state, trade_history)
    else:
        info, matcher = None, Matcher(trade_history)
    marks = (matcher.match_sequence, matcher.accounts.ledger_seq) if info is not None else None
    first = scan.first_seq
    if first is None and scan.segments:
        first = scan.segments[0].first_seq    # segments with a header only
    if first is not None and first > matcher.last_seq + 1:
        rec = scan.retention
        if rec is not None and first <= rec.pruned_before_seq:
            raise PrunedWalGapError(matcher.last_seq, first, rec.pruned_at, rec.path, rec.base_snapshot_seq,
                                    skipped)
        raise WalGapError(matcher.last_seq, first)
    replayer = Replayer(matcher).feed_frames(reader.read_frames(matcher.last_seq + 1))
    return Recovery(matcher, scan, info, replayer.events, replayer.checked, scan.torn_tail,
                    list(replayer.pending), skipped, marks)
