"""``lobster-check``: rebuild a LOBSTER day in the engine and compare it with
the reference orderbook file, row by row.

Runs :class:`~engine.io.lobster.LobsterSource` into an in-memory
:class:`~engine.core.Matcher` (no WAL, no service) and, after every message
row, compares the engine's top ``L`` levels per side, as ``(price, qty)``,
with the orderbook file's row. In match mode it also checks each synthesised
taker's fills against the orders LOBSTER says were executed.

Source: ``../shared/data/README.md`` (the rebuild rule and its expected
result: every row of GOOG_10 matches).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

from engine.core import Matcher, OrderBook
from engine.core.types import Kind

from .lobster import (DUMMY_ASK_PRICE, DUMMY_BID_PRICE, TAKER_ID_BASE, LobsterSource, Message, open_rows,
                      parse_message, parse_orderbook_row, synthetic_kind)

__all__ = ["lobster_check"]

_PLACE = Kind.PLACE.value
_TRADE = Kind.TRADE.value
_REJECTED = Kind.REJECTED.value

Ladders = tuple[list[tuple[int, int]], list[tuple[int, int]]]


def _top(book: Optional[OrderBook], levels: int) -> Ladders:
    """The engine's top ``levels`` ``(price, qty)`` per side: ``(bids, asks)``, best first."""
    if book is None:
        return [], []
    bid_levels, ask_levels = book.bid_levels, book.ask_levels
    bids = [(p, bid_levels[p].qty) for p in reversed(book.bid_prices[-levels:])] if levels else []
    asks = [(p, ask_levels[p].qty) for p in book.ask_prices[:levels]]
    return bids, asks


def _columns(ladders: Ladders, levels: int) -> tuple[list[int], list[int], list[int], list[int]]:
    """``(ask prices, ask sizes, bid prices, bid sizes)`` of the top
    ``levels`` as the orderbook file lays them out, empty places as its
    dummies (Source: LOBSTER_SampleFiles_ReadMe.txt, unoccupied levels)."""
    bids, asks = ladders
    ask_pad, bid_pad = levels - len(asks), levels - len(bids)
    return ([p for p, _ in asks] + [DUMMY_ASK_PRICE] * ask_pad, [q for _, q in asks] + [0] * ask_pad,
            [p for p, _ in bids] + [DUMMY_BID_PRICE] * bid_pad, [q for _, q in bids] + [0] * bid_pad)


def _diff(engine: Ladders, reference: Ladders) -> str:
    """Where two ``(bids, asks)`` ladders first differ, in one line."""
    for name, mine, theirs in (("bid", engine[0], reference[0]), ("ask", engine[1], reference[1])):
        for k in range(max(len(mine), len(theirs))):
            a = mine[k] if k < len(mine) else None
            b = theirs[k] if k < len(theirs) else None
            if a != b:
                return f"{name} level {k + 1}: engine {a} vs file {b}"
    return "no difference"


def _best(ladders: Ladders) -> tuple[Optional[int], Optional[int]]:
    bids, asks = ladders
    return (bids[0][0] if bids else None), (asks[0][0] if asks else None)


def lobster_check(messages_path: Union[str, Path], orderbook_path: Union[str, Path], *,
                  mode: str = "reconstruct", symbol: Optional[str] = None) -> dict[str, Any]:
    """Rebuild a LOBSTER day in a fresh in-memory matcher and compare it with
    the orderbook file after every message row.

    Commands are applied with consecutive sequence numbers
    (``matcher.last_seq + 1``). Commands come in row order, so the state
    seen before the first command of a later row is the state after every
    earlier row. In match mode a sweep's rows are executed by one taker that
    carries the sweep's last row: the engine has no state between them, so
    the rows before the last of a sweep are counted in ``rows_in_sweeps``
    and not compared.

    Args:
        messages_path: the ``..._message_L.csv`` file.
        orderbook_path: the matching ``..._orderbook_L.csv`` file (the
            reference; the source also seeds and re-syncs from it).
        mode: ``"reconstruct"`` or ``"match"`` (see
            :class:`~engine.io.lobster.LobsterSource`).
        symbol: book name; default: the ticker in the file name.

    Returns:
        A dict:

        - ``symbol``, ``mode``, ``levels`` (L), ``rows`` (message rows);
        - ``rows_compared``: rows compared (a well-formed orderbook row, not
          inside a sweep); ``mismatched_rows``: compared rows whose top L
          ``(price, qty)`` differ on either side; ``first_mismatch``:
          ``{"row": k, "diff": "ask level 3: engine (p, q) vs file (p, q)"}``
          or ``None``; ``best_bid_ask_agreeing_rows``: compared rows whose
          best bid and best ask *prices* agree (an empty side agrees with a
          dummy level);
        - ``commands``, ``bad_rows`` (``BadInput``), ``rejected`` (commands
          the matcher refused, ``BadInput`` included), ``trades``;
        - ``seeded_orders``; ``resynced_levels``: levels re-sync changed
          (``resync_orders`` synthetic orders placed plus
          ``resync_reductions`` levels reduced);
        - match mode only: ``rows_in_sweeps``; ``takers`` (IOC orders);
          ``repairs`` (repair commands after takers); ``fills_compared``:
          type-4 rows, in sweeps, on an order id that a type-1 row of the
          file placed before the sweep; ``fills_agreeing``: those where the
          taker's trades with that maker id sum to the size LOBSTER executed
          on it in the sweep.

    Raises:
        LobsterFileError: a file cannot be read.
        ValueError: unknown ``mode``, or no symbol.

    Complexity: O(rows * L) plus the matching; the GOOG day (147,916 rows,
    L = 10) takes a few seconds.
    """
    source = LobsterSource(messages_path, orderbook_path, symbol=symbol, mode=mode)
    levels = source.levels or 0
    total = source.total or 0
    match_mode = mode == "match"
    matcher = Matcher()

    # The message rows again, as the reference for the fill comparison.
    placed_row: dict[int, int] = {}
    executions: list[Optional[tuple[int, int, int]]] = []  # row -> (type, order id, size)
    if match_mode:
        with open_rows(Path(messages_path)) as f:
            for row, line in enumerate(f):
                msg = parse_message(line)
                if isinstance(msg, Message):
                    executions.append((msg.type, msg.order_id, msg.size))
                    if msg.type == 1:
                        placed_row.setdefault(msg.order_id, row)
                else:
                    executions.append(None)

    counts = dict.fromkeys(("rows_compared", "mismatched_rows", "best_bid_ask_agreeing_rows", "rows_in_sweeps",
                            "commands", "rejected", "trades", "takers", "fills_compared",
                            "fills_agreeing"), 0)
    first_mismatch: Optional[dict[str, Any]] = None
    after_diff: set[int] = set()
    compared = -1
    ob_file = open_rows(Path(orderbook_path))

    def compare_through(last_row: int, in_sweep: bool = False) -> None:
        nonlocal compared, first_mismatch
        book = matcher.books.get(source.symbol)
        engine = _top(book, levels)
        columns = _columns(engine, levels)
        while compared < last_row:
            compared += 1
            line = ob_file.readline()
            if in_sweep:
                counts["rows_in_sweeps"] += 1
                continue
            # Fast: the row's integers, column by column, against the engine's
            # top levels laid out as the file does (dummies included). Equal
            # means a well-formed row that agrees; anything else is parsed.
            try:
                vals = list(map(int, line.split(",")))
            except ValueError:
                vals = None
            if vals is not None and len(vals) == 4 * levels and vals[0::4] == columns[0] \
                    and vals[1::4] == columns[1] and vals[2::4] == columns[2] and vals[3::4] == columns[3]:
                counts["rows_compared"] += 1
                counts["best_bid_ask_agreeing_rows"] += 1
                continue
            reference = parse_orderbook_row(line, levels) if line else None
            if reference is None:
                continue
            counts["rows_compared"] += 1
            if engine != reference:
                counts["mismatched_rows"] += 1
                after_diff.add(compared)
                if first_mismatch is None:
                    first_mismatch = {"row": compared, "diff": _diff(engine, reference)}
            if _best(engine) == _best(reference):
                counts["best_bid_ask_agreeing_rows"] += 1

    try:
        for cmd in source.commands(matcher, None):
            pos = cmd.source_pos
            taker = cmd[0] == _PLACE and synthetic_kind(cmd.order_id) == "taker"
            if pos is not None and pos > compared + 1:
                if taker:
                    first_row = cmd.order_id - TAKER_ID_BASE
                    compare_through(first_row - 1)
                    compare_through(pos - 1, in_sweep=True)
                else:
                    compare_through(pos - 1)
            events = matcher.apply(matcher.last_seq + 1, cmd)
            counts["commands"] += 1
            if events and events[-1][0] == _REJECTED:
                counts["rejected"] += 1
            trades = [e for e in events if e[0] == _TRADE]
            counts["trades"] += len(trades)
            if taker:
                counts["takers"] += 1
                _compare_fills(cmd.order_id - TAKER_ID_BASE, pos, trades, executions, placed_row, counts)
        compare_through(total - 1)
    finally:
        source.close()
        ob_file.close()

    stats = source.stats
    # A row whose book needed a correction inside the window the previous
    # row covered is one the messages did not explain: a mismatch, even
    # though the correction then made the row agree.
    corrected = dict(source.window_correction_rows)
    counts["mismatched_rows"] += sum(1 for row in corrected if row not in after_diff)
    if corrected:
        row = min(corrected)
        if first_mismatch is None or row < first_mismatch["row"]:
            first_mismatch = {"row": row, "diff": f"before the file's correction: {corrected[row]}"}
    result: dict[str, Any] = {"symbol": source.symbol, "mode": mode, "levels": levels, "rows": total}
    for key in ("rows_compared", "mismatched_rows", "best_bid_ask_agreeing_rows"):
        result[key] = counts[key]
    result["first_mismatch"] = first_mismatch
    for key in ("commands", "rejected", "trades"):
        result[key] = counts[key]
    for key in ("bad_rows", "bad_orderbook_rows", "seeded_orders"):
        result[key] = stats[key]
    result["resynced_levels"] = stats["resync_orders"] + stats["resync_reductions"]
    for key in ("resync_orders", "resync_reductions", "corrected_rows", "window_corrections",
                "stale_levels_removed", "hidden_executions", "cross_trades", "halts", "quoting_resumed",
                "trading_resumed"):
        result[key] = stats[key]
    if match_mode:
        result["rows_in_sweeps"] = counts["rows_in_sweeps"]
        result["takers"] = counts["takers"]
        result["repairs"] = stats["repairs"]
        result["fills_compared"] = counts["fills_compared"]
        result["fills_agreeing"] = counts["fills_agreeing"]
    return result


def _compare_fills(first_row: int, last_row: int, trades: list, executions: list,
                   placed_row: dict[int, int], counts: dict[str, int]) -> None:
    """Count a sweep's type-4 rows on ids placed before it, and those whose
    taker trades with that maker id sum to what LOBSTER executed on it."""
    executed: dict[int, int] = {}
    rows_per_id: dict[int, int] = {}
    for row in range(first_row, last_row + 1):
        ex = executions[row]
        if ex is None or ex[0] != 4:
            continue
        order_id = ex[1]
        if placed_row.get(order_id, last_row + 1) < first_row:
            executed[order_id] = executed.get(order_id, 0) + ex[2]
            rows_per_id[order_id] = rows_per_id.get(order_id, 0) + 1
    filled: dict[int, int] = {}
    for t in trades:
        filled[t.maker_order_id] = filled.get(t.maker_order_id, 0) + t.qty
    for order_id, qty in executed.items():
        counts["fills_compared"] += rows_per_id[order_id]
        if filled.get(order_id) == qty:
            counts["fills_agreeing"] += rows_per_id[order_id]
