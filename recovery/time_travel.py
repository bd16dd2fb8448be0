"""Time travel: the books and trades of a data directory at any sequence number.

A notebook (or ``evengine inspect``) opens a data directory, read-only, and
asks for the state right after event ``seq``. Plain-Python answers here
(``book_at``, ``matcher_at``, ``events``, ``trade_events``,
``trades_with_input``, ``state_hash``); tables as pandas DataFrames
(``book``, ``book_at_time``, ``bbo``, ``trades``, ``order``, ``diff``,
``depth_heatmap``, ``what_if``) come from :mod:`recovery.history`, which
imports pandas only when one of them is first called (``pip install
'evengine[notebook]'``): the engine imports ``recovery`` without pandas.

    >>> from recovery import open_data_dir
    >>> h = open_data_dir("data", scales={"GOOG": (10_000, 1)})
    >>> h.book_at(120_000, "GOOG", depth=5)      # doctest: +SKIP
    {'seq': 120000, 'symbol': 'GOOG', 'bids': [[5799000, 300], ...], 'asks': [...]}
    >>> h.book(120_000, "GOOG", depth=5)         # doctest: +SKIP
       side  level    price  qty  orders  cum_qty  price_decimal  qty_decimal

How a state is found (bounded, :mod:`recovery.keyframes`): the nearest of the
previous query's matcher, an in-memory keyframe, a persisted keyframe
(``<data-dir>/index``, written by ``evengine index`` or :meth:`History.write_index`),
an engine snapshot, or the empty state, then at most ``max_replay`` WAL events.
Safe while an engine writes the directory: only whole, checksummed frames on
disk are read (:mod:`recovery.walindex`), an incomplete tail is ignored, and
nothing is written except by :meth:`History.write_index`.

Note on "right after event N": a command and the trades it caused are one
atomic step of the matcher, so the state after any event of that step is the
state after the whole step.

Source: eventsourcing's "snapshot + subsequent events" (STYLE.md, Absorb 4).
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Iterator, Mapping, Optional

from engine.core import Kind, Matcher, Trade, decode_payload
from eventstore import PrunedRangeError, RetentionRecord, WalReader, read_retention
from snapshot import list_snapshots, load_snapshot

from .keyframes import Stats, Timeline
from .recover import index_dir, snapshot_dir, wal_dir
from .walindex import WalIndex

__all__ = ["History", "open_data_dir"]


class History:
    """Read-only view of a data directory's history.

    Args:
        data_dir: an engine's data directory (it may be running: only what is
            on disk is read; an incomplete write at the tail is ignored).
        trade_history: recent trades a matcher from :meth:`matcher_at` keeps.
        scales: ``symbol -> (price_scale, qty_scale)``: price units and lots
            per one unit of the currency and of the instrument (LOBSTER's
            GOOG: ``(10_000, 1)``; the engine records no scale). Tables then
            add ``price_decimal`` / ``qty_decimal`` columns (float64, for
            display and plots; the integer columns stay exact).
        keyframe_every: events between keyframes (memory vs. replay per query).
        max_replay: most WAL events one point query replays from its base.

    Attributes:
        stats: :class:`recovery.keyframes.Stats`, the replay counters.

    A pruned WAL (``evengine wal prune``): events are read from
    :attr:`pruned_before_seq` on and states are rebuilt from
    :attr:`earliest_seq` on (the oldest valid snapshot the retained WAL
    continues); asking for anything earlier raises
    :class:`eventstore.PrunedRangeError` naming the range and the earliest
    seq available.
    """

    def __init__(self, data_dir: str, trade_history: int = 10_000, *,
                 scales: Optional[Mapping[str, tuple[int, int]]] = None,
                 keyframe_every: int = 10_000, max_replay: int = 50_000) -> None:
        self.data_dir = data_dir
        self.reader = WalReader(wal_dir(data_dir))
        self.trade_history = trade_history
        self.scales = {s: (int(p), int(q)) for s, (p, q) in (scales or {}).items()}
        for symbol, (p, q) in self.scales.items():
            if p <= 0 or q <= 0:
                raise ValueError(f"scales[{symbol!r}] must be two positive integers, got {(p, q)}")
        self.wal = WalIndex(wal_dir(data_dir))
        self.wal.refresh()
        self.timeline = Timeline(self.wal, snapshot_dir(data_dir), keyframe_every, max_replay, trade_history,
                                 index_dir=index_dir(data_dir))
        self._valid_snaps: dict[tuple, bool] = {}
        self.timeline.check_seq = self._check_state_seq
        self.timeline.earliest = lambda: self.earliest_seq if self.retention() is not None else None

    # ------------------------------------------------------------- retention
    def retention(self) -> Optional[RetentionRecord]:
        """The WAL's prune record (``None``: never pruned); read again each time."""
        return read_retention(self.reader.wal_dir)

    @property
    def pruned_before_seq(self) -> int:
        """The earliest event seq the WAL holds on purpose (1 if never pruned)."""
        rec = self.retention()
        return 1 if rec is None else rec.pruned_before_seq

    @property
    def earliest_seq(self) -> Optional[int]:
        """The earliest seq whose state can be queried: 0 for a WAL never
        pruned (the empty state before seq 1), else the oldest valid
        snapshot at or after ``pruned_before_seq - 1``; ``None`` if none is
        valid (no state can be rebuilt)."""
        rec = self.retention()
        if rec is None:
            return 0
        for info in list_snapshots(self.timeline.snap_dir):
            if info.seq < rec.pruned_before_seq - 1:
                continue
            try:
                st = os.stat(info.path)
            except OSError:
                continue
            key = (info.path, st.st_ino, st.st_size, st.st_mtime_ns)
            ok = self._valid_snaps.get(key)
            if ok is None:
                try:
                    load_snapshot(info)
                    ok = True
                except Exception:  # noqa: BLE001 - damaged: not a base, as recovery skips it
                    ok = False
                self._valid_snaps[key] = ok
            if ok:
                return info.seq
        return None

    def _check_state_seq(self, seq: int) -> None:
        rec = self.retention()
        if rec is None:
            return
        earliest = self.earliest_seq
        if earliest is None or seq < earliest:
            if earliest is None:
                raise PrunedRangeError(self.data_dir, seq, rec.pruned_before_seq, rec.pruned_before_seq,
                                       rec.pruned_at, rec.path, "seq available, but no valid snapshot at or after "
                                       f"seq {rec.pruned_before_seq - 1} rebuilds a state; first event")
            raise PrunedRangeError(self.data_dir, seq, earliest, rec.pruned_before_seq, rec.pruned_at, rec.path,
                                   "seq whose state can be rebuilt")

    def _check_event_seq(self, seq: int) -> None:
        rec = self.retention()
        if rec is not None and seq < rec.pruned_before_seq:
            raise PrunedRangeError(self.data_dir, seq, rec.pruned_before_seq, rec.pruned_before_seq,
                                   rec.pruned_at, rec.path)

    # ----------------------------------------------------------- plain Python
    @property
    def stats(self) -> Stats:
        return self.timeline.stats

    @property
    def last_seq(self) -> int:
        """Last seq of the last whole frame in the WAL (0 if empty); looks again each time."""
        return self.wal.refresh()

    def refresh(self) -> int:
        """Look for events written since the last look; return :attr:`last_seq`."""
        return self.wal.refresh()

    def build_index(self) -> "History":
        """Replay the whole WAL once, laying every keyframe and the time index
        (optional: queries build what they need lazily). Returns ``self``."""
        self.timeline.build_index()
        return self

    def write_index(self, every: int = 50_000, progress: Any = None) -> int:
        """Persist time-travel keyframes under ``<data-dir>/index`` (one per
        ``every`` events, format ``recovery/FORMAT.md``), so that any later
        process answers a point query from one of them with at most ``every``
        events replayed. Continues after the newest file that still checks;
        safe while an engine runs. Returns the number of files written.
        See :meth:`recovery.keyframes.Timeline.write_index`."""
        return self.timeline.write_index(every, progress)

    def matcher_at(self, seq: int) -> Matcher:
        """The full engine state right after event ``seq``, a matcher the
        caller owns. Its ``trades`` holds only the trades replayed since the
        keyframe or snapshot it started from: use :meth:`trade_events` for
        history.

        Raises:
            ValueError: ``seq`` is below 0 or beyond the WAL's last event.
            PrunedRangeError: ``seq`` is before :attr:`earliest_seq` (pruned).
            CorruptRecordError, ReplayMismatchError: the history is damaged.
        """
        return self.timeline.detach(seq)

    def book_at(self, seq: int, symbol: str, depth: Optional[int] = None) -> dict:
        """``{"seq", "symbol", "bids": [[price, qty], ...], "asks": [...]}``, best
        first, aggregated per price level (price units, lots).

        Raises:
            KeyError: ``symbol`` had no book at ``seq``.
        """
        book = self._book(seq, symbol)
        return {"seq": seq, "symbol": symbol, "bids": book.depth(1, depth), "asks": book.depth(2, depth)}

    def _book(self, seq: int, symbol: str) -> Any:
        matcher = self.timeline.seek(seq).matcher
        book = matcher.books.get(symbol)
        if book is None:
            raise KeyError(f"no order book for {symbol!r} at seq {seq} (symbols: {sorted(matcher.books)})")
        return book

    def balance_report(self, seq: int, account: Optional[int] = None) -> dict:
        """Balances right after ``seq`` as plain data::

            {"seq", "ledger_seq", "balances": [{"account", "asset", "available", "held"}, ...],
             "totals": {asset: {"scale", "available", "held", "total", "deposits_minus_withdrawals"}},
             "totals_equal_supply": bool}

        Amounts in each asset's smallest units (``10**-scale``). ``balances``
        by account then asset, only ``account``'s when given; ``totals`` are
        over every account (the fee account included).

        Raises:
            ValueError: ``seq`` is below 0 or beyond the WAL's last event.
        """
        acc = self.timeline.seek(seq).matcher.accounts
        rows = [{"account": a, "asset": asset, "available": b[0], "held": b[1]}
                for a in sorted(acc.balances) if account is None or a == account
                for asset, b in sorted(acc.balances[a].items())]
        totals = {}
        for asset, (avail, held) in sorted(acc.totals().items()):
            totals[asset] = {"scale": acc.assets.get(asset), "available": avail, "held": held, "total": avail + held,
                             "deposits_minus_withdrawals": acc.supply.get(asset, 0)}
        return {"seq": seq, "ledger_seq": acc.ledger_seq, "balances": rows, "totals": totals,
                "totals_equal_supply": all(t["total"] == t["deposits_minus_withdrawals"] for t in totals.values())}

    def state_hash(self, seq: int) -> str:
        """:meth:`Matcher.state_hash` of the state right after ``seq`` (its
        ``last_seq`` is the end of the step holding ``seq``)."""
        return self.timeline.seek(seq).matcher.state_hash()

    def seq_at_time(self, ts: Any) -> int:
        """The last seq at or before ``ts`` (int ns, ``datetime``, ISO string,
        pandas Timestamp; naive means UTC); see :meth:`Timeline.seq_at_time`."""
        return self.timeline.seq_at_time(to_ns(ts))

    def events(self, from_seq: Optional[int] = None, to_seq: Optional[int] = None) -> Iterator[tuple[int, Any]]:
        """``(seq, command or event)`` from the WAL, both bounds inclusive
        (``from_seq=None``: from the first event kept).

        Raises:
            PrunedRangeError: ``from_seq`` is in a pruned range.
        """
        if from_seq is None:
            from_seq = self.pruned_before_seq
        self._check_event_seq(from_seq)
        self.wal.refresh()
        for seq, payload in self.wal.read(from_seq, to_seq):
            yield seq, decode_payload(payload)

    def trade_events(self, from_seq: Optional[int] = None, to_seq: Optional[int] = None,
                     symbol: Optional[str] = None) -> list[Trade]:
        """``Trade`` tuples logged between the two sequence numbers (inclusive)."""
        return [obj for _, obj in self.events(from_seq, to_seq)
                if isinstance(obj, Trade) and (symbol is None or obj.symbol == symbol)]

    def trades_with_input(self, from_seq: Optional[int] = None, to_seq: Optional[int] = None
                          ) -> Iterator[tuple[int, Trade, Optional[str], Optional[int]]]:
        """``(seq, trade, source, source_pos)`` for every trade logged between
        the two sequence numbers (inclusive), with the input position of the
        command that caused it (``None``s for a command without one). A trade
        whose command lies before ``from_seq`` has it looked up.
        For the Kafka ``trades`` records (``engine.io.messages.trade_message``)."""
        cmd_seq, source = 0, (None, None)
        for seq, obj in self.events(from_seq, to_seq):
            if isinstance(obj, Trade):
                if obj.cmd_seq != cmd_seq:   # the range started after its command
                    cmd = next((c for _, c in self.events(obj.cmd_seq, obj.cmd_seq)), None)
                    cmd_seq = obj.cmd_seq
                    source = (cmd[-2], cmd[-1]) if cmd is not None and cmd[0] < 64 else (None, None)
                yield seq, obj, source[0], source[1]
            elif obj[0] < 64:            # a command: trades follow right after it
                cmd_seq, source = seq, (obj[-2], obj[-1])

    def balance_changes(self, from_cmd_seq: int = 1, to_seq: Optional[int] = None
                        ) -> Iterator[tuple[int, int, Any]]:
        """``(cmd_seq, ts_ns, change)`` for every ``BalanceChanged`` the
        commands from ``from_cmd_seq`` to ``to_seq`` cause, in ``ledger_seq``
        order; ``ts_ns`` is the command's. The ledger is not logged: this
        replays the commands from the state right before ``from_cmd_seq``.
        For the Kafka ``ledger`` records (``engine.io.messages.ledger_message``).

        Raises:
            ValueError: ``from_cmd_seq`` beyond the WAL's last event.
        """
        replay = self.matcher_at(max(from_cmd_seq - 1, 0))
        balance = Kind.BALANCE_CHANGED.value
        for seq, obj in self.events(replay.last_seq + 1, to_seq):
            if obj[0] >= 64:
                continue                 # logged events: replay derives them again
            for ev in replay.apply(seq, obj):
                if ev[0] == balance:
                    yield seq, obj[1], ev

    # ------------------------------------------------------ pandas DataFrames
    def book(self, seq: int, symbol: str, depth: Optional[int] = None, level: str = "L2") -> Any:
        """The book right after ``seq`` as a DataFrame; see :func:`recovery.history.book`."""
        from . import history
        return history.book(self, seq, symbol, depth, level)

    def book_at_time(self, ts: Any, symbol: str, depth: Optional[int] = None, level: str = "L2") -> Any:
        """:meth:`book` after the last event at or before ``ts``; see :func:`recovery.history.book_at_time`."""
        from . import history
        return history.book_at_time(self, ts, symbol, depth, level)

    def balances(self, seq: int, account: Optional[int] = None) -> Any:
        """DataFrame of the balances after ``seq``: account, asset, scale,
        available, held, total (smallest units) and, where the scale is
        known, ``available_dec``/``held_dec``/``total_dec`` as decimals."""
        from . import history
        return history.balances(self, seq, account)

    def ledger(self, from_seq: int, to_seq: int, account: Optional[int] = None) -> Any:
        """DataFrame of every balance change caused by the commands ``from_seq``
        ..``to_seq``: ledger_seq, cmd_seq, ts, account, asset, reason,
        available_delta, held_delta, available, held, ref."""
        from . import history
        return history.ledger(self, from_seq, to_seq, account)

    def bbo(self, from_seq: int, to_seq: int, symbol: str, every: Optional[str] = None) -> Any:
        """Top of book after every change; see :func:`recovery.history.bbo`."""
        from . import history
        return history.bbo(self, from_seq, to_seq, symbol, every)

    def trades(self, from_seq: Optional[int] = None, to_seq: Optional[int] = None, symbol: Optional[str] = None) -> Any:
        """Trades as a DataFrame; see :func:`recovery.history.trades` (tuples: :meth:`trade_events`)."""
        from . import history
        return history.trades(self, from_seq, to_seq, symbol)

    def order(self, order_id: int, symbol: str) -> Any:
        """One order's life; see :func:`recovery.history.order`."""
        from . import history
        return history.order(self, order_id, symbol)

    def diff(self, seq_a: int, seq_b: int, symbol: str) -> Any:
        """What changed in a book between two seqs; see :func:`recovery.history.diff`."""
        from . import history
        return history.diff(self, seq_a, seq_b, symbol)

    def depth_heatmap(self, from_seq: int, to_seq: int, symbol: str, time_bin: str = "1s",
                      price_bin: Optional[int] = None) -> Any:
        """Resting quantity per time and price bin; see :func:`recovery.history.depth_heatmap`."""
        from . import history
        return history.depth_heatmap(self, from_seq, to_seq, symbol, time_bin, price_bin)

    def what_if(self, at_seq: int, add: Iterable[Any] = (), cancel: Iterable[Any] = (),
                until_seq: Optional[int] = None) -> Any:
        """Counterfactual replay; see :func:`recovery.history.what_if`."""
        from . import history
        return history.what_if(self, at_seq, add, cancel, until_seq)


def to_ns(ts: Any) -> int:
    """Nanoseconds since the epoch (UTC) of an int, ``datetime``, ISO string or
    pandas Timestamp (naive ones are taken as UTC)."""
    if isinstance(ts, int):
        return ts
    value = getattr(ts, "value", None)          # pandas Timestamp
    if isinstance(value, int) and hasattr(ts, "tz_localize"):
        return value if ts.tzinfo is not None else ts.tz_localize("UTC").value
    import datetime as _dt
    if isinstance(ts, str):
        try:
            import pandas
        except ImportError:
            ts = _dt.datetime.fromisoformat(ts.strip().replace("Z", "+00:00"))
        else:
            return to_ns(pandas.Timestamp(ts))
    if isinstance(ts, _dt.datetime):
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=_dt.timezone.utc)
        delta = ts - _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
        return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000
    raise TypeError(f"cannot read a time from {ts!r} (int ns, datetime, ISO string or pandas Timestamp)")


def open_data_dir(data_dir: str, scales: Optional[Mapping[str, tuple[int, int]]] = None, **options: Any) -> History:
    """Open ``data_dir`` for time travel (read-only).

    Args:
        scales: ``symbol -> (price_scale, qty_scale)``, e.g. ``{"GOOG": (10_000, 1)}``.
        options: ``trade_history``, ``keyframe_every``, ``max_replay`` (:class:`History`).
    """
    return History(data_dir, scales=scales, **options)
