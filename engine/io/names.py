"""Names beside codes: the one place the CLI's JSON gets a kind's or a reason's name.

Every record the CLI prints keeps its numeric codes (they are stable, part of
``eventstore/FORMAT.md``'s payloads) and gains a name next to each, so a
reader never has to look a number up::

    {"seq": 151, "kind": 65, "type": "rejected", ..., "reason": 202, "reason_name": "UNKNOWN_ORDER", ...}

- A kind's name is ``engine.core.KIND_NAMES``' (``"rejected"``, the ``type``
  field the CLI has always printed).
- A reason's name is its enum member's (``"POST_ONLY_WOULD_TAKE"``), and which
  enum applies follows from the kind of the event holding it:
  :data:`REASON_ENUMS` (a reject: ``RejectReason``; a cancel:
  ``CancelReason``; a balance change: ``LedgerReason``).
- A code no enum knows (a newer engine's WAL read by an older CLI) is named by
  the number as a string (``"999"``): output never fails on a name.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any, Optional

from engine.core import KIND_NAMES, CancelReason, Kind, LedgerReason, RejectReason, to_json

__all__ = ["REASON_ENUMS", "kind_name", "reason_name", "reason_code", "event_json"]

REASON_ENUMS: dict[int, type[IntEnum]] = {
    Kind.REJECTED.value: RejectReason,
    Kind.CANCELLED.value: CancelReason,
    Kind.BALANCE_CHANGED.value: LedgerReason,
}
"""Kind of event -> the enum its ``reason`` field is a code of."""


def _reason_enum(kind_of_event: int) -> type[IntEnum]:
    enum = REASON_ENUMS.get(kind_of_event)
    if enum is None:
        raise ValueError(f"events of kind {kind_of_event} carry no reason code "
                         f"(those that do: {sorted(REASON_ENUMS)})")
    return enum


def kind_name(kind: Any) -> str:
    """``"rejected"`` for 65: the ``type`` name of a command or event kind;
    ``str(kind)`` for a kind no release knows."""
    return KIND_NAMES.get(kind, str(kind)) if isinstance(kind, int) else str(kind)


def reason_name(kind_of_event: int, code: Any) -> str:
    """The name of ``code`` in the reason enum of ``kind_of_event``'s events:
    ``reason_name(Kind.REJECTED, 300) == "POST_ONLY_WOULD_TAKE"``,
    ``reason_name(Kind.CANCELLED, 2) == "IOC_REMAINDER"``,
    ``reason_name(Kind.BALANCE_CHANGED, 5) == "FILL"``; ``str(code)`` for a
    code that enum does not have.

    Raises:
        ValueError: events of ``kind_of_event`` have no reason field.
    """
    enum = _reason_enum(kind_of_event)
    if isinstance(code, int) and not isinstance(code, bool):
        try:
            return enum(code).name
        except ValueError:
            pass
    return str(code)


def reason_code(kind_of_event: int, value: Any) -> Optional[int]:
    """The code behind a reason written as a code or as a name in any case
    (``"ioc_remainder"``, ``"IOC_REMAINDER"``, ``2``, ``2.0``, ``"2"`` -> 2 for
    a cancel); ``None`` for ``None``, NaN or a name the enum does not have.

    Raises:
        ValueError: events of ``kind_of_event`` have no reason field.
    """
    enum = _reason_enum(kind_of_event)
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None   # a pandas column of codes and nulls
    text = str(value).strip()
    if text.lstrip("-").isdigit():
        return int(text)
    member = enum.__members__.get(text.upper())
    return None if member is None else member.value


def event_json(seq: int, obj: Any) -> dict:
    """``engine.core.to_json`` with the names beside the codes: ``kind`` (the
    number) right after ``seq`` and before ``type`` (its name), and for an
    event with a reason (:data:`REASON_ENUMS`) ``reason_name`` right after
    ``reason``; a transfer's ``kind_of`` (7 deposit, 8 withdraw) gains
    ``kind_of_name``. Every field of ``to_json`` is kept, in its order."""
    base = to_json(seq, obj)
    kind = obj[0]
    out = {"seq": base.pop("seq"), "kind": kind}
    reasons = kind in REASON_ENUMS
    for key, value in base.items():
        out[key] = value
        if key == "reason" and reasons:
            out["reason_name"] = reason_name(kind, value)
        elif key == "kind_of":
            out["kind_of_name"] = kind_name(value)
    return out
