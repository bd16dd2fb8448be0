"""The WAL writer: group commit with the fsync in a process of its own.

Why a process. ``os.fdatasync`` releases the GIL, but a writer *thread* must
take the GIL back to report that the sync finished, and while matching holds
the GIL it waits a whole switch interval (5 ms): measured p99 commit latency
about 22 ms (``shared/PERFORMANCE.md``). So the matching thread itself does
the cheap part, ``os.write`` of a batch frame into the page cache, and a
*syncer* process (``eventstore/syncer.py``, a fresh small interpreter),
with no GIL of ours to wait for, does the slow part:

    matching thread                          syncer process
    ---------------                          --------------
    append(payload) -> msgpack into buffer
    flush(): os.write(frame)  --(seg, upto)-->  fdatasync(segment)
    durable_seq  <-------- shared memory ---- store upto; wake byte on a pipe

Each fdatasync covers every frame written before it began, so the syncer
commits as many batches at once as arrived during the previous sync: group
commit with no timer to tune. ``durable_seq`` (the watermark) is the highest
sequence number known to be on disk; nothing may leave the engine above it.

Rotation: when a segment passes ``segment_size_bytes`` the writer opens the
next one; the syncer, on its first message for the new segment, fsyncs the old
one and the directory. Sealing: a background thread compresses each closed
segment with zstandard once it is durable (``atomic_write`` of ``.seg.zst``,
then unlink of the raw file); zstd releases the GIL while it compresses.

Write errors (a full disk, EIO): :meth:`WalWriter.flush` cuts the segment
back to where the failed frame began, keeps the frame queued and raises
:class:`~eventstore.errors.WalWriteError`; the next ``flush`` writes it again.
Nothing of it was durable, so nothing of it was acknowledged; the engine
stops taking commands until a flush succeeds. An ``fdatasync`` error in the
syncer is final (:class:`~eventstore.errors.WriterDiedError`; see there why).

The format is in ``eventstore/FORMAT.md``.
"""

from __future__ import annotations

import logging
import os
import queue
import select
import struct
import subprocess
import sys
import threading
import time
from bisect import bisect_left
from collections import deque
from typing import Any, Optional

import msgpack

from .buffer import EventBuffer
from .errors import AtomicWriteError, WalSequenceError, WalWriteError, WriterDiedError, describe_os_error
from .fsio import atomic_write, free_bytes, fsync_dir, preallocate_keep_size
from .watermark import STATE_OFFSET, create_watermark, release_watermark
from .segment import SEALED_CHUNK_BYTES, encode_frame_header, encode_sealed, encode_segment_header, list_segments, segment_name

__all__ = ["WalWriter", "CommitStats"]

_MSG = struct.Struct("<QQ")        # segment first_seq, last seq written
_SHM = struct.Struct("<QQQQ")      # durable_seq, error errno (0 ok), syncs, sync ns total
_U64 = struct.Struct("<Q")
_SYNCER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "syncer.py")
_SEAL_RETRY_S = 1.0

log = logging.getLogger("evengine.wal")


class CommitStats:
    """Commit latencies and batch sizes, one sample per flushed batch (frame):
    the latency from the first append of a batch to the moment the matching
    thread saw it durable, in ns; the size in events.

    Constant memory for a long-running engine: fixed-bucket histograms of
    both (Prometheus buckets: ``latency_counts[i]`` counts latencies
    ``<= LATENCY_BOUNDS_NS[i]`` and above the bound before it, the last entry
    those above every bound; the same for ``batch_counts`` and
    ``BATCH_BOUNDS``), their sums, and the most recent ``window`` latencies
    for :meth:`percentile_ms` (every latency of a run shorter than that).
    """

    LATENCY_BOUNDS_NS = tuple(int(ms * 1_000_000) for ms in (
        0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000))
    BATCH_BOUNDS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384, 65536)

    def __init__(self, window: int = 65_536) -> None:
        self.latencies_ns: deque[int] = deque(maxlen=window)   # the most recent ones
        self.latency_counts = [0] * (len(self.LATENCY_BOUNDS_NS) + 1)
        self.latency_sum_ns = 0
        self.batch_counts = [0] * (len(self.BATCH_BOUNDS) + 1)
        self.batches = 0
        self.events = 0

    def record(self, latency_ns: int, events: int) -> None:
        """One batch of ``events`` events became durable ``latency_ns`` after its first append."""
        self.latencies_ns.append(latency_ns)
        self.latency_counts[bisect_left(self.LATENCY_BOUNDS_NS, latency_ns)] += 1
        self.latency_sum_ns += latency_ns
        self.batch_counts[bisect_left(self.BATCH_BOUNDS, events)] += 1
        self.batches += 1
        self.events += events

    def percentile_ms(self, p: float) -> float:
        """The ``p``-th percentile (0-100) of the recent latencies, in ms (0.0: none yet)."""
        if not self.latencies_ns:
            return 0.0
        data = sorted(self.latencies_ns)
        return data[min(len(data) - 1, int(p / 100 * len(data)))] / 1e6


class WalWriter:
    """Appends events to the WAL in ``wal_dir`` with group commit.

    Args:
        wal_dir: directory of the segments (created if missing).
        next_seq: sequence number of the first event to append (recovery's
            ``last_seq + 1``). A new segment starts there.
        segment_size_bytes: a segment is closed and sealed once it reaches
            this size (default 64 MiB).
        compress_sealed: seal closed segments with zstandard.
        zstd_level: compression level for sealed segments (1: 470 MB/s, 2.3x here).
        sealed_chunk_bytes: raw bytes per independently readable chunk of a sealed
            segment (``eventstore.segment.SEALED_CHUNK_BYTES``, 1 MiB, by default).
        buffer_capacity: events kept in the in-memory :class:`EventBuffer`.
        max_frame_events: a frame is flushed when it holds this many events.
        syncer_cpu: CPU the syncer process is pinned to. ``None``: the
            highest-numbered CPU this process may use, when it may use two or
            more (on this 2-core machine kind, letting the scheduler put the
            syncer and its I/O completions beside the matching thread cost
            about 20% of durable throughput: ``scripts/bench.py``); ``-1``: no
            pinning. :attr:`syncer_cpu` tells the CPU chosen (or None).

    Raises:
        OSError: the directory cannot be created.
        WalWriteError: the first segment cannot be written (a full disk).

    Attributes:
        write_error: the :class:`WalWriteError` of the last failed write while
            frames wait to be written again; None when the WAL is healthy.
        unwritten_at_close: events :meth:`close` gave up on because they
            could not be written (never durable, never acknowledged).

    Not thread-safe: one matching thread appends, flushes and polls.
    """

    def __init__(self, wal_dir: str, next_seq: int = 1, *, segment_size_bytes: int = 64 << 20,
                 compress_sealed: bool = True, zstd_level: int = 1, sealed_chunk_bytes: int = SEALED_CHUNK_BYTES,
                 buffer_capacity: int = 100_000, max_frame_events: int = 65_536,
                 syncer_cpu: Optional[int] = None) -> None:
        os.makedirs(wal_dir, exist_ok=True)
        self.wal_dir = wal_dir
        self.segment_size_bytes = segment_size_bytes
        self.compress_sealed = compress_sealed
        self.zstd_level = zstd_level
        self.sealed_chunk_bytes = sealed_chunk_bytes
        self.max_frame_events = max_frame_events
        self.stats = CommitStats()
        self._next_seq = next_seq
        self._written_seq = next_seq - 1
        # The in-memory buffer holds what was handed to the OS; readers see only
        # durable events, which never run ahead of that.
        self.buffer = EventBuffer(buffer_capacity, next_seq_of=lambda: self._written_seq + 1)
        self._packb = msgpack.Packer().pack
        self._batch: list = []
        self._count = 0
        self._t_first = 0
        self._inflight: deque[tuple[int, int, int]] = deque()   # (last seq, t_first ns, events)
        # Frames flushed but not yet handed to the OS (a write failed):
        # (header, payload, events, first seq, last seq, t_first ns).
        self._unwritten: deque[tuple] = deque()
        self._rotate_due = False
        self.write_error: Optional[WalWriteError] = None
        self.unwritten_at_close = 0
        self._closed = False
        self._died: Optional[str] = None
        self._seal_queue: "queue.Queue[Optional[tuple[int, int]]]" = queue.Queue()
        allowed = sorted(os.sched_getaffinity(0))
        if syncer_cpu is None:
            syncer_cpu = allowed[-1] if len(allowed) > 1 else -1
        self.syncer_cpu: Optional[int] = syncer_cpu if syncer_cpu >= 0 else None
        earlier = [info for info in list_segments(wal_dir) if not info.sealed and info.first_seq < next_seq]
        # The watermark below claims seq next_seq - 1 durable. A process killed
        # before its syncer caught up left frames in the page cache only, readable
        # (recovery replayed them) but not on disk: sync them before anything
        # behind them is released again.
        for info in earlier:
            _sync_file(info.path)
        if earlier:
            fsync_dir(wal_dir)
        # The durable watermark, shared with the syncer and any reader (eventstore/watermark.py).
        shm_fd, self._page = create_watermark(wal_dir, next_seq - 1)
        self._shm = memoryview(self._page)[STATE_OFFSET:]
        req_r, req_w = os.pipe()
        ack_r, ack_w = os.pipe()
        try:
            self._syncer = subprocess.Popen(
                [sys.executable, "-I", "-S", _SYNCER, wal_dir, str(req_r), str(ack_w), str(shm_fd),
                 str(syncer_cpu)], pass_fds=(req_r, ack_w, shm_fd), stdin=subprocess.DEVNULL)
        finally:
            os.close(req_r)
            os.close(ack_w)
            os.close(shm_fd)
        pid = self._syncer.pid
        os.set_blocking(ack_r, False)
        self.syncer_pid = pid
        self._req_w = req_w
        self._ack_r = ack_r
        self._fd = -1
        self._seg_first = 0
        self._seg_size = 0
        for info in earlier:
            # Closed segments of earlier runs; a segment starting at next_seq is
            # empty and becomes the active one again (never seal the active one).
            if compress_sealed:
                self._seal_queue.put((info.first_seq, next_seq - 1))
        try:
            self._open_segment(next_seq)
        except OSError as exc:
            os.close(req_w)          # the syncer sees EOF and exits
            os.close(ack_r)
            self._syncer.wait()
            raise WalWriteError(self._segment_path(next_seq), 0, exc, first_seq=next_seq, last_seq=next_seq - 1,
                                durable_seq=next_seq - 1, free_bytes=free_bytes(wal_dir)) from exc
        self._sealer = threading.Thread(target=self._seal_loop, name="wal-sealer", daemon=True)
        self._sealer.start()

    # ------------------------------------------------------------- appending
    @property
    def next_seq(self) -> int:
        """Sequence number the next :meth:`append` takes."""
        return self._next_seq

    @property
    def written_seq(self) -> int:
        """Last sequence number handed to the OS (not yet necessarily durable)."""
        return self._written_seq

    def append(self, payload: Any) -> int:
        """Add one event (any msgpack-able value) to the current batch; return its seq.

        The event is not durable until ``durable_seq`` reaches the returned seq.
        It is encoded when the batch is flushed, all of the batch in one call:
        a value msgpack cannot encode makes :meth:`flush` raise (the engine
        checks what it appends; see ``Engine.submit``). Complexity: O(1).
        """
        if not self._count:
            self._t_first = time.perf_counter_ns()
        self._batch.append(payload)
        self._count += 1
        seq = self._next_seq
        self._next_seq = seq + 1
        if self._count >= self.max_frame_events:
            self._flush_or_queue()
        return seq

    def extend(self, payloads: list) -> int:
        """:meth:`append` each of ``payloads`` (consecutive seqs); return the
        seq of the last one (:meth:`extend_at` with a copy of the list, from
        the next seq, now)."""
        self.extend_at(self._next_seq, list(payloads), time.perf_counter_ns())
        return self._next_seq - 1

    def extend_at(self, first_seq: int, payloads: list, t_first_ns: int) -> None:
        """A batch of events of consecutive seqs from ``first_seq``, appended
        whole: how the engine hands over what it logged since its last
        flush (one call a batch, not one an event). The writer takes the list
        itself: the caller starts a new one. ``t_first_ns``
        (``time.perf_counter_ns``) is when the batch's first event was
        logged: commit latency counts from it.

        Raises:
            WalSequenceError: ``first_seq != next_seq``; nothing appended.
        """
        if first_seq != self._next_seq:
            raise WalSequenceError(self._segment_path(self._seg_first), self._seg_size, self._next_seq, first_seq)
        if not self._count:
            self._t_first = t_first_ns
            self._batch = payloads
        else:
            self._batch += payloads
        n = len(payloads)
        self._count += n
        self._next_seq += n
        if self._count >= self.max_frame_events:
            self._flush_or_queue()

    def append_at(self, seq: int, payload: Any) -> None:
        """:meth:`append`, checking that ``seq`` is the next sequence number.

        Raises:
            WalSequenceError: ``seq != next_seq``.
        """
        if seq != self._next_seq:
            raise WalSequenceError(self._segment_path(self._seg_first), self._seg_size, self._next_seq, seq)
        self.append(payload)

    def flush(self) -> None:
        """End the batch: write it as one frame and ask the syncer to fsync it.
        Rotates the segment once it is full. Cheap when nothing is pending.
        Frames a failed write left queued are written first, in order.

        Raises:
            WriterDiedError: the syncer is gone, or a failed frame could not
                be cut off the segment (restart: recovery cuts it).
            WalWriteError: the write failed (disk full, EIO): the segment is
                cut back to its last whole frame and the frame stays queued
                for the next ``flush``; :attr:`write_error` is set until one
                succeeds.
        """
        if self._died:
            raise WriterDiedError(self._died)
        if self._count:
            batch = self._batch
            payload = self._packb(batch)   # one C call for the whole frame
            self._batch = []
            first = self._next_seq - self._count
            self._unwritten.append((encode_frame_header(payload, first, self._count), payload, batch, first,
                                    self._next_seq - 1, self._t_first))
            self._count = 0
        if self._unwritten or self._rotate_due:
            self._write_unwritten()

    def _flush_or_queue(self) -> None:
        """:meth:`flush` inside an append (a full frame): a write error leaves
        the frame queued and is reported by the next explicit ``flush``, so a
        caller's append never fails halfway through a command's events."""
        try:
            self.flush()
        except WalWriteError:
            pass

    def _write_unwritten(self) -> None:
        unwritten = self._unwritten
        while True:
            if self._rotate_due:
                self._rotate()
            if not unwritten:
                return
            header, payload, batch, first, last, t_first = unwritten[0]
            size = len(header) + len(payload)
            try:
                n = os.writev(self._fd, [header, payload])
                if n != size:   # a short write (the disk filled up): the rest, or the reason
                    rest = memoryview(header + payload)[n:]
                    while rest:
                        rest = rest[os.write(self._fd, rest):]
            except OSError as exc:
                self._write_failed(exc, first, last)
            unwritten.popleft()
            self._seg_size += size
            self._written_seq = last
            self.buffer.extend(batch)
            self._inflight.append((last, t_first, last - first + 1))
            if self.write_error is not None:
                log.warning("WAL writes resumed: %s is writable again (events up to seq %d written)",
                            self._segment_path(self._seg_first), last)
                self.write_error = None
            self._notify(self._seg_first, last)
            if self._seg_size >= self.segment_size_bytes:
                self._rotate_due = True

    def _write_failed(self, cause: OSError, first: int, last: int) -> None:
        """Cut what a failed frame left in the segment; raise the error."""
        path = self._segment_path(self._seg_first)
        try:
            os.ftruncate(self._fd, self._seg_size)
        except OSError as exc:
            self._fail(f"writing {path} failed ({describe_os_error(cause)}) and the partial frame at byte "
                       f"{self._seg_size} could not be cut off ({describe_os_error(exc)}); restart the engine: "
                       f"recovery cuts the torn tail")
            raise WriterDiedError(self._died) from cause
        self.write_error = WalWriteError(path, self._seg_size, cause, first_seq=first, last_seq=last,
                                         durable_seq=self.peek_durable(), free_bytes=free_bytes(self.wal_dir))
        raise self.write_error from cause

    @property
    def unwritten_events(self) -> int:
        """Events appended but not yet handed to the OS (the open batch and
        any frames a failed write left queued)."""
        return self._next_seq - 1 - self._written_seq

    def _notify(self, seg_first: int, upto: int) -> None:
        try:
            os.write(self._req_w, _MSG.pack(seg_first, upto))
        except BrokenPipeError as exc:
            self._fail("the WAL syncer process exited")
            raise WriterDiedError(self._died) from exc

    def _segment_path(self, first_seq: int) -> str:
        return os.path.join(self.wal_dir, segment_name(first_seq))

    def _open_segment(self, first_seq: int) -> None:
        path = self._segment_path(first_seq)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
        try:
            # Blocks for the whole segment now, its size unchanged (FORMAT.md: a
            # segment is only the bytes written): appends then never allocate while
            # the syncer's fdatasync writes back the blocks before them.
            preallocate_keep_size(fd, self.segment_size_bytes)
            header = memoryview(encode_segment_header(first_seq))
            size = len(header)
            while header:
                header = header[os.write(fd, header):]
        except OSError:
            os.close(fd)
            try:
                os.unlink(path)   # a header-less file would be a torn segment
            except OSError:
                pass
            raise
        self._fd = fd
        self._seg_first = first_seq
        self._seg_size = size
        # Tell the syncer now, so the new file and its directory entry get synced.
        self._notify(first_seq, self._written_seq)

    def _rotate(self) -> None:
        """Start the next segment at the next seq to be written; the old one
        is closed and queued for sealing. On a write error the old segment
        stays the active one and the rotation is tried again at the next flush."""
        old_first, old_fd, old_size = self._seg_first, self._fd, self._seg_size
        first = self._written_seq + 1
        try:
            self._open_segment(first)
        except OSError as exc:
            self.write_error = WalWriteError(self._segment_path(first), 0, exc, first_seq=first,
                                             last_seq=first - 1, durable_seq=self.peek_durable(),
                                             free_bytes=free_bytes(self.wal_dir))
            raise self.write_error from exc
        self._rotate_due = False
        _release_preallocation(old_fd, old_size)
        os.close(old_fd)
        if self.compress_sealed:
            self._seal_queue.put((old_first, self._written_seq))

    # ---------------------------------------------------------- durability
    @property
    def durable_seq(self) -> int:
        """The watermark: every event with ``seq <= durable_seq`` is on disk.

        Raises:
            WriterDiedError: the syncer reported an error or exited.
        """
        durable, err, _, _ = _SHM.unpack_from(self._shm, 0)
        if err:
            self._fail(f"the WAL syncer's fdatasync in {self.wal_dir} failed: {os.strerror(err)} (errno {err}); "
                       f"events after seq {durable} may not be on disk, and a failed fsync is not retried "
                       f"(the kernel may have dropped the pages); restart to recover from what is on disk")
        if self._died:
            raise WriterDiedError(self._died)
        if self._inflight and self._inflight[0][0] <= durable:
            now = time.perf_counter_ns()
            record = self.stats.record
            while self._inflight and self._inflight[0][0] <= durable:
                _, t_first, count = self._inflight.popleft()
                record(now - t_first, count)
        return durable

    def peek_durable(self) -> int:
        """``durable_seq`` as the syncer last published it; no checks, no
        statistics. Safe in a forked child (a snapshot writer)."""
        return _U64.unpack_from(self._shm, 0)[0]

    def sync_counters(self) -> tuple[int, int]:
        """``(fsyncs done, total ns spent in them)`` by the syncer."""
        _, _, syncs, sync_ns = _SHM.unpack_from(self._shm, 0)
        return syncs, sync_ns

    def wait_durable(self, seq: int, timeout: Optional[float] = None) -> bool:
        """Block until ``durable_seq >= seq`` (flushing first); False on timeout.

        Raises:
            WriterDiedError: the syncer failed or exited while waiting.
            WalWriteError: ``seq`` is not written yet and writing it failed.
        """
        if seq > self._written_seq:
            self.flush()
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.durable_seq < seq:
            self._check_syncer()
            remaining = 0.05 if deadline is None else min(0.05, deadline - time.monotonic())
            if remaining <= 0:
                return False
            select.select([self._ack_r], [], [], remaining)
            self.drain_wakeups()
        return True

    def drain_wakeups(self) -> None:
        """Empty the syncer's wake-up pipe (for a caller that selects on :attr:`wakeup_fd`).

        Raises:
            WriterDiedError: the pipe is at end of file: the syncer exited.
                A caller that only waits on :attr:`wakeup_fd` learns it here,
                even when its last frame went into the request pipe before
                the syncer died (so no write saw ``EPIPE``).
        """
        try:
            while os.read(self._ack_r, 4096):
                pass
        except BlockingIOError:
            return
        self._syncer_exited()

    def _syncer_exited(self) -> None:
        try:
            status = self._syncer.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            status = None
        _, err, _, _ = _SHM.unpack_from(self._shm, 0)
        self.syncer_pid = 0
        self._fail(f"the WAL syncer process exited (status {status}, errno {err})")
        raise WriterDiedError(self._died)

    @property
    def wakeup_fd(self) -> int:
        """Readable whenever the syncer has advanced ``durable_seq``."""
        return self._ack_r

    def _check_syncer(self) -> None:
        if self.syncer_pid and self._syncer.poll() is not None:
            self._syncer_exited()

    def _fail(self, why: str) -> None:
        if not self._died:
            self._died = why

    # ------------------------------------------------------------- sealing
    def _seal_loop(self) -> None:
        while True:
            item = self._seal_queue.get()
            if item is None:
                return
            first_seq, last_seq = item
            while not self._closed and not self._died:
                durable, err, _, _ = _SHM.unpack_from(self._shm, 0)
                if durable >= last_seq or err:
                    break
                time.sleep(0.005)
            failed = False
            while True:
                try:
                    seal_segment(self.wal_dir, first_seq, self.zstd_level, self.sealed_chunk_bytes)
                    if failed:
                        log.warning("sealed %s after all", segment_name(first_seq))
                    break
                except (OSError, AtomicWriteError) as exc:
                    # A full disk has no room for the compressed copy: the raw
                    # segment stays valid; try again until space comes back
                    # (or at the next start, if the writer closes first).
                    if not failed:
                        log.warning("sealing %s failed, retrying every %.0f s: %s", segment_name(first_seq),
                                    _SEAL_RETRY_S, exc)
                        failed = True
                    if self._closed:
                        break
                    time.sleep(_SEAL_RETRY_S)

    # ------------------------------------------------------------- closing
    def close_in_child(self) -> None:
        """In a forked child (a snapshot writer): drop this process's copies of
        the writer's pipe ends, so the syncer sees EOF when the engine dies."""
        for fd in (self._req_w, self._ack_r, self._fd):
            try:
                os.close(fd)
            except OSError:
                pass

    def close(self, timeout: float = 30.0) -> None:
        """Flush, wait until everything appended is durable, stop the syncer and
        the sealer (letting it finish the segments queued). Events that still
        cannot be written (a full disk) are given up: they were never durable,
        so never acknowledged; :attr:`unwritten_at_close` counts them.

        Raises:
            WriterDiedError: the syncer failed before all was durable.
        """
        if self._closed:
            return
        try:
            if not self._died:
                try:
                    self.flush()
                except WalWriteError as exc:
                    self.unwritten_at_close = self.unwritten_events
                    log.debug("closing the WAL with %d event(s) unwritten (never acknowledged): %s",
                              self.unwritten_at_close, exc)
                self.wait_durable(self._written_seq, timeout)
        finally:
            self._closed = True
            os.close(self._req_w)
            _release_preallocation(self._fd, self._seg_size)
            os.close(self._fd)
            self._syncer.wait()
            self.syncer_pid = 0
            os.close(self._ack_r)
            self._seal_queue.put(None)
            self._sealer.join()
            if not self._died:
                release_watermark(self._page)   # no writer: every whole frame is durable now

    def __enter__(self) -> "WalWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _sync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)


def _release_preallocation(fd: int, size_bytes: int) -> None:
    """Give back the blocks preallocated past ``size_bytes`` (the bytes
    written) of a segment that is done: ``ftruncate`` to its own size."""
    try:
        if os.fstat(fd).st_size == size_bytes:
            os.ftruncate(fd, size_bytes)
    except OSError:
        pass   # the blocks stay reserved until the segment is sealed (unlinked)


def seal_segment(wal_dir: str, first_seq: int, level: int = 1,
                 chunk_bytes: int = SEALED_CHUNK_BYTES) -> Optional[str]:
    """Compress the raw segment starting at ``first_seq`` into ``.seg.zst``
    (seekable: zstd frames of whole batch frames and a seek table, FORMAT.md),
    then unlink the raw file.
    Crash-safe: the sealed file appears whole (``atomic_write``) before the raw
    one goes. Returns the sealed path, or None if there was nothing to seal.

    Raises:
        AtomicWriteError: writing the sealed file failed (the raw file stays).
    """
    raw = os.path.join(wal_dir, segment_name(first_seq))
    sealed = raw + ".zst"
    if os.path.exists(sealed) and os.path.exists(raw):
        # A crash between the rename of the sealed file and the unlink of the raw one.
        os.unlink(raw)
        fsync_dir(wal_dir)
        return sealed
    try:
        with open(raw, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    atomic_write(sealed, encode_sealed(data, level, chunk_bytes))
    os.unlink(raw)
    fsync_dir(wal_dir)
    return sealed
