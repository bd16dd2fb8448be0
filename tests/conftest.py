"""Shared fixtures: where the real order flow lives, and the CI rule that
tests needing it must not skip there (EVENGINE_REQUIRE_DATA=1)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def data_path(*parts: str) -> Path:
    """A file of ``../shared/data``; skips the test (fails under CI) if absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        reason = f"real order flow not found at {path} (see README: Data)"
        if os.environ.get("EVENGINE_REQUIRE_DATA") == "1":
            pytest.fail(reason + "; EVENGINE_REQUIRE_DATA=1 forbids skipping")
        pytest.skip(reason)
    return path


@pytest.fixture
def goog_files() -> tuple[Path, Path]:
    return (data_path("lobster", "GOOG_2012-06-21_34200000_57600000_message_10.csv"),
            data_path("lobster", "GOOG_2012-06-21_34200000_57600000_orderbook_10.csv"))


@pytest.fixture
def aapl_files() -> tuple[Path, Path]:
    return (data_path("lobster", "AAPL_2012-06-21_34200000_57600000_message_10.csv"),
            data_path("lobster", "AAPL_2012-06-21_34200000_57600000_orderbook_10.csv"))


@pytest.fixture
def bitstamp_files() -> tuple[Path, Path]:
    return data_path("bitstamp", "orders.csv.gz"), data_path("bitstamp", "trades.csv")
