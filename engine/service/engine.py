"""The running engine: recovery, the matching loop, group commit, output
commit, snapshots and the control socket, in one process.

Matching loop, per batch (at most ``batch_max`` commands):

    for each command:  seq = WAL next seq -> matcher.apply -> WAL append
                       (command, then its trades / reject) -> hold outputs
    end of batch:      WAL flush (one frame, one write; the syncer fsyncs)
                       release held outputs with seq <= durable_seq
                       snapshot if due, answer control requests

Matching never waits for the disk; outputs always do (DESIGN.md invariant 3).
"""

from __future__ import annotations

import fcntl
import gc
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import msgpack

from engine.core import LOGGED_KINDS, BadInput, Command, Kind, Matcher
from engine.io.shard import DEFAULT_SHARD, claim_shard
from eventstore import WalWriter, WalWriteError, free_bytes
from recovery import Recovery, recover, snapshot_dir, wal_dir
from recovery.retention import SnapFact, event_ts, parse_policy, prune_wal, snapshot_prune_guard
from snapshot import SnapshotJob, SnapshotWriter, list_snapshots

from .control import ControlRequest, ControlServer
from .metrics import EngineCounters
from .output_gate import OutputGate, Sink

__all__ = ["EngineConfig", "Engine", "RunSummary", "EngineLockedError"]

_REJECTED = Kind.REJECTED.value


def _starts_row(cmd: Any, last_pos: Any) -> bool:
    """Whether ``cmd`` begins a new input row (a batch may end before it): its
    source position differs from the previous command's, or it has none."""
    return cmd[-1] is None or cmd[-1] != last_pos


def _encodable(obj: Any) -> bool:
    try:
        msgpack.packb(obj)
    except (OverflowError, TypeError, ValueError):
        return False
    return True

log = logging.getLogger("evengine.engine")


class EngineLockedError(Exception):
    """Another engine already runs on this data directory."""


@dataclass
class EngineConfig:
    """Settings of one engine.

    Attributes:
        data_dir: holds ``wal/``, ``snapshots/``, ``control.sock``, ``engine.lock``
            (and ``shard.json`` once a shard id is given).
        snapshot_every: take a snapshot every this many WAL events (0: never
            on a schedule; ``evengine snapshot --now`` still works).
        snapshot_retain: snapshots kept.
        batch_max: at most this many commands per group-commit batch (one
            WAL frame).
        batch_linger_ms: a batch also ends once it has been open this long
            (checked every 16 commands), so a slow source (parsing, pacing)
            does not stretch commit latency. Commit latency is about the batch
            time, plus one fdatasync, plus the next batch end that observes it
            (see ``scripts/bench.py``). Applies to a pull source with
            ``batching = "latency"`` (see :meth:`Engine.run`).
        bulk_linger_ms: the time bound of a batch instead of
            ``batch_linger_ms`` for a *bulk* pull source: one run as fast as
            it goes (``Engine.run`` with ``speed=0``; a file) that does not
            declare ``batching = "latency"``. Nobody waits there on one
            command's answer, so batches end at ``batch_max`` commands (whole
            frames) unless the source is slower than ``batch_max`` commands in
            this many ms. On the GOOG day (a source slower than matching) the
            0.25 ms linger cut batches at ~17 commands: 8,800 frames and as
            many fsyncs for 151,000 commands; at 50 ms, 590 frames of 256 and
            the run 10-25% shorter; commit p50 ~1 ms -> ~8 ms
            (``scripts/bench.py --only real``). 0: bulk sources batch by
            ``batch_linger_ms`` too. Push sources (``EngineRuntime``: Kafka,
            HTTP) batch per turn of their loop and use neither.
        segment_size_bytes: WAL segment size before rotation and sealing.
        trade_history: recent trades kept in memory and in snapshots.
        buffer_capacity: recent events kept in the in-memory event buffer.
        control_socket: serve ``control.sock``.
        pin_cpus: keep the matching process off the CPU the WAL syncer is
            pinned to (when there are two or more), so the syncer never waits
            behind it for a CPU: p99 commit latency 12-16 ms -> 5-6 ms on this
            2-core machine kind. Snapshot children may use every CPU.
        shard: this engine's shard id (``engine.io.shard``): written to the data
            directory the first time, checked against it later; ``None``:
            whatever the directory says (``"0"`` when nothing).
        snapshot_retry_s: after a snapshot failed (a full disk), the next one
            is tried no sooner than this (s); the previous snapshot stays.
        pause_cyclic_gc: while the engine is open, freeze what recovery built
            and switch off the cyclic garbage collector. Its full collections
            walk every resting order and stalled the loop 20-70 ms at 100,000
            orders (``scripts/bench.py``); the engine makes no reference cycles
            (``tests/unit/recovery/test_recover.py`` checks), so reference
            counting frees everything. Restored on close.
        wal_retain: the WAL retention policy (``recovery.retention.parse_policy``:
            ``"K"`` events, a duration by ``ts_ns`` such as ``"7d"``, or
            ``"K,7d"``), applied after each successful snapshot: sealed
            segments wholly before the floor are unlinked
            (``recovery.retention``: never what recovery, the oldest retained
            valid snapshot or the Kafka watermarks need). ``None``: the WAL
            is kept whole.
    """

    data_dir: str = "data"
    snapshot_every: int = 0
    snapshot_retain: int = 3
    batch_max: int = 256
    batch_linger_ms: float = 0.25
    bulk_linger_ms: float = 50.0
    segment_size_bytes: int = 64 << 20
    trade_history: int = 10_000
    buffer_capacity: int = 100_000
    control_socket: bool = True
    pin_cpus: bool = True
    pause_cyclic_gc: bool = True
    shard: Optional[str] = None
    snapshot_retry_s: float = 10.0
    wal_retain: Optional[str] = None


@dataclass
class RunSummary:
    """What one run did. Durations in seconds, latencies in ms."""

    commands: int = 0
    events: int = 0
    trades: int = 0
    rejects: int = 0
    seconds: float = 0.0
    last_seq: int = 0
    durable_seq: int = 0
    match_sequence: int = 0
    state_hash: str = ""
    recovered_from_snapshot: Optional[int] = None
    replayed_events: int = 0
    torn_tail_bytes: int = 0
    snapshots: int = 0
    fork_pauses_ms: list = field(default_factory=list)
    commit_p50_ms: float = 0.0
    commit_p99_ms: float = 0.0
    fsyncs: int = 0
    snapshots_failed: int = 0
    unwritten_events: int = 0
    wal_segments_pruned: int = 0
    wal_bytes_freed: int = 0
    stopped_by: str = "end of input"

    @property
    def durable_commands_per_s(self) -> float:
        return self.commands / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["durable_commands_per_s"] = round(self.durable_commands_per_s)
        return d


class Engine:
    """One engine on one data directory. Use :meth:`open`, then :meth:`run`
    (a pull source) or :meth:`submit` + :meth:`end_batch` (a push source),
    then :meth:`close`.

    Raises (from :meth:`open`):
        EngineLockedError: another engine holds the data directory.
        CorruptRecordError, ReplayMismatchError, WalGapError: recovery failed.
    """

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.shard: str = config.shard or DEFAULT_SHARD   # what the data directory says, once open
        self.matcher: Optional[Matcher] = None
        self.wal: Optional[WalWriter] = None
        self.snapshots: Optional[SnapshotWriter] = None
        self.control: Optional[ControlServer] = None
        self.gate = OutputGate()
        self.recovery: Optional[Recovery] = None
        self._lock_fd = -1
        self._gc_was_enabled: Optional[bool] = None
        self._cpus: Optional[set] = None
        self._stop_reason: Optional[str] = None
        self._snapshot_waiters: list[ControlRequest] = []
        self._snapshot_requested = False
        self._last_snapshot_seq = 0
        self._good_snapshot_seq = 0
        self._snapshot_retry_at = 0.0
        self.snapshot_error: Optional[str] = None
        self._wal_policy = parse_policy(config.wal_retain)   # ValueError: a bad --wal-retain
        self._snap_facts: dict = {}        # seq -> SnapFact of snapshots known valid (WAL retention)
        self._snap_fact_pending: Optional[SnapFact] = None
        self._retention_thread: Optional[threading.Thread] = None
        self.summary = RunSummary()
        self.counters = EngineCounters()     # what engine.service.metrics exports
        self._kind_counts = self.counters.commands
        self._frame: list = []         # the open batch: events not yet given to the WAL writer
        self._frame_first = 0          # its first seq
        self._frame_t0 = 0             # perf_counter_ns of its first submit (commit latency counts from it)
        self._frame_max = 65_536       # events; the WAL writer's max_frame_events once open

    # -------------------------------------------------------------- lifecycle
    def open(self) -> Recovery:
        """Lock the data directory, recover, start the WAL writer, the snapshot
        writer and the control socket. Returns what recovery did."""
        cfg = self.config
        os.makedirs(cfg.data_dir, exist_ok=True)
        self._lock_fd = os.open(os.path.join(cfg.data_dir, "engine.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            # A POSIX record lock: held by this process only (forked children,
            # the WAL syncer and snapshot writers, do not inherit it) and
            # released by the kernel when the process dies, even by SIGKILL.
            fcntl.lockf(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            self._lock_fd = -1
            raise EngineLockedError(f"another engine is running on {cfg.data_dir} (it holds engine.lock)") from None
        try:
            return self._open_locked()
        except BaseException:
            self._abort_open()
            raise

    def _open_locked(self) -> Recovery:
        cfg = self.config
        if cfg.pause_cyclic_gc:
            self._gc_was_enabled = gc.isenabled()
            gc.disable()   # recovery builds the books: no cycles, many objects
        t0 = time.perf_counter()
        rec = self.recovery = recover(cfg.data_dir, trade_history=cfg.trade_history)
        self.matcher = rec.matcher
        self.shard = claim_shard(cfg.data_dir, cfg.shard)
        log.info("recovered to seq %d in %.3f s: snapshot %s, %d WAL events replayed, %d logged events checked%s",
                 rec.matcher.last_seq, time.perf_counter() - t0,
                 rec.snapshot.seq if rec.snapshot else "none", rec.replayed_events, rec.trades_checked,
                 f", torn tail of {rec.torn_tail.dropped_bytes} bytes cut" if rec.torn_tail else "")
        self.wal = WalWriter(wal_dir(cfg.data_dir), rec.next_seq, segment_size_bytes=cfg.segment_size_bytes,
                             buffer_capacity=cfg.buffer_capacity)
        self._cpus = os.sched_getaffinity(0)
        if cfg.pin_cpus and self.wal.syncer_cpu is not None and len(self._cpus) > 1:
            os.sched_setaffinity(0, self._cpus - {self.wal.syncer_cpu})
        self._frame_max = self.wal.max_frame_events
        for event in rec.pending:
            self.wal.append(event)
        self.wal.flush()
        self._last_snapshot_seq = self._good_snapshot_seq = rec.snapshot.seq if rec.snapshot else 0
        if cfg.pause_cyclic_gc:
            gc.collect()
            gc.freeze()
        if rec.snapshot is not None and rec.snapshot_marks is not None:
            self._snap_facts[rec.snapshot.seq] = SnapFact(rec.snapshot.seq, True, *rec.snapshot_marks)
        self.snapshots = SnapshotWriter(snapshot_dir(cfg.data_dir), retain=cfg.snapshot_retain,
                                        in_child=self._in_snapshot_child,
                                        prune_guard=snapshot_prune_guard(cfg.data_dir))
        if cfg.control_socket:
            self.control = ControlServer(os.path.join(cfg.data_dir, "control.sock"))
        s = self.summary
        s.recovered_from_snapshot = rec.snapshot.seq if rec.snapshot else None
        s.replayed_events = rec.replayed_events
        s.torn_tail_bytes = rec.torn_tail.dropped_bytes if rec.torn_tail else 0
        return rec

    def _abort_open(self) -> None:
        """Undo a half-done :meth:`open` (recovery failed): stop the syncer,
        give back the CPUs, the GC and the lock."""
        if self.control is not None:
            self.control.close()
            self.control = None
        if self.wal is not None:
            try:
                self.wal.close(timeout=5)
            except Exception:  # noqa: BLE001 - the open error is the one to report
                pass
            self.wal = None
        self._release_process()

    def _release_process(self) -> None:
        """Give back what open took from the process: CPUs, the GC, the lock."""
        self._join_retention()
        if self._cpus is not None:
            os.sched_setaffinity(0, self._cpus)
            self._cpus = None
        if self._gc_was_enabled is not None:
            gc.unfreeze()
            if self._gc_was_enabled:
                gc.enable()
            self._gc_was_enabled = None
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def close(self) -> RunSummary:
        """Wait until everything is durable, release the last outputs, wait
        for a running snapshot, stop the syncer and the control socket."""
        s = self.summary
        try:
            if self.wal is not None:
                try:
                    self._hand_over()
                    self.wal.flush()
                except WalWriteError:
                    pass   # what cannot be written was never acknowledged (WalWriter.close says how much)
                self.wal.wait_durable(self.wal.written_seq)
                self.gate.release(self.wal.durable_seq)
            if self.snapshots is not None and self.snapshots.running is not None:
                self._snapshot_done(self.snapshots.poll(block=True))
        finally:
            if self.control is not None:
                self.control.close()
                for req in self._snapshot_waiters:
                    req.reply({"ok": False, "error": "engine stopped before the snapshot finished"})
            if self.wal is not None:
                s.durable_seq = self.wal.durable_seq
                st = self.wal.stats
                s.commit_p50_ms = round(st.percentile_ms(50), 3)
                s.commit_p99_ms = round(st.percentile_ms(99), 3)
                self.wal.close()
                s.fsyncs = self.wal.sync_counters()[0]
                s.unwritten_events = self.wal.unwritten_at_close
            self._release_process()
        if self.matcher is not None:
            s.last_seq = self.matcher.last_seq
            s.match_sequence = self.matcher.match_sequence
            s.state_hash = self.matcher.state_hash()
        return s

    def __enter__(self) -> "Engine":
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def degraded(self) -> Optional[str]:
        """Why the engine cannot take commands now (the WAL cannot be written:
        a full disk, EIO), or None when healthy. Outputs stop at the durable
        seq meanwhile; a flush that succeeds clears it."""
        err = self.wal.write_error if self.wal is not None else None
        return None if err is None else str(err)

    def request_stop(self, reason: str = "stop requested") -> None:
        """Ask the loop to stop after the current batch (signal-handler safe)."""
        self._stop_reason = reason

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT stop the engine cleanly after the current batch."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, _frame: self.request_stop(signal.Signals(signum).name))

    def add_sink(self, sink: Sink) -> None:
        """Receive each command's results once durable: ``sink(cmd_seq, cmd, events)``."""
        self.gate.sinks.append(sink)

    # --------------------------------------------------------------- matching
    def submit(self, cmd: Command) -> list:
        """Sequence, match and log one command; return its events at once.
        The events are *not* durable yet: outputs go through the sinks.
        Call :meth:`end_batch` after a batch of submits.

        The command and the trades or reject it caused join the open batch
        (a list of this engine's); :meth:`end_batch` hands the batch to the
        WAL writer as one frame, which checks that it starts at the WAL's
        next sequence number. Measured: one list append instead of a WAL
        call per command, 13% of the durable path (``scripts/bench.py``)."""
        matcher = self.matcher
        seq = matcher.last_seq + 1
        frame = self._frame
        if not frame:
            self._frame_first = seq
            self._frame_t0 = time.perf_counter_ns()
        out = matcher.apply(seq, cmd)
        last = matcher.last_seq
        if last == seq:
            frame.append(cmd)
            self._kind_counts[cmd[0]] += 1   # accepted: a command kind, 1..63
        else:  # it caused trades or a reject: they take the next seqs, in order
            logged = [event for event in out if event[0] in LOGGED_KINDS]
            if logged[0][0] == _REJECTED:
                self.summary.rejects += 1
                self.counters.count_reject(cmd, logged[0])
                if not _encodable(cmd):
                    cmd, out, logged = self._as_bad_input(seq, cmd)
                    last = matcher.last_seq
            else:
                self._kind_counts[cmd[0]] += 1
            frame.append(cmd)
            frame += logged
        if len(frame) >= self._frame_max:
            self._hand_over()
        gate = self.gate
        if gate.sinks:
            gate.hold(last, seq, cmd, out)
        return out

    @property
    def next_seq(self) -> int:
        """The sequence number the next command takes (``matcher.last_seq + 1``;
        the WAL writer's ``next_seq`` lags behind it by the open batch until
        :meth:`end_batch`)."""
        return self.matcher.last_seq + 1

    def _hand_over(self) -> None:
        """Give the open batch to the WAL writer (it becomes part of its next
        frame); a new batch starts with the next submit.

        Raises:
            WalSequenceError: the batch does not start at the WAL's next seq.
            RuntimeError: the batch does not end at ``matcher.last_seq`` (an
                engine bug: the WAL would not line up with the state).
        """
        frame = self._frame
        if not frame:
            return
        if self._frame_first + len(frame) - 1 != self.matcher.last_seq:
            raise RuntimeError(f"engine bug: a batch of {len(frame)} events from seq {self._frame_first} does "
                               f"not end at the matcher's last seq {self.matcher.last_seq}")
        self._frame = []
        self.wal.extend_at(self._frame_first, frame, self._frame_t0)

    def _as_bad_input(self, seq: int, cmd: Any) -> tuple:
        """A rejected command msgpack cannot encode (an integer beyond 64 bits,
        an object): it changed nothing but ``last_seq``, so apply a
        :class:`BadInput` holding its text in its place, which is what the WAL
        logs and replay reproduces."""
        source, pos = cmd[-2], cmd[-1]
        if not (type(source) is str and type(pos) is int and 0 <= pos < 2**63):
            source = pos = None
        bad = BadInput.new(repr(cmd)[:1000], "command cannot be encoded (a field is out of range or not a "
                           "plain value)", source=source, source_pos=pos)
        self.matcher.last_seq = seq - 1
        out = self.matcher.apply(seq, bad)
        return bad, out, [event for event in out if event[0] in LOGGED_KINDS]

    def read_events(self, from_seq: int, to_seq: Optional[int] = None) -> list:
        """Durable events ``from_seq..to_seq`` (inclusive; ``None``: up to
        ``durable_seq``) as ``[(seq, payload), ...]``: from the in-memory event
        buffer when it still holds ``from_seq``, else from the WAL on disk.
        Never returns an event that is not yet durable (output commit)."""
        durable = self.wal.durable_seq
        last = durable if to_seq is None else min(to_seq, durable)
        if self.wal.buffer.covers(from_seq):
            return self.wal.buffer.read(from_seq, last, durable_seq=durable)
        from eventstore import WalReader
        return list(WalReader(wal_dir(self.config.data_dir)).read(from_seq, last))

    def end_batch(self) -> None:
        """End a group-commit batch: flush the frame, release what is durable,
        reap or start snapshots, answer control requests.

        Raises:
            WalWriteError: the frame could not be written (see
                :attr:`degraded`); it stays queued and the next call writes it
                again. Housekeeping still ran.
            WriterDiedError: the WAL syncer failed: stop.
        """
        try:
            self._hand_over()
            self.wal.flush()
        finally:
            self.gate.release(self.wal.durable_seq)
            self._housekeeping()

    def run(self, source: Any, *, speed: float = 0.0,
            on_batch: Optional[Callable[["Engine"], None]] = None,
            batching: Optional[str] = None) -> RunSummary:
        """Run a pull source to its end (or until stopped), then close.

        Args:
            source: an ``engine.io.base.Source``; it resumes after the position
                the engine logged for ``source.name``.
            speed: 0 as fast as possible; X > 0 paces commands at X times the
                pace of their ``ts_ns`` (1 = real time).
            on_batch: called after every batch (progress display).
            batching: how an unpaced run ends its batches: ``"bulk"`` at
                ``batch_max`` commands or after ``bulk_linger_ms``;
                ``"latency"`` at ``batch_max`` or after ``batch_linger_ms``.
                Default: the source's ``batching`` attribute if it has one,
                else ``"bulk"``. Paced runs end a batch before each wait.

        Returns:
            The run's :class:`RunSummary` (the engine is closed).

        Raises:
            WalWriteError: the WAL could not be written (a full disk, EIO).
                The engine is closed first: everything durable was released,
                nothing after it was; a restart resumes after the last
                durable input row.
        """
        m = self.matcher
        s = self.summary
        start_seq = self.next_seq
        start_match = m.match_sequence
        it = source.commands(m, m.positions.get(source.name))
        t0 = time.perf_counter()
        commands = 0
        try:
            if speed > 0:
                commands = self._run_paced(it, speed, on_batch)
            else:
                commands = self._run_fast(it, on_batch, self._linger_ms(source, batching))
        except WalWriteError as exc:
            self._stop_reason = f"WAL write error: {exc}"
            raise
        finally:
            s.commands += commands
            s.seconds = time.perf_counter() - t0
            source.close()
            self.close()
            s.seconds = time.perf_counter() - t0
            s.events += s.last_seq - start_seq + 1
            s.trades += m.match_sequence - start_match
            s.stopped_by = self._stop_reason or "end of input"
        return s

    def _linger_ms(self, source: Any, batching: Optional[str]) -> float:
        """The time bound of an unpaced run's batches (see :meth:`run`)."""
        cfg = self.config
        batching = batching or getattr(source, "batching", None) or "bulk"
        if batching not in ("bulk", "latency"):
            raise ValueError(f"batching {batching!r}: expected 'bulk' or 'latency'")
        if batching == "bulk" and cfg.bulk_linger_ms > 0:
            return max(cfg.batch_linger_ms, cfg.bulk_linger_ms)
        return cfg.batch_linger_ms

    def _run_fast(self, it: Iterator[Command], on_batch: Optional[Callable], linger_ms: float) -> int:
        """Batches of about ``batch_max`` commands, or fewer once a batch has
        been open ``linger_ms``. A batch (one WAL frame, the unit a crash
        keeps or loses whole) ends only where the source position changes, so
        the commands of one input row are never split: a restart resumes
        after whole rows only."""
        batch_max = self.config.batch_max
        linger_ns = int(linger_ms * 1e6)
        clock = time.perf_counter_ns
        submit = self.submit
        commands = 0
        carry: Optional[Command] = None
        exhausted = False
        while self._stop_reason is None:
            n = 0
            last_pos = None
            deadline = clock() + linger_ns
            if carry is not None:
                submit(carry)
                n, last_pos, carry = 1, carry[-1], None
            for cmd in it:
                if ((n >= batch_max or not n & 15 and n and clock() > deadline)
                        and _starts_row(cmd, last_pos)):
                    carry = cmd
                    break
                submit(cmd)
                n += 1
                last_pos = cmd[-1]
            else:
                exhausted = True
            commands += n
            self.end_batch()
            if on_batch is not None:
                on_batch(self)
            if exhausted:
                break
        return commands

    def _run_paced(self, it: Iterator[Command], speed: float, on_batch: Optional[Callable]) -> int:
        commands = 0
        wall0 = time.monotonic()
        ts0: Optional[int] = None
        n = 0
        last_pos = None
        for cmd in it:
            ts = cmd[1]
            if ts0 is None:
                ts0 = ts
            due = wall0 + (ts - ts0) / 1e9 / speed
            while self._stop_reason is None:
                wait = due - time.monotonic()
                if wait <= 0:
                    break
                if n:
                    commands += n
                    n = 0
                    self.end_batch()
                    if on_batch is not None:
                        on_batch(self)
                time.sleep(min(wait, 0.02))
                self._housekeeping()
            if self._stop_reason is not None and _starts_row(cmd, last_pos):
                break  # only between input rows, never inside one
            if n >= self.config.batch_max and _starts_row(cmd, last_pos):
                commands += n
                n = 0
                self.end_batch()
            self.submit(cmd)
            n += 1
            last_pos = cmd[-1]
        commands += n
        self.end_batch()
        return commands

    # -------------------------------------------------------------- snapshots
    def snapshot_now(self) -> SnapshotJob:
        """Fork a snapshot of the state after ``matcher.last_seq`` now.

        Raises:
            RuntimeError: a snapshot is already being written.
        """
        self._hand_over()
        self.wal.flush()
        seq = self.matcher.last_seq
        wal = self.wal

        def wait_durable(target: int) -> bool:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                if wal.peek_durable() >= target:
                    return True
                time.sleep(0.0005)
            return False

        job = self.snapshots.start(seq, self.matcher.export_state, wait_durable)
        self._last_snapshot_seq = seq
        self._snap_fact_pending = SnapFact(seq, True, self.matcher.match_sequence, self.matcher.accounts.ledger_seq,
                                           self._ts_at(seq))
        self.summary.fork_pauses_ms.append(round(job.fork_pause_ms, 3))
        self.counters.fork_pause_s.observe(job.fork_pause_ns / 1e9)
        log.info("snapshot at seq %d: fork paused the engine %.3f ms (child pid %d)", seq, job.fork_pause_ms, job.pid)
        return job

    def _in_snapshot_child(self) -> None:
        os.sched_setaffinity(0, self._cpus)
        self.wal.close_in_child()
        if self.control is not None:
            self.control.close_in_child()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)

    def _snapshot_done(self, job: Optional[SnapshotJob]) -> None:
        if job is None:
            return
        if job.ok:
            self.summary.snapshots += 1
            self.counters.snapshot_done(job)
            self._good_snapshot_seq = job.seq
            self.snapshot_error = None
            log.info("snapshot at seq %d written to %s in %.1f ms", job.seq, job.path,
                     (job.finished_ns - job.started_ns) / 1e6)
            fact = self._snap_fact_pending
            if fact is not None and fact.seq == job.seq:
                self._snap_facts[job.seq] = fact
            self._apply_wal_retention()
            answer = {"ok": True, "seq": job.seq, "path": os.path.abspath(job.path),
                      "fork_pause_ms": round(job.fork_pause_ms, 3),
                      "write_ms": round((job.finished_ns - job.started_ns) / 1e6, 3)}
        else:
            # Never half published (the child writes a temp file and renames
            # it); the previous snapshot stays the one recovery uses.
            retry_s = self.config.snapshot_retry_s
            self.summary.snapshots_failed += 1
            self.counters.snapshot_failures += 1
            self._last_snapshot_seq = self._good_snapshot_seq
            self._snapshot_retry_at = time.monotonic() + retry_s
            free = free_bytes(self.snapshots.snap_dir)
            self.snapshot_error = (f"snapshot at seq {job.seq} failed: {job.reason} writing {job.path}.tmp; "
                                   f"free space: {'unknown' if free is None else f'{free:,} bytes'}")
            log.error("%s; the engine goes on, the previous snapshot stays, next try in %.0f s",
                      self.snapshot_error, retry_s)
            answer = {"ok": False, "seq": job.seq, "error": self.snapshot_error}
        for req in self._snapshot_waiters:
            req.reply(answer)
        self._snapshot_waiters = []

    def _ts_at(self, seq: int) -> Optional[int]:
        """``ts_ns`` of the command whose step holds ``seq``, from the in-memory
        event buffer (``None`` once it left the buffer)."""
        buf = self.wal.buffer

        def read(s: int) -> Any:
            if s < 1 or not buf.covers(s) or s > buf.last_seq:
                return None
            got = buf.read(s, s, durable_seq=s)
            return got[0][1] if got else None
        return event_ts(read, seq)

    def _apply_wal_retention(self) -> None:
        """After a successful snapshot (and its catalog pruning): unlink the
        sealed WAL segments the policy lets go (``recovery.retention``),
        deciding from what the engine knows (no snapshot is loaded). The
        record's fsyncs and the unlinks run on a thread (they release the
        GIL: matching goes on); one at a time, a busy one skips this round.
        Skipped too if a ``wal prune`` holds the retention lock; never fatal."""
        if self._wal_policy is None:
            return
        if self._retention_thread is not None and self._retention_thread.is_alive():
            return
        on_disk = {i.seq for i in list_snapshots(snapshot_dir(self.config.data_dir))}
        self._snap_facts = {s: f for s, f in self._snap_facts.items() if s in on_disk}
        last = min(self.matcher.last_seq, self.wal.durable_seq)   # what a crash now would keep
        args = (dict(self._snap_facts), (last, self._ts_at(last)))
        self._retention_thread = threading.Thread(target=self._wal_retention, args=args, name="wal-retention",
                                                  daemon=True)
        self._retention_thread.start()

    def _wal_retention(self, facts: dict, tail: tuple) -> None:
        policy = self._wal_policy
        try:
            plan = prune_wal(self.config.data_dir, policy=policy, facts=facts, blocking=False, tail=tail,
                             snapshot_retain=self.config.snapshot_retain)
        except Exception as exc:  # noqa: BLE001 - retention must never stop matching
            log.error("WAL retention failed: %s; the WAL is kept", exc)
            return
        if plan is not None and plan.applied:
            self.summary.wal_segments_pruned += len(plan.remove) + len(plan.leftovers)
            self.summary.wal_bytes_freed += plan.bytes_freed
            log.info("WAL retention (%s): removed %d segment(s) before seq %s, %d bytes (rule: %s)",
                     policy.spec, len(plan.remove), plan.pruned_before_seq, plan.bytes_freed, plan.rule)

    def _join_retention(self) -> None:
        t = self._retention_thread
        if t is not None:
            t.join()
            self._retention_thread = None

    def _housekeeping(self) -> None:
        snaps = self.snapshots
        if snaps.running is not None:
            self._snapshot_done(snaps.poll())
        if self.control is not None and not self.control.requests.empty():
            while not self.control.requests.empty():
                self._handle_control(self.control.requests.get_nowait())
        if snaps.running is None and self.wal.write_error is None:
            every = self.config.snapshot_every
            if self._snapshot_requested or (every and self.matcher.last_seq - self._last_snapshot_seq >= every
                                            and time.monotonic() >= self._snapshot_retry_at):
                self._snapshot_requested = False
                try:
                    self.snapshot_now()
                except OSError as exc:
                    log.error("snapshot fork failed: %s; the engine goes on", exc)

    def _handle_control(self, req: ControlRequest) -> None:
        op = req.body.get("op")
        if op == "snapshot":
            self._snapshot_waiters.append(req)
            self._snapshot_requested = True
        elif op == "status":
            req.reply({"ok": True, "last_seq": self.matcher.last_seq, "durable_seq": self.wal.durable_seq,
                       "match_sequence": self.matcher.match_sequence, "positions": self.matcher.positions,
                       "symbols": sorted(self.matcher.books), "snapshot_running": self.snapshots.running is not None,
                       "degraded": self.degraded, "snapshot_error": self.snapshot_error})
        else:
            req.reply({"ok": False, "error": f"unknown op {op!r} (known: snapshot, status)"})
