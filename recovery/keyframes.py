"""Fast random access to the engine state at any seq: keyframes, a cursor, a time index.

A :class:`Timeline` answers "the state right after event ``seq``" by replaying
the WAL from the nearest *base* at or before ``seq``:

- the *cursor*: the matcher of the previous query, kept, so that stepping
  ``seq``, ``seq + 1``, ... replays one step each time;
- *keyframes*: matcher states exported at the first step end past every
  multiple of ``keyframe_every`` that any replay passes, kept in memory
  compressed (msgpack + zstd, recent-trade history left out); built lazily,
  never written anywhere (the API is read-only);
- the engine's own snapshots (``<data-dir>/snapshots``, checked as recovery
  checks them);
- the empty state before seq 1 (when the WAL starts at 1).

Spacing: a keyframe is laid only if none lies within ``max(keyframe_every,
orders_factor x resting orders)`` events (see :meth:`Timeline.spacing`):
restoring a keyframe costs about as much as replaying a third of an event per
resting order (measured on the 16.7M-event synthetic directory of
``scripts/bench_history.py``: 0.44 s to open a keyframe of 270,821 orders,
1.6 us an order, against 5 us an event replayed), so a book of 300,000 orders
gets keyframes 100,000 events apart: a query then spends about as long
opening its base as replaying from it, and memory and disk grow with the
book only every ``orders_factor x resting orders`` events.

Bound: a point query replays at most ``max_replay`` events from its base
(with spacing by book size, at most the spacing there). When
no base lies within ``max_replay`` of the target (a region no replay passed
yet and no snapshot near), the query first lays keyframes forward from the
nearest base (an *index pass*, counted apart in :attr:`Stats.index_events`;
done once per region, or for the whole WAL by :meth:`Timeline.build_index`),
then replays at most ``keyframe_every`` events plus one step from the last
keyframe. :attr:`Stats.last_replayed` is what the last query itself replayed.

Entry seqs (``placed_seq``): every replay records, per resting order, the seq
of the command that last entered it on the book (a place that rested, or an
amend that lost priority and rested again: the matcher emits ``OrderRested``
for both). Orders inherited from a snapshot have no such record; they are
found by one decode-only scan of the WAL from its first event to the
snapshot's seq (:func:`scan_entry_seqs`, cached per snapshot) and checked
against the snapshot's book; where the WAL does not reach back far enough, or
the check fails, the entry seq is ``None``.

Time index: one decode-only scan of the commands gives ``(seq, ts_ns)`` per
command (24 bytes each in ``array('q')``s, extended as the WAL grows) and the
running maximum of ``ts_ns``, which is what :meth:`Timeline.seq_at_time`
bisects (a clock that steps back cannot make it pick a later state).

Persisted keyframes (``evengine index``, :meth:`Timeline.write_index`): the
same packed states written as files under ``<data-dir>/index/`` (format:
``recovery/FORMAT.md``), one per ``every`` events, so that a fresh process
replays at most ``every`` events for any query. They are derived data: each
names the WAL frame it was built after (first seq, count, payload CRC) and
is used only while the WAL still holds that frame and the file's own CRCs
check; anything else is skipped (counted in :attr:`Stats.keyframe_files_rejected`)
and the query falls back to the next older base. Each also holds the running
maximum ``ts_ns`` at its seq, so that :meth:`Timeline.seq_at_time` scans at
most ``every`` events instead of building the whole time index.

Memory: one cursor (a full matcher), keyframes of ``~(state size after
compression)`` each, one per ``keyframe_every`` events replayed (Bitstamp
sample, ~6,500 resting orders: about 125 KB each, 32 for the whole WAL: 4 MB), the
time index (24 bytes per command) and :class:`recovery.walindex.WalIndex`.
"""

from __future__ import annotations

import bisect
import gc
import os
import struct
import time
import zlib
from array import array
from dataclasses import dataclass
from typing import Any, Callable, Optional

import msgpack
import zstandard

from eventstore import atomic_write

from engine.core import Matcher
from snapshot import list_snapshots, load_snapshot

from .replay import Replayer
from .walindex import WalIndex

__all__ = ["Timeline", "Cursor", "Stats", "scan_entry_seqs", "KeyframeFiles", "KEYFRAME_FILE_VERSION"]

_PLACE, _CANCEL, _AMEND = 2, 3, 4
_TRADE, _REJECTED, _RESTED = 64, 65, 66

PlacedMap = dict  # symbol -> {order_id: entry seq or None}


_CURSOR_STEP = 1_000
"""Events within which a query always continues from the live state rather
than from a closer keyframe or snapshot (opening one costs more than that).
Beyond it the choice is by measured cost: the live state goes on while the
events a closer base would save take less time to replay than opening that
base took last time (a keyframe of 40,000 resting orders costs as much as
some 20,000 events), never past ``max_replay``."""


@dataclass
class Stats:
    """Counters of the work replay did (reset never; read them around a query).

    Attributes:
        last_replayed: WAL events the last point query fed through the matcher
            after its base (keyframe, snapshot, cursor or the empty state).
        last_base: ``(kind, seq)`` of that base: ``"cursor"``, ``"keyframe"``,
            ``"keyframe file"``, ``"snapshot"``, ``"genesis"``, or ``"index pass"`` (the query laid
            keyframes first; ``seq`` is where that pass ended).
        replayed_events: all events fed through the matcher, every query.
        index_events: events replayed by index passes (laying keyframes).
        scanned_events: events decoded without matching (time index, entry
            seqs, trades, order lives).
        keyframes_built: keyframes laid by replays.
        keyframe_files_used: persisted keyframes opened as a base.
        keyframe_files_rejected: persisted keyframes skipped (damaged, another
            WAL, another version).
        keyframe_files_written: persisted keyframes written (``write_index``).
    """

    last_replayed: int = 0
    last_base: tuple = ("genesis", 0)
    replayed_events: int = 0
    index_events: int = 0
    scanned_events: int = 0
    keyframes_built: int = 0
    keyframe_files_used: int = 0
    keyframe_files_rejected: int = 0
    keyframe_files_written: int = 0


class Cursor:
    """A matcher positioned in the WAL, with the entry seq of every resting order.

    Attributes:
        matcher: the state; ``matcher.last_seq`` is the end of the last step applied.
        fed_seq: the last WAL event fed (a step's logged trades are checked
            one by one, so ``fed_seq`` may be inside a step).
        step_seq: the seq of the last command applied (start of the current step).
        placed: ``symbol -> {order_id: entry seq or None}`` (may hold orders
            that left; only live orders' entries mean anything).
        origin: seq of the snapshot this state descends from, whose orders'
            entries are unknown (``None``), or ``None`` if every entry is known.
    """

    __slots__ = ("matcher", "replayer", "fed_seq", "step_seq", "placed", "origin")

    def __init__(self, matcher: Matcher, placed: PlacedMap, origin: Optional[int]) -> None:
        self.matcher = matcher
        self.replayer = Replayer(matcher)
        self.fed_seq = matcher.last_seq
        self.step_seq = matcher.last_seq
        self.placed = placed
        self.origin = origin

    def entry_seq(self, symbol: str, order_id: int) -> Optional[int]:
        return self.placed.get(symbol, {}).get(order_id)


def _pack_keyframe(cursor: Cursor) -> bytes:
    m = cursor.matcher
    state = m.export_state()
    state["trades"] = []
    entries = []
    for symbol, _tick, orders, *_rest in state["books"]:
        known = cursor.placed.get(symbol, {})
        entries.append([known.get(row[0]) for row in orders])     # aligned with the book's order rows
    return zstandard.ZstdCompressor(level=1).compress(
        msgpack.packb([state, entries, cursor.origin], use_bin_type=True))


def _unpack_keyframe(blob: bytes) -> tuple[dict, PlacedMap, Optional[int]]:
    state, entries, origin = msgpack.unpackb(zstandard.ZstdDecompressor().decompress(blob), raw=False,
                                             strict_map_key=False)
    placed = {book[0]: dict(zip([row[0] for row in book[2]], seqs)) for book, seqs in zip(state["books"], entries)}
    return state, placed, origin


def scan_entry_seqs(wal: WalIndex, to_seq: int) -> tuple[dict, Optional[int]]:
    """Entry seq of every order resting right after ``to_seq``, from the logged
    commands, trades and rejects alone (no matching), scanning from the WAL's
    first event.

    Returns:
        ``({(symbol, order_id): [entry_seq, price, leaves_qty]}, first_seq)``;
        complete only if ``first_seq == 1``.
    """
    live: dict = {}
    first = wal.first_seq or 1

    def finish(p: list) -> None:
        seq, cmd, filled, rejected = p
        if rejected:
            return
        kind, key = cmd[0], (cmd[2], cmd[3])
        if kind == _PLACE:
            if cmd[5] == 1 and cmd[6] == 1 and cmd[8] - filled > 0:
                live[key] = [seq, cmd[7], cmd[8] - filled]
        elif kind == _CANCEL:
            live.pop(key, None)
        else:
            cur = live.get(key)
            if cur is None:
                return
            if cmd[4] == cur[1] and cmd[5] <= cur[2]:
                cur[2] = cmd[5]
            elif cmd[5] - filled > 0:
                live[key] = [seq, cmd[4], cmd[5] - filled]
            else:
                del live[key]

    pend: Optional[list] = None
    for seq, p in wal.read(first, to_seq):
        kind = p[0]
        if kind < 64:
            if pend is not None:
                finish(pend)
            pend = [seq, p, 0, False] if kind in (_PLACE, _CANCEL, _AMEND) and len(p) > 3 else None
        elif kind == _TRADE:
            cur = live.get((p[3], p[7]))
            if cur is not None:
                cur[2] -= p[5]
                if cur[2] <= 0:
                    del live[(p[3], p[7])]
            if pend is not None and p[11] == pend[0]:
                pend[2] += p[5]
        elif kind == _REJECTED and pend is not None and p[1] == pend[0]:
            pend[3] = True
    if pend is not None:
        finish(pend)
    return live, first


KEYFRAME_FILE_VERSION = 1
_KF_MAGIC = b"EVKEYFR\x00"
_KF_HEAD = struct.Struct("<8sHHIQQIIqII")
"""magic, version, flags, payload length, seq, WAL frame first_seq, frame count,
frame payload CRC, running max ts_ns, payload CRC, header CRC (of the bytes before it)."""


class KeyframeFiles:
    """Persisted keyframes in one directory (``<data-dir>/index``); see
    ``recovery/FORMAT.md``. Names are ``kf-<seq, 20 digits>.evkf``.

    Args:
        index_dir: the directory (created on the first write).
    """

    def __init__(self, index_dir: str) -> None:
        self.index_dir = index_dir
        self.seqs: list[int] = []
        self._headers: dict[int, tuple] = {}
        self.rescan()

    def path(self, seq: int) -> str:
        return os.path.join(self.index_dir, f"kf-{seq:020d}.evkf")

    def rescan(self) -> None:
        """List the files again (another process may have written some)."""
        try:
            names = os.listdir(self.index_dir)
        except FileNotFoundError:
            names = []
        seqs = []
        for name in names:
            if name.startswith("kf-") and name.endswith(".evkf") and len(name) == 28 and name[3:23].isdigit():
                seqs.append(int(name[3:23]))
        self.seqs = sorted(seqs)

    def write(self, seq: int, identity: tuple[int, int, int], ts_max: int, blob: bytes) -> str:
        """Write one keyframe atomically (temp file, fsync, rename); return its path.

        Args:
            seq: the event the state is right after.
            identity: ``WalIndex.frame_identity(seq)``.
            ts_max: running maximum ``ts_ns`` of the commands up to ``seq``.
            blob: the packed state.
        """
        os.makedirs(self.index_dir, exist_ok=True)
        first, count, crc = identity
        head = _KF_HEAD.pack(_KF_MAGIC, KEYFRAME_FILE_VERSION, 0, len(blob), seq, first, count, crc,
                             ts_max, zlib.crc32(blob), 0)
        head = head[:-4] + struct.pack("<I", zlib.crc32(head[:-4]))
        path = self.path(seq)
        atomic_write(path, head + blob)
        if seq not in self.seqs:
            bisect.insort(self.seqs, seq)
        self._headers[seq] = (first, count, crc, ts_max, len(blob))
        return path

    def _head(self, raw: bytes, seq: int) -> Optional[tuple]:
        """The checked header fields of a file's first bytes, or ``None``."""
        if len(raw) < _KF_HEAD.size:
            return None
        fields = _KF_HEAD.unpack_from(raw)
        magic, version, _flags, _length, fseq = fields[:5]
        if (magic != _KF_MAGIC or version != KEYFRAME_FILE_VERSION or fseq != seq
                or zlib.crc32(raw[:_KF_HEAD.size - 4]) != fields[-1]):
            return None
        return fields

    def header(self, seq: int) -> Optional[tuple[int, int, int, int, int]]:
        """``(frame first_seq, frame count, frame CRC, ts_max, payload length)``
        of the file for ``seq``, or ``None`` if it is missing or its header is bad."""
        got = self._headers.get(seq)
        if got is not None:
            return got
        try:
            with open(self.path(seq), "rb") as f:
                fields = self._head(f.read(_KF_HEAD.size), seq)
        except OSError:
            return None
        if fields is None:
            return None
        _m, _v, _f, length, _s, first, count, crc, ts_max, _pcrc, _hcrc = fields
        got = self._headers[seq] = (first, count, crc, ts_max, length)
        return got

    def load(self, seq: int) -> Optional[tuple[tuple[int, int, int], bytes]]:
        """``(frame identity, packed state)`` of the file for ``seq`` if whole
        and checked, else ``None``."""
        try:
            with open(self.path(seq), "rb") as f:
                raw = f.read()
        except OSError:
            return None
        fields = self._head(raw, seq)
        if fields is None:
            return None
        _m, _v, _f, length, _s, first, count, crc, _ts, pcrc, _hcrc = fields
        blob = raw[_KF_HEAD.size:]
        if len(blob) != length or zlib.crc32(blob) != pcrc:
            return None
        return (first, count, crc), blob

    def remove(self, seq: int) -> None:
        """Delete the file for ``seq`` (it did not check)."""
        self.forget(seq)
        try:
            os.unlink(self.path(seq))
        except FileNotFoundError:
            pass

    def forget(self, seq: int) -> None:
        """Stop offering ``seq`` as a base (the file stays; ``evengine index`` rewrites it)."""
        if seq in self.seqs:
            self.seqs.remove(seq)
        self._headers.pop(seq, None)


class Timeline:
    """The state at any seq of one data directory, read-only. See the module doc.

    Args:
        wal: the WAL index.
        snap_dir: the engine's snapshot directory.
        keyframe_every: lay a keyframe at the first step end past every multiple of this.
        max_replay: most events a point query replays from its base (>= ``keyframe_every``).
        trade_history: recent trades a matcher handed out keeps (``Matcher`` argument).
        index_dir: where persisted keyframes are (``<data-dir>/index``), or ``None``.
        orders_factor: keyframes lie at least this many events per resting order
            apart (see :meth:`spacing`); 0: exactly ``keyframe_every``.
    """

    def __init__(self, wal: WalIndex, snap_dir: str, keyframe_every: int = 10_000,
                 max_replay: int = 50_000, trade_history: int = 10_000,
                 index_dir: Optional[str] = None, orders_factor: float = 1 / 3) -> None:
        if keyframe_every <= 0 or max_replay < keyframe_every:
            raise ValueError(f"need 0 < keyframe_every <= max_replay, got {keyframe_every}, {max_replay}")
        self.wal = wal
        self.snap_dir = snap_dir
        self.keyframe_every = keyframe_every
        self.max_replay = max_replay
        self.trade_history = trade_history
        self.stats = Stats()
        self.keyframes: dict[int, bytes] = {}     # seq -> packed state
        self._kf_seqs: list[int] = []
        self._bad_snapshots: set[str] = set()
        self._entry_scans: dict[int, dict] = {}   # snapshot seq -> scan_entry_seqs result (checked)
        self.cursor: Optional[Cursor] = None
        self._cmd_seqs = array("q")
        self._cmd_ts = array("q")
        self._ts_max = array("q")
        self._ts_scanned = 0
        # Set by History on a pruned WAL: raises PrunedRangeError for a seq
        # before the earliest state the retained WAL and snapshots rebuild.
        self.check_seq: Optional[Callable[[int], None]] = None
        self.earliest: Optional[Callable[[], Optional[int]]] = None
        self.files = KeyframeFiles(index_dir) if index_dir is not None else None
        self.orders_factor = orders_factor
        self._open_s = 0.0               # seconds the last keyframe/snapshot open took
        self._event_s = 0.0              # seconds per event replayed (moving average)
        self._persist_every = 0          # write_index: persist a keyframe per this many events
        self._persist_ts = 0             # running max ts_ns while write_index replays
        self._keep_in_memory = True

    # ------------------------------------------------------------------ bases
    def spacing(self, cursor: Cursor, every: int) -> int:
        """Events between two keyframes at the cursor's state: ``every``, or
        ``orders_factor`` times the resting orders if more (opening a keyframe
        costs about as much as replaying a third of an event per resting order,
        module doc: closer ones would not make a query faster and would cost
        memory and disk)."""
        orders = sum(len(b.orders) for b in cursor.matcher.books.values())
        return max(every, int(self.orders_factor * orders))

    @staticmethod
    def _far_enough(seqs: list[int], seq: int, spacing: int, every: int) -> bool:
        need = spacing - every // 2       # candidates fall just past multiples of every
        i = bisect.bisect_right(seqs, seq)
        if i > 0 and seq - seqs[i - 1] < need:
            return False
        return not (i < len(seqs) and seqs[i] - seq < need)

    def _add_keyframe(self, cursor: Cursor) -> None:
        seq = cursor.matcher.last_seq
        if self._persist_every and self.files is not None:
            self._persist(cursor, seq)
        if self._keep_in_memory and seq not in self.keyframes and self._far_enough(
                self._kf_seqs, seq, self.spacing(cursor, self.keyframe_every), self.keyframe_every):
            self.keyframes[seq] = _pack_keyframe(cursor)
            bisect.insort(self._kf_seqs, seq)
            self.stats.keyframes_built += 1
        # Forget entries of orders that left, so the cursor's map stays the book's size.
        for symbol, book in cursor.matcher.books.items():
            known = cursor.placed.get(symbol)
            if known is not None and len(known) > 2 * len(book.orders) + 1024:
                cursor.placed[symbol] = {oid: known.get(oid) for oid in book.orders}

    def _persist(self, cursor: Cursor, seq: int) -> None:
        every = self._persist_every
        files = self.files
        if not self._far_enough(files.seqs, seq, self.spacing(cursor, every), every):
            return                                   # one lies close enough
        identity = self.wal.frame_identity(seq)
        if identity is None:
            return
        files.write(seq, identity, self._persist_ts, _pack_keyframe(cursor))
        self.stats.keyframe_files_written += 1

    def _cursor_from_file(self, seq: int) -> Optional[Cursor]:
        """A cursor from the persisted keyframe at ``seq`` if it checks (see the
        module doc), else ``None`` with the file no longer offered as a base."""
        cursor = None
        got = self.files.load(seq)
        try:
            if got is not None and self.wal.frame_identity(seq) == got[0]:
                state, placed, origin = _unpack_keyframe(got[1])
                cursor = Cursor(Matcher.from_state(state, self.trade_history), placed, origin)
        except Exception:  # noqa: BLE001 - a frame that no longer reads, or another build's state: not a base
            cursor = None
        if cursor is None or cursor.matcher.last_seq != seq:
            self.files.forget(seq)
            self.stats.keyframe_files_rejected += 1
            return None
        self.stats.keyframe_files_used += 1
        return cursor

    def _cursor_from_keyframe(self, seq: int) -> Cursor:
        state, placed, origin = _unpack_keyframe(self.keyframes[seq])
        # laid by this process from a live matcher: its invariants held then
        return Cursor(Matcher.from_state(state, self.trade_history, check=False), placed, origin)

    def _snapshot_base(self, seq: int) -> Optional[tuple[int, Any]]:
        for info in reversed(list_snapshots(self.snap_dir)):
            if info.seq > seq or info.path in self._bad_snapshots:
                continue
            return info.seq, info
        return None

    def _cursor_from_snapshot(self, info: Any) -> Optional[Cursor]:
        try:
            state = load_snapshot(info)
            matcher = Matcher.from_state(state, self.trade_history)
        except Exception:  # noqa: BLE001 - a damaged snapshot is skipped, as recovery does
            self._bad_snapshots.add(info.path)
            return None
        placed = {symbol: dict.fromkeys(book.orders) for symbol, book in matcher.books.items()}
        return Cursor(matcher, placed, info.seq)

    def keyframe_bytes(self) -> int:
        """Memory the keyframes take (compressed), in bytes."""
        return sum(len(b) for b in self.keyframes.values())

    # ------------------------------------------------------------------- seek
    def _best_base(self, seq: int) -> tuple[str, int, Any]:
        best: tuple[str, int, Any] = ("none", -1, None)
        c = self.cursor
        if c is not None and c.fed_seq <= seq:
            best = ("cursor", c.fed_seq, c)
            if seq - c.fed_seq <= _CURSOR_STEP:
                # A few events on from the live state: replaying them costs
                # less than opening a snapshot or keyframe that lies closer.
                return best
        i = bisect.bisect_right(self._kf_seqs, seq) - 1
        if i >= 0 and self._kf_seqs[i] > best[1]:
            best = ("keyframe", self._kf_seqs[i], None)
        if self.files is not None:
            j = bisect.bisect_right(self.files.seqs, seq) - 1
            if j >= 0 and self.files.seqs[j] > best[1]:
                best = ("keyframe file", self.files.seqs[j], None)
        snap = self._snapshot_base(seq)
        if snap is not None and snap[0] > best[1]:
            best = ("snapshot", snap[0], snap[1])
        if (c is not None and best[0] != "cursor" and c.fed_seq <= seq and seq - c.fed_seq <= self.max_replay
                and self._event_s and (best[1] - c.fed_seq) * self._event_s < self._open_s):
            return ("cursor", c.fed_seq, c)     # replaying on costs less than opening the closer base
        first = self.wal.first_seq
        if best[1] < 0 and (first is None or first == 1):
            best = ("genesis", 0, None)
        return best

    def _open_base(self, kind: str, seq: int, obj: Any) -> Optional[Cursor]:
        if kind == "cursor":
            return obj
        if kind == "keyframe":
            return self._cursor_from_keyframe(seq)
        if kind == "keyframe file":
            return self._cursor_from_file(seq)
        if kind == "snapshot":
            return self._cursor_from_snapshot(obj)
        if kind == "genesis":
            return Cursor(Matcher(self.trade_history), {}, None)
        return None

    def seek(self, seq: int) -> Cursor:
        """The cursor holding the state right after event ``seq`` (kept as :attr:`cursor`;
        do not change its matcher: use :meth:`detach` for one to keep).

        Raises:
            ValueError: ``seq < 0``, beyond the WAL's last whole frame, or before
                the WAL's first event with no snapshot to start from.
            CorruptRecordError, ReplayMismatchError: the history is damaged.
        """
        if seq < 0:
            raise ValueError(f"seq must be >= 0, got {seq}")
        if self.check_seq is not None:
            self.check_seq(seq)
        if seq > self.wal.last_seq:
            self.wal.refresh()
            if seq > self.wal.last_seq:
                raise ValueError(f"seq {seq} is beyond the end of the WAL (last seq {self.wal.last_seq})")
        c = self.cursor
        if c is not None and c.step_seq <= seq <= c.matcher.last_seq and seq <= c.fed_seq:
            self.stats.last_replayed, self.stats.last_base = 0, ("cursor", c.fed_seq)
            return c
        while True:
            kind, base_seq, obj = self._best_base(seq)
            if kind == "none":
                raise ValueError(f"seq {seq} is before the WAL's first event {self.wal.first_seq} and no "
                                 f"snapshot at or before it is valid")
            t0 = time.perf_counter()
            cursor = self._open_base(kind, base_seq, obj)
            if kind != "cursor" and kind != "genesis":
                self._open_s = time.perf_counter() - t0
            if cursor is not None:
                break
        if seq - cursor.fed_seq > self.max_replay:
            # Index pass: lay keyframes up to the last slot boundary before seq.
            self.cursor = cursor
            n = self._advance(cursor, (seq // self.keyframe_every) * self.keyframe_every)
            self.stats.index_events += n
            self.stats.replayed_events += n
            kind, base_seq = "index pass", cursor.fed_seq
        self.cursor = cursor
        t0 = time.perf_counter()
        n = self._advance(cursor, seq)
        if n >= 256:
            per = (time.perf_counter() - t0) / n
            self._event_s = per if not self._event_s else 0.7 * self._event_s + 0.3 * per
        if cursor.matcher.last_seq < seq:
            raise ValueError(f"seq {seq} is beyond the end of the WAL (last seq {cursor.matcher.last_seq})")
        self.stats.last_replayed, self.stats.last_base = n, (kind, base_seq)
        self.stats.replayed_events += n
        return cursor

    def detach(self, seq: int) -> Matcher:
        """A matcher at ``seq`` that the caller owns (the cursor is given away)."""
        cursor = self.seek(seq)
        self.cursor = None
        return cursor.matcher

    def _advance(self, cursor: Cursor, to_seq: int,
                 pre: Optional[Callable[[Any], Any]] = None,
                 post: Optional[Callable[[int, Any, list, Any], None]] = None) -> int:
        """Feed WAL events ``cursor.fed_seq + 1 .. to_seq``; lay keyframes on the way.
        ``pre(cmd)`` runs before each command, ``post(seq, cmd, events, pre_result)``
        after it. Returns the number of events fed.

        The cyclic garbage collector is off meanwhile (as in the engine: the
        matcher makes no reference cycles, and full collections walking every
        resting order would dominate a long replay)."""
        enabled = gc.isenabled()
        gc.disable()
        try:
            return self._feed(cursor, to_seq, pre, post)
        finally:
            if enabled:
                gc.enable()

    def _feed(self, cursor: Cursor, to_seq: int, pre: Optional[Callable[[Any], Any]],
              post: Optional[Callable[[int, Any, list, Any], None]]) -> int:
        replayer = cursor.replayer
        feed = replayer.feed
        matcher = cursor.matcher
        placed = cursor.placed
        every = self.keyframe_every
        next_kf = (cursor.fed_seq // every + 1) * every
        n = 0
        ctx = None
        for seq, payload in self.wal.read(cursor.fed_seq + 1, to_seq):
            kind = payload[0]
            if type(kind) is int and kind < 64:
                if pre is not None:
                    ctx = pre(payload)
                out = feed(seq, payload)
                cursor.step_seq = seq
                if kind == _PLACE or kind == _AMEND:
                    for ev in out:
                        if ev[0] == _RESTED:
                            known = placed.get(payload[2])
                            if known is None:
                                known = placed[payload[2]] = {}
                            known[ev[1]] = seq
                if post is not None:
                    post(seq, payload, out, ctx)
            else:
                feed(seq, payload)
            n += 1
            cursor.fed_seq = seq
            if seq >= next_kf and seq == matcher.last_seq and not replayer.pending:
                self._add_keyframe(cursor)
                next_kf = (seq // every + 1) * every
        return n

    def walk(self, from_seq: int, to_seq: int, post: Callable[[int, Any, list, Any], None],
             pre: Optional[Callable[[Any], Any]] = None) -> Cursor:
        """Position at ``from_seq`` (a bounded point query), then replay every
        step up to ``to_seq`` calling ``pre``/``post`` around each command.
        Complexity: O(to_seq - from_seq) events replayed (counted in the stats)."""
        cursor = self.seek(from_seq)
        last = min(to_seq, self.wal.last_seq)
        n = self._advance(cursor, last, pre, post)
        self.stats.replayed_events += n
        return cursor

    def build_index(self, to_seq: Optional[int] = None) -> None:
        """Replay once up to ``to_seq`` (default: the end), laying every keyframe
        and the time index, so that later point queries replay at most
        ``keyframe_every`` events plus one step."""
        self.wal.refresh()
        last = self.wal.last_seq if to_seq is None else min(to_seq, self.wal.last_seq)
        first = self.wal.first_seq
        start = 0 if first in (None, 1) else first - 1
        earliest = self.earliest() if self.earliest is not None else None
        if earliest is not None and earliest > start:
            start = earliest   # a pruned WAL: from the base the prune kept
        cursor = self.seek(start)
        n = self._advance(cursor, last)
        self.stats.index_events += n
        self.stats.replayed_events += n
        self._ts_index()

    def write_index(self, every: int = 50_000, progress: Optional[Callable[[int, int], None]] = None) -> int:
        """Persist a keyframe at the first step end past every multiple of
        ``every`` up to the WAL's end, continuing after the newest persisted
        keyframe that still checks (so a second run only adds what the WAL
        grew by). Returns the number of files written. ``progress(seq, last)``
        is called every ``every`` events.

        Raises:
            ValueError: ``every`` is not positive, or the timeline has no ``index_dir``.
            CorruptRecordError, ReplayMismatchError: the history is damaged.
        """
        if every <= 0:
            raise ValueError(f"every must be positive, got {every}")
        if self.files is None:
            raise ValueError("this timeline has no index directory")
        self.wal.refresh()
        self.files.rescan()
        last = self.wal.last_seq
        first = self.wal.first_seq
        start = 0 if first in (None, 1) else first - 1
        earliest = self.earliest() if self.earliest is not None else None
        if earliest is not None and earliest > start:
            start = earliest
        ts0: Optional[int] = None
        for seq in reversed(list(self.files.seqs)):     # continue after the newest file that checks
            if seq > last:
                continue
            head = self.files.header(seq)
            if head is not None and self._cursor_from_file(seq) is not None:
                if seq >= start:
                    start, ts0 = seq, head[3]
                    break
            else:
                self.files.remove(seq)            # damaged or another WAL's: derived data, rebuilt below
        written = self.stats.keyframe_files_written
        self._persist_every, self._keep_in_memory = every, False
        saved_every = self.keyframe_every
        self.keyframe_every = every
        try:
            self._persist_ts = ts0 if ts0 is not None else (self.ts_max_of(start) if start else 0)
            cursor = self.seek(start)
            top = [self._persist_ts]
            mark = [start + every]

            def track(seq: int, cmd: Any, _out: list, _ctx: Any) -> None:
                ts = cmd[1]
                if type(ts) is int and ts > top[0]:
                    top[0] = ts
                    self._persist_ts = ts
                if progress is not None and seq >= mark[0]:
                    mark[0] = seq + every
                    progress(seq, last)

            n = self._advance(cursor, last, post=track)
            self.stats.index_events += n
            self.stats.replayed_events += n
        finally:
            self._persist_every, self._keep_in_memory = 0, True
            self.keyframe_every = saved_every
        return self.stats.keyframe_files_written - written

    # ------------------------------------------------------------ entry seqs
    def resolve_entries(self, cursor: Cursor) -> None:
        """Fill in the entry seqs of orders the cursor inherited from a snapshot
        (see the module doc); those the WAL cannot tell stay ``None``."""
        origin = cursor.origin
        if origin is None:
            return
        found = self._entry_scans.get(origin)
        if found is None:
            live, first = scan_entry_seqs(self.wal, origin)
            self.stats.scanned_events += origin - first + 1
            found = {}
            snap = next((i for i in list_snapshots(self.snap_dir) if i.seq == origin), None)
            if first == 1 and snap is not None:
                try:
                    state = load_snapshot(snap)
                except Exception:  # noqa: BLE001 - then nothing is resolved
                    state = {"books": []}
                for symbol, _tick, orders, *_rest in state["books"]:
                    for oid, _side, price, qty, _acct in orders:
                        got = live.get((symbol, oid))
                        if got is not None and got[1] == price and got[2] == qty:
                            found[(symbol, oid)] = got[0]
            self._entry_scans[origin] = found
        for symbol, known in cursor.placed.items():
            for oid, seq in known.items():
                if seq is None:
                    known[oid] = found.get((symbol, oid))
        cursor.origin = None

    # ------------------------------------------------------------ time index
    def _ts_index(self) -> None:
        last = self.wal.refresh()
        if self._ts_scanned >= last:
            return
        seqs, tss, tsmax = self._cmd_seqs, self._cmd_ts, self._ts_max
        top = tsmax[-1] if tsmax else 0
        n = 0
        for seq, p in self.wal.read(self._ts_scanned + 1, last):
            n += 1
            if p[0] < 64:
                ts = p[1] if type(p[1]) is int else 0
                seqs.append(seq)
                tss.append(ts)
                if ts > top:
                    top = ts
                tsmax.append(top)
        self._ts_scanned = last
        self.stats.scanned_events += n

    def seq_at_time(self, ts_ns: int) -> int:
        """The last seq whose step's command has ``ts_ns`` at or before ``ts_ns``
        (by the running maximum of the commands' ``ts_ns``), ending its step
        (trades included); 0 if none. Complexity: O(log commands) after the
        time index exists; before it, with persisted keyframes, a scan of at
        most one keyframe interval (their headers hold the running maximum)."""
        if self._ts_scanned < self.wal.last_seq and self.files is not None and self.files.seqs:
            got = self._seq_at_time_by_files(ts_ns)
            if got is not None:
                return got
        self._ts_index()
        i = bisect.bisect_right(self._ts_max, ts_ns) - 1
        if i < 0:
            return 0
        return self._cmd_seqs[i + 1] - 1 if i + 1 < len(self._cmd_seqs) else self._ts_scanned

    def _seq_at_time_by_files(self, ts_ns: int) -> Optional[int]:
        first = self.wal.first_seq
        if first not in (None, 1):
            return None                      # a pruned WAL: the running maximum starts elsewhere
        marks = []
        for seq in self.files.seqs:
            head = self.files.header(seq)
            if head is None:
                return None
            marks.append((head[3], seq))
        if any(b[0] < a[0] for a, b in zip(marks, marks[1:])):
            return None                      # not one consistent pass
        i = bisect.bisect_right([m[0] for m in marks], ts_ns) - 1
        start, top = (0, 0) if i < 0 else (marks[i][1], marks[i][0])
        answer = None
        last = self.wal.last_seq
        n = 0
        for seq, p in self.wal.read(start + 1, last):
            n += 1
            if p[0] < 64:
                ts = p[1] if type(p[1]) is int else 0
                if ts > top:
                    top = ts
                if top > ts_ns:
                    answer = seq - 1
                    break
        self.stats.scanned_events += n
        return last if answer is None else answer

    def ts_of(self, seq: int) -> int:
        """``ts_ns`` of the command whose step holds ``seq`` (0 before any)."""
        self._ts_index()
        i = bisect.bisect_right(self._cmd_seqs, seq) - 1
        return self._cmd_ts[i] if i >= 0 else 0

    def ts_max_of(self, seq: int) -> int:
        """Running maximum of ``ts_ns`` up to the step holding ``seq``."""
        self._ts_index()
        i = bisect.bisect_right(self._cmd_seqs, seq) - 1
        return self._ts_max[i] if i >= 0 else 0

    def command_seqs(self) -> tuple[array, array, array]:
        """``(seqs, ts_ns, running max ts_ns)`` of every command (the time index)."""
        self._ts_index()
        return self._cmd_seqs, self._cmd_ts, self._ts_max
