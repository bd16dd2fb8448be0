"""PostgreSQL tests: a real server, found through ``EVENGINE_POSTGRES_URL``.

When the variable is unset, the session starts one with the project's own
``scripts/postgres.sh`` (Debian's postgresql package; installed by the script
when missing and root) and stops it at the end. Under CI
(``EVENGINE_REQUIRE_POSTGRES=1``) a missing server fails these tests instead
of skipping them. Helpers (crash and restart the server, more databases):
``tests/support/postgres.py``.
"""

from __future__ import annotations

import os

import pytest

from tests.support import postgres as pg


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/postgres/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """URL of the session's server: ``postgresql://postgres@127.0.0.1:PORT/evengine``."""
    url = pg.server_url()
    try:
        yield url
    finally:
        pg.stop_server()


@pytest.fixture
def postgres_db(postgres_server) -> str:
    """URL of a database of this test's own on the session's server, dropped afterwards."""
    url = pg.fresh_database(postgres_server)
    try:
        yield url
    finally:
        pg.drop_database(url)
