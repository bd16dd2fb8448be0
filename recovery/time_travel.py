"""Time travel: the books and trades of a data directory at any sequence number.

A notebook (or ``evengine inspect``) opens a data directory, read-only, and
asks for the state right after event ``seq``: the newest valid snapshot at or
before ``seq``, then the WAL events after it up to ``seq``.

    >>> from recovery import open_data_dir
    >>> h = open_data_dir("data")
    >>> h.book_at(120_000, "GOOG", depth=5)      # doctest: +SKIP
    {'seq': 120000, 'symbol': 'GOOG', 'bids': [[5799000, 300], ...], 'asks': [...]}

Source: eventsourcing's "snapshot + subsequent events" (STYLE.md, Absorb 4).
"""

from __future__ import annotations

from typing import Any, Iterator, Optional

from engine.core import Matcher, Trade, decode_payload
from eventstore import WalReader
from snapshot import newest_valid

from .recover import snapshot_dir, wal_dir
from .replay import Replayer

__all__ = ["History", "open_data_dir"]


class History:
    """Read-only view of a data directory's history.

    Args:
        data_dir: an engine's data directory (it may be running: only what is
            on disk is read; an incomplete write at the tail is ignored).

    Note on "right after event N": a command and the trades it caused are one
    atomic step of the matcher, so the state after any event of that step is
    the state after the whole step.
    """

    def __init__(self, data_dir: str, trade_history: int = 10_000) -> None:
        self.data_dir = data_dir
        self.reader = WalReader(wal_dir(data_dir))
        self.trade_history = trade_history

    @property
    def last_seq(self) -> int:
        """Last valid sequence number in the WAL (0 if empty)."""
        return self.reader.scan().last_seq

    def matcher_at(self, seq: int) -> Matcher:
        """The full engine state right after event ``seq``.

        Raises:
            ValueError: ``seq`` is below 0 or beyond the WAL's last event.
            CorruptRecordError, ReplayMismatchError: the history is damaged.
        """
        if seq < 0:
            raise ValueError(f"seq must be >= 0, got {seq}")
        found = newest_valid(snapshot_dir(self.data_dir), at_or_before=seq)
        matcher = Matcher.from_state(found[1], self.trade_history) if found else Matcher(self.trade_history)
        replayer = Replayer(matcher)
        for s, payload in self.reader.read(matcher.last_seq + 1, seq):
            replayer.feed(s, payload)
        if matcher.last_seq < seq:
            raise ValueError(f"seq {seq} is beyond the end of the WAL (last seq {matcher.last_seq})")
        return matcher

    def book_at(self, seq: int, symbol: str, depth: Optional[int] = None) -> dict:
        """``{"seq", "symbol", "bids": [[price, qty], ...], "asks": [...]}``, best
        first, aggregated per price level (price units, lots).

        Raises:
            KeyError: ``symbol`` had no book at ``seq``.
        """
        matcher = self.matcher_at(seq)
        book = matcher.books.get(symbol)
        if book is None:
            raise KeyError(f"no order book for {symbol!r} at seq {seq} (symbols: {sorted(matcher.books)})")
        return {"seq": seq, "symbol": symbol, "bids": book.depth(1, depth), "asks": book.depth(2, depth)}

    def events(self, from_seq: int = 1, to_seq: Optional[int] = None) -> Iterator[tuple[int, Any]]:
        """``(seq, command or event)`` from the WAL, both bounds inclusive."""
        for seq, payload in self.reader.read(from_seq, to_seq):
            yield seq, decode_payload(payload)

    def trades(self, from_seq: int = 1, to_seq: Optional[int] = None,
               symbol: Optional[str] = None) -> list[Trade]:
        """Trades logged between the two sequence numbers (inclusive)."""
        return [obj for _, obj in self.events(from_seq, to_seq)
                if isinstance(obj, Trade) and (symbol is None or obj.symbol == symbol)]

    def trades_with_input(self, from_seq: int = 1, to_seq: Optional[int] = None
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


def open_data_dir(data_dir: str) -> History:
    """Open ``data_dir`` for time travel (read-only)."""
    return History(data_dir)
