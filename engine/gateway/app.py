"""The HTTP order gateway: FastAPI app, uvicorn on the current loop, bind rules.

Endpoints (OpenAPI at ``/docs`` and ``/openapi.json``):

- ``POST /orders``, ``POST /orders/batch`` (up to 1000 new orders, one answer
  each), ``DELETE /orders/{symbol}/{order_id}``,
  ``PATCH /orders/{symbol}/{order_id}`` (amend), ``POST /symbols`` (admin: add
  an order book, optionally with its assets, sizes, fees and risk switch),
  ``POST /assets`` (admin: add an asset), ``POST /deposits``,
  ``POST /withdrawals``: order entry through an
  :class:`~engine.gateway.entry.OrderEntry`. Embedded: 200 once durable,
  409/422 for a matcher reject (the reject is in the WAL too). Kafka: 202
  once the broker acknowledged. 422 for a body that does not validate or
  does not parse (nothing reaches the engine), 503 when the backend is
  unavailable, 401 without the token when one is set.
- ``GET /books/{symbol}?depth=10``, ``GET /trades?symbol=&limit=100``,
  ``GET /accounts/{account}``, ``GET /health``: reads of the engine ``view``
  (an ``EngineRuntime``), never ahead of the disk; 503 without a view.
- ``WS /ws/market-data?symbols=A,B``: trades and top-of-book changes
  (``engine/gateway/market_data.py``).
- ``WS /ws/orders``: streaming order entry, many orders in flight on one
  connection, each answered once durable, in order
  (``engine/gateway/order_stream.py``).

The OpenAPI document is a contract, checked by ``tests/contract`` (schemathesis
against a live gateway): it names every status a route can answer with the
body of each, declares the bearer scheme only when the gateway has a token
(and then only on the routes that check it), gives every integer its exact
range, and states the rules between fields as JSON Schema (``allOf`` of
``if``/``then``) where JSON Schema can. The few it cannot (``base`` differs
from ``quote``; ``maker_fee_ppm <= taker_fee_ppm``; the rules that depend on
the engine's state: a price on the book's tick, a market buy's budget in a
book with risk on, the total of an asset's deposits) are in the descriptions
and listed per route under ``x-schema-valid-422``: the only 422 answers a
schema-valid request can get.

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
import json
import logging
import math
import re
import socket
from typing import Annotated, Any, Literal, Optional, Union

import uvicorn
from annotated_types import Interval
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request, WebSocket
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from engine.core.types import MAX_AMOUNT, MAX_FEE_PPM, MAX_ORDER_ID, MAX_PRICE, MAX_QTY, RejectReason

from .entry import EmbeddedEntry, EntryUnavailable, KafkaEntry, OrderEntry, OrderIds
from .fast_orders import FastOrderPath, fast_orders_enabled
from .market_data import MarketDataHub, trade_dict
from .order_stream import BadMessage, OrderStream

__all__ = ["create_app", "serve", "check_bind", "GatewayServer", "PlaceBody", "AmendBody", "SymbolBody",
           "AssetBody", "TransferBody", "SCHEMA_VALID_422"]

log = logging.getLogger("evengine.gateway")

MAX_INT64 = 2**63 - 1
MAX_SYMBOLS_PER_CLIENT = 1000

# ------------------------------------------------------------------ integers

# JSON Schema's "integer" is a value, not a spelling: 6.0 is the integer 6. A
# JSON number is read as a float when it has a fraction or an exponent, and a
# float is exact only up to 2**53: beyond that, 9007199254740993.0 reads as
# ...992. So a whole float is taken as the integer it is up to 2**53, and
# refused (422, ``int_inexact``) above, where only a plain JSON integer is
# exact. Booleans and strings are never integers (the bodies are strict).
_EXACT_FLOAT = 2**53
WHOLE_FLOATS = ("a number written with a fraction or an exponent (6.0, 6e0) is taken when it is a whole "
                "number of magnitude <= 2**53 (an exact float); beyond that only a JSON integer is read "
                "exactly, and anything else is refused (422, int_inexact)")


def _whole(value: Any) -> Any:
    if type(value) is float and value.is_integer():
        if -_EXACT_FLOAT <= value <= _EXACT_FLOAT:
            return int(value)
        raise PydanticCustomError("int_inexact", "a whole number beyond 2**53 must be written as a JSON integer "
                                                 "(no fraction, no exponent) to be read exactly")
    return value


# A path segment names an integer in ASCII digits, with at most a zero
# fraction: "7.0" is how a whole JSON number taken from a body (see above)
# prints, and the integer 7. int() alone would also take "+7", " 7", "7_0" and
# "٧", none of which is an integer in the document.
_DIGITS = re.compile(r"([0-9]{1,25})(?:\.0{1,25})?\Z")
PATH_INTEGERS = "ASCII digits, at most with a zero fraction (7 or 7.0)"


def _path_digits(value: Any) -> Any:
    if isinstance(value, str):
        match = _DIGITS.match(value)
        if match is None:
            raise PydanticCustomError("int_parsing", f"Input should be a valid integer: {PATH_INTEGERS}")
        return match.group(1)
    return value


# The range first, then the digits check around it (paths and queries): the other way round,
# pydantic writes the range as "ge"/"le", which JSON Schema does not know.
SymbolPath = Annotated[str, Path(min_length=1, max_length=32, pattern=r"^[^/]+$",
                                 description="the order book's symbol, one path segment (a symbol with '/' "
                                             "cannot be named in a path)")]
OrderIdPath = Annotated[int, Interval(ge=1, le=MAX_ORDER_ID), BeforeValidator(_path_digits),
                        Path(description=f"the order's id, 1..2**63-1; {PATH_INTEGERS}")]
AccountPath = Annotated[int, Interval(ge=0, le=MAX_INT64), BeforeValidator(_path_digits),
                        Path(description=f"the account, 0..2**63-1; {PATH_INTEGERS}")]
DepthQuery = Annotated[int, Interval(ge=1, le=10_000), BeforeValidator(_path_digits),
                       Query(description=f"price levels per side, 1..10000; {PATH_INTEGERS}")]
LimitQuery = Annotated[int, Interval(ge=1, le=10_000), BeforeValidator(_path_digits),
                       Query(description=f"at most this many trades, 1..10000; {PATH_INTEGERS}")]

# ------------------------------------------------------------------ bodies


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    @field_validator("*", mode="before")
    @classmethod
    def _whole_numbers(cls, v: Any) -> Any:
        return _whole(v)


_NO_SURROGATES = "strings are Unicode text: one with a lone surrogate (\\ud800) is refused (422)"

# Cross-field rules of a new order, as JSON Schema (OpenAPI 3.1 is JSON Schema
# 2020-12). Absent and null are the same for the optional fields.
_PLACE_RULES = [
    {"if": {"required": ["order_type"], "properties": {"order_type": {"const": "market"}}},
     "then": {"description": "a market order: no price (absent, null or 0), tif ioc or fok, not post_only",
              "properties": {"price": {"enum": [0, None]}, "tif": {"enum": ["ioc", "fok", None]},
                             "post_only": {"const": False}}},
     "else": {"description": "a limit order: a price >= 1, no max_quote",
              "required": ["price"],
              "properties": {"price": {"type": "integer", "minimum": 1}, "max_quote": {"const": 0}}}},
    {"if": {"required": ["post_only"], "properties": {"post_only": {"const": True}}},
     "then": {"description": "post_only needs tif gtc", "properties": {"tif": {"enum": ["gtc", None]}}}},
    {"if": {"properties": {"side": {"const": "sell"}}},
     "then": {"description": "only a buy takes a budget", "properties": {"max_quote": {"const": 0}}}},
]


class PlaceBody(_Strict):
    """A new order. Strict: integers must be JSON integers (or whole numbers,
    see below), unknown fields are refused.

    Rules between fields (in the schema, ``allOf``): a limit order (the
    default) needs ``price`` >= 1 and takes no ``max_quote``; a market order
    takes no price (absent, null or 0), ``tif`` ioc or fok (default ioc) and
    no ``post_only``; ``post_only`` needs ``tif`` gtc; only a market buy takes
    a ``max_quote``. Rules of the book, which a schema cannot know (a matcher
    reject, 422, in the WAL): the price must be a multiple of the book's
    ``tick_size`` (``PRICE_OFF_TICK``), and a market buy in a book with risk
    on needs ``max_quote`` > 0 (``INVALID_BUDGET``)."""

    model_config = ConfigDict(json_schema_extra={"allOf": _PLACE_RULES, "examples": [
        {"symbol": "AAPL", "order_id": 17, "side": "buy", "price": 10050, "qty": 100, "account": 3},
        {"symbol": "AAPL", "side": "sell", "order_type": "market", "qty": 7, "tif": "fok"},
        {"symbol": "BTCUSD", "side": "buy", "order_type": "market", "qty": 1, "account": 7, "max_quote": 1000}]})

    symbol: str = Field(min_length=1, max_length=32, description="the order book's symbol")
    order_id: Optional[int] = Field(None, ge=1, le=MAX_ORDER_ID,
                                    description="1..2**63-1, unique among the symbol's live orders; the gateway "
                                                "assigns one when absent or null (see the answer)")
    side: Literal["buy", "sell"]
    order_type: Literal["limit", "market"] = "limit"
    tif: Optional[Literal["gtc", "ioc", "fok"]] = Field(
        None, validate_default=True, description="time in force; absent or null: gtc, for a market order ioc; "
                                                 "a market order is ioc or fok")
    price: Optional[int] = Field(None, ge=0, le=MAX_PRICE, validate_default=True,
                                 description=f"limit price in price units, 1..{MAX_PRICE} and a multiple of the "
                                             "book's tick size (else PRICE_OFF_TICK, 422); required for a limit "
                                             "order; absent, null or 0 for a market order")
    qty: int = Field(ge=1, le=MAX_QTY, description=f"lots, 1..{MAX_QTY}")
    post_only: bool = Field(False, validate_default=True,
                            description="rejected instead of taking liquidity; limit gtc orders only")
    account: int = Field(0, ge=0, le=MAX_INT64,
                         description="owner id, carried onto trades; in a book with risk on, the account whose "
                                     "available balance must cover the order (a buy holds qty x (price x "
                                     "quote_per_tick + taker fee) quote units, a sell qty x base_per_lot base "
                                     "units), else INSUFFICIENT_FUNDS")
    max_quote: int = Field(0, ge=0, le=MAX_AMOUNT,
                           description="a market buy's budget in the quote asset's smallest units (10**-scale), "
                                       "fees included; 0: none. Required (> 0) for a market buy in a book with "
                                       "risk on (else INVALID_BUDGET, 422); only a market buy takes one")

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
    trade if the new price crosses). The price must be a multiple of the
    book's tick size (else ``PRICE_OFF_TICK``, 422)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"price": 10055, "qty": 60}]})

    price: int = Field(ge=1, le=MAX_PRICE, description=f"price units, 1..{MAX_PRICE}, on the book's tick")
    qty: int = Field(ge=1, le=MAX_QTY, description=f"new leaves quantity, lots, 1..{MAX_QTY}")


MAX_BATCH = 1000


class BatchBody(_Strict):
    """Up to 1000 new orders, entered in their order (no other command comes
    in between two of them in an embedded engine). Each is validated as the
    body of ``POST /orders``; one that does not validate fails the whole
    request (422, nothing reaches the engine)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"orders": [
        {"symbol": "AAPL", "side": "buy", "price": 10050, "qty": 100},
        {"symbol": "AAPL", "side": "sell", "price": 10060, "qty": 40}]}]})

    orders: list[PlaceBody] = Field(min_length=1, max_length=MAX_BATCH)


class StreamCancel(_Strict):
    """``{"op": "cancel"}`` on ``WS /ws/orders``: ``DELETE /orders/{symbol}/{order_id}``
    (the path's two parameters as fields)."""

    symbol: str = Field(min_length=1, max_length=32)
    order_id: int = Field(ge=1, le=MAX_ORDER_ID)


class StreamAmend(AmendBody, StreamCancel):
    """``{"op": "amend"}`` on ``WS /ws/orders``: ``PATCH /orders/{symbol}/{order_id}``."""


def place_order_message(body: PlaceBody, ids: OrderIds) -> dict:
    """A validated new order as an ``orders`` message (``engine/io/MESSAGES.md``);
    ``ids`` assigns the order id when the body has none."""
    order = {"type": "place", "symbol": body.symbol,
             "order_id": body.order_id if body.order_id is not None else ids.next(),
             "side": body.side, "order_type": body.order_type, "tif": body.tif, "qty": body.qty,
             "post_only": body.post_only, "account": body.account}
    if body.max_quote:
        order["max_quote"] = body.max_quote
    if body.order_type == "limit":
        order["price"] = body.price
    return order


def stream_order_parser(ids: OrderIds) -> Any:
    """The ``parse`` of an :class:`~engine.gateway.order_stream.OrderStream`:
    an order object of ``WS /ws/orders`` -> an ``orders`` message, by the
    HTTP routes' models (same rules, same 422 details).

    Raises:
        BadMessage: no or an unknown ``op``, or the fields do not validate.
    """

    def parse(item: dict) -> dict:
        op = item.pop("op", None)
        try:
            if op == "place":
                return place_order_message(PlaceBody.model_validate(item), ids)
            if op == "cancel":
                c = StreamCancel.model_validate(item)
                return {"type": "cancel", "symbol": c.symbol, "order_id": c.order_id}
            if op == "amend":
                a = StreamAmend.model_validate(item)
                return {"type": "amend", "symbol": a.symbol, "order_id": a.order_id, "price": a.price, "qty": a.qty}
        except ValidationError as exc:
            raise BadMessage(jsonable_encoder(exc.errors(include_url=False))) from None
        raise BadMessage(f"op must be 'place', 'cancel' or 'amend', got {op!r}")

    return parse


_ASSET_STRING = {"type": "string"}
_SYMBOL_RULES = [
    {"if": {"required": ["base"], "properties": {"base": _ASSET_STRING}},
     "then": {"description": "base and quote: both or neither", "required": ["quote"],
              "properties": {"quote": _ASSET_STRING}}},
    {"if": {"required": ["quote"], "properties": {"quote": _ASSET_STRING}},
     "then": {"description": "base and quote: both or neither", "required": ["base"],
              "properties": {"base": _ASSET_STRING}}},
    {"if": {"required": ["risk"], "properties": {"risk": {"const": True}}},
     "then": {"description": "risk on needs base and quote", "required": ["base", "quote"],
              "properties": {"base": _ASSET_STRING, "quote": _ASSET_STRING}}},
]

#: Error types of the body rules JSON Schema cannot state (a comparison of two
#: fields): the only request-validation 422s a schema-valid body can get.
DISTINCT_ASSETS = "distinct_assets"
FEE_ORDER = "fee_order"


class SymbolBody(_Strict):
    """A new order book. Everything but ``symbol`` is optional; the spec
    fields say what one price unit and one lot are worth, for accounts and
    risk (``engine.core.commands.AddSymbol``): a trade of ``qty`` lots at
    ``price`` moves ``qty * base_per_lot`` base units one way and
    ``price * qty * quote_per_tick`` quote units (plus fees) the other way,
    amounts in the assets' smallest units (``10**-scale``). Without them the
    book is one of market data: no assets, no fees, risk off.

    Rules between fields: ``base`` and ``quote`` both or neither, and
    ``risk`` on needs both (in the schema, ``allOf``); two rules JSON Schema
    cannot state, refused with a 422 of their own error type:
    ``base`` != ``quote`` (``distinct_assets``) and ``maker_fee_ppm`` <=
    ``taker_fee_ppm`` (``fee_order``). An asset that was never added is a
    matcher reject, ``UNKNOWN_ASSET`` (409)."""

    model_config = ConfigDict(json_schema_extra={"allOf": _SYMBOL_RULES, "examples": [
        {"symbol": "AAPL", "tick_size": 5},
        {"symbol": "BTCUSD", "tick_size": 1, "base": "BTC", "quote": "USD", "quote_per_tick": 1, "base_per_lot": 1,
         "maker_fee_ppm": 500, "taker_fee_ppm": 1000, "risk": True, "fee_account": 1}]})

    symbol: str = Field(min_length=1, max_length=32)
    tick_size: int = Field(1, ge=1, le=MAX_PRICE, description=f"smallest price step, price units, 1..{MAX_PRICE}")
    base: Optional[str] = Field(None, min_length=1, max_length=16,
                                description="the asset bought and sold (added with POST /assets first); "
                                            "base and quote: both or neither (absent and null are the same), "
                                            "and two different assets")
    quote: Optional[str] = Field(None, min_length=1, max_length=16, validate_default=True,
                                 description="the asset prices are paid in (added with POST /assets first); "
                                             "not the base")
    quote_per_tick: int = Field(1, ge=1, le=MAX_AMOUNT,
                                description="quote units (10**-scale) one price unit of one lot is worth")
    base_per_lot: int = Field(1, ge=1, le=MAX_AMOUNT, description="base units (10**-scale) in one lot")
    maker_fee_ppm: int = Field(0, ge=0, le=MAX_FEE_PPM,
                               description="maker fee, parts per million of the notional, paid in the quote "
                                           "asset, rounded up; <= taker_fee_ppm (else 422, fee_order)")
    taker_fee_ppm: int = Field(0, ge=0, le=MAX_FEE_PPM, validate_default=True,
                               description="taker fee, parts per million of the notional, paid in the quote "
                                           "asset, rounded up; >= maker_fee_ppm")
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
            raise PydanticCustomError(DISTINCT_ASSETS, "base and quote must be two different assets")
        return v

    @field_validator("taker_fee_ppm")
    @classmethod
    def _fees(cls, v: int, info: ValidationInfo) -> int:
        maker = info.data.get("maker_fee_ppm")
        if maker is not None and maker > v:
            raise PydanticCustomError(FEE_ORDER, "maker_fee_ppm must not exceed taker_fee_ppm")
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

    model_config = ConfigDict(json_schema_extra={"examples": [{"asset": "USD", "scale": 2}]})

    asset: str = Field(min_length=1, max_length=16, description="the asset's name, e.g. USD")
    scale: int = Field(ge=0, le=18, description="decimals: one unit of an amount is 10**-scale of the asset")


class TransferBody(_Strict):
    """A deposit or a withdrawal. ``transfer_id`` is the idempotency key:
    sending it again with the same body answers with the first outcome
    (``duplicate: true``) and changes nothing; the same id with another body
    (deposits and withdrawals share one id space) is rejected,
    ``TRANSFER_CONFLICT``."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"transfer_id": 1, "account": 7, "asset": "USD",
                                                               "amount": 100_000}]})

    transfer_id: int = Field(ge=1, le=MAX_INT64, description="the client's idempotency key, 1..2**63-1")
    account: int = Field(ge=0, le=MAX_INT64, description="the account, 0..2**63-1")
    asset: str = Field(min_length=1, max_length=16, description="an asset added with POST /assets")
    amount: int = Field(ge=1, le=MAX_AMOUNT,
                        description="the asset's smallest units (10**-scale), 1..2**63-1; a withdrawal takes it "
                                    "from the available balance (held funds are not withdrawable); the deposits "
                                    "of one asset may not exceed 2**63-1 units in all (else INVALID_AMOUNT, 422)")


# ------------------------------------------------------------ answer models (docs)

_REJECT_NAMES = [r.name for r in RejectReason]


class Fill(BaseModel):
    seq: int = Field(description="the trade's WAL sequence number")
    match_id: int
    price: int
    qty: int
    maker_order_id: int
    symbol_seq: int


class Reject(BaseModel):
    code: int = Field(ge=100, le=499,
                      description="RejectReason code: 1xx malformed field (422), 2xx state conflict, 3xx own "
                                  "instructions, 4xx pre-trade risk (400 INSUFFICIENT_FUNDS) (409)")
    reason: str = Field(description="RejectReason name", json_schema_extra={"enum": _REJECT_NAMES})
    detail: str


class OrderAnswer(BaseModel):
    """The answer to a new order, a cancel or an amend."""

    seq: int = Field(description="the command's WAL sequence number")
    durable_seq: int = Field(description="WAL watermark when answered")
    symbol: str
    order_id: int = Field(description="the order's id (the gateway's when the new order had none)")
    status: Literal["resting", "filled", "partially_filled", "cancelled", "amended", "rejected"]
    fills: list[Fill]
    filled_qty: int
    leaves_qty: int = Field(description="lots left resting on the book")
    cancelled_qty: int = Field(description="lots that left the book unfilled")
    reject: Optional[Reject]


class BatchItem(BaseModel):
    """One order's answer in a batch: what ``POST /orders`` answers for it."""

    status: int = Field(description="the status POST /orders gives the order: 200 done and durable, 409 or 422 "
                                    "a matcher reject (durable in the WAL), 503 not taken (embedded); 202 "
                                    "queued or 503 (Kafka)")
    body: dict = Field(description="the body POST /orders gives with that status (OrderAnswer, Queued or ErrorOut)")


class BatchAnswer(BaseModel):
    """The answers to a batch, one per order, in the order of the request."""

    results: list[BatchItem]


class SymbolAnswer(BaseModel):
    """The answer to a new order book (the shape of :class:`OrderAnswer`)."""

    seq: int = Field(description="the command's WAL sequence number")
    durable_seq: int = Field(description="WAL watermark when answered")
    symbol: str
    order_id: None = Field(description="always null: a book is no order")
    status: Literal["added", "rejected"]
    fills: list[Fill] = Field(max_length=0, description="always empty")
    filled_qty: Literal[0]
    leaves_qty: Literal[0]
    cancelled_qty: Literal[0]
    reject: Optional[Reject]
    tick_size: int


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
                                                 "INVALID_AMOUNT (422)")


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
    type: Literal["place", "cancel", "amend", "add_symbol", "add_asset", "deposit", "withdraw"]
    symbol: Optional[str] = Field(description="null for a transfer or an asset")
    order_id: Optional[int] = Field(description="null but for a place, cancel or amend")
    transfer_id: Optional[int] = Field(None, description="deposits and withdrawals")
    asset: Optional[str] = Field(None, description="deposits, withdrawals and assets")


# [price, qty]: a list of two, not a tuple (prefixItems), which schemathesis
# 4.32 reads as the draft-4 "items" array and refuses.
_Level = Annotated[list[int], Field(min_length=2, max_length=2)]


class BookOut(BaseModel):
    symbol: str
    seq: int = Field(description="the book is the state right after this WAL sequence number, which is durable")
    bids: list[_Level] = Field(description="[[price, qty], ...], best (highest) first, one per price level")
    asks: list[_Level] = Field(description="[[price, qty], ...], best (lowest) first, one per price level")


class TradeOut(BaseModel):
    match_id: int
    symbol: str
    symbol_seq: int
    seq: Optional[int] = Field(description="the trade's WAL sequence number (null if no longer derivable)")
    cmd_seq: int
    ts_ns: int
    price: int
    qty: int
    taker_side: Literal["buy", "sell"]
    maker_order_id: int
    taker_order_id: int
    maker_account: int
    taker_account: int


class TradesOut(BaseModel):
    seq: int
    trades: list[TradeOut] = Field(description="oldest first, newest last")


class HealthOut(BaseModel):
    status: Literal["ok", "degraded", "failed"] = Field(
        description="ok; degraded: the WAL cannot be written now (a full disk, EIO), so no command is taken "
                    "and nothing new is acknowledged until it can (the engine retries by itself); failed: the "
                    "engine stopped")
    reason: Optional[str] = Field(None, description="why it is degraded or failed (path, error, free space); "
                                                    "null when ok")
    entry: str
    last_seq: Optional[int]
    durable_seq: Optional[int]
    match_sequence: Optional[int]
    market_data_clients: Optional[int]


class ErrorOut(BaseModel):
    detail: str


class ValidationIssue(BaseModel):
    loc: list[Union[str, int]] = Field(description='where: ["body", field], ["path", name], ["query", name]')
    msg: str
    type: str = Field(description="the error type, e.g. missing, int_type, less_than_equal, json_invalid, or "
                                  "distinct_assets / fee_order (rules between fields no schema can state)")
    input: Any = None
    ctx: Optional[dict] = None


class ValidationErrorOut(BaseModel):
    """A request that does not validate or does not parse: nothing reached the engine."""

    detail: list[ValidationIssue]


_DOC_MODELS = (PlaceBody, BatchBody, BatchItem, BatchAnswer, AmendBody, SymbolBody, AssetBody, TransferBody, Fill,
               Reject, OrderAnswer, SymbolAnswer, AssetAnswer, TransferAnswer, BalanceOut, AccountOut, Queued, BookOut, TradeOut, TradesOut, HealthOut,
               ErrorOut, ValidationIssue, ValidationErrorOut)

# ------------------------------------------------------------ per-route answers (docs)

_REF = "#/components/schemas/"


def _ref(name: str) -> dict:
    return {"$ref": _REF + name}


def _json(schema: dict, description: str, **extra: Any) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}, **extra}


#: Per order-entry route: the reasons of the matcher rejects with a 1xx code
#: (422) that a body valid by the document can still get (they depend on the
#: engine's state), and the error types of the body rules JSON Schema cannot
#: state. Nothing else answers 422 to a schema-valid request.
SCHEMA_VALID_422: dict = {
    ("/orders", "post"): {"rejects": ["PRICE_OFF_TICK", "INVALID_BUDGET"], "validation": []},
    ("/orders/{symbol}/{order_id}", "delete"): {"rejects": [], "validation": []},
    ("/orders/{symbol}/{order_id}", "patch"): {"rejects": ["PRICE_OFF_TICK"], "validation": []},
    ("/symbols", "post"): {"rejects": [], "validation": [DISTINCT_ASSETS, FEE_ORDER]},
    ("/assets", "post"): {"rejects": [], "validation": []},
    ("/deposits", "post"): {"rejects": ["INVALID_AMOUNT"], "validation": []},
    ("/withdrawals", "post"): {"rejects": [], "validation": []},
}

# route -> (answer model, Kafka record type, what the 202 carries)
_ENTRY_ROUTES: dict = {
    ("/orders", "post"): ("OrderAnswer", "place", "order"),
    ("/orders/{symbol}/{order_id}", "delete"): ("OrderAnswer", "cancel", "order"),
    ("/orders/{symbol}/{order_id}", "patch"): ("OrderAnswer", "amend", "order"),
    ("/symbols", "post"): ("SymbolAnswer", "add_symbol", "symbol"),
    ("/assets", "post"): ("AssetAnswer", "add_asset", "asset"),
    ("/deposits", "post"): ("TransferAnswer", "deposit", "transfer"),
    ("/withdrawals", "post"): ("TransferAnswer", "withdraw", "transfer"),
}

_QUEUED_FIELDS = {
    "order": {"properties": {"symbol": {"type": "string"}, "order_id": {"type": "integer"}}},
    "symbol": {"properties": {"symbol": {"type": "string"}, "order_id": {"type": "null"}}},
    "asset": {"required": ["asset"],
              "properties": {"symbol": {"type": "null"}, "order_id": {"type": "null"}, "asset": {"type": "string"}}},
    "transfer": {"required": ["transfer_id", "asset"],
                 "properties": {"symbol": {"type": "null"}, "order_id": {"type": "null"},
                                "transfer_id": {"type": "integer"}, "asset": {"type": "string"}}},
}

_VALIDATION_422 = ("the request does not validate: a field out of its schema, a rule between fields, a path or "
                   "query parameter; or the body does not parse (not UTF-8, not JSON: json_invalid; not sent as "
                   "application/json: model_attributes_type). Nothing reached the engine. " + WHOLE_FLOATS
                   + "; " + _NO_SURROGATES)


def _rejected(answer: str, codes: str, reasons: Optional[list] = None) -> dict:
    reject: dict = {"allOf": [_ref("Reject"),
                              {"properties": {"code": {"minimum": 200} if codes == "2xx+" else {"maximum": 199}}}]}
    if reasons is not None:
        reject["allOf"].append({"properties": {"reason": {"enum": reasons}}})
    return {"allOf": [_ref(answer), {"required": ["status", "reject"],
                                     "properties": {"status": {"const": "rejected"}, "reject": reject}}]}


_UNAUTHORIZED = _json(_ref("ErrorOut"), "missing or wrong bearer token (nothing reached the engine)",
                      headers={"WWW-Authenticate": {"description": "Bearer",
                                                    "schema": {"type": "string", "const": "Bearer"}}})


def _entry_responses(route: tuple, embedded: bool, queued: bool, token: bool) -> tuple:
    """``(responses, x-schema-valid-422)`` of an order-entry route."""
    answer, kind, carries = _ENTRY_ROUTES[route]
    allowed = SCHEMA_VALID_422[route]
    out: dict = {}
    if embedded:
        out["200"] = _json({"allOf": [_ref(answer), {"properties": {"status": {"not": {"const": "rejected"}},
                                                                    "reject": {"type": "null"}}}]},
                           "embedded engine: done and durable")
    if queued:
        out["202"] = _json({"allOf": [_ref("Queued"), {"properties": {"type": {"const": kind}}},
                                      _QUEUED_FIELDS[carries]]},
                           "Kafka: the broker acknowledged the record (the engine decides later)")
    if token:
        out["401"] = _UNAUTHORIZED
    if embedded:
        out["409"] = _json(_rejected(answer, "2xx+"),
                           "rejected by the matcher, the reject durable in the WAL: a conflict with the engine's "
                           "state (2xx: unknown symbol, order or asset, duplicate id, transfer conflict), the "
                           "order's own instructions (3xx: post-only would take) or pre-trade risk "
                           "(4xx: INSUFFICIENT_FUNDS)")
    variants = [_ref("ValidationErrorOut")]
    text = _VALIDATION_422
    if embedded and allowed["rejects"]:
        variants.append(_rejected(answer, "1xx", allowed["rejects"]))
        text += (". Or a matcher reject (durable in the WAL) of a rule that depends on the engine's state: "
                 + ", ".join(allowed["rejects"]))
    if allowed["validation"]:
        text += ". Rules between fields no schema can state: " + ", ".join(allowed["validation"])
    out["422"] = _json(variants[0] if len(variants) == 1 else {"anyOf": variants}, text)
    out["503"] = _json(_ref("ErrorOut"), "order entry unavailable (the engine stopped or failed, its WAL "
                                         "cannot be written now (a full disk: nothing was submitted), the broker "
                                         "is unreachable or did not acknowledge)")
    extra = {"rejects": allowed["rejects"] if embedded else [], "validation": allowed["validation"]}
    return out, extra


def _batch_responses(embedded: bool, queued: bool, token: bool) -> dict:
    statuses = ([200, 409, 422] if embedded else []) + ([202] if queued else []) + [503]
    bodies = ([_ref("OrderAnswer")] if embedded else []) + ([_ref("Queued")] if queued else []) + [_ref("ErrorOut")]
    item = {"allOf": [_ref("BatchItem"), {"properties": {"status": {"enum": statuses},
                                                         "body": {"anyOf": bodies}}}]}
    out = {"200": _json({"allOf": [_ref("BatchAnswer"), {"properties": {"results": {"items": item}}}]},
                        "one answer per order, in the order of the request; each is what POST /orders answers "
                        "for it (status and body), given once every order of the batch is durable (embedded) "
                        "or acknowledged by the broker (Kafka)")}
    if token:
        out["401"] = _UNAUTHORIZED
    out["422"] = _json(_ref("ValidationErrorOut"), _VALIDATION_422 + ". One order that does not validate fails "
                                                                      "the whole batch")
    return out


_READ_503 = ("no engine in this process (a gateway that only does order entry), the engine failed, its WAL cannot "
             "be written now (a full disk), or it did not "
             "pause at a durable point in time")


def _read_responses(route: tuple, has_view: bool) -> dict:
    path = route[0]
    if path == "/health":
        out = {"200": _json({"allOf": [_ref("HealthOut"), {"properties": {"status": {"const": "ok"}}}]},
                            "the engine's sequence numbers (all null without an engine in this process)")}
        if has_view:
            out["503"] = _json({"allOf": [_ref("HealthOut"),
                                          {"properties": {"status": {"enum": ["degraded", "failed"]}}}]},
                               "the engine is degraded (its WAL cannot be written now) or failed")
        return out
    model = {"/books/{symbol}": "BookOut", "/trades": "TradesOut", "/accounts/{account}": "AccountOut"}[path]
    out = {"200": _json(_ref(model), "the durable state")}
    if path != "/accounts/{account}":
        out["404"] = _json(_ref("ErrorOut"), "no order book for the symbol")
    out["422"] = _json(_ref("ValidationErrorOut"), "a path or query parameter out of its schema")
    out["503"] = _json(_ref("ErrorOut"), _READ_503)
    return out


def _exact_schemas() -> dict:
    """The components, straight from pydantic: FastAPI's OpenAPI model keeps
    ``minimum``/``maximum`` as floats, and 2**63-1 as a float is 2**63."""
    schemas: dict = {}
    for model in _DOC_MODELS:
        schema = model.model_json_schema(ref_template=_REF + "{model}")
        for name, sub in schema.pop("$defs", {}).items():
            schemas.setdefault(name, sub)
        schemas[model.__name__] = schema
    return dict(sorted(schemas.items()))


def build_openapi(app: FastAPI, entry: OrderEntry, view: Any, token: Optional[str]) -> dict:
    """The exact OpenAPI document of ``app`` (see the module docstring)."""
    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes,
                      separate_input_output_schemas=False)
    components = doc.setdefault("components", {})
    components["schemas"] = _exact_schemas()
    embedded = not isinstance(entry, KafkaEntry)
    queued = not isinstance(entry, EmbeddedEntry)
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            route = (path, method)
            if route == ("/orders/batch", "post"):
                op["responses"] = _batch_responses(embedded, queued, bool(token))
                op["x-schema-valid-422"] = {"rejects": [], "validation": []}
            elif route in _ENTRY_ROUTES:
                op["responses"], op["x-schema-valid-422"] = _entry_responses(route, embedded, queued, bool(token))
            else:
                op["responses"] = _read_responses(route, view is not None)
                op.pop("security", None)
    if not token:
        components.pop("securitySchemes", None)
    return doc


# --------------------------------------------------------------------- app


class _AsciiJSONResponse(JSONResponse):
    """JSON that always encodes: a 422 echoes its input, which may hold a lone
    surrogate (UTF-8 cannot encode it: escaped, as every non-ASCII character)
    or NaN, Infinity or 1e400 (Python's JSON reader takes them; JSON has no
    such numbers: sent as the strings "nan", "inf", "-inf")."""

    def render(self, content: Any) -> bytes:
        return json.dumps(_finite(content), ensure_ascii=True, allow_nan=False,
                          separators=(",", ":")).encode("ascii")


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else str(obj)
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def create_app(entry: OrderEntry, view: Any = None, *, token: Optional[str] = None,
               market_data_queue: int = 10_000, read_timeout_s: float = 5.0, metrics: Any = None,
               stream_in_flight: int = 10_000, fast_orders: Optional[bool] = None) -> FastAPI:
    """The gateway app.

    Args:
        entry: where orders go (:class:`~engine.gateway.entry.EmbeddedEntry`
            or :class:`~engine.gateway.entry.KafkaEntry`). The app starts it
            on startup (a failure is logged; orders answer 503 until it
            connects) and stops it on shutdown. Its kind decides what the
            OpenAPI document says order entry answers (200/409/422 embedded,
            202 Kafka).
        view: the ``EngineRuntime`` for reads and market data (may be the
            embedded entry's); ``None``: reads answer 503, no market data.
        token: when set (not empty), order entry and admin endpoints need
            ``Authorization: Bearer <token>`` (401 otherwise); reads stay open.
            Without one the document declares no security at all.
        market_data_queue: messages a WebSocket client may have waiting
            before it is dropped.
        read_timeout_s: a read waits at most this long for a durable point
            (the engine busy without a pause) before answering 503.
        metrics: an ``engine.gateway.metrics.HttpMetrics`` to count requests
            by route and status into (a middleware; no route is added).
        stream_in_flight: orders one ``WS /ws/orders`` client may have
            waiting for their answers before the gateway stops reading it.
        fast_orders: answer well-formed ``POST /orders`` requests without
            FastAPI's routing and dependency injection
            (``engine/gateway/fast_orders.py``: the same answers, measured
            in ``scripts/bench_gateway.py``); ``False``: every request
            through FastAPI; ``None``: as ``EVENGINE_HTTP_FAST_ORDERS`` says
            (on unless it is ``0``).

    Raises:
        ValueError: ``fast_orders`` is None and ``EVENGINE_HTTP_FAST_ORDERS``
            is neither ``0`` nor ``1``.
    """
    token = token or None
    if fast_orders is None:
        fast_orders = fast_orders_enabled()
    hub = MarketDataHub(view, max_queue=market_data_queue) if view is not None else None
    ids = OrderIds()
    parse_stream = stream_order_parser(ids)

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
                              "budgets, balances) in integers of the asset's smallest unit, 10**-scale. Every "
                              "status a route answers is listed with its body; x-schema-valid-422 lists the only "
                              "422 answers a request valid by this document can get (rules of the engine's "
                              "state, rules between fields no schema can state). " + WHOLE_FLOATS + ".",
                  lifespan=lifespan)
    app.state.entry = entry
    app.state.view = view
    app.state.market_data = hub
    app.state.token = token
    app.state.order_ids = ids
    if fast_orders:
        async def answer_place(body: PlaceBody) -> JSONResponse:
            try:
                return await submit(place_order_message(body, ids))
            except HTTPException as exc:    # what the exception handler below makes of it
                return _AsciiJSONResponse({"detail": exc.detail}, status_code=exc.status_code)

        app.add_middleware(FastOrderPath, model=PlaceBody, answer=answer_place, token=token, router=app.router)
    if metrics is not None:
        from .metrics import HttpMetricsMiddleware
        app.add_middleware(HttpMetricsMiddleware, metrics=metrics, router=app.router)

    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app, entry, view, token)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return _AsciiJSONResponse({"detail": jsonable_encoder(exc.errors())}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and request.method in ("POST", "PATCH", "PUT"):
            # FastAPI's answer to a body it could not read (not UTF-8): one
            # that is not JSON is a 422 (json_invalid) already, so this is too.
            cause = exc.__cause__
            return _AsciiJSONResponse({"detail": [{
                "type": "json_invalid", "loc": ["body", 0], "msg": "JSON decode error", "input": {},
                "ctx": {"error": f"{type(cause).__name__}: {cause}"[:200] if cause else str(exc.detail)}}]},
                status_code=422)
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            # Starlette names the methods of the first route of the path only;
            # DELETE and PATCH /orders/{symbol}/{order_id} are two routes.
            methods: set = set()
            for route in request.app.router.routes:
                if getattr(route, "methods", None) and route.matches(request.scope)[0] != Match.NONE:
                    methods |= route.methods
            if methods:
                headers["Allow"] = ", ".join(sorted(methods))
        return _AsciiJSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers or None)

    bearer = HTTPBearer(auto_error=False, description="order entry and admin routes of a gateway with a token")

    async def require_token(creds: Optional[HTTPAuthorizationCredentials] = Depends(bearer)) -> None:
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

    auth = [Depends(require_token)] if token else []

    @app.post("/orders", tags=["order entry"], dependencies=auth, summary="Enter a new order")
    async def place_order(body: PlaceBody) -> JSONResponse:
        """A limit order (the default) rests what it does not fill (gtc), or
        cancels it (ioc, fok: all or nothing); a market order takes what is
        there (ioc, fok). The answer lists the fills, durable.

        Rules between fields: in the schema. Rules of the book (422, a matcher
        reject): the price on the tick (``PRICE_OFF_TICK``); a market buy in a
        book with risk on needs ``max_quote`` (``INVALID_BUDGET``)."""
        return await submit(place_order_message(body, ids))

    @app.post("/orders/batch", tags=["order entry"], dependencies=auth, summary="Enter up to 1000 new orders")
    async def place_orders(body: BatchBody) -> JSONResponse:
        """The orders in their order, each answered as ``POST /orders`` answers
        it (status and body, in ``results``), once all are durable. A matcher
        reject of one order does not stop the others."""
        answers = await entry.submit_many([place_order_message(b, ids) for b in body.orders])
        return _AsciiJSONResponse({"results": [
            {"status": 503, "body": {"detail": f"order entry unavailable: {a}"}} if isinstance(a, EntryUnavailable)
            else {"status": a.status_code, "body": a.body} for a in answers]})

    @app.delete("/orders/{symbol}/{order_id}", tags=["order entry"], dependencies=auth,
                summary="Cancel a resting order")
    async def cancel_order(symbol: SymbolPath,
                           order_id: OrderIdPath) -> JSONResponse:
        """An unknown symbol or order is a matcher reject, 409."""
        return await submit({"type": "cancel", "symbol": symbol, "order_id": order_id})

    @app.patch("/orders/{symbol}/{order_id}", tags=["order entry"], dependencies=auth,
               summary="Amend a resting order (price, leaves quantity)")
    async def amend_order(body: AmendBody, symbol: SymbolPath,
                          order_id: OrderIdPath) -> JSONResponse:
        """An unknown symbol or order is a matcher reject, 409; a price off
        the book's tick, 422 (``PRICE_OFF_TICK``)."""
        return await submit({"type": "amend", "symbol": symbol, "order_id": order_id,
                             "price": body.price, "qty": body.qty})

    @app.post("/symbols", tags=["admin"], dependencies=auth, summary="Add an order book")
    async def add_symbol(body: SymbolBody) -> JSONResponse:
        """A new order book; with ``base``/``quote`` its trades settle between
        accounts, with ``risk`` its orders must be funded. An unknown asset
        is a matcher reject, ``UNKNOWN_ASSET`` (409); a symbol that has a book,
        ``SYMBOL_EXISTS`` (409). Two rules JSON Schema cannot state answer
        422 with their own error type: ``base`` == ``quote``
        (``distinct_assets``), ``maker_fee_ppm`` > ``taker_fee_ppm``
        (``fee_order``)."""
        return await submit({"type": "add_symbol", "symbol": body.symbol, "tick_size": body.tick_size,
                             **body.model_dump(exclude_defaults=True)})

    @app.post("/assets", tags=["admin"], dependencies=auth, summary="Add an asset")
    async def add_asset(body: AssetBody) -> JSONResponse:
        """A new asset, needed before deposits of it and books that trade it.
        ``scale`` fixes its smallest unit, ``10**-scale``, for good. An asset
        that exists is a matcher reject, ``ASSET_EXISTS`` (409)."""
        return await submit({"type": "add_asset", "asset": body.asset, "scale": body.scale})

    @app.post("/deposits", tags=["accounts"], dependencies=auth, summary="Credit an account")
    async def deposit(body: TransferBody) -> JSONResponse:
        """Credit ``amount`` (the asset's smallest units, ``10**-scale``) to the
        account's available balance. Idempotent by ``transfer_id``. An unknown
        asset is ``UNKNOWN_ASSET`` (409); deposits of an asset beyond 2**63-1
        units in all, ``INVALID_AMOUNT`` (422)."""
        return await submit({"type": "deposit", **body.model_dump()})

    @app.post("/withdrawals", tags=["accounts"], dependencies=auth, summary="Debit an account")
    async def withdraw(body: TransferBody) -> JSONResponse:
        """Debit ``amount`` (the asset's smallest units, ``10**-scale``) from the
        account's *available* balance; ``INSUFFICIENT_FUNDS`` (409, nothing
        changed) when it is short. Idempotent by ``transfer_id``, one id
        space with deposits."""
        return await submit({"type": "withdraw", **body.model_dump()})

    @app.get("/books/{symbol}", tags=["reads"], response_model=BookOut,
             summary="Order book depth, aggregated per price level")
    async def get_book(symbol: SymbolPath,
                       depth: DepthQuery = 10) -> dict:
        matcher = await at_durable()
        book = matcher.books.get(symbol)
        if book is None:
            raise HTTPException(404, f"no order book for {symbol[:32]!r}")
        return {"symbol": symbol, "seq": matcher.last_seq, "bids": book.depth(1, depth),
                "asks": book.depth(2, depth)}

    @app.get("/trades", tags=["reads"], response_model=TradesOut, summary="Recent trades, newest last")
    async def get_trades(symbol: str = Query(None, min_length=1, max_length=32,   # absent: every book's
                                             description="only this book's trades (404 if none)"),
                         limit: LimitQuery = 100) -> dict:
        matcher = await at_durable()
        if symbol is not None and symbol not in matcher.books:
            raise HTTPException(404, f"no order book for {symbol!r}")
        return {"seq": matcher.last_seq, "trades": recent_trades(matcher.trades, symbol, limit)}

    @app.get("/accounts/{account}", tags=["reads", "accounts"], response_model=AccountOut,
             summary="An account's balances, per asset")
    async def get_account(account: AccountPath) -> dict:
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

    @app.get("/health", tags=["reads"], response_model=HealthOut, summary="Engine sequence numbers")
    async def health() -> Any:
        if view is None:
            return {"status": "ok", "entry": entry.name, "last_seq": None, "durable_seq": None,
                    "match_sequence": None, "market_data_clients": None}
        m = view.engine.matcher
        degraded = view.degraded
        status = "failed" if view.failed is not None else "degraded" if degraded is not None else "ok"
        reason = str(view.failed) if view.failed is not None else degraded
        body = {"status": status, "reason": reason, "entry": entry.name,
                "last_seq": m.last_seq, "durable_seq": view.engine.wal.peek_durable(),
                "match_sequence": m.match_sequence, "market_data_clients": len(hub.clients)}
        return body if status == "ok" else JSONResponse(body, status_code=503)

    @app.websocket("/ws/orders")
    async def order_stream(websocket: WebSocket) -> None:
        """Streaming order entry: many orders in flight, each answered once
        durable, in order (``engine/gateway/order_stream.py``)."""
        if token is not None:
            scheme, _, given = (websocket.headers.get("authorization") or "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.encode()):
                await websocket.close(code=1008, reason="order entry needs the header 'Authorization: Bearer <token>'")
                return
        await websocket.accept()
        await OrderStream(websocket, entry, parse_stream, max_in_flight=stream_in_flight).serve()

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
