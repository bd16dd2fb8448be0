"""Payload <-> command/event objects, and the JSON shape used by the CLI.

A WAL payload is the msgpack array of a command or event (kind first); see
``eventstore/FORMAT.md``, payloads.
"""

from __future__ import annotations

from typing import Any

from .commands import COMMAND_CLASSES, LEGACY_FIELD_COUNTS, upgrade_command
from .events import EVENT_CLASSES
from .types import Kind

__all__ = ["decode_payload", "to_json", "KIND_NAMES"]

_CLASSES = {**COMMAND_CLASSES, **EVENT_CLASSES}

KIND_NAMES = {
    Kind.ADD_SYMBOL.value: "add_symbol", Kind.PLACE.value: "place", Kind.CANCEL.value: "cancel",
    Kind.AMEND.value: "amend", Kind.BAD_INPUT.value: "bad_input", Kind.TRADE.value: "trade",
    Kind.REJECTED.value: "rejected", Kind.RESTED.value: "rested", Kind.CANCELLED.value: "cancelled",
    Kind.AMENDED.value: "amended", Kind.SYMBOL_ADDED.value: "symbol_added",
    Kind.ADD_ASSET.value: "add_asset", Kind.DEPOSIT.value: "deposit", Kind.WITHDRAW.value: "withdraw",
    Kind.ASSET_ADDED.value: "asset_added", Kind.TRANSFER_DONE.value: "transfer_done",
    Kind.BALANCE_CHANGED.value: "balance_changed",
}


def decode_payload(payload: Any) -> Any:
    """The command or event a WAL payload encodes.

    A place or add-symbol record in the layout of WAL format 2 comes back
    in today's layout (:func:`~engine.core.commands.upgrade_command`).

    Raises:
        ValueError: not an array, unknown kind, or wrong number of fields.
    """
    if not isinstance(payload, (tuple, list)) or not payload:
        raise ValueError(f"payload is not a non-empty array: {payload!r:.80}")
    cls = _CLASSES.get(payload[0])
    if cls is None:
        raise ValueError(f"unknown payload kind {payload[0]!r}")
    if len(payload) == LEGACY_FIELD_COUNTS.get(payload[0]):
        payload = upgrade_command(payload)   # a record of WAL format 2
    try:
        return cls(*payload)
    except TypeError as exc:
        raise ValueError(f"payload of kind {payload[0]} has {len(payload)} fields: {exc}") from exc


def to_json(seq: int, obj: Any) -> dict:
    """``{"seq": seq, "type": "place", <fields>...}`` for a command or event."""
    out = {"seq": seq, "type": KIND_NAMES.get(obj[0], str(obj[0]))}
    fields = getattr(obj, "_fields", None)
    if fields is None:
        out["payload"] = list(obj)
        return out
    for name, value in zip(fields[1:], obj[1:]):
        out[name] = value if not isinstance(value, bytes) else value.hex()
    return out
