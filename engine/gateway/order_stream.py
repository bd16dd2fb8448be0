"""Streaming order entry over one WebSocket: many orders in flight, each
answered once durable, answers in the order of the requests.

Protocol (``WS /ws/orders``; JSON text messages):

- A request message is one order object or a JSON array of 1..1000 of them.
  An object is ``{"op": "place" | "cancel" | "amend", "ref": <any JSON
  value, echoed>, ...}`` with the fields of the matching HTTP route:
  ``place`` those of ``POST /orders``; ``cancel`` ``symbol`` and
  ``order_id``; ``amend`` ``symbol``, ``order_id``, ``price`` and ``qty``
  (``PATCH /orders/{symbol}/{order_id}``). Same rules, same units (price
  units, lots).
- Every request gets one answer message of the same shape: an object for an
  object, an array (same length, same order) for an array. An answer is
  ``{"ref": <the request's>, "status": <the HTTP status the route gives>,
  "body": <the route's body>}``: 200 (embedded; Kafka: 202) with the fills,
  409/422 for a matcher reject (logged in the WAL), 422 for a message that
  does not validate (nothing reaches the engine), 503 when the backend
  cannot take it.
- Answers go out in the order the requests came in; an answer for an order
  is sent only after its event (and those of every order before it) is on
  disk, as ``POST /orders`` answers. Orders are applied in the order they
  arrive, also across messages.
- Flow control: at most ``max_in_flight`` orders wait for their answer; the
  gateway stops reading the socket while that many do (TCP pushes back).
- A message that is not JSON, or neither an object nor an array of 1..1000
  objects, is answered ``{"ref": null, "status": 422, "body": {"detail": ...}}``;
  the connection stays open. With a token set, the handshake needs
  ``Authorization: Bearer <token>`` (else closed with 1008 before accepting).

A client that closes the connection with orders in flight loses only their
answers: the orders were applied (``GET /orders`` is not a thing; the trades
and the book show them).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

import orjson
from starlette.websockets import WebSocket, WebSocketDisconnect

from .entry import EntryAnswer, EntryUnavailable, OrderEntry

__all__ = ["OrderStream", "MAX_ORDERS_PER_MESSAGE", "BadMessage"]

log = logging.getLogger("evengine.gateway.order_stream")

MAX_ORDERS_PER_MESSAGE = 1000


class BadMessage(Exception):
    """An order object that does not validate; ``detail`` is the 422 body's
    ``detail`` (a string or the validator's list of errors)."""

    def __init__(self, detail: Any) -> None:
        super().__init__(str(detail))
        self.detail = detail


class OrderStream:
    """One client's order stream.

    Args:
        websocket: the accepted connection.
        entry: where orders go.
        parse: an order object (a dict from the client) -> the ``orders``
            message dict :meth:`OrderEntry.submit_many` takes; raises
            :class:`BadMessage` (answered 422, nothing sent).
        max_in_flight: orders taken but not yet answered before the stream
            stops reading.
    """

    def __init__(self, websocket: WebSocket, entry: OrderEntry, parse: Callable[[dict], dict], *,
                 max_in_flight: int = 10_000) -> None:
        self.ws = websocket
        self.entry = entry
        self.parse = parse
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.orders = 0
        self._room = asyncio.Event()
        self._room.set()
        self._queue: asyncio.Queue = asyncio.Queue()

    async def serve(self) -> None:
        """Read requests until the client closes; answer them in order."""
        sender = asyncio.ensure_future(self._send_loop())
        try:
            while True:
                if self.in_flight >= self.max_in_flight:
                    self._room.clear()
                    await self._room.wait()
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                data = message.get("text")
                self._take(data if data is not None else message.get("bytes") or b"")
                if sender.done():
                    break
        except WebSocketDisconnect:
            pass
        finally:
            await self._finish(sender)

    def _take(self, data: Any) -> None:
        try:
            msg = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            self._refuse(f"not JSON: {exc}")
            return
        single = isinstance(msg, dict)
        items = [msg] if single else msg
        if not isinstance(items, list) or not 1 <= len(items) <= MAX_ORDERS_PER_MESSAGE \
                or not all(isinstance(i, dict) for i in items):
            self._refuse(f"a message is an order object or an array of 1..{MAX_ORDERS_PER_MESSAGE} of them")
            return
        refs = []
        answers: list = []
        valid = []
        for item in items:
            refs.append(item.pop("ref", None))
            try:
                valid.append(self.parse(item))
                answers.append(None)        # from the entry, in order
            except BadMessage as exc:
                answers.append(EntryAnswer(422, {"detail": exc.detail}))
        pending = self.entry.submit_many(valid) if valid else None
        self.in_flight += len(items)
        self.orders += len(items)
        self._queue.put_nowait((single, refs, answers, pending, len(items)))

    def _refuse(self, detail: str) -> None:
        """Answer a message that holds no orders: 422, ``ref`` null, in its turn."""
        self._queue.put_nowait((True, [None], [EntryAnswer(422, {"detail": detail})], None, 0))

    async def _send_loop(self) -> None:
        dumps = orjson.dumps
        while True:
            single, refs, answers, pending, counted = await self._queue.get()
            if pending is not None:
                got = iter(await pending)
                answers = [a if a is not None else next(got) for a in answers]
            out = [_answer(ref, a) for ref, a in zip(refs, answers)]
            await self.ws.send_text(dumps(out[0] if single else out).decode())
            self.in_flight -= counted
            if not self._room.is_set() and self.in_flight < self.max_in_flight:
                self._room.set()

    async def _finish(self, sender: "asyncio.Future") -> None:
        if not sender.done():
            sender.cancel()
        # The orders taken were applied; their answers have no one to go to.
        while not self._queue.empty():
            pending = self._queue.get_nowait()[3]
            if pending is not None:
                asyncio.ensure_future(pending).add_done_callback(_drop)
        try:
            await sender
        except (asyncio.CancelledError, WebSocketDisconnect):
            pass
        except Exception as exc:  # noqa: BLE001 - the client went away mid-send
            log.debug("order stream closed while answering: %s", exc)


def _answer(ref: Any, answer: Any) -> dict:
    if isinstance(answer, EntryUnavailable):
        return {"ref": ref, "status": 503, "body": {"detail": f"order entry unavailable: {answer}"}}
    return {"ref": ref, "status": answer.status_code, "body": answer.body}


def _drop(fut: "asyncio.Future") -> None:
    if not fut.cancelled():
        fut.exception()
