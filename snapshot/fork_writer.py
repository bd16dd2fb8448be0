"""Snapshots written by a forked child, Redis-style.

The parent (the matching loop, between two batches) calls :meth:`start`: it
times ``os.fork()`` (that pause is all the parent pays) and goes on matching.
The child owns a copy-on-write image of the state exactly after ``seq``. It
serialises it, waits until the WAL is durable up to ``seq`` (a snapshot must
never be ahead of the log it abbreviates), then writes the file with
``atomic_write`` (temp file, fsync, rename, fsync dir) and leaves with
``os._exit``. The child touches no lock, logger, event loop or socket; it
disables the cyclic GC, which would otherwise walk (and so copy) every page.

Source: Redis ``rdbSaveBackground`` / ``stat_fork_time``.
"""

from __future__ import annotations

import errno
import gc
import os
import time
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Iterable, Optional

from eventstore.fsio import atomic_write

from .catalog import prune, snapshot_name
from .codec import encode_snapshot
from .errors import SnapshotFailedError

__all__ = ["SnapshotJob", "SnapshotWriter", "describe_exit", "EXIT_WAL_NOT_DURABLE", "EXIT_OS_ERROR"]

EXIT_WAL_NOT_DURABLE = 2   # the WAL did not become durable through the snapshot's seq in time
EXIT_OS_ERROR = 100        # + errno: writing the file failed (a full disk: 100 + ENOSPC = 128)


def _child_exit_code(exc: BaseException) -> int:
    cause = getattr(exc, "cause", exc)     # AtomicWriteError wraps the OSError
    code = getattr(cause, "errno", None)
    if isinstance(code, int) and 0 < code < 256 - EXIT_OS_ERROR:
        return EXIT_OS_ERROR + code
    return 1


def describe_exit(status: Optional[int]) -> str:
    """A snapshot child's exit status in words."""
    if status is None:
        return "still running"
    if status == 0:
        return "ok"
    if status < 0:
        return f"killed by signal {-status}"
    if status == EXIT_WAL_NOT_DURABLE:
        return "the WAL did not become durable through its seq in time"
    if status > EXIT_OS_ERROR:
        code = status - EXIT_OS_ERROR
        return f"{os.strerror(code)} (errno {code}, {errno.errorcode.get(code, '?')})"
    return f"the child exited with status {status}"


@dataclass
class SnapshotJob:
    """One snapshot in progress or done. ``fork_pause_ns``: the parent's pause."""

    seq: int
    path: str
    pid: int
    fork_pause_ns: int
    started_ns: int
    done: bool = False
    status: Optional[int] = None
    finished_ns: Optional[int] = None
    waiters: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.done and self.status == 0

    @property
    def fork_pause_ms(self) -> float:
        return self.fork_pause_ns / 1e6

    @property
    def reason(self) -> str:
        """Why a finished child failed, from its exit status (see
        :data:`EXIT_WAL_NOT_DURABLE`, :data:`EXIT_OS_ERROR`)."""
        return describe_exit(self.status)


class SnapshotWriter:
    """Forks snapshot children and reaps them.

    Args:
        snap_dir: where snapshot files go (created if missing).
        retain: how many snapshots to keep; older ones are deleted once a new
            one is complete.
        zstd_level: compression of the body.
        in_child: called first thing in the child (close inherited fds).
        prune_guard: ``prune_guard()`` is a context manager entered around
            each pruning; it yields the seqs that must be kept (the base of a
            pruned WAL), or ``None`` to skip this pruning (a WAL prune holds
            the retention lock: the next one catches up).

    At most one child runs at a time (:attr:`running`).
    """

    def __init__(self, snap_dir: str, *, retain: int = 3, zstd_level: int = 1,
                 in_child: Optional[Callable[[], None]] = None,
                 prune_guard: Optional[Callable[[], ContextManager[Optional[Iterable[int]]]]] = None) -> None:
        os.makedirs(snap_dir, exist_ok=True)
        self.snap_dir = snap_dir
        self.retain = retain
        self.prune_guard = prune_guard
        self._prune(clean_tmp=True)
        self.zstd_level = zstd_level
        self.in_child = in_child
        self.running: Optional[SnapshotJob] = None
        self.completed: list[SnapshotJob] = []
        self.failed: list[SnapshotJob] = []

    def start(self, seq: int, export_state: Callable[[], dict],
              wait_durable: Callable[[int], bool]) -> SnapshotJob:
        """Fork a child that writes the state after ``seq``; return at once.

        Args:
            seq: the state's last sequence number (``matcher.last_seq``).
            export_state: builds the state dict in the child.
            wait_durable: ``wait_durable(seq) -> bool``, run in the child, True
                once the WAL is fsynced through ``seq``; False aborts.

        Raises:
            RuntimeError: a snapshot is already running.
            OSError: fork failed (no memory): the engine goes on without it.
        """
        if self.running is not None:
            raise RuntimeError("a snapshot is already being written")
        path = os.path.join(self.snap_dir, snapshot_name(seq))
        t0 = time.perf_counter_ns()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                gc.disable()
                if self.in_child is not None:
                    self.in_child()
                state = export_state()
                data = encode_snapshot(state, self.zstd_level)
                if wait_durable(seq):
                    atomic_write(path, data)   # on failure the temp file is removed: never half published
                    code = 0
                else:
                    code = EXIT_WAL_NOT_DURABLE
            except BaseException as exc:
                code = _child_exit_code(exc)
            os._exit(code)
        pause = time.perf_counter_ns() - t0
        job = SnapshotJob(seq, path, pid, pause, t0)
        self.running = job
        return job

    def poll(self, block: bool = False) -> Optional[SnapshotJob]:
        """Reap the running child if it finished (or wait for it with ``block``);
        return the job once done, else None. On success prunes old snapshots."""
        job = self.running
        if job is None:
            return None
        pid, status = os.waitpid(job.pid, 0 if block else os.WNOHANG)
        if not pid:
            return None
        job.done = True
        job.status = os.waitstatus_to_exitcode(status)
        job.finished_ns = time.perf_counter_ns()
        self.running = None
        if job.status == 0:
            self.completed.append(job)
            self._prune()
        else:
            self.failed.append(job)
        return job

    def _prune(self, clean_tmp: bool = False) -> list[str]:
        if self.prune_guard is None:
            return prune(self.snap_dir, self.retain, clean_tmp=clean_tmp)
        with self.prune_guard() as keep:
            if keep is None:
                return []
            return prune(self.snap_dir, self.retain, clean_tmp=clean_tmp, keep=keep)

    def check(self, job: SnapshotJob) -> SnapshotJob:
        """Raise :class:`SnapshotFailedError` if ``job`` failed; else return it."""
        if job.done and job.status != 0:
            raise SnapshotFailedError(job.seq, job.status if job.status is not None else -1)
        return job
