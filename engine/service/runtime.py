"""The engine on an asyncio loop, for push sources: the HTTP gateway and Kafka.

One thread does everything, as DESIGN.md asks: the loop runs the network I/O,
and matching runs on it too, synchronously, between awaits. The WAL's fsync
happens in the syncer process (``eventstore/writer.py``), so nothing here
waits for the disk: a submitted command is matched and written at once, and its
results are released when the syncer's wake-up fd says the watermark passed
them (``loop.add_reader``).

Group commit for push sources: every :meth:`EngineRuntime.submit` in one turn
of the loop (all HTTP requests that arrived together, one Kafka fetch) goes
into one WAL frame, flushed by a callback scheduled for the end of that turn.

A WAL that cannot be written (a full disk, EIO: ``WalWriteError``) degrades
the runtime instead of stopping it: :attr:`EngineRuntime.degraded` says why,
new commands are refused with :class:`EngineDegradedError` (HTTP 503; the
Kafka bridge stops fetching), reads that must be durable wait no more, and
the housekeeping timer writes the queued frame again every tick until it
goes through. Then everything waiting is released and commands are taken
again. A failed fsync is not retried (``WriterDiedError``): the runtime fails.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time
from typing import Any, Callable, Optional

from engine.core.commands import Command
from engine.core.types import Kind
from eventstore import WalWriteError

from .engine import Engine

__all__ = ["EngineRuntime", "CommandResult", "EngineDegradedError"]

log = logging.getLogger("evengine.runtime")

_TRADE = Kind.TRADE.value


class EngineDegradedError(RuntimeError):
    """The engine takes no commands now: its WAL cannot be written (the
    message says why: path, error, free space). Nothing was submitted; try
    again once ``/health`` says ``ok``."""


class CommandResult:
    """What one command did, known only once it is durable.

    Attributes:
        seq: the command's sequence number in the WAL.
        cmd: the command as logged (a malformed one may have become ``BadInput``).
        events: the matcher's events for it (``engine.core.events``): trades,
            a reject, a rest/cancel/amend acknowledgement.
        durable_seq: the WAL watermark when it was released (>= every seq above).
    """

    __slots__ = ("seq", "cmd", "events", "durable_seq")

    def __init__(self, seq: int, cmd: Any, events: list, durable_seq: int) -> None:
        self.seq, self.cmd, self.events, self.durable_seq = seq, cmd, events, durable_seq

    def __repr__(self) -> str:
        return f"CommandResult(seq={self.seq}, events={self.events!r})"


class EngineRuntime:
    """Drive an open :class:`Engine` from an asyncio loop.

    Use: ``rt = EngineRuntime(engine)``; ``await rt.start()``; then
    :meth:`submit` (fire and forget: outputs go through the sinks) or
    ``await`` :meth:`execute` (answers after the fsync); :meth:`stop`.

    Sinks added with :meth:`add_sink` see every released command as
    ``sink(seq, cmd, events)``, in sequence order, only once durable (the
    engine's :class:`~engine.service.output_gate.OutputGate`).
    """

    def __init__(self, engine: Engine, *, housekeeping_s: float = 0.05) -> None:
        self.engine = engine
        self.commands = 0
        self._stopped = False
        self._waiters: dict[int, asyncio.Future] = {}
        self._barriers: list[tuple[int, asyncio.Future]] = []
        self._flush_scheduled = False
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._gc_thresholds: Optional[tuple] = None
        self._housekeeping_s = housekeeping_s
        self._tick: Optional[asyncio.Task] = None
        self.stopping = asyncio.Event()
        self.stop_reason: Optional[str] = None
        self.failed: Optional[BaseException] = None
        self._resolving = False   # the result sink is added on the first execute()
        self.degraded_since: Optional[float] = None   # monotonic time the WAL became unwritable
        self.degraded_episodes = 0

    # -------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Register the WAL wake-up fd and the housekeeping timer."""
        self._loop = loop = asyncio.get_running_loop()
        loop.add_reader(self.engine.wal.wakeup_fd, self._on_durable)
        if not gc.isenabled():
            # The engine pauses the cyclic GC: a full collection stalls matching
            # for tens of ms, and matching makes no cycles. The network stack
            # (asyncio, aiokafka, FastAPI) does, and they die young: so collect
            # the young generations only, every 20,000 allocations (measured:
            # 700, CPython's default, cost 10% of Kafka-mode throughput), and
            # never the old one automatically.
            self._gc_thresholds = gc.get_threshold()
            gc.set_threshold(20_000, 10, 1 << 30)
            gc.enable()
        self._tick = asyncio.create_task(self._housekeeping_loop(), name="evengine-housekeeping")

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT ask for a clean stop (see :attr:`stopping`)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._loop.add_signal_handler(sig, self.request_stop, sig.name)

    def request_stop(self, reason: str = "stop requested") -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self.engine.request_stop(reason)
        self.stopping.set()

    async def stop(self) -> None:
        """Flush, wait until everything submitted is durable and released,
        then stop the timer. The engine itself stays open (close it after).
        A second call returns at once."""
        if self._stopped:
            return
        self._stopped = True
        self._flush()
        wal = self.engine.wal
        give_up = time.monotonic() + 5.0
        while self.failed is None:
            if wal.write_error is not None:
                if time.monotonic() < give_up:
                    await asyncio.sleep(0.05)
                    self._flush()   # space may have come back
                    continue
                # What was never written was never acknowledged: stop without it.
                if wal.durable_seq >= wal.written_seq:
                    break
            elif wal.durable_seq >= wal.next_seq - 1:
                break
            await asyncio.sleep(0.001)
            self._on_durable()
        self._on_durable()
        if self._tick is not None:
            self._tick.cancel()
            try:
                await self._tick
            except asyncio.CancelledError:
                pass
        if self._loop is not None:
            self._loop.remove_reader(wal.wakeup_fd)
        if self._gc_thresholds is not None:
            gc.disable()
            gc.set_threshold(*self._gc_thresholds)
            self._gc_thresholds = None
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(RuntimeError("engine stopped before the command was durable"))
        self._waiters.clear()

    # --------------------------------------------------------------- commands
    @property
    def next_seq(self) -> int:
        return self.engine.next_seq

    @property
    def degraded(self) -> Optional[str]:
        """Why no command is taken now (the WAL cannot be written), or None."""
        return self.engine.degraded

    def _check_accepting(self) -> None:
        if self.failed is not None:
            raise RuntimeError(f"the engine failed: {self.failed}")
        if self.engine.wal.write_error is not None:
            raise EngineDegradedError(f"the engine takes no commands now: {self.engine.wal.write_error}")

    def submit(self, cmd: Command) -> list:
        """Match and log ``cmd`` now; its outputs leave through the sinks once
        durable. Returns the (not yet durable) events. Never raises for a bad
        command (the matcher rejects it).

        Raises:
            EngineDegradedError: the WAL cannot be written now (nothing done).
            RuntimeError: the engine failed.
        """
        self._check_accepting()
        out = self.engine.submit(cmd)
        self.commands += 1
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        return out

    async def execute(self, cmd: Command) -> CommandResult:
        """Submit ``cmd`` and wait until it and every event it caused are on
        disk. Raises ``RuntimeError`` if the engine stops or fails first."""
        return await self.enqueue(cmd)

    def enqueue(self, cmd: Command) -> "asyncio.Future[CommandResult]":
        """Match and log ``cmd`` now (before this returns, so commands are
        applied in the order of the calls); the future is resolved with its
        :class:`CommandResult` once it and every event it caused are on disk.
        For a caller with many commands in flight (a streaming order entry):
        no task per command.

        Raises:
            EngineDegradedError: the WAL cannot be written now (nothing done).
            RuntimeError: the engine failed (nothing done); the future fails
                with ``RuntimeError`` if it stops or fails before the command
                is durable.
        """
        self._check_accepting()
        if not self._resolving:
            self._resolving = True
            self.engine.add_sink(self._resolve)
        fut = self._loop.create_future()
        seq = self.engine.next_seq
        self._waiters[seq] = fut
        try:
            self.submit(cmd)
        except BaseException:
            del self._waiters[seq]
            raise
        return fut

    async def barrier(self) -> int:
        """Wait until everything applied so far is durable; return that seq.
        For reads of the book: what they show must not be ahead of the disk.

        Raises:
            EngineDegradedError: the WAL cannot be written, so the state
                cannot become durable now.
            RuntimeError: the engine failed.
        """
        target = self.engine.matcher.last_seq
        wal = self.engine.wal
        self._flush()
        while wal.durable_seq < target:
            if self.failed is not None:
                raise RuntimeError(f"the engine failed: {self.failed}")
            if wal.write_error is not None:
                raise EngineDegradedError(f"the engine's state is not durable now: {wal.write_error}")
            fut = self._loop.create_future()
            self._barriers.append((target, fut))
            await fut
        return target

    def flush(self) -> None:
        """End the group-commit batch now (one WAL frame for what was
        submitted since the last one): for a source that submits a whole
        fetch at a time."""
        self._flush()

    # ---------------------------------------------------------------- plumbing
    def add_sink(self, sink: Callable[[int, Any, list], None]) -> None:
        self.engine.add_sink(sink)

    def _resolve(self, seq: int, cmd: Any, events: list) -> None:
        if not self._waiters:
            return
        fut = self._waiters.pop(seq, None)
        if fut is not None and not fut.done():
            fut.set_result(CommandResult(seq, cmd, events, self.engine.wal.peek_durable()))

    def _flush(self) -> None:
        self._flush_scheduled = False
        try:
            self.engine.end_batch()
        except WalWriteError as exc:
            if self.degraded_since is None:
                self.degraded_since = time.monotonic()
                self.degraded_episodes += 1
                log.error("%s; taking no commands until the WAL can be written (retrying every %.2f s)",
                          exc, self._housekeeping_s)
            self._wake_barriers()
            return
        except Exception as exc:  # noqa: BLE001 - the WAL failed: nothing more may be acknowledged
            self._fail(exc)
            return
        if self.degraded_since is not None:
            log.warning("the WAL is writable again after %.1f s; taking commands",
                        time.monotonic() - self.degraded_since)
            self.degraded_since = None

    def _wake_barriers(self) -> None:
        """Let waiting reads see the degradation (they raise EngineDegradedError)."""
        for _, fut in self._barriers:
            if not fut.done():
                fut.set_result(None)
        self._barriers.clear()

    def _on_durable(self) -> None:
        engine = self.engine
        try:
            engine.wal.drain_wakeups()
            durable = engine.wal.durable_seq
            engine.gate.release(durable)
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)
            return
        if self._barriers:
            keep = []
            for target, fut in self._barriers:
                if target <= durable:
                    if not fut.done():
                        fut.set_result(None)
                else:
                    keep.append((target, fut))
            self._barriers[:] = keep

    def _fail(self, exc: BaseException) -> None:
        if self.failed is None:
            self.failed = exc
            log.error("the engine failed, stopping: %s", exc)
            self.request_stop(f"failure: {exc}")
        for fut in list(self._waiters.values()):
            if not fut.done():
                fut.set_exception(RuntimeError(f"the engine failed: {exc}"))
        self._waiters.clear()

    async def _housekeeping_loop(self) -> None:
        """Snapshots, control requests and releases even when no input arrives."""
        while True:
            await asyncio.sleep(self._housekeeping_s)
            if not self._flush_scheduled:
                self._flush()
            self._on_durable()
