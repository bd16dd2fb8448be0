"""A small tmpfs for disk-full tests, and ballast to fill it exactly.

Mounting needs root (CAP_SYS_ADMIN). Where it cannot be had the tests skip
with the reason, except under ``EVENGINE_REQUIRE_TMPFS=1`` (CI), where that is
a failure.
"""

from __future__ import annotations

import errno
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

PAGE = os.sysconf("SC_PAGE_SIZE")   # tmpfs accounts space in pages


def _unavailable(why: str) -> None:
    if os.environ.get("EVENGINE_REQUIRE_TMPFS") == "1":
        pytest.fail(f"EVENGINE_REQUIRE_TMPFS=1 but {why}")
    pytest.skip(why)


@contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` (``mount -o size=``, e.g. ``"2m"``) on ``where``."""
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        _unavailable("mounting a tmpfs needs root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        _unavailable(f"cannot mount a tmpfs: {proc.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def resize(where: Path, size: str) -> None:
    """Grow or shrink a mounted tmpfs (``mount -o remount,size=``)."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(where)], check=True, capture_output=True)


def free_bytes(where: Path) -> int:
    st = os.statvfs(where)
    return st.f_bavail * st.f_frsize


class Ballast:
    """Page-sized files that fill a file system to its last page, and give
    space back a page at a time."""

    def __init__(self, where: Path) -> None:
        self.dir = where / "ballast"
        self.dir.mkdir(exist_ok=True)
        self.files: list[Path] = []

    def fill(self) -> int:
        """Write pages until the disk is full; return how many were written."""
        page = b"\0" * PAGE
        n = 0
        while True:
            path = self.dir / f"b{len(self.files):07d}"
            try:
                with open(path, "wb") as f:
                    f.write(page)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                path.unlink(missing_ok=True)
                return n
            self.files.append(path)
            n += 1

    def free(self, pages: int = 1) -> None:
        """Give back ``pages`` pages (all with ``pages=-1``)."""
        take = self.files if pages < 0 else self.files[-pages:]
        for path in take:
            path.unlink()
        del self.files[len(self.files) - len(take):]
