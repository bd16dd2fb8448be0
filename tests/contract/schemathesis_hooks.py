"""Schemathesis hooks of the contract test (loaded with ``SCHEMATHESIS_HOOKS``).

One check, ``positive_data_acceptance_documented``: schemathesis's own
``positive_data_acceptance`` (a request valid by the document must not be
refused: no 400, 405, 406, 415, 422...), except for the 422 answers the
document itself lists on the operation under ``x-schema-valid-422``, which
are the rules JSON Schema cannot state:

- ``rejects``: matcher reject reasons (a 1xx ``RejectReason``, in the WAL)
  of rules that depend on the engine's state: a price off the book's tick
  (``PRICE_OFF_TICK``), a market buy without a budget in a book with risk on
  (``INVALID_BUDGET``), deposits of an asset beyond 2**63-1 units in all
  (``INVALID_AMOUNT``);
- ``validation``: request-validation error types of rules between two
  fields (``distinct_assets``: base != quote; ``fee_order``: maker fee <=
  taker fee).

A 422 is let through only when *every* reason in its body is one the
operation lists; anything else (a request-validation error of any other
type, a reject the operation does not list) fails as schemathesis would.

One ``before_call`` hook: a positive ``POST /symbols`` body is put on the
two rules between fields it was generated without (a random base equals
the quote, a random maker fee exceeds the taker fee half the time), so that
most generated books exist and the orders after them reach a real book.
Schemathesis re-derives whether the edited body is still positive. Those two
rules' 422s are tested in ``tests/unit/gateway``.
"""

from __future__ import annotations

import json
from typing import Any

import schemathesis
from schemathesis.specs.openapi.checks import positive_data_acceptance


def documented_422(case: Any, response: Any) -> bool:
    """Whether ``response`` (a 422) is one the operation's ``x-schema-valid-422`` lists."""
    allowed = (case.operation.definition.raw or {}).get("x-schema-valid-422") or {}
    try:
        body = json.loads(response.content)
    except ValueError:
        return False
    if not isinstance(body, dict):
        return False
    reject = body.get("reject")
    if body.get("status") == "rejected" and isinstance(reject, dict):
        return reject.get("reason") in allowed.get("rejects", ())
    detail = body.get("detail")
    if isinstance(detail, list) and detail:
        return all(isinstance(e, dict) and e.get("type") in allowed.get("validation", ()) for e in detail)
    return False


@schemathesis.check
def positive_data_acceptance_documented(ctx: Any, response: Any, case: Any) -> Any:
    """``positive_data_acceptance`` but for the 422s the operation documents
    as the only ones a schema-valid request can get."""
    try:
        return positive_data_acceptance(ctx, response, case)
    except AssertionError:
        if response.status_code == 422 and documented_422(case, response):
            return None
        raise


@schemathesis.hook
def before_call(context: Any, case: Any, **kwargs: Any) -> None:
    if case.operation.path != "/symbols" or case.operation.method.upper() != "POST":
        return
    meta = case.meta
    body = case.body
    if meta is None or not meta.generation.mode.is_positive or not isinstance(body, dict):
        return
    base, quote = body.get("base"), body.get("quote")
    if isinstance(base, str) and base == quote:
        body["quote"] = quote[:-1] + ("Y" if quote.endswith("X") else "X")     # same length, another asset
    maker, taker = body.get("maker_fee_ppm", 0), body.get("taker_fee_ppm", 0)
    if isinstance(maker, (int, float)) and isinstance(taker, (int, float)) and maker > taker:
        body["maker_fee_ppm"], body["taker_fee_ppm"] = taker, maker
