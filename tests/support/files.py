"""Damaging files on purpose, for corruption tests."""

from __future__ import annotations

import os


def flip_byte(path, offset: int, mask: int = 0x01) -> None:
    """XOR the byte at ``offset`` of ``path`` with ``mask`` (a negative offset
    counts from the end of the file)."""
    with open(path, "r+b") as f:
        f.seek(offset, os.SEEK_SET if offset >= 0 else os.SEEK_END)
        where = f.tell()
        b = f.read(1)
        f.seek(where)
        f.write(bytes([b[0] ^ mask]))
