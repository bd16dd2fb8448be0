"""Wire formats of the Kafka topics ``orders``, ``trades`` and ``ledger`` (spec: ``engine/io/MESSAGES.md``).

``orders`` values are a JSON object (UTF-8) or a msgpack map, told apart by the
first byte. :func:`decode_order` turns one into a command for the matcher and
never raises: a value that is not an order at all (not JSON or msgpack, not an
object, an unknown ``type``, a missing or unknown field) becomes a
:class:`~engine.core.commands.BadInput` holding the raw bytes and the reason,
which the matcher rejects and the WAL logs, so the input offset moves past it
and nothing is lost. Values of the right names but wrong contents (a negative
``qty``, ``side: "long"``) pass through unchanged: the matcher rejects them
with its own reason codes (``engine.core.types.RejectReason``).

``orders`` also carries the money commands (``deposit``, ``withdraw``) and
``add_asset``. ``trades`` values are JSON objects made by :func:`encode_trade`,
keyed by symbol so that one symbol's trades stay in order on one partition;
``ledger`` values (:func:`encode_ledger`) are balance changes, keyed by account.
"""

from __future__ import annotations

import json
from typing import Any, Optional

import msgpack
import orjson

from engine.core.commands import (AddAsset, AddSymbol, AmendOrder, BadInput, CancelOrder, Command, Deposit,
                                  PlaceOrder, Withdraw)
from engine.core.types import LedgerReason

from .shard import DEFAULT_SHARD, is_shard_id

_new = tuple.__new__   # a NamedTuple without the frame of its Python-level __new__ (the fetch loop's hot path)

__all__ = ["decode_order", "decode_record", "command_from_order", "encode_order", "encode_trade", "decode_trade",
           "trade_message", "order_from_command", "ledger_message", "encode_ledger", "decode_ledger",
           "SIDES", "ORDER_TYPES", "TIFS", "MAX_RAW_BYTES", "LEDGER_REASONS"]

SIDES = {"buy": 1, "sell": 2}
ORDER_TYPES = {"limit": 1, "market": 2}
TIFS = {"gtc": 1, "ioc": 2, "fok": 3}
SIDE_NAMES = {1: "buy", 2: "sell"}
MAX_RAW_BYTES = 1024
"""How much of a message that is not an order is kept in its ``BadInput``."""

_FIELDS = {   # type -> (required fields, allowed fields)
    "place": ({"type", "symbol", "order_id", "side", "qty"},
              {"price", "order_type", "tif", "post_only", "account", "max_quote", "ts_ns"}),
    "cancel": ({"type", "symbol", "order_id"}, {"ts_ns"}),
    "amend": ({"type", "symbol", "order_id", "price", "qty"}, {"ts_ns"}),
    "add_symbol": ({"type", "symbol"}, {"tick_size", "ts_ns", "base", "quote", "quote_per_tick", "base_per_lot",
                                        "maker_fee_ppm", "taker_fee_ppm", "risk", "fee_account"}),
    "add_asset": ({"type", "asset", "scale"}, {"ts_ns"}),
    "deposit": ({"type", "transfer_id", "account", "asset", "amount"}, {"ts_ns"}),
    "withdraw": ({"type", "transfer_id", "account", "asset", "amount"}, {"ts_ns"}),
}
_FIELDS = {k: (frozenset(req), frozenset(req | opt)) for k, (req, opt) in _FIELDS.items()}


def _raw(value: bytes) -> Any:
    """What a BadInput keeps of the value: text when it is UTF-8, else bytes."""
    cut = value[:MAX_RAW_BYTES]
    try:
        return cut.decode("utf-8")
    except UnicodeDecodeError:
        return bytes(cut)


def _keep(raw: Any) -> Any:
    """What a BadInput keeps: :func:`_raw` of bytes, a parsed object as is."""
    return _raw(raw) if isinstance(raw, (bytes, bytearray)) else raw


def _parse(value: bytes) -> tuple[Optional[dict], str]:
    if not value:
        return None, "empty message"
    first = value[0]
    if first == 0x7B or first in b" \t\r\n":     # '{' or leading white space: JSON
        try:
            # orjson: 6x faster than json; an integer beyond 64 bits becomes a
            # float, which the matcher rejects like any non-integer field
            obj = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            return None, f"not valid JSON: {exc}"[:200]
    elif 0x80 <= first <= 0x8F or first in (0xDE, 0xDF):   # msgpack fixmap / map16 / map32
        try:
            obj = msgpack.unpackb(value, raw=False, strict_map_key=True)
        except Exception as exc:  # noqa: BLE001 - msgpack raises several types
            return None, f"not valid msgpack: {type(exc).__name__}: {exc}"[:200]
    else:
        return None, "not a JSON object or a msgpack map (first byte 0x%02x)" % first
    if not isinstance(obj, dict):
        return None, f"not an object but {type(obj).__name__}"
    return obj, ""


def decode_order(value: Optional[bytes], *, source: str, offset: int, ts_ns: int) -> Command:
    """One ``orders`` message -> one command.

    Args:
        value: the Kafka record value (``None`` for a tombstone).
        source: the command's source name, ``"kafka:<topic>:<partition>"``.
        offset: the record's offset in that partition (the command's ``source_pos``).
        ts_ns: the time to stamp when the message carries no ``ts_ns``
            (the record's timestamp, ms since the epoch, times 1,000,000).

    Returns:
        A ``PlaceOrder``, ``CancelOrder``, ``AmendOrder`` or ``AddSymbol``; a
        ``BadInput`` (with the reason) for anything that is not one. Never raises.
    """
    return decode_record(value, source, offset, ts_ns)


def decode_record(value: Optional[bytes], source: str, offset: int, ts_ns: int) -> Command:
    """:func:`decode_order` with positional arguments (the fetch loop's hot path)."""
    if value is None:
        return BadInput.new(None, "empty message (tombstone)", ts_ns=ts_ns, source=source, source_pos=offset)
    obj = None
    if value[:1] == b"{":           # the common case first: a JSON object
        try:
            obj = orjson.loads(value)
        except orjson.JSONDecodeError:
            pass
    if type(obj) is not dict:
        obj, error = _parse(value)
        if obj is None:
            return BadInput.new(_raw(value), error, ts_ns=ts_ns, source=source, source_pos=offset)
    return _command(obj, value, source, offset, ts_ns)


def command_from_order(order: dict, *, ts_ns: int, source: Optional[str] = None,
                       source_pos: Optional[int] = None) -> Command:
    """An order object (already parsed: the fields of MESSAGES.md) -> its
    command, by the same rules as :func:`decode_order` (a ``BadInput`` holding
    the object when it is not an order). For the HTTP gateway, whose orders
    arrive as JSON bodies rather than Kafka records."""
    return _command(order, order, source, source_pos, ts_ns)


def _command(obj: dict, raw: Any, source: Optional[str], offset: Optional[int], ts_ns: int) -> Command:
    """``obj`` (a parsed order) -> command; ``raw`` is what a ``BadInput`` keeps."""
    kind = obj.get("type")
    spec = _FIELDS.get(kind) if type(kind) is str else None
    if spec is None:
        return BadInput.new(_keep(raw), f"unknown type {kind!r} (known: {', '.join(_FIELDS)})",
                            ts_ns=ts_ns, source=source, source_pos=offset)
    required, allowed = spec
    keys = obj.keys()
    if not (required <= keys and keys <= allowed):   # C-level set tests on the key view
        missing = required - keys
        if missing:
            return BadInput.new(_keep(raw), f"{kind}: missing field(s) {', '.join(sorted(missing))}",
                                ts_ns=ts_ns, source=source, source_pos=offset)
        unknown = keys - allowed
        return BadInput.new(_keep(raw), f"{kind}: unknown field(s) {', '.join(sorted(map(str, unknown)))}",
                            ts_ns=ts_ns, source=source, source_pos=offset)
    ts = obj.get("ts_ns", ts_ns)
    if kind == "deposit" or kind == "withdraw":
        cls = Deposit if kind == "deposit" else Withdraw
        return cls.new(obj["transfer_id"], obj["account"], obj["asset"], obj["amount"], ts_ns=ts, source=source,
                       source_pos=offset)
    if kind == "add_asset":
        return AddAsset.new(obj["asset"], obj["scale"], ts_ns=ts, source=source, source_pos=offset)
    symbol = obj["symbol"]
    if kind == "place":
        # names to codes; anything else passes through for the matcher to reject
        get = obj.get
        order_type = get("order_type", "limit")
        if type(order_type) is str:
            order_type = ORDER_TYPES.get(order_type, order_type)
        tif = get("tif")
        if tif is None:
            tif = 2 if order_type == 2 else 1
        elif type(tif) is str:
            tif = TIFS.get(tif, tif)
        side = obj["side"]
        if type(side) is str:
            side = SIDES.get(side, side)
        price = get("price", 0 if order_type == 2 else None)
        return _new(PlaceOrder, (2, ts, symbol, obj["order_id"], side, order_type, tif, price, obj["qty"],
                                 get("post_only", False), get("account", 0), get("max_quote", 0), source, offset))
    if kind == "cancel":
        return _new(CancelOrder, (3, ts, symbol, obj["order_id"], source, offset))
    if kind == "amend":
        return _new(AmendOrder, (4, ts, symbol, obj["order_id"], obj["price"], obj["qty"], source, offset))
    get = obj.get
    return AddSymbol.new(symbol, get("tick_size", 1), ts, source, offset, base=get("base"), quote=get("quote"),
                         quote_per_tick=get("quote_per_tick", 1), base_per_lot=get("base_per_lot", 1),
                         maker_fee_ppm=get("maker_fee_ppm", 0), taker_fee_ppm=get("taker_fee_ppm", 0),
                         risk=get("risk", False), fee_account=get("fee_account", 0))


_TYPE_NAMES = {v: k for k, v in ORDER_TYPES.items()}
_TIF_NAMES = {v: k for k, v in TIFS.items()}


def order_from_command(cmd: Any) -> dict:
    """A command (``engine.core.commands``) as an ``orders`` object: the
    inverse of :func:`decode_order` (``source`` and ``source_pos`` dropped:
    Kafka gives them). For load generators and tests.

    Raises:
        ValueError: a ``BadInput`` (it is not an order).
    """
    kind = cmd[0]
    if kind == 2:
        order = {"type": "place", "symbol": cmd.symbol, "order_id": cmd.order_id,
                 "side": SIDE_NAMES.get(cmd.side, cmd.side), "qty": cmd.qty, "ts_ns": cmd.ts_ns}
        if cmd.order_type != 1:
            order["order_type"] = _TYPE_NAMES.get(cmd.order_type, cmd.order_type)
        else:
            order["price"] = cmd.price
        if cmd.tif != (2 if cmd.order_type == 2 else 1):
            order["tif"] = _TIF_NAMES.get(cmd.tif, cmd.tif)
        if cmd.post_only:
            order["post_only"] = True
        if cmd.account:
            order["account"] = cmd.account
        if cmd.max_quote:
            order["max_quote"] = cmd.max_quote
        return order
    if kind == 3:
        return {"type": "cancel", "symbol": cmd.symbol, "order_id": cmd.order_id, "ts_ns": cmd.ts_ns}
    if kind == 4:
        return {"type": "amend", "symbol": cmd.symbol, "order_id": cmd.order_id, "price": cmd.price,
                "qty": cmd.qty, "ts_ns": cmd.ts_ns}
    if kind == 1:
        order = {"type": "add_symbol", "symbol": cmd.symbol, "tick_size": cmd.tick_size, "ts_ns": cmd.ts_ns}
        for name, default in (("base", None), ("quote", None), ("quote_per_tick", 1), ("base_per_lot", 1),
                              ("maker_fee_ppm", 0), ("taker_fee_ppm", 0), ("risk", False), ("fee_account", 0)):
            if getattr(cmd, name) != default:
                order[name] = getattr(cmd, name)
        return order
    if kind == 6:
        return {"type": "add_asset", "asset": cmd.asset, "scale": cmd.scale, "ts_ns": cmd.ts_ns}
    if kind == 7 or kind == 8:
        return {"type": "deposit" if kind == 7 else "withdraw", "transfer_id": cmd.transfer_id,
                "account": cmd.account, "asset": cmd.asset, "amount": cmd.amount, "ts_ns": cmd.ts_ns}
    raise ValueError(f"not an order: {cmd!r}")


def encode_order(order: dict, fmt: str = "json") -> bytes:
    """An order object (the fields of MESSAGES.md) as an ``orders`` value.
    ``fmt``: ``"json"`` or ``"msgpack"``."""
    if fmt == "msgpack":
        return msgpack.packb(order)
    return json.dumps(order, separators=(",", ":")).encode()


def trade_message(seq: int, trade: Any, source: Optional[str], source_pos: Optional[int],
                  shard: str = DEFAULT_SHARD) -> dict:
    """The ``trades`` record for one trade event (``engine.core.events.Trade``
    or its raw WAL tuple) logged at ``seq`` by the engine of ``shard``
    (``engine.io.shard``), caused by a command from ``source``/``source_pos``."""
    (_, match_id, ts_ns, symbol, price, qty, taker_side, maker_order_id, taker_order_id,
     maker_account, taker_account, cmd_seq, symbol_seq) = trade
    return {"shard": shard, "match_id": match_id, "symbol": symbol, "symbol_seq": symbol_seq,
            "seq": seq,
            "cmd_seq": cmd_seq, "ts_ns": ts_ns, "price": price, "qty": qty,
            "taker_side": SIDE_NAMES.get(taker_side, taker_side),
            "maker_order_id": maker_order_id, "taker_order_id": taker_order_id,
            "maker_account": maker_account, "taker_account": taker_account,
            "input": {"source": source, "offset": source_pos}}


_JSON_STR: dict = {}


def _json_str(text: Any) -> str:
    """``json.dumps(text)``, memoised: symbols and sources repeat endlessly."""
    out = _JSON_STR.get(text)
    if out is None:
        out = json.dumps(text)
        if len(_JSON_STR) < 100_000 and isinstance(text, str):
            _JSON_STR[text] = out
    return out


def encode_trade(seq: int, trade: Any, source: Optional[str], source_pos: Optional[int],
                 shard: str = DEFAULT_SHARD) -> bytes:
    """:func:`trade_message` as the JSON bytes published to ``trades``
    (formatted directly: about 4x faster than ``json.dumps`` of the dict, and
    byte for byte the same as ``json.dumps(trade_message(...), separators=(",", ":"))``)."""
    (_, match_id, ts_ns, symbol, price, qty, taker_side, maker_order_id, taker_order_id,
     maker_account, taker_account, cmd_seq, symbol_seq) = trade
    if not (type(price) is int and type(qty) is int and type(maker_order_id) is int
            and type(taker_order_id) is int and type(maker_account) is int and type(taker_account) is int
            and type(ts_ns) is int and (source_pos is None or type(source_pos) is int)):
        return json.dumps(trade_message(seq, trade, source, source_pos, shard), separators=(",", ":")).encode()
    side = '"buy"' if taker_side == 1 else '"sell"' if taker_side == 2 else json.dumps(taker_side)
    return (f'{{"shard":{_json_str(shard)},"match_id":{match_id},"symbol":{_json_str(symbol)},'
            f'"symbol_seq":{symbol_seq},"seq":{seq},'
            f'"cmd_seq":{cmd_seq},"ts_ns":{ts_ns},"price":{price},"qty":{qty},"taker_side":{side},'
            f'"maker_order_id":{maker_order_id},"taker_order_id":{taker_order_id},'
            f'"maker_account":{maker_account},"taker_account":{taker_account},'
            f'"input":{{"source":{_json_str(source)},"offset":{"null" if source_pos is None else source_pos}}}}}'
            ).encode()


def decode_trade(value: bytes) -> dict:
    """A ``trades`` value back to its dict.

    Raises:
        ValueError: not a trade message (not JSON, or ``match_id``/``symbol``/
            ``symbol_seq`` missing or of the wrong type).
    """
    obj = orjson.loads(value)
    if not (isinstance(obj, dict) and type(obj.get("match_id")) is int and isinstance(obj.get("symbol"), str)
            and type(obj.get("symbol_seq")) is int and is_shard_id(obj.setdefault("shard", DEFAULT_SHARD))):
        raise ValueError("not a trade message: needs integer match_id and symbol_seq, a string symbol and, "
                         "if given, a valid shard id")
    return obj


LEDGER_REASONS = {r.value: r.name.lower() for r in LedgerReason}
_LEDGER_REASON_NAMES = frozenset(LEDGER_REASONS.values())


def ledger_message(change: Any, ts_ns: int, shard: str = DEFAULT_SHARD) -> dict:
    """The ``ledger`` record of one balance change
    (``engine.core.events.BalanceChanged``) in the engine of ``shard``,
    caused by a command stamped ``ts_ns``. Amounts in the asset's smallest
    units, signed deltas."""
    (_, ledger_seq, cmd_seq, account, asset, d_avail, d_held, avail, held, reason, ref) = change
    return {"shard": shard, "ledger_seq": ledger_seq, "cmd_seq": cmd_seq, "ts_ns": ts_ns, "account": account,
            "asset": asset,
            "available_delta": d_avail, "held_delta": d_held, "available": avail, "held": held,
            "reason": LEDGER_REASONS.get(reason, reason), "ref": ref}


def encode_ledger(change: Any, ts_ns: int, shard: str = DEFAULT_SHARD) -> bytes:
    """:func:`ledger_message` as the JSON bytes published to ``ledger``, keyed by account:
    formatted directly, byte for byte ``json.dumps(ledger_message(...), separators=(",", ":"))``
    (``orjson.dumps`` would do too, but its bytes keep a 4 KiB buffer each: an
    outbox of 100,000 entries would hold 400 MiB)."""
    (_, ledger_seq, cmd_seq, account, asset, d_avail, d_held, avail, held, reason, ref) = change
    if not all(type(v) is int for v in (ledger_seq, cmd_seq, ts_ns, account, d_avail, d_held, avail, held, ref)):
        return json.dumps(ledger_message(change, ts_ns, shard), separators=(",", ":")).encode()
    return (f'{{"shard":{_json_str(shard)},"ledger_seq":{ledger_seq},"cmd_seq":{cmd_seq},"ts_ns":{ts_ns},'
            f'"account":{account},"asset":{_json_str(asset)},"available_delta":{d_avail},"held_delta":{d_held},'
            f'"available":{avail},"held":{held},"reason":{_json_str(LEDGER_REASONS.get(reason, reason))},'
            f'"ref":{ref}}}').encode()


def decode_ledger(value: bytes) -> dict:
    """A ``ledger`` value back to its dict.

    Raises:
        ValueError: not a ledger message (not JSON, or ``ledger_seq`` not a
            positive integer, ``cmd_seq``, ``ts_ns``, ``account``, the deltas,
            balances and ``ref`` not integers, ``asset`` not a string,
            ``reason`` not a known name).
    """
    obj = orjson.loads(value)
    if not (isinstance(obj, dict) and type(obj.get("ledger_seq")) is int and obj["ledger_seq"] > 0
            and type(obj.get("cmd_seq")) is int and type(obj.get("ts_ns")) is int
            and type(obj.get("account")) is int and type(obj.get("available_delta")) is int
            and type(obj.get("held_delta")) is int and type(obj.get("available")) is int
            and type(obj.get("held")) is int and type(obj.get("ref")) is int
            and type(obj.get("asset")) is str and obj.get("reason") in _LEDGER_REASON_NAMES
            and is_shard_id(obj.setdefault("shard", DEFAULT_SHARD))):
        raise ValueError("not a ledger message: needs integer ledger_seq, cmd_seq, account, deltas, balances "
                         "and ref, a string asset and a known reason")
    return obj
