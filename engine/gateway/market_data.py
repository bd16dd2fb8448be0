"""Market data over WebSocket: trades and top-of-book changes, durable only.

:class:`MarketDataHub` is a sink of an :class:`EngineRuntime`, so it sees each
command's results in sequence order and only once the WAL holds them
(``engine/service/output_gate.py``). It sends, as JSON text messages:

- ``{"type": "trade", "match_id", "symbol", "symbol_seq", "seq", "cmd_seq",
  "ts_ns", "price", "qty", "taker_side": "buy"|"sell", "maker_order_id",
  "taker_order_id", "maker_account", "taker_account"}`` for every trade, as
  the ``trades`` topic does (``engine/io/MESSAGES.md``, without ``input``);
- ``{"type": "top", "symbol", "seq", "bid": [price, qty] | null,
  "ask": [price, qty] | null}`` whenever a symbol's best bid or best ask
  (price, or total lots at that price level) changes, and once per symbol
  when a client subscribes. Changes within one turn of the event loop are
  coalesced into one message; ``seq`` is the sequence number the book shown
  is at.

Tops never run ahead of the disk. The live order book may already include
commands the WAL has not yet made durable, so the hub keeps its own copy of
the books its clients watch, advanced only by released (durable) commands:
an order book copied at sequence number L is shown only once every command
up to L has been released to the hub (so it is durable, and its trades went
out first: messages stay in sequence order). Cost: one more matcher step per command of a watched symbol, and the
memory of those books; nothing while no client is connected.

A slow client never stalls the engine: the sink only appends to each client's
bounded queue; a client whose queue overflows is dropped (closed with code
1008 and a reason).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Optional

from engine.core.matcher import Matcher
from engine.core.order_book import OrderBook
from engine.core.price_level import RestingOrder
from engine.core.types import Kind
from engine.io.messages import trade_message

__all__ = ["MarketDataHub", "MarketDataClient", "trade_dict", "top_of_book"]

log = logging.getLogger("evengine.gateway.market_data")

_TRADE = Kind.TRADE.value
_REJECTED = Kind.REJECTED.value
_ADD_SYMBOL = Kind.ADD_SYMBOL.value
_BOOK_KINDS = frozenset({Kind.ADD_SYMBOL.value, Kind.PLACE.value, Kind.CANCEL.value, Kind.AMEND.value})

CLOSE_TOO_SLOW = 1008
"""WebSocket close code for a client dropped because it did not keep up (policy violation)."""
CLOSE_GOING_AWAY = 1001


def trade_dict(seq: Optional[int], trade: Any) -> dict:
    """A trade (``engine.core.events.Trade``) logged at ``seq`` as a JSON-able
    dict: the ``trades`` topic's fields without ``input``."""
    out = trade_message(seq, trade, None, None)
    del out["input"]
    return out


def top_of_book(book: OrderBook) -> tuple:
    """``(bid, ask)``, each ``[price, qty]`` (the best price level's price and
    total lots) or ``None`` for an empty side."""
    bid = book.top_bid
    ask = book.top_ask
    return ([bid, book.bid_levels[bid].qty] if bid is not None else None,
            [ask, book.ask_levels[ask].qty] if ask is not None else None)


def _copy_book(book: OrderBook) -> OrderBook:
    """An independent copy of ``book``, time priority included."""
    copy = OrderBook(book.symbol, book.tick_size)
    copy.trade_count = book.trade_count
    for order_id, side, price, qty, account in book.export_orders():
        copy.rest(RestingOrder(order_id, side, price, qty, account))
    return copy


class MarketDataClient:
    """One subscriber: its symbols (``None``: all) and its bounded queue of
    JSON messages. :attr:`dropped` holds the reason once the hub dropped it."""

    def __init__(self, symbols: Optional[frozenset], max_queue: int) -> None:
        self.symbols = symbols
        self.max_queue = max_queue
        self.queue: asyncio.Queue = asyncio.Queue(max_queue)
        self.dropped: Optional[str] = None
        self.close_code = CLOSE_TOO_SLOW
        self.gone = asyncio.Event()
        self.sent = 0

    def offer(self, text: str) -> bool:
        """Queue one message; False if the queue is full (the client is too slow)."""
        if self.dropped is not None:
            return True
        try:
            self.queue.put_nowait(text)
        except asyncio.QueueFull:
            return False
        return True

    def drop(self, reason: str, code: int = CLOSE_TOO_SLOW) -> None:
        if self.dropped is None:
            self.dropped = reason
            self.close_code = code
            self.gone.set()

    async def serve(self, websocket: Any, close_timeout: float = 1.0) -> None:
        """Send queued messages to a Starlette ``WebSocket`` (accepted) until
        the peer disconnects or the hub drops this client; then close it,
        waiting at most ``close_timeout`` s (a peer that does not read cannot
        take the close frame: the server closes the connection after)."""
        async def pump() -> None:
            while True:
                text = await self.queue.get()
                await websocket.send_text(text)
                self.sent += 1

        async def listen() -> None:
            while True:
                msg = await websocket.receive()
                if msg["type"] == "websocket.disconnect":
                    return

        tasks = [asyncio.ensure_future(pump()), asyncio.ensure_future(listen()),
                 asyncio.ensure_future(self.gone.wait())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self.dropped is not None:
            try:
                await asyncio.wait_for(websocket.close(code=self.close_code, reason=self.dropped[:120]),
                                       close_timeout)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - gone or not reading: nothing more to do
                pass


class MarketDataHub:
    """Fans durable trades and top-of-book changes out to WebSocket clients.

    Args:
        runtime: the ``EngineRuntime`` (it must run on the loop the clients use).
        max_queue: messages a client may have waiting before it is dropped.

    Use: ``hub = MarketDataHub(runtime)`` (registers the sink);
    ``client = hub.subscribe({"AAPL"})`` (``None``: every symbol);
    ``await client.serve(websocket)``; ``hub.unsubscribe(client)``;
    :meth:`close` at shutdown.

    Attributes:
        clients: the connected clients.
        dropped_clients: how many clients were dropped for being too slow.
        released_seq: the last sequence number released to the hub.
    """

    def __init__(self, runtime: Any, *, max_queue: int = 10_000) -> None:
        self.runtime = runtime
        self.max_queue = max_queue
        self.clients: set[MarketDataClient] = set()
        self.dropped_clients = 0
        # Everything applied so far is released unless the gate still holds some
        # (then the first release sets it).
        self.released_seq = runtime.engine.matcher.last_seq if runtime.engine.gate.held == 0 else 0
        self._by_symbol: dict[str, set[MarketDataClient]] = {}
        self._all: set[MarketDataClient] = set()
        self._shadow = Matcher(trade_history=1)   # books of watched symbols, at durable state only
        self._base: dict[str, int] = {}           # symbol -> seq its shadow book was copied at
        self._last_top: dict[str, tuple] = {}     # symbol -> ((bid, ask), seq) last sent
        self._dirty: set[str] = set()
        self._flush_scheduled = False
        self._closed = False
        runtime.add_sink(self._on_release)

    # ------------------------------------------------------------ subscribers
    def subscribe(self, symbols: Optional[set] = None) -> MarketDataClient:
        """A new client for ``symbols`` (``None``: all, including symbols
        added later). It first gets the current top of each watched symbol
        that has a book."""
        client = MarketDataClient(frozenset(symbols) if symbols is not None else None, self.max_queue)
        if self._closed:
            client.drop("market data is shut down", CLOSE_GOING_AWAY)
            return client
        self.clients.add(client)
        if symbols is None:
            self._all.add(client)
            wanted = list(self.runtime.engine.matcher.books)
        else:
            for s in client.symbols:
                self._by_symbol.setdefault(s, set()).add(client)
            wanted = list(client.symbols)
        released = self._released_point()
        for symbol in wanted:
            if symbol not in self._shadow.books:
                self._watch(symbol)
            elif symbol in self._last_top and self._base[symbol] <= released:
                (bid, ask), seq = self._last_top[symbol]
                client.offer(self._top_text(symbol, bid, ask, seq))
        self._schedule_flush()
        return client

    def unsubscribe(self, client: MarketDataClient) -> None:
        """Forget ``client``; stop watching books nobody watches any more."""
        self.clients.discard(client)
        self._all.discard(client)
        if client.symbols is not None:
            for s in client.symbols:
                subs = self._by_symbol.get(s)
                if subs is not None:
                    subs.discard(client)
                    if not subs:
                        del self._by_symbol[s]
        if not self._all:
            for symbol in [s for s in self._shadow.books if s not in self._by_symbol]:
                self._unwatch(symbol)

    def close(self) -> None:
        """Drop every client (code 1001) and leave the runtime's sinks."""
        if self._closed:
            return
        self._closed = True
        for client in list(self.clients):
            client.drop("server shutting down", CLOSE_GOING_AWAY)
            self.unsubscribe(client)
        try:
            self.runtime.engine.gate.sinks.remove(self._on_release)
        except ValueError:
            pass

    # ---------------------------------------------------------------- books
    def _watch(self, symbol: str) -> None:
        """Copy ``symbol``'s live book (if any); it is shown once durable."""
        book = self.runtime.engine.matcher.books.get(symbol)
        if book is None:
            return   # created when its AddSymbol is released
        self._shadow.books[symbol] = _copy_book(book)
        self._base[symbol] = self.runtime.engine.matcher.last_seq
        self._dirty.add(symbol)

    def _unwatch(self, symbol: str) -> None:
        self._shadow.books.pop(symbol, None)
        self._base.pop(symbol, None)
        self._last_top.pop(symbol, None)
        self._dirty.discard(symbol)

    def _watched(self, symbol: str) -> bool:
        return bool(self._all) or symbol in self._by_symbol

    # ----------------------------------------------------------------- sink
    def _on_release(self, seq: int, cmd: Any, events: list) -> None:
        """Runtime sink: ``cmd`` (at ``seq``) and ``events`` are durable."""
        logged = 0
        for ev in events:
            if ev[0] == _TRADE or ev[0] == _REJECTED:
                logged += 1
        self.released_seq = seq + logged
        if not self.clients:
            return
        try:
            self._publish(seq, cmd, events)
            self._schedule_flush()
        except Exception as exc:  # noqa: BLE001 - never let market data fail the engine
            log.exception("market data failed at seq %d; dropping every client", seq)
            for client in list(self.clients):
                client.drop(f"market data error: {type(exc).__name__}", 1011)
                self.unsubscribe(client)
            self._shadow = Matcher(trade_history=1)
            self._base.clear()
            self._last_top.clear()
            self._dirty.clear()

    def _publish(self, seq: int, cmd: Any, events: list) -> None:
        k = 0
        for ev in events:
            if ev[0] == _TRADE:
                k += 1
                if self._watched(ev.symbol):
                    text = json.dumps({"type": "trade", **trade_dict(seq + k, ev)}, separators=(",", ":"))
                    self._send(ev.symbol, text)
        if cmd[0] not in _BOOK_KINDS or type(cmd[2]) is not str:
            return
        symbol = cmd[2]
        if events and events[0][0] == _REJECTED or not self._watched(symbol):
            return
        sh = self._shadow
        book = sh.books.get(symbol)
        if book is not None:
            if seq <= self._base.get(symbol, 0):
                return   # already in the copy
        elif cmd[0] != _ADD_SYMBOL:
            return
        sh.last_seq = seq - 1
        sh.apply(seq, cmd)
        if symbol not in self._base:
            self._base[symbol] = 0
        self._dirty.add(symbol)
        self._schedule_flush()

    def _send(self, symbol: str, text: str) -> None:
        slow = []
        for client in self._all:
            if not client.offer(text):
                slow.append(client)
        for client in self._by_symbol.get(symbol, ()):
            if not client.offer(text):
                slow.append(client)
        for client in slow:
            self.dropped_clients += 1
            log.warning("market data client dropped: more than %d messages waiting", client.max_queue)
            client.drop(f"too slow: more than {client.max_queue} messages waiting")
            self.unsubscribe(client)

    def _schedule_flush(self) -> None:
        if self._flush_scheduled or not self._dirty:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:   # released outside the loop (the engine closing): nobody listens
            return
        self._flush_scheduled = True
        loop.call_soon(self._flush_tops)

    def _flush_tops(self) -> None:
        """Send the top of every changed book whose copy is durable."""
        self._flush_scheduled = False
        if not self._dirty:
            return
        released = self._released_point()
        dirty, self._dirty = self._dirty, set()
        for symbol in dirty:
            book = self._shadow.books.get(symbol)
            if book is None:
                continue
            base = self._base.get(symbol, 0)
            if base > released:
                self._dirty.add(symbol)   # shown once its copy is released (that release calls the sink)
                continue
            top = top_of_book(book)
            last = self._last_top.get(symbol)
            if last is None or last[0] != top:
                seq = max(self.released_seq, base)
                self._last_top[symbol] = (top, seq)
                self._send(symbol, self._top_text(symbol, *top, seq))

    def _released_point(self) -> int:
        """The last sequence number whose command the hub has been handed (so
        its trades are queued already): a book copied there may be shown. Not
        the WAL's ``durable_seq``: the syncer publishes that before the loop
        releases the commands it covers, and a top shown at it would go out
        ahead of those commands' trades. With nothing held by the gate, every
        command applied is released."""
        if self.runtime.engine.gate.held == 0:
            return self.runtime.engine.matcher.last_seq
        return self.released_seq

    @staticmethod
    def _top_text(symbol: str, bid: Any, ask: Any, seq: int) -> str:
        return json.dumps({"type": "top", "symbol": symbol, "seq": seq, "bid": bid, "ask": ask},
                          separators=(",", ":"))
