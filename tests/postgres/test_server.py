"""The throwaway PostgreSQL server itself: transactions, constraints, and what survives a
SIGKILL of the server (committed rows do, uncommitted ones don't)."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import pytest

try:
    import psycopg
    from psycopg import errors
except ImportError:  # a skip locally; under CI a failed import is a failed run
    if os.environ.get("EVENGINE_REQUIRE_POSTGRES") == "1":
        raise
    pytest.skip("psycopg is not installed (pip install -e '.[test]')", allow_module_level=True)

from tests.support import postgres as pg


def test_server_is_local_durable_and_has_evengine_db(postgres_server):
    u = urlsplit(postgres_server)
    assert u.scheme == "postgresql" and u.hostname == "127.0.0.1" and u.username == "postgres"
    with pg.connect(postgres_server) as con:
        assert con.execute("SELECT current_database()").fetchone()[0] == "evengine"
        # the durability tests below mean nothing without these
        assert con.execute("SHOW fsync").fetchone()[0] == "on"
        assert con.execute("SHOW synchronous_commit").fetchone()[0] == "on"
        if pg.can_control_server():  # started by scripts/postgres.sh
            assert con.execute("SHOW listen_addresses").fetchone()[0] == "127.0.0.1"


def test_commit_then_read_back_from_another_connection(postgres_db):
    with pg.connect(postgres_db) as con:
        con.execute("CREATE TABLE fills (id bigint PRIMARY KEY, symbol text NOT NULL, qty bigint NOT NULL)")
        con.commit()
        with con.transaction():
            con.execute("INSERT INTO fills VALUES (1, 'SYN', 10), (2, 'SYN', 20)")
            con.execute("INSERT INTO fills VALUES (%s, %s, %s)", (3, "GOOG", 30))
            # inside the open transaction another session sees nothing yet
            with pg.connect(postgres_db) as other:
                assert other.execute("SELECT count(*) FROM fills").fetchone()[0] == 0
    with pg.connect(postgres_db) as con:
        rows = con.execute("SELECT id, symbol, qty FROM fills ORDER BY id").fetchall()
    assert rows == [(1, "SYN", 10), (2, "SYN", 20), (3, "GOOG", 30)]


def test_check_violation_raises_and_rolls_back(postgres_db):
    with pg.connect(postgres_db) as con:
        con.execute("CREATE TABLE orders (id bigint PRIMARY KEY, qty bigint NOT NULL CHECK (qty > 0))")
        con.execute("INSERT INTO orders VALUES (1, 5)")
        con.commit()
        with pytest.raises(errors.CheckViolation) as info:
            with con.transaction():
                con.execute("INSERT INTO orders VALUES (2, 7)")
                con.execute("INSERT INTO orders VALUES (3, 0)")  # violates qty > 0
        assert info.value.diag.constraint_name == "orders_qty_check"
        assert info.value.sqlstate == "23514"
        # the whole transaction is gone, the connection is usable again
        assert con.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert con.execute("SELECT id FROM orders ORDER BY id").fetchall() == [(1,)]
    with pg.connect(postgres_db) as con:
        assert con.execute("SELECT id, qty FROM orders ORDER BY id").fetchall() == [(1, 5)]


def test_fresh_databases_are_separate(postgres_server):
    a, b = pg.fresh_database(postgres_server), pg.fresh_database(postgres_server)
    try:
        assert a != b
        with pg.connect(a) as con:
            con.execute("CREATE TABLE only_in_a (x int)")
            con.commit()
        with pg.connect(b) as con:
            with pytest.raises(errors.UndefinedTable):
                con.execute("SELECT * FROM only_in_a")
    finally:
        pg.drop_database(a)
        pg.drop_database(b)
    with pg.connect(pg.database_url(postgres_server, "postgres")) as con:
        names = {r[0] for r in con.execute("SELECT datname FROM pg_database")}
    assert urlsplit(a).path.lstrip("/") not in names and urlsplit(b).path.lstrip("/") not in names


def test_sigkill_keeps_committed_and_loses_uncommitted(postgres_db):
    if not pg.can_control_server():
        pg.missing(f"{pg.URL_ENV} names a server this session did not start and {pg.RUN_DIR_ENV} does not "
                   "point at its run dir", what="cannot kill and restart the PostgreSQL server")
    with pg.connect(postgres_db) as con:
        con.execute("CREATE TABLE ledger (id bigint PRIMARY KEY, amount bigint NOT NULL)")
        con.execute("INSERT INTO ledger VALUES (1, 100)")
        con.commit()
        started = con.execute("SELECT pg_postmaster_start_time()").fetchone()[0]

    committed = pg.connect(postgres_db)
    open_tx = pg.connect(postgres_db)
    try:
        with committed.transaction():
            committed.execute("INSERT INTO ledger VALUES (2, 200)")
        open_tx.execute("INSERT INTO ledger VALUES (3, 300)")  # left open: never committed
        assert open_tx.execute("SELECT count(*) FROM ledger").fetchone()[0] == 3
        assert open_tx.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS

        pg.kill_server()
        try:
            with pytest.raises(psycopg.OperationalError):
                open_tx.execute("SELECT 1")
            with pytest.raises(psycopg.OperationalError):
                pg.connect(postgres_db)
        finally:
            pg.restart_server()
    finally:
        committed.close()
        open_tx.close()

    with pg.connect(postgres_db) as con:
        assert con.execute("SELECT pg_postmaster_start_time()").fetchone()[0] > started
        assert con.execute("SELECT id, amount FROM ledger ORDER BY id").fetchall() == [(1, 100), (2, 200)]
        # and the table still takes writes after crash recovery
        con.execute("INSERT INTO ledger VALUES (3, 333)")
        con.commit()
        assert con.execute("SELECT amount FROM ledger WHERE id = 3").fetchone()[0] == 333
