"""The shard id of an engine: which engine of several a trade or a ledger entry comes from.

Engines sharded by symbol publish into the same ``trades`` and ``ledger``
topics, and each numbers its own ``match_id`` and ``ledger_seq`` from 1, so
two shards repeat each other's ids. Every record an engine publishes names
its shard (``engine/io/MESSAGES.md``, version 3); downstream keys are
``(shard, match_id)``, ``(shard, ledger_seq)`` and ``(symbol, symbol_seq)``.

The id belongs to the data directory: ``evengine start --shard NAME`` writes
it to ``shard.json`` the first time (format below) and refuses a different
one later; a directory without the file is shard ``"0"``. ``shard.json``::

    {"format": 1, "shard": "eu-1"}

A shard id is 1..32 characters of ``A-Z a-z 0-9 . _ -``.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Optional

__all__ = ["SHARD_FILE", "DEFAULT_SHARD", "SHARD_FORMAT", "is_shard_id", "read_shard", "claim_shard"]

SHARD_FILE = "shard.json"
DEFAULT_SHARD = "0"
SHARD_FORMAT = 1
_ID = re.compile(r"[A-Za-z0-9._-]{1,32}")


_VALID: set = {DEFAULT_SHARD}


def is_shard_id(value: Any) -> bool:
    """Whether ``value`` is a valid shard id (a string, see the module docstring)."""
    if value in _VALID and type(value) is str:
        return True
    ok = type(value) is str and _ID.fullmatch(value) is not None
    if ok and len(_VALID) < 10_000:
        _VALID.add(value)       # a few ids repeat in every record: remember the good ones
    return ok


def read_shard(data_dir: str) -> str:
    """The shard id of ``data_dir`` (``"0"`` without a ``shard.json``).

    Raises:
        ValueError: ``shard.json`` is unreadable or names no valid shard (the
            message names the file).
    """
    path = os.path.join(data_dir, SHARD_FILE)
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read())
    except FileNotFoundError:
        return DEFAULT_SHARD
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable shard file: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != SHARD_FORMAT or not is_shard_id(doc.get("shard")):
        raise ValueError(f"{path}: not a shard file of format {SHARD_FORMAT} with a valid shard id: {doc!r}"[:300])
    return doc["shard"]


def claim_shard(data_dir: str, shard: Optional[str]) -> str:
    """The shard id ``data_dir`` runs as: ``shard`` written to ``shard.json``
    the first time (durably: written, fsynced, renamed, directory fsynced),
    checked against it later; ``None`` reads what is there.

    Raises:
        ValueError: an invalid ``shard``, or the directory belongs to another shard.
    """
    current_path = os.path.join(data_dir, SHARD_FILE)
    if shard is not None and not is_shard_id(shard):
        raise ValueError(f"invalid shard id {shard!r}: 1..32 characters of A-Z a-z 0-9 . _ -")
    exists = os.path.exists(current_path)
    current = read_shard(data_dir)
    if shard is None or shard == current and exists:
        return current
    if exists:
        raise ValueError(f"{data_dir} belongs to shard {current!r} ({SHARD_FILE}), not {shard!r}")
    if shard != DEFAULT_SHARD and os.path.isdir(os.path.join(data_dir, "wal")) and os.listdir(
            os.path.join(data_dir, "wal")):
        raise ValueError(f"{data_dir} already holds a WAL published as shard {DEFAULT_SHARD!r}; "
                         f"a shard id is given once, on the first start")
    tmp = current_path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(json.dumps({"format": SHARD_FORMAT, "shard": shard}).encode())
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, current_path)
    fd = os.open(data_dir, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return shard
