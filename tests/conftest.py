"""Shared fixtures: where the real order flow lives, and the CI rule that
tests needing it must not skip there (EVENGINE_REQUIRE_DATA=1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.data import data_path


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
