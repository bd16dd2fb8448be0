"""Order entry backends of the HTTP gateway: one interface, two ways in.

Both take an order in the ``orders`` message format of ``engine/io/MESSAGES.md``
(a dict with ``type`` = ``place`` / ``cancel`` / ``amend`` / ``add_symbol`` /
``add_asset`` / ``deposit`` / ``withdraw`` and the fields of that table, value
names ``"buy"``/``"sell"``, ``"limit"``/``"market"``, ``"gtc"``/``"ioc"``/
``"fok"``) and give back an :class:`EntryAnswer` (an HTTP status and a JSON
body):

- :class:`EmbeddedEntry` matches the order in this process: it builds the
  command and ``await``s :meth:`EngineRuntime.execute`, so it answers only
  after the WAL fsync that made the command, its trades or its reject durable.
- :class:`KafkaEntry` publishes the order to the ``orders`` topic for an engine
  that consumes it, and answers once the broker acknowledged the record
  (``acks="all"``, idempotent producer): 202, ``"queued"``.

Units as everywhere in evengine: prices in price units (integer multiples of
the book's ``tick_size``), quantities in lots, times in ns since the epoch;
money amounts (``amount``, ``max_quote``, balances) integers in the asset's
smallest unit, ``10**-scale``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from typing import Any, Awaitable, NamedTuple, Optional

from engine.core.commands import Command
from engine.core.types import Kind, RejectReason
from engine.io import messages
from engine.io.messages import encode_order

__all__ = ["OrderEntry", "EmbeddedEntry", "KafkaEntry", "EntryAnswer", "EntryUnavailable", "OrderIds",
           "command_from_order", "answer_from_result", "answer_from_asset", "answer_from_transfer",
           "TransferBefore", "reject_status"]

log = logging.getLogger("evengine.gateway")

_TRADE = Kind.TRADE.value
_REJECTED = Kind.REJECTED.value
_RESTED = Kind.RESTED.value
_CANCELLED = Kind.CANCELLED.value
_AMENDED = Kind.AMENDED.value
_SYMBOL_ADDED = Kind.SYMBOL_ADDED.value
_TRANSFER_DONE = Kind.TRANSFER_DONE.value
_TRANSFER_TYPES = frozenset({"deposit", "withdraw"})


class EntryAnswer(NamedTuple):
    """What the gateway answers: ``status_code`` (HTTP) and ``body`` (JSON-able dict)."""

    status_code: int
    body: dict


class EntryUnavailable(Exception):
    """The backend cannot take orders now (the engine stopped or failed, the
    Kafka broker is unreachable or did not acknowledge in time). HTTP 503."""


class OrderIds:
    """Order ids the gateway assigns when the client sends none.

    Each id is ``max(time_ns() // 1000, last + 1)``: strictly increasing, and
    above any id a previous gateway process assigned as long as it assigned
    fewer than one per microsecond on average. Ids a client picks itself are
    not coordinated with these: a collision with a live order is rejected by
    the engine (``DUPLICATE_ORDER_ID``).
    """

    def __init__(self) -> None:
        self.last = 0

    def next(self) -> int:
        self.last = max(time.time_ns() // 1000, self.last + 1)
        return self.last


def command_from_order(order: dict, ts_ns: int) -> Command:
    """The command for one order dict (``orders`` message format, already
    validated: names known, numbers integers), stamped ``ts_ns``, with
    ``source=None, source_pos=None`` (an HTTP order has no input position).
    The same mapping as the Kafka path (``engine.io.messages.command_from_order``).

    Raises:
        ValueError: not an order (unknown ``type``, missing or unknown fields).
    """
    cmd = messages.command_from_order(order, ts_ns=ts_ns)
    if cmd[0] == Kind.BAD_INPUT.value:
        raise ValueError(cmd.error)
    return cmd


def reject_status(code: int) -> int:
    """HTTP status of a matcher reject: 422 for a malformed field (1xx codes),
    409 for a conflict with the engine's state, the order's own instructions
    or pre-trade risk (2xx, 3xx, 4xx: unknown symbol or asset, duplicate
    order id, unknown order, transfer id used for another transfer,
    post-only would take, insufficient funds)."""
    return 422 if 100 <= code < 200 else 409


def _reject_dict(ev: Any) -> dict:
    """``{"code", "reason", "detail"}`` of an ``OrderRejected``."""
    try:
        name = RejectReason(ev.reason).name
    except ValueError:
        name = str(ev.reason)
    return {"code": ev.reason, "reason": name, "detail": ev.detail}


def answer_from_result(order: dict, seq: int, durable_seq: int, events: list) -> EntryAnswer:
    """The HTTP answer for a place, cancel, amend or add-symbol that is durable.

    Body::

        {"seq": int,               # the command's sequence number in the WAL
         "durable_seq": int,       # the WAL watermark when it was answered (>= every seq here)
         "symbol": str, "order_id": int | None,
         "status": "resting" | "filled" | "partially_filled" | "cancelled" | "amended"
                   | "added" | "rejected",
         "fills": [{"seq", "match_id", "price", "qty", "maker_order_id", "symbol_seq"}, ...],
         "filled_qty": int,        # lots filled by this command (the order is the taker)
         "leaves_qty": int,        # lots of the order left resting on the book
         "cancelled_qty": int,     # lots that left the book unfilled (IOC/FOK/market rest, a cancel)
         "reject": {"code": int, "reason": RejectReason name, "detail": str} | None}

    ``status`` of a place: ``filled`` (all of ``qty``), ``partially_filled``
    (some; the rest rests or, IOC/market, was cancelled), ``resting``
    (nothing filled, all rests), ``cancelled`` (nothing filled, nothing
    rests: IOC/FOK/market without liquidity). A cancel is ``cancelled``, an
    amend ``amended`` (it may also fill if its new price crosses), an
    add-symbol ``added``. Status code 200, or :func:`reject_status` for a reject.
    """
    kind = order["type"]
    fills: list = []
    filled = leaves = cancelled = 0
    rested = False
    reject: Optional[dict] = None
    k = 0
    for ev in events:
        ek = ev[0]
        if ek == _TRADE:
            k += 1
            fills.append({"seq": seq + k, "match_id": ev.match_id, "price": ev.price, "qty": ev.qty,
                          "maker_order_id": ev.maker_order_id, "symbol_seq": ev.symbol_seq})
            filled += ev.qty
        elif ek == _REJECTED:
            reject = _reject_dict(ev)
        elif ek == _RESTED:
            rested = True
            leaves = ev.leaves_qty
        elif ek == _CANCELLED:
            cancelled += ev.cancelled_qty
        elif ek == _AMENDED and ev.priority_kept:
            rested = True
            leaves = ev.leaves_qty
    if reject is not None:
        status = "rejected"
    elif kind == "cancel":
        status = "cancelled"
    elif kind == "amend":
        status = "amended"
    elif kind == "add_symbol":
        status = "added"
    elif filled and filled >= order["qty"]:
        status = "filled"
    elif filled:
        status = "partially_filled"
    elif rested:
        status = "resting"
    else:
        status = "cancelled"
    body = {"seq": seq, "durable_seq": durable_seq, "symbol": order.get("symbol"), "order_id": order.get("order_id"),
            "status": status, "fills": fills, "filled_qty": filled, "leaves_qty": leaves,
            "cancelled_qty": cancelled, "reject": reject}
    if kind == "add_symbol":
        body["tick_size"] = order.get("tick_size", 1)
    return EntryAnswer(200 if reject is None else reject_status(reject["code"]), body)


def answer_from_asset(order: dict, seq: int, durable_seq: int, events: list) -> EntryAnswer:
    """The HTTP answer for an ``add_asset`` that is durable.

    Body::

        {"seq": int, "durable_seq": int,
         "asset": str, "scale": int,   # amounts of the asset are integers in units of 10**-scale
         "status": "added" | "rejected",
         "reject": {"code": int, "reason": RejectReason name, "detail": str} | None}

    Status code 200, or :func:`reject_status` for a reject (``ASSET_EXISTS``: 409).
    """
    reject = next((_reject_dict(ev) for ev in events if ev[0] == _REJECTED), None)
    body = {"seq": seq, "durable_seq": durable_seq, "asset": order.get("asset"), "scale": order.get("scale"),
            "status": "added" if reject is None else "rejected", "reject": reject}
    return EntryAnswer(200 if reject is None else reject_status(reject["code"]), body)


class TransferBefore(NamedTuple):
    """What the matcher knew of a transfer right before it applied it (read
    on the loop with no ``await`` in between, so nothing else came first).

    ``repeat``: ``transfer_id`` was already used for this same body (kind,
    account, asset, amount): the matcher answers with the first outcome.
    ``available``: the account's available balance in the asset; a rejected
    transfer leaves it as it is.
    """

    repeat: bool
    available: int


def answer_from_transfer(order: dict, seq: int, durable_seq: int, events: list,
                         before: TransferBefore) -> EntryAnswer:
    """The HTTP answer for a deposit or withdrawal that is durable.

    Body::

        {"seq": int, "durable_seq": int,
         "type": "deposit" | "withdraw",
         "transfer_id": int, "account": int, "asset": str,
         "amount": int,            # the asset's smallest units (10**-scale)
         "status": "applied" | "rejected",
         "duplicate": bool,        # a repeat of transfer_id with the same body: nothing changed,
                                   # status and reject are the first outcome's
         "available": int,         # the account's available balance in the asset right after
                                   # this command (smallest units)
         "reject": {"code": int, "reason": RejectReason name, "detail": str} | None}

    ``duplicate`` of an applied transfer comes from the matcher's
    ``TransferDone.duplicate``; a repeat of a *rejected* one is answered by
    the matcher with the first reject again (same code, detail prefixed
    ``repeat of transfer``) and no flag, so it is ``before.repeat``. The
    same id with another body is not a duplicate: ``TRANSFER_CONFLICT``.

    Status code 200 for an applied transfer (a duplicate too), else
    :func:`reject_status`: 409 for ``INSUFFICIENT_FUNDS``, ``UNKNOWN_ASSET``,
    ``TRANSFER_CONFLICT``; 422 for a 1xx code. A duplicate gets the status
    of the first outcome.
    """
    reject = None
    duplicate = False
    available = before.available
    for ev in events:
        ek = ev[0]
        if ek == _TRANSFER_DONE:
            duplicate = bool(ev.duplicate)
            available = ev.available
        elif ek == _REJECTED:
            reject = _reject_dict(ev)
            duplicate = before.repeat
    body = {"seq": seq, "durable_seq": durable_seq, "type": order["type"], "transfer_id": order.get("transfer_id"),
            "account": order.get("account"), "asset": order.get("asset"), "amount": order.get("amount"),
            "status": "applied" if reject is None else "rejected", "duplicate": duplicate,
            "available": available, "reject": reject}
    return EntryAnswer(200 if reject is None else reject_status(reject["code"]), body)


class OrderEntry(ABC):
    """Where the gateway sends orders. ``name``: ``"embedded"`` or ``"kafka"``."""

    name = "entry"

    async def start(self) -> None:
        """Connect (if there is anything to connect to).

        Raises:
            EntryUnavailable: the backend is not reachable now.
        """

    async def stop(self) -> None:
        """Release connections; pending sends are finished or failed first."""

    @abstractmethod
    async def submit(self, order: dict) -> EntryAnswer:
        """Send one order (``orders`` message format) and answer for it.

        Raises:
            EntryUnavailable: it could not be sent (HTTP 503).
        """

    def submit_many(self, orders: list) -> "Awaitable[list]":
        """Send ``orders`` in their order; the awaitable gives one item per
        order, in the same order: its :class:`EntryAnswer`, or the
        :class:`EntryUnavailable` it met (that order only). Each answer is
        what :meth:`submit` would give. Here: one task sending them one after
        another; :class:`EmbeddedEntry` applies them all before it returns."""
        return asyncio.ensure_future(self._one_by_one(orders))

    async def _one_by_one(self, orders: list) -> list:
        out: list = []
        for order in orders:
            try:
                out.append(await self.submit(order))
            except EntryUnavailable as exc:
                out.append(exc)
        return out


class EmbeddedEntry(OrderEntry):
    """Orders matched in this process by an :class:`EngineRuntime`, answered
    after the fsync (:func:`answer_from_result`; :func:`answer_from_asset`
    for ``add_asset``, :func:`answer_from_transfer` for ``deposit`` and
    ``withdraw``). The runtime's lifecycle is the caller's: :meth:`start`
    and :meth:`stop` do nothing.

    Args:
        runtime: a started ``engine.service.runtime.EngineRuntime``.
    """

    name = "embedded"

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime

    async def submit(self, order: dict) -> EntryAnswer:
        answer = (await self.submit_many([order]))[0]
        if isinstance(answer, EntryUnavailable):
            raise answer
        return answer

    def submit_many(self, orders: list) -> "Awaitable[list]":
        """Match and log every order now, in order (no other command comes in
        between two of them); the awaitable gives their answers once all are
        durable (see :meth:`OrderEntry.submit_many`)."""
        now = time.time_ns()
        taken: list = []
        for order in orders:
            cmd = command_from_order(order, now)
            kind = order["type"]
            # read right before enqueue() applies the command: nothing comes in between
            before = self._transfer_before(cmd) if kind in _TRANSFER_TYPES else None
            try:
                taken.append((order, before, self.runtime.enqueue(cmd)))
            except RuntimeError as exc:
                taken.append((order, None, EntryUnavailable(str(exc))))
        return self._answers(taken)

    async def _answers(self, taken: list) -> list:
        out: list = []
        for order, before, fut in taken:
            if isinstance(fut, EntryUnavailable):
                out.append(fut)
                continue
            try:
                result = await fut
            except RuntimeError as exc:
                out.append(EntryUnavailable(str(exc)))
                continue
            kind = order["type"]
            if before is not None:
                out.append(answer_from_transfer(order, result.seq, result.durable_seq, result.events, before))
            elif kind == "add_asset":
                out.append(answer_from_asset(order, result.seq, result.durable_seq, result.events))
            else:
                out.append(answer_from_result(order, result.seq, result.durable_seq, result.events))
        return out

    def _transfer_before(self, cmd: Any) -> TransferBefore:
        accounts = self.runtime.engine.matcher.accounts
        first = accounts.transfers.get(cmd.transfer_id)
        repeat = first is not None and first[:4] == (cmd.kind, cmd.account, cmd.asset, cmd.amount)
        per = accounts.balances.get(cmd.account)       # read only: Accounts.balance() would add a zero pair
        pair = per.get(cmd.asset) if per is not None else None
        return TransferBefore(repeat, pair[0] if pair is not None else 0)


def _describe(exc: BaseException) -> str:
    """``"KafkaConnectionError: Unable to bootstrap ..."``, without the name twice."""
    name, text = type(exc).__name__, str(exc)
    if not text:
        return name
    return text if text.startswith(name) else f"{name}: {text}"


class KafkaEntry(OrderEntry):
    """Orders published to the ``orders`` topic (``engine/io/MESSAGES.md``),
    keyed by symbol (UTF-8) so one symbol's orders stay in order on one
    partition. No ``ts_ns`` is sent: the engine stamps the record's Kafka
    timestamp.

    The commands without a symbol are keyed by what they are about: a
    deposit or withdrawal by its account (decimal UTF-8, as the ``ledger``
    topic), an ``add_asset`` by the asset. Kafka orders records only within
    a partition, so on a topic of more than one partition a deposit is not
    ordered before the orders it funds (nor an asset before the book that
    uses it): send those through one partition, or wait for the balance
    (``GET /accounts/{account}``) before ordering.

    An idempotent producer with ``acks="all"``: an answer means every in-sync
    replica has the record. :meth:`submit` answers 202::

        {"status": "queued", "topic": str, "partition": int, "offset": int,
         "type": str, "symbol": str | None, "order_id": int | None}

    plus ``"transfer_id"`` for a deposit or withdrawal and ``"asset"`` for
    those and an ``add_asset``.

    The producer connects in :meth:`start`, or on the first order if that
    failed (the gateway keeps serving; orders answer 503 until the broker is
    reachable).

    Args:
        bootstrap: ``host:port[,host:port...]`` of the brokers.
        topic: the ``orders`` topic.
        request_timeout_ms: bound on connecting and on each acknowledgement.
            A send that times out has an unknown outcome (the broker may still
            append it): the client may look for it, or send it again with the
            same ``order_id`` (a duplicate of a live order is rejected).
    """

    name = "kafka"

    def __init__(self, bootstrap: str, topic: str = "orders", *, request_timeout_ms: int = 5000) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.request_timeout_ms = request_timeout_ms
        self._producer: Any = None
        self._lock: Optional[asyncio.Lock] = None

    async def start(self) -> None:
        await self._ensure_producer()

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    async def _ensure_producer(self) -> Any:
        if self._producer is not None:
            return self._producer
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._producer is not None:
                return self._producer
            from aiokafka import AIOKafkaProducer
            producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, enable_idempotence=True, acks="all",
                                        request_timeout_ms=self.request_timeout_ms)
            try:
                await asyncio.wait_for(producer.start(), self.request_timeout_ms / 1000)
            except (Exception, asyncio.TimeoutError) as exc:   # noqa: BLE001 - aiokafka raises several types
                try:
                    await producer.stop()
                except Exception:  # noqa: BLE001 - the connect error is the one to report
                    pass
                raise EntryUnavailable(f"Kafka broker at {self.bootstrap} is unreachable: {_describe(exc)}") from None
            self._producer = producer
            return producer

    async def submit(self, order: dict) -> EntryAnswer:
        producer = await self._ensure_producer()
        from aiokafka.errors import KafkaError
        try:
            meta = await asyncio.wait_for(
                producer.send_and_wait(self.topic, encode_order(order), key=_kafka_key(order)),
                self.request_timeout_ms / 1000 + 1)
        except asyncio.TimeoutError:
            raise EntryUnavailable(f"Kafka broker at {self.bootstrap} did not acknowledge the order within "
                                   f"{self.request_timeout_ms} ms (it may still be appended)") from None
        except KafkaError as exc:
            raise EntryUnavailable(f"Kafka broker at {self.bootstrap} refused or lost the order: "
                                   f"{_describe(exc)}") from None
        body = {"status": "queued", "topic": meta.topic, "partition": meta.partition, "offset": meta.offset,
                "type": order["type"], "symbol": order.get("symbol"), "order_id": order.get("order_id")}
        if order["type"] in _TRANSFER_TYPES:
            body["transfer_id"] = order["transfer_id"]
        if "asset" in order:
            body["asset"] = order["asset"]
        return EntryAnswer(202, body)


def _kafka_key(order: dict) -> bytes:
    """The ``orders`` record key: the symbol; a transfer's account (decimal);
    an ``add_asset``'s asset. UTF-8."""
    symbol = order.get("symbol")
    if symbol is not None:
        return symbol.encode("utf-8")
    if order["type"] in _TRANSFER_TYPES:
        return str(order["account"]).encode("utf-8")
    return order["asset"].encode("utf-8")
