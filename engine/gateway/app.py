"""The HTTP order gateway: FastAPI app, uvicorn on the current loop, bind rules.

Endpoints (OpenAPI at ``/docs`` and ``/openapi.json``):

- ``POST /orders``, ``DELETE /orders/{symbol}/{order_id}``,
  ``PATCH /orders/{symbol}/{order_id}`` (amend), ``POST /symbols`` (admin: add
  an order book, optionally with its assets, sizes, fees and risk switch),
  ``POST /assets`` (admin: add an asset), ``POST /deposits``,
  ``POST /withdrawals``: order entry through an
  :class:`~engine.gateway.entry.OrderEntry`. Embedded: 200 once durable,
  409/422 for a matcher reject (the reject is in the WAL too). Kafka: 202
  once the broker acknowledged. 422 for a body that does not validate
  (nothing reaches the engine), 503 when the backend is unavailable, 401
  without the token when one is set.
- ``GET /books/{symbol}?depth=10``, ``GET /trades?symbol=&limit=100``,
  ``GET /accounts/{account}``, ``GET /health``: reads of the engine ``view``
  (an ``EngineRuntime``), never ahead of the disk; 503 without a view.
- ``WS /ws/market-data?symbols=A,B``: trades and top-of-book changes
  (``engine/gateway/market_data.py``).

Units: prices in price units (integer multiples of the book's ``tick_size``),
quantities in lots, times in ns since the epoch, ``seq`` the WAL sequence
number; money (``amount``, ``max_quote``, balances) integers in the asset's
smallest unit, ``10**-scale`` (USD with scale 2: cents).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import socket
from typing import Any, Literal, Optional

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Path, Query, WebSocket
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from engine.core.types import MAX_FEE_PPM, MAX_ORDER_ID

from .entry import EntryUnavailable, OrderEntry, OrderIds
from .market_data import MarketDataHub, trade_dict

__all__ = ["create_app", "serve", "check_bind", "GatewayServer", "PlaceBody", "AmendBody", "SymbolBody",
           "AssetBody", "TransferBody"]

log = logging.getLogger("evengine.gateway")

MAX_INT64 = 2**63 - 1
MAX_SYMBOLS_PER_CLIENT = 1000

# ------------------------------------------------------------------ bodies


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class PlaceBody(_Strict):
    """A new order. Strict: integers must be JSON integers, unknown fields are refused."""

    symbol: str = Field(min_length=1, max_length=32, description="the order book's symbol")
    order_id: Optional[int] = Field(None, ge=1, le=MAX_ORDER_ID,
                                    description="unique among the symbol's live orders; the gateway assigns one "
                                                "when absent (see the answer)")
    side: Literal["buy", "sell"]
    order_type: Literal["limit", "market"] = "limit"
    tif: Optional[Literal["gtc", "ioc", "fok"]] = Field(
        None, validate_default=True, description="time in force; default gtc, for a market order ioc")
    price: Optional[int] = Field(None, ge=0, le=MAX_INT64, validate_default=True,
                                 description="limit price in price units (> 0, a multiple of the tick size); "
                                             "absent or 0 for a market order")
    qty: int = Field(ge=1, le=MAX_INT64, description="lots")
    post_only: bool = Field(False, validate_default=True,
                            description="rejected instead of taking liquidity; limit gtc orders only")
    account: int = Field(0, ge=0, le=MAX_INT64,
                         description="owner id, carried onto trades; in a book with risk on, the account whose "
                                     "available balance must cover the order (a buy holds qty x (price x "
                                     "quote_per_tick + taker fee) quote units, a sell qty x base_per_lot base "
                                     "units), else INSUFFICIENT_FUNDS")
    max_quote: int = Field(0, ge=0, le=MAX_INT64,
                           description="a market buy's budget in the quote asset's smallest units (10**-scale), "
                                       "fees included; 0: none. Required (> 0) for a market buy in a book with "
                                       "risk on; only a market buy takes one")

    @field_validator("tif")
    @classmethod
    def _tif(cls, v: Optional[str], info: ValidationInfo) -> Optional[str]:
        order_type = info.data.get("order_type")
        if v is None:
            return "ioc" if order_type == "market" else "gtc"
        if order_type == "market" and v == "gtc":
            raise ValueError("a market order must be ioc or fok")
        return v

    @field_validator("price")
    @classmethod
    def _price(cls, v: Optional[int], info: ValidationInfo) -> Optional[int]:
        order_type = info.data.get("order_type")
        if order_type == "limit" and not v:
            raise ValueError("a limit order needs a price > 0 (price units)")
        if order_type == "market" and v:
            raise ValueError("a market order takes no price (leave it out or send 0)")
        return v

    @field_validator("post_only")
    @classmethod
    def _post_only(cls, v: bool, info: ValidationInfo) -> bool:
        if v and (info.data.get("order_type") != "limit" or info.data.get("tif") != "gtc"):
            raise ValueError("post_only needs a limit order with tif gtc")
        return v

    @field_validator("max_quote")
    @classmethod
    def _max_quote(cls, v: int, info: ValidationInfo) -> int:
        if v and (info.data.get("order_type") != "market" or info.data.get("side") != "buy"):
            raise ValueError("only a market buy takes a budget (max_quote)")
        return v


class AmendBody(_Strict):
    """New price and new leaves quantity of a resting order. Same price and a
    smaller qty keep time priority; otherwise the order loses it (and may
    trade if the new price crosses)."""

    price: int = Field(ge=1, le=MAX_INT64, description="price units")
    qty: int = Field(ge=1, le=MAX_INT64, description="new leaves quantity, lots")


class SymbolBody(_Strict):
    """A new order book. Everything but ``symbol`` is optional; the spec
    fields say what one price unit and one lot are worth, for accounts and
    risk (``engine.core.commands.AddSymbol``): a trade of ``qty`` lots at
    ``price`` moves ``qty * base_per_lot`` base units one way and
    ``price * qty * quote_per_tick`` quote units (plus fees) the other way,
    amounts in the assets' smallest units (``10**-scale``). Without them the
    book is one of market data: no assets, no fees, risk off."""

    symbol: str = Field(min_length=1, max_length=32)
    tick_size: int = Field(1, ge=1, le=MAX_INT64, description="smallest price step, price units")
    base: Optional[str] = Field(None, min_length=1, max_length=16,
                                description="the asset bought and sold (added with POST /assets first); "
                                            "base and quote: both or neither")
    quote: Optional[str] = Field(None, min_length=1, max_length=16, validate_default=True,
                                 description="the asset prices are paid in (added with POST /assets first)")
    quote_per_tick: int = Field(1, ge=1, le=MAX_INT64,
                                description="quote units (10**-scale) one price unit of one lot is worth")
    base_per_lot: int = Field(1, ge=1, le=MAX_INT64, description="base units (10**-scale) in one lot")
    maker_fee_ppm: int = Field(0, ge=0, le=MAX_FEE_PPM,
                               description="maker fee, parts per million of the notional, paid in the quote "
                                           "asset, rounded up; <= taker_fee_ppm")
    taker_fee_ppm: int = Field(0, ge=0, le=MAX_FEE_PPM, validate_default=True,
                               description="taker fee, parts per million of the notional, paid in the quote "
                                           "asset, rounded up")
    risk: bool = Field(False, validate_default=True,
                       description="pre-trade risk: every order must be covered by its account's available "
                                   "balance and holds it while open; needs base and quote")
    fee_account: int = Field(0, ge=0, le=MAX_INT64, description="the account credited with the fees")

    @field_validator("quote")
    @classmethod
    def _quote(cls, v: Optional[str], info: ValidationInfo) -> Optional[str]:
        base = info.data.get("base")
        if (v is None) != (base is None) and "base" in info.data:
            raise ValueError("base and quote must both be asset names, or both be absent")
        if v is not None and v == base:
            raise ValueError("base and quote must be two different assets")
        return v

    @field_validator("taker_fee_ppm")
    @classmethod
    def _fees(cls, v: int, info: ValidationInfo) -> int:
        maker = info.data.get("maker_fee_ppm")
        if maker is not None and maker > v:
            raise ValueError("maker_fee_ppm must not exceed taker_fee_ppm")
        return v

    @field_validator("risk")
    @classmethod
    def _risk(cls, v: bool, info: ValidationInfo) -> bool:
        if v and "quote" in info.data and info.data["quote"] is None:
            raise ValueError("risk on needs base and quote assets")
        return v


class AssetBody(_Strict):
    """A new asset: ``scale`` is its decimals. Amounts of the asset (deposits,
    withdrawals, balances, budgets) are integers in its smallest unit,
    ``10**-scale`` (USD with scale 2: cents; BTC with scale 8: satoshi)."""

    asset: str = Field(min_length=1, max_length=16, description="the asset's name, e.g. USD")
    scale: int = Field(ge=0, le=18, description="decimals: one unit of an amount is 10**-scale of the asset")


class TransferBody(_Strict):
    """A deposit or a withdrawal. ``transfer_id`` is the idempotency key:
    sending it again with the same body answers with the first outcome
    (``duplicate: true``) and changes nothing; the same id with another body
    (deposits and withdrawals share one id space) is rejected,
    ``TRANSFER_CONFLICT``."""

    transfer_id: int = Field(ge=1, le=MAX_INT64, description="the client's idempotency key, 1..2**63-1")
    account: int = Field(ge=0, le=MAX_INT64, description="the account, 0..2**63-1")
    asset: str = Field(min_length=1, max_length=16, description="an asset added with POST /assets")
    amount: int = Field(ge=1, le=MAX_INT64,
                        description="the asset's smallest units (10**-scale), > 0; a withdrawal takes it from "
                                    "the available balance (held funds are not withdrawable)")


# ------------------------------------------------------------ answer models (docs)


class Fill(BaseModel):
    seq: int
    match_id: int
    price: int
    qty: int
    maker_order_id: int
    symbol_seq: int


class Reject(BaseModel):
    code: int = Field(description="RejectReason code: 1xx malformed field, 2xx state conflict, 3xx own "
                                  "instructions, 4xx pre-trade risk (400 INSUFFICIENT_FUNDS)")
    reason: str = Field(description="RejectReason name")
    detail: str


class OrderAnswer(BaseModel):
    seq: int = Field(description="the command's WAL sequence number")
    durable_seq: int = Field(description="WAL watermark when answered")
    symbol: str
    order_id: Optional[int]
    status: Literal["resting", "filled", "partially_filled", "cancelled", "amended", "added", "rejected"]
    fills: list[Fill]
    filled_qty: int
    leaves_qty: int = Field(description="lots left resting on the book")
    cancelled_qty: int = Field(description="lots that left the book unfilled")
    reject: Optional[Reject]
    tick_size: Optional[int] = None


class AssetAnswer(BaseModel):
    seq: int = Field(description="the command's WAL sequence number")
    durable_seq: int = Field(description="WAL watermark when answered")
    asset: str
    scale: int = Field(description="decimals: amounts of the asset are integers in units of 10**-scale")
    status: Literal["added", "rejected"]
    reject: Optional[Reject] = Field(description="e.g. ASSET_EXISTS (409)")


class TransferAnswer(BaseModel):
    seq: int = Field(description="the command's WAL sequence number")
    durable_seq: int = Field(description="WAL watermark when answered")
    type: Literal["deposit", "withdraw"]
    transfer_id: int
    account: int
    asset: str
    amount: int = Field(description="the asset's smallest units (10**-scale)")
    status: Literal["applied", "rejected"]
    duplicate: bool = Field(description="a repeat of transfer_id with the same body: nothing changed; status "
                                        "and reject are those of the first outcome")
    available: int = Field(description="the account's available balance in the asset right after this command, "
                                       "smallest units (10**-scale)")
    reject: Optional[Reject] = Field(description="INSUFFICIENT_FUNDS, UNKNOWN_ASSET, TRANSFER_CONFLICT (409); "
                                                 "1xx codes (422)")


class BalanceOut(BaseModel):
    asset: str
    scale: int = Field(description="the asset's decimals")
    available: int = Field(description="free to order or withdraw, smallest units (10**-scale)")
    held: int = Field(description="reserved by open orders, smallest units (10**-scale)")


class AccountOut(BaseModel):
    account: int
    seq: int = Field(description="the balances are the state right after this WAL sequence number, which is "
                                 "durable")
    balances: list[BalanceOut] = Field(description="one per asset the account has a balance in, by asset name; "
                                                   "empty for an account that never had one")


class Queued(BaseModel):
    status: Literal["queued"]
    topic: str
    partition: int
    offset: int
    type: str
    symbol: Optional[str] = Field(description="null for a transfer or an asset")
    order_id: Optional[int]
    transfer_id: Optional[int] = Field(None, description="deposits and withdrawals")
    asset: Optional[str] = Field(None, description="deposits, withdrawals and assets")


class BookOut(BaseModel):
    symbol: str
    seq: int = Field(description="the book is the state right after this WAL sequence number, which is durable")
    bids: list[list[int]] = Field(description="[[price, qty], ...], best (highest) first, one per price level")
    asks: list[list[int]] = Field(description="[[price, qty], ...], best (lowest) first, one per price level")


class TradeOut(BaseModel):
    match_id: int
    symbol: str
    symbol_seq: int
    seq: Optional[int] = Field(description="the trade's WAL sequence number (null if no longer derivable)")
    cmd_seq: int
    ts_ns: int
    price: int
    qty: int
    taker_side: str
    maker_order_id: int
    taker_order_id: int
    maker_account: int
    taker_account: int


class TradesOut(BaseModel):
    seq: int
    trades: list[TradeOut] = Field(description="oldest first, newest last")


class HealthOut(BaseModel):
    status: Literal["ok", "failed"]
    entry: str
    last_seq: Optional[int]
    durable_seq: Optional[int]
    match_sequence: Optional[int]
    market_data_clients: Optional[int]


class ErrorOut(BaseModel):
    detail: str


_ENTRY_RESPONSES: dict = {
    200: {"model": OrderAnswer, "description": "embedded engine: the command is durable"},
    202: {"model": Queued, "description": "Kafka: the broker acknowledged the order"},
    401: {"model": ErrorOut, "description": "missing or wrong bearer token"},
    409: {"model": OrderAnswer, "description": "rejected by the matcher: conflicts with the engine's state"},
    422: {"description": "invalid body, or rejected by the matcher for a malformed field (body as 200)"},
    503: {"model": ErrorOut, "description": "order entry unavailable (engine stopped, broker unreachable)"},
}
_ASSET_RESPONSES: dict = {
    **_ENTRY_RESPONSES,
    200: {"model": AssetAnswer, "description": "embedded engine: the asset exists, durably"},
    409: {"model": AssetAnswer, "description": "rejected by the matcher: ASSET_EXISTS"},
}
_TRANSFER_RESPONSES: dict = {
    **_ENTRY_RESPONSES,
    200: {"model": TransferAnswer,
          "description": "embedded engine: applied and durable, or a duplicate of an applied transfer "
                         "(duplicate: true, nothing changed)"},
    409: {"model": TransferAnswer,
          "description": "rejected by the matcher (the reject is in the WAL): INSUFFICIENT_FUNDS, UNKNOWN_ASSET, "
                         "TRANSFER_CONFLICT, or a duplicate of a transfer rejected so (duplicate: true)"},
    422: {"description": "invalid body (nothing reaches the engine), or a matcher reject with a 1xx code "
                         "(body as 409)"},
}
_READ_RESPONSES: dict = {503: {"model": ErrorOut, "description": "no engine view, or the engine failed or is busy"}}


# --------------------------------------------------------------------- app


def create_app(entry: OrderEntry, view: Any = None, *, token: Optional[str] = None,
               market_data_queue: int = 10_000, read_timeout_s: float = 5.0) -> FastAPI:
    """The gateway app.

    Args:
        entry: where orders go (:class:`~engine.gateway.entry.EmbeddedEntry`
            or :class:`~engine.gateway.entry.KafkaEntry`). The app starts it
            on startup (a failure is logged; orders answer 503 until it
            connects) and stops it on shutdown.
        view: the ``EngineRuntime`` for reads and market data (may be the
            embedded entry's); ``None``: reads answer 503, no market data.
        token: when set, order entry and admin endpoints need
            ``Authorization: Bearer <token>`` (401 otherwise); reads stay open.
        market_data_queue: messages a WebSocket client may have waiting
            before it is dropped.
        read_timeout_s: a read waits at most this long for a durable point
            (the engine busy without a pause) before answering 503.
    """
    hub = MarketDataHub(view, max_queue=market_data_queue) if view is not None else None
    ids = OrderIds()

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        try:
            await entry.start()
        except EntryUnavailable as exc:
            log.warning("order entry unavailable at startup: %s (orders answer 503 until it is)", exc)
        try:
            yield
        finally:
            if hub is not None:
                hub.close()
            await entry.stop()

    app = FastAPI(title="evengine order gateway", version="1",
                  description="Order entry, accounts, order book reads and market data of an evengine matching "
                              "engine. Prices in price units (integer multiples of the tick size), quantities in "
                              "lots, times in ns since the epoch, seq the WAL sequence number; money (amounts, "
                              "budgets, balances) in integers of the asset's smallest unit, 10**-scale.",
                  lifespan=lifespan)
    app.state.entry = entry
    app.state.view = view
    app.state.market_data = hub
    app.state.token = token
    app.state.order_ids = ids

    bearer = HTTPBearer(auto_error=False, description="required for order entry when the gateway has a token")

    async def require_token(creds: Optional[HTTPAuthorizationCredentials] = Depends(bearer)) -> None:
        if token is None:
            return
        if creds is None or not hmac.compare_digest(creds.credentials.encode(), token.encode()):
            raise HTTPException(401, "order entry needs the header 'Authorization: Bearer <token>'",
                                headers={"WWW-Authenticate": "Bearer"})

    async def submit(order: dict) -> JSONResponse:
        try:
            answer = await entry.submit(order)
        except EntryUnavailable as exc:
            raise HTTPException(503, f"order entry unavailable: {exc}") from None
        return JSONResponse(answer.body, status_code=answer.status_code)

    def need_view() -> Any:
        if view is None:
            raise HTTPException(503, "this gateway only does order entry: reads need an engine in this process")
        if view.failed is not None:
            raise HTTPException(503, f"the engine failed: {view.failed}")
        return view

    async def at_durable() -> Any:
        """The matcher, at a moment where all of it is durable (nothing
        between this return and the caller's synchronous read)."""
        rt = need_view()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + read_timeout_s
        while True:
            try:
                await rt.barrier()
            except RuntimeError as exc:
                raise HTTPException(503, str(exc)) from None
            matcher = rt.engine.matcher
            if matcher.last_seq <= rt.engine.wal.peek_durable():
                return matcher
            if loop.time() > deadline:
                raise HTTPException(503, f"the engine did not pause at a durable point within {read_timeout_s} s")

    auth = [Depends(require_token)]

    @app.post("/orders", tags=["order entry"], dependencies=auth, responses=_ENTRY_RESPONSES,
              summary="Enter a new order")
    async def place_order(body: PlaceBody) -> JSONResponse:
        order = {"type": "place", "symbol": body.symbol,
                 "order_id": body.order_id if body.order_id is not None else ids.next(),
                 "side": body.side, "order_type": body.order_type, "tif": body.tif, "qty": body.qty,
                 "post_only": body.post_only, "account": body.account}
        if body.max_quote:
            order["max_quote"] = body.max_quote
        if body.order_type == "limit":
            order["price"] = body.price
        return await submit(order)

    @app.delete("/orders/{symbol}/{order_id}", tags=["order entry"], dependencies=auth,
                responses=_ENTRY_RESPONSES, summary="Cancel a resting order")
    async def cancel_order(symbol: str = Path(min_length=1, max_length=32),
                           order_id: int = Path(ge=1, le=MAX_ORDER_ID)) -> JSONResponse:
        return await submit({"type": "cancel", "symbol": symbol, "order_id": order_id})

    @app.patch("/orders/{symbol}/{order_id}", tags=["order entry"], dependencies=auth,
               responses=_ENTRY_RESPONSES, summary="Amend a resting order (price, leaves quantity)")
    async def amend_order(body: AmendBody, symbol: str = Path(min_length=1, max_length=32),
                          order_id: int = Path(ge=1, le=MAX_ORDER_ID)) -> JSONResponse:
        return await submit({"type": "amend", "symbol": symbol, "order_id": order_id,
                             "price": body.price, "qty": body.qty})

    @app.post("/symbols", tags=["admin"], dependencies=auth, responses=_ENTRY_RESPONSES,
              summary="Add an order book")
    async def add_symbol(body: SymbolBody) -> JSONResponse:
        """A new order book; with ``base``/``quote`` its trades settle between
        accounts, with ``risk`` its orders must be funded. An unknown asset
        is a matcher reject, ``UNKNOWN_ASSET`` (409)."""
        return await submit({"type": "add_symbol", "symbol": body.symbol, "tick_size": body.tick_size,
                             **body.model_dump(exclude_defaults=True)})

    @app.post("/assets", tags=["admin"], dependencies=auth, responses=_ASSET_RESPONSES,
              summary="Add an asset")
    async def add_asset(body: AssetBody) -> JSONResponse:
        """A new asset, needed before deposits of it and books that trade it.
        ``scale`` fixes its smallest unit, ``10**-scale``, for good."""
        return await submit({"type": "add_asset", "asset": body.asset, "scale": body.scale})

    @app.post("/deposits", tags=["accounts"], dependencies=auth, responses=_TRANSFER_RESPONSES,
              summary="Credit an account")
    async def deposit(body: TransferBody) -> JSONResponse:
        """Credit ``amount`` (the asset's smallest units, ``10**-scale``) to the
        account's available balance. Idempotent by ``transfer_id``."""
        return await submit({"type": "deposit", **body.model_dump()})

    @app.post("/withdrawals", tags=["accounts"], dependencies=auth, responses=_TRANSFER_RESPONSES,
              summary="Debit an account")
    async def withdraw(body: TransferBody) -> JSONResponse:
        """Debit ``amount`` (the asset's smallest units, ``10**-scale``) from the
        account's *available* balance; ``INSUFFICIENT_FUNDS`` (409, nothing
        changed) when it is short. Idempotent by ``transfer_id``, one id
        space with deposits."""
        return await submit({"type": "withdraw", **body.model_dump()})

    @app.get("/books/{symbol}", tags=["reads"], response_model=BookOut,
             responses={404: {"model": ErrorOut, "description": "no order book for the symbol"},
                        **_READ_RESPONSES},
             summary="Order book depth, aggregated per price level")
    async def get_book(symbol: str, depth: int = Query(10, ge=1, le=10_000)) -> dict:
        matcher = await at_durable()
        book = matcher.books.get(symbol)
        if book is None:
            raise HTTPException(404, f"no order book for {symbol[:32]!r}")
        return {"symbol": symbol, "seq": matcher.last_seq, "bids": book.depth(1, depth),
                "asks": book.depth(2, depth)}

    @app.get("/trades", tags=["reads"], response_model=TradesOut,
             responses={404: {"model": ErrorOut, "description": "no order book for the symbol"},
                        **_READ_RESPONSES},
             summary="Recent trades, newest last")
    async def get_trades(symbol: Optional[str] = Query(None, min_length=1, max_length=32),
                         limit: int = Query(100, ge=1, le=10_000)) -> dict:
        matcher = await at_durable()
        if symbol is not None and symbol not in matcher.books:
            raise HTTPException(404, f"no order book for {symbol!r}")
        return {"seq": matcher.last_seq, "trades": recent_trades(matcher.trades, symbol, limit)}

    @app.get("/accounts/{account}", tags=["reads", "accounts"], response_model=AccountOut,
             responses=_READ_RESPONSES, summary="An account's balances, per asset")
    async def get_account(account: int = Path(ge=0, le=MAX_INT64)) -> dict:
        """Available and held balance per asset, in the asset's smallest unit
        (``10**-scale``), from the durable state (as ``GET /books``).

        An account needs no creation: it exists once it has a balance. So an
        account that never had one answers 200 with an empty ``balances``
        list, not 404 (which ``GET /books`` gives for a symbol no
        ``POST /symbols`` added): an empty account is a valid state, not a
        missing resource."""
        matcher = await at_durable()
        accounts = matcher.accounts
        per = accounts.balances.get(account, {})
        return {"account": account, "seq": matcher.last_seq,
                "balances": [{"asset": asset, "scale": accounts.assets.get(asset), "available": b[0], "held": b[1]}
                             for asset, b in sorted(per.items())]}

    @app.get("/health", tags=["reads"], response_model=HealthOut, responses=_READ_RESPONSES,
             summary="Engine sequence numbers")
    async def health() -> Any:
        if view is None:
            return {"status": "ok", "entry": entry.name, "last_seq": None, "durable_seq": None,
                    "match_sequence": None, "market_data_clients": None}
        m = view.engine.matcher
        body = {"status": "ok" if view.failed is None else "failed", "entry": entry.name,
                "last_seq": m.last_seq, "durable_seq": view.engine.wal.peek_durable(),
                "match_sequence": m.match_sequence, "market_data_clients": len(hub.clients)}
        return body if view.failed is None else JSONResponse(body, status_code=503)

    @app.websocket("/ws/market-data")
    async def market_data(websocket: WebSocket, symbols: Optional[str] = None) -> None:
        """Trades and top-of-book changes, as JSON text messages, only once durable."""
        if hub is None:
            await websocket.close(code=1013, reason="no market data: this gateway has no engine view")
            return
        wanted: Optional[set] = None
        if symbols is not None:
            wanted = {s.strip() for s in symbols.split(",") if s.strip()}
            if not wanted or len(wanted) > MAX_SYMBOLS_PER_CLIENT or any(len(s) > 32 for s in wanted):
                await websocket.close(code=1008, reason="symbols: 1..1000 comma-separated names of 1..32 characters")
                return
        await websocket.accept()
        client = hub.subscribe(wanted)
        try:
            await client.serve(websocket)
        finally:
            hub.unsubscribe(client)

    return app


def recent_trades(trades: Any, symbol: Optional[str], limit: int) -> list:
    """The last ``limit`` trades of ``trades`` (the matcher's deque, oldest
    first), of ``symbol`` if given, oldest first, as :func:`trade_dict`\\ s.

    A trade's ``seq`` is ``cmd_seq`` + its rank among that command's trades;
    ``None`` for the oldest command's trades when the deque is full (its first
    trades may have been dropped)."""
    first: dict = {}
    for t in trades:
        if t.cmd_seq not in first:
            first[t.cmd_seq] = t.match_id
    cut = trades[0].cmd_seq if trades and trades.maxlen is not None and len(trades) == trades.maxlen else None
    out = []
    for t in reversed(trades):
        if symbol is not None and t.symbol != symbol:
            continue
        seq = None if t.cmd_seq == cut else t.cmd_seq + t.match_id - first[t.cmd_seq] + 1
        out.append(trade_dict(seq, t))
        if len(out) >= limit:
            break
    out.reverse()
    return out


# ------------------------------------------------------------------ serving


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback for i in infos)


def check_bind(host: str, token: Optional[str]) -> None:
    """The bind rule: the gateway is bound to 127.0.0.1 by default, and needs
    a token for order entry when bound elsewhere.

    Raises:
        ValueError: ``host`` is not a loopback address (``0.0.0.0``, ``::``,
            ``""`` or a public address/name) and ``token`` is empty.
    """
    if not token and not _is_loopback(host or ""):
        raise ValueError(f"refusing to bind the gateway to {host or 'every interface'!r} without a token: "
                         "it is bound to 127.0.0.1 by default; a token for order entry when bound elsewhere")


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, handle_signals: bool) -> None:
        super().__init__(config)
        self._handle_signals = handle_signals

    @contextlib.contextmanager
    def capture_signals(self):  # noqa: ANN201 - uvicorn's signature
        if self._handle_signals:
            with super().capture_signals():
                yield
        else:
            yield


class GatewayServer:
    """uvicorn serving ``app`` on the current asyncio loop.

    Use: ``srv = GatewayServer(app, "127.0.0.1", 0)``; ``await srv.start()``
    (returns once listening; :attr:`port` is the bound port); ...;
    ``await srv.stop()``. Also an async context manager.

    Args:
        app: the ASGI app (:func:`create_app`); its ``state.token`` is checked
            against ``host`` with :func:`check_bind`.
        host, port: where to listen (port 0: any free port).
        handle_signals: let uvicorn take SIGINT/SIGTERM (it stops, then
            re-raises them to the previous handlers). Off by default: the
            caller owns signals (``EngineRuntime.install_signal_handlers``).
        grace_s: on stop, connections still open after this long are cut
            (a WebSocket client that does not read never finishes closing).
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 8080, *, log_level: str = "warning",
                 handle_signals: bool = False, grace_s: float = 5.0) -> None:
        self.app = app
        self.host = host
        self.requested_port = port
        self.grace_s = grace_s
        self.config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on",
                                     timeout_graceful_shutdown=grace_s)
        self.server = _Server(self.config, handle_signals)
        self.port: Optional[int] = None
        self._sock: Optional[socket.socket] = None
        self._task: Optional[asyncio.Task] = None

    def _bind(self) -> socket.socket:
        infos = socket.getaddrinfo(self.host or None, self.requested_port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
        family, kind, proto, _, addr = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
        except OSError:
            sock.close()
            raise
        return sock

    async def start(self) -> None:
        """Bind, run the app's startup, listen.

        Raises:
            ValueError: :func:`check_bind` refused the host.
            OSError: the address cannot be bound.
            RuntimeError: the app's startup failed.
        """
        check_bind(self.host, getattr(getattr(self.app, "state", None), "token", None))
        self._sock = self._bind()
        self.port = self._sock.getsockname()[1]

        async def run() -> None:
            try:
                await self.server.serve(sockets=[self._sock])
            except SystemExit as exc:   # uvicorn exits on a failed startup; never let it stop the loop
                raise RuntimeError(f"the gateway failed to start (uvicorn exit status {exc.code})") from None

        self._task = asyncio.create_task(run(), name="evengine-gateway")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while not self.server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("the gateway stopped during startup")
            if loop.time() > deadline:
                raise RuntimeError("the gateway did not start within 30 s")
            await asyncio.sleep(0.005)
        log.info("gateway listening on %s port %d", self.host, self.port)

    async def wait(self) -> None:
        """Until the server stops (:meth:`stop`, or a signal when handled)."""
        if self._task is not None:
            await asyncio.shield(self._task)

    async def stop(self) -> None:
        """Stop accepting, close connections (cut after ``grace_s``), run the
        app's shutdown."""
        if self._task is None:
            return
        self.server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), self.grace_s + 1)
        except asyncio.TimeoutError:
            self.server.force_exit = True
            for conn in list(self.server.server_state.connections):
                transport = getattr(conn, "transport", None)
                if transport is not None:
                    transport.abort()
            await self._task
        finally:
            if self._sock is not None:
                self._sock.close()

    async def __aenter__(self) -> "GatewayServer":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def serve(app: Any, host: str = "127.0.0.1", port: int = 8080, *,
                stop: Optional[asyncio.Event] = None, on_listening: Any = None,
                handle_signals: bool = False) -> None:
    """Serve ``app`` with uvicorn in the current asyncio loop until ``stop``
    is set (or the server exits: a signal, when ``handle_signals``).

    Args:
        stop: set it to stop the server (e.g. ``EngineRuntime.stopping``).
        on_listening: called with the :class:`GatewayServer` once listening
            (its ``port`` is the bound port, useful with ``port=0``).

    Raises:
        ValueError: not a loopback ``host`` and the app has no token (:func:`check_bind`).
    """
    server = GatewayServer(app, host, port, handle_signals=handle_signals)
    await server.start()
    try:
        if on_listening is not None:
            on_listening(server)
        waiters = [asyncio.ensure_future(server.wait())]
        if stop is not None:
            waiters.append(asyncio.ensure_future(stop.wait()))
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
    finally:
        await server.stop()
