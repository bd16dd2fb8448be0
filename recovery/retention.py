"""WAL retention: which sealed segments may go, and pruning them.

``evengine wal prune`` and the engine's ``--wal-retain`` policy both end
here. A prune removes only **sealed** segments (``.seg.zst``) that lie
**wholly before the floor** and form a prefix of the WAL (never a hole,
never the newest segment, never a raw one). The floor is the seq right after
the *base*, a snapshot that is kept and that the retained WAL continues:

1. ``--before-seq N``: the floor is at most N.
2. Snapshots: at most the oldest retained snapshot that may be valid, plus
   one (recovery falls back to older snapshots when newer ones are damaged:
   each must still reach the WAL). "Retained" is the newest
   ``snapshot_retain`` (the engine's ``--snapshot-retain``; ``wal prune
   --snapshot-retain``, default 3): an older file is the current base,
   pinned and kept for the WAL after it rather than as a fallback (counting
   it would hold the floor forever), or about to be pruned. If none of the
   newest may be valid, every snapshot on disk counts. The base itself must be *known* valid:
   ``evengine wal prune`` loads and checks every snapshot (a damaged one is
   passed over, as recovery does); the engine trusts the snapshot it
   recovered from and those it wrote this run, and counts the others as
   possibly valid (they bound the floor but cannot be the base). No valid
   snapshot: nothing is pruned.
3. Kafka (``kafka-published.json``, whatever its topics): after a restart the
   bridge republishes every trade with ``match_id`` above the trades
   watermark and every balance change with ``ledger_seq`` above the ledger
   watermark, from the WAL; the base's state must not be ahead of either
   (its ``match_sequence`` and ``ledger_seq`` at most the watermarks), so
   every record not yet acknowledged lies after it, and the ledger's replay
   can start from the base. No file: the engine never published.
4. The retention policy (``--wal-retain``, :class:`RetainPolicy`): ``K``
   events kept (floor at most ``last_seq - K + 1``) and/or a duration ``D``
   by ``ts_ns`` (the base's last command at least ``D`` older than the
   newest command), so time travel over that window stays answerable.

The base is the newest known-valid snapshot satisfying all of them; the
floor is its seq + 1, and the base stays pinned (``retention.json`` names
it; snapshot retention keeps it, ``snapshot.catalog.prune(keep=...)``), so
the state at every seq from the base on can be rebuilt for as long as the
record stands: recovery, ``verify``, time travel and the Kafka ledger replay
all start there at the latest.

Concurrency with a running engine: a prune holds ``wal/retention.lock``
while it lists snapshots, decides, records and unlinks; the engine takes the
same lock (without waiting: it skips that round) around its snapshot
pruning, which reads the pin inside the lock. So a snapshot chosen as the
base cannot be deleted between the choice and the record. The sealer only
renames raw segments into ``.seg.zst`` and unlinks raw ones; a prune removes
only sealed segments with a later segment after them, which the writer never
touches again. Durable-seq: snapshots are written only once the WAL is
durable through their seq, so a base never lies beyond the durable WAL.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from eventstore import RetentionRecord, SegmentInfo, WalReader, read_retention, retained_segments, retention_lock
from eventstore.reader import decode_frame
from eventstore.retention import remove_segments, write_retention
from eventstore.segment import list_segments, load_segment_bytes, scan_frames
from snapshot import list_snapshots, load_snapshot

from .recover import index_dir, snapshot_dir, wal_dir

__all__ = ["RetainPolicy", "parse_policy", "SnapFact", "KafkaMarks", "read_kafka_marks", "PrunePlan",
           "plan_prune", "prune_wal", "snapshot_facts", "pinned_snapshots", "commit_prune", "finish_prune",
           "event_ts", "snapshot_prune_guard"]

PUBLISHED_FILE = "kafka-published.json"   # engine.io.kafka.PUBLISHED_FILE (recovery does not import engine.io)
_UNITS = {"s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000, "d": 86_400_000_000_000}
_TERM = re.compile(r"^(\d+)([smhd]?)$")


@dataclass(frozen=True)
class RetainPolicy:
    """What time travel is asked to keep (``--wal-retain``).

    Attributes:
        events: keep at least the last this many WAL events (``None``: no bound).
        duration_ns: keep every state within this long (by the commands'
            ``ts_ns``) of the newest command (``None``: no bound).
        spec: the text it was parsed from.
    """

    events: Optional[int] = None
    duration_ns: Optional[int] = None
    spec: str = ""


def parse_policy(spec: Optional[str]) -> Optional[RetainPolicy]:
    """``"K"`` (events), ``"Ns"``/``"Nm"``/``"Nh"``/``"Nd"`` (a duration by
    ``ts_ns``), or both comma-separated (``"1000000,7d"``: both must hold);
    ``None``, ``""``, ``"off"``: no policy.

    Raises:
        ValueError: anything else.
    """
    if spec is None or spec.strip().lower() in ("", "off", "none"):
        return None
    events = duration = None
    for term in spec.replace(" ", "").lower().split(","):
        m = _TERM.match(term)
        if not m:
            raise ValueError(f"--wal-retain {spec!r}: expected K (events), a duration like 30m, 12h, 7d, "
                             f"or both as K,DURATION")
        n, unit = int(m.group(1)), m.group(2)
        if unit:
            if duration is not None:
                raise ValueError(f"--wal-retain {spec!r}: two durations")
            duration = n * _UNITS[unit]
        else:
            if events is not None:
                raise ValueError(f"--wal-retain {spec!r}: two event counts")
            events = n
    return RetainPolicy(events, duration, spec)


@dataclass
class SnapFact:
    """One snapshot file as retention sees it.

    Attributes:
        valid: True (loaded and checked, or written by this engine), False
            (damaged), None (not checked: may be valid).
        match_sequence / ledger_seq: its state's trade and ledger counters.
        ts_ns: ``ts_ns`` of the last command at or before its seq (``None``: unknown).
    """

    seq: int
    valid: Optional[bool]
    match_sequence: Optional[int] = None
    ledger_seq: Optional[int] = None
    ts_ns: Optional[int] = None
    error: str = ""


@dataclass(frozen=True)
class KafkaMarks:
    """The published watermarks the bridge republishes above after a restart."""

    match_id: int
    cmd_seq: int
    ledger_seq: int
    ledger_cmd_seq: int
    path: str
    note: str = ""


def read_kafka_marks(data_dir: str) -> Optional[KafkaMarks]:
    """The watermarks of ``kafka-published.json`` whatever topics it names
    (``None`` without the file: no Kafka bridge ever published from here).
    An unreadable file counts as all zero (the bridge would republish everything)."""
    path = os.path.join(data_dir, PUBLISHED_FILE)
    try:
        with open(path) as f:
            doc = json.load(f)
        return KafkaMarks(int(doc.get("match_id", 0)), int(doc.get("cmd_seq", 1)), int(doc.get("ledger_seq", 0)),
                          int(doc.get("ledger_cmd_seq", 1)), path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        return KafkaMarks(0, 1, 0, 1, path, f"unreadable ({exc}): counted as nothing published")


@dataclass
class PrunePlan:
    """What a prune decided (and, once applied, did). :meth:`as_dict` is the
    ``wal prune --json`` object: ``would_remove`` (the plan), ``removed``
    (empty unless applied), ``bytes_to_free``, ``bytes_freed``, ``floor``,
    ``rule``, ``bounds``, ``base_snapshot_seq``, ``pruned_before_seq``, ...

    Attributes:
        floor: the first seq that must stay (base + 1); ``None``: nothing may go.
        rule: what set it (``before-seq``, ``oldest valid snapshot``,
            ``kafka trades watermark``, ``kafka ledger watermark``,
            ``wal-retain events``, ``wal-retain duration``, ``newest base below
            the bounds``, ``no valid snapshot``, ...).
        bounds: each rule's upper bound on the floor (``None``: no bound).
        base_snapshot_seq: the snapshot the retained WAL continues.
        remove: segments wholly before the floor, to be (or that were) removed.
        leftovers: segments a crashed earlier prune had already recorded as gone.
        pruned_before_seq: the earliest seq kept after this prune.
    """

    floor: Optional[int]
    rule: str
    bounds: dict
    base_snapshot_seq: Optional[int]
    remove: list = field(default_factory=list)
    leftovers: list = field(default_factory=list)
    pruned_before_seq: Optional[int] = None
    previous: Optional[RetentionRecord] = None
    last_seq: int = 0
    bytes_to_free: int = 0
    bytes_freed: int = 0
    applied: bool = False
    dry_run: bool = False
    notes: list = field(default_factory=list)
    segments: list = field(default_factory=list)
    sizes: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        ends = {s.first_seq: e for s, e in self.segments}

        def seg(info: SegmentInfo) -> dict:
            size = self.sizes.get(info.path)
            return {"segment": os.path.basename(info.path), "first_seq": info.first_seq,
                    "last_seq": ends.get(info.first_seq), "bytes": _size(info) if size is None else size}
        return {"dry_run": self.dry_run, "applied": self.applied, "floor": self.floor, "rule": self.rule,
                "bounds": self.bounds, "base_snapshot_seq": self.base_snapshot_seq,
                "pruned_before_seq": self.pruned_before_seq,
                "previous_pruned_before_seq": None if self.previous is None else self.previous.pruned_before_seq,
                "last_seq": self.last_seq, "would_remove": [seg(s) for s in self.remove],
                "removed": [seg(s) for s in self.remove] if self.applied else [],
                "leftovers": [seg(s) for s in self.leftovers],
                "bytes_to_free": self.bytes_to_free, "bytes_freed": self.bytes_freed,
                "notes": self.notes}


def _size(info: SegmentInfo) -> int:
    try:
        return os.stat(info.path).st_size
    except OSError:
        return 0


def plan_prune(segs: list[SegmentInfo], snaps: list[SnapFact], last_seq: int, last_ts: Optional[int], *,
               before_seq: Optional[int] = None, policy: Optional[RetainPolicy] = None,
               kafka: Optional[KafkaMarks] = None, record: Optional[RetentionRecord] = None,
               ts_of: Optional[Callable[[int], Optional[int]]] = None,
               snapshot_retain: Optional[int] = None) -> PrunePlan:
    """Decide a prune (pure: reads nothing but what ``ts_of`` reads). See the module doc.

    Args:
        segs: the retained segments, oldest first (:func:`eventstore.retained_segments`).
        snaps: every snapshot file, oldest first.
        last_seq / last_ts: the WAL's last seq and its command's ``ts_ns``.
        ts_of: ``ts_ns`` at a snapshot's seq when ``SnapFact.ts_ns`` is unknown.
        snapshot_retain: the engine's ``snapshot_retain``: the newest this
            many snapshots are recovery's fallbacks (``None``: every one on disk).
    """
    # The segment holding the last event always stays: the WAL never ends up
    # with no event at all (readers then know where it stands).
    bounds: dict = {"before-seq": before_seq, "last event": last_seq}
    notes: list = []
    if policy is not None:
        bounds["wal-retain events"] = None if policy.events is None else last_seq - policy.events + 1
    usable = [s for s in snaps if s.seq <= last_seq]
    if len(usable) < len(snaps):
        notes.append("snapshots beyond the WAL's last seq are ignored, as recovery ignores them")
    maybe = [s for s in usable if s.valid is not False]
    for s in usable:
        if s.valid is False:
            notes.append(f"snapshot at seq {s.seq} is damaged ({s.error}): not a base")
    known = [s for s in usable if s.valid is True]
    # Recovery's fallbacks are the snapshots snapshot retention keeps: the
    # newest ``snapshot_retain`` files. Older files are either the current
    # base (pinned: kept for the WAL after it, not as a fallback; counting it
    # would hold the floor forever) or about to be pruned. If none of the
    # newest may be valid, every snapshot on disk counts.
    window = snaps[-snapshot_retain:] if snapshot_retain else snaps
    fallbacks = [s for s in window if s.seq <= last_seq and s.valid is not False] or maybe
    bounds["oldest valid snapshot"] = fallbacks[0].seq + 1 if fallbacks else None
    plan = PrunePlan(None, "", bounds, None, previous=record, last_seq=last_seq, notes=notes)
    if not known:
        plan.rule = "no valid snapshot" if not maybe else "no snapshot known valid"
        return _segments(plan, segs, record)
    upper = [(b, name) for name, b in bounds.items() if b is not None]
    top, top_rule = min(upper)
    candidates = [s for s in known if s.seq + 1 <= top]
    rule = top_rule
    if kafka is not None:
        bounds["kafka trades watermark"] = kafka.match_id
        bounds["kafka ledger watermark"] = kafka.ledger_seq
        if kafka.note:
            notes.append(f"{kafka.path}: {kafka.note}")
    cutoff = None
    if policy is not None and policy.duration_ns is not None:
        cutoff = None if last_ts is None else last_ts - policy.duration_ns
        bounds["wal-retain duration"] = cutoff
    base = None
    for s in reversed(candidates):
        why = None
        if kafka is not None and (s.match_sequence is None or s.match_sequence > kafka.match_id):
            why = "kafka trades watermark"
        elif kafka is not None and (s.ledger_seq is None or s.ledger_seq > kafka.ledger_seq):
            why = "kafka ledger watermark"
        elif policy is not None and policy.duration_ns is not None:
            ts = s.ts_ns if s.ts_ns is not None else (ts_of(s.seq) if ts_of is not None else None)
            s.ts_ns = ts
            if cutoff is None or ts is None or ts > cutoff:
                why = "wal-retain duration"
        if why is None:
            base = s
            break
        rule = why
    if base is None:
        plan.rule = rule
        return _segments(plan, segs, record)
    if base.seq + 1 != top and rule == top_rule:
        rule = f"{top_rule} (newest valid snapshot below it)"
    plan.floor, plan.rule, plan.base_snapshot_seq = base.seq + 1, rule, base.seq
    return _segments(plan, segs, record)


def _segments(plan: PrunePlan, segs: list[SegmentInfo], record: Optional[RetentionRecord]) -> PrunePlan:
    ends = [(s, (segs[i + 1].first_seq - 1) if i + 1 < len(segs) else None) for i, s in enumerate(segs)]
    plan.segments = ends
    if record is not None and plan.floor is not None and plan.floor <= record.pruned_before_seq:
        plan.notes.append(f"already pruned below seq {record.pruned_before_seq}")
    k = 0
    if plan.floor is not None:
        # A prefix only (never a hole), sealed only, never the newest segment.
        while k + 1 < len(segs) and segs[k].sealed and segs[k + 1].first_seq <= plan.floor:
            k += 1
        if k < len(segs) - 1 and not segs[k].sealed and segs[k + 1].first_seq <= plan.floor:
            plan.notes.append(f"{os.path.basename(segs[k].path)} is not sealed yet: kept (and all after it)")
    plan.remove = segs[:k]
    plan.pruned_before_seq = segs[k].first_seq if plan.remove else (
        record.pruned_before_seq if record is not None else (segs[0].first_seq if segs else None))
    plan.sizes = {s.path: _size(s) for s in plan.remove}
    plan.bytes_to_free = sum(plan.sizes.values())
    return plan


def event_ts(read: Callable[[int], Any], seq: int) -> Optional[int]:
    """``ts_ns`` of the command whose step holds ``seq`` (a trade carries its
    own; a reject names its command); ``read(seq)`` gives the payload or None."""
    p = read(seq)
    for _ in range(2):
        if p is None or not p:
            return None
        kind = p[0]
        if kind == 64:
            return p[2] if type(p[2]) is int else None
        if kind == 65:
            p = read(p[1])
            continue
        if kind < 64:
            return p[1] if type(p[1]) is int else None
        return None
    return None


def _wal_tail(segs: list[SegmentInfo]) -> tuple[int, Optional[int]]:
    """``(last_seq, ts_ns of its step's command)`` from the newest segments only
    (whole frames; an engine may be writing the last one)."""
    for info in reversed(segs):
        try:
            data = load_segment_bytes(info)
        except FileNotFoundError:
            continue
        frames = list(scan_frames(data, info.path, is_last=True, tail=[]))
        if not frames:
            if info is segs[0]:
                return info.first_seq - 1, None
            continue
        events: list = []
        for fr in frames[-4:]:
            events.extend(zip(range(fr.first_seq, fr.first_seq + fr.count), decode_frame(fr, info.path)))
        last = frames[-1].first_seq + frames[-1].count - 1
        by_seq = dict(events)
        ts = event_ts(by_seq.get, last)
        return last, ts
    return 0, None


def snapshot_facts(data_dir: str) -> list[SnapFact]:
    """Load and check every snapshot (as recovery would): its counters, or why it is damaged."""
    from engine.core import Matcher
    out = []
    for info in list_snapshots(snapshot_dir(data_dir)):
        try:
            state = load_snapshot(info)
            m = Matcher.from_state(state)
            out.append(SnapFact(info.seq, True, m.match_sequence, m.accounts.ledger_seq))
        except Exception as exc:  # noqa: BLE001 - a damaged snapshot is passed over, as recovery does
            out.append(SnapFact(info.seq, False, error=str(exc)))
    return out


def pinned_snapshots(data_dir: str) -> set[int]:
    """Seqs of snapshots snapshot retention must keep: the base the retained
    WAL continues.

    Raises:
        RetentionFormatError: the record is damaged (snapshot pruning is then
            skipped: :func:`snapshot_prune_guard`).
    """
    return _pins(data_dir)


def _pins(data_dir: str) -> set[int]:
    rec = read_retention(wal_dir(data_dir))
    return set() if rec is None or rec.base_snapshot_seq is None else {rec.base_snapshot_seq}


def commit_prune(data_dir: str, plan: PrunePlan) -> Optional[RetentionRecord]:
    """Step 1 of applying a plan: record it (``retention.json``, durable)
    before any unlink. Returns the record written (``None``: nothing new)."""
    prev = plan.previous
    if not plan.remove or (prev is not None and plan.pruned_before_seq <= prev.pruned_before_seq):
        return None
    return write_retention(wal_dir(data_dir), plan.pruned_before_seq, plan.base_snapshot_seq, rule=plan.rule,
                           removed=tuple(os.path.basename(s.path) for s in plan.remove))


def finish_prune(data_dir: str, plan: PrunePlan) -> int:
    """Step 2: unlink what the record counts as pruned (this plan's segments
    and any a crashed prune left), fsync the directory. Returns bytes freed."""
    wd = wal_dir(data_dir)
    rec = read_retention(wd)
    if rec is None:
        return 0
    gone = []
    for info in list_segments(wd):
        if info.first_seq >= rec.pruned_before_seq:
            break
        gone.append(info)
    twins = []
    for info in gone:
        raw = info.path[:-4] if info.sealed else info.path
        if info.sealed and os.path.exists(raw):
            twins.append(raw)
    freed = remove_segments(wd, [i for i in gone if i.sealed])
    for raw in twins + [i.path for i in gone if not i.sealed]:
        # A raw twin of a sealed segment wholly below the record (a crash
        # between sealing and unlinking it), or a raw file a crashed prune
        # left: garbage below the record. The sealer tolerates its loss.
        try:
            freed += os.stat(raw).st_size
            os.unlink(raw)
        except FileNotFoundError:
            pass
    if twins or any(not i.sealed for i in gone):
        from eventstore import fsync_dir
        fsync_dir(wd)
    return freed + _prune_keyframe_files(data_dir, rec.pruned_before_seq)


def _prune_keyframe_files(data_dir: str, pruned_before_seq: int) -> int:
    """Delete persisted time-travel keyframes (derived data) after events the WAL
    no longer holds: the frame each names is gone, so none could be used."""
    from .keyframes import KeyframeFiles
    files = KeyframeFiles(index_dir(data_dir))
    freed = 0
    for seq in [q for q in files.seqs if q < pruned_before_seq]:
        try:
            freed += os.stat(files.path(seq)).st_size
        except FileNotFoundError:
            continue
        files.remove(seq)
    return freed


def prune_wal(data_dir: str, *, before_seq: Optional[int] = None, policy: Optional[RetainPolicy] = None,
              dry_run: bool = False, facts: Optional[dict] = None, blocking: bool = True,
              tail: Optional[tuple[int, Optional[int]]] = None,
              snapshot_retain: Optional[int] = 3) -> Optional[PrunePlan]:
    """Decide and (unless ``dry_run``) apply a prune of ``data_dir``'s WAL.

    Args:
        before_seq: remove nothing at or after this seq.
        policy: the retention policy (may be combined with ``before_seq``).
        facts: ``{seq: SnapFact}`` the caller knows (the engine: no loading);
            snapshots on disk it does not know count as possibly valid.
            ``None``: load and check every snapshot.
        blocking: wait for ``wal/retention.lock``; if False and it is held,
            return ``None`` (nothing done).
        tail: ``(last_seq, ts_ns)`` of the WAL if known (the engine).
        snapshot_retain: the engine's ``snapshot_retain`` (see the module doc).

    Returns:
        The plan, with ``applied`` and ``bytes_freed`` once done.
    """
    wd = wal_dir(data_dir)
    if before_seq is None and policy is None:
        raise ValueError("give --before-seq N and/or a --wal-retain policy: a prune needs an upper bound")
    with retention_lock(wd, blocking=blocking) as held:
        if not held:
            return None
        record = read_retention(wd)
        segs = retained_segments(wd, record)
        if facts is None:
            snaps = snapshot_facts(data_dir)
        else:
            snaps = [facts.get(i.seq) or SnapFact(i.seq, None) for i in list_snapshots(snapshot_dir(data_dir))]
        last_seq, last_ts = tail if tail is not None else _wal_tail(segs)
        reader = WalReader(wd)

        def read_one(seq: int) -> Any:
            try:
                return next((p for _, p in reader.read(seq, seq)), None)
            except Exception:  # noqa: BLE001 - unknown time: the duration rule keeps the segment
                return None

        plan = plan_prune(segs, snaps, last_seq, last_ts, before_seq=before_seq, policy=policy,
                          kafka=read_kafka_marks(data_dir), record=record,
                          ts_of=None if facts is not None else (lambda s: event_ts(read_one, s)),
                          snapshot_retain=snapshot_retain)
        leftovers = [i for i in list_segments(wd) if record is not None and i.first_seq < record.pruned_before_seq
                     and i.first_seq not in {s.first_seq for s in segs}]
        plan.leftovers = leftovers
        plan.sizes.update({s.path: _size(s) for s in leftovers})
        plan.dry_run = dry_run
        if dry_run or (not plan.remove and not leftovers):
            return plan
        commit_prune(data_dir, plan)
        plan.bytes_freed = finish_prune(data_dir, plan)
        plan.applied = True
        return plan


def snapshot_prune_guard(data_dir: str) -> Callable[[], Any]:
    """For ``SnapshotWriter(prune_guard=...)``: each snapshot pruning holds
    the retention lock (without waiting: if a WAL prune holds it, that
    pruning is skipped) and keeps the pinned base (:func:`pinned_snapshots`)."""
    import contextlib

    @contextlib.contextmanager
    def guard() -> Any:
        with retention_lock(wal_dir(data_dir), blocking=False) as held:
            if not held:
                yield None
                return
            try:
                keep = _pins(data_dir)
            except Exception:  # noqa: BLE001 - a damaged record: do not guess what may go
                keep = None
            yield keep
    return guard
