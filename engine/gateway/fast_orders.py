"""``POST /orders`` without FastAPI's routing and dependency injection, for the
requests that are what they should be.

Measured (``scripts/bench_gateway.py``): FastAPI spends more per request on
routing, solving dependencies and wrapping the body's validation than the
engine spends matching and logging the order, and ``GET /health`` alone, which
does nothing, ran below the 10,000 orders/s issue 12 asks of single orders.
:class:`FastOrderPath` is a pure ASGI middleware in front of the app. A
request it can answer exactly as the route would goes straight to the order
entry:

- ``POST`` to exactly ``/orders``;
- ``Content-Type: application/json`` (any case, with parameters or not);
  without one FastAPI (strict content type, its default) does not read the
  body as JSON, and other ``+json`` types are left to it;
- the bearer token, when the gateway has one, given and right;
- a body ``orjson`` parses into an object that :class:`PlaceBody` validates
  (the route's own model, so the same rules).

Anything else (a bad token, a body that does not parse or validate, another
media type) goes on to FastAPI with the body it read, so every error answer,
its status and its details, is the route's own; the OpenAPI document is
unchanged. ``orjson`` refuses what Python's JSON reader takes beyond JSON
(``NaN``, integers over 64 bits): those go on to FastAPI too.
"""

from __future__ import annotations

import hmac
import os
from typing import Any, Awaitable, Callable, Optional

import orjson
from pydantic import BaseModel, ValidationError

__all__ = ["FastOrderPath", "fast_orders_enabled"]

_JSON = b"application/json"


def fast_orders_enabled() -> bool:
    """``EVENGINE_HTTP_FAST_ORDERS``: unset or ``1``, the fast path is on; ``0``,
    every request goes through FastAPI (to compare, or to rule it out).

    Raises:
        ValueError: any other value.
    """
    value = os.environ.get("EVENGINE_HTTP_FAST_ORDERS", "1")
    if value not in ("0", "1"):
        raise ValueError(f"EVENGINE_HTTP_FAST_ORDERS must be '0' or '1', got {value!r}")
    return value == "1"


class FastOrderPath:
    """Pure ASGI middleware: answers well-formed ``POST /orders`` itself.

    Args:
        app: the ASGI app behind it (the FastAPI app's middleware stack).
        model: the route's body model (``PlaceBody``).
        answer: ``await answer(body) -> Response``: what the route does with a
            validated body (build the ``orders`` message, submit it, answer);
            an ASGI response object.
        token: the gateway's bearer token, or ``None``.
        router: the app's router: its ``POST /orders`` route is put in the
            scope as routing would put it (the metrics middleware reads it).

    Attributes:
        fast: requests answered here; ``passed_on``: ``POST /orders``
            requests handed on to FastAPI.
    """

    def __init__(self, app: Any, *, model: type[BaseModel], answer: Callable[[Any], Awaitable[Any]],
                 token: Optional[str] = None, router: Any = None) -> None:
        self.app = app
        self.model = model
        self.answer = answer
        self.token = token.encode() if token else None
        self.router = router
        self.route: Any = None
        self.fast = 0          # requests answered here
        self.passed_on = 0     # POST /orders requests handed to FastAPI

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/orders":
            await self.app(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":    # the client went away: FastAPI's business
                await self.app(scope, _replay(b"".join(chunks), receive, message), send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        validated = self._validate(scope, body)
        if validated is None:
            self.passed_on += 1
            await self.app(scope, _replay(body, receive), send)
            return
        self.fast += 1
        if self.route is None and self.router is not None:
            self.route = next((r for r in self.router.routes if getattr(r, "path", None) == "/orders"
                               and "POST" in (getattr(r, "methods", None) or ())), None)
        if self.route is not None:
            scope["route"] = self.route
        response = await self.answer(validated)
        await response(scope, receive, send)

    def _validate(self, scope: dict, body: bytes) -> Optional[BaseModel]:
        """The validated body, or ``None`` when FastAPI must answer."""
        auth = None
        ctype = None
        for name, value in scope["headers"]:   # the first of each, as Starlette's headers.get
            if name == b"content-type":
                if ctype is None:
                    ctype = value
            elif name == b"authorization":
                if auth is None:
                    auth = value
        if ctype is None or not _is_json(ctype):
            return None
        if self.token is not None:
            if auth is None or not _token_matches(auth, self.token):
                return None
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        if type(obj) is not dict:
            return None
        try:
            return self.model.model_validate(obj)
        except ValidationError:
            return None


def _is_json(ctype: bytes) -> bool:
    """``application/json``, any case, with or without parameters."""
    media = ctype.split(b";", 1)[0].strip().lower()
    return media == _JSON


def _token_matches(auth: bytes, token: bytes) -> bool:
    """FastAPI's ``HTTPBearer`` and the route's check, on the raw header: read
    as Latin-1 (as Starlette reads headers), scheme ``bearer`` in any case
    before the first space, the rest stripped, compared UTF-8 encoded in
    constant time."""
    scheme, _, credentials = auth.decode("latin-1").partition(" ")
    credentials = credentials.strip()
    return scheme.lower() == "bearer" and bool(credentials) and hmac.compare_digest(credentials.encode(), token)


def _replay(body: bytes, receive: Any, first: Optional[dict] = None) -> Any:
    """A ``receive`` that gives the body already read once (or the message
    that ended the read), then the connection's own ``receive``."""
    pending = [first if first is not None else {"type": "http.request", "body": body, "more_body": False}]

    async def again() -> dict:
        if pending:
            return pending.pop()
        return await receive()

    return again
