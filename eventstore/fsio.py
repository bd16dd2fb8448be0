"""Durable file helpers: the one place that knows the fsync dance."""

from __future__ import annotations

import os
from typing import Callable, Union

from .errors import AtomicWriteError

__all__ = ["fsync_dir", "atomic_write"]


def fsync_dir(path: Union[str, os.PathLike]) -> None:
    """fsync a directory so that entries created, renamed or removed in it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Union[str, os.PathLike],
                 data: Union[bytes, bytearray, memoryview, Callable[[int], None]],
                 mode: int = 0o644) -> None:
    """Write a file so that it either exists whole under ``path`` or not at all.

    Steps: write ``path + ".tmp"``, fsync it, rename it over ``path``, fsync the
    directory. ``data`` is the content, or a function given the open file
    descriptor that writes it (for content streamed from elsewhere).

    Raises:
        AtomicWriteError: naming the step that failed; the temp file is removed.

    Source: Redis ``rdbSave`` (temp file, fsync, rename).
    """
    path = os.fspath(path)
    tmp = path + ".tmp"
    step = "open"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            step = "write"
            if callable(data):
                data(fd)
            else:
                view = memoryview(data)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
            step = "fsync"
            os.fsync(fd)
        finally:
            os.close(fd)
        step = "rename"
        os.replace(tmp, path)
        step = "fsync dir"
        fsync_dir(os.path.dirname(path) or ".")
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise AtomicWriteError(path, step, exc) from exc
