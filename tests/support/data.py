"""Where the real order flow lives (``../shared/data``), and the rule that
tests needing it skip with the reason on a laptop but fail under CI
(``EVENGINE_REQUIRE_DATA=1``, set by ``.ci/run``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = ROOT.parent / "shared" / "data"


def data_path(*parts: str) -> Path:
    """A file or folder of ``../shared/data``; skips the test (fails under CI) if absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        reason = f"real order flow not found at {path} (see README: Data, and ../shared/data/README.md)"
        if os.environ.get("EVENGINE_REQUIRE_DATA") == "1":
            pytest.fail(reason + "; EVENGINE_REQUIRE_DATA=1 forbids skipping")
        pytest.skip(reason)
    return path
